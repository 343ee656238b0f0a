//! `symroute run`: a daemon that keeps the policy true.
//!
//! One actor (the thread that called `run`) owns the model and is the only one that
//! touches the kernel, through `kernel::apply::apply`, the path `symroute apply` takes
//! too: observe → plan → diff → apply the difference, with its rollback and its
//! per-namespace lock (so a `symroute apply` by hand meanwhile is safe). Watchers on
//! their own threads only send `Event`s over a channel:
//!
//! - `monitor`: rtnetlink and nftables notifications (its own sockets, apart from the
//!   request socket), one event per burst;
//! - `signals`: SIGHUP (reload), SIGTERM/SIGINT (exit);
//! - `health`: probe results;
//! - `control`: requests from `symroute status`/`apply`/`confirm` on a unix socket.
//!
//! Events only mark the state dirty; `debounce` decides when to reconcile (a quiet
//! period, and a maximum delay from the first event). After an apply that changed
//! something, one more reconcile follows a quiet period later: it verifies the result,
//! and the notifications of symroute's own changes fold into it. It finds nothing to do
//! and writes nothing, so the echo ends there. Foreign objects are never touched:
//! a conflict is logged, nothing is applied, and the next change tries again.
//!
//! The process must already be in its network namespace (`kernel::netns::enter`): every
//! thread and child starts from this one and inherits it.

mod cgroups;
pub mod control;
pub mod debounce;
pub mod event;
mod flush;
pub mod gateways;
pub mod ha;
pub mod health;
pub mod hooks;
pub mod log;
pub mod metrics;
mod monitor;
pub mod pending;
pub mod protocol;
pub mod serve;
mod signals;
pub mod systemd;
mod timeout;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use log::notice;

use crate::kernel::apply::{self, ApplyOptions, ApplyReport, Locking};
use crate::kernel::rundir;
use crate::kernel::KernelError;
use crate::model::Model;
use crate::plan::{GatewayState, Plan};
use debounce::{Backoff, Debounce, Pace, Pending};
use event::{Event, KernelEvent, Sources};
use systemd::{one_line, Systemd};

/// Reconciles that changed something may come this many at once…
const PACE_BURST: u32 = 20;
/// …and then one per this long, so a program undoing our objects in a loop is answered
/// at a bounded rate.
const PACE_REFILL: Duration = Duration::from_millis(200);
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// How soon to try again when another symroute process holds the namespace's lock.
const LOCKED_RETRY: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Options {
    /// The config file, read again on SIGHUP.
    pub config: PathBuf,
    /// The config as loaded at startup (a bad file is refused before the daemon starts).
    pub model: Model,
    /// The namespace entered, for the log.
    pub netns: Option<String>,
    /// On SIGTERM/SIGINT, remove everything symroute made (default: leave it applied).
    pub remove_on_exit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Watcher(String),
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        what: what.to_string(),
        source,
    }
}

