//! Proving inside `apply` that it would change nothing, without listing the nftables
//! ruleset (the terse `nft list ruleset` a full observe runs, and `iptables-save` beside
//! it), planning, checking conflicts or diffing: the largest part of what a no-op apply
//! of a large config costs (parsing the config remains: `apply` takes a model). A
//! caller that wants the plan of a proved no-op builds it (the daemon from its
//! `PlanMemo`); a command prints only the plan's outline, which costs a small part of it.
//!
//! After an apply has made the kernel match a model (or found it did), it records a
//! digest of everything the plan and the kernel's state depend on, taken under the
//! namespace's lock right after its last change:
//! - the model, the gateways health checks hold down and the cgroups the model matches
//!   (with the netlink view below, all a plan is built from: planning is pure, so the
//!   same inputs give the same plan). The apply records only if the plan of these inputs
//!   as they are after its changes is the plan it applied, and netlink's view holds that
//!   plan's rules, routes and sysctls: a plan that read something the apply itself
//!   changed, or a rule someone removed right after, is never vouched for;
//! - the running binary (device, inode, size and modification time of
//!   `/proc/self/exe`: another build may plan, observe or diff differently);
//! - what netlink shows: links, addresses, our and foreign rules, routes, and the sysctls
//!   a plan reads (`observe::observe_netlink`);
//! - the nftables ruleset's generation (`nft_rules::generation`): every table anyone
//!   changed since, ours included, changes it;
//! - the state file (recorded sysctls, our table's digest).
//!
//! The next apply reads netlink's view and the cgroups and computes the same digest (one
//! netlink dump of each kind, one nfnetlink request, a few small files); if it is equal,
//! the kernel still holds that plan and nothing changes. Anything else takes the full
//! path, which re-reads everything, checks conflicts and diffs. Where an iptables-legacy table exists there is no proof:
//! legacy rules change without a generation of their own. The record lives under
//! /run/symroute (`rundir`: 0600, written through a fresh temporary), so a reboot or
//! `remove` forgets it.

use std::collections::BTreeMap;
use std::io::Write as _;
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
/// before; `generation`: the ruleset's; `host`: the view `model` is planned on, which
/// adds the health verdicts and cgroups to netlink's; `st`: the state file) holding
/// `model`'s plan.
fn digest(
    (model, host): (&Model, &HostView),
    observed: &Observed,
    generation: u32,
    st: &state::State,
) -> Result<String, KernelError> {
    let exe = std::fs::metadata("/proc/self/exe").map_err(|source| KernelError::Io {
        what: "reading /proc/self/exe".into(),
        source,
    })?;
    let exe = format!(
        "{} {} {} {}.{}",
        exe.dev(),
        exe.ino(),
        exe.size(),
        exe.mtime(),
        exe.mtime_nsec()
    );
    Ok(digest_of(&exe, st, (model, host), observed, generation))
}

/// [`digest`] of what it read: the binary (`exe`: the identity of /proc/self/exe; another
/// build may plan, observe or diff differently) and the state file.
fn digest_of(
    exe: &str,
    st: &state::State,
    (model, host): (&Model, &HostView),
    observed: &Observed,
    generation: u32,
) -> String {
    // Every field of the view planning reads, named so that a new one is not forgotten:
    // those netlink shows are in `observed` (the view is built from it), the others are
    // added here.
    let HostView {
        links: _,
        sysctls: _,
        default_via: _,
        health_down,
        cgroups,
    } = host;
    // Hashed as it is serialized: the model of a 10,000-selector config is 220 KB of
    // JSON, which would otherwise be built, copied and freed on every proof.
    let mut h = nft::Fingerprinter::default();
    let _ = write!(h, "exe {exe}\nnft generation {generation}\n");
    add_json(&mut h, observed);
    add_json(&mut h, st);
    add_json(&mut h, &(health_down, cgroups));
    add_json(&mut h, model);
    h.finish()
}

/// `value` as JSON and a new line, into a fingerprint.
fn add_json(h: &mut nft::Fingerprinter, value: &impl serde::Serialize) {
    serde_json::to_writer(&mut *h, value).expect("serializes");
    h.add(b"\n");
}

/// The view `model` is planned on: netlink's, the health verdicts and the cgroups it
/// matches (read now).
fn planning_view(
    model: &Model,
    observed: &Observed,
    health_down: &BTreeMap<String, String>,
) -> HostView {
    let mut host = observed.host.clone();
    host.health_down = health_down.clone();
    host.cgroups = super::cgroup::observe(model);
    host
}

/// Whether an iptables-legacy table exists (the kernel lists them once loaded).
fn legacy_tables() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.trim().is_empty()))
}

/// What the proof of an apply found: the host view it read, and whether the kernel is
/// proved to hold the plan of the model on it.
pub struct Proof {
    pub host: HostView,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// The kernel holds the plan of the model on the host view.
    Proved,
    /// It may not: the full path follows, and reuses what the proof read.
    Failed(Box<Failed>),
}

