//! Socket-match marks whose table delivers locally, as `[[divert]]`.

use super::*;

impl<'h> Cx<'h> {
    pub(super) fn one_divert(
        &mut self,
        v: &Visit,
        key: MarkKey,
        val: u32,
        conds: &Conds,
        fams: &BTreeSet<Family>,
    ) -> bool {
        let id = rid(v.rule);
        let targets: Vec<Option<MarkRule>> =
            fams.iter().map(|f| self.mark_rule_for(*f, val)).collect();
        let mut reasons = Vec::new();
        if key != MarkKey::Meta {
            reasons.push("it sets the connection's mark, not the packet's".to_string());
        }
        if !targets
            .iter()
            .flatten()
            .any(|m| matches!(m.target, Target::Divert))
        {
            reasons.push(format!(
                "mark {} does not select a table with `local default dev lo`",
                hex(val)
            ));
        }
        let extra: Vec<String> = {
            let mut s = conds.sel.clone();
            s.protocol.clear();
            let mut out = Vec::new();
            if !s.is_empty() {
                out.push("it has conditions besides the protocol, and symroute's divert covers every transparent socket".to_string());
            }
            out.extend(conds.problems.iter().cloned());
            out
        };
        reasons.extend(extra);
        if !conds.sel.protocol.iter().all(|p| p == "tcp" || p == "udp") {
            reasons.push("transparent sockets exist only for tcp and udp".into());
        }
        if conds.socket == Some(Some(false)) {
            reasons.push(
                "it matches sockets that are not transparent, and symroute's divert matches transparent ones".into(),
            );
        }
        if !reasons.is_empty() {
            self.fw_why.insert(id, (reasons.join("; "), None));
            self.kept_sets
                .push((val, fams.clone(), fw_what_in(v.rule, v.chain)));
            return false;
        }
        let d = self.divert.get_or_insert_with(DivertOut::default);
        if conds.sel.protocol.is_empty() {
            d.any_protocol = true;
        }
        d.protocols.extend(conds.sel.protocol.iter().cloned());
        if conds.socket == Some(None) {
            let n = "the original matched any local socket (`-m socket`); symroute's divert matches transparent ones (`socket transparent 1`), which is what a transparent proxy (HAProxy's `usesrc clientip`) uses".to_string();
            if !d.notes.contains(&n) {
                d.notes.push(n);
            }
        }
        if !fams.contains(&Family::Inet6) {
            let n = "the original diverted IPv4 only; symroute diverts IPv6 too".to_string();
            if !d.notes.contains(&n) {
                d.notes.push(n);
            }
        }
        self.marks_replaced.insert(val);
        for m in targets.into_iter().flatten() {
            if matches!(m.target, Target::Divert) {
                self.rules_done.insert(m.idx);
            }
        }
        true
    }
}
