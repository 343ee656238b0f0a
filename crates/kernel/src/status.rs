//! What is live, as `symroute status` shows it: each gateway's state (from the plan on
//! this host, or from the daemon's health checks when one runs), per-policy counters from
//! our nft table, and connections per gateway from conntrack marks. One `Status`, built
//! here; the command line and the daemon only print it.
//!
//! A running daemon answers with a `DaemonStatus` (its socket protocol's shape): what it
//! alone knows, each gateway's `LiveGateway` (since when, loss, round trip, failovers),
//! which `status` lays over the plan's view.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::conntrack::Conntrack;
use super::{observe, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::markmap::MarkMap;
use symroute_core::plan::{self, GatewayState, Plan, PolicyGateway};

/// A gateway's state as status, the daemon's hooks and metrics report it: up (all or
/// part of its routes installed: the reason then names what is missing) or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
}

impl State {
    pub fn of(s: &GatewayState) -> State {
        match s {
            GatewayState::Up | GatewayState::Partial(_) => State::Up,
            GatewayState::Down(_) => State::Down,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a gateway is in its state: what a partly up one misses, why a down one is down.
pub fn reason(s: &GatewayState) -> Option<String> {
    match s {
        GatewayState::Up => None,
        GatewayState::Partial(why) => Some(format!("partly up: {why}")),
        GatewayState::Down(why) => Some(why.clone()),
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// Our nft table exists.
    pub applied: bool,
    /// It is the table this config's plan makes (for people; not in the JSON).
    #[serde(skip)]
    pub matches_config: bool,
    /// The `symroute run` of this namespace, when its control socket answered.
    pub daemon: Option<DaemonInfo>,
    pub gateways: Vec<GatewayStatus>,
    pub policies: Vec<PolicyStatus>,
    /// What each mark value means here (ids, marks, tables) and its digest: the two boxes
    /// of an HA pair must agree (`symroute doctor --peer`).
    pub marks: MarkMap,
    /// This box's role in an HA pair, as keepalived last reported it (`symroute ha`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<super::state::HaRecord>,
    /// `apply --confirm` without a daemon: the one pending now, and how the last one
    /// ended (the daemon's own pending confirm is in its `DaemonStatus`).
    pub confirm: ConfirmView,
}

#[derive(Debug, Default, Serialize)]
pub struct ConfirmView {
    pub pending: Option<GuardedPending>,
    pub last: Option<LastConfirm>,
}

/// A pending `apply --confirm` and its guard.
#[derive(Debug, Serialize)]
pub struct GuardedPending {
    /// When it is rolled back unless confirmed (RFC 3339 UTC).
    pub deadline: String,
    pub deadline_unix: u64,
    pub guard_pid: u32,
    /// False: the guard is gone (killed outright), nothing rolls the change back until
    /// the next `apply --confirm` does; `symroute confirm` keeps it.
    pub guarded: bool,
}

/// How the last one ended (`ended`: kept, rolled_back_at_deadline,
/// rolled_back_unfinished, or {"failed": why}), and when.
#[derive(Debug, Serialize)]
pub struct LastConfirm {
    pub ended: super::confirm_record::Ended,
    pub at: String,
    pub at_unix: u64,
}

impl ConfirmView {
    fn read() -> ConfirmView {
        let at = |secs: u64| {
            super::clock::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        };
        ConfirmView {
            pending: super::confirm_record::pending_now().map(|(p, guarded)| GuardedPending {
                deadline: at(p.deadline_unix),
                deadline_unix: p.deadline_unix,
                guard_pid: p.guard_pid,
                guarded,
            }),
            last: super::confirm_record::last().map(|l| LastConfirm {
                at: at(l.at_unix),
                at_unix: l.at_unix,
                ended: l.ended,
            }),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub name: String,
    pub interface: String,
    pub table: u32,
    pub state: State,
    pub reason: Option<String>,
    /// Live conntrack entries whose mark carries one of this gateway's decisions.
    pub connections: u64,
    /// From the daemon (null without one): since when in this state (RFC 3339 UTC),
    /// lost probes over the check window (0.0–1.0), mean round trip of recent good
    /// probes, up→down transitions. loss/rtt_ms are null for gateways without checks.
    pub since: Option<String>,
    pub loss: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub failovers: Option<u64>,
    /// Connections `symroute exec --gateway` sent this way (the first packets its nft
    /// counter counted; the count goes on when the table is replaced, `nft::carry_counters`).
    pub exec_packets: u64,
}

/// Who is running: `symroute run`'s pid, config file and start time (RFC 3339 UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub config: String,
    pub started: String,
    pub started_unix: u64,
}

#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    pub name: String,
    pub kind: &'static str,
    pub gateway: String,
    pub mark: String,
    /// Every gateway of the policy, with weight (shares) and whether it takes new
    /// connections now.
    pub gateways: Vec<PolicyGateway>,
    /// Packets and bytes of the connections' first packets this policy classified.
    pub packets: u64,
    pub bytes: u64,
    /// Cgroups it names that are not matched yet, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<symroute_core::plan::Waiting>,
}

/// A running daemon's own view (the control socket's answer to `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon: DaemonInfo,
    /// The STATUS= line: `applied, 2 gateways up`, …
    pub summary: String,
    pub pending_confirm: Option<PendingInfo>,
    pub gateways: Vec<LiveGateway>,
    /// Gateways its health checks hold down (name → why): the plan the daemon keeps is
    /// built with them, so `status` and `plan` compare against that plan, not the bare
    /// config's.
    #[serde(default)]
    pub health_down: BTreeMap<String, String>,
    /// Its role in an HA pair, as keepalived last reported it (`symroute ha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<super::state::HaRecord>,
}

/// An `apply --confirm` the daemon goes back from unless confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInfo {
    /// When the daemon goes back to `previous_config` (RFC 3339 UTC).
    pub deadline: String,
    pub deadline_unix: u64,
    pub previous_config: String,
}

/// One gateway as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveGateway {
    pub name: String,
    pub interface: String,
    /// As of the daemon's last successful apply; `None` ("unknown") for a gateway no
    /// apply has included yet.
    #[serde(with = "state_or_unknown")]
    pub state: Option<State>,
    pub reason: Option<String>,
    /// When the gateway entered this state (or when the daemon first saw it), RFC 3339 UTC.
    pub since: String,
    pub since_unix: u64,
    /// Lost probes over the check window (0.0–1.0); null without checks.
    pub loss: Option<f64>,
    /// Mean round trip of recent good probes; null without checks or while unknown.
    pub rtt_ms: Option<f64>,
    /// up → down transitions since the daemon started.
    pub failovers: u64,
}

/// `LiveGateway::state` on the wire: "up", "down" or "unknown".
mod state_or_unknown {
    use super::State;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Option<State>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.map_or("unknown", State::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<State>, D::Error> {
        Ok(match String::deserialize(de)?.as_str() {
            "up" => Some(State::Up),
            "down" => Some(State::Down),
            _ => None,
        })
    }
}

/// `symroute status`: `model`'s plan on this host (the gateways a daemon's health checks
/// hold down are down in it), whether it is applied, the counters and connections, and
/// the daemon's live view of each gateway over the plan's.
pub fn status(model: &Model, daemon: Option<&DaemonStatus>) -> Result<Status, KernelError> {
    let mut observed = observe::observe()?;
    if let Some(d) = daemon {
        observed.host.health_down = d.health_down.clone();
    }
    observed.host.cgroups = super::cgroup::observe(model);
    let plan = plan::build(model, &observed.host);
    let applied = observed.nft_fingerprint.is_some();
    let mut st = of_plan(model, &plan, applied)?;
    st.matches_config = observed.nft_fingerprint.as_deref() == Some(plan.nft_fingerprint.as_str());
    if let Some(d) = daemon {
        st.daemon = Some(d.daemon.clone());
        if d.ha.is_some() {
            st.ha = d.ha;
        }
        for g in &mut st.gateways {
            if let Some(l) = d.gateways.iter().find(|l| l.name == g.name) {
                g.live(l);
            }
        }
    }
    Ok(st)
}

/// `symroute status` with no config to plan from (none at the default path, no `-c`, no
/// daemon to name one): what symroute has applied in this namespace, from the kernel (our
/// nft table and its policy counters, the rules and routes tagged with our protocol) and
/// from symroute's own record (the sysctls it changed and their values before). Enough to
/// see, on a host where the config was removed or never installed, whether anything is
/// left and what `remove` would undo. A type of its own, not a `Status` with holes: with
/// no model there are no gateways, policies or marks to name, only objects.
#[derive(Debug, Serialize)]
pub struct StatusWithoutConfig {
    /// The config when it exists but defines no gateway, policy or divert (the package's
    /// commented template; shown as text only); null when there is none.
    pub config: Option<String>,
    /// Why there is no config, for people.
    pub note: String,
    /// Whether `table inet symroute` exists.
    pub applied: bool,
    /// The fingerprint in its comment (of the plan it was built from).
    pub fingerprint: Option<String>,
    /// Tagged `ip rule`s and routes, as `ip` shows them.
    pub rules: Vec<String>,
    pub routes: Vec<String>,
    /// The table's named counters (one per policy): packets and bytes classified.
    pub counters: BTreeMap<String, Counter>,
    /// sysctls symroute changed: the value before it did, and now.
    pub sysctls: BTreeMap<String, SysctlChange>,
    /// As in [`Status`]: symroute's own records, which need no config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<super::state::HaRecord>,
    pub confirm: ConfirmView,
}

#[derive(Debug, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SysctlChange {
    pub before: String,
    /// Unreadable (the interface is gone): null.
    pub now: Option<String>,
}

impl StatusWithoutConfig {
    /// Nothing of symroute's is in the namespace.
    pub fn is_empty(&self) -> bool {
        !self.applied
            && self.rules.is_empty()
            && self.routes.is_empty()
            && self.sysctls.is_empty()
            && self.confirm.pending.is_none()
    }
}

/// [`StatusWithoutConfig`] of the current namespace: `config` is the config that exists
/// but defines nothing (None: there is none), `note` says which, for people.
pub fn without_config(
    config: Option<&std::path::Path>,
    note: String,
) -> Result<StatusWithoutConfig, KernelError> {
    let observed = observe::observe()?;
    let counters = match observed.nft_fingerprint {
        Some(_) => policy_counters()?
            .into_iter()
            .map(|(name, (packets, bytes))| (name, Counter { packets, bytes }))
            .collect(),
        None => BTreeMap::new(),
    };
    let sysctls = super::state::load()?
        .sysctls
        .into_iter()
        .map(|(key, before)| {
            let now = std::fs::read_to_string(observe::sysctl_path(&key))
                .ok()
                .map(|v| v.trim().to_string());
            (key, SysctlChange { before, now })
        })
        .collect();
    Ok(StatusWithoutConfig {
        config: config.map(|p| p.display().to_string()),
        note,
        applied: observed.nft_fingerprint.is_some(),
        fingerprint: observed.nft_fingerprint.filter(|f| !f.is_empty()),
        rules: observed.rules.iter().map(|r| r.to_string()).collect(),
        routes: observed.routes.iter().map(|r| r.to_string()).collect(),
        counters,
        sysctls,
        ha: super::state::load_ha().ok().flatten(),
        confirm: ConfirmView::read(),
    })
}

impl GatewayStatus {
    /// Take in the daemon's view: its state (when it has one), since, loss, round trip.
    fn live(&mut self, l: &LiveGateway) {
        if let Some(state) = l.state {
            self.state = state;
            self.reason = l.reason.clone();
        }
        self.since = Some(l.since.clone());
        self.loss = l.loss;
        self.rtt_ms = l.rtt_ms;
        self.failovers = Some(l.failovers);
    }
}

/// The status of `plan` alone (no daemon): gateways as planned, counters, connections.
fn of_plan(model: &Model, plan: &Plan, applied: bool) -> Result<Status, KernelError> {
    let counters = if applied {
        policy_counters()?
    } else {
        BTreeMap::new()
    };
    let mut ct = Conntrack::open()?;
    let gateways = plan
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let marks = [g.reply_mark, g.route_mark].into_iter().flatten();
            let connections = ct.count_any(marks.map(|m| m.bits()), plan.mark_mask.bits())?;
            Ok(GatewayStatus {
                name: g.name.clone(),
                interface: g.interface.clone(),
                table: g.table.id(),
                state: State::of(&g.state),
                reason: reason(&g.state),
                connections,
                since: None,
                loss: None,
                rtt_ms: None,
                failovers: None,
                exec_packets: counters
                    .get(&symroute_core::plan::nft::exec_counter_name(i, &g.name))
                    .map_or(0, |c| c.0),
            })
        })
        .collect::<Result<Vec<_>, KernelError>>()?;
    let policies = plan
        .policies
        .iter()
        .map(|p| {
            let (packets, bytes) = counters.get(&p.counter).copied().unwrap_or((0, 0));
            PolicyStatus {
                name: p.name.clone(),
                kind: p.kind,
                gateway: p.gateway.clone(),
                mark: p.mark.to_string(),
                gateways: p.gateways.clone(),
                packets,
                bytes,
                waiting: p.waiting.clone(),
            }
        })
        .collect();
    Ok(Status {
        applied,
        matches_config: false,
        daemon: None,
        gateways,
        policies,
        marks: MarkMap::of(model, plan),
        ha: super::state::load_ha().ok().flatten(),
        confirm: ConfirmView::read(),
    })
}

