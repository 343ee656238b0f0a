//! symroute's planned rules and routes (`RuleSpec`, `RouteSpec`) as the engine's entries:
//! what the kernel would hold after `apply`, built from the plan's values rather than
//! from their `ip` rendering read back. `text` is still the `ip rule` / `ip route` line,
//! for quoting in reports.

use symroute_core::model::Family;
use symroute_core::plan::{self, RouteSpec, RuleSpec, RT_PROTO};

use super::types::{NextHop, RouteEntry, RouteKind, RuleAction, RuleEntry};

impl RuleEntry {
    /// The rule as `ip rule` shows it once applied (tagged `proto 157`).
    pub fn planned(spec: &RuleSpec) -> Self {
        RuleEntry {
            family: spec.family,
            priority: spec.priority.get(),
            not: false,
            from: spec.from,
            to: None,
            iif: spec.iif_lo.then(|| "lo".to_string()),
            iif_detached: false,
            oif: None,
            oif_detached: false,
            fwmark: spec.fwmark,
            ipproto: None,
            sport: None,
            dport: None,
            tos: None,
            action: match spec.action {
                plan::RuleAction::Lookup(t) => RuleAction::Lookup(t.id()),
                plan::RuleAction::Goto(p) => RuleAction::Goto(p.get()),
                plan::RuleAction::Nop => RuleAction::Nop,
            },
            unresolved: false,
            suppress_prefixlength: spec.suppress_prefixlength,
            suppress_ifgroup: None,
            protocol: Some(RT_PROTO.to_string()),
            unmodeled: Vec::new(),
            line: 0,
            text: spec.show_text(),
        }
    }
}

impl RouteEntry {
    /// The route as `ip route show table all` shows it once applied (`proto 157`, the
    /// kernel's default metric, no scope printed).
    pub fn planned(spec: &RouteSpec) -> Self {
        let dst = if spec.dst.prefix_len() == 0 {
            "default".to_string()
        } else {
            spec.dst.to_string()
        };
        let (kind, word) = match spec.kind {
            plan::RouteKind::Unicast => (RouteKind::Unicast, ""),
            plan::RouteKind::Local => (RouteKind::Local, "local "),
        };
        let via = spec.via.map(|v| format!(" via {v}")).unwrap_or_default();
        RouteEntry {
            family: spec.family,
            table: spec.table.id(),
            kind,
            dst: spec.dst,
            src: None,
            tos: 0,
            metric: match spec.family {
                Family::Inet4 => 0,
                Family::Inet6 => 1024,
            },
            nexthops: vec![NextHop {
                via: spec.via,
                ..NextHop::dev(&spec.dev)
            }],
            prefsrc: None,
            scope: None,
            protocol: Some(RT_PROTO.to_string()),
            pref: None,
            nhid: None,
            line: 0,
            text: format!(
                "{word}{dst}{via} dev {} table {} proto {RT_PROTO}",
                spec.dev,
                spec.table.id()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_ip_routes, parse_ip_rules};
    use super::*;

    /// Every example's plan, built from values, equals its `ip` rendering read back by
    /// the parsers a snapshot goes through (but for the line numbers of a text that is
    /// never shown).
    #[test]
    fn planned_entries_read_like_their_ip_lines() {
        let mut rules = 0;
        let mut routes = 0;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("examples")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{files:?}");
        for path in files {
            let text = std::fs::read_to_string(&path).expect("example");
            // full.toml names the user `backup`.
            let users: std::collections::BTreeMap<String, u32> =
                [("backup".to_string(), 34)].into_iter().collect();
            let model =
                symroute_core::config::parse_str_with(&text, "example", &users).expect("example");
            let plan = plan::build(&model, &crate::netfilter::tests::host());
            for spec in &plan.rules {
                let mut parsed = parse_ip_rules(&spec.show_text(), spec.family).expect("rule");
                assert_eq!(parsed.len(), 1);
                parsed[0].line = 0;
                assert_eq!(RuleEntry::planned(spec), parsed[0], "{}", path.display());
                rules += 1;
            }
            for spec in &plan.routes {
                let planned = RouteEntry::planned(spec);
                let mut parsed = parse_ip_routes(&planned.text, spec.family).expect("route");
                assert_eq!(parsed.len(), 1);
                parsed[0].line = 0;
                assert_eq!(planned, parsed[0], "{}", path.display());
                routes += 1;
            }
        }
        assert!(rules > 20 && routes > 10, "{rules} rules, {routes} routes");
    }
}
