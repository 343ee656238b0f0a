//! Checks on `ip rule`s and routes: tables that are empty or lack a default, reserved and
//! colliding table ids and priorities, rules that are never reached, next hops off-link.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::facts::{
    ip_route_cmd, ip_rule_cmd, rule_place, rule_tool, Ctx, Tool, TS_PRIORITIES, TS_TABLE, WG_TABLE,
};
use super::{Finding, Severity};
use crate::netfilter::normalize_mac;
use crate::routing::{
    table_name, RouteEntry, RouteKind, RuleAction, RuleEntry, TABLE_DEFAULT, TABLE_LOCAL,
};
use symroute_core::model::Family;

pub fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    tables(ctx, out);
    collisions(ctx, out);
    shadowed(ctx, out);
    nexthops(ctx, out);
}

fn route_place(r: &RouteEntry) -> String {
    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
    if r.line > 0 {
        format!("ip {six}route show table all (line {})", r.line)
    } else {
        format!("ip {six}route show table all")
    }
}

fn fam_name(f: Family) -> &'static str {
    match f {
        Family::Inet4 => "IPv4",
        Family::Inet6 => "IPv6",
    }
}

fn is_default_route(r: &RouteEntry) -> bool {
    r.dst.prefix_len() == 0 && r.kind != RouteKind::Throw && r.src.is_none()
}

/// A gateway the table already uses, for a concrete `default via …` suggestion.
fn some_gateway(ctx: &Ctx, fam: Family, t: u32) -> Option<(IpAddr, String)> {
    ctx.table(fam, t)
        .iter()
        .flat_map(|r| r.nexthops.iter())
        .find_map(|n| Some((n.via?, n.dev.clone()?)))
}

