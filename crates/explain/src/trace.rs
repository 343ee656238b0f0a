//! Tracing one connection: its first packet from arrival (or creation) to egress, then
//! the reply, through the firewall hooks (marks, conntrack mark, NAT) and policy routing.
//! Pure: a `HostState` in, an `Explanation` out.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::host::HostState;
use super::netfilter::{self, CtDirection, CtState, Hook, HookResult, NatKind, PacketCtx};
use super::routing::{self, Query, VerdictKind};
use symroute_core::model::Family;

/// The packet to trace, as the user described it.
#[derive(Debug, Clone, Serialize)]
pub struct PacketSpec {
    /// Arriving interface; `None` for a packet the host itself sends.
    pub in_interface: Option<String>,
    pub source_mac: Option<String>,
    pub source: Option<IpAddr>,
    pub destination: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6).
    pub protocol: u8,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    /// The packet's mark when it starts (a local socket's SO_MARK).
    pub mark: u32,
    /// A local packet's socket: its owner (root when not given) and its cgroup, relative
    /// to the cgroup2 root (the root itself when not given). Ignored for arriving ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LegVerdict {
    /// unicast, local, broadcast, multicast, anycast, blackhole, unreachable, prohibit, drop
    #[serde(rename = "type")]
    pub kind: String,
    pub interface: Option<String>,
    pub via: Option<IpAddr>,
    pub table: Option<String>,
    /// The packet mark routing saw.
    pub mark: String,
    /// The connection's conntrack mark after this packet.
    pub ct_mark: String,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceStep {
    /// `prerouting`, `route`, `output`, `rp_filter`, `nat`, …
    pub stage: String,
    pub text: String,
    pub matched: bool,
    pub mark_before: Option<String>,
    pub mark_after: Option<String>,
    pub ct_mark_before: Option<String>,
    pub ct_mark_after: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leg {
    pub verdict: LegVerdict,
    pub steps: Vec<TraceStep>,
    /// Parts of the path the model could not be sure about.
    pub uncertain: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub packet: PacketSpec,
    pub verdict: LegVerdict,
    pub steps: Vec<TraceStep>,
    pub uncertain: Vec<String>,
    /// The answer to the first packet; absent when the first packet goes nowhere.
    pub reply: Option<Leg>,
}

fn hex(v: u32) -> String {
    format!("{v:#x}")
}

/// What a leg needs to start: the packet as netfilter sees it and where it comes from.
struct Start {
    ctx: PacketCtx,
    iif: Option<String>,
}

pub fn explain(host: &HostState, p: &PacketSpec) -> Explanation {
    let family = Family::of(&p.destination);
    let mut first = leg(
        host,
        Start {
            ctx: first_ctx(host, p, family),
            iif: p.in_interface.clone(),
        },
    );
    let reply = match first.verdict.kind.as_str() {
        "unicast" | "local" => {
            // The reply goes from where the first packet ended up to where it started:
            // from the (possibly DNAT'ed) destination back to the original source.
            let reply_iif = match first.verdict.kind.as_str() {
                "local" => None,
                _ => first.verdict.interface.clone(),
            };
            let orig_src = first_ctx(host, p, family).src;
            let mut ctx = PacketCtx::new(
                p.protocol,
                SocketAddr::new(first.verdict.destination, first.dst_port.unwrap_or(0)),
                SocketAddr::new(orig_src, p.source_port.unwrap_or(0)),
            );
            ctx.ct = netfilter::CtCtx {
                state: CtState::Established,
                direction: CtDirection::Reply,
                mark: first.ct_mark,
            };
            ctx.iif = reply_iif.clone();
            // A local reply starts with its socket's mark: none, unless the accepted TCP
            // socket took the SYN's mark (`net.ipv4.tcp_fwmark_accept`, both families).
            if first.verdict.kind == "local"
                && p.protocol == 6
                && host.routing.sysctl_int("net.ipv4.tcp_fwmark_accept") == Some(1)
            {
                ctx.mark = first.mark;
            }
            let l = leg(
                host,
                Start {
                    ctx,
                    iif: reply_iif,
                },
            );
            Some(Leg {
                verdict: l.verdict,
                steps: l.steps,
                uncertain: l.uncertain,
            })
        }
        _ => None,
    };
    Explanation {
        packet: p.clone(),
        verdict: first.verdict,
        steps: std::mem::take(&mut first.steps),
        uncertain: first.uncertain,
        reply,
    }
}

fn first_ctx(host: &HostState, p: &PacketSpec, family: Family) -> PacketCtx {
    let src = p.source.unwrap_or_else(|| source_for(host, p, family));
    let mut ctx = PacketCtx::new(
        p.protocol,
        SocketAddr::new(src, p.source_port.unwrap_or(0)),
        SocketAddr::new(p.destination, p.destination_port.unwrap_or(0)),
    );
    ctx.iif = p.in_interface.clone();
    ctx.src_mac = p
        .source_mac
        .as_ref()
        .and_then(|m| netfilter::normalize_mac(m));
    ctx.mark = p.mark;
    if p.in_interface.is_none() {
        ctx = ctx.with_sender(
            Some(p.uid.unwrap_or(0)),
            Some(p.cgroup.as_deref().unwrap_or("")),
            host.cgroup_root.as_deref().unwrap_or(""),
        );
    }
    ctx
}

/// The source address the kernel would choose for a local packet without one: the
/// route's preferred source, else the first address of the egress interface. When that
/// lookup finds nothing, IPv4 has no source (the packet fails); IPv6 picks one anyway by
/// address selection and routes again from it (`ip6_dst_lookup_tail`), which `from`
/// rules can match.
fn source_for(host: &HostState, p: &PacketSpec, family: Family) -> IpAddr {
    let mut q = Query::output(p.destination);
    q.mark = p.mark;
    let l = routing::lookup(&host.routing, &q);
    let from_route = l.verdict.route.as_deref().and_then(|r| {
        r.split_whitespace()
            .skip_while(|w| *w != "src")
            .nth(1)
            .and_then(|a| a.parse::<IpAddr>().ok())
    });
    let unspecified = match family {
        Family::Inet4 => IpAddr::from([0u8, 0, 0, 0]),
        Family::Inet6 => IpAddr::from([0u16; 8]),
    };
    let from_dev = || {
        let dev = l.verdict.interface.as_ref()?;
        host.routing
            .links
            .get(dev)?
            .addrs
            .iter()
            .map(|n| n.addr())
            .find(|a| Family::of(a) == family)
    };
    match from_route.or_else(from_dev) {
        Some(a) => a,
        None if family == Family::Inet6 && failed_before_output(&l.verdict).is_some() => {
            select_source6(host, p.destination).unwrap_or(unspecified)
        }
        None => unspecified,
    }
}

/// IPv6 source address selection over every interface (RFC 6724 as `ipv6_dev_get_saddr`
/// does it with no device), reduced to what decides among a host's own addresses here:
/// the destination's scope (link-local only for link-local destinations), then the
/// longest prefix shared with the destination; ties go to the interface listed first.
fn select_source6(host: &HostState, dst: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(d) = dst else { return None };
    let link_local = |a: &std::net::Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
    let mut links: Vec<&routing::LinkState> = host.routing.links.values().collect();
    links.sort_by_key(|l| l.index);
    let mut best: Option<(u32, std::net::Ipv6Addr)> = None;
    for l in links.iter().filter(|l| l.up) {
        for n in &l.addrs {
            let IpAddr::V6(a) = n.addr() else { continue };
            if a.is_loopback() || link_local(&a) != link_local(&d) {
                continue;
            }
            let common = (u128::from(a) ^ u128::from(d)).leading_zeros();
            if best.is_none_or(|(b, _)| common > b) {
                best = Some((common, a));
            }
        }
    }
    best.map(|(_, a)| IpAddr::V6(a))
}

struct LegOut {
    verdict: LegVerdict,
    steps: Vec<TraceStep>,
    uncertain: Vec<String>,
    ct_mark: u32,
    /// The packet's mark at the end (for a delivered packet: what its socket sees).
    mark: u32,
    dst_port: Option<u16>,
}

fn push_hook(steps: &mut Vec<TraceStep>, uncertain: &mut Vec<String>, r: &HookResult) {
    let stage = format!("{:?}", r.hook).to_lowercase();
    for s in &r.steps {
        steps.push(TraceStep {
            stage: stage.clone(),
            text: format!("{}: {}", s.chain, s.rule),
            matched: matches!(s.matched, netfilter::Matched::Yes),
            mark_before: Some(hex(s.mark_before)),
            mark_after: Some(hex(s.mark_after)),
            ct_mark_before: Some(hex(s.ctmark_before)),
            ct_mark_after: Some(hex(s.ctmark_after)),
            note: match (&s.verdict, &s.note) {
                (Some(v), Some(n)) => Some(format!("{v}; {n}")),
                (Some(v), None) => Some(v.clone()),
                (None, n) => n.clone(),
            },
        });
        if matches!(s.matched, netfilter::Matched::Maybe) {
            uncertain.push(format!(
                "{stage} {}: {}",
                s.chain,
                s.note.clone().unwrap_or_else(|| s.rule.clone())
            ));
        }
    }
    for n in &r.notes {
        steps.push(TraceStep {
            stage: stage.clone(),
            text: n.clone(),
            matched: false,
            mark_before: None,
            mark_after: None,
            ct_mark_before: None,
            ct_mark_after: None,
            note: None,
        });
    }
}

fn apply_nat(ctx: &mut PacketCtx, r: &HookResult) {
    for n in &r.nat {
        match n.kind {
            NatKind::Dnat | NatKind::Redirect => {
                if let Some(a) = n.after_addr {
                    ctx.dst = a;
                }
                if n.after_port.is_some() {
                    ctx.dport = n.after_port;
                }
            }
            NatKind::Snat | NatKind::Masquerade => {
                if let Some(a) = n.after_addr {
                    ctx.src = a;
                }
            }
        }
    }
}

/// One packet through the hooks and routing, until it leaves or is delivered.
fn leg(host: &HostState, start: Start) -> LegOut {
    let mut steps = Vec::new();
    let mut uncertain = Vec::new();
    let mut ctx = start.ctx;
    let mut dropped_by = None;
    let route_of = |ctx: &PacketCtx| {
        let mut q = match &start.iif {
            Some(iif) => Query::input(ctx.src, ctx.dst, iif),
            None => {
                let mut q = Query::output(ctx.dst);
                q.src = Some(ctx.src);
                q
            }
        };
        q.mark = ctx.mark;
        q.ipproto = Some(ctx.l4proto);
        q.sport = ctx.sport;
        q.dport = ctx.dport;
        routing::lookup(&host.routing, &q)
    };

    // Before routing: prerouting for arriving packets. A local packet is routed first,
    // with the socket's mark and source, and only then meets the output hook (whose
    // `type route` chains route it again after a mark change).
    let mut lookup;
    if start.iif.is_some() {
        let r = netfilter::evaluate(&host.firewall, Hook::Prerouting, &ctx);
        push_hook(&mut steps, &mut uncertain, &r);
        if r.dropped {
            dropped_by = Some("dropped in prerouting".to_string());
        }
        ctx = r.ctx_after.clone();
        apply_nat(&mut ctx, &r);
        lookup = route_of(&ctx);
        push_route_steps(&mut steps, &lookup, "");
    } else {
        lookup = route_of(&ctx);
        push_route_steps(&mut steps, &lookup, "");
        if let Some(why) = failed_before_output(&lookup.verdict) {
            let reason = format!(
                "the kernel routes a packet this host sends once before the output hook, \
                 with the socket's mark {} and source {}; that lookup fails ({why}), so the \
                 packet is never sent and no output chain (mark restore, re-route) runs",
                hex(ctx.mark),
                ctx.src
            );
            steps.push(note_step("output", reason.clone()));
            let end = End {
                kind: verdict_kind(lookup.verdict.kind).to_string(),
                interface: None,
                via: None,
                table: lookup.verdict.table,
                reason,
                mark: ctx.mark,
            };
            return end.leg(&ctx, steps, uncertain);
        }
        let mut c = ctx.clone();
        c.oif = lookup.verdict.interface.clone();
        let r = netfilter::evaluate(&host.firewall, Hook::Output, &c);
        push_hook(&mut steps, &mut uncertain, &r);
        if r.dropped {
            dropped_by = Some("dropped in output".to_string());
        }
        let before = ctx.mark;
        ctx = r.ctx_after.clone();
        apply_nat(&mut ctx, &r);
        ctx.oif = None;
        if r.reroute || ctx.mark != before {
            steps.push(TraceStep {
                stage: "output".into(),
                text: format!(
                    "mark changed {} -> {}: the kernel routes the packet again",
                    hex(before),
                    hex(ctx.mark)
                ),
                matched: true,
                mark_before: Some(hex(before)),
                mark_after: Some(hex(ctx.mark)),
                ct_mark_before: None,
                ct_mark_after: None,
                note: if r.reroute {
                    None
                } else {
                    Some("only `type route` chains re-route; this one may not".into())
                },
            });
            lookup = route_of(&ctx);
            push_route_steps(&mut steps, &lookup, "re-");
        }
    }
    let v = &lookup.verdict;
    let mut kind = verdict_kind(v.kind).to_string();
    let mut end_mark = ctx.mark;
    let mut reason = v.reason.clone();
    if let Some(d) = dropped_by {
        kind = "drop".into();
        reason = d;
    }
    // After routing: forward and postrouting (marks set here are too late for routing,
    // but SNAT here decides what the reply is addressed to), or input for local delivery.
    if kind == "unicast" {
        let mut c = ctx.clone();
        c.oif = v.interface.clone();
        let hooks: &[Hook] = if start.iif.is_some() {
            &[Hook::Forward, Hook::Postrouting]
        } else {
            &[Hook::Postrouting]
        };
        for hook in hooks {
            let r = netfilter::evaluate(&host.firewall, *hook, &c);
            push_hook(&mut steps, &mut uncertain, &r);
            let ctmark = r.ctx_after.ct.mark;
            if r.dropped {
                kind = "drop".into();
                reason = format!("dropped in {hook:?}").to_lowercase();
                break;
            }
            c.ct.mark = ctmark;
            c.mark = r.ctx_after.mark;
        }
        ctx.ct.mark = c.ct.mark;
    } else if kind == "local" && start.iif.is_some() {
        let r = netfilter::evaluate(&host.firewall, Hook::Input, &ctx);
        push_hook(&mut steps, &mut uncertain, &r);
        if r.dropped {
            kind = "drop".into();
            reason = "dropped in input".into();
        }
        ctx.ct.mark = r.ctx_after.ct.mark;
        end_mark = r.ctx_after.mark;
    }
    let end = End {
        kind,
        interface: v.interface.clone(),
        via: v.via,
        table: v.table,
        reason,
        mark: end_mark,
    };
    end.leg(&ctx, steps, uncertain)
}

/// Where a leg ends, besides the packet itself.
struct End {
    kind: String,
    interface: Option<String>,
    via: Option<IpAddr>,
    table: Option<u32>,
    reason: String,
    /// The mark after the last hook (input, for a delivered packet).
    mark: u32,
}

impl End {
    fn leg(self, ctx: &PacketCtx, steps: Vec<TraceStep>, uncertain: Vec<String>) -> LegOut {
        LegOut {
            verdict: LegVerdict {
                kind: self.kind,
                interface: self.interface,
                via: self.via,
                table: self.table.map(routing::table_name),
                mark: hex(ctx.mark),
                ct_mark: hex(ctx.ct.mark),
                source: ctx.src,
                destination: ctx.dst,
                source_port: ctx.sport,
                destination_port: ctx.dport,
                reason: self.reason,
            },
            steps,
            uncertain,
            ct_mark: ctx.ct.mark,
            mark: self.mark,
            dst_port: ctx.dport,
        }
    }
}

fn verdict_kind(k: VerdictKind) -> &'static str {
    match k {
        VerdictKind::Unicast => "unicast",
        VerdictKind::Local => "local",
        VerdictKind::Broadcast => "broadcast",
        VerdictKind::Multicast => "multicast",
        VerdictKind::Anycast => "anycast",
        VerdictKind::Blackhole => "blackhole",
        VerdictKind::Unreachable => "unreachable",
        VerdictKind::Prohibit => "prohibit",
        VerdictKind::Drop => "drop",
    }
}

