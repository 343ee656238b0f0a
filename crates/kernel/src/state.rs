//! The one thing symroute must remember outside the kernel: the values sysctls had before
//! it changed them, so `remove` can put them back. Kept under /run (cleared at boot, like
//! the sysctls themselves), one file per network namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::KernelError;

const DIR: &str = "/run/symroute";

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
    Ok(PathBuf::from(DIR).join(format!("netns-{}.json", super::netns::cookie()?)))
}

pub fn load() -> Result<State, KernelError> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| KernelError::Parse {
            cmd: format!("reading {}", p.display()),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(KernelError::Io {
            what: format!("reading {}", p.display()),
            source,
        }),
    }
}

/// Write atomically (temp file + rename) so a kill mid-write never loses the record.
pub fn save(state: &State) -> Result<(), KernelError> {
    let p = path()?;
    if state.sysctls.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KernelError::Io {
                what: format!("removing {}", p.display()),
                source: e,
            }),
            _ => Ok(()),
        };
    }
    let io = |source| KernelError::Io {
        what: format!("writing {}", p.display()),
        source,
    };
    std::fs::create_dir_all(DIR).map_err(io)?;
    let tmp = p.with_extension("tmp");
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &p).map_err(io)
}

/// Where `apply --confirm` keeps what a rollback needs until `confirm` (see `kernel::confirm`).
pub fn pending_path() -> Result<PathBuf, KernelError> {
    Ok(PathBuf::from(DIR).join(format!("netns-{}.confirm.json", super::netns::cookie()?)))
}

/// Where a running `symroute run` of this namespace listens (see `daemon::control`).
pub fn socket_path() -> Result<PathBuf, KernelError> {
    Ok(PathBuf::from(DIR).join(format!("netns-{}.sock", super::netns::cookie()?)))
}

/// Held while applying or removing, so two symroute runs in one namespace never
/// interleave their steps. Released when dropped (or when the process dies).
pub struct Lock(#[allow(dead_code)] std::fs::File);

fn lock_path() -> Result<PathBuf, KernelError> {
    Ok(PathBuf::from(DIR).join(format!("netns-{}.lock", super::netns::cookie()?)))
}

/// After `remove` nothing is left to protect; drop the lock file (best effort) so
/// namespaces that come and go don't leave files behind.
pub fn forget_lock() {
    if let Ok(p) = lock_path() {
        let _ = std::fs::remove_file(p);
    }
}

pub fn lock() -> Result<Lock, KernelError> {
    let p = lock_path()?;
    let io = |source| KernelError::Io {
        what: format!("locking {}", p.display()),
        source,
    };
    std::fs::create_dir_all(DIR).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; blocks until the other run finishes.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(Lock(f))
}
