//! Moving connections off a dead gateway: when a gateway goes from usable to down (its
//! link, or its health checks), the connections `route_via` sent through it are still
//! pinned there by their conntrack mark, and would keep trying the dead path (or, once its
//! routes are gone, leak out via the main table with the old source address). Flushing the
//! conntrack entries that carry the gateway's route mark lets each such connection's next
//! packet be classified afresh, as a new connection, by the policies and routes now in
//! force. Reply marks are left alone: a connection that arrived by the dead path can't be
//! answered through another one anyway. Entries of other gateways are never touched.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::kernel::conntrack::Conntrack;
use crate::model::MarkMask;
use crate::plan::{GatewayPlan, GatewayState};

/// The gateways that were usable (up or partly up) at the last reconcile and are down in
/// `now` (the new plan's). At startup (`before` empty) none went down: they were never seen up.
pub fn went_down(before: &BTreeMap<String, GatewayState>, now: &[GatewayPlan]) -> Vec<GatewayPlan> {
    now.iter()
        .filter(|g| matches!(g.state, GatewayState::Down(_)))
        .filter(|g| {
            before
                .get(&g.name)
                .is_some_and(|s| !matches!(s, GatewayState::Down(_)))
        })
        .cloned()
        .collect()
}

/// Flush the route-marked conntrack entries of each gateway (those with a route mark),
/// logging one line per gateway with how many were deleted, or why they could not be.
pub fn flush_routed(gateways: &[GatewayPlan], mask: MarkMask) {
    let marked: Vec<_> = gateways
        .iter()
        .filter_map(|g| g.route_mark.map(|m| (g, m)))
        .collect();
    if marked.is_empty() {
        return;
    }
    let mut ct = match Conntrack::open() {
        Ok(ct) => ct,
        Err(e) => {
            for (g, m) in marked {
                warn!(
                    "gateway {} down: could not flush its route_via connections (conntrack mark {m}): {e}",
                    g.name
                );
            }
            return;
        }
    };
    for (g, m) in marked {
        match ct.flush(m.bits(), mask.bits()) {
            Ok(n) => info!(
                "gateway {} down: flushed {n} conntrack entr{} of its route_via connections (conntrack mark {m}) so they re-establish by the paths now in force",
                g.name,
                if n == 1 { "y" } else { "ies" }
            ),
            Err(e) => warn!(
                "gateway {} down: could not flush its route_via connections (conntrack mark {m}): {e}",
                g.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableId;

    fn gw(name: &str, state: GatewayState) -> GatewayPlan {
        GatewayPlan {
            name: name.into(),
            interface: "eth0".into(),
            table: TableId::from_kernel(42000),
            reply_mark: None,
            route_mark: MarkMask::new(0xff00_0000).unwrap().value(2),
            state,
        }
    }

    #[test]
    fn only_usable_to_down_counts() {
        let down = || GatewayState::Down("link down".into());
        let mut before = BTreeMap::new();
        before.insert("a".to_string(), GatewayState::Up);
        before.insert("b".to_string(), down());
        before.insert("c".to_string(), GatewayState::Partial("no IPv6".into()));
        let now = [
            gw("a", down()),
            gw("b", down()),
            gw("c", down()),
            gw("new", down()),
        ];
        let names: Vec<String> = went_down(&before, &now)
            .into_iter()
            .map(|g| g.name)
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert!(went_down(&BTreeMap::new(), &now).is_empty());
        let up = [gw("a", GatewayState::Up)];
        assert!(went_down(&before, &up).is_empty());
    }
}