/// Why a local packet's first lookup leaves it nowhere to go (`None`: it has a route).
fn failed_before_output(v: &routing::Verdict) -> Option<String> {
    let delivered = matches!(
        v.kind,
        VerdictKind::Unicast
            | VerdictKind::Local
            | VerdictKind::Broadcast
            | VerdictKind::Multicast
            | VerdictKind::Anycast
    );
    match v.error {
        Some(e) => Some(format!("{}: {}", e.message(), v.reason)),
        None if !delivered => Some(v.reason.clone()),
        None => None,
    }
}

fn note_step(stage: &str, text: String) -> TraceStep {
    TraceStep {
        stage: stage.into(),
        text,
        matched: true,
        mark_before: None,
        mark_after: None,
        ct_mark_before: None,
        ct_mark_after: None,
        note: None,
    }
}

/// The rule walk of one lookup as trace steps (`re-`: the lookup after a mark change).
fn push_route_steps(steps: &mut Vec<TraceStep>, lookup: &routing::Lookup, prefix: &str) {
    for s in &lookup.steps {
        let stage = match s.stage {
            routing::Stage::Route => "route",
            routing::Stage::RpFilter => "rp_filter",
            routing::Stage::Check => "check",
        };
        steps.push(TraceStep {
            stage: format!("{prefix}{stage}"),
            text: match (&s.rule, &s.route) {
                (Some(rule), Some(route)) => format!("{rule}  =>  {route}"),
                (Some(rule), None) => rule.clone(),
                (None, Some(route)) => route.clone(),
                (None, None) => s.note.clone(),
            },
            matched: s.matched,
            mark_before: None,
            mark_after: None,
            ct_mark_before: None,
            ct_mark_after: None,
            note: (!s.note.is_empty() && s.rule.is_some()).then(|| s.note.clone()),
        });
    }
}