fn tables(ctx: &Ctx, out: &mut Vec<Finding>) {
    for r in &ctx.host.routing.rules {
        if rule_tool(r).is_some() || r.is_default() {
            continue;
        }
        let RuleAction::Lookup(t) = r.action else {
            continue;
        };
        match t {
            0 => out.push(Finding::new(
                Severity::Error,
                "table-reserved",
                &r.text,
                rule_place(r),
                "table 0 is `unspec`, not a table: the rule cannot look anything up (IPv4 `ip rule add … table 0` even makes the kernel pick an unused table instead)".into(),
                format!("use a table of your own (1–252, or above 255): `{}`, then `{}`", ip_rule_cmd(r, "del"), ip_rule_cmd(r, "add").replace("lookup 0", "lookup 100")),
            )),
            TABLE_DEFAULT => out.push(Finding::new(
                Severity::Warning,
                "table-reserved",
                &r.text,
                rule_place(r),
                "table 253 (`default`) is the kernel's last-resort table, looked up by the rule at priority 32767 for every packet nothing else routed: routes put there for this policy also catch unrelated traffic, and tools that manage the default table remove them".into(),
                format!(
                    "give the policy a table of its own: `echo '100 mypolicy' >> /etc/iproute2/rt_tables`, move the routes (`ip route add … table 100`), then `{}` and `{}`",
                    ip_rule_cmd(r, "del"),
                    ip_rule_cmd(r, "add").replace("lookup default", "lookup 100")
                ),
            )),
            _ if Ctx::is_plain_table(t) => {
                let routes = ctx.table(r.family, t);
                let fam = fam_name(r.family);
                if routes.is_empty() {
                    let other = match r.family {
                        Family::Inet4 => Family::Inet6,
                        Family::Inet6 => Family::Inet4,
                    };
                    let note = if ctx.table(other, t).is_empty() {
                        String::new()
                    } else {
                        format!(" (it has {} routes only)", fam_name(other))
                    };
                    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
                    out.push(Finding::new(
                        Severity::Error,
                        "table-empty",
                        &r.text,
                        rule_place(r),
                        format!("table {t} has no {fam} routes{note}: the lookup finds nothing and the packets fall through to the next rules (the main table), so this rule does nothing"),
                        format!("add the table's routes, e.g. `ip {six}route add default via <gateway> dev <interface> table {t}` plus the connected networks replies must still reach directly, and make them permanent with the rule"),
                    ));
                } else if !routes.iter().any(|x| is_default_route(x)) {
                    let covered = r.to.is_some_and(|to| routes.iter().any(|x| x.dst.contains(&to)));
                    if covered {
                        continue;
                    }
                    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
                    let gw = some_gateway(ctx, r.family, t)
                        .map(|(g, d)| format!("via {g} dev {d}"))
                        .unwrap_or_else(|| "via <gateway> dev <interface>".into());
                    out.push(Finding::new(
                        Severity::Warning,
                        "table-no-default",
                        &r.text,
                        rule_place(r),
                        format!("table {t} has no default route: packets to destinations it does not list fall through to the next rules and leave by the main table's route, e.g. replies to anywhere on the Internet"),
                        format!("`ip {six}route add default {gw} table {t}` (or a `to PREFIX` selector on the rule if only those destinations are meant)"),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn collisions(ctx: &Ctx, out: &mut Vec<Finding>) {
    let here = |t: Tool| ctx.present.contains(&t);
    let sev = |t: Tool| {
        if here(t) {
            Severity::Warning
        } else {
            Severity::Info
        }
    };
    // Owners of each table, by the rules that look it up.
    let mut users: BTreeMap<(Family, u32), Vec<(&RuleEntry, String)>> = BTreeMap::new();
    for r in &ctx.host.routing.rules {
        let RuleAction::Lookup(t) = r.action else {
            continue;
        };
        if !Ctx::is_plain_table(t) {
            continue;
        }
        let owner = match rule_tool(r) {
            Some(tool) => tool.name().to_string(),
            None => match r.protocol.as_deref() {
                None | Some("boot") => "made by hand".to_string(),
                Some(p) => format!("proto {p}"),
            },
        };
        users.entry((r.family, t)).or_default().push((r, owner));
        if rule_tool(r).is_some() {
            continue;
        }
        for (tool, id) in [(Tool::WgQuick, WG_TABLE), (Tool::Tailscale, TS_TABLE)] {
            if t != id {
                continue;
            }
            let state = if here(tool) {
                "runs here"
            } else {
                "is not running here, a conflict the day it is"
            };
            out.push(Finding::new(
                sev(tool),
                "table-collision",
                &r.text,
                rule_place(r),
                format!(
                    "table {t} is {}'s ({}): it replaces the table's routes whenever it comes up and sends its own traffic there; {} {state}",
                    tool.name(),
                    if tool == Tool::WgQuick { "`not fwmark 0xca6c lookup 51820`" } else { "its rules at priorities 5210-5270" },
                    tool.name()
                ),
                format!("pick another table: `{}`, then `{}`", ip_rule_cmd(r, "del"), ip_rule_cmd(r, "add").replace(&format!("lookup {t}"), "lookup 100")),
            ));
        }
    }
    for ((_, t), list) in users {
        let owners: BTreeSet<&str> = list.iter().map(|(_, o)| o.as_str()).collect();
        if owners.len() < 2 {
            continue;
        }
        let first = list[0].1.clone();
        for (r, owner) in list.iter().filter(|(_, o)| *o != first) {
            if rule_tool(r).is_some() {
                continue;
            }
            let others: Vec<String> = list
                .iter()
                .filter(|(_, o)| o != owner)
                .map(|(x, o)| format!("`{}` ({o})", x.text.replace('\t', " ")))
                .collect();
            out.push(Finding::new(
                Severity::Warning,
                "table-collision",
                &r.text,
                rule_place(r),
                format!(
                    "table {t} is also used by another setup: {}; whichever writes its routes last wins, and removing one setup breaks the other",
                    others.join(", ")
                ),
                format!("give this setup its own table: `{}`, then `{}` with its routes in table 100", ip_rule_cmd(r, "del"), ip_rule_cmd(r, "add").replace(&format!("lookup {t}"), "lookup 100")),
            ));
        }
    }
    for r in &ctx.host.routing.rules {
        if rule_tool(r).is_some() || !TS_PRIORITIES.contains(&r.priority) {
            continue;
        }
        let t = Tool::Tailscale;
        let state = if here(t) {
            "Tailscale runs here"
        } else {
            "Tailscale is not running here, a conflict the day it is"
        };
        out.push(Finding::new(
            sev(t),
            "priority-collision",
            &r.text,
            rule_place(r),
            format!("priority {} is among Tailscale's (5210-5270, rules it deletes and re-adds by priority); {state}", r.priority),
            format!("use a priority outside 5210-5270: `{}`, then `{}`", ip_rule_cmd(r, "del"), ip_rule_cmd(r, "add").replacen(&format!("pref {}", r.priority), "pref 5000", 1)),
        ));
    }
}

/// `a` matches every packet `b` matches (ignoring `not`, which callers exclude).
fn superset(a: &RuleEntry, b: &RuleEntry) -> bool {
    let net = |x: &Option<ipnet::IpNet>, y: &Option<ipnet::IpNet>| match (x, y) {
        (None, _) => true,
        (Some(p), Some(q)) => p.contains(q),
        _ => false,
    };
    let same = |x: &Option<String>, y: &Option<String>| x.is_none() || x == y;
    let eq = |x: Option<u8>, y: Option<u8>| x.is_none() || x == y;
    let range = |x: Option<(u16, u16)>, y: Option<(u16, u16)>| match (x, y) {
        (None, _) => true,
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b0 && b1 <= a1,
        _ => false,
    };
    let mark = match (a.fwmark, b.fwmark) {
        (None, _) => true,
        (Some((v1, m1)), Some((v2, m2))) => m1 & !m2 == 0 && (v1 ^ v2) & m1 == 0,
        _ => false,
    };
    net(&a.from, &b.from)
        && net(&a.to, &b.to)
        && same(&a.iif, &b.iif)
        && same(&a.oif, &b.oif)
        && mark
        && eq(a.ipproto, b.ipproto)
        && range(a.sport, b.sport)
        && range(a.dport, b.dport)
        && eq(a.tos, b.tos)
}

/// Why `a` decides every packet it matches before `b` (None: it may not).
fn decides(ctx: &Ctx, a: &RuleEntry, b: &RuleEntry) -> Option<String> {
    if a.not || a.unresolved || a.iif_detached || a.oif_detached || !a.unmodeled.is_empty() {
        return None;
    }
    match a.action {
        RuleAction::Blackhole | RuleAction::Unreachable | RuleAction::Prohibit => {
            Some("it rejects them".into())
        }
        RuleAction::Lookup(t) => {
            if a.suppress_prefixlength.is_some() || a.suppress_ifgroup.is_some() {
                return None;
            }
            ctx.table(a.family, t)
                .iter()
                .any(|r| is_default_route(r))
                .then(|| {
                    format!(
                        "table {} has a default route, so its lookup never falls through",
                        table_name(t)
                    )
                })
        }
        RuleAction::Goto(p) if p > b.priority => Some(format!("it jumps past it, to priority {p}")),
        _ => None,
    }
}

fn shadowed(ctx: &Ctx, out: &mut Vec<Finding>) {
    for fam in [Family::Inet4, Family::Inet6] {
        let rules: Vec<&RuleEntry> = ctx.host.routing.rules_of(fam).collect();
        for (j, b) in rules.iter().enumerate() {
            if b.not
                || b.is_default()
                || rule_tool(b).is_some()
                || b.action == RuleAction::Lookup(TABLE_LOCAL)
            {
                continue;
            }
            // The same rule twice (a script that runs `ip rule add` at every ifup).
            let body = |r: &RuleEntry| {
                r.text
                    .split_once(':')
                    .map(|(_, t)| t.trim().to_string())
                    .unwrap_or_default()
            };
            if let Some(a) = rules[..j].iter().find(|a| body(a) == body(b)) {
                out.push(Finding::new(
                    Severity::Warning,
                    "rule-shadowed",
                    &b.text,
                    rule_place(b),
                    format!(
                        "a duplicate of the earlier `{}`: the same `ip rule add` ran twice (a script run at every boot or ifup adds one more each time), and this copy is never the one that decides",
                        a.text.replace('\t', " ")
                    ),
                    format!("`{}` (and make the script idempotent: `ip rule del …` before `ip rule add …`, or `ip rule replace`)", ip_rule_cmd(b, "del")),
                ));
                continue;
            }
            let Some((a, reason)) = rules[..j]
                .iter()
                .filter(|a| a.priority <= b.priority && superset(a, b))
                .find_map(|a| decides(ctx, a, b).map(|why| (a, why)))
            else {
                continue;
            };
            let newp = a.priority.saturating_sub(1);
            let fix = if a.priority == 0 {
                "nothing can come before priority 0: narrow the earlier rule's selector instead"
                    .to_string()
            } else {
                format!(
                    "give it a priority before {}: `{}`, then `{}` (or narrow the earlier rule's selector)",
                    a.priority,
                    ip_rule_cmd(b, "del"),
                    ip_rule_cmd(b, "add").replacen(&format!("pref {}", b.priority), &format!("pref {newp}"), 1)
                )
            };
            out.push(Finding::new(
                Severity::Warning,
                "rule-shadowed",
                &b.text,
                rule_place(b),
                format!(
                    "the earlier rule `{}` matches every packet this one would, and {reason}: this rule is never consulted",
                    a.text.replace('\t', " ")
                ),
                fix,
            ));
        }
    }
}

fn is_ether(ctx: &Ctx, dev: &str) -> bool {
    ctx.host
        .macs
        .get(dev)
        .and_then(|m| normalize_mac(m))
        .is_some_and(|m| m != "00:00:00:00:00:00")
}

fn nexthops(ctx: &Ctx, out: &mut Vec<Finding>) {
    for r in &ctx.host.routing.routes {
        if r.table == TABLE_LOCAL || !matches!(r.kind, RouteKind::Unicast) {
            continue;
        }
        for n in &r.nexthops {
            let (Some(g), Some(d)) = (n.via, n.dev.as_deref()) else {
                continue;
            };
            let Some(link) = ctx.host.routing.links.get(d) else {
                continue;
            };
            let link_local = match g {
                IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
                IpAddr::V4(a) => a.is_link_local(),
            };
            if link_local || Family::of(&g) != r.family || !is_ether(ctx, d) {
                continue;
            }
            if link.addrs.iter().any(|a| a.contains(&g)) {
                continue;
            }
            let nets: Vec<String> = link
                .addrs
                .iter()
                .filter(|a| Family::of(&a.addr()) == r.family)
                .map(|a| a.trunc().to_string())
                .collect();
            let nets = if nets.is_empty() {
                format!("{d} has no {} address", fam_name(r.family))
            } else {
                format!("{d} is on {}", nets.join(", "))
            };
            if n.onlink {
                out.push(Finding::new(
                    Severity::Info,
                    "nexthop-onlink",
                    &r.text,
                    route_place(r),
                    format!("the gateway {g} is on none of {d}'s networks ({nets}) and is forced with `onlink`: the kernel does not check it, which is right for a provider's point-to-point style gateway and silently wrong for a typo"),
                    format!("check that {g} answers on {d}: `ip neigh show {g} dev {d}` should show its MAC once traffic flows"),
                ));
            } else {
                out.push(Finding::new(
                    Severity::Error,
                    "nexthop-not-connected",
                    &r.text,
                    route_place(r),
                    format!("the gateway {g} is on none of {d}'s networks ({nets}): the kernel accepted the route only while such a network existed; adding it again (at boot, on ifup, after the link flaps) fails with \"Nexthop has invalid gateway\""),
                    format!(
                        "use a gateway on {d}'s network (`{}` with the right address), or, if {g} really is reachable on that link, say so: `{} onlink`",
                        ip_route_cmd(r, "replace"),
                        ip_route_cmd(r, "replace")
                    ),
                ));
            }
        }
    }
    for r in &ctx.host.routing.routes {
        if r.table == TABLE_LOCAL
            || r.kind != RouteKind::Unicast
            || r.dst.prefix_len() != 0
            || r.nexthops.len() != 1
        {
            continue;
        }
        let n = &r.nexthops[0];
        let Some(d) = n.dev.as_deref() else { continue };
        if n.via.is_some() || !is_ether(ctx, d) {
            continue;
        }
        let six = if r.family == Family::Inet6 { "-6 " } else { "" };
        let t = if r.table == crate::routing::TABLE_MAIN {
            String::new()
        } else {
            format!(" table {}", r.table)
        };
        out.push(Finding::new(
            Severity::Warning,
            "route-no-gateway",
            &r.text,
            route_place(r),
            format!("a default route out of the Ethernet interface {d} without `via`: every destination is treated as on-link, so the host resolves each remote address on {d} itself (ARP/ND), which works only if the provider's router answers for all of them (proxy ARP)"),
            format!("name the gateway: `ip {six}route replace default via <gateway> dev {d}{t}`"),
        ));
    }
}
