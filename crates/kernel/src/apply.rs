//! Executing `Changes`: sysctls (previous values recorded first), the nft table (one atomic
//! transaction), then routes and rules (pipelined netlink batches: deletes, then adds, per
//! family). `apply` converges from whatever it finds and, if a step fails, puts back what
//! it found (`remove` runs the same steps, carrying on past errors).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::listing::ListingMemo;
use super::netlink::{Netlink, Request};
use super::plans::{plan_for, PlanMemo};
use super::{cmd, noop, observe, rundir, state, KernelError};
use symroute_core::model::{Family, Model};
use symroute_core::plan::diff::{self, Changes, Observed, SysctlChange};
use symroute_core::plan::{self, nft, HostView, Outline, Plan, RouteSpec, RuleSpec};

/// A step of `execute`, for test-only fault injection (`--inject-failure`, `--abort-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sysctls,
    Nft,
    Routes,
    Rules,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Fail (and roll back) right after this step.
    pub fail_after: Option<Step>,
    /// Die without cleaning up right after this step, like `kill -9`.
    pub abort_after: Option<Step>,
    /// The rollback's first this many reads of the kernel fail.
    pub fail_rollback_reads: u32,
}

/// What the callers of `apply` differ by: `symroute apply` takes the defaults, the
/// daemon passes its health verdicts and a short wait, `apply --confirm` runs under the
/// lock its session holds and saves its rollback point before the first change.
#[derive(Default)]
pub struct ApplyOptions<'a> {
    /// Gateways the daemon's health checks hold down (name → why): planned as down.
    pub health_down: BTreeMap<String, String>,
    pub lock: Locking<'a>,
    /// Test only.
    pub faults: Faults,
    /// Runs once there is something to change, before the first change; an error from it
    /// stops the apply, changing nothing.
    pub before_change: Option<&'a BeforeChange<'a>>,
    /// Runs once this apply holds the namespace's lock it took itself, before anything is
    /// read; an error refuses the apply. `symroute apply` refuses here while a guarded
    /// `apply --confirm` is pending (`confirm_record::refuse_while_guarded`: its rollback would
    /// undo this apply too); the daemon does not (it reconciles after a rollback).
    pub when_locked: Option<&'a WhenLocked>,
    /// Plans kept from earlier applies (the daemon keeps one across its reconciles).
    pub plans: Option<&'a PlanMemo>,
    /// The foreign tables of the last ruleset listing, kept while the daemon's monitor
    /// reads no commit to them.
    pub listings: Option<&'a ListingMemo>,
}

/// See [`ApplyOptions::when_locked`].
pub type WhenLocked = dyn Fn() -> Result<(), KernelError>;

/// See [`ApplyOptions::before_change`].
pub type BeforeChange<'a> = dyn Fn(&Before) -> Result<(), KernelError> + 'a;

/// The namespace's lock (`rundir`), which every change is made under.
pub enum Locking<'a> {
    /// Take it, waiting at most this long for another symroute process of the namespace
    /// (`KernelError::Locked` after that).
    Wait(Duration),
    /// The caller holds it.
    Held(&'a rundir::Lock),
}

impl Default for Locking<'_> {
    fn default() -> Self {
        Locking::Wait(rundir::WAIT_COMMAND)
    }
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub plan: Plan,
    pub changes: Changes,
}

/// What `apply` knows just before its first change: all a rollback needs.
pub struct Before<'a> {
    pub observed: &'a Observed,
    pub changes: &'a Changes,
    /// `nft list table` text, when this apply replaces an existing table.
    pub saved_table: Option<&'a str>,
    pub state: &'a state::State,
}

/// What a command's apply reports: the plan's outline (each gateway's and policy's
/// marks and state) and the changes made.
#[derive(Debug)]
pub struct Applied {
    pub outline: Outline,
    pub changes: Changes,
}

/// Observe, plan, diff; refuse on conflicts; apply the difference; roll back on failure.
/// A no-op proved by the record the last apply left (`noop`) skips all of it but the
/// plan, which the report holds (from `opts.plans` when it has it).
pub fn apply(model: &Model, opts: &ApplyOptions) -> Result<ApplyReport, KernelError> {
    Ok(match converge_or_prove(model, opts)? {
        Converged::Proved(host) => ApplyReport {
            plan: plan_for(opts.plans, model, &host),
            changes: Changes::default(),
        },
        Converged::Applied(report) => *report,
    })
}

