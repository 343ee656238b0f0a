//! Each gateway's live state in the daemon: its state as the last applied plan had it
//! (so link and health-check verdicts both count), since when, how many up→down
//! transitions, and from the health checks the loss over the check window and the mean
//! round trip of recent good probes. `Live::observe` is the daemon's one detector of
//! gateway changes: the log, the `on_change` hooks and the conntrack flush all follow
//! from the `Change`s it returns. `symroute status` gets it as `LiveGateway`s.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::health::Window;
use crate::kernel::clock::{rfc3339, unix};
use crate::kernel::status::{LiveGateway, State};
use crate::model::Model;
use crate::plan::{GatewayState, Plan};

/// How many good probes' round trips `rtt_ms` averages.
const RECENT: usize = 10;

/// A gateway whose state an apply changed (or that it included for the first time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub gateway: String,
    pub interface: String,
    /// `None`: first seen, at startup or added by a reload.
    pub old: Option<GatewayState>,
    pub new: GatewayState,
}

impl Change {
    pub fn old_state(&self) -> Option<State> {
        self.old.as_ref().map(State::of)
    }

    pub fn new_state(&self) -> State {
        State::of(&self.new)
    }

    /// Up↔down, or first seen: what the hooks are told (a change of reason alone, or
    /// between partly and fully up, is only logged).
    pub fn flips(&self) -> bool {
        self.old_state() != Some(self.new_state())
    }

    /// It was up and is down now (not one found down at startup).
    pub fn went_down(&self) -> bool {
        self.old_state() == Some(State::Up) && self.new_state() == State::Down
    }
}

struct Gw {
    interface: String,
    state: GatewayState,
    since: SystemTime,
    failovers: u64,
    rtts: VecDeque<Duration>,
}

/// All gateways' live state; the actor owns it.
#[derive(Default)]
pub struct Live {
    gws: BTreeMap<String, Gw>,
}

impl Live {
    /// Take in an applied plan; returns each gateway whose state differs from the last
    /// one seen, and those seen for the first time (at startup, or added by a reload):
    /// hooks learn the initial state too, as keepalived's notify scripts do. `since` and
    /// the failovers count only changes between up and down.
    pub fn observe(&mut self, plan: &Plan, now: SystemTime) -> Vec<Change> {
        let mut out = Vec::new();
        for g in &plan.gateways {
            let change = |old| Change {
                gateway: g.name.clone(),
                interface: g.interface.clone(),
                old,
                new: g.state.clone(),
            };
            let Some(gw) = self.gws.get_mut(&g.name) else {
                out.push(change(None));
                self.gws.insert(
                    g.name.clone(),
                    Gw {
                        interface: g.interface.clone(),
                        state: g.state.clone(),
                        since: now,
                        failovers: 0,
                        rtts: VecDeque::new(),
                    },
                );
                continue;
            };
            gw.interface = g.interface.clone();
            if gw.state == g.state {
                continue;
            }
            let c = change(Some(std::mem::replace(&mut gw.state, g.state.clone())));
            if c.flips() {
                gw.since = now;
                if c.went_down() {
                    gw.failovers += 1;
                }
            }
            out.push(c);
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
                    state: gw.map(|gw| State::of(&gw.state)),
                    reason: gw.and_then(|gw| crate::kernel::status::reason(&gw.state)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{GatewayPlan, Plan};

    fn plan(states: &[(&str, GatewayState)]) -> Plan {
        let mut p = crate::plan::build(&plan_model(), &Default::default());
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

    /// (gateway, old up/down or "none", new up/down, flips) of each change.
    fn seen(changes: &[Change]) -> Vec<(&str, &str, &str, bool)> {
        changes
            .iter()
            .map(|c| {
                let old = c.old_state().map_or("none", State::as_str);
                (c.gateway.as_str(), old, c.new_state().as_str(), c.flips())
            })
            .collect()
    }

    #[test]
    fn one_detector_for_every_change_counting_failovers_from_none() {
        let mut live = Live::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let down = GatewayState::Down("health check".into());
        let first = live.observe(&plan(&[("isp1", GatewayState::Up)]), t0);
        assert_eq!(seen(&first), [("isp1", "none", "up", true)]);
        assert!(live
            .observe(&plan(&[("isp1", GatewayState::Up)]), t0)
            .is_empty());
        let t1 = t0 + Duration::from_secs(5);
        let tr = live.observe(&plan(&[("isp1", down.clone())]), t1);
        assert_eq!(seen(&tr), [("isp1", "up", "down", true)]);
        assert!(tr[0].went_down());
        assert_eq!(tr[0].new, down);
        assert!(live.observe(&plan(&[("isp1", down)]), t1).is_empty());
        // Down for another reason: a change to log, not a flip (no hook, same since).
        let link = GatewayState::Down("link down".into());
        let tr = live.observe(&plan(&[("isp1", link)]), t1 + Duration::from_millis(500));
        assert_eq!(seen(&tr), [("isp1", "down", "down", false)]);
        assert!(!tr[0].went_down());
        assert_eq!(unix(live.gws["isp1"].since), 105);
        let partial = GatewayState::Partial("no IPv6 address".into());
        let tr = live.observe(&plan(&[("isp1", partial)]), t1 + Duration::from_secs(1));
        assert_eq!(seen(&tr), [("isp1", "down", "up", true)]);
        assert_eq!(live.gws["isp1"].failovers, 1);
        assert_eq!(unix(live.gws["isp1"].since), 106);
        // Partly up counts as up: losing it is an up→down change (and a failover).
        let down = GatewayState::Down("link down".into());
        let tr = live.observe(&plan(&[("isp1", down)]), t1 + Duration::from_secs(2));
        assert_eq!(seen(&tr), [("isp1", "up", "down", true)]);
        assert_eq!(live.gws["isp1"].failovers, 2);
        let snap = live.snapshot(&plan_model(), &BTreeMap::new());
        let isp1 = snap.iter().find(|g| g.name == "isp1").unwrap();
        assert_eq!(
            (isp1.state, isp1.reason.as_deref()),
            (Some(State::Down), Some("link down"))
        );
        let isp2 = snap.iter().find(|g| g.name == "isp2").unwrap();
        assert_eq!(isp2.state, None, "never applied: unknown");
    }

    fn plan_model() -> Model {
        let text = include_str!("../../examples/two-isps-firewall.toml");
        crate::config::parse_str(text, "t.toml").expect("parses")
    }
}
