//! What is live: per-policy counters from our nft table and connections per gateway from
//! conntrack marks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conntrack::Conntrack;
use super::{cmd, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::markmap::MarkMap;
use symroute_core::plan::{GatewayState, Plan, PolicyGateway};

#[derive(Debug, Serialize)]
pub struct Status {
    pub applied: bool,
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
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub name: String,
    pub interface: String,
    pub table: u32,
    /// "up" or "down" ("up" includes partly up; `reason` says what is missing).
    pub state: String,
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
    /// Connections `symroute exec --gateway` sent this way since the table was loaded
    /// (the first packets its nft counter counted).
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

pub fn status(model: &Model, plan: &Plan, applied: bool) -> Result<Status, KernelError> {
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
                state: state_and_reason(&g.state).0.into(),
                reason: state_and_reason(&g.state).1,
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
        daemon: None,
        gateways,
        policies,
        marks: MarkMap::of(model, plan),
        ha: super::state::load_ha().ok().flatten(),
    })
}

/// Named counters of our table alone (`nft -j list counters table inet symroute`: cheap
/// however large the rest of the ruleset); an error when the table does not exist.
pub fn policy_counters() -> Result<BTreeMap<String, (u64, u64)>, KernelError> {
    let args = [
        "-j",
        "list",
        "counters",
        "table",
        "inet",
        symroute_core::plan::nft::TABLE,
    ];
    let text = cmd::run("nft", &args, None)?;
    let rs = serde_json::from_str(&text).map_err(|e| KernelError::Parse {
        cmd: format!("nft {}", args.join(" ")),
        detail: e.to_string(),
    })?;
    Ok(counters_in(&rs))
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

/// A plan's gateway state as status reports it: "up" (partly up included, with the
/// missing family as the reason) or "down", and why.
pub fn state_and_reason(state: &GatewayState) -> (&'static str, Option<String>) {
    match state {
        GatewayState::Up => ("up", None),
        GatewayState::Partial(why) => ("up", Some(format!("partly up: {why}"))),
        GatewayState::Down(why) => ("down", Some(why.clone())),
    }
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