/// [`apply`] for a command, which prints only the plan's outline: a proved no-op
/// builds no plan (for a 10,000-selector config, most of what the proof costs).
pub fn apply_outlined(model: &Model, opts: &ApplyOptions) -> Result<Applied, KernelError> {
    Ok(match converge_or_prove(model, opts)? {
        Converged::Proved(host) => Applied {
            outline: plan::outline(model, &host),
            changes: Changes::default(),
        },
        Converged::Applied(report) => Applied {
            outline: report.plan.outline(),
            changes: report.changes,
        },
    })
}

enum Converged {
    /// A no-op, proved on this host view: the kernel holds the model's plan on it.
    Proved(HostView),
    Applied(Box<ApplyReport>),
}

fn converge_or_prove(model: &Model, opts: &ApplyOptions) -> Result<Converged, KernelError> {
    let _lock = match opts.lock {
        Locking::Wait(wait) => {
            let lock = rundir::lock(wait)?;
            if let Some(check) = opts.when_locked {
                check()?;
            }
            Some(lock)
        }
        Locking::Held(_) => None,
    };
    // Injected faults test the full path; they neither take nor leave a proof.
    let provable = opts.faults.fail_after.is_none() && opts.faults.abort_after.is_none();
    // The proof only saves work: where it cannot read something, the full path reads
    // everything again and reports what fails.
    let proof = if provable {
        noop::prove(model, &opts.health_down, opts.plans, opts.listings).unwrap_or(None)
    } else {
        None
    };
    let planned = match proof {
        Some(noop::Proof {
            host,
            outcome: noop::Outcome::Proved,
        }) => return Ok(Converged::Proved(host)),
        failed => failed,
    };
    let result = converge(model, opts, planned);
    // A failed record only costs the next apply its shortcut; a failed apply leaves none,
    // and neither does one whose record could not be written.
    let _ = match &result {
        Ok((report, expected, planned_on)) if provable => {
            noop::remember(model, (planned_on, &report.plan), opts.plans, *expected)
                .or_else(|_| noop::forget())
        }
        _ => noop::forget(),
    };
    result.map(|(report, _, _)| Converged::Applied(Box::new(report)))
}

/// The full path of `apply` (the caller holds the lock), given what a failed proof read
/// (the host view, the plan when it built one, and netlink's view and the ruleset
/// listing when it read them). Returns the report, the ruleset generation the kernel
/// should hold now if nobody else committed meanwhile, and the host view the plan was
/// built on (both for `noop::remember`).
fn converge(
    model: &Model,
    opts: &ApplyOptions,
    planned: Option<noop::Proof>,
) -> Result<(ApplyReport, Option<u32>, HostView), KernelError> {
    let (observed, plan, mut changes, generation) = prepare_with(model, planned, opts)?;
    // Our nft script is one transaction: one generation more.
    let expected = generation.map(|g| {
        if changes.nft.is_some() {
            g.wrapping_add(1)
        } else {
            g
        }
    });
    if changes.is_empty() {
        return Ok((ApplyReport { plan, changes }, expected, observed.host));
    }
    let (saved_table, unrestorable) = match (&changes.nft, &observed.nft_fingerprint) {
        (Some(_), Some(fp)) => match restorable_table(fp)? {
            Some(text) => (Some(text), false),
            None => (None, true),
        },
        _ => (None, false),
    };
    // Sticky sources survive the replace (same transaction).
    if let (Some(script), Some(old)) = (changes.nft.as_mut(), saved_table.as_deref()) {
        script.push_str(&nft::carry_sticky_sources(old, &plan.nft));
    }
    // So do the counts of the named counters (`nft::carry_counters`), read just before:
    // what is counted in the milliseconds between is lost. Without them (a read that
    // failed), the counters start again from zero: not worth failing an apply for.
    if let (Some(script), Some(_)) = (changes.nft.as_mut(), &observed.nft_fingerprint) {
        if let Ok(counts) = super::status::policy_counters() {
            *script = nft::carry_counters(script, &counts);
        }
    }
    let state_before = state::load()?;
    if let Some(before_change) = opts.before_change {
        before_change(&Before {
            observed: &observed,
            changes: &changes,
            saved_table: saved_table.as_deref(),
            state: &state_before,
        })?;
    }
    let faults = opts.faults;
    if let Err(e) = execute(&changes, faults, false) {
        let rollback = roll_back(
            &observed,
            changes.nft.is_some(),
            saved_table.as_deref(),
            &state_before,
            faults,
        );
        let msg = match rollback {
            Ok(()) if unrestorable => format!(
                "{e}\nrolled back, except table inet {}: it held names that nft syntax cannot carry (added by someone else), so it was removed instead of restored; run `symroute apply` again",
                nft::TABLE
            ),
            Ok(()) => format!("{e}\nrolled back: the host is as it was before this apply"),
            Err(r) => format!(
                "{e}\nrollback also failed, run `symroute apply` again or `symroute remove`: {r}"
            ),
        };
        return Err(KernelError::Other(msg));
    }
    if changes.nft.is_some() {
        record_table_digest()?;
        record_table(Some(&plan.nft))?;
    }
    Ok((ApplyReport { plan, changes }, expected, observed.host))
}

