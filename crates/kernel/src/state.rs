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
    /// When the process that told it was started (clock ticks since boot, from
    /// /proc/self/stat): keepalived forks a notify script per state change and does not
    /// wait, so two can finish out of order; the later fork is the later word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub told_at: Option<u64>,
}

/// This process's start time in clock ticks since boot (`/proc/self/stat`, field 22),
/// kept across `exec`: for a notify script, when keepalived forked it.
pub fn process_started() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What became of a role told by `symroute ha`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// Recorded: the latest word.
    Recorded,
    /// Not recorded: a notification started later already said this (the role it said).
    Stale(HaRole),
}

/// Record `record` unless a notification started later was recorded already; the
/// returned lock (of the role record) is held until the caller has told the daemon too,
/// so a stale word can never overtake a newer one on its way there either.
pub fn tell_ha(record: &HaRecord) -> Result<(Told, rundir::Lock), KernelError> {
    // Unlinked when let go (as `rundir` allows), so namespaces leave none behind.
    let lock =
        rundir::lock_path(&rundir::netns_file("ha.lock")?, rundir::WAIT_COMMAND)?.unlink_on_drop();
    if let Some(had) = load_ha().ok().flatten() {
        if let (Some(then), Some(now)) = (had.told_at, record.told_at) {
            if then > now {
                return Ok((Told::Stale(had.role), lock));
            }
        }
    }
    save_ha(record)?;
    Ok((Told::Recorded, lock))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let t = process_started().expect("start time");
        // A child started after us has a start time no earlier.
        let child = std::process::Command::new("sh")
            .args(["-c", "cut -d' ' -f22 /proc/self/stat"])
            .output()
            .expect("sh");
        let c: u64 = String::from_utf8_lossy(&child.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(c >= t, "{c} < {t}");
    }
}
