//! The daemon's part in an HA pair (keepalived + conntrackd, contrib/ha/): when to flush a
//! dead gateway's connections.
//!
//! conntrackd copies every connection to the peer, and the copies sit in this box's kernel
//! table like its own. A flush here would delete them: on a backup, the copies of
//! connections the master is carrying (a failover would then find them gone); on a
//! master that is failing (its links going down), its own entries, whose deletions
//! conntrackd queues and delivers to the new master once the sync link is back. So with
//! `[settings] ha_pair = true`, or once keepalived has reported a role (`symroute ha
//! master|backup|fault`, from its notify scripts), the flush happens only while this box
//! is the master, and only after [`FLUSH_GRACE`]: a link going down on the master makes
//! keepalived report `fault` within milliseconds, and that must win over a flush the
//! same link-down event asked for. A box that becomes master flushes then what it held
//! back while it was not (gateways still down), after the same grace.

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::flush;
use super::log::notice;
use crate::kernel::state::{self, HaRecord, HaRole};
use crate::model::MarkMask;
use crate::plan::{GatewayPlan, GatewayState};

/// How long a master waits before flushing, for keepalived to say it no longer is.
pub const FLUSH_GRACE: Duration = Duration::from_secs(1);

pub struct Ha {
    /// `[settings] ha_pair`.
    pair: bool,
    /// What keepalived last reported (kept across restarts in /run/symroute).
    role: Option<HaRecord>,
    /// Gateways that went down while master, flushed at `at` if still master then.
    held: Option<Held>,
}

struct Held {
    at: Instant,
    gateways: Vec<GatewayPlan>,
    mask: MarkMask,
}

impl Ha {
    /// With the role last reported in this namespace, if any.
    pub fn new(pair: bool) -> Ha {
        let role = match state::load_ha() {
            Ok(r) => r,
            Err(e) => {
                warn!("could not read the HA role keepalived last reported: {e}");
                None
            }
        };
        if let Some(r) = &role {
            info!(
                "HA role as keepalived last reported it: {} (flushes {})",
                r.role,
                if r.role == HaRole::Master {
                    "allowed"
                } else {
                    "held back"
                }
            );
        }
        Ha {
            pair,
            role,
            held: None,
        }
    }

    pub fn set_pair(&mut self, pair: bool) {
        self.pair = pair;
    }

    pub fn role(&self) -> Option<HaRecord> {
        self.role
    }

    /// Whether this box is (or may be) one of a pair.
    fn managed(&self) -> bool {
        self.pair || self.role.is_some()
    }

    fn is_master(&self) -> bool {
        self.role.is_some_and(|r| r.role == HaRole::Master)
    }

    /// Gateways that just went down: flush their route_via connections now (no HA), hold
    /// them for the grace (master), or leave them (backup, fault, or a pair member that
    /// has not heard from keepalived).
    pub fn went_down(&mut self, gateways: Vec<GatewayPlan>, mask: MarkMask, now: Instant) {
        let gateways: Vec<GatewayPlan> = gateways
            .into_iter()
            .filter(|g| g.route_mark.is_some())
            .collect();
        if gateways.is_empty() {
            return;
        }
        if !self.managed() {
            flush::flush_routed(&gateways, mask);
            return;
        }
        if self.is_master() {
            self.hold(gateways, mask, now);
            return;
        }
        let what = match self.role.map(|r| r.role) {
            Some(HaRole::Backup) => "the backup of an HA pair",
            Some(HaRole::Fault) => "in fault (keepalived found a tracked link down)",
            _ => "one of an HA pair and keepalived has not said it is the master",
        };
        for g in &gateways {
            info!(
                "gateway {} down: its route_via connections are not flushed: this box is {what}, and the entries here may be the peer's (conntrackd's copies); keepalived's `symroute ha master` allows it",
                g.name
            );
        }
    }

    fn hold(&mut self, gateways: Vec<GatewayPlan>, mask: MarkMask, now: Instant) {
        let held = self.held.get_or_insert(Held {
            at: now + FLUSH_GRACE,
            gateways: Vec::new(),
            mask,
        });
        held.at = now + FLUSH_GRACE;
        held.mask = mask;
        for g in gateways {
            if !held.gateways.iter().any(|h| h.name == g.name) {
                held.gateways.push(g);
            }
        }
    }