/// Our table as `nft list` prints it, to put back on rollback and to carry sticky sources
/// from; `None` when something in it is not plain (a chain `c; add table ip pwned`, a set
/// element's comment, added by someone else): nft syntax has no quoting for names, so
/// replaying such text would run the name as commands. The check reads the JSON
/// listing, where every name is a JSON string (data), before the text is read.
fn restorable_table(fingerprint: &str) -> Result<Option<String>, KernelError> {
    if let Some(text) = recorded_table(fingerprint)? {
        return Ok(Some(text));
    }
    literal_listing(&["list", "table", "inet", nft::TABLE])
}

/// `nft ARGS` (a listing), when everything in it reads back literally: the JSON listing
/// is checked first, where every name is a JSON string (data), then the text is read.
fn literal_listing(args: &[&str]) -> Result<Option<String>, KernelError> {
    let json_args: Vec<&str> = std::iter::once("-j").chain(args.iter().copied()).collect();
    let json = cmd::run("nft", &json_args, None)?;
    let listing: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| KernelError::Parse {
            cmd: format!("nft {}", json_args.join(" ")),
            detail: e.to_string(),
        })?;
    let items = listing["nftables"].as_array().into_iter().flatten();
    if !items
        .filter(|i| i.get("metainfo").is_none())
        .all(|i| literal_json(i) && !lost_cgroup(i))
    {
        return Ok(None);
    }
    Ok(Some(cmd::run("nft", args, None)?))
}

/// Where the text of a table naming cgroups is kept after symroute loaded it.
fn recorded_table_path() -> Result<std::path::PathBuf, KernelError> {
    rundir::netns_file("table.nft")
}

/// Keeps the text of the table just loaded when it names cgroups (`None`: no table, or
/// one without), for [`recorded_table`]. Listing such a table makes nft look for each
/// cgroup by walking /sys/fs/cgroup: ~0.5-1 s for ten cgroups on a tree of 600 (measured
/// here), which every apply that replaces the table (a failover, a cgroup appearing)
/// would pay to save what a rollback puts back.
pub(crate) fn record_table(text: Option<&str>) -> Result<(), KernelError> {
    let p = recorded_table_path()?;
    match text.filter(|t| t.contains("type cgroupsv2")) {
        Some(t) => rundir::write(&p, t.as_bytes()),
        None => rundir::remove(&p).map(drop),
    }
}

/// The table as symroute last loaded it, when it named cgroups and is still exactly that
/// table (the fingerprint in its comment, and no rule added, deleted or replaced since:
/// the digest recorded then), with the current elements of its dynamic sticky sets
/// (listed one by one: they hold addresses, never cgroups). `None`: list it instead.
fn recorded_table(fingerprint: &str) -> Result<Option<String>, KernelError> {
    let Some(mut text) = rundir::read(&recorded_table_path()?)? else {
        return Ok(None);
    };
    if !text.contains(&format!("\tcomment \"symroute {fingerprint}\"\n")) {
        return Ok(None);
    }
    let recorded = state::load()?.table_digest;
    if recorded.is_none() || observe::table_digest()? != recorded {
        return Ok(None);
    }
    let sticky: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("\tset sticky_")?.strip_suffix(" {"))
        .map(|rest| format!("sticky_{rest}"))
        .collect();
    for name in sticky {
        // Our own names (`sticky_p1_2000000_4`), from our own text: plain words.
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(None);
        }
        // As `restorable_table`: only text that reads back literally is replayed (an
        // element's comment added by someone else could hold anything).
        let Some(listing) = literal_listing(&["list", "set", "inet", nft::TABLE, &name])? else {
            return Ok(None);
        };
        let (Some(old), Some(new)) = (set_block(&text, &name), set_block(&listing, &name)) else {
            return Ok(None);
        };
        text = text.replacen(&old, &new, 1);
    }
    Ok(Some(text))
}

