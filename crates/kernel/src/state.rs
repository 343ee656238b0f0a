//! The one thing symroute must remember outside the kernel: the values sysctls had before
//! it changed them, so `remove` can put them back. Kept under /run (cleared at boot, like
//! the sysctls themselves), one file per network namespace (`rundir`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{rundir, KernelError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// sysctl key → value before symroute first changed it.
    pub sysctls: BTreeMap<String, String>,
    /// `observe::table_digest` of the nft table as symroute last wrote it: when the
    /// table's fingerprint still matches but this digest does not, someone altered rules
    /// inside it, and the next apply replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_digest: Option<String>,
}

fn path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("json")
}

pub fn load() -> Result<State, KernelError> {
    let p = path()?;
    match rundir::read(&p)? {
        Some(text) => serde_json::from_str(&text).map_err(|e| KernelError::Parse {
            cmd: format!("reading {}", p.display()),
            detail: e.to_string(),
        }),
        None => Ok(State::default()),
    }
}

/// Write atomically (temp file + rename) so a kill mid-write never loses the record.
pub fn save(state: &State) -> Result<(), KernelError> {
    let p = path()?;
    if state.sysctls.is_empty() && state.table_digest.is_none() {
        return rundir::remove(&p).map(drop);
    }
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    rundir::write(&p, text.as_bytes())
}

/// Where `apply --confirm` keeps what a rollback needs until `confirm` (see `kernel::confirm`).
pub fn pending_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("confirm.json")
}

/// Where `symroute run` keeps its pending `apply --confirm` (see `daemon::pending`).
pub fn daemon_pending_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("daemon-confirm.json")
}

/// Where a running `symroute run` of this namespace listens (see `daemon::control`).
pub fn socket_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("sock")
}
