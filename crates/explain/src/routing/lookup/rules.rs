//! The policy rule walk (`fib_rules_lookup`): selectors, actions, `suppress_*`, `goto`,
//! and IPv4's merged local+main lookup when no custom rule exists.

use super::*;

impl<'s> Engine<'s> {
    /// Why the rule's selectors do not match (`Err`), before `not`.
    pub(super) fn selectors(&self, r: &RuleEntry, f: &Flow) -> Result<(), String> {
        if let Some(iif) = &r.iif {
            if r.iif_detached {
                return Err(format!(
                    "iif {iif} is [detached]: no such interface, the rule matches nothing"
                ));
            }
            if iif != f.iif {
                return Err(if f.iif == "lo" && self.stage == Stage::Route {
                    format!("iif {iif}: locally generated packets have iif lo")
                } else {
                    format!("iif {iif}: the packet's iif is {}", f.iif)
                });
            }
        }
        if let Some(oif) = &r.oif {
            if r.oif_detached {
                return Err(format!(
                    "oif {oif} is [detached]: no such interface, the rule matches nothing"
                ));
            }
            match f.oif {
                None => {
                    return Err(format!(
                        "oif {oif}: only packets from a socket bound to an interface have an oif"
                    ))
                }
                Some(o) if o != oif => {
                    return Err(format!("oif {oif}: the packet's oif is {o}"));
                }
                Some(_) => {}
            }
        }
        if let Some((v, m)) = r.fwmark {
            if (f.mark ^ v) & m != 0 {
                return Err(format!(
                    "fwmark {v:#x}/{m:#x}: mark {:#x} & {m:#x} = {:#x}",
                    f.mark,
                    f.mark & m
                ));
            }
        }
        if let Some(from) = r.from {
            match f.src {
                None if f.family == Family::Inet6 => {
                    return Err(format!(
                        "from {from}: the packet has no source address yet (it is chosen after routing)"
                    ))
                }
                src => {
                    let s = src.unwrap_or(unspecified(f.family));
                    if !from.contains(&s) {
                        return Err(format!("from {from}: source {s} is outside"));
                    }
                }
            }
        }
        if let Some(to) = r.to {
            if !to.contains(&f.dst) {
                return Err(format!("to {to}: destination {} is outside", f.dst));
            }
        }
        if let Some(tos) = r.tos {
            let pkt = match f.family {
                Family::Inet4 => f.tos & 0x1c,
                Family::Inet6 => f.tos & 0xfc,
            };
            if pkt != tos {
                return Err(format!("tos {tos:#x}: the packet's is {:#x}", f.tos));
            }
        }
        if let Some(p) = r.ipproto {
            if p != f.proto {
                return Err(format!(
                    "ipproto {}: the packet's protocol is {}",
                    IpProto(p).ip_rule_word(),
                    if f.proto == 0 {
                        "unset".to_string()
                    } else {
                        IpProto(f.proto).ip_rule_word()
                    }
                ));
            }
        }
        for (name, range, port) in [("sport", r.sport, f.sport), ("dport", r.dport, f.dport)] {
            if let Some((a, b)) = range {
                if port < a || port > b {
                    return Err(format!("{name} {a}-{b}: the packet's is {port}"));
                }
            }
        }
        Ok(())
    }

    pub(super) fn rule_matches(&self, r: &RuleEntry, f: &Flow) -> Result<(), String> {
        if !r.unmodeled.is_empty() {
            return Err(format!(
                "uses {}, which explain does not model: assumed not to match",
                r.unmodeled.join(", ")
            ));
        }
        match (self.selectors(r, f), r.not) {
            (Ok(()), false) => Ok(()),
            (Err(why), false) => Err(why),
            (Ok(()), true) => Err("every selector matches, and the rule says `not`".into()),
            (Err(why), true) => {
                let _ = why;
                Ok(())
            }
        }
    }