/// `\tset NAME {` … `\t}\n` in a table's text.
fn set_block(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("\tset {name} {{\n"))?;
    let len = text[start..].find("\n\t}\n")? + 4;
    Some(text[start..start + len].to_string())
}

/// Whether a piece of `nft -j` output names a cgroup by its bare id: nft found no cgroup
/// with it (removed since the table was loaded), and its text syntax reads a number as a
/// path, so the listing would not load again.
fn lost_cgroup(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let cgroup_key = |k: &Value| k["socket"]["key"] == "cgroupv2";
    let has_number = |v: &Value| -> bool {
        fn walk(v: &Value) -> bool {
            match v {
                Value::Number(_) => true,
                Value::Array(a) => a.iter().any(walk),
                Value::Object(o) => o.values().any(walk),
                _ => false,
            }
        }
        walk(v)
    };
    // Only the keys of a map's elements are cgroups (its data are verdicts).
    let keys = |elems: &Value| -> bool {
        elems.as_array().is_some_and(|a| {
            a.iter().any(|e| match e.as_array() {
                Some(pair) => pair.first().is_some_and(has_number),
                None => has_number(e),
            })
        })
    };
    match v {
        Value::Object(o) => {
            if let Some(m) = o.get("match").filter(|m| cgroup_key(&m["left"])) {
                return has_number(&m["right"]);
            }
            if let Some(m) = o.get("vmap").filter(|m| cgroup_key(&m["key"])) {
                return keys(&m["data"]["set"]);
            }
            if let Some(set) = ["set", "map"]
                .iter()
                .find_map(|k| o.get(*k).filter(|s| s["type"] == "cgroupsv2"))
            {
                return keys(&set["elem"]);
            }
            o.values().any(lost_cgroup)
        }
        Value::Array(a) => a.iter().any(lost_cgroup),
        _ => false,
    }
}

/// Whether every string in a piece of `nft -j` output would read back literally in nft's
/// text syntax: names and values of letters, digits and `_.:/-@,+`, or operators
/// (`==`, `!=`, `&`). Everything symroute writes passes; a name holding `;`, quotes,
/// braces, spaces or control characters (possible through JSON or nfnetlink) does not.
fn literal_json(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:/-@,+<>=!&|^".contains(c))
        }
        Value::Array(a) => a.iter().all(literal_json),
        Value::Object(o) => o.values().all(literal_json),
        _ => true,
    }
}

/// Remember the digest of the table as it is now (after symroute wrote it).
pub(crate) fn record_table_digest() -> Result<(), KernelError> {
    let mut st = state::load()?;
    st.table_digest = observe::table_digest()?;
    state::save(&st)
}

/// The read-only half of apply: what would change (`symroute plan`), with the gateways
/// health checks hold down (name → why).
pub fn prepare(
    model: &Model,
    health_down: &BTreeMap<String, String>,
) -> Result<(Observed, Plan, Changes), KernelError> {
    let opts = ApplyOptions {
        health_down: health_down.clone(),
        ..ApplyOptions::default()
    };
    prepare_with(model, None, &opts).map(|(observed, plan, changes, _)| (observed, plan, changes))
}

/// `prepare`, taking `planned`'s plan instead of planning again when the host view it
/// was built from is the one observed now (planning is pure), and its observation when
/// it made one (both halves were read under the same lock, a moment ago).
fn prepare_with(
    model: &Model,
    planned: Option<noop::Proof>,
    opts: &ApplyOptions,
) -> Result<(Observed, Plan, Changes, Option<u32>), KernelError> {
    let (planned, observed) = match planned {
        Some(noop::Proof {
            host,
            outcome: noop::Outcome::Failed(failed),
        }) => (failed.plan.map(|plan| (host, plan)), failed.observed),
        _ => (None, None),
    };
    let halves = match observed {
        Some(halves) => halves,
        None => {
            let mark = opts.listings.map(ListingMemo::mark);
            let halves = observe::halves()?;
            ListingMemo::keep_if(opts.listings, mark, &halves.ruleset);
            halves
        }
    };
    let generation = halves.generation;
    let mut observed = halves.complete()?;
    observed.host.health_down = opts.health_down.clone();
    observed.host.cgroups = super::cgroup::observe(model);
    let plan = match planned {
        Some((host, plan)) if host == observed.host => plan,
        _ => plan_for(opts.plans, model, &observed.host),
    };
    let conflicts = diff::conflicts(&plan, &observed);
    if !conflicts.is_empty() {
        return Err(KernelError::Conflicts(conflicts));
    }
    let st = state::load()?;
    let mut changes = diff::diff(&plan, &observed, &st.sysctls);
    // The fingerprint says the table is the one symroute wrote; the digest of its rules
    // says whether anyone altered it since (cheap: one nfnetlink dump).
    if let (None, Some(want)) = (&changes.nft, &st.table_digest) {
        if observe::table_digest()?.as_ref() != Some(want) {
            changes.nft = Some(nft::replace_script(&plan.nft));
        }
    }
    Ok((observed, plan, changes, generation))
}