/// Apply, then keep applying whenever something that affects the plan changes, until
/// SIGTERM or SIGINT. Errors: the first apply failed (conflicts included), a watcher
/// could not start or died, or `--remove-on-exit` could not remove everything.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    let signals =
        signals::SignalWatch::install().map_err(io_error("installing signal handlers"))?;
    crate::kernel::netlink::close_nfnetlink_in_background();
    // Subscribed before the first apply: nothing that changes after it goes unseen.
    let monitor = monitor::Monitor::open().map_err(io_error("watching the kernel"))?;
    info!(
        "symroute {} starting: config {}{}; watching links, addresses, routes, rules, rp_filter and nftables ({} KiB receive buffer)",
        env!("CARGO_PKG_VERSION"),
        opts.config.display(),
        opts.netns
            .as_deref()
            .map(|n| format!(", network namespace {n}"))
            .unwrap_or_default(),
        monitor.rcvbuf() / 1024
    );
    let (tx, rx) = mpsc::channel();
    let ledger = std::sync::Arc::new(crate::kernel::listing::NftLedger::default());
    monitor
        .spawn(tx.clone(), ledger.clone())
        .map_err(io_error("starting the monitor thread"))?;
    signals
        .spawn(tx.clone())
        .map_err(io_error("starting the signal thread"))?;
    let _control = control::Listener::spawn(tx.clone())?;
    // Before the first apply too: a cgroup appearing after it is an event.
    let cgroup_watch = cgroups::spawn(&opts.model, &tx).map_err(io_error("watching cgroups"))?;
    let metrics = metrics::Metrics::start(opts.model.settings.metrics)
        .map_err(io_error("serving metrics"))?;

    let now = Instant::now();
    let ha = ha::Ha::new(opts.model.settings.ha_pair);
    let mut d = Daemon {
        ha,
        last_gateways: Vec::new(),
        systemd: Systemd::from_env(now),
        config: opts.config,
        model: opts.model,
        remove_on_exit: opts.remove_on_exit,
        debounce: Debounce::new(debounce::QUIET, debounce::MAX_DELAY),
        pace: Pace::new(PACE_BURST, PACE_REFILL, now),
        backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
        retry_at: None,
        routes: BTreeMap::new(),
        status: String::new(),
        last_conflicts: Vec::new(),
        reload_failed: false,
        tx,
        probes: None,
        windows: BTreeMap::new(),
        health_down: BTreeMap::new(),
        metrics,
        started: SystemTime::now(),
        live: gateways::Live::default(),
        pending: None,
        hooks: hooks::Hooks::default(),
        netns: opts.netns,
        cgroup_watch,
        waiting: BTreeSet::new(),
        cgroups: BTreeSet::new(),
        plans: crate::kernel::plans::PlanMemo::default(),
        listings: crate::kernel::listing::ListingMemo::new(ledger),
    };
    // A pending `apply --confirm` of a previous daemon goes on where it was.
    if let Some((config, model, pending)) = pending::resume() {
        d.config = config;
        d.model = model;
        d.pending = pending;
    }
    // At startup, any failure is fatal (exit 1), conflicts included: as `symroute apply`.
    let report = d.attempt(&Why::Start)?;
    // Probes start once the gateways' routes are in place: one sent before would take
    // the main table and count as lost.
    d.probes =
        Some(health::spawn(&d.model, &d.tx).map_err(io_error("starting the health probes"))?);
    d.settled(&report);
    d.systemd.ready(&d.status());
    d.run_loop(rx)
}

/// Why a reconcile runs, for the log.
enum Why {
    Start,
    Changes(Pending),
    Retry,
    Reload,
    /// A `reconcile` request on the control socket (`symroute exec`).
    Asked,
}

impl Why {
    fn describe(&self, now: Instant) -> String {
        match self {
            Why::Start => "at startup".into(),
            Why::Retry => "retrying after a failure".into(),
            Why::Reload => "after reloading the config".into(),
            Why::Asked => "when asked (symroute exec)".into(),
            Why::Changes(p) if p.sources.is_empty() && !p.overrun => {
                "verifying the last apply".into()
            }
            Why::Changes(p) => format!(
                "{} ms after a change ({}){}",
                now.saturating_duration_since(p.first).as_millis(),
                p.sources,
                if p.overrun {
                    " (notifications were lost: full resync)"
                } else {
                    ""
                }
            ),
        }
    }
}

struct Daemon {
    /// HA pairs: when a dead gateway's connections may be flushed (`ha`).
    ha: ha::Ha,
    /// The gateways of the last successful apply's plan.
    last_gateways: Vec<crate::plan::GatewayPlan>,
    systemd: Systemd,
    config: PathBuf,
    model: Model,
    /// The plan of the last pass, reused while the model and host view are the same.
    plans: crate::kernel::plans::PlanMemo,
    /// The foreign tables of the last ruleset listing, reused while the monitor reads
    /// commits to our own table only.
    listings: crate::kernel::listing::ListingMemo,
    remove_on_exit: bool,
    debounce: Debounce,
    pace: Pace,
    backoff: Backoff,
    /// When to try again after a failed apply.
    retry_at: Option<Instant>,
    /// The gateways each `route_via` policy of several sends new connections to, as of the
    /// last successful reconcile, to log failovers.
    routes: BTreeMap<String, Vec<String>>,
    /// The STATUS= line without the reload note.
    status: String,
    /// The conflicts last logged, so a storm of events doesn't repeat them.
    last_conflicts: Vec<String>,
    reload_failed: bool,
    /// For restarting the probes on reload.
    tx: mpsc::Sender<Event>,
    probes: Option<health::Probes>,
    /// Each checked gateway's per-target probe windows.
    windows: BTreeMap<String, Vec<health::Window>>,
    /// Gateways their checks declare down (name → why), handed to the plan.
    health_down: BTreeMap<String, String>,
    /// What the metrics thread serves.
    metrics: metrics::Metrics,
    started: SystemTime,
    /// Each gateway's state, since, failovers, round trips (for status and hooks).
    live: gateways::Live,
    /// An `apply --confirm` through the control socket, not confirmed yet.
    pending: Option<pending::PendingConfirm>,
    hooks: hooks::Hooks,
    netns: Option<String>,
    /// Follows the cgroups the plan may match (restarted with a new config).
    cgroup_watch: Option<cgroups::Watch>,
    /// (policy, cgroup) pairs not matched at the last reconcile, and all those the
    /// config names, to log what changed.
    waiting: BTreeSet<(String, String)>,
    cgroups: BTreeSet<(String, String)>,
}

