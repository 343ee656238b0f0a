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

/// This box's role in an HA pair, as keepalived's notify script last reported it
/// (`symroute ha master|backup|fault`; contrib/ha/).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaRole {
    /// It holds the virtual addresses: it carries the connections.
    Master,
    /// The peer does; this box holds copies of its connections (conntrackd).
    Backup,
    /// keepalived found a tracked link down: the peer is (or is becoming) master.
    Fault,
}

impl std::fmt::Display for HaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HaRole::Master => "master",
            HaRole::Backup => "backup",
            HaRole::Fault => "fault",
        })
    }
}

/// The role and since when (seconds since the epoch), kept in
/// `/run/symroute/netns-<cookie>.ha.json` so a restarted daemon knows it (until reboot
/// or `symroute remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaRecord {
    pub role: HaRole,
    pub since_unix: u64,
}

fn ha_path() -> Result<PathBuf, KernelError> {
    rundir::netns_file("ha.json")
}

pub fn load_ha() -> Result<Option<HaRecord>, KernelError> {
    let p = ha_path()?;
    match rundir::read(&p)? {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| KernelError::Parse {
                cmd: format!("reading {}", p.display()),
                detail: e.to_string(),
            }),
        None => Ok(None),
    }
}

pub fn save_ha(record: &HaRecord) -> Result<(), KernelError> {
    let text = serde_json::to_string(record).expect("record serializes");
    rundir::write(&ha_path()?, text.as_bytes())
}

pub fn forget_ha() -> Result<(), KernelError> {
    rundir::remove(&ha_path()?).map(drop)
}
