//! Routing side: tables looked up by fwmark rules, and the gateways they route through.

use super::*;

impl<'h> Cx<'h> {
    fn classify_table(&self, family: Family, table: u32) -> TableKind {
        let routes: Vec<(usize, &RouteEntry)> = self
            .host
            .routing
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.family == family && r.table == table && !Self::ours(&r.protocol))
            .collect();
        if routes.is_empty() {
            return TableKind::Other(format!("table {table} has no {} routes", fam_word(family)));
        }
        if table == TABLE_MAIN || table == 255 || table == 253 {
            return TableKind::Other(format!(
                "it looks up the kernel's own table {}",
                crate::routing::table_name(table)
            ));
        }
        // Divert: `local default dev lo`.
        if let Some((i, _)) = routes.iter().find(|(_, r)| {
            r.kind == RouteKind::Local
                && r.dst.prefix_len() == 0
                && r.nexthops.iter().any(|n| n.dev.as_deref() == Some("lo"))
        }) {
            let extra = routes.iter().map(|(j, _)| *j).filter(|j| j != i).collect();
            return TableKind::Divert {
                routes: vec![*i],
                extra,
            };
        }
        let defaults: Vec<&(usize, &RouteEntry)> = routes
            .iter()
            .filter(|(_, r)| r.dst.prefix_len() == 0)
            .collect();
        let [(di, d)] = defaults.as_slice() else {
            return TableKind::Other(if defaults.is_empty() {
                format!("table {table} has no default route, so it is not one gateway")
            } else {
                format!("table {table} has several default routes")
            });
        };
        if d.kind != RouteKind::Unicast {
            return TableKind::Other(format!(
                "table {table}'s default route is of type {}, not a gateway",
                d.kind.name()
            ));
        }
        if d.src.is_some() || d.tos != 0 {
            return TableKind::Other(format!(
                "table {table}'s default route is source- or TOS-specific"
            ));
        }
        let [nh] = d.nexthops.as_slice() else {
            return TableKind::Other(format!(
                "table {table}'s default route has {} next hops (multipath); a gateway has one",
                d.nexthops.len()
            ));
        };
        let Some(dev) = nh.dev.clone() else {
            return TableKind::Other(format!("table {table}'s default route names no device"));
        };
        if let Some(v) = nh.via {
            if Family::of(&v) != family {
                return TableKind::Other(format!(
                    "table {table}'s default route goes via {v}, an address of the other family"
                ));
            }
        }
        let mut keep = vec![*di];
        let mut extra = Vec::new();
        for (j, r) in &routes {
            if j == di {
                continue;
            }
            let connected = r.kind == RouteKind::Unicast
                && r.nexthops.len() == 1
                && r.nexthops[0].via.is_none()
                && r.nexthops[0].dev.is_some()
                && (r.scope.as_deref() == Some("link") || family == Family::Inet6);
            if connected {
                keep.push(*j);
            } else {
                extra.push(*j);
            }
        }
        TableKind::Gateway {
            dev,
            via: nh.via,
            routes: keep,
            extra,
        }
    }

    /// The host's name for a table: what its rt_tables files call it, else the name the
    /// rule printed (`lookup SMTP`, in a snapshot made by hand without those files).
    pub(super) fn table_word(&self, r: &RuleEntry, table: u32) -> Option<String> {
        if let Some(name) = self.host.routing.table_names.name(table) {
            // A name is data from a file: no control character reaches a comment.
            return Some(name.escape_debug().to_string());
        }
        let words: Vec<&str> = r.text.split_whitespace().collect();
        let pos = words.iter().position(|w| *w == "lookup" || *w == "table")?;
        let w = words.get(pos + 1)?;
        (!w.chars().all(|c| c.is_ascii_digit()) && !w.starts_with("0x")).then(|| w.to_string())
    }

    fn gateway_name(&self, r: &RuleEntry, table: u32) -> String {
        let base = self
            .table_word(r, table)
            .and_then(|w| super::balance::clean_name(&w))
            .unwrap_or_else(|| format!("table-{table}"));
        let mut name = base.clone();
        let mut n = 2;
        while self.gateways.iter().any(|g| g.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    }

    /// Foreign tools' `ip rule`s, by their well-known numbers.
    fn rule_tool(r: &RuleEntry, all: &[RuleEntry]) -> Option<String> {
        let wg_like = |x: &RuleEntry| {
            x.not && matches!((x.fwmark, x.action), (Some((v, _)), RuleAction::Lookup(t)) if v == t)
        };
        if let RuleAction::Lookup(t) = r.action {
            if t == 51820 || r.fwmark.is_some_and(|(v, _)| v == 0xca6c) || wg_like(r) {
                return Some(format!(
                    "wg-quick's full-tunnel rule (packets without the tunnel's own fwmark {} use table {t}, which routes into the tunnel): a foreign tool's rule, left in place; symroute's rules come first (priority {}+) and only catch packets carrying its own marks",
                    r.fwmark.map(|(v, _)| hex(v)).unwrap_or_default(),
                    DEFAULT_FIRST_PRIORITY
                ));
            }
            if t == 52 || (5210..=5270).contains(&r.priority) {
                return Some(
                    "Tailscale's rule (table 52, priorities 5210-5270, mark bits 0x00ff0000): a foreign tool's rule, left in place".into(),
                );
            }
            if t == TABLE_MAIN
                && r.suppress_prefixlength == Some(0)
                && all
                    .iter()
                    .any(|x| x.family == r.family && wg_like(x) && x.priority >= r.priority)
            {
                return Some(
                    "wg-quick's companion rule (main's specific routes before the tunnel's default): a foreign tool's rule, left in place".into(),
                );
            }
        }
        None
    }

    /// An unconditional `lookup main` ahead of symroute's rules (Shorewall's
    /// `999: from all lookup main`): what it does here, and what it would do beside them.
    fn why_early_main(&self, r: &RuleEntry) -> Option<String> {
        if !r.selects_all()
            || r.action != RuleAction::Lookup(TABLE_MAIN)
            || r.priority >= DEFAULT_FIRST_PRIORITY
        {
            return None;
        }
        let default = self
            .host
            .routing
            .routes_of(r.family, TABLE_MAIN)
            .find(|x| x.dst.prefix_len() == 0 && !x.kind.is_reject());
        let ahead = format!(
            "it decides every packet main has a route for before symroute's rules (priorities {DEFAULT_FIRST_PRIORITY}+)"
        );
        Some(match default {
            Some(d) => format!(
                "an unconditional `lookup main` at priority {}, and main has a default route (`{}`): {ahead}, so no policy would ever apply while it stays; it belongs to the tool that made it: remove it with that tool",
                r.priority,
                one_line(&d.text)
            ),
            None => format!(
                "an unconditional `lookup main` at priority {}: main has no {} default route here, so only its more specific routes (the LAN) decide at this point, as symroute's own `lookup main suppress_prefixlength 0` does before its route_via rules; once the host's default route is back in main, {ahead}: it goes with the tool that made it",
                r.priority,
                fam_word(r.family)
            ),
        })
    }

    fn why_rule(r: &RuleEntry) -> String {
        let mut sel = Vec::new();
        if let Some(f) = r.from {
            sel.push(format!("source address {f}"));
        }
        if let Some(t) = r.to {
            sel.push(format!("destination {t}"));
        }
        if let Some(i) = &r.iif {
            sel.push(format!("input interface {i}"));
        }
        if let Some(o) = &r.oif {
            sel.push(format!("output interface {o}"));
        }
        if let Some(t) = r.tos {
            sel.push(format!("TOS {t:#04x}"));
        }
        if r.ipproto.is_some() || r.sport.is_some() || r.dport.is_some() {
            sel.push("protocol/ports".into());
        }
        sel.extend(r.unmodeled.iter().cloned());
        let action = match r.action {
            RuleAction::Lookup(t) => format!("lookup {}", crate::routing::table_name(t)),
            RuleAction::Goto(p) => format!("goto {p}"),
            RuleAction::Blackhole => "blackhole".into(),
            RuleAction::Unreachable => "unreachable".into(),
            RuleAction::Prohibit => "prohibit".into(),
            RuleAction::Nop => "nop".into(),
            RuleAction::L3mdevTable => "l3mdev".into(),
        };
        if r.suppress_prefixlength.is_some() || r.suppress_ifgroup.is_some() {
            return "a `suppress_prefixlength`/`suppress_ifgroup` rule: symroute adds its own `lookup main suppress_prefixlength 0` only for its route_via rules; this one stays as it is".into();
        }
        if r.not {
            return format!(
                "an inverted (`not`) rule ({action}): symroute's rules select only its own marks"
            );
        }
        if r.fwmark.is_none() && r.from.is_some() && sel.len() == 1 {
            return format!(
                "selects every packet by its source address alone ({action}), in both directions, whatever connection it belongs to; symroute decides per connection: reply_via with the arrival interface for answers, route_via with `source` for new connections"
            );
        }
        if r.fwmark.is_none() && r.to.is_some() && sel.len() == 1 {
            return format!(
                "selects every packet by its destination alone ({action}); symroute decides per connection (route_via with `destination` steers new connections only)"
            );
        }
        if sel.is_empty() {
            return format!("an unconditional `{action}` before main: symroute has no equivalent");
        }
        let fw = if r.fwmark.is_some() {
            "a mark test combined with "
        } else {
            ""
        };
        format!(
            "{fw}a {} selector ({action}): symroute's rules select only by its own marks",
            sel.join(", ")
        )
    }

    pub(super) fn routing(&mut self) {
        let rules = &self.host.routing.rules;
        // Mark rules first, in priority order, so gateways are numbered as the host uses them.
        for (i, r) in rules.iter().enumerate() {
            if r.is_default() {
                continue;
            }
            if Self::ours(&r.protocol) {
                self.ours_seen = true;
                continue;
            }
            if let Some(why) = Self::rule_tool(r, rules) {
                self.rules_why.insert(i, why);
                continue;
            }
            let plain_mark = r.fwmark.is_some()
                && !r.not
                && r.from.is_none()
                && r.to.is_none()
                && r.iif.is_none()
                && r.oif.is_none()
                && r.ipproto.is_none()
                && r.sport.is_none()
                && r.dport.is_none()
                && r.tos.is_none()
                && r.suppress_prefixlength.is_none()
                && r.suppress_ifgroup.is_none()
                && r.unmodeled.is_empty();
            let (true, Some((value, mask)), RuleAction::Lookup(table)) =
                (plain_mark, r.fwmark, r.action)
            else {
                let why = self.why_early_main(r).unwrap_or_else(|| Self::why_rule(r));
                self.rules_why.insert(i, why);
                continue;
            };
            let kind = match self.tables.get(&(r.family, table)) {
                Some(k) => k.clone(),
                None => {
                    let k = self.classify_table(r.family, table);
                    self.tables.insert((r.family, table), k.clone());
                    k
                }
            };
            let target = match kind {
                TableKind::Gateway { dev, via, .. } => {
                    Target::Gateway(self.gateway_for(i, r, table, value, mask, &dev, via))
                }
                TableKind::Divert { .. } => Target::Divert,
                TableKind::Other(why) => Target::Other(why),
            };
            if let Target::Other(why) = &target {
                self.rules_why.insert(i, why.clone());
            }
            self.mark_rules.push(MarkRule {
                idx: i,
                family: r.family,
                value,
                mask,
                table,
                target,
            });
        }
    }

    /// Finds or makes the gateway for one fwmark rule's table.
    #[allow(clippy::too_many_arguments)]
    fn gateway_for(
        &mut self,
        idx: usize,
        r: &RuleEntry,
        table: u32,
        value: u32,
        mask: u32,
        dev: &str,
        via: Option<IpAddr>,
    ) -> usize {
        let fam = r.family;
        // The same table of this family: the same gateway.
        let same_table = self
            .gateways
            .iter()
            .position(|g| g.tables.contains(&(fam, table)));
        // The other family's gateway selected by the same fwmark, on the same interface.
        let same_mark = || {
            self.mark_rules.iter().find_map(|m| match m.target {
                Target::Gateway(g)
                    if m.family != fam
                        && m.value == value
                        && m.mask == mask
                        && self.gateways[g].interface == dev
                        && match fam {
                            Family::Inet4 => self.gateways[g].via.is_none(),
                            Family::Inet6 => self.gateways[g].via6.is_none(),
                        } =>
                {
                    Some(g)
                }
                _ => None,
            })
        };
        let g = match same_table.or_else(same_mark) {
            Some(g) => g,
            None => {
                let name = self.gateway_name(r, table);
                let mut notes = Vec::new();
                let links = &self.host.routing.links;
                if !links.is_empty() && !links.contains_key(dev) {
                    notes.push(format!(
                        "interface {dev} does not exist on this host now: symroute reports this gateway down (its rules fall through to the main table) until it does"
                    ));
                }
                self.gateways.push(GatewayOut {
                    name,
                    interface: dev.to_string(),
                    via: None,
                    via6: None,
                    rules: Vec::new(),
                    tables: Vec::new(),
                    notes,
                });
                self.gateways.len() - 1
            }
        };
        let gw = &mut self.gateways[g];
        gw.rules.push(idx);
        if !gw.tables.contains(&(fam, table)) {
            gw.tables.push((fam, table));

            match via {
                Some(IpAddr::V4(a)) => gw.via = Some(a),
                Some(IpAddr::V6(a)) => gw.via6 = Some(a),
                None => {}
            }
        }
        g
    }

    /// The mark rule a packet of `family` with mark `v` is routed by (first by priority).
    pub(super) fn mark_rule_for(&self, family: Family, v: u32) -> Option<MarkRule> {
        if v == 0 {
            return None;
        }
        self.mark_rules
            .iter()
            .find(|m| m.family == family && v & m.mask == m.value)
            .cloned()
    }
}