/// The human rendering: a small path diagram, then the steps that mattered.
pub fn render(e: &Explanation, verbose: bool) -> String {
    let mut s = String::new();
    let p = &e.packet;
    s += "path (after NAT; marks as routing sees them):\n";
    s += &format!(
        "  {}\n",
        diagram(&e.verdict, p.in_interface.as_deref(), "first packet")
    );
    match &e.reply {
        Some(r) => {
            let reply_in = match e.verdict.kind.as_str() {
                "local" => None,
                _ => e.verdict.interface.as_deref(),
            };
            s += &format!("  {}\n", diagram(&r.verdict, reply_in, "reply"));
        }
        None => s += "  reply: none (the first packet does not get through)\n",
    }
    s += &format!(
        "\nfirst packet: {} ({})\n",
        e.verdict.kind, e.verdict.reason
    );
    s += &steps_text(&e.steps, verbose);
    if let Some(r) = &e.reply {
        s += &format!("\nreply: {} ({})\n", r.verdict.kind, r.verdict.reason);
        s += &steps_text(&r.steps, verbose);
    }
    let all_uncertain: Vec<&String> = e
        .uncertain
        .iter()
        .chain(e.reply.iter().flat_map(|r| r.uncertain.iter()))
        .collect();
    if !all_uncertain.is_empty() {
        s += "\nnot modelled exactly (assumed not to match):\n";
        for u in all_uncertain {
            s += &format!("  - {u}\n");
        }
    }
    s
}

