//! Mark patterns in the firewall (CONNMARK and per-packet marks) as policies.

use super::*;

impl<'h> Cx<'h> {
    fn visits(&self) -> Vec<Visit<'h>> {
        let rs = &self.host.firewall;
        let mut out = Vec::new();
        let mut seq = 0;
        for hook in [
            Hook::Prerouting,
            Hook::Output,
            Hook::Input,
            Hook::Forward,
            Hook::Postrouting,
        ] {
            let mut bases: Vec<(i32, usize, &Chain)> = rs
                .chains
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.base.as_ref().is_some_and(|b| b.hook == hook)
                        && matches!(c.family, NfFamily::Ip | NfFamily::Ip6 | NfFamily::Inet)
                })
                .map(|(i, c)| (c.base.as_ref().map_or(0, |b| b.priority), i, c))
                .collect();
            bases.sort_by_key(|(p, i, _)| (*p, *i));
            for (rank, (_, _, c)) in bases.into_iter().enumerate() {
                let mut stack = vec![c as *const Chain];
                walk(
                    self.host,
                    c,
                    hook,
                    rank,
                    &mut seq,
                    &[],
                    &[],
                    &[],
                    true,
                    &mut stack,
                    &mut out,
                );
            }
        }
        out
    }

    pub(super) fn firewall(&mut self) {
        let visits = self.visits();
        let live = |v: &&Visit| !is_symroute_chain(v.chain) && tool_of(v.chain).is_none();

        let copying = |k: CopyKind| -> Vec<&Visit> {
            visits
                .iter()
                .filter(live)
                .filter(|v| v.rule.stmts.iter().any(|s| copy_kind(s) == Some(k)))
                .collect()
        };
        let restores = copying(CopyKind::Restore);
        let saves = copying(CopyKind::Save);
        let restore_in = |h: Hook| restores.iter().any(|v| v.hook == h);

        // Every constant mark assignment, by visit.
        let mut set_visits: Vec<(&Visit, MarkKey, u32)> = Vec::new();
        for v in visits.iter().filter(live) {
            let sets: Vec<(MarkKey, u32)> = v.rule.stmts.iter().filter_map(const_set).collect();
            // A rule setting both marks to the same value is one decision, saved.
            if let Some(&(k, val)) = sets
                .iter()
                .find(|(k, _)| *k == MarkKey::Meta)
                .or_else(|| sets.first())
            {
                set_visits.push((v, k, val));
            }
        }

        // A way to a rule whose conditions contradict each other (a chain shared by jumps
        // on `-i up1` and `-i up2`, holding a rule on `-i up1`: Shorewall's routemark) is
        // taken by no packet: the rule is judged by its other ways. Only a rule with no
        // other way is reported as never matching.
        let possible: BTreeSet<usize> = set_visits
            .iter()
            .filter(|(v, _, _)| !Conds::of(v).impossible)
            .map(|(v, _, _)| rid(v.rule))
            .collect();
        set_visits.retain(|(v, _, _)| !possible.contains(&rid(v.rule)) || !Conds::of(v).impossible);

        // Per rule: Some(true) all visits expressed, Some(false) some not.
        let mut expressed: BTreeMap<usize, bool> = BTreeMap::new();
        let mut any_pattern_policy = false;
        for (v, key, val) in &set_visits {
            let ok = self.one_set(v, *key, *val, &saves, &restore_in, &mut any_pattern_policy);
            let e = expressed.entry(rid(v.rule)).or_insert(true);
            *e &= ok;
        }
        for (id, ok) in &expressed {
            if *ok {
                self.fw_done.insert(*id);
                self.fw_why.remove(id);
            } else {
                self.fw_done.remove(id);
            }
        }
        // The jump rules that led to expressed sets, and divert chains' other rules.
        for (v, _, _) in &set_visits {
            if expressed.get(&rid(v.rule)) == Some(&true) {
                for j in &v.via {
                    self.fw_done.insert(rid(j));
                }
                // Exemptions that became not_source/source/…: part of what is replaced.
                for e in &v.excl {
                    let control_only = e
                        .stmts
                        .iter()
                        .all(|s| matches!(s, Stmt::Counter | Stmt::Log));
                    let exemption = matches!(
                        e.matches.as_slice(),
                        [Match::Saddr { .. } | Match::Daddr { .. } | Match::Nfproto { .. }]
                    );
                    if control_only && exemption && e.verdict == Verdict::Return {
                        self.fw_done.insert(rid(e));
                    }
                }
                if !v.in_base
                    && v.via
                        .iter()
                        .any(|j| j.matches.iter().any(|m| matches!(m, Match::Socket { .. })))
                {
                    for r in &v.chain.rules {
                        if r.stmts
                            .iter()
                            .all(|s| matches!(s, Stmt::Counter | Stmt::Log))
                            && r.matches.is_empty()
                        {
                            self.fw_done.insert(rid(r));
                        }
                    }
                }
            }
        }

        // The pattern's copies and skip rules: replaced when every mark they carry was.
        // (Only marks some `ip rule` routes by: others are not part of the pattern.)
        let unexpressed_sets: Vec<&Visit> = set_visits
            .iter()
            .filter(|(v, _, val)| {
                expressed.get(&rid(v.rule)) == Some(&false)
                    && [Family::Inet4, Family::Inet6]
                        .iter()
                        .any(|f| self.mark_rule_for(*f, *val).is_some())
            })
            .map(|(v, _, _)| *v)
            .collect();
        let pattern_rules: Vec<&Visit> = visits
            .iter()
            .filter(live)
            .filter(|v| {
                v.rule.stmts.iter().any(|s| copy_kind(s).is_some()) || is_skip_marked(v.rule)
            })
            .collect();
        for v in &pattern_rules {
            let id = rid(v.rule);
            if self.fw_done.contains(&id) || self.fw_why.contains_key(&id) {
                continue;
            }
            if any_pattern_policy && unexpressed_sets.is_empty() {
                self.fw_done.insert(id);
                for j in &v.via {
                    self.fw_done.insert(rid(j));
                }
            } else {
                let what = if is_skip_marked(v.rule) {
                    "skips packets that already carry a mark"
                } else if v
                    .rule
                    .stmts
                    .iter()
                    .any(|s| copy_kind(s) == Some(CopyKind::Restore))
                {
                    "copies the connection's mark to the packet"
                } else {
                    "copies the packet's mark to the connection"
                };
                let why = if unexpressed_sets.is_empty() {
                    format!(
                        "{what}, but no rule here sets a mark that an `ip rule` looks up (a program may set it with SO_MARK): left as it is"
                    )
                } else {
                    let names: Vec<String> = unexpressed_sets
                        .iter()
                        .map(|u| format!("`{}`", u.rule.text))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    format!(
                        "{what}; kept for {}, which could not be expressed",
                        names.join(", ")
                    )
                };
                if !is_skip_marked(v.rule) {
                    self.kept_copies.push(id);
                }
                self.fw_why.insert(id, (why, None));
            }
        }

        // A reset after routing of the bits the replaced rules route by (Shorewall's
        // `-A FORWARD -j MARK --set-xmark 0x0/0xff` beside its CONNMARK restores): by then
        // routing has used the mark, so it decides no route; it goes with the rules it
        // served. (Seed 000's `--set-mark 0` in FORWARD is no such reset: nothing there is
        // replaced, its mark rule stays unmatched.)
        for (v, key, val) in &set_visits {
            let id = rid(v.rule);
            if *key != MarkKey::Meta
                || *val != 0
                || !v.hook.after_routing()
                || self.fw_done.contains(&id)
            {
                continue;
            }
            let cleared = cleared_bits(v.rule);
            let served: Vec<&MarkRule> = self
                .mark_rules
                .iter()
                .filter(|m| m.mask & cleared != 0)
                .collect();
            if !served.is_empty() && served.iter().all(|m| self.rules_done.contains(&m.idx)) {
                self.fw_done.insert(id);
                self.fw_why.remove(&id);
                self.notes.push(format!(
                    "`{}` clears mark bits {} after the routing decision, while the rules this file replaces set and restore those marks before it: it decided no route, and goes with them (under \"Replaces\")",
                    one_line(&v.rule.text),
                    hex(cleared)
                ));
            }
        }

        // Everything else that touches marks, anywhere (reached or not).
        let reached: BTreeSet<usize> = visits.iter().map(|v| rid(v.rule)).collect();
        for c in &self.host.firewall.chains {
            if is_symroute_chain(c) {
                if !c.rules.is_empty() || c.base.is_some() {
                    self.ours_seen = true;
                }
                continue;
            }
            for r in &c.rules {
                let id = rid(r);
                if self.fw_done.contains(&id) {
                    continue;
                }
                let tool = tool_of(c);
                if !touches_marks(r) {
                    continue;
                }
                if let Some(t) = tool {
                    let copy = r.stmts.iter().any(|s| copy_kind(s).is_some());
                    let what = if copy {
                        "copies marks between the packet and its connection".to_string()
                    } else if r.stmts.iter().any(|s| matches!(s, Stmt::SetMark { .. })) {
                        format!("sets mark bits {}", hex(bits_used(r)))
                    } else {
                        format!("tests mark bits {}", hex(bits_used(r)))
                    };
                    self.fw_why.insert(
                        id,
                        (
                            format!("{t}'s rule ({what}): a foreign tool's rule, left in place"),
                            None,
                        ),
                    );
                    if copy {
                        self.kept_copies.push(id);
                    }
                    self.keep_bits(r, c);
                    continue;
                }
                if self.fw_why.contains_key(&id) {
                    self.keep_bits(r, c);
                    continue;
                }
                let why = if !reached.contains(&id) {
                    "touches marks in a chain no hook reaches: left as it is".to_string()
                } else if r.stmts.iter().any(|s| matches!(s, Stmt::Tproxy(_))) {
                    "TPROXY redirects packets to a local socket: symroute's divert only delivers answers to transparent sockets locally, it does not redirect".to_string()
                } else if let Some(m) = r.matches.iter().find(|m| matches!(m, Match::Mark { .. })) {
                    let marks = self.replaced_marks_in(m);
                    if marks {
                        format!(
                            "tests `{m}`, a mark the hand-made rules this file replaces used to set: once they are removed it never matches"
                        )
                    } else {
                        format!(
                            "tests `{m}`, which symroute's policies cannot express: left as it is"
                        )
                    }
                } else if let Some(Stmt::Unknown(s)) =
                    r.stmts.iter().find(|s| matches!(s, Stmt::Unknown(_)))
                {
                    format!("`{s}` is beyond what symroute models: left as it is")
                } else {
                    "touches marks in a way symroute cannot express: left as it is".to_string()
                };
                self.fw_why.insert(id, (why, None));
                self.keep_bits(r, c);
            }
        }
        // Bits of the unexpressed sets (kept) count too.
        for c in &self.host.firewall.chains {
            for r in &c.rules {
                let id = rid(r);
                if self.fw_why.contains_key(&id) && !self.fw_done.contains(&id) {
                    self.keep_bits(r, c);
                }
            }
        }
        for n in &self.host.firewall.notes {
            if n.contains("not modelled") || n.contains("skipped") {
                self.notes.push(n.clone());
            }
        }
    }

    fn replaced_marks_in(&self, m: &Match) -> bool {
        let Match::Mark { mask, values, .. } = m else {
            return false;
        };
        self.marks_replaced.iter().any(|v| {
            values
                .iter()
                .any(|(a, b)| (v & mask) >= *a && (v & mask) <= *b && *v != 0)
        })
    }

    fn keep_bits(&mut self, r: &Rule, c: &Chain) {
        let b = bits_used(r);
        if b != 0 {
            let what = fw_what_in(r, c);
            if !self.kept_bits_from.iter().any(|(w, _)| *w == what) {
                self.kept_bits |= b;
                self.kept_bits_from.push((what, b));
            }
        }
    }

    /// One constant mark assignment; returns whether the config expresses it.
    fn one_set(
        &mut self,
        v: &Visit,
        key: MarkKey,
        val: u32,
        saves: &[&Visit],
        restore_in: &dyn Fn(Hook) -> bool,
        any_pattern_policy: &mut bool,
    ) -> bool {
        let id = rid(v.rule);
        if v.rule.stmts.iter().any(|s| matches!(s, Stmt::Tproxy(_))) {
            self.fw_why.insert(
                id,
                ("TPROXY redirects packets to a local socket: symroute's divert only delivers answers to transparent sockets locally, it does not redirect".into(), None),
            );
            self.kept_sets.push((
                val,
                families_of(v.chain.family),
                fw_what_in(v.rule, v.chain),
            ));
            return false;
        }
        let conds = Conds::of(v);
        let fams: BTreeSet<Family> = {
            let mut f = families_of(v.chain.family);
            if let Some(c) = &conds.families {
                f.retain(|x| c.contains(x));
            }
            f
        };

        // Divert: a socket match setting a mark whose table delivers locally.
        if conds.socket.is_some() {
            return self.one_divert(v, key, val, &conds, &fams);
        }

        let targets: Vec<(Family, Option<MarkRule>)> = fams
            .iter()
            .map(|f| (*f, self.mark_rule_for(*f, val)))
            .collect();
        let gws: BTreeSet<usize> = targets
            .iter()
            .filter_map(|(_, m)| match m.as_ref().map(|m| &m.target) {
                Some(Target::Gateway(g)) => Some(*g),
                _ => None,
            })
            .collect();
        let other_why: Option<String> = targets.iter().find_map(|(_, m)| match m.as_ref().map(|m| &m.target) {
            Some(Target::Other(w)) => Some(format!(
                "mark {} selects table {}, which is not a gateway symroute can express: {w}",
                hex(val),
                m.as_ref().map_or(0, |m| m.table)
            )),
            Some(Target::Divert) => Some(format!(
                "mark {} selects a `local default dev lo` table (a divert), but the rule has no socket match",
                hex(val)
            )),
            _ => None,
        });

        let saved_here = v.rule.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::SetMark {
                    key: MarkKey::Ct,
                    ..
                }
            )
        }) || key == MarkKey::Ct;
        let blocks = |s: &Visit| {
            let term = matches!(v.rule.verdict, Verdict::Accept | Verdict::Drop)
                || (v.in_base && terminal_verdict(&v.rule.verdict));
            term && s.base == v.base
        };
        let saved = saved_here
            || saves
                .iter()
                .any(|s| s.hook == v.hook && (s.base, s.seq) > (v.base, v.seq) && !blocks(s));

        let iface: Vec<&String> = conds.sel.in_interface.iter().collect();
        let gw_if = gws
            .iter()
            .next()
            .map(|g| self.gateways[*g].interface.clone());
        let reply_like = match &gw_if {
            Some(d) => {
                (!iface.is_empty() && iface.iter().all(|i| *i == d))
                    || (!conds.sel.source_mac.is_empty()
                        && (iface.is_empty() || iface.iter().all(|i| *i == d)))
            }
            None => !conds.sel.source_mac.is_empty() || !iface.is_empty(),
        };

        // Reasons it cannot be expressed as it is, in the order a reader needs them.
        let mut reasons: Vec<String> = Vec::new();
        if val == 0 {
            let looked: Vec<String> = self
                .mark_rules
                .iter()
                .filter(|m| fams.contains(&m.family))
                .map(|m| format!("`{}`", one_line(&self.host.routing.rules[m.idx].text)))
                .collect();
            let mut s = format!(
                "`{}` sets mark 0, which is no mark at all: it clears the packet's mark, and no `ip rule fwmark` can select it",
                mark_stmt_text(v.rule)
            );
            if !looked.is_empty() {
                s += &format!(" ({} never matches these packets)", looked.join(", "));
            }
            if self.mark_rules.iter().any(|m| m.value == 1) {
                s += "; marks are plain numbers, so 0 does not stand for 1";
            }
            reasons.push(s);
        } else if targets.iter().all(|(_, m)| m.is_none()) {
            reasons.push(format!(
                "no `ip rule fwmark` selects mark {} (tc filters or other programs may use it)",
                hex(val)
            ));
        } else if let Some(w) = &other_why {
            reasons.push(w.clone());
        } else if gws.len() > 1 {
            reasons.push(format!(
                "mark {} selects different gateways for IPv4 and IPv6",
                hex(val)
            ));
        }
        if v.hook.after_routing() {
            reasons.push(format!(
                "it is in {}, after the routing decision, where a mark cannot change the route{}",
                v.hook.as_str().to_ascii_uppercase(),
                if v.hook == Hook::Forward {
                    " (and the host's own connections never pass FORWARD)"
                } else {
                    ""
                }
            ));
        }
        if !saved && reply_like {
            reasons.push(
                "without CONNMARK (`--save-mark`, `ct mark set meta mark`) only the packets it marks carry the mark, never the answers".into(),
            );
        }
        reasons.extend(conds.problems.iter().cloned());

        // Which gateway a proposal would use: the one the mark selects, else the one on the
        // rule's input interface, else the only one.
        let proposal_gw = gws.iter().next().copied().or_else(|| {
            let by_if: Vec<usize> = (0..self.gateways.len())
                .filter(|g| iface.iter().any(|i| **i == self.gateways[*g].interface))
                .collect();
            match by_if.as_slice() {
                [g] => Some(*g),
                _ if self.gateways.len() == 1 => Some(0),
                _ => None,
            }
        });

        if !reasons.is_empty() {
            let proposal = (conds.problems.is_empty() || reply_like && !iface.is_empty())
                .then(|| self.proposal(&conds, reply_like, proposal_gw))
                .flatten();
            let mut why = reasons.join("; ");
            if proposal.is_some() {
                why += "; the policy it was meant to be is proposed, commented out, in the file";
            }
            self.fw_why.entry(id).or_insert((why, proposal));
            self.kept_sets
                .push((val, fams.clone(), fw_what_in(v.rule, v.chain)));
            return false;
        }

        let gw = *gws.iter().next().expect("a gateway when no reasons");
        let action = if reply_like && v.hook == Hook::Prerouting {
            ActionKind::Reply
        } else {
            ActionKind::Route
        };
        let mut notes = Vec::new();
        let restored_pre = restore_in(Hook::Prerouting);
        let restored_out = restore_in(Hook::Output);
        match action {
            ActionKind::Reply => {
                if conds.sel.is_empty() {
                    self.fw_why.insert(
                        id,
                        ("it marks every arriving connection, and a reply_via policy needs conditions that say which".into(), None),
                    );
                    return false;
                }
                if !restored_pre && !restored_out {
                    self.fw_why.insert(
                        id,
                        ("it saves the mark in the connection but nothing restores it (`--restore-mark`, `meta mark set ct mark`), so the answers are never marked".into(), self.proposal(&conds, true, Some(gw))),
                    );
                    return false;
                }
                if !restored_out {
                    notes.push("the original restored the mark only in PREROUTING, so this host's own answers ignored it; symroute steers them too".into());
                }
                if !restored_pre {
                    notes.push("the original restored the mark only in OUTPUT, so forwarded answers ignored it; symroute steers them too".into());
                }
                *any_pattern_policy = true;
            }
            ActionKind::Route => {
                let restored = match v.hook {
                    Hook::Output => restored_out,
                    _ => restored_pre,
                };
                if !saved || !restored {
                    if conds.new_only {
                        notes.push("the original marked only each connection's first packet (no CONNMARK), so the rest followed the main table; symroute remembers the decision and steers every packet the connection sends".into());
                    } else {
                        notes.push("the original marked matching packets one by one (no CONNMARK); symroute decides once per connection and steers every packet the connection sends".into());
                    }
                } else {
                    *any_pattern_policy = true;
                }
            }
        }

        self.marks_replaced.insert(val);
        for m in targets.iter().filter_map(|(_, m)| m.as_ref()) {
            self.rules_done.insert(m.idx);
        }
        let policy = PolicyOut {
            action,
            gateway: gw,
            sel: conds.sel.clone(),
            families: fams.clone(),
            hooks: [v.hook].into(),
            notes,
            terminal: terminal_verdict(&v.rule.verdict),
            seq: v.seq,
        };
        self.add_policy(policy);
        true
    }

    fn add_policy(&mut self, p: PolicyOut) {
        // The same decision reached again (another hook, another family): one policy.
        if let Some(q) = self
            .policies
            .iter_mut()
            .find(|q| q.action == p.action && q.gateway == p.gateway && q.sel == p.sel)
        {
            q.families.extend(p.families.iter().copied());
            q.hooks.extend(p.hooks.iter().copied());
            for n in p.notes {
                if !q.notes.contains(&n) {
                    q.notes.push(n);
                }
            }
            return;
        }
        self.policies.push(p);
    }
}