pub struct Failed {
    /// The plan on the host view, built while the listing below was read (when it was);
    /// the full path reuses it when it reads the same host view.
    pub plan: Option<Plan>,
    /// When the ruleset's generation had moved: netlink's view, and the other tables
    /// read meanwhile (a fresh listing, or the daemon's kept one with our table read over
    /// nfnetlink).
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
        // The cgroups the model matches, as a full observe reads them: their ids are in
        // the digest, so one that appeared, went or came back with a new id is never
        // proved a no-op.
        let host = planning_view(model, &observed, health_down);
        if !moved && digest((model, &host), &observed, generation, &state::load()?)? == recorded {
            return Ok(Some(Proof {
                host,
                outcome: Outcome::Proved,
            }));
        }
        // Planned while the listing's thread (if any) runs.
        let plan = (moved && kept.is_none()).then(|| super::plans::plan_for(plans, model, &host));
        let observed = match (kept, ours, listing) {
            (Some(foreign), Some(ours), _) => Some(observe::Halves {
                netlink: observed,
                ruleset: Ok(foreign),
                ours: observe::OurTable::Read(ours?),
                generation: Some(generation),
            }),
            (_, _, Some((mark, thread))) => {
                let ruleset = observe::joined(thread);
                ListingMemo::keep_if(listings, mark, &ruleset);
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
            outcome: Outcome::Failed(Box::new(Failed { plan, observed })),
        }))
    })
}

/// Record that the kernel now matches `plan`, `model`'s plan on `planned_on` (health
/// verdicts and cgroups included). Call it with the lock held, right after the apply's last change, with the
/// ruleset generation that apply should have left: the one it observed at, plus one if
/// it committed an nft transaction. Any other means someone else committed meanwhile, a
/// change the apply never looked at: no record then (the next apply takes the full path
/// and sees it), since the generation in a record vouches for everything before it.
/// Nor is there one when the model's plan on the host as it is now is not `plan` (see
/// the module's docs).
pub(crate) fn remember(
    model: &Model,
    (planned_on, plan): (&HostView, &Plan),
    plans: Option<&super::plans::PlanMemo>,
    expected: Option<u32>,
) -> Result<(), KernelError> {
    if legacy_tables() {
        return forget();
    }
    let observed = observe::observe_netlink()?;
    let generation = nft_rules::generation()?;
    if expected != Some(generation) {
        return forget();
    }
    let st = state::load()?;
    // What netlink shows now must hold the plan: something that removed one of our rules
    // or routes since the apply's last change (a program reacting to its netlink
    // events) would otherwise be vouched for, and the change it caused taken for a
    // no-op. The table is covered by the generation, checked above.
    if !holds(plan, &observed, &st.sysctls) {
        tracing::debug!(
            "the kernel changed since this apply's last change: no no-op proof recorded"
        );
        return forget();
    }
    let host = planning_view(model, &observed, &planned_on.health_down);
    // Planning is pure: on the same view, the same plan (the usual case: an apply changes
    // little that a plan reads). Else plan again, and compare.
    if host != *planned_on && !same_plan(&super::plans::plan_for(plans, model, &host), plan) {
        tracing::debug!(
            "the plan on the host as this apply left it is another: no no-op proof recorded"
        );
        return forget();
    }
    let record = format!(
        "{}\ngeneration {generation}\n",
        digest((model, &host), &observed, generation, &st)?
    );
    rundir::write(&path()?, record.as_bytes())
}

/// Whether netlink's view (`observed`, with the recorded sysctls) holds `plan`'s rules,
/// routes and sysctls: a diff against it changes nothing but, maybe, the table, which
/// netlink's view does not hold.
fn holds(plan: &Plan, observed: &Observed, recorded: &BTreeMap<String, String>) -> bool {
    let with_table = Observed {
        nft_fingerprint: Some(plan.nft_fingerprint.clone()),
        ..observed.clone()
    };
    symroute_core::plan::diff::diff(plan, &with_table, recorded).is_empty()
}

/// Whether two plans are the same (the table's text through its fingerprint).
fn same_plan(a: &Plan, b: &Plan) -> bool {
    // Every field but the table's text, named so that a new one is not forgotten here.
    let key = |p: &Plan| {
        let Plan {
            mark_mask,
            gateways,
            policies,
            divert,
            nft: _,
            nft_fingerprint,
            rules,
            routes,
            sysctls,
            priorities,
            tables,
        } = p;
        serde_json::to_string(&(
            mark_mask,
            gateways,
            policies,
            divert,
            nft_fingerprint,
            rules,
            routes,
            (sysctls, priorities, tables),
        ))
        .expect("a plan serializes")
    };
    key(a) == key(b)
}

/// Drop the record (after a failed apply, and on `remove`).
pub fn forget() -> Result<(), KernelError> {
    rundir::remove(&path()?).map(drop)
}

