//! `symroute doctor --peer FILE`: do this box and the other box of an HA pair give every
//! symroute mark the same meaning? conntrackd copies each connection's conntrack mark to
//! the peer; after a failover the peer routes the connection by that mark, so a value
//! that means isp1 here and isp2 there sends the connection out by the wrong path (and it
//! dies), and a value the peer has no rule for falls to its main table.
//!
//! Each side is reduced to the same form: mark value → what it does (reply or route
//! decision, or divert), its table, and the path its table's default route takes (next
//! hop and interface). This box's side is read from the host state doctor examines
//! (symroute's `proto 157` rules and their tables: what the kernel does, whatever config
//! made it). The peer's is its `symroute status --json` (the `marks` map, with gateway
//! names) or a snapshot directory of it (read like this box's).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Finding, Severity};
use crate::host::HostState;
use crate::routing::{RouteKind, RuleAction};
use symroute_core::model::Family;
use symroute_core::plan::markmap::MarkMap;

/// One side of the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Where it was read (`live`, a directory, a status file), for messages.
    pub origin: String,
    /// The mask symroute's rules test, when any rule exists.
    pub mask: Option<u32>,
    pub marks: BTreeMap<u32, Meaning>,
}

/// What one mark value does on one box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meaning {
    pub kind: Kind,
    pub table: u32,
    /// The default route's next hop and interface in that table (none while the gateway
    /// is down: the kernel took its routes).
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    /// The gateway's name, when the side says (a status file does; a kernel does not).
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Replies of connections that arrived via the gateway.
    Reply,
    /// New connections sent via the gateway.
    Route,
    /// Delivered to a local transparent socket.
    Divert,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Reply => "answers replies",
            Kind::Route => "sends connections",
            Kind::Divert => "diverts to a local socket",
        }
    }
}

impl Meaning {
    /// `answers replies via 203.0.113.1 dev up1 (gateway isp1, table 42025)`.
    fn describe(&self) -> String {
        let mut s = self.kind.word().to_string();
        match (&self.via, &self.dev) {
            (Some(v), Some(d)) => s += &format!(" via {v} dev {d}"),
            (Some(v), None) => s += &format!(" via {v}"),
            (None, Some(d)) => s += &format!(" dev {d}"),
            (None, None) if self.kind != Kind::Divert => {
                s += " (its table has no default route now)"
            }
            (None, None) => {}
        }
        let mut what = Vec::new();
        if let Some(g) = &self.gateway {
            what.push(format!("gateway {g}"));
        }
        what.push(format!("table {}", self.table));
        s + &format!(" ({})", what.join(", "))
    }

    /// Whether the two sides send by different paths, when both paths are known: the next
    /// hops when both have one (interfaces may be named differently on two boxes), else
    /// the interfaces.
    fn other_path(&self, peer: &Meaning) -> bool {
        match (self.via, peer.via) {
            (Some(a), Some(b)) => a != b,
            _ => matches!((&self.dev, &peer.dev), (Some(a), Some(b)) if a != b),
        }
    }
}