impl Daemon {
    fn run_loop(&mut self, rx: Receiver<Event>) -> Result<(), DaemonError> {
        loop {
            let now = Instant::now();
            let wake = [
                self.due_at(now),
                self.retry_at,
                self.systemd.next_ping(),
                self.confirm_deadline(),
                self.ha.deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let first = next_event(&rx, wake, now)?;
            // Take in everything already queued before deciding: a burst read while the
            // last reconcile ran is one change, not many.
            let mut reload = false;
            let mut probed = false;
            for e in first.into_iter().chain(rx.try_iter()) {
                match e {
                    Event::Kernel(k) => self.debounce.note(&k),
                    Event::Reload => reload = true,
                    Event::Stop(sig) => return self.stop(sig),
                    Event::WatcherFailed(msg) => return Err(DaemonError::Watcher(msg)),
                    Event::Health {
                        gateway,
                        target,
                        ok,
                        rtt,
                    } => {
                        self.live.note_rtt(&gateway, rtt);
                        self.health(&gateway, target, ok);
                        probed = true;
                    }
                    Event::Control(call) => self.control(call),
                }
            }
            // Once per batch of probe results, and only for a metrics page someone serves.
            if probed && self.metrics.serving() {
                self.metrics
                    .probed(&self.live.snapshot(&self.model, &self.windows));
            }
            let now = Instant::now();
            self.systemd.ping_if_due(now);
            self.ha.due(now, &self.last_gateways);
            if reload {
                self.reload();
            } else if self.confirm_due() {
                self.confirm_expired();
            } else if self.retry_at.is_some_and(|t| t <= now) {
                let _ = self.reconcile(Why::Retry);
            } else if self.due_at(now).is_some_and(|t| t <= now) {
                if let Some(p) = self.debounce.take_due(now) {
                    let _ = self.reconcile(Why::Changes(p));
                }
            }
        }
    }

    /// When pending changes may be reconciled: debounced, paced, and after a failure not
    /// before the retry (a failed apply's rollback is itself a burst of changes: without
    /// this, a persistent failure would retry in a loop).
    fn due_at(&mut self, now: Instant) -> Option<Instant> {
        let d = self.debounce.deadline()?;
        let t = d.max(self.pace.ready_at(now));
        Some(self.retry_at.map_or(t, |r| t.max(r)))
    }

    /// One apply; logs what it changed. Errors are the caller's to report.
    fn attempt(&mut self, why: &Why) -> Result<ApplyReport, KernelError> {
        let started = Instant::now();
        let reason = why.describe(started);
        // At startup there is no loop to keep going yet: wait as a command would.
        let wait = match why {
            Why::Start => rundir::WAIT_COMMAND,
            _ => rundir::WAIT_DAEMON,
        };
        let opts = ApplyOptions {
            health_down: self.health_down.clone(),
            lock: Locking::Wait(wait),
            // No `when_locked` check: a command's pending `apply --confirm` may roll back
            // under us, and the loop reconciles again after it.
            plans: Some(&self.plans),
            listings: Some(&self.listings),
            ..ApplyOptions::default()
        };
        let report = apply::apply(&self.model, &opts);
        self.metrics.reconciled(started.elapsed());
        let report = report?;
        let took = started.elapsed().as_millis();
        let changes = self.gateways_changed(&report.plan, matches!(why, Why::Start));
        self.log_waiting(&report.plan);
        self.log_failovers(&report.plan);
        // Gateways seen up before and down now (not those found down at startup).
        let went_down: Vec<_> = changes
            .iter()
            .filter(|c| c.went_down())
            .filter_map(|c| report.plan.gateways.iter().find(|g| g.name == c.gateway))
            .cloned()
            .collect();
        let lines = report.changes.summary();
        if lines.is_empty() {
            let msg = format!("reconciled {reason}: no changes ({took} ms)");
            if matches!(why, Why::Start | Why::Reload) {
                info!("{msg}");
            } else {
                debug!("{msg}");
            }
        } else {
            for l in &lines {
                notice!("applied: {}", one_line(l));
            }
            notice!(
                "reconciled {reason}: {} change(s) applied in {took} ms",
                lines.len()
            );
            let end = Instant::now();
            self.pace.spend(end);
            // Verify a quiet period later. The notifications of our own changes (some
            // read only after apply returned) fold into that same pass, which finds
            // nothing to do, writes nothing, and so ends the echo (its whole nftables
            // transaction does not make it due at once: `Debounce::note`).
            self.debounce.note(&KernelEvent::own_echo(end));
        }
        // After the apply that took them out: their connections re-establish elsewhere
        // (in an HA pair, only while this box is the master: `ha`).
        self.last_gateways = report.plan.gateways.clone();
        self.ha
            .went_down(went_down, report.plan.mark_mask, Instant::now());
        if self.metrics.serving() {
            self.metrics.applied(
                &report.plan,
                &self.live.snapshot(&self.model, &self.windows),
            );
        }
        Ok(report)
    }

    /// After a successful apply: clear failure state, update STATUS.
    fn settled(&mut self, report: &ApplyReport) {
        self.retry_at = None;
        self.backoff.succeeded();
        self.last_conflicts.clear();
        self.status = summary(&report.plan);
    }

    /// A reconcile inside the loop: failures are logged and retried, never fatal. Returns
    /// the changes made, or what went wrong.
    fn reconcile(&mut self, why: Why) -> Result<Vec<String>, String> {
        // Pending changes are covered by this reconcile, whatever triggered it.
        let why = match (why, self.debounce.take()) {
            (Why::Changes(p), Some(q)) => Why::Changes(Pending {
                first: p.first.min(q.first),
                last: p.last.max(q.last),
                sources: p.sources.union(q.sources),
                overrun: p.overrun || q.overrun,
                batches: p.batches + q.batches,
                nft_committed: p.nft_committed || q.nft_committed,
                echo: p.echo || q.echo,
            }),
            (why, _) => why,
        };
        let result = match self.attempt(&why) {
            Ok(report) => {
                self.settled(&report);
                Ok(report.changes.summary())
            }
            // Another symroute (an `apply`, `remove` or confirm guard by hand) is at work:
            // not a failure; look again shortly instead of blocking the loop on it.
            Err(e @ KernelError::Locked { .. }) => {
                debug!("not reconciling {} yet: {e}", why.describe(Instant::now()));
                self.retry_at = Some(Instant::now() + LOCKED_RETRY);
                Err(e.to_string())
            }
            Err(KernelError::Conflicts(conflicts)) => {
                self.metrics.apply_failed();
                let texts: Vec<String> = conflicts.iter().map(|c| one_line(&c.0)).collect();
                if texts != self.last_conflicts {
                    for t in &texts {
                        warn!("not applying, a foreign object is in the way: {t}");
                    }
                    warn!("nothing was changed; trying again on the next change");
                } else {
                    debug!("still in conflict with foreign objects; nothing changed");
                }
                self.status = format!(
                    "not applied: {} conflict(s) with foreign objects (see the log)",
                    texts.len()
                );
                let msg = format!(
                    "not applied, foreign objects are in the way:\n{}",
                    texts.join("\n")
                );
                self.last_conflicts = texts;
                // A conflict is resolved by someone changing the kernel: that is an event.
                self.retry_at = None;
                Err(msg)
            }
            Err(e) => {
                self.metrics.apply_failed();
                let delay = self.backoff.failed();
                error!(
                    "apply failed {}, trying again in {} s: {}",
                    why.describe(Instant::now()),
                    delay.as_secs(),
                    one_line(&e.to_string())
                );
                self.status = format!(
                    "apply failed (see the log), retrying in {} s",
                    delay.as_secs()
                );
                self.retry_at = Some(Instant::now() + delay);
                Err(e.to_string())
            }
        };
        self.systemd.status(&self.status());
        result
    }

    fn reload(&mut self) {
        self.systemd.reloading();
        info!("SIGHUP: reloading {}", self.config.display());
        match crate::config_file::load_trusted(&self.config) {
            Ok(model) => {
                self.metrics.reloaded(true);
                let _ = self.switch_to(self.config.clone(), model);
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    warn!("reload failed, keeping the previous config: {line}");
                }
                self.reload_failed = true;
                self.metrics.reloaded(false);
            }
        }
        self.systemd.ready(&self.status());
    }

