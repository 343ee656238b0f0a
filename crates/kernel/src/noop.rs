//! Proving that `symroute apply` would change nothing, without parsing the config, listing
//! the nftables ruleset or planning: most of what a no-op apply of a large config costs
//! (parse ~6 ms, the terse ruleset listing ~15 ms and planning ~6 ms of the ~45 ms a
//! 10,000-selector no-op took).
//!
//! After an apply has made the kernel match a config (or found it did), it records a
//! digest of everything that apply depended on, taken under the namespace's lock right
//! after its last change:
//! - the config file's bytes (the model is a function of them alone);
//! - the running binary (device, inode, size and modification time of
//!   `/proc/self/exe`: another build may plan differently);
//! - what netlink shows: links, addresses, our and foreign rules, routes, and the sysctls
//!   a plan reads (`observe::observe_netlink`);
//! - the nftables ruleset's generation (`nft_rules::generation`): every table anyone
//!   changed since, ours included, changes it;
//! - the state file (recorded sysctls, our table's digest).
//!
//! The next apply computes the same digest (one netlink dump of each kind, one nfnetlink
//! request, a few small files) and, if it is equal, changes nothing and says so. Anything
//! else takes the full path, which re-reads and re-plans everything. Where an
//! iptables-legacy table exists there is no proof: legacy rules change without a
//! generation of their own. The record lives under /run/symroute (`rundir`: 0600,
//! written through a fresh temporary), so a reboot or `remove` forgets it.

use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use super::{nft_rules, observe, rundir, state, KernelError};
use symroute_core::plan::{nft, GatewayState, Plan};

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    digest: String,
    /// The gateways the plan did not hold up (name, state): what apply prints about them.
    gateways: Vec<(String, GatewayState)>,
}

fn path() -> Result<std::path::PathBuf, KernelError> {
    rundir::netns_file("noop.json")
}

/// The digest of an apply of `config` to the namespace as it is now; `None` where no
/// proof is possible (an iptables-legacy table exists).
fn digest(config: &[u8]) -> Result<Option<String>, KernelError> {
    if legacy_tables() {
        return Ok(None);
    }
    let exe = std::fs::metadata("/proc/self/exe").map_err(|source| KernelError::Io {
        what: "reading /proc/self/exe".into(),
        source,
    })?;
    let observed = observe::observe_netlink()?;
    let generation = nft_rules::generation()?;
    let st = state::load()?;
    let mut text = format!(
        "exe {} {} {} {}.{}\nnft generation {generation}\n",
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime(),
        exe.mtime_nsec()
    );
    text += &serde_json::to_string(&observed).expect("observed serializes");
    text += "\n";
    text += &serde_json::to_string(&st).expect("state serializes");
    text += "\nconfig\n";
    text += &String::from_utf8_lossy(config);
    Ok(Some(nft::fingerprint(&text)))
}

/// Whether an iptables-legacy table exists (the kernel lists them once loaded).
fn legacy_tables() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()))
}

/// If an apply of `config` is proved a no-op here, the gateways it would report as not
/// up. Takes the namespace's lock while it reads (`wait` at most).
pub fn proven(
    config: &[u8],
    wait: std::time::Duration,
) -> Result<Option<Vec<(String, GatewayState)>>, KernelError> {
    // While `symroute run` runs here, apply hands the config to it instead.
    if state::socket_path()?.exists() {
        return Ok(None);
    }
    let _lock = rundir::lock(wait)?;
    let Some(text) = rundir::read(&path()?)? else {
        return Ok(None);
    };
    // An unreadable record proves nothing; the full apply writes a new one.
    let Ok(record) = serde_json::from_str::<Record>(&text) else {
        return Ok(None);
    };
    Ok((digest(config)?.as_ref() == Some(&record.digest)).then_some(record.gateways))
}

/// Record that the kernel now matches `plan`, made from `config`. Call it with the lock
/// held, right after the apply's last change.
pub(crate) fn remember(config: &[u8], plan: &Plan) -> Result<(), KernelError> {
    let Some(digest) = digest(config)? else {
        return forget();
    };
    let record = Record {
        digest,
        gateways: plan
            .gateways
            .iter()
            .filter(|g| g.state != GatewayState::Up)
            .map(|g| (g.name.clone(), g.state.clone()))
            .collect(),
    };
    let text = serde_json::to_string(&record).expect("record serializes");
    rundir::write(&path()?, text.as_bytes())
}

/// Drop the record (after a failed apply, and on `remove`).
pub fn forget() -> Result<(), KernelError> {
    rundir::remove(&path()?).map(drop)
}