/// This box's side, from symroute's rules and tables in `host`.
pub fn side_of_host(host: &HostState) -> Side {
    let ours = symroute_core::plan::RT_PROTO.to_string();
    let rules: Vec<_> = host
        .routing
        .rules
        .iter()
        .filter(|r| r.protocol.as_deref() == Some(ours.as_str()))
        .collect();
    let mut side = Side {
        origin: host.origin.clone(),
        mask: None,
        marks: BTreeMap::new(),
    };
    for family in [Family::Inet4, Family::Inet6] {
        // Route rules come after main without its default route (`suppress_prefixlength 0`).
        let split = rules
            .iter()
            .find(|r| {
                r.family == family && r.fwmark.is_none() && r.suppress_prefixlength == Some(0)
            })
            .map(|r| r.priority);
        for r in rules.iter().filter(|r| r.family == family) {
            let (Some((value, mask)), RuleAction::Lookup(table)) = (r.fwmark, r.action) else {
                continue;
            };
            if value == 0 || side.marks.contains_key(&value) {
                continue;
            }
            side.mask.get_or_insert(mask);
            let routes: Vec<_> = host
                .routing
                .routes
                .iter()
                .filter(|rt| rt.table == table && rt.dst.prefix_len() == 0)
                .collect();
            let kind = if routes.iter().any(|rt| rt.kind == RouteKind::Local) {
                Kind::Divert
            } else if split.is_some_and(|s| r.priority > s) {
                Kind::Route
            } else {
                Kind::Reply
            };
            // The IPv4 default first: a gateway's identity is the same whichever family.
            let default = routes
                .iter()
                .filter(|rt| rt.kind == RouteKind::Unicast)
                .min_by_key(|rt| (rt.family != Family::Inet4, rt.metric));
            let hop = default.and_then(|rt| rt.nexthops.first());
            side.marks.insert(
                value,
                Meaning {
                    kind,
                    table,
                    via: hop.and_then(|h| h.via),
                    dev: hop.and_then(|h| h.dev.clone()),
                    gateway: None,
                },
            );
        }
    }
    side
}

/// The peer's side, from its `symroute status --json` mark map.
pub fn side_of_map(map: &MarkMap, origin: &str) -> Side {
    let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut marks = BTreeMap::new();
    for g in &map.gateways {
        for (mark, kind) in [(&g.reply_mark, Kind::Reply), (&g.route_mark, Kind::Route)] {
            if let Some(v) = mark.as_deref().and_then(hex) {
                marks.insert(
                    v,
                    Meaning {
                        kind,
                        table: g.table,
                        via: g.via.as_deref().and_then(|v| v.parse().ok()),
                        dev: Some(g.interface.clone()),
                        gateway: Some(g.name.clone()),
                    },
                );
            }
        }
    }
    if let Some(d) = &map.divert {
        if let Some(v) = hex(&d.mark) {
            marks.insert(
                v,
                Meaning {
                    kind: Kind::Divert,
                    table: d.table,
                    via: None,
                    dev: None,
                    gateway: None,
                },
            );
        }
    }
    Side {
        origin: origin.to_string(),
        mask: hex(&map.mask),
        marks,
    }
}