    /// `fib_lookup`: the rules in order, or the no-custom-rules shortcut for IPv4.
    pub(super) fn fib_lookup(&mut self, flow: &Flow, o: &Opts) -> Result<Hit<'s>, Failure> {
        if flow.family == Family::Inet4 && !self.custom_rules4() {
            return self.merged_lookup4(flow, o);
        }
        self.fib_lookup_from(flow, o, 0)
    }

    /// The rule walk from the `start`-th rule of the family.
    pub(super) fn fib_lookup_from(
        &mut self,
        flow: &Flow,
        o: &Opts,
        start: usize,
    ) -> Result<Hit<'s>, Failure> {
        let st = self.st;
        let rules: Vec<&'s RuleEntry> = st.rules_of(flow.family).collect();
        let mut i = start;
        while let Some(&r) = rules.get(i) {
            if let Err(why) = self.rule_matches(r, flow) {
                self.step(Some(r), false, why);
                i += 1;
                continue;
            }
            let why_match = if r.not {
                "matches (a selector fails, and the rule says `not`)"
            } else {
                "matches"
            };
            match r.action {
                RuleAction::Goto(target) => {
                    let pos = (!r.unresolved)
                        .then(|| rules.iter().position(|x| x.priority == target))
                        .flatten()
                        .filter(|&p| p > i);
                    match pos {
                        Some(p) => {
                            self.step(
                                Some(r),
                                true,
                                format!("{why_match}: goto {target}, continue there"),
                            );
                            i = p;
                        }
                        None => {
                            self.step(
                                Some(r),
                                true,
                                format!(
                                    "{why_match}, but goto {target} is unresolved (no rule has that priority): skipped"
                                ),
                            );
                            i += 1;
                        }
                    }
                }
                RuleAction::Nop | RuleAction::L3mdevTable => {
                    self.step(Some(r), true, format!("{why_match}: nop, continue"));
                    i += 1;
                }
                RuleAction::Blackhole | RuleAction::Unreachable | RuleAction::Prohibit => {
                    let (error, kind, what) = match r.action {
                        RuleAction::Blackhole => (
                            RouteError::InvalidArgument,
                            VerdictKind::Blackhole,
                            "a blackhole rule discards it silently",
                        ),
                        RuleAction::Prohibit => (
                            RouteError::PermissionDenied,
                            VerdictKind::Prohibit,
                            "a prohibit rule rejects it (ICMP administratively prohibited)",
                        ),
                        _ => (
                            RouteError::NetworkUnreachable,
                            VerdictKind::Unreachable,
                            "an unreachable rule rejects it (ICMP network unreachable)",
                        ),
                    };
                    self.step(Some(r), true, format!("{why_match}: {what}"));
                    return Err(Failure {
                        error,
                        kind,
                        table: None,
                        rule: Some(r.priority),
                        route: None,
                        reason: format!("rule {}: {what}", r.priority),
                    });
                }
                RuleAction::Lookup(t) => {
                    match self.table(flow.family, &[t], flow, o) {
                        TableResult::Miss => {
                            self.table_step(
                                Some(r),
                                t,
                                None,
                                format!(
                                    "{why_match}: table {} has no usable route to {}, next rule",
                                    table_name(t),
                                    flow.dst
                                ),
                            );
                            i += 1;
                        }
                        TableResult::Reject(route) if route.kind == RouteKind::Throw => {
                            self.table_step(
                                Some(r),
                                t,
                                Some(route),
                                format!(
                                    "{why_match}: table {} answers with a throw route, next rule",
                                    table_name(t)
                                ),
                            );
                            i += 1;
                        }
                        TableResult::Reject(route) => {
                            let (error, kind, what) = route_error_kind(route.kind, flow.family);
                            self.table_step(
                                Some(r),
                                t,
                                Some(route),
                                format!("{why_match}: table {}: {what}", table_name(t)),
                            );
                            return Err(Failure {
                                error,
                                kind,
                                table: Some(t),
                                rule: Some(r.priority),
                                route: Some(route.text.clone()),
                                reason: format!(
                                    "rule {} → table {}: {what}",
                                    r.priority,
                                    table_name(t)
                                ),
                            });
                        }
                        TableResult::Found(route, hops) => {
                            let plen = route.dst.prefix_len();
                            if let Some(n) = r.suppress_prefixlength.filter(|n| plen <= *n) {
                                self.table_step(
                                    Some(r),
                                    t,
                                    Some(route),
                                    format!(
                                        "{why_match}: table {} finds a /{plen} route, suppressed \
                                         (suppress_prefixlength {n} rejects prefixes of length ≤ {n}), next rule",
                                        table_name(t)
                                    ),
                                );
                                i += 1;
                                continue;
                            }
                            let mut hops = hops;
                            let mut alt = None;
                            if let (Some(g), Family::Inet6, true) =
                                (r.suppress_ifgroup, flow.family, hops.len() > 1)
                            {
                                // IPv6 judges the sibling the hash picked.
                                let (gone, kept): (Vec<&'s NextHop>, Vec<&'s NextHop>) = hops
                                    .iter()
                                    .partition(|nh| self.link_group(nh.dev.as_deref()) == Some(g));
                                if !gone.is_empty()
                                    && !kept.is_empty()
                                    && self.branches < MAX_BRANCHES
                                {
                                    self.branches += 1;
                                    self.table_step(
                                        Some(r),
                                        t,
                                        Some(route),
                                        format!(
                                            "{why_match}: table {} has a multipath route; if the hash picks {} \
                                             (group {g}), suppress_ifgroup {g} suppresses it and the walk goes on:",
                                            table_name(t),
                                            Self::describe_hops(&gone)
                                        ),
                                    );
                                    alt = Some(Box::new(self.fib_lookup_from(flow, o, i + 1)));
                                    hops = kept;
                                }
                            }
                            let dev = match flow.family {
                                Family::Inet4 => route.nexthops.first(),
                                Family::Inet6 => hops.first().copied(),
                            }
                            .and_then(|nh| nh.dev.as_deref());
                            if let Some(g) = r
                                .suppress_ifgroup
                                .filter(|g| self.link_group(dev) == Some(*g))
                            {
                                self.table_step(
                                    Some(r),
                                    t,
                                    Some(route),
                                    format!(
                                        "{why_match}: table {} finds a route via {}, suppressed \
                                         (suppress_ifgroup {g}: that interface is in group {g}), next rule",
                                        table_name(t),
                                        dev.unwrap_or("?")
                                    ),
                                );
                                i += 1;
                                continue;
                            }
                            self.table_step(
                                Some(r),
                                t,
                                Some(route),
                                format!("{why_match}: table {} has a route", table_name(t)),
                            );
                            return Ok(Hit {
                                route,
                                rule: Some(r.priority),
                                hops,
                                merged: false,
                                alt,
                            });
                        }
                    }
                }
            }
        }
        Err(Failure {
            error: RouteError::NetworkUnreachable,
            kind: VerdictKind::Unreachable,
            table: None,
            rule: None,
            route: None,
            reason: format!(
                "no rule led to a route for {} (network unreachable)",
                flow.dst
            ),
        })
    }

    /// IPv4 without custom rules: the kernel skips the rule list and looks up the local
    /// and main tables as one trie (longest prefix across both), then `default`.
    pub(super) fn merged_lookup4(&mut self, flow: &Flow, o: &Opts) -> Result<Hit<'s>, Failure> {
        self.step(
            None,
            true,
            "only the three default rules: the kernel looks up local and main as one table, then default",
        );
        let first = self.table4(&[TABLE_LOCAL, TABLE_MAIN], flow, o);
        // Only a miss (or throw) goes on to the default table; an error route ends it.
        let result = match first {
            TableResult::Found(..) => first,
            TableResult::Reject(r) if r.kind != RouteKind::Throw => first,
            other => {
                let has_default = self
                    .st
                    .routes_of(Family::Inet4, TABLE_DEFAULT)
                    .next()
                    .is_some();
                if has_default {
                    self.table4(&[TABLE_DEFAULT], flow, o)
                } else {
                    other
                }
            }
        };
        match result {
            TableResult::Found(route, hops) => {
                self.table_step(
                    None,
                    route.table,
                    Some(route),
                    if route.table == TABLE_LOCAL {
                        "route found (in the merged trie the kernel reports it as table main)"
                    } else {
                        "route found"
                    },
                );
                Ok(Hit {
                    route,
                    rule: None,
                    hops,
                    merged: route.table == TABLE_LOCAL,
                    alt: None,
                })
            }
            TableResult::Reject(route) if route.kind != RouteKind::Throw => {
                let (error, kind, what) = route_error_kind(route.kind, Family::Inet4);
                self.table_step(None, route.table, Some(route), what);
                Err(Failure {
                    error,
                    kind,
                    table: Some(route.table),
                    rule: None,
                    route: Some(route.text.clone()),
                    reason: format!("table {}: {what}", table_name(route.table)),
                })
            }
            _ => Err(Failure {
                error: RouteError::NetworkUnreachable,
                kind: VerdictKind::Unreachable,
                table: None,
                rule: None,
                route: None,
                reason: format!("no route to {} (network unreachable)", flow.dst),
            }),
        }
    }
}