fn checkpoint(step: Step, faults: Faults) -> Result<(), KernelError> {
    if faults.abort_after == Some(step) {
        eprintln!("symroute: aborting after step {step:?} (--abort-after)");
        std::process::abort();
    }
    if faults.fail_after == Some(step) {
        return Err(KernelError::Other(format!(
            "injected failure after step {step:?} (--inject-failure)"
        )));
    }
    Ok(())
}

/// Run the changes in order. `best_effort` carries on past errors and reports them at the end.
pub(crate) fn execute(c: &Changes, faults: Faults, best_effort: bool) -> Result<(), KernelError> {
    let mut errors = Vec::new();
    let mut step = |r: Result<(), KernelError>| -> Result<(), KernelError> {
        match r {
            Err(e) if best_effort => {
                errors.push(e.to_string());
                Ok(())
            }
            other => other,
        }
    };
    step(write_sysctls(&c.sysctls, &c.sysctls_restore))?;
    checkpoint(Step::Sysctls, faults)?;
    if let Some(script) = &c.nft {
        step(cmd::run("nft", &["-f", "-"], Some(script)).map(drop))?;
    }
    checkpoint(Step::Nft, faults)?;
    // One socket for all route and rule batches, opened on first use.
    let mut nl = None;
    for family in [Family::Inet4, Family::Inet6] {
        let del: Vec<Request> = c
            .routes_del
            .iter()
            .filter(|r| r.family == family)
            .map(|r| Request::DelRoute(r.clone()))
            .collect();
        let add: Vec<Request> = c
            .routes_add
            .iter()
            .filter(|r| r.family == family)
            .map(|r| Request::AddRoute(r.clone()))
            .collect();
        step(batch(&mut nl, &del, best_effort))?;
        step(batch(&mut nl, &add, best_effort))?;
    }
    checkpoint(Step::Routes, faults)?;
    for family in [Family::Inet4, Family::Inet6] {
        let del: Vec<Request> = c
            .rules_del
            .iter()
            .filter(|r| r.family == family)
            .map(|r| Request::DelRule(r.clone()))
            .collect();
        let add: Vec<Request> = c
            .rules_add
            .iter()
            .filter(|r| r.family == family)
            .map(|r| Request::AddRule(r.clone()))
            .collect();
        step(batch(&mut nl, &del, best_effort))?;
        step(batch(&mut nl, &add, best_effort))?;
    }
    checkpoint(Step::Rules, faults)?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(KernelError::Other(errors.join("\n")))
    }
}

/// Send one batch of rule or route changes, opening the netlink socket on first need.
fn batch(
    nl: &mut Option<Netlink>,
    requests: &[Request],
    best_effort: bool,
) -> Result<(), KernelError> {
    if requests.is_empty() {
        return Ok(());
    }
    let socket = match nl {
        Some(socket) => socket,
        None => nl.insert(Netlink::open()?),
    };
    socket.apply(requests, best_effort)
}

/// Record previous values (once, before the first change) and write the new ones.
fn write_sysctls(set: &[SysctlChange], restore: &[SysctlChange]) -> Result<(), KernelError> {
    if set.is_empty() && restore.is_empty() {
        return Ok(());
    }
    let mut st = state::load()?;
    for c in set {
        st.sysctls
            .entry(c.key.clone())
            .or_insert_with(|| c.from.clone());
    }
    state::save(&st)?;
    for c in set.iter().chain(restore) {
        let path = observe::sysctl_path(&c.key);
        std::fs::write(&path, &c.to).map_err(|source| KernelError::Io {
            what: format!("setting {} = {} ({path})", c.key, c.to),
            source,
        })?;
    }
    for c in restore {
        st.sysctls.remove(&c.key);
    }
    state::save(&st)
}

