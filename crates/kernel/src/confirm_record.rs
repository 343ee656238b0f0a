//! What `apply --confirm` keeps under /run/symroute, apart from the guard's logic
//! (`confirm`) so that `status` and `apply` can read it without importing that logic:
//! the pending change (`netns-<cookie>.confirm.json`), the guard's lock
//! (`netns-<cookie>.confirm.guard`) and how the last one ended
//! (`netns-<cookie>.confirm-last.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::{unix, BootTime};
use super::rundir;
use super::{state, KernelError};
use symroute_core::plan::{RouteSpec, RuleSpec};

/// What `apply --confirm` saved before its first change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// Names this pending change; a guard acts only on its own.
    pub token: String,
    /// When the change is rolled back (CLOCK_BOOTTIME).
    pub deadline: BootTime,
    /// The same, in seconds since the epoch, for people.
    pub deadline_unix: u64,
    /// The guard's process id, for people.
    pub guard_pid: u32,
    /// symroute's own rules and routes before the apply.
    pub rules: BTreeSet<RuleSpec>,
    pub routes: BTreeSet<RouteSpec>,
    /// Whether the apply changed the nft table, and its text before (None: absent).
    pub nft_changed: bool,
    pub saved_table: Option<String>,
    /// The recorded sysctl state (`state::State`) before the apply.
    pub state_before: state::State,
    /// Current values, before the apply, of the sysctls it touches.
    pub sysctls: BTreeMap<String, String>,
}

/// The pending file could not be read or parsed.
fn unreadable(path: &std::path::Path, detail: String) -> KernelError {
    KernelError::Parse {
        cmd: format!("reading {}", path.display()),
        detail,
    }
}

/// The pending change of this namespace, if any.
pub fn load() -> Result<Option<Pending>, KernelError> {
    let p = state::pending_path()?;
    match rundir::read(&p)? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| unreadable(&p, e.to_string())),
        None => Ok(None),
    }
}

pub(crate) fn save(p: &Pending) -> Result<(), KernelError> {
    let text = serde_json::to_string_pretty(p).expect("pending change serializes");
    rundir::write(&state::pending_path()?, text.as_bytes())
}

/// Remove the pending file; false when there was none.
pub(crate) fn discard() -> Result<bool, KernelError> {
    rundir::remove(&state::pending_path()?)
}

pub(crate) fn guard_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("confirm.guard")
}

/// Whether a guard holds the guard lock now. When none does, its file goes (unlinked
/// while held, as `rundir` allows), so namespaces leave none behind.
pub(crate) fn guarded() -> Result<bool, KernelError> {
    match rundir::lock_path(&guard_path()?, Duration::ZERO) {
        Ok(free) => {
            free.unlink();
            Ok(false)
        }
        Err(KernelError::Locked { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// How the last guarded `apply --confirm` of this namespace ended, as its guard
/// recorded it (`netns-<cookie>.confirm-last.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Last {
    pub ended: Ended,
    /// When (seconds since the epoch).
    pub at_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Confirmed in time (`symroute confirm`).
    Confirmed,
    /// Not confirmed: put back at the deadline.
    RolledBackAtDeadline,
    /// The apply did not complete (it failed, or its session died mid-apply): put back
    /// at once.
    RolledBackUnfinished,
    /// The guard was stopped (SIGTERM) before a confirm: put back at once.
    RolledBackStopped,
    /// The guard failed (why): the change may be left as it was.
    Failed(String),
}

impl Ended {
    /// For people: what happened.
    pub fn describe(&self) -> String {
        match self {
            Ended::Confirmed => "confirmed".into(),
            Ended::RolledBackAtDeadline => "rolled back: not confirmed by its deadline".into(),
            Ended::RolledBackUnfinished => {
                "rolled back at once: the apply did not complete (it failed, or its session died)"
                    .into()
            }
            Ended::RolledBackStopped => {
                "rolled back at once: its guard was stopped (SIGTERM) before a confirm".into()
            }
            Ended::Failed(why) => format!("its guard failed: {why}"),
        }
    }
}

pub(crate) fn last_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("confirm-last.json")
}

/// How the last guarded `apply --confirm` here ended, if one did (an unreadable record
/// reads as none: it is for people only).
pub fn last() -> Option<Last> {
    let text = rundir::read(&last_path().ok()?).ok()??;
    serde_json::from_str(&text).ok()
}

/// The `apply --confirm` pending here now, if any (not the daemon's: it tells its own),
/// and whether its guard still runs (a guard killed outright leaves its change pending
/// with nobody to roll it back until the next `apply --confirm`).
pub fn pending_now() -> Option<(Pending, bool)> {
    let p = load().ok()??;
    Some((p, guarded().ok()?))
}

/// With the namespace lock held, for an apply that is not itself `--confirm`: refused
/// while a guarded `apply --confirm` is pending, since its rollback at the deadline would
/// silently undo this apply too. (A pending change whose guard is gone has nobody to roll
/// it back: the next `apply --confirm` settles it.)
pub fn refuse_while_guarded() -> Result<(), KernelError> {
    // Unguarded, even an unreadable file blocks nothing.
    if !guarded()? {
        return Ok(());
    }
    let Some(p) = load()? else {
        return Ok(());
    };
    Err(KernelError::Other(format!(
        "an `apply --confirm` is pending in this namespace (guard pid {}, rolled back in {} s \
         unless confirmed), and its rollback would undo this apply too: run `symroute \
         confirm` first to keep it, or wait for the rollback, then apply again",
        p.guard_pid,
        p.deadline.remaining().as_secs()
    )))
}

/// Record how a pending change ended. Best effort: the outcome itself is what matters.
pub(crate) fn record(ended: Ended) {
    let last = Last {
        ended,
        at_unix: unix(std::time::SystemTime::now()),
    };
    let text = serde_json::to_string(&last).expect("record serializes");
    let _ = last_path().and_then(|p| rundir::write(&p, text.as_bytes()));
}
