//! Each gateway's live state in the daemon, for `symroute status` and the `on_change`
//! hooks: up or down (as the last applied plan had it, so link and health-check verdicts
//! both count), since when, why, how many up→down transitions, and from the health
//! checks the loss over the check window and the mean round trip of recent good probes.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::health::Window;
use crate::model::Model;
use crate::plan::{GatewayState, Plan};

/// How many good probes' round trips `rtt_ms` averages.
const RECENT: usize = 10;

/// One gateway as `status` reports it (the socket protocol's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveGateway {
    pub name: String,
    pub interface: String,
    /// "up" or "down" ("up" includes partly up: the reason says which family is missing).
    pub state: String,
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

/// A gateway's change between up and down, for the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub gateway: String,
    pub interface: String,
    pub old: &'static str,
    pub new: &'static str,
    pub reason: String,
}

struct Gw {
    interface: String,
    up: bool,
    reason: Option<String>,
    since: SystemTime,
    failovers: u64,
    rtts: VecDeque<Duration>,
}

/// All gateways' live state; the actor owns it.
#[derive(Default)]
pub struct Live {
    gws: BTreeMap<String, Gw>,
}

fn up_and_reason(s: &GatewayState) -> (bool, Option<String>) {
    let (state, reason) = crate::kernel::status::state_and_reason(s);
    (state == "up", reason)
}