/// Policies next to each other that differ only in one positive list merge into one.
pub(super) fn merge_adjacent(ps: Vec<PolicyOut>) -> Vec<PolicyOut> {
    let mut out: Vec<PolicyOut> = Vec::new();
    for p in ps {
        if let Some(last) = out.last_mut() {
            if last.action == p.action
                && last.gateway == p.gateway
                && last.hooks == p.hooks
                && last.notes == p.notes
            {
                if let Some(merged) = merge_sel(&last.sel, &p.sel) {
                    last.sel = merged;
                    last.families.extend(p.families.iter().copied());
                    continue;
                }
            }
        }
        out.push(p);
    }
    out
}

fn merge_sel(a: &Sel, b: &Sel) -> Option<Sel> {
    let mut m = a.clone();
    let diffs = [
        a.in_interface != b.in_interface,
        a.source_mac != b.source_mac,
        a.source != b.source,
        a.destination != b.destination,
        a.protocol != b.protocol,
        a.source_port != b.source_port,
        a.destination_port != b.destination_port,
    ];
    if a.not_source != b.not_source || a.not_destination != b.not_destination {
        return None;
    }
    if diffs.iter().filter(|d| **d).count() != 1 {
        return None;
    }
    fn union<T: Clone + PartialEq>(x: &mut Vec<T>, y: &[T]) -> bool {
        if x.is_empty() || y.is_empty() {
            return false;
        }
        for i in y {
            if !x.contains(i) {
                x.push(i.clone());
            }
        }
        true
    }
    let ok = if diffs[0] {
        union(&mut m.in_interface, &b.in_interface)
    } else if diffs[1] {
        union(&mut m.source_mac, &b.source_mac)
    } else if diffs[2] {
        union(&mut m.source, &b.source)
    } else if diffs[3] {
        union(&mut m.destination, &b.destination)
    } else if diffs[4] {
        // Ports belong to their protocol: only merge protocols without ports.
        a.source_port.is_empty()
            && a.destination_port.is_empty()
            && union(&mut m.protocol, &b.protocol)
    } else if diffs[5] {
        union(&mut m.source_port, &b.source_port)
    } else {
        union(&mut m.destination_port, &b.destination_port)
    };
    ok.then_some(m)
}

pub(super) fn policy_names(ps: &[PolicyOut], gws: &[GatewayOut]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in ps {
        let base = format!(
            "{}-{}",
            match p.action {
                ActionKind::Reply => "reply-via",
                ActionKind::Route => "route-via",
            },
            gws[p.gateway].name
        );
        let base: String = base.chars().take(60).collect();
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}