    /// Make `model` (read from `path`) the config and apply it. Gateways whose name and
    /// check are unchanged keep their health windows and verdicts; the probes restart
    /// (their marks may have changed).
    fn switch_to(&mut self, path: PathBuf, model: Model) -> Result<Vec<String>, String> {
        self.probes = None;
        // The new config's cgroups, watched before it is applied.
        self.cgroup_watch = None;
        match cgroups::spawn(&model, &self.tx) {
            Ok(w) => self.cgroup_watch = w,
            Err(e) => error!("could not watch cgroups: {e}"),
        }
        gateways::carry_over(
            &self.model,
            &model,
            &mut self.windows,
            &mut self.health_down,
            &mut self.live,
        );
        match health::spawn(&model, &self.tx) {
            Ok(p) => self.probes = Some(p),
            Err(e) => error!("could not start the health probes: {e}"),
        }
        self.ha.set_pair(model.settings.ha_pair);
        self.model = model;
        self.config = path;
        self.reload_failed = false;
        self.last_conflicts.clear();
        self.reconcile(Why::Reload)
    }

    fn stop(&mut self, sig: &str) -> Result<(), DaemonError> {
        if !self.remove_on_exit {
            info!("{sig}: exiting; the policy stays applied (`symroute remove` takes it away)");
            self.systemd.stopping("stopping; the policy stays applied");
            return Ok(());
        }
        info!("{sig}: removing everything symroute made, then exiting");
        if self.pending.take().is_some() {
            pending::forget();
        }
        self.systemd.stopping("removing the policy");
        let changes = crate::kernel::remove::remove()?;
        for l in changes.summary() {
            notice!("removed: {}", one_line(&l));
        }
        match crate::kernel::cgroup::remove_exec() {
            Ok((gone, busy)) => {
                for c in gone {
                    notice!("removed: cgroup {c}");
                }
                for c in busy {
                    warn!("left cgroup {c}: a command started by symroute exec still runs in it");
                }
            }
            Err(e) => warn!("could not remove symroute exec's cgroups: {e}"),
        }
        notice!("removed {} object(s); exiting", changes.summary().len());
        Ok(())
    }