pub fn state_name(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

impl Live {
    /// Take in an applied plan; returns the gateways that went up↔down, and those seen for
    /// the first time (at startup, or added by a reload) with `old` = "none": hooks learn
    /// the initial state too, as keepalived's notify scripts do.
    pub fn observe(&mut self, plan: &Plan, now: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        for g in &plan.gateways {
            let (up, reason) = up_and_reason(&g.state);
            let Some(gw) = self.gws.get_mut(&g.name) else {
                out.push(Transition {
                    gateway: g.name.clone(),
                    interface: g.interface.clone(),
                    old: "none",
                    new: state_name(up),
                    reason: reason.clone().unwrap_or_default(),
                });
                self.gws.insert(
                    g.name.clone(),
                    Gw {
                        interface: g.interface.clone(),
                        up,
                        reason,
                        since: now,
                        failovers: 0,
                        rtts: VecDeque::new(),
                    },
                );
                continue;
            };
            gw.interface = g.interface.clone();
            if gw.up != up {
                if !up {
                    gw.failovers += 1;
                }
                out.push(Transition {
                    gateway: g.name.clone(),
                    interface: g.interface.clone(),
                    old: state_name(gw.up),
                    new: state_name(up),
                    reason: reason.clone().unwrap_or_default(),
                });
                gw.up = up;
                gw.since = now;
            }
            gw.reason = reason;
        }
        out
    }

    /// A probe's round trip (None: lost, or not measured). Keeps the last `RECENT`.
    pub fn note_rtt(&mut self, gateway: &str, rtt: Option<Duration>) {
        let (Some(gw), Some(rtt)) = (self.gws.get_mut(gateway), rtt) else {
            return;
        };
        gw.rtts.push_back(rtt);
        while gw.rtts.len() > RECENT {
            gw.rtts.pop_front();
        }
    }

    /// The status of every gateway of `model`, in config order.
    pub fn snapshot(
        &self,
        model: &Model,
        windows: &BTreeMap<String, Vec<Window>>,
    ) -> Vec<LiveGateway> {
        model
            .gateways
            .iter()
            .map(|g| {
                let name = g.name.as_str();
                let gw = self.gws.get(name);
                let since = gw.map_or(UNIX_EPOCH, |gw| gw.since);
                let loss = g.check.as_ref().map(|c| {
                    let lost: u32 = windows
                        .get(name)
                        .into_iter()
                        .flatten()
                        .map(Window::lost)
                        .sum();
                    let size = c.down_window as usize * c.targets.len();
                    if size == 0 {
                        0.0
                    } else {
                        f64::from(lost) / size as f64
                    }
                });
                let rtt_ms = g.check.as_ref().and_then(|_| {
                    let rtts = &gw?.rtts;
                    (!rtts.is_empty()).then(|| {
                        rtts.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
                            / rtts.len() as f64
                    })
                });
                LiveGateway {
                    name: name.to_string(),
                    interface: g.interface.to_string(),
                    state: match gw {
                        Some(gw) => state_name(gw.up).to_string(),
                        None => "unknown".to_string(),
                    },
                    reason: gw.and_then(|gw| gw.reason.clone()),
                    since: rfc3339(since),
                    since_unix: unix(since),
                    loss,
                    rtt_ms,
                    failovers: gw.map_or(0, |gw| gw.failovers),
                }
            })
            .collect()
    }
}

/// A reload keeps what it can: gateways whose name and check are unchanged keep their
/// probe windows and health verdict (no re-detection); every gateway still named keeps its
/// live state (since, failovers), and its round trips when its check is unchanged.
pub fn carry_over(
    old: &Model,
    new: &Model,
    windows: &mut BTreeMap<String, Vec<Window>>,
    health_down: &mut BTreeMap<String, String>,
    live: &mut Live,
) {
    let same_check = |name: &str| {
        let check = |m: &Model| {
            m.gateways
                .iter()
                .find(|g| g.name.as_str() == name)
                .map(|g| g.check.clone())
        };
        matches!((check(old), check(new)), (Some(Some(a)), Some(Some(b))) if a == b)
    };
    windows.retain(|name, _| same_check(name));
    health_down.retain(|name, _| same_check(name));
    live.gws
        .retain(|name, _| new.gateways.iter().any(|g| g.name.as_str() == name));
    for (name, gw) in &mut live.gws {
        if !same_check(name) {
            gw.rtts.clear();
        }
    }
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2024-05-01T12:34:56.789Z` (fixed width: strings sort as times do). Written here: the
/// dependency tree has no date crate (tracing-subscriber's formatter is private), and a
/// UTC timestamp is this one function.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix(t);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{GatewayPlan, Plan};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

    fn plan(states: &[(&str, GatewayState)]) -> Plan {
        let text = include_str!("../../examples/two-isps-firewall.toml");
        let m = crate::config::parse_str(text, "t.toml").expect("parses");
        let mut p = crate::plan::build(&m, &Default::default());
        p.gateways = states
            .iter()
            .map(|(n, s)| GatewayPlan {
                name: n.to_string(),
                state: s.clone(),
                ..p.gateways[0].clone()
            })
            .collect();
        p
    }

    #[test]
    fn transitions_count_failovers_and_start_from_none() {
        let mut live = Live::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let down = GatewayState::Down("health check".into());
        let first = live.observe(&plan(&[("isp1", GatewayState::Up)]), t0);
        assert_eq!(
            first
                .iter()
                .map(|t| (t.gateway.as_str(), t.old, t.new))
                .collect::<Vec<_>>(),
            [("isp1", "none", "up")]
        );
        assert!(live
            .observe(&plan(&[("isp1", GatewayState::Up)]), t0)
            .is_empty());
        let t1 = t0 + Duration::from_secs(5);
        let tr = live.observe(&plan(&[("isp1", down.clone())]), t1);
        assert_eq!(tr.len(), 1);
        assert_eq!(
            (tr[0].old, tr[0].new, tr[0].reason.as_str()),
            ("up", "down", "health check")
        );
        assert!(live.observe(&plan(&[("isp1", down)]), t1).is_empty());
        let partial = GatewayState::Partial("no IPv6 address".into());
        let tr = live.observe(&plan(&[("isp1", partial)]), t1 + Duration::from_secs(1));
        assert_eq!((tr[0].old, tr[0].new), ("down", "up"));
        assert_eq!(live.gws["isp1"].failovers, 1);
        assert_eq!(unix(live.gws["isp1"].since), 106);
        // Partly up counts as up: losing it is an up→down change (and a failover).
        let down = GatewayState::Down("link down".into());
        let tr = live.observe(&plan(&[("isp1", down)]), t1 + Duration::from_secs(2));
        assert_eq!((tr[0].old, tr[0].new), ("up", "down"));
        assert_eq!(live.gws["isp1"].failovers, 2);
    }
}