/// Named counters of our table alone, over nfnetlink (`nft_rules::counters`); an error
/// when the table does not exist.
pub fn policy_counters() -> Result<BTreeMap<String, (u64, u64)>, KernelError> {
    super::nft_rules::counters(symroute_core::plan::nft::TABLE)?.ok_or_else(|| {
        KernelError::Other(format!(
            "nft list counters table inet {}: no such table",
            symroute_core::plan::nft::TABLE
        ))
    })
}

/// The named counters of our table in `nft -j` output: name → (packets, bytes).
pub fn counters_in(rs: &serde_json::Value) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for item in rs["nftables"].as_array().into_iter().flatten() {
        let Some(c) = item.get("counter") else {
            continue;
        };
        if c["family"] == "inet" && c["table"] == symroute_core::plan::nft::TABLE {
            if let Some(name) = c["name"].as_str() {
                out.insert(
                    name.to_string(),
                    (
                        c["packets"].as_u64().unwrap_or(0),
                        c["bytes"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
    }
    out
}

/// A policy's gateways in one line: `isp1`, or `isp1=3 isp2=1 (isp2 not used now)`.
pub fn describe_gateways(gateways: &[PolicyGateway]) -> String {
    let mut names: Vec<String> = gateways
        .iter()
        .map(|g| match g.weight {
            Some(w) => format!("{}={w}", g.name),
            None => g.name.clone(),
        })
        .collect();
    let idle: Vec<&str> = gateways
        .iter()
        .filter(|g| !g.active)
        .map(|g| g.name.as_str())
        .collect();
    if !idle.is_empty() {
        names.push(format!("({} not used now)", idle.join(", ")));
    }
    names.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_their_wire_names() {
        assert_eq!(State::of(&GatewayState::Up), State::Up);
        let partial = GatewayState::Partial("no IPv6 address".into());
        assert_eq!(State::of(&partial), State::Up);
        assert_eq!(
            reason(&partial).as_deref(),
            Some("partly up: no IPv6 address")
        );
        let down = GatewayState::Down("link down".into());
        assert_eq!(
            (State::of(&down), reason(&down).as_deref()),
            (State::Down, Some("link down"))
        );
        assert_eq!(serde_json::to_string(&State::Down).unwrap(), r#""down""#);
        let mut g = LiveGateway {
            name: "isp1".into(),
            interface: "up1".into(),
            state: None,
            reason: None,
            since: "1970-01-01T00:00:00.000Z".into(),
            since_unix: 0,
            loss: None,
            rtt_ms: None,
            failovers: 0,
        };
        for (state, wire) in [
            (None, "unknown"),
            (Some(State::Up), "up"),
            (Some(State::Down), "down"),
        ] {
            g.state = state;
            let text = serde_json::to_string(&g).unwrap();
            assert!(text.contains(&format!(r#""state":"{wire}""#)), "{text}");
            assert_eq!(serde_json::from_str::<LiveGateway>(&text).unwrap(), g);
        }
    }
}