    /// One probe result: update the target's window; when the gateway's verdict changes,
    /// log it and reconcile (debounced like a kernel change).
    fn health(&mut self, gateway: &str, target: usize, ok: bool) {
        let Some(check) = self
            .model
            .gateways
            .iter()
            .find(|g| g.name.as_str() == gateway)
            .and_then(|g| g.check.as_ref())
        else {
            return; // from probes of a config since replaced
        };
        let windows = self
            .windows
            .entry(gateway.to_string())
            .or_insert_with(|| vec![health::Window::default(); check.targets.len()]);
        let Some(w) = windows.get_mut(target) else {
            return;
        };
        if !w.note(ok, check) {
            return;
        }
        let all_down = windows.iter().all(|w| w.down);
        let was_down = self.health_down.contains_key(gateway);
        if all_down && !was_down {
            let lost: Vec<String> = windows
                .iter()
                .zip(&check.targets)
                .map(|(w, t)| {
                    format!(
                        "{} of last {} probes lost to {t}",
                        w.lost(),
                        check.down_window
                    )
                })
                .collect();
            let why = format!("health check: {}", lost.join(", "));
            warn!("gateway {gateway} down: {}", lost.join(", "));
            self.health_down.insert(gateway.to_string(), why);
        } else if !all_down && was_down {
            notice!(
                "gateway {gateway} answers its health checks again ({} good probes in a row)",
                check.up
            );
            self.health_down.remove(gateway);
        } else {
            return;
        }
        let mut sources = Sources::default();
        sources.insert(event::Source::Health);
        self.debounce.note(&KernelEvent {
            at: Instant::now(),
            sources,
            overrun: false,
            nft_committed: false,
        });
    }

