//! Moving connections off a dead gateway: when a gateway goes from usable to down (its
//! link, or its health checks), the connections `route_via` sent through it are still
//! pinned there by their conntrack mark, and would keep trying the dead path (or, once its
//! routes are gone, leak out via the main table with the old source address). Flushing the
//! conntrack entries that carry the gateway's route mark lets each such connection's next
//! packet be classified afresh, as a new connection, by the policies and routes now in
//! force. Reply marks are left alone: a connection that arrived by the dead path can't be
//! answered through another one anyway. Entries of other gateways are never touched.

use tracing::warn;

use super::log::notice;

use crate::kernel::conntrack::Conntrack;
use crate::model::MarkMask;
use crate::plan::GatewayPlan;

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
            Ok(n) => notice!(
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
