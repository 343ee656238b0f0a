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
