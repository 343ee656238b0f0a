//! The daemon's pending `apply --confirm`: the config it switched to, the one it goes
//! back to, and when. Kept in memory and in /run/symroute/netns-<cookie>.daemon-confirm.json
//! (`rundir`), so a restarted daemon resumes it: it runs the unconfirmed config again
//! until the same deadline, or goes straight back when the deadline passed meanwhile.
//! The deadline is a CLOCK_BOOTTIME reading (`kernel::clock`), valid across processes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::kernel::clock::{self, BootTime};
use crate::kernel::{rundir, KernelError};
use crate::model::Model;

/// A reload with `confirm`, not confirmed yet.
pub struct PendingConfirm {
    pub deadline: BootTime,
    /// The config it goes back to (its path, and the model as it was loaded).
    pub previous: (PathBuf, Model),
}

/// What is written to /run/symroute.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The config applied and not confirmed yet.
    config: PathBuf,
    previous: PathBuf,
    deadline: BootTime,
    /// For people reading the file.
    deadline_unix: u64,
    /// The texts both were loaded from (the usual edit is in place, so `previous` names
    /// the file that now holds the unconfirmed change). Absent in older records: then
    /// the files are read.
    #[serde(default)]
    config_text: Option<String>,
    #[serde(default)]
    previous_text: Option<String>,
}

fn path() -> Result<PathBuf, KernelError> {
    crate::kernel::state::daemon_pending_path()
}

/// Remember `p` (switched to `config`) across a restart; a failure is logged, the
/// pending confirm still holds in memory.
pub fn save(config: &Path, model: &Model, p: &PendingConfirm) {
    let text = |m: &Model| (!m.source.is_empty()).then(|| m.source.clone());
    let record = Record {
        config: config.to_path_buf(),
        previous: p.previous.0.clone(),
        deadline: p.deadline,
        deadline_unix: clock::unix(p.deadline.wall()),
        config_text: text(model),
        previous_text: text(&p.previous.1),
    };
    let text = serde_json::to_string_pretty(&record).expect("record serializes");
    if let Err(e) = path().and_then(|p| rundir::write(&p, text.as_bytes())) {
        warn!("could not record the pending `apply --confirm` (a restart would forget it): {e}");
    }
}

/// Forget the record (confirmed, rolled back, or removed).
pub fn forget() {
    if let Err(e) = path().and_then(|p| rundir::remove(&p)) {
        warn!("could not remove the record of the pending `apply --confirm`: {e}");
    }
}

/// At startup: the config to run and the pending confirm to keep, from a record a
/// previous daemon left. `None`: no record (or an unusable one, logged and dropped).
pub fn resume() -> Option<(PathBuf, Model, Option<PendingConfirm>)> {
    let p = path().ok()?;
    let text = match rundir::read(&p) {
        Ok(t) => t?,
        Err(e) => {
            warn!("could not read {}: {e}", p.display());
            return None;
        }
    };
    let record: Record = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            warn!("dropping the unreadable {}: {e}", p.display());
            forget();
            return None;
        }
    };
    let previous = match load(&record.previous, record.previous_text.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            warn!(
                "a previous daemon's `apply --confirm` of {} was pending, but the config to go back to does not load (keeping the startup config): {}",
                record.config.display(),
                e.to_string().lines().next().unwrap_or_default()
            );
            forget();
            return None;
        }
    };
    if record.deadline.passed() {
        info!(
            "a previous daemon's `apply --confirm` of {} ran out while no daemon ran: going back to {}",
            record.config.display(),
            record.previous.display()
        );
        forget();
        return Some((record.previous, previous, None));
    }
    match load(&record.config, record.config_text.as_deref()) {
        Ok(model) => {
            info!(
                "resuming a previous daemon's pending `apply --confirm` of {}: back to {} in {} s unless `symroute confirm`",
                record.config.display(),
                record.previous.display(),
                record.deadline.remaining().as_secs()
            );
            let pending = PendingConfirm {
                deadline: record.deadline,
                previous: (record.previous, previous),
            };
            Some((record.config, model, Some(pending)))
        }
        Err(e) => {
            warn!(
                "a previous daemon's pending `apply --confirm` of {} no longer loads: going back to {} ({})",
                record.config.display(),
                record.previous.display(),
                e.to_string().lines().next().unwrap_or_default()
            );
            forget();
            Some((record.previous, previous, None))
        }
    }
}

/// A config as the record keeps it: its text when recorded (written by the daemon into
/// its own root-only directory, so as trusted as the file was when loaded), else the
/// file as it is now.
fn load(path: &Path, text: Option<&str>) -> Result<Model, crate::config::ConfigError> {
    match text {
        // User names are looked up as when the file was loaded.
        Some(t) => crate::config::parse_str_with(
            t,
            &path.display().to_string(),
            &crate::config_file::SystemUsers,
        ),
        None => crate::config_file::load_trusted(path),
    }
}
