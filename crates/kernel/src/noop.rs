//! Proving inside `apply` that it would change nothing, without listing the nftables
//! ruleset (the terse `nft list ruleset` a full observe runs, and `iptables-save` beside
//! it), checking conflicts or diffing: the largest part of what a no-op apply of a large
//! config costs (parsing the config and planning remain: `apply` takes a model, and the
//! report holds the plan).
//!
//! After an apply has made the kernel match a model (or found it did), it records a
//! digest of everything that apply depended on, taken under the namespace's lock right
//! after its last change:
//! - the plan (of the model, the gateways health checks hold down and the host view
//!   below; its nft table included);
//! - the running binary (device, inode, size and modification time of
//!   `/proc/self/exe`: another build may observe or diff differently);
//! - what netlink shows: links, addresses, our and foreign rules, routes, and the sysctls
//!   a plan reads (`observe::observe_netlink`);
//! - the nftables ruleset's generation (`nft_rules::generation`): every table anyone
//!   changed since, ours included, changes it;
//! - the state file (recorded sysctls, our table's digest).
//!
//! The next apply reads netlink's view, plans from it and computes the same digest (one
//! netlink dump of each kind, one nfnetlink request, a few small files); if it is equal,
//! the kernel still holds that plan and nothing changes. Anything else takes the full
//! path, which re-reads everything, checks conflicts and diffs. Where an iptables-legacy table exists there is no proof:
//! legacy rules change without a generation of their own. The record lives under
//! /run/symroute (`rundir`: 0600, written through a fresh temporary), so a reboot or
//! `remove` forgets it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use super::listing::ListingMemo;
use super::{nft_rules, observe, rundir, state, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::diff::Observed;
use symroute_core::plan::{nft, HostView, Plan};

fn path() -> Result<std::path::PathBuf, KernelError> {
    rundir::netns_file("noop")
}

/// The digest of the namespace as it is now (`observed`: netlink's view, read just
/// before; `generation`: the ruleset's) holding `plan`.
fn digest(plan: &Plan, observed: &Observed, generation: u32) -> Result<String, KernelError> {
    let exe = std::fs::metadata("/proc/self/exe").map_err(|source| KernelError::Io {
        what: "reading /proc/self/exe".into(),
        source,
    })?;
    let st = state::load()?;
    let mut text = format!(
        "exe {} {} {} {}.{}\nnft generation {generation}\n",
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime(),
        exe.mtime_nsec()
    );
    text += &serde_json::to_string(observed).expect("observed serializes");
    text += "\n";
    text += &serde_json::to_string(&st).expect("state serializes");
    text += "\n";
    // The table's text is in the digest through its fingerprint (the plan's
    // `nft_fingerprint`, which the full path trusts as much): escaping and hashing all of
    // it again would cost a 10,000-selector no-op about 2 ms.
    let plan = Plan {
        nft: String::new(),
        ..plan.clone()
    };
    text += &serde_json::to_string(&plan).expect("a plan serializes");
    Ok(nft::fingerprint(&text))
}

/// Whether an iptables-legacy table exists (the kernel lists them once loaded).
fn legacy_tables() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()))
}

/// What the proof of an apply found: the plan it built from the host view it read, and
/// whether the kernel is proved to hold it. A full apply reuses the plan when it reads
/// the same host view.
pub struct Proof {
    pub host: HostView,
    pub plan: Plan,
    pub proved: bool,
    /// When the ruleset's generation had moved (the proof fails, a full observe follows):
    /// netlink's view the plan was built from, and the ruleset listing read meanwhile.
    pub observed: Option<observe::Halves>,
}

/// A record: the digest, then the generation it was taken at (`generation N`).
fn parse_record(text: &str) -> (&str, Option<u32>) {
    let mut lines = text.lines();
    let digest = lines.next().unwrap_or_default().trim();
    let generation = lines
        .next()
        .and_then(|l| l.strip_prefix("generation "))
        .and_then(|n| n.trim().parse().ok());
    (digest, generation)
}

