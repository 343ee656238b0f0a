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
    ctx
}

/// The source address the kernel would choose for a local packet without one: the
/// route's preferred source, else the first address of the egress interface.
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
    from_route
        .or_else(|| {
            let dev = l.verdict.interface.as_ref()?;
            host.routing
                .links
                .get(dev)?
                .addrs
                .iter()
                .map(|n| n.addr())
                .find(|a| Family::of(a) == family)
        })
        .unwrap_or(match family {
            Family::Inet4 => IpAddr::from([0u8, 0, 0, 0]),
            Family::Inet6 => IpAddr::from([0u16; 8]),
        })
}

struct LegOut {
    verdict: LegVerdict,
    steps: Vec<TraceStep>,
    uncertain: Vec<String>,
    ct_mark: u32,
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

    // Before routing: prerouting for arriving packets, output for local ones (whose
    // `type route` chains re-route after a mark change).
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
    } else {
        lookup = route_of(&ctx);
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
        }
    }
    for s in &lookup.steps {
        steps.push(TraceStep {
            stage: match s.stage {
                routing::Stage::Route => "route",
                routing::Stage::RpFilter => "rp_filter",
                routing::Stage::Check => "check",
            }
            .into(),
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
    let v = &lookup.verdict;
    let mut kind = match v.kind {
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
    .to_string();
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
    }
    LegOut {
        verdict: LegVerdict {
            kind,
            interface: v.interface.clone(),
            via: v.via,
            table: v.table.map(routing::table_name),
            mark: hex(ctx.mark),
            ct_mark: hex(ctx.ct.mark),
            source: ctx.src,
            destination: ctx.dst,
            source_port: ctx.sport,
            destination_port: ctx.dport,
            reason,
        },
        steps,
        uncertain,
        ct_mark: ctx.ct.mark,
        dst_port: ctx.dport,
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
