//! What stays on the host unexpressed, and why.

use super::*;

impl<'h> Cx<'h> {
    /// A commented-out policy for what a rule that cannot be expressed was meant to do.
    pub(super) fn proposal(
        &self,
        conds: &Conds,
        reply_like: bool,
        gw: Option<usize>,
    ) -> Option<String> {
        let gw = &self.gateways[gw?];
        let mut sel = Sel::default();
        let mut dropped = Vec::new();
        if reply_like {
            // Answer every connection that arrives that way, whatever its service: the
            // arrival path is what a reply depends on.
            sel.in_interface = conds.sel.in_interface.clone();
            sel.source_mac = conds.sel.source_mac.clone();
            sel.not_source = conds.sel.not_source.clone();
            if !conds.sel.protocol.is_empty() || !conds.sel.destination_port.is_empty() {
                dropped.push(describe_service(&conds.sel));
            }
        } else {
            sel = conds.sel.clone();
        }
        if sel.is_empty() && reply_like {
            return None;
        }
        let kind = if reply_like { "reply_via" } else { "route_via" };
        let name = format!("{}-{}", kind.replace('_', "-"), gw.name);
        let mut s = String::new();
        let _ = writeln!(s, "[[policy]]");
        let _ = writeln!(s, "name = {}", q(&name));
        let _ = writeln!(s, "{kind} = {}", q(&gw.name));
        s += &render_match(&sel);
        for d in dropped {
            let _ = writeln!(
                s,
                "# (the original also required {d}; add protocol/destination_port to keep that)"
            );
        }
        Some(s)
    }

    pub(super) fn leftover_rules(&mut self) {
        // Mark rules a kept (unexpressed) assignment still needs stay, with their tables.
        for (val, fams, what) in self.kept_sets.clone() {
            for f in fams {
                if let Some(m) = self.mark_rule_for(f, val) {
                    if self.rules_done.remove(&m.idx) || !self.rules_why.contains_key(&m.idx) {
                        self.rules_why.insert(
                            m.idx,
                            format!(
                                "kept for `{what}`, which could not be expressed and still sets mark {}",
                                hex(val)
                            ),
                        );
                    }
                }
            }
        }
        // Mark rules the config did not replace.
        for m in self.mark_rules.clone() {
            if self.rules_done.contains(&m.idx) || self.rules_why.contains_key(&m.idx) {
                continue;
            }

            let why = match m.target {
                Target::Gateway(g) => format!(
                    "no firewall rule sets mark {} (a program could, with SO_MARK), so this rule never matches packets marked here and symroute has nothing to take over; its table is gateway \"{}\" above",
                    hex(m.value),
                    self.gateways[g].name
                ),
                Target::Divert => format!(
                    "no socket-matching firewall rule sets mark {}, so no [[divert]] replaces it",
                    hex(m.value)
                ),
                Target::Other(w) => w,
            };

            self.rules_why.insert(m.idx, why);
        }
        // Routes of the tables the config replaces, and what stays with them.
        for gw in &self.gateways {
            let used = gw.rules.iter().any(|i| self.rules_done.contains(i));
            for (fam, t) in &gw.tables {
                let kept_by: Vec<String> = self
                    .rules_left()
                    .filter(|r| r.family == *fam && r.action == RuleAction::Lookup(*t))
                    .map(|r| format!("`{}`", one_line(&r.text)))
                    .collect();
                if let Some(TableKind::Gateway { routes, extra, .. }) = self.tables.get(&(*fam, *t))
                {
                    if used && kept_by.is_empty() {
                        self.routes_done.extend(routes.iter().copied());
                        for e in extra {
                            self.routes_why.insert(
                                *e,
                                format!(
                                    "table {t} holds more than a default route and connected networks; symroute's table for gateway \"{}\" holds only those",
                                    gw.name
                                ),
                            );
                        }
                    }
                }
            }
        }
        for (k, kind) in &self.tables {
            if let TableKind::Divert { routes, extra } = kind {
                let used = self
                    .mark_rules
                    .iter()
                    .any(|m| (m.family, m.table) == *k && self.rules_done.contains(&m.idx));
                if used {
                    self.routes_done.extend(routes.iter().copied());
                    for e in extra {
                        self.routes_why.insert(
                            *e,
                            format!(
                                "table {} holds more than `local default dev lo`; symroute's divert table holds only that",
                                k.1
                            ),
                        );
                    }
                }
            }
        }
        // Bits and places of the ip rules that stay.
        for (i, r) in self.host.routing.rules.iter().enumerate() {
            if !self.rules_why.contains_key(&i) {
                continue;
            }
            if let Some((v, m)) = r.fwmark {
                let b = v | if m == u32::MAX { 0 } else { m };
                if b != 0 {
                    self.kept_bits |= b;
                    self.kept_bits_from.push((rule_what(r), b));
                }
            }
        }
    }

    pub(super) fn unexpressed(&self) -> Vec<(Unexpressed, Option<String>)> {
        let mut out = Vec::new();
        for c in &self.host.firewall.chains {
            for r in &c.rules {
                if let Some((why, prop)) = self.fw_why.get(&rid(r)) {
                    if self.fw_done.contains(&rid(r)) {
                        continue;
                    }
                    let mut why = why.clone();
                    if self.kept_copies.contains(&rid(r)) {
                        let copied = r
                            .stmts
                            .iter()
                            .map(|s| match (s, copy_kind(s)) {
                                (Stmt::SetMark { value, .. }, Some(CopyKind::Restore)) => {
                                    value.lin().ct
                                }
                                (Stmt::SetMark { value, .. }, Some(CopyKind::Save)) => {
                                    value.lin().meta
                                }
                                _ => 0,
                            })
                            .fold(0, |a, b| a | b);
                        if copied & self.mask != 0 {
                            why += &format!(
                                "; it copies mark bits {copied:#010x}, symroute's mask {:#010x} included, so `symroute apply` reports it as a conflict",
                                self.mask
                            );
                            if tool_of(c).is_none() {
                                why += " until it copies only the bits it needs (iptables `--nfmask`/`--ctmask`, nft `and MASK`)";
                            }
                        }
                    }
                    out.push((
                        Unexpressed {
                            what: fw_what_in(r, c),
                            why,
                        },
                        prop.clone(),
                    ));
                }
            }
        }
        let routing = &self.host.routing;
        let rules = self
            .rules_why
            .iter()
            .map(|(i, why)| (rule_what(&routing.rules[*i]), why));
        let routes = self
            .routes_why
            .iter()
            .map(|(i, why)| (route_what(&routing.routes[*i]), why));
        for (what, why) in rules.chain(routes) {
            let why = why.clone();
            out.push((Unexpressed { what, why }, None));
        }
        out
    }
}