/// Put back the rules, routes, table and sysctls that `before` saw. The table is only
/// touched when this apply changed it (`nft_changed`): otherwise `saved_table` is `None`
/// although the table exists, and must stay.
///
/// It does not give up when it cannot read the kernel: the read is tried again a few
/// times, and if it still fails, what needs no reading (the table, the sysctls' old
/// values, the old rules and routes added back) is done anyway and the failure reported.
pub(crate) fn roll_back(
    before: &Observed,
    nft_changed: bool,
    saved_table: Option<&str>,
    state_before: &state::State,
    faults: Faults,
) -> Result<(), KernelError> {
    let read = |attempt: u32| {
        if attempt < faults.fail_rollback_reads {
            return Err(KernelError::Other(format!(
                "injected read failure {} (--fail-rollback-reads)",
                attempt + 1
            )));
        }
        observe::observe_netlink()
    };
    let mut now = read(0);
    for (attempt, pause) in [50, 200, 500].into_iter().enumerate() {
        if now.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(pause));
        now = read(attempt as u32 + 1);
    }
    let (now, unread) = match now {
        Ok(now) => (now, None),
        Err(e) => (Observed::default(), Some(e)),
    };
    let nft = nft_changed.then(|| match saved_table {
        Some(text) => nft::replace_script(text),
        None => nft::delete_script(),
    });
    let changes = match &unread {
        None => Changes {
            nft,
            rules_del: now
                .rules
                .difference(&before.rules)
                .cloned()
                .collect::<Vec<RuleSpec>>(),
            rules_add: before.rules.difference(&now.rules).cloned().collect(),
            routes_del: now
                .routes
                .difference(&before.routes)
                .cloned()
                .collect::<Vec<RouteSpec>>(),
            routes_add: before.routes.difference(&now.routes).cloned().collect(),
            sysctls: Vec::new(),
            sysctls_restore: before
                .host
                .sysctls
                .iter()
                .filter_map(|(k, v)| {
                    let cur = now.host.sysctls.get(k)?;
                    (cur != v).then(|| SysctlChange {
                        key: k.clone(),
                        from: cur.clone(),
                        to: v.clone(),
                    })
                })
                .collect(),
        },
        // Blind: what was there goes back in (an add of what exists is refused and
        // reported, harmlessly); what this apply added cannot be told apart unread.
        Some(_) => Changes {
            nft,
            rules_add: before.rules.iter().cloned().collect(),
            routes_add: before.routes.iter().cloned().collect(),
            sysctls_restore: before
                .host
                .sysctls
                .iter()
                .map(|(k, v)| SysctlChange {
                    key: k.clone(),
                    from: String::new(),
                    to: v.clone(),
                })
                .collect(),
            ..Changes::default()
        },
    };
    let r = execute(&changes, Faults::default(), true);
    let saved = state::save(state_before);
    // The table put back has new rule handles.
    let digest = if nft_changed {
        record_table_digest().and(record_table(saved_table))
    } else {
        Ok(())
    };
    match unread {
        Some(e) => Err(KernelError::Other(format!(
            "could not read the kernel to roll back ({e}); put back the nft table and sysctls and re-added the old rules and routes, but rules and routes this apply added may remain: run `symroute remove` or apply again{}",
            r.err().map(|e| format!("; also: {e}")).unwrap_or_default()
        ))),
        None => r.and(saved).and(digest),
    }
}

#[cfg(test)]
mod tests {
    use super::lost_cgroup;
    use serde_json::json;

    #[test]
    fn a_cgroup_listed_by_id_cannot_be_replayed() {
        let rule = |right: serde_json::Value| json!({"rule": {"expr": [{"match": {"op": "==", "left": {"socket": {"key": "cgroupv2"}}, "right": right}}]}});
        assert!(!lost_cgroup(&rule(json!("unified/system.slice/x.service"))));
        assert!(lost_cgroup(&rule(json!(4242))));
        assert!(lost_cgroup(&rule(json!({"set": ["unified/a", 4242]}))));
        assert!(!lost_cgroup(&rule(json!("@p0_cg2"))));
        let map = |elem: serde_json::Value| json!({"map": {"type": "cgroupsv2", "map": "verdict", "elem": elem}});
        assert!(!lost_cgroup(&map(
            json!([["unified/a", {"jump": {"target": "try_p1"}}]])
        )));
        assert!(lost_cgroup(&map(
            json!([[77, {"jump": {"target": "try_p1"}}]])
        )));
        // Other numbers (marks, counters, uids) are fine.
        assert!(!lost_cgroup(
            &json!({"rule": {"expr": [{"match": {"left": {"meta": {"key": "skuid"}}, "right": 1001}}]}})
        ));
    }
}