    fn status(&self) -> String {
        if self.reload_failed {
            format!(
                "{}; the last reload failed, running the previous config",
                self.status
            )
        } else {
            self.status.clone()
        }
    }

    /// Log the cgroups of policies that became matched or waiting: one the last plan
    /// matched is gone; one new to it (at startup, or a reloaded config's) does not exist
    /// yet; one that waited exists now.
    fn log_waiting(&mut self, plan: &Plan) {
        let waiting: BTreeMap<(String, String), &str> = plan
            .policies
            .iter()
            .flat_map(|p| {
                p.waiting
                    .iter()
                    .map(|w| ((p.name.clone(), w.cgroup.clone()), w.why))
            })
            .collect();
        let named: BTreeSet<(String, String)> = self
            .model
            .policies
            .iter()
            .flat_map(|p| {
                p.selector
                    .cgroup
                    .iter()
                    .map(|c| (p.name.to_string(), c.to_string()))
            })
            .collect();
        for ((policy, cgroup), why) in &waiting {
            let pair = (policy.clone(), cgroup.clone());
            if self.waiting.contains(&pair) {
                continue;
            }
            if self.cgroups.contains(&pair) {
                notice!("policy {policy}: cgroup {cgroup} is gone; its connections are matched again once it exists");
            } else {
                info!("policy {policy}: cgroup {cgroup} {why}; its connections are matched once it exists");
            }
        }
        for pair @ (policy, cgroup) in &self.waiting {
            if named.contains(pair) && !waiting.contains_key(pair) {
                notice!("policy {policy}: cgroup {cgroup} exists now; its connections are matched");
            }
        }
        self.waiting = waiting.into_keys().collect();
        self.cgroups = named;
    }

    /// After an apply: the gateways whose state changed (`gateways::Live`, the one
    /// detector), each logged (at startup: those not up), and the hooks run for those
    /// that went up↔down or are seen for the first time.
    fn gateways_changed(&mut self, plan: &Plan, start: bool) -> Vec<gateways::Change> {
        let changes = self.live.observe(plan, SystemTime::now());
        for c in &changes {
            match &c.new {
                GatewayState::Up if start => {}
                GatewayState::Up => {
                    notice!("gateway {} is up: its routes are installed", c.gateway)
                }
                GatewayState::Partial(why) => warn!(
                    "gateway {} is partly up ({}); the other family's routes are installed",
                    c.gateway,
                    one_line(why)
                ),
                GatewayState::Down(why) => warn!(
                    "gateway {} is down ({}); its rules fall through to the main table until it comes back",
                    c.gateway,
                    one_line(why)
                ),
            }
        }
        for c in changes.iter().filter(|c| c.flips()) {
            self.hooks
                .fire(&self.model.settings.on_change, c, self.netns.as_deref());
        }
        changes
    }
}

impl Daemon {
    /// Log the `route_via` policies of several gateways whose new connections now go
    /// elsewhere: away from a gateway that went down (a failover, a warning) or back to
    /// one that came back (a notice).
    fn log_failovers(&mut self, plan: &Plan) {
        let down = |name: &str| {
            plan.gateways
                .iter()
                .any(|g| g.name == name && matches!(g.state, GatewayState::Down(_)))
        };
        let mut now = BTreeMap::new();
        for p in plan.policies.iter().filter(|p| p.gateways.len() > 1) {
            let active: Vec<String> = p
                .gateways
                .iter()
                .filter(|g| g.active)
                .map(|g| g.name.clone())
                .collect();
            if let Some(before) = self.routes.get(&p.name).filter(|b| **b != active) {
                let lost: Vec<&str> = before
                    .iter()
                    .filter(|g| !active.contains(g) && down(g))
                    .map(String::as_str)
                    .collect();
                if lost.is_empty() {
                    notice!(
                        "policy {}: new connections leave via {} again (was {})",
                        p.name,
                        active.join(", "),
                        before.join(", ")
                    );
                } else {
                    warn!(
                        "failover: policy {}: new connections leave via {} ({} down)",
                        p.name,
                        active.join(", "),
                        lost.join(", ")
                    );
                }
            }
            now.insert(p.name.clone(), active);
        }
        self.routes = now;
    }
}