/// One leg as `SRC --> [IN] --> route (table T, mark M) --> [OUT] via NH --> DST`.
fn diagram(v: &LegVerdict, iif: Option<&str>, label: &str) -> String {
    let (sport, dport) = (v.source_port, v.destination_port);
    let port = |x: Option<u16>| x.map(|p| format!(":{p}")).unwrap_or_default();
    let from = match iif {
        Some(i) => format!("{}{} --> [{i}]", v.source, port(sport)),
        None => format!("{}{} (this host)", v.source, port(sport)),
    };
    let table = v
        .table
        .as_deref()
        .map(|t| format!("table {t}, "))
        .unwrap_or_default();
    let route = format!("route ({table}mark {}, ct mark {})", v.mark, v.ct_mark);
    let to = match v.kind.as_str() {
        "local" => format!("this host {}{}", v.destination, port(dport)),
        "unicast" | "broadcast" | "multicast" | "anycast" => {
            let via = v.via.map(|n| format!(" via {n}")).unwrap_or_default();
            format!(
                "[{}]{via} --> {}{}",
                v.interface.as_deref().unwrap_or("?"),
                v.destination,
                port(dport)
            )
        }
        other => format!("X {other}"),
    };
    format!("{label:<12} {from} --> {route} --> {to}")
}

