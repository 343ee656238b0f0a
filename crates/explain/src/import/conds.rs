//! The conditions on the way to a rule, turned into a policy match.

use super::*;

/// The conditions a packet met to reach a rule, as far as the config can say them.
#[derive(Debug, Clone, Default)]
pub(super) struct Conds {
    pub(super) sel: Sel,
    pub(super) new_only: bool,
    /// `Some(t)`: a socket match (`t`: transparent only).
    pub(super) socket: Option<Option<bool>>,
    /// Families the conditions allow (None: both).
    pub(super) families: Option<BTreeSet<Family>>,
    /// Conditions with no config key, described.
    pub(super) problems: Vec<String>,
    /// The conditions contradict each other: no packet takes this way to the rule.
    pub(super) impossible: bool,
}

fn intersect_names(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

fn intersect_nets(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn intersect_ports(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let lo = x.0.max(y.0);
            let hi = x.1.min(y.1);
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Ports 1-65535 not in `ports`.
pub(super) fn complement_ports(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut sorted = ports.to_vec();
    sorted.sort();
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for (a, b) in sorted {
        if u32::from(a) > next {
            out.push((next as u16, a - 1));
        }
        next = next.max(u32::from(b) + 1);
    }
    if next <= 65535 {
        out.push((next as u16, 65535));
    }
    out
}

/// Exact prefixes for one address item (a range becomes the prefixes that cover it).
fn nets_of(items: &[AddrItem]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for i in items {
        match *i {
            AddrItem::Net(n) => out.push(n),
            AddrItem::Range(IpAddr::V4(a), IpAddr::V4(b)) => {
                out.extend(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4))
            }
            AddrItem::Range(IpAddr::V6(a), IpAddr::V6(b)) => {
                out.extend(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6))
            }
            AddrItem::Range(..) => {}
        }
    }
    out
}

impl Conds {
    fn restrict_family(&mut self, f: Family) {
        let mut s = self
            .families
            .clone()
            .unwrap_or_else(|| [Family::Inet4, Family::Inet6].into());
        s.retain(|x| *x == f);
        self.families = Some(s);
    }

    /// Narrows `field` by `vals`; an empty meet means no packet takes this way.
    fn positive<T: Clone + PartialEq>(
        field: &mut Vec<T>,
        vals: Vec<T>,
        meet: impl Fn(&[T], &[T]) -> Vec<T>,
        (problems, impossible): (&mut Vec<String>, &mut bool),
        what: &str,
    ) {
        if field.is_empty() {
            *field = vals;
        } else {
            let m = meet(field, &vals);
            if m.is_empty() {
                problems.push(format!("its conditions on {what} can never hold together"));
                *impossible = true;
            }
            *field = m;
        }
    }

    fn add(&mut self, m: &Match) {
        match m {
            Match::Iifname { op: Op::Eq, names } => {
                if let Some(w) = names.iter().find(|n| n.ends_with('*')) {
                    self.problems.push(format!(
                        "`{m}`: `{w}` is an interface wildcard, and in_interface takes exact names"
                    ));
                    return;
                }
                Self::positive(
                    &mut self.sel.in_interface,
                    names.clone(),
                    intersect_names,
                    (&mut self.problems, &mut self.impossible),
                    "the input interface",
                );
            }
            Match::Iifname { op: Op::Ne, .. } => self.problems.push(format!(
                "`{m}`: symroute has no \"not this input interface\" key"
            )),
            Match::EtherSaddr { op: Op::Eq, macs } => Self::positive(
                &mut self.sel.source_mac,
                macs.clone(),
                intersect_names,
                (&mut self.problems, &mut self.impossible),
                "the source MAC",
            ),
            Match::EtherSaddr { op: Op::Ne, .. } => self.problems.push(format!(
                "`{m}`: symroute has no \"not this source MAC\" key"
            )),
            Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
                self.restrict_family(*family);
                let nets = nets_of(addrs);
                if nets.is_empty() && !addrs.is_empty() {
                    self.problems
                        .push(format!("`{m}`: an address range it cannot split"));
                    return;
                }
                let src = matches!(m, Match::Saddr { .. });
                match (src, op) {
                    (true, Op::Eq) => Self::positive(
                        &mut self.sel.source,
                        nets,
                        intersect_nets,
                        (&mut self.problems, &mut self.impossible),
                        "the source address",
                    ),
                    (false, Op::Eq) => Self::positive(
                        &mut self.sel.destination,
                        nets,
                        intersect_nets,
                        (&mut self.problems, &mut self.impossible),
                        "the destination address",
                    ),
                    (true, Op::Ne) => extend_unique(&mut self.sel.not_source, nets),
                    (false, Op::Ne) => extend_unique(&mut self.sel.not_destination, nets),
                }
            }
            Match::L4proto { op, protos } => {
                let names: Option<Vec<String>> = protos
                    .iter()
                    .map(|p| Protocol::from_number(IpProto(*p)).map(|p| p.to_string()))
                    .collect();
                match (op, names) {
                    (Op::Eq, Some(n)) => Self::positive(
                        &mut self.sel.protocol,
                        n,
                        intersect_names,
                        (&mut self.problems, &mut self.impossible),
                        "the protocol",
                    ),
                    (Op::Eq, None) => self.problems.push(format!(
                        "`{m}`: a protocol symroute's match does not know (tcp, udp, sctp, dccp, udplite, icmp, icmpv6)"
                    )),
                    (Op::Ne, _) => self
                        .problems
                        .push(format!("`{m}`: symroute has no \"not this protocol\" key")),
                }
            }
            Match::Sport { op, ports } | Match::Dport { op, ports } => {
                let vals = match op {
                    Op::Eq => ports.clone(),
                    Op::Ne => complement_ports(ports),
                };
                let (field, what) = if matches!(m, Match::Sport { .. }) {
                    (&mut self.sel.source_port, "the source port")
                } else {
                    (&mut self.sel.destination_port, "the destination port")
                };
                Self::positive(
                    field,
                    vals,
                    intersect_ports,
                    (&mut self.problems, &mut self.impossible),
                    what,
                );
            }
            // Only unmarked packets / undecided connections: symroute classifies exactly those.
            Match::Mark {
                op: Op::Eq, values, ..
            } if values.as_slice() == [(0, 0)] => {}
            Match::Mark { .. } => self.problems.push(format!(
                "`{m}`: a test of mark bits, which symroute's match cannot make"
            )),
            Match::CtState { op, states } => {
                let has_new = states.contains(&CtState::New);
                match (op, has_new) {
                    (Op::Eq, true) | (Op::Ne, false) => self.new_only = true,
                    _ => self.problems.push(format!(
                        "`{m}`: symroute classifies only a connection's first packet"
                    )),
                }
            }
            Match::CtDirection {
                op: Op::Eq,
                direction: CtDirection::Original,
            }
            | Match::CtDirection {
                op: Op::Ne,
                direction: CtDirection::Reply,
            } => {}
            Match::CtDirection { .. } => self.problems.push(format!(
                "`{m}`: symroute classifies only a connection's first packet"
            )),
            Match::Socket { transparent } => self.socket = Some(*transparent),
            Match::Nfproto { family } => self.restrict_family(*family),
            Match::Oifname { .. } => self.problems.push(format!(
                "`{m}`: the output interface is not known when symroute classifies"
            )),
            Match::Unknown(s) => self
                .problems
                .push(format!("`{s}` has no symroute match key")),
            Match::Numgen { .. } => self.problems.push(format!(
                "`{m}`: a random share is written as route_via weights, not as a match"
            )),
            Match::Skuid { .. } | Match::Cgroupv2 { .. } => self.problems.push(format!(
                "`{m}`: the sending socket's owner or cgroup; write it as match.user / match.cgroup of a route_via policy by hand"
            )),
        }
    }

    /// The packets an earlier rule took away (it ended the chain for them).
    fn exclude(&mut self, r: &Rule) {
        if r.matches.is_empty() {
            self.problems.push(format!(
                "it is never reached: `{}` before it ends the chain for every packet",
                r.text
            ));
            return;
        }
        // Part of the marking pattern itself, or packets symroute does not classify anyway.
        let absorbed = r.matches.iter().any(|m| match m {
            Match::Mark {
                op: Op::Ne, values, ..
            } => values.as_slice() == [(0, 0)],
            Match::Mark {
                op: Op::Eq, values, ..
            } => values.iter().all(|v| v.0 > 0),
            Match::Socket { .. } => true,
            Match::CtState { op: Op::Eq, states } => !states.contains(&CtState::New),
            Match::CtState { op: Op::Ne, states } => states.contains(&CtState::New),
            _ => false,
        });
        if absorbed {
            return;
        }
        if let [m] = r.matches.as_slice() {
            match m {
                Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
                    let nets = nets_of(addrs);
                    let src = matches!(m, Match::Saddr { .. });
                    // `ip saddr != X return` exempts only that family's packets: as a
                    // positive `source = X` it would also drop the other family.
                    let pinned = self
                        .families
                        .as_ref()
                        .is_some_and(|f| f.len() == 1 && f.contains(family));
                    if *op == Op::Ne && !pinned {
                        self.problems.push(format!(
                            "an earlier rule, `{}`, exempts {} packets outside {}, and symroute cannot say that for one family only",
                            r.text,
                            fam_word(*family),
                            nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ));
                        return;
                    }
                    let sel = &mut self.sel;
                    let (only, exempt, what) = if src {
                        (&mut sel.source, &mut sel.not_source, "the source address")
                    } else {
                        (
                            &mut sel.destination,
                            &mut sel.not_destination,
                            "the destination address",
                        )
                    };
                    if *op == Op::Eq {
                        extend_unique(exempt, nets);
                    } else {
                        Self::positive(
                            only,
                            nets,
                            intersect_nets,
                            (&mut self.problems, &mut self.impossible),
                            what,
                        );
                    }
                    return;
                }
                Match::Nfproto { family } => {
                    let other = match family {
                        Family::Inet4 => Family::Inet6,
                        Family::Inet6 => Family::Inet4,
                    };
                    self.restrict_family(other);
                    return;
                }
                _ => {}
            }
        }
        self.problems.push(format!(
            "an earlier rule, `{}`, exempts some packets from it, and symroute cannot say which",
            r.text
        ));
    }

    pub(super) fn of(v: &Visit) -> Conds {
        let mut c = Conds::default();
        if v.chain.family != NfFamily::Inet {
            c.families = Some(families_of(v.chain.family));
        }
        for m in v.ctx.iter().chain(v.rule.matches.iter()) {
            c.add(m);
        }
        for e in &v.excl {
            c.exclude(e);
        }
        c.finish();
        c
    }

    fn finish(&mut self) {
        if (!self.sel.source_port.is_empty() || !self.sel.destination_port.is_empty())
            && self.sel.protocol.is_empty()
        {
            self.sel.protocol = Protocol::ALL
                .into_iter()
                .filter(|p| p.has_ports())
                .map(|p| p.to_string())
                .collect();
        }
        if let Some(f) = &self.families {
            if f.is_empty() {
                self.problems
                    .push("its conditions allow neither IPv4 nor IPv6".to_string());
                self.impossible = true;
            }
        }
    }
}

fn extend_unique(field: &mut Vec<IpNet>, nets: Vec<IpNet>) {
    for n in nets {
        if !field.contains(&n) {
            field.push(n);
        }
    }
}