/// The next event, or `None` when `wake` comes first.
fn next_event(
    rx: &Receiver<Event>,
    wake: Option<Instant>,
    now: Instant,
) -> Result<Option<Event>, DaemonError> {
    let gone = || DaemonError::Watcher("every watcher thread has ended".into());
    match wake {
        None => rx.recv().map(Some).map_err(|_| gone()),
        Some(t) => match rx.recv_timeout(t.saturating_duration_since(now)) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(gone()),
        },
    }
}

/// The one-line STATUS=: `applied, 2 gateways up`, or which are not.
pub fn summary(plan: &Plan) -> String {
    let n = plan.gateways.len();
    let named = |want: fn(&GatewayState) -> bool| -> Vec<&str> {
        plan.gateways
            .iter()
            .filter(|g| want(&g.state))
            .map(|g| g.name.as_str())
            .collect()
    };
    let up = named(|s| *s == GatewayState::Up).len();
    let partial = named(|s| matches!(s, GatewayState::Partial(_)));
    let down = named(|s| matches!(s, GatewayState::Down(_)));
    let mut s = match (n, up) {
        (0, _) => "applied, no gateways".to_string(),
        (1, 1) => "applied, 1 gateway up".to_string(),
        (n, up) if up == n => format!("applied, {n} gateways up"),
        (n, up) => format!("applied, {up} of {n} gateways up"),
    };
    if !partial.is_empty() {
        s += &format!("; partly up: {}", partial.join(", "));
    }
    if !down.is_empty() {
        s += &format!("; down: {}", down.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, HostView, Link};

    fn plan_with(up1: bool, up2: bool) -> Plan {
        let m = crate::config::parse_str(
            include_str!("../../examples/two-isps-firewall.toml"),
            "two-isps.toml",
        )
        .expect("example parses");
        let mut host = HostView::default();
        for (name, up, addrs) in [
            ("up1", up1, &["203.0.113.2/24", "2001:db8:1::2/64"]),
            ("up2", up2, &["198.51.100.2/24", "2001:db8:2::2/64"]),
        ] {
            host.links.insert(
                name.into(),
                Link {
                    up,
                    addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                    peers: Vec::new(),
                },
            );
        }
        plan::build(&m, &host)
    }

    #[test]
    fn a_gateway_down_by_health_keeps_only_probe_routes() {
        let text = include_str!("../../examples/two-isps-firewall.toml").replacen(
            "via6 = \"2001:db8:1::1\"\n",
            "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\n",
            1,
        );
        let m = crate::config::parse_str(&text, "t.toml").expect("parses");
        let mut host = HostView::default();
        for (name, addrs) in [
            ("up1", ["203.0.113.2/24", "2001:db8:1::2/64"]),
            ("up2", ["198.51.100.2/24", "2001:db8:2::2/64"]),
        ] {
            host.links.insert(
                name.into(),
                Link {
                    up: true,
                    addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                    peers: Vec::new(),
                },
            );
        }
        host.health_down.insert(
            "isp1".into(),
            "health check: 3 of last 5 probes lost".into(),
        );
        let p = plan::build(&m, &host);
        assert_eq!(summary(&p), "applied, 1 of 2 gateways up; down: isp1");
        let isp1_table: Vec<String> = p
            .routes
            .iter()
            .filter(|r| r.table.id() == 42025)
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(isp1_table, ["192.0.2.10/32"]);
    }

    #[test]
    fn status_line_names_what_is_not_up() {
        assert_eq!(summary(&plan_with(true, true)), "applied, 2 gateways up");
        assert_eq!(
            summary(&plan_with(true, false)),
            "applied, 1 of 2 gateways up; down: isp2"
        );
    }
}