fn steps_text(steps: &[TraceStep], verbose: bool) -> String {
    let mut s = String::new();
    for st in steps.iter().filter(|st| verbose || st.matched) {
        let marks = match (
            &st.mark_before,
            &st.mark_after,
            &st.ct_mark_before,
            &st.ct_mark_after,
        ) {
            (Some(a), Some(b), Some(c), Some(d)) if a != b || c != d => {
                format!("   [mark {a} -> {b}, ct mark {c} -> {d}]")
            }
            _ => String::new(),
        };
        let note = st
            .note
            .as_ref()
            .map(|n| format!("   ({n})"))
            .unwrap_or_default();
        let tick = if st.matched { "*" } else { " " };
        s += &format!("  {tick} {:<11} {}{marks}{note}\n", st.stage, st.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Seed 1's firewall with up2 down: main has only the connected networks of up1 and
    /// lan0, no default route, so nothing unmarked can get back to a client beyond ISP1.
    fn no_way_back(sysctl: &str) -> HostState {
        let addr = r#"[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]},
 {"ifindex":2,"ifname":"lan0","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":24},{"family":"inet6","local":"fd77::1","prefixlen":64}]},
 {"ifindex":3,"ifname":"up1","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"203.0.113.2","prefixlen":24},{"family":"inet6","local":"2001:db8:1::2","prefixlen":64}]},
 {"ifindex":4,"ifname":"up2","flags":["BROADCAST"],"addr_info":[{"family":"inet","local":"198.51.100.2","prefixlen":24}]}
]"#;
        let rules = "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n";
        let routes = "10.77.0.0/24 dev lan0 proto kernel scope link src 10.77.0.1\n\
            203.0.113.0/24 dev up1 proto kernel scope link src 203.0.113.2\n\
            local 10.77.0.1 dev lan0 table local proto kernel scope host src 10.77.0.1\n\
            local 198.51.100.2 dev up2 table local proto kernel scope host src 198.51.100.2\n\
            local 203.0.113.2 dev up1 table local proto kernel scope host src 203.0.113.2\n";
        let routes6 = "fd77::/64 dev lan0 proto kernel metric 256 pref medium\n\
            2001:db8:1::/64 dev up1 proto kernel metric 256 pref medium\n\
            local fd77::1 dev lan0 table local proto kernel metric 0 pref medium\n\
            local 2001:db8:1::2 dev up1 table local proto kernel metric 0 pref medium\n";
        let mut files = BTreeMap::new();
        files.insert("ip-rule.txt".to_string(), rules.to_string());
        files.insert(
            "ip6-rule.txt".to_string(),
            rules.replace("32767:\tfrom all lookup default\n", ""),
        );
        files.insert("ip-route.txt".to_string(), routes.to_string());
        files.insert("ip6-route.txt".to_string(), routes6.to_string());
        files.insert("ip-addr.json".to_string(), addr.to_string());
        files.insert("sysctl.txt".to_string(), sysctl.to_string());
        HostState::from_files(&files, Vec::new(), "test").expect("state")
    }

    /// The state after `apply` of the seed's config, optionally without the local reply
    /// rules (`from ADDRESS`, `iif lo lookup main`): what symroute applied before them.
    fn applied(sysctl: &str, local_rules: bool) -> HostState {
        let mut host = no_way_back(sysctl);
        let model = symroute_core::config::parse_str(
            include_str!("../../../examples/two-isps-firewall.toml"),
            "two-isps-firewall.toml",
        )
        .expect("example parses");
        let mut plan = symroute_core::plan::build(&model, &host.host_view());
        assert!(
            plan.rules.iter().any(|r| r.from.is_some()),
            "{:?}",
            plan.rules
        );
        if !local_rules {
            plan.rules.retain(|r| r.from.is_none() && !r.iif_lo);
        }
        host.overlay(&plan).expect("overlay");
        host
    }

    fn smtp(src: &str, dst: &str, protocol: u8) -> PacketSpec {
        PacketSpec {
            in_interface: Some("up1".into()),
            source_mac: None,
            source: Some(src.parse().unwrap()),
            destination: dst.parse().unwrap(),
            protocol,
            source_port: Some(40000),
            destination_port: Some(25),
            mark: 0,
            uid: None,
            cgroup: None,
        }
    }

    fn reply(e: &Explanation) -> &LegVerdict {
        &e.reply.as_ref().expect("a reply").verdict
    }

    #[test]
    fn a_local_reply_whose_first_lookup_fails_is_never_sent() {
        let host = applied("", false);
        for proto in [6, 17] {
            let e = explain(&host, &smtp("2001:db8:c::10", "2001:db8:1::2", proto));
            assert_eq!(e.verdict.kind, "local");
            let r = reply(&e);
            assert_eq!(r.kind, "unreachable", "{}", render(&e, true));
            assert!(
                r.reason.contains("before the output hook")
                    && r.reason.contains("Network is unreachable"),
                "{}",
                r.reason
            );
            // The output chain never runs: no restore, no re-route.
            let steps = &e.reply.as_ref().unwrap().steps;
            assert!(
                !steps
                    .iter()
                    .any(|s| s.stage == "re-route" || s.text.contains("mark changed")),
                "{}",
                render(&e, true)
            );
        }
    }

    #[test]
    fn from_rules_let_the_first_lookup_succeed_and_the_reroute_follows_the_mark() {
        // Loose rp_filter on up1 comes from the plan; the SYN's reverse lookup finds the
        // way back through the `from` rule too.
        let host = applied(
            "net.ipv4.conf.all.rp_filter = 1\nnet.ipv4.conf.up1.rp_filter = 1\n",
            true,
        );
        for (src, dst, via) in [
            ("192.0.2.10", "203.0.113.2", "203.0.113.1"),
            ("2001:db8:c::10", "2001:db8:1::2", "2001:db8:1::1"),
        ] {
            for proto in [6, 17] {
                let e = explain(&host, &smtp(src, dst, proto));
                assert_eq!(e.verdict.kind, "local", "{}", render(&e, true));
                let r = reply(&e);
                assert_eq!(
                    (
                        r.kind.as_str(),
                        r.interface.as_deref(),
                        r.via,
                        r.table.as_deref(),
                        r.mark.as_str()
                    ),
                    (
                        "unicast",
                        Some("up1"),
                        Some(via.parse().unwrap()),
                        Some("42025"),
                        "0x33000000"
                    ),
                    "{}",
                    render(&e, true)
                );
                let steps = &e.reply.as_ref().unwrap().steps;
                let first = steps
                    .iter()
                    .position(|s| {
                        s.stage == "route"
                            && s.matched
                            && s.text.contains(&format!("from {dst} lookup 42025"))
                    })
                    .unwrap_or_else(|| panic!("first lookup by source: {}", render(&e, true)));
                let out = steps
                    .iter()
                    .position(|s| s.stage == "output")
                    .expect("output hook");
                let again = steps
                    .iter()
                    .position(|s| {
                        s.stage == "re-route" && s.matched && s.text.contains("fwmark 0x33000000")
                    })
                    .unwrap_or_else(|| panic!("re-route by mark: {}", render(&e, true)));
                assert!(first < out && out < again, "{}", render(&e, true));
            }
        }
    }

    #[test]
    fn without_from_rules_loose_rp_filter_drops_the_ipv4_syn_first() {
        let host = applied("net.ipv4.conf.all.rp_filter = 2\n", false);
        let e = explain(&host, &smtp("192.0.2.10", "203.0.113.2", 6));
        assert_eq!(e.verdict.kind, "drop", "{}", render(&e, true));
        assert!(
            e.verdict.reason.contains("rp_filter"),
            "{}",
            e.verdict.reason
        );
        assert!(e.reply.is_none());
        // With rp_filter off the SYN arrives and the SYN-ACK is what fails.
        let host = applied(
            "net.ipv4.conf.all.rp_filter = 0\nnet.ipv4.conf.up1.rp_filter = 0\n",
            false,
        );
        let e = explain(&host, &smtp("192.0.2.10", "203.0.113.2", 6));
        assert_eq!(e.verdict.kind, "local", "{}", render(&e, true));
        assert_eq!(reply(&e).kind, "unreachable", "{}", render(&e, true));
    }

    #[test]
    fn tcp_fwmark_accept_gives_the_reply_the_first_packets_mark() {
        // A SYN that arrives marked (the decision in its mark): with tcp_fwmark_accept the
        // accepted socket carries that mark, and the SYN-ACK's first lookup uses it.
        let mut spec = smtp("2001:db8:c::10", "2001:db8:1::2", 6);
        // isp1's reply mark (id 26 from its name).
        spec.mark = 0x3300_0000;
        let host = applied("", false);
        assert_eq!(reply(&explain(&host, &spec)).kind, "unreachable");
        let host = applied("net.ipv4.tcp_fwmark_accept = 1\n", false);
        let e = explain(&host, &spec);
        assert_eq!(reply(&e).kind, "unicast", "{}", render(&e, true));
        assert_eq!(reply(&e).interface.as_deref(), Some("up1"));
        // UDP sockets take no mark from the request.
        spec.protocol = 17;
        assert_eq!(reply(&explain(&host, &spec)).kind, "unreachable");
    }

    #[test]
    fn an_unbound_ipv6_packet_gets_a_source_by_address_selection_when_main_fails() {
        // No source given, main has no route: IPv4 fails; IPv6 picks up1's address (the
        // longest prefix shared with the destination) and the `from` rule routes it.
        let host = applied("", true);
        let local = |dst: &str| PacketSpec {
            in_interface: None,
            source: None,
            destination_port: Some(53),
            ..smtp("::1", dst, 17)
        };
        let e = explain(&host, &local("192.0.2.10"));
        assert_eq!(e.verdict.kind, "unreachable", "{}", render(&e, true));
        let e = explain(&host, &local("2001:db8:c::10"));
        assert_eq!(
            (
                e.verdict.kind.as_str(),
                e.verdict.source.to_string(),
                e.verdict.interface.as_deref()
            ),
            ("unicast", "2001:db8:1::2".to_string(), Some("up1")),
            "{}",
            render(&e, true)
        );
    }

    /// Seed 1's firewall with both uplinks up and main's default via ISP2, after `apply`
    /// of a config steering the host's own connections by user and by cgroup (nft names
    /// the cgroup2 root `unified/` there, a hybrid host).
    fn steered_by_owner() -> HostState {
        let addr = r#"[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
 {"ifindex":3,"ifname":"up1","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"203.0.113.2","prefixlen":24}]},
 {"ifindex":4,"ifname":"up2","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"198.51.100.2","prefixlen":24}]}
]"#;
        let rules = "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n";
        let routes = "default via 198.51.100.1 dev up2\n\
            198.51.100.0/24 dev up2 proto kernel scope link src 198.51.100.2\n\
            203.0.113.0/24 dev up1 proto kernel scope link src 203.0.113.2\n\
            local 198.51.100.2 dev up2 table local proto kernel scope host src 198.51.100.2\n\
            local 203.0.113.2 dev up1 table local proto kernel scope host src 203.0.113.2\n";
        let mut files = BTreeMap::new();
        files.insert("ip-rule.txt".to_string(), rules.to_string());
        files.insert("ip-route.txt".to_string(), routes.to_string());
        files.insert("ip-addr.json".to_string(), addr.to_string());
        let mut host = HostState::from_files(&files, Vec::new(), "test").expect("state");
        host.cgroup_root = Some("unified/".into());
        let config = "[[gateway]]\nname = \"isp1\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\n\
            [[gateway]]\nname = \"isp2\"\ninterface = \"up2\"\nvia = \"198.51.100.1\"\n\
            [[policy]]\nname = \"backup-user\"\nroute_via = \"isp1\"\n[policy.match]\nuser = 1001\n\
            [[policy]]\nname = \"backup-service\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"system.slice/backup.service\"\n";
        let model = symroute_core::config::parse_str(config, "t.toml").expect("config");
        let mut view = host.host_view();
        let service = symroute_core::model::CgroupPath::new("system.slice/backup.service").unwrap();
        view.cgroups = Some(symroute_core::plan::Cgroups {
            nft_root: "unified/".into(),
            ids: [(service, 4242)].into_iter().collect(),
            ..Default::default()
        });
        let plan = symroute_core::plan::build(&model, &view);
        host.overlay(&plan).expect("overlay");
        host
    }

    #[test]
    fn local_packets_follow_their_sending_user_and_cgroup() {
        let host = steered_by_owner();
        let sent = |uid: Option<u32>, cgroup: Option<&str>| {
            let p = PacketSpec {
                in_interface: None,
                source: None,
                uid,
                cgroup: cgroup.map(str::to_string),
                ..smtp("0.0.0.0", "192.0.2.10", 6)
            };
            let e = explain(&host, &p);
            (
                e.verdict.interface.clone().unwrap_or_default(),
                render(&e, true),
            )
        };
        let (root, why) = sent(None, None);
        assert_eq!(root, "up2", "{why}");
        let (user, why) = sent(Some(1001), None);
        assert_eq!(user, "up1", "{why}");
        assert!(why.contains("meta skuid 1001"), "{why}");
        let (service, why) = sent(Some(0), Some("system.slice/backup.service"));
        assert_eq!(service, "up1", "{why}");
        // A process below the service's cgroup is in it too; one beside it is not.
        assert_eq!(
            sent(None, Some("system.slice/backup.service/worker")).0,
            "up1"
        );
        assert_eq!(sent(None, Some("system.slice/other.service")).0, "up2");
        assert_eq!(sent(Some(1002), Some("user.slice")).0, "up2");
    }
}