/// The findings of comparing this box's side with the peer's.
pub fn compare(here: &Side, peer: &Side) -> Vec<Finding> {
    let mut out = Vec::new();
    let place = format!(
        "this box ({}) against the peer ({})",
        here.origin, peer.origin
    );
    let finding = |severity, code, rule: String, why: String, fix: &str| Finding {
        severity,
        code,
        rule,
        place: place.clone(),
        why,
        fix: fix.to_string(),
    };
    let same_config = "use the same symroute.toml on both boxes: give each gateway the same `id = N` there (or the same name), and the same mark_mask";
    if let (Some(a), Some(b)) = (here.mask, peer.mask) {
        if a != b {
            out.push(finding(
                Severity::Error,
                "peer-marks-differ",
                format!("mark_mask {a:#010x} here, {b:#010x} on the peer"),
                "the two boxes keep their decisions in different mark bits: a connection synced from one carries bits the other does not read".into(),
                same_config,
            ));
            return out;
        }
    }
    let mut agree = 0;
    for (value, m) in &here.marks {
        match peer.marks.get(value) {
            Some(p) if p.kind != m.kind || m.other_path(p) => out.push(finding(
                Severity::Error,
                "peer-marks-differ",
                format!("mark {value:#010x}: here it {}; on the peer it {}", m.describe(), p.describe()),
                "conntrackd copies each connection's mark to the peer: after a failover the peer routes this box's connections carrying this mark by another path (or the other way round), and they die".into(),
                same_config,
            )),
            Some(_) => agree += 1,
            None => out.push(finding(
                Severity::Warning,
                "peer-mark-missing",
                format!("mark {value:#010x}: here it {}; the peer has no rule for it", m.describe()),
                "connections this box marks so keep their mark on the peer, which routes them by its main table after a failover (expected only while a new gateway or policy is rolled out to one box first)".into(),
                same_config,
            )),
        }
    }
    for (value, p) in &peer.marks {
        if here.marks.contains_key(value) {
            continue;
        }
        out.push(finding(
            Severity::Warning,
            "peer-mark-missing",
            format!("mark {value:#010x}: on the peer it {}; this box has no rule for it", p.describe()),
            "connections the peer marks so keep their mark here, where they are routed by the main table after a failover (expected only while a new gateway or policy is rolled out to one box first)".into(),
            same_config,
        ));
    }
    if out.is_empty() {
        out.push(finding(
            Severity::Info,
            "peer-marks-agree",
            format!("{agree} mark value(s) mean the same on both boxes"),
            "every connection conntrackd copies between the two keeps its path after a failover, as far as marks decide it".into(),
            "nothing to do",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meaning(kind: Kind, via: &str, dev: &str, table: u32) -> Meaning {
        Meaning {
            kind,
            table,
            via: Some(via.parse().unwrap()),
            dev: Some(dev.into()),
            gateway: None,
        }
    }

    fn side(marks: &[(u32, Meaning)]) -> Side {
        Side {
            origin: "t".into(),
            mask: Some(0xff00_0000),
            marks: marks.iter().cloned().collect(),
        }
    }

    #[test]
    fn same_paths_agree_whatever_the_interface_names() {
        let here = side(&[(
            0x3300_0000,
            meaning(Kind::Reply, "203.0.113.1", "up1", 42025),
        )]);
        let peer = side(&[(
            0x3300_0000,
            meaning(Kind::Reply, "203.0.113.1", "eth1", 42025),
        )]);
        let f = compare(&here, &peer);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(
            (f[0].severity, f[0].code),
            (Severity::Info, "peer-marks-agree")
        );
    }

    #[test]
    fn another_path_or_kind_is_an_error_a_missing_value_a_warning() {
        let here = side(&[
            (
                0x3300_0000,
                meaning(Kind::Reply, "203.0.113.1", "up1", 42025),
            ),
            (
                0x3400_0000,
                meaning(Kind::Route, "203.0.113.1", "up1", 42025),
            ),
            (
                0xf500_0000,
                meaning(Kind::Reply, "198.51.100.1", "up2", 42122),
            ),
        ]);
        let peer = side(&[
            (
                0x3300_0000,
                meaning(Kind::Reply, "198.51.100.1", "up2", 42000),
            ),
            (
                0x3400_0000,
                meaning(Kind::Reply, "203.0.113.1", "up1", 42025),
            ),
            (
                0x0100_0000,
                meaning(Kind::Reply, "203.0.113.1", "up1", 42000),
            ),
        ]);
        let f = compare(&here, &peer);
        let codes: Vec<_> = f.iter().map(|f| (f.severity, f.code)).collect();
        assert_eq!(
            codes,
            [
                (Severity::Error, "peer-marks-differ"),
                (Severity::Error, "peer-marks-differ"),
                (Severity::Warning, "peer-mark-missing"),
                (Severity::Warning, "peer-mark-missing"),
            ]
        );
        assert_eq!(
            f[0].rule,
            "mark 0x33000000: here it answers replies via 203.0.113.1 dev up1 (table 42025); on the peer it answers replies via 198.51.100.1 dev up2 (table 42000)"
        );
        let mut other = peer.clone();
        other.mask = Some(0x00ff_0000);
        assert_eq!(
            compare(&here, &other)[0].rule,
            "mark_mask 0xff000000 here, 0x00ff0000 on the peer"
        );
    }

    #[test]
    fn a_gateway_down_on_one_side_compares_by_what_is_known() {
        let mut down = meaning(Kind::Reply, "203.0.113.1", "up1", 42025);
        down.via = None;
        down.dev = None;
        let here = side(&[(0x3300_0000, down)]);
        let peer = side(&[(
            0x3300_0000,
            meaning(Kind::Reply, "198.51.100.1", "up2", 42025),
        )]);
        assert_eq!(compare(&here, &peer)[0].code, "peer-marks-agree");
    }
}