/// Try to prove an apply of `model` (with the gateways health checks hold down) a no-op
/// here; `None` when there is no record to compare with, or an iptables-legacy table.
/// The caller holds the namespace's lock.
pub fn prove(
    model: &Model,
    health_down: &BTreeMap<String, String>,
    plans: Option<&super::plans::PlanMemo>,
    listings: Option<&ListingMemo>,
) -> Result<Option<Proof>, KernelError> {
    let Some(recorded) = rundir::read(&path()?)? else {
        return Ok(None);
    };
    if legacy_tables() {
        return Ok(None);
    }
    let (recorded, recorded_generation) = parse_record(&recorded);
    // Every commit to any table moves the generation, and it is in the digest: when it
    // moved, the proof fails whatever the plan, and the full observe's ruleset listing
    // (an nft child, most of that observe's time) runs while this thread plans; or, when
    // only our own table changed since the daemon's last listing, that listing's foreign
    // tables serve again and ours is read over nfnetlink (`listing`).
    let generation = nft_rules::generation()?;
    let moved = recorded_generation != Some(generation);
    let kept = match (moved, listings) {
        (true, Some(memo)) => memo.foreign_at(generation),
        _ => None,
    };
    if kept.is_some() {
        tracing::debug!(
            "ruleset generation {generation}: only table inet {} changed since the last listing, whose other tables serve again",
            nft::TABLE
        );
    }
    std::thread::scope(|scope| {
        let listing = (moved && kept.is_none()).then(|| {
            let mark = listings.map(ListingMemo::mark);
            (mark, scope.spawn(observe::nft_listing))
        });
        let ours = kept.is_some().then(observe::our_table);
        let observed = observe::observe_netlink()?;
        let mut host = observed.host.clone();
        host.health_down = health_down.clone();
        // The cgroups the model matches, as a full observe reads them: their ids are in
        // the plan (and so in the digest), so one that appeared, went or came back with a
        // new id is never proved a no-op.
        host.cgroups = super::cgroup::observe(model);
        let plan = super::plans::plan_for(plans, model, &host);
        let proved = !moved && digest(&plan, &observed, generation)? == recorded;
        let observed = match (kept, ours, listing) {
            (Some(foreign), Some(ours), _) => Some(observe::Halves {
                netlink: observed,
                ruleset: Ok(foreign),
                ours: observe::OurTable::Read(ours?),
                generation: Some(generation),
            }),
            (_, _, Some((mark, thread))) => {
                let ruleset = observe::joined(thread);
                if let (Some(memo), Some(mark), Ok(listed)) = (listings, mark, &ruleset) {
                    memo.keep(listed, mark);
                }
                Some(observe::Halves {
                    netlink: observed,
                    ruleset,
                    ours: observe::OurTable::InListing,
                    generation: Some(generation),
                })
            }
            _ => None,
        };
        Ok(Some(Proof {
            host,
            plan,
            proved,
            observed,
        }))
    })
}

/// Record that the kernel now matches `plan`. Call it with the lock held, right after
/// the apply's last change, with the ruleset generation that apply should have left:
/// the one it observed at, plus one if it committed an nft transaction. Any other means
/// someone else committed meanwhile, a change the apply never looked at: no record then
/// (the next apply takes the full path and sees it), since the generation in a record
/// vouches for everything before it.
pub(crate) fn remember(plan: &Plan, expected: Option<u32>) -> Result<(), KernelError> {
    if legacy_tables() {
        return forget();
    }
    let observed = observe::observe_netlink()?;
    let generation = nft_rules::generation()?;
    if expected != Some(generation) {
        return forget();
    }
    let record = format!(
        "{}\ngeneration {generation}\n",
        digest(plan, &observed, generation)?
    );
    rundir::write(&path()?, record.as_bytes())
}

/// Drop the record (after a failed apply, and on `remove`).
pub fn forget() -> Result<(), KernelError> {
    rundir::remove(&path()?).map(drop)
}