    /// When held flushes are due.
    pub fn deadline(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.at)
    }

    /// At the deadline: flush what was held, if this box is still master and the
    /// gateways are still down in `current` (the last plan's gateways).
    pub fn due(&mut self, now: Instant, current: &[GatewayPlan]) {
        if self.held.as_ref().is_none_or(|h| h.at > now) {
            return;
        }
        let Some(held) = self.held.take() else { return };
        if !self.is_master() {
            for g in &held.gateways {
                info!(
                    "gateway {} down: not flushing its route_via connections after all: this box is no longer the HA master",
                    g.name
                );
            }
            return;
        }
        let still: Vec<GatewayPlan> = held
            .gateways
            .into_iter()
            .filter(|g| {
                current
                    .iter()
                    .any(|c| c.name == g.name && matches!(c.state, GatewayState::Down(_)))
            })
            .collect();
        flush::flush_routed(&still, held.mask);
    }

    /// keepalived reported `role`. Becoming master schedules the flushes held back while
    /// not (the gateways of `current` that are down). The line for the log and the caller.
    pub fn set_role(
        &mut self,
        role: HaRole,
        current: &[GatewayPlan],
        mask: MarkMask,
        now: Instant,
    ) -> String {
        let before = self.role.map(|r| r.role);
        if before != Some(role) {
            self.role = Some(HaRecord {
                role,
                since_unix: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                // The file `symroute ha` wrote keeps the order; the daemon's copy is for
                // status only.
                told_at: None,
            });
        }
        let line = match before {
            Some(b) if b == role => format!("HA role: still {role}"),
            Some(b) => format!("HA role: {b} -> {role}"),
            None => format!("HA role: {role}"),
        };
        if role == HaRole::Master && before != Some(HaRole::Master) {
            let down: Vec<GatewayPlan> = current
                .iter()
                .filter(|g| g.route_mark.is_some() && matches!(g.state, GatewayState::Down(_)))
                .cloned()
                .collect();
            if !down.is_empty() {
                self.hold(down, mask, now);
            }
        }
        // Whatever is held while no longer master is dropped by `due`, and said so.
        if before == Some(role) {
            info!("{line}");
        } else {
            notice!("{line}");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: &str, down: bool) -> GatewayPlan {
        let text = include_str!("../../examples/ha-pair.toml");
        let m = crate::config::parse_str(text, "t.toml").expect("example parses");
        let mut p = crate::plan::build(&m, &Default::default());
        let mut g = p.gateways.remove(0);
        g.name = name.into();
        g.state = if down {
            GatewayState::Down("test".into())
        } else {
            GatewayState::Up
        };
        g
    }

    fn mask() -> MarkMask {
        MarkMask::new(0xff00_0000).unwrap()
    }

    #[test]
    fn a_master_holds_the_flush_for_the_grace_and_drops_it_when_it_stops_being_master() {
        let mut ha = Ha {
            pair: true,
            role: None,
            held: None,
        };
        let t0 = Instant::now();
        let current = [gw("isp1", true)];
        // Not told: nothing held, nothing flushed.
        ha.went_down(vec![gw("isp1", true)], mask(), t0);
        assert_eq!(ha.deadline(), None);
        // Becoming master holds the flush of what is down, for the grace.
        ha.set_role(HaRole::Master, &current, mask(), t0);
        assert_eq!(ha.deadline(), Some(t0 + FLUSH_GRACE));
        // keepalived says fault before the deadline: at the deadline nothing is flushed
        // (the held list is dropped, not re-armed).
        ha.set_role(HaRole::Fault, &current, mask(), t0);
        assert!(ha.deadline().is_some());
        ha.due(t0 + FLUSH_GRACE, &current);
        assert_eq!(ha.deadline(), None);
        // A backup holds nothing.
        ha.set_role(HaRole::Backup, &current, mask(), t0);
        ha.went_down(vec![gw("isp1", true)], mask(), t0);
        assert_eq!(ha.deadline(), None);
        // A master holds a new one, and a later one pushes the deadline on.
        ha.set_role(HaRole::Master, &[], mask(), t0);
        ha.went_down(vec![gw("isp1", true)], mask(), t0);
        ha.went_down(vec![gw("isp2", true)], mask(), t0 + FLUSH_GRACE / 2);
        assert_eq!(ha.deadline(), Some(t0 + FLUSH_GRACE / 2 + FLUSH_GRACE));
        assert_eq!(ha.held.as_ref().map(|h| h.gateways.len()), Some(2));
    }

    #[test]
    fn a_role_makes_it_a_pair_member_even_without_the_setting() {
        // (No flush is called here: it would act on the test's own network namespace.)
        let mut ha = Ha {
            pair: false,
            role: None,
            held: None,
        };
        assert!(!ha.managed());
        ha.set_role(HaRole::Backup, &[], mask(), Instant::now());
        assert!(ha.managed());
    }
}
