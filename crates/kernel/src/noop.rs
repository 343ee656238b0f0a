//! Proving inside `apply` that it would change nothing, without listing the nftables
//! ruleset (the terse `nft list ruleset` a full observe runs, and `iptables-save` beside
//! it), checking conflicts or diffing: most of what a no-op apply of a large config costs.
//!
//! After an apply has made the kernel match a model (or found it did), it records a
//! digest of everything that apply depended on, taken under the namespace's lock right
//! after its last change:
//! - the model and the gateways health checks hold down (the plan is a function of them
//!   and of the host view below);
//! - the running binary (device, inode, size and modification time of
//!   `/proc/self/exe`: another build may plan differently);
//! - what netlink shows: links, addresses, our and foreign rules, routes, and the sysctls
//!   a plan reads (`observe::observe_netlink`);
//! - the nftables ruleset's generation (`nft_rules::generation`): every table anyone
//!   changed since, ours included, changes it;
//! - the state file (recorded sysctls, our table's digest).
//!
//! The next apply computes the same digest (one netlink dump of each kind, one nfnetlink
//! request, a few small files) and, if it is equal, plans from the host view it just read
//! and changes nothing. Anything else takes the full path, which re-reads everything,
//! checks conflicts and diffs. Where an iptables-legacy table exists there is no proof:
//! legacy rules change without a generation of their own. The record lives under
//! /run/symroute (`rundir`: 0600, written through a fresh temporary), so a reboot or
//! `remove` forgets it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use super::{nft_rules, observe, rundir, state, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::{nft, HostView};

fn path() -> Result<std::path::PathBuf, KernelError> {
    rundir::netns_file("noop")
}

/// What an apply of `model` with `health_down` depends on, as one digest, and the host
/// view read for it; `None` where no proof is possible (an iptables-legacy table exists).
fn digest(
    model: &Model,
    health_down: &BTreeMap<String, String>,
) -> Result<Option<(String, HostView)>, KernelError> {
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
    text += "\n";
    text += &serde_json::to_string(health_down).expect("a map of strings serializes");
    text += "\n";
    text += &serde_json::to_string(model).expect("the model serializes");
    let mut host = observed.host;
    host.health_down = health_down.clone();
    Ok(Some((nft::fingerprint(&text), host)))
}

/// Whether an iptables-legacy table exists (the kernel lists them once loaded).
fn legacy_tables() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()))
}

/// If an apply of `model` (with `health_down`) is proved a no-op here, the host view to
/// plan from. The caller holds the namespace's lock.
pub fn proven(
    model: &Model,
    health_down: &BTreeMap<String, String>,
) -> Result<Option<HostView>, KernelError> {
    let Some(recorded) = rundir::read(&path()?)? else {
        return Ok(None);
    };
    Ok(digest(model, health_down)?.and_then(|(d, host)| (d == recorded.trim()).then_some(host)))
}

/// Record that the kernel now matches `model` (with `health_down`). Call it with the lock
/// held, right after the apply's last change.
pub(crate) fn remember(
    model: &Model,
    health_down: &BTreeMap<String, String>,
) -> Result<(), KernelError> {
    match digest(model, health_down)? {
        Some((d, _)) => rundir::write(&path()?, d.as_bytes()),
        None => forget(),
    }
}

/// Drop the record (after a failed apply, and on `remove`).
pub fn forget() -> Result<(), KernelError> {
    rundir::remove(&path()?).map(drop)
}
