//! Safe changes (`apply --confirm SECS`): before changing anything, save what a rollback
//! needs in /run/symroute/netns-<cookie>.confirm.json; a detached watcher (`symroute
//! confirm-watch`) puts it all back at the deadline unless `symroute confirm` removed
//! the file first. The rollback is apply's own (`apply::roll_back`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::apply::{self, ApplyReport, Faults};
use super::{state, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::diff::Observed;
use symroute_core::plan::{HostView, RouteSpec, RuleSpec};

/// What `apply --confirm` saved before its first change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// Names this pending change; a watcher acts only on its own.
    pub token: String,
    /// Seconds since the epoch after which the change is rolled back.
    pub deadline: u64,
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64().ceil() as u64)
        .unwrap_or(0)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Io { what, source }
}

/// The pending change of this namespace, if any.
pub fn load() -> Result<Option<Pending>, KernelError> {
    let p = state::pending_path()?;
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| KernelError::Parse {
                cmd: format!("reading {}", p.display()),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KernelError::Io {
            what: format!("reading {}", p.display()),
            source,
        }),
    }
}

fn save(p: &Pending) -> Result<(), KernelError> {
    let path = state::pending_path()?;
    let dir = path.parent().expect("pending path has a directory");
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(p).expect("pending change serializes");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))
}

/// Remove the pending file; false when there was none.
fn discard() -> Result<bool, KernelError> {
    let p = state::pending_path()?;
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(KernelError::Io {
            what: format!("removing {}", p.display()),
            source,
        }),
    }
}

/// `apply` that saves a rollback point first. `Ok((report, None))`: nothing changed (no
/// pending file, no watcher needed); `Some(token)`: start a watcher for that token.
pub fn apply(model: &Model, secs: u64) -> Result<(ApplyReport, Option<String>), KernelError> {
    let _lock = state::lock()?;
    if load()?.is_some() {
        return Err(KernelError::Other(format!(
            "an earlier `apply --confirm` is still pending in this namespace ({}): run \
             `symroute confirm` to keep it, or wait for it to be rolled back, then apply again",
            state::pending_path()?.display()
        )));
    }
    let token = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut saved = false;
    let r = apply::apply_locked(model, Faults::default(), |b| {
        let touched: BTreeSet<&String> = b
            .changes
            .sysctls
            .iter()
            .chain(&b.changes.sysctls_restore)
            .map(|c| &c.key)
            .collect();
        save(&Pending {
            token: token.clone(),
            deadline: now() + secs,
            rules: b.observed.rules.clone(),
            routes: b.observed.routes.clone(),
            nft_changed: b.changes.nft.is_some(),
            saved_table: b.saved_table.map(str::to_string),
            state_before: b.state.clone(),
            sysctls: b
                .observed
                .host
                .sysctls
                .iter()
                .filter(|(k, _)| touched.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })?;
        saved = true;
        Ok(())
    });
    match r {
        Ok(report) => Ok((report, saved.then_some(token))),
        Err(e) => {
            // apply rolled back already: nothing is pending.
            if saved {
                let _ = discard();
            }
            Err(e)
        }
    }
}

/// `symroute confirm`: keep the pending change. False when nothing was pending.
pub fn confirm() -> Result<bool, KernelError> {
    let _lock = state::lock()?;
    discard()
}

/// The watcher: wait for the deadline of the pending change named `token`; if it is still
/// pending then, put back what it saved and forget it. Returns whether it rolled back.
pub fn watch(token: &str) -> Result<bool, KernelError> {
    loop {
        let Some(p) = load()? else { return Ok(false) };
        if p.token != token {
            return Ok(false);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let deadline = Duration::from_secs(p.deadline);
        if now >= deadline {
            break;
        }
        // Wake up early now and then: a confirm ends the watch at once.
        std::thread::sleep((deadline - now).min(Duration::from_millis(200)));
    }
    roll_back_now(token)
}

/// Put back what the pending change named `token` saved and forget it (under the lock;
/// nothing happens when it was confirmed meanwhile). Returns whether it rolled back.
pub fn roll_back_now(token: &str) -> Result<bool, KernelError> {
    let _lock = state::lock()?;
    let Some(p) = load()? else { return Ok(false) };
    if p.token != token {
        return Ok(false);
    }
    let before = Observed {
        host: HostView {
            sysctls: p.sysctls.clone(),
            ..HostView::default()
        },
        rules: p.rules.clone(),
        routes: p.routes.clone(),
        ..Observed::default()
    };
    let r = apply::roll_back(
        &before,
        p.nft_changed,
        p.saved_table.as_deref(),
        &p.state_before,
    );
    discard()?;
    r.map(|()| true)
}