#[cfg(test)]
mod tests {
    use super::super::plans::fixture::{model, CONFIG};
    use super::*;
    use symroute_core::plan;

    /// `host` with the fixture's gateway interface up, with an address on its network.
    fn with_up1(mut host: HostView) -> HostView {
        host.links.insert(
            "up1".into(),
            plan::Link {
                up: true,
                addrs: vec!["203.0.113.2/24".parse().expect("prefix")],
                ..plan::Link::default()
            },
        );
        host
    }

    #[test]
    fn plans_are_the_same_only_when_every_part_is() {
        let host = HostView::default();
        let a = plan::build(&model(CONFIG), &host);
        assert!(same_plan(&a, &plan::build(&model(CONFIG), &host)));
        // Another table (a port), another gateway table or next hop: another plan.
        for other in [
            CONFIG.replace("= 25", "= 587"),
            CONFIG.replace("via = \"203.0.113.1\"", "via = \"203.0.113.9\"\nid = 7"),
        ] {
            assert!(
                !same_plan(&a, &plan::build(&model(&other), &host)),
                "{other}"
            );
        }
        // Only the routes differ (a host whose up1 carries an address): another plan.
        let up = with_up1(host.clone());
        let b = plan::build(&model(CONFIG), &up);
        assert_ne!(a.routes, b.routes);
        assert!(!same_plan(&a, &b));
    }

    #[test]
    fn the_digest_changes_with_every_input_of_the_plan() {
        let (m, host, observed) = (model(CONFIG), HostView::default(), Observed::default());
        let st = state::State::default();
        let of = |m: &Model, host: &HostView, observed: &Observed, generation: u32, exe: &str| {
            digest_of(exe, &st, (m, host), observed, generation)
        };
        let base = of(&m, &host, &observed, 7, "1 2 3 4.5");
        assert_eq!(base, of(&m, &host, &observed, 7, "1 2 3 4.5"));
        let mut down = host.clone();
        down.health_down.insert("isp1".into(), "probes lost".into());
        let mut cg = host.clone();
        cg.cgroups = Some(plan::Cgroups::default());
        let mut seen = Observed::default();
        seen.host
            .sysctls
            .insert("net.ipv4.conf.up1.rp_filter".into(), "1".into());
        for (what, other) in [
            (
                "another model",
                of(
                    &model(&CONFIG.replace("= 25", "= 587")),
                    &host,
                    &observed,
                    7,
                    "1 2 3 4.5",
                ),
            ),
            ("a health verdict", of(&m, &down, &observed, 7, "1 2 3 4.5")),
            ("cgroups", of(&m, &cg, &observed, 7, "1 2 3 4.5")),
            ("netlink's view", of(&m, &host, &seen, 7, "1 2 3 4.5")),
            ("the generation", of(&m, &host, &observed, 8, "1 2 3 4.5")),
            ("the binary", of(&m, &host, &observed, 7, "1 2 3 4.6")),
            ("the state file", {
                let st = state::State {
                    table_digest: Some("abc".into()),
                    ..state::State::default()
                };
                digest_of("1 2 3 4.5", &st, (&m, &host), &observed, 7)
            }),
        ] {
            assert_ne!(base, other, "{what}");
        }
    }

    #[test]
    fn a_view_holds_a_plan_only_with_all_its_rules_routes_and_sysctls() {
        let mut host = with_up1(HostView::default());
        host.sysctls
            .insert("net.ipv4.conf.up1.rp_filter".into(), "2".into());
        host.sysctls
            .insert("net.ipv4.conf.all.rp_filter".into(), "0".into());
        let p = plan::build(&model(CONFIG), &host);
        let applied = Observed {
            host: host.clone(),
            rules: p.rules.clone(),
            routes: p.routes.clone(),
            ..Observed::default()
        };
        assert!(holds(&p, &applied, &BTreeMap::new()));
        let mut lost_rule = applied.clone();
        lost_rule.rules.pop_first();
        let mut lost_route = applied.clone();
        lost_route.routes.pop_first();
        let mut strict = applied.clone();
        strict
            .host
            .sysctls
            .insert("net.ipv4.conf.up1.rp_filter".into(), "1".into());
        // A sysctl recorded as symroute's to restore, which the plan no longer sets: held
        // while it has its recorded value again, not while it differs.
        let recorded =
            |v: &str| BTreeMap::from([("net.ipv4.ip_forward".to_string(), v.to_string())]);
        let mut forwarding = applied.clone();
        forwarding
            .host
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(holds(&p, &forwarding, &recorded("1")));
        assert!(
            !holds(&p, &forwarding, &recorded("0")),
            "a sysctl to restore"
        );
        for (what, view) in [
            ("a rule", lost_rule),
            ("a route", lost_route),
            ("rp_filter", strict),
        ] {
            assert!(!holds(&p, &view, &BTreeMap::new()), "{what} changed");
        }
    }
}
