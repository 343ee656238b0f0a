//! The plan: the complete kernel state symroute wants, as a plain value. `build` is a pure
//! function of the validated model and a view of the host; `diff` compares a plan with what
//! the kernel holds. Nothing here performs I/O.

pub mod alloc;
mod classify;
pub mod diff;
pub mod host;
pub mod markmap;
pub mod nft;
mod nft_expr;
pub mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

pub use host::{Cgroups, DefaultVia, HostView, Link};
pub use objects::{RouteKind, RouteSpec, RuleAction, RuleSpec, RT_PROTO};

use crate::model::{
    Action, Family, Gateway, GatewayIdx, Mark, Model, NextHop, Priority, RouteMode, TableId,
};

/// Why a gateway's routes are not in its table yet. Its rules stay, so traffic simply
/// falls through to the main table until a later apply (or the daemon) completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum GatewayState {
    Up,
    /// Usable for one family only (the reason names the other family's problem).
    Partial(String),
    Down(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayPlan {
    pub name: String,
    pub interface: String,
    pub table: TableId,
    /// Set when some policy answers via this gateway.
    pub reply_mark: Option<Mark>,
    /// Set when new connections may be sent via this gateway: some route_via policy names
    /// it, or `symroute exec --gateway` has its cgroup for it.
    pub route_mark: Option<Mark>,
    /// The next hop its routes use (IPv4, else IPv6), once known (`via = "auto"`: learned).
    pub via: Option<IpAddr>,
    pub state: GatewayState,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyPlan {
    pub name: String,
    /// `reply_via` or `route_via`.
    pub kind: &'static str,
    /// The gateway new connections take now (`route_via` shares: the first active one).
    pub gateway: String,
    pub mark: Mark,
    /// The nft named counter counting the connections this policy classified.
    pub counter: String,
    /// Every gateway of the policy in the order written, with its weight (shares only)
    /// and whether new connections go there now.
    pub gateways: Vec<PolicyGateway>,
    /// `failover` or `share` (`route_via` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// Sticky per source: seconds a source keeps its gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_secs: Option<f64>,
    /// Cgroups the policy names that are not matched yet (see [`Waiting`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
}

/// A cgroup a policy names that the table cannot match now: nft resolves a cgroup path
/// when it loads the table, so one that does not exist yet (a service not started) is
/// left out until it does. `symroute run` watches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub cgroup: String,
    pub why: &'static str,
}

impl Waiting {
    pub const ABSENT: &'static str = "does not exist yet";
    pub const NO_HIERARCHY: &'static str = "no cgroup2 hierarchy is mounted where nft can name it";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyGateway {
    pub name: String,
    pub mark: Mark,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    pub active: bool,
}

/// Which of a route's gateways new connections take, given each gateway's state (by
/// index): a failover list takes its first gateway that is not down (a partial one
/// counts as usable), or the first when all are down; a share takes every gateway that
/// is not down, or all of them when all are. Weights are `None` for failover.
pub fn active_gateways(
    route: &crate::model::Route,
    states: &[GatewayState],
) -> Vec<(GatewayIdx, Option<u32>)> {
    let down = |g: &GatewayIdx| matches!(states[g.index()], GatewayState::Down(_));
    match &route.mode {
        RouteMode::Failover(list) => {
            let g = list.iter().find(|g| !down(g)).unwrap_or(&list[0]);
            vec![(*g, None)]
        }
        RouteMode::Share(list) => {
            let up: Vec<_> = list
                .iter()
                .filter(|(g, _)| !down(g))
                .map(|(g, w)| (*g, Some(w.get())))
                .collect();
            if up.is_empty() {
                list.iter().map(|(g, w)| (*g, Some(w.get()))).collect()
            } else {
                up
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub mark_mask: crate::model::MarkMask,
    pub gateways: Vec<GatewayPlan>,
    pub policies: Vec<PolicyPlan>,
    pub divert: Option<(Mark, TableId)>,
    /// The full `inet symroute` table, ready for `nft -f`.
    pub nft: String,
    /// Fingerprint of `nft`, stored in the table's comment to detect no-op applies.
    pub nft_fingerprint: String,
    pub rules: BTreeSet<RuleSpec>,
    pub routes: BTreeSet<RouteSpec>,
    /// sysctl key → what symroute needs of it.
    pub sysctls: BTreeMap<String, SysctlWant>,
    /// Priorities and tables the plan occupies (foreign objects there are conflicts).
    pub priorities: BTreeSet<Priority>,
    pub tables: BTreeSet<TableId>,
}

/// What a plan says of each gateway and policy (their marks, tables and states), without
/// the kernel objects: what a command prints after an apply. [`build`] starts from it;
/// alone it costs a small part of a plan (no table is rendered).
#[derive(Debug, Clone)]
pub struct Outline {
    pub gateways: Vec<GatewayPlan>,
    pub policies: Vec<PolicyPlan>,
}

/// `model`'s outline on `host`: the same as its plan's ([`Plan::outline`]).
pub fn outline(model: &Model, host: &HostView) -> Outline {
    outline_with(model, host).1
}

/// The outline, with the gateways as their next hops are learned from `host`.
fn outline_with(model: &Model, host: &HostView) -> (Vec<Gateway>, Outline) {
    // `via = "auto"` becomes the address the host's main table has now.
    let learned: Vec<Gateway> = model
        .gateways
        .iter()
        .map(|g| learn_next_hops(g, host))
        .collect();
    let gateways: Vec<GatewayPlan> = learned
        .iter()
        .enumerate()
        .map(|(i, g)| GatewayPlan {
            name: g.name.to_string(),
            interface: g.interface.to_string(),
            table: alloc::gateway_table(model, GatewayIdx(i)),
            reply_mark: model
                .replies_via(GatewayIdx(i))
                .then(|| alloc::reply_mark(model, GatewayIdx(i))),
            route_mark: (model.routes_via(GatewayIdx(i))
                || model.probed_alone(GatewayIdx(i))
                || host
                    .cgroups
                    .as_ref()
                    .is_some_and(|c| c.exec_exists(g.name.as_str())))
            .then(|| alloc::route_mark(model, GatewayIdx(i))),
            via: g
                .via
                .and_then(NextHop::fixed)
                .map(IpAddr::V4)
                .or_else(|| g.via6.and_then(NextHop::fixed).map(IpAddr::V6)),
            state: gateway_state(g, host),
        })
        .collect();
    let states: Vec<GatewayState> = gateways.iter().map(|g| g.state.clone()).collect();
    let policies = model
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| policy_plan(model, &states, i, p, host))
        .collect::<Vec<_>>();
    (learned, Outline { gateways, policies })
}

impl Plan {
    /// What it says of each gateway and policy.
    pub fn outline(&self) -> Outline {
        Outline {
            gateways: self.gateways.clone(),
            policies: self.policies.clone(),
        }
    }
}

/// Build the desired kernel state. Pure: the same model and host view give the same plan.
pub fn build(model: &Model, host: &HostView) -> Plan {
    let mask = model.settings.mark_mask;
    let (learned, Outline { gateways, policies }) = outline_with(model, host);

    let divert = (!model.diverts.is_empty())
        .then(|| (alloc::divert_mark(model), alloc::divert_table(model)));

    // Rule order: diverts and reply rules first (replies always leave by their arrival
    // path), then main without its default route (LAN, VPN and other specific routes win),
    // then route_via rules (new connections of a class leave via their gateway). Each
    // kind has its fixed priority (`alloc::Slot`): rules of one kind match disjoint mark
    // values, so they share it, and no rule moves when a gateway comes or goes.
    let mut rules = BTreeSet::new();
    let mut priorities: BTreeSet<Priority> = BTreeSet::new();
    let mut tables = BTreeSet::new();
    // The skip rule's priority is reserved (the rule is added below when worth it).
    let skip_priority = alloc::priority(model, alloc::Slot::Skip);
    priorities.insert(skip_priority);
    // Route decisions (even values: 2N; every other value is odd, the divert's top one
    // included) jump over the reply rules straight to `lookup main
    // suppress_prefixlength 0`: every rule a packet walks costs it a little, and a
    // route-marked packet would walk one per reply gateway. Worth a rule from 3 reply
    // gateways on.
    let reply_gateways = gateways.iter().filter(|g| g.reply_mark.is_some()).count();
    let has_route = gateways.iter().any(|g| g.route_mark.is_some());
    let route_skip =
        (reply_gateways >= 3 && has_route).then(|| alloc::priority(model, alloc::Slot::RouteSkip));
    priorities.extend(route_skip);
    // Where the skip rule lands: rules of one kind share a priority, so a `goto` to the
    // last of them would walk them all; a `nop` after them ends the walk.
    let end = alloc::priority(model, alloc::Slot::End);
    priorities.insert(end);
    if let Some((mark, table)) = divert {
        let p = alloc::priority(model, alloc::Slot::Divert);
        priorities.insert(p);
        tables.insert(table);
        for fam in [Family::Inet4, Family::Inet6] {
            rules.insert(RuleSpec::fwmark(p, fam, mark, mask, table));
        }
    }
    for (i, gp) in gateways.iter().enumerate() {
        if let Some(mark) = gp.reply_mark {
            let p = alloc::priority(model, alloc::Slot::Reply);
            priorities.insert(p);
            tables.insert(gp.table);
            for fam in families(&learned[i]) {
                rules.insert(RuleSpec::fwmark(p, fam, mark, mask, gp.table));
            }
        }
    }
    if has_route {
        let p = alloc::priority(model, alloc::Slot::MainWithoutDefault);
        priorities.insert(p);
        if let Some(skip) = route_skip {
            let low = mask.bits() & mask.bits().wrapping_neg();
            for family in [Family::Inet4, Family::Inet6] {
                rules.insert(RuleSpec {
                    priority: skip,
                    family,
                    from: None,
                    iif_lo: false,
                    fwmark: Some((0, low)),
                    action: RuleAction::Goto(p),
                    suppress_prefixlength: None,
                });
            }
        }
        for family in [Family::Inet4, Family::Inet6] {
            rules.insert(RuleSpec {
                priority: p,
                family,
                from: None,
                iif_lo: false,
                fwmark: None,
                action: RuleAction::Lookup(TableId::MAIN),
                suppress_prefixlength: Some(0),
            });
        }
    }
    for (i, gp) in gateways.iter().enumerate() {
        if let Some(mark) = gp.route_mark {
            let p = alloc::priority(model, alloc::Slot::Route);
            priorities.insert(p);
            tables.insert(gp.table);
            for fam in families(&learned[i]) {
                rules.insert(RuleSpec::fwmark(p, fam, mark, mask, gp.table));
            }
        }
    }

    // Local replies that do not depend on main. The kernel routes a packet this host
    // sends (a SYN-ACK, a UDP answer) once with the socket's mark, before the output
    // hook restores the connection's mark: when unmarked traffic has no route back (main
    // has no default through that uplink, or none at all) that lookup fails and the
    // reply is never sent. Its source is the address the connection came to, so
    // `from ADDRESS lookup TABLE` for each address of a reply gateway's interface lets
    // that first lookup succeed via the gateway; the output hook's reroute then follows
    // the connection's mark as before. The `from` rules sit at `fallback_priority`,
    // after main and default: they act only when nothing else routes the packet. Where
    // main routes it, or any rule of the host's own (wg-quick's full tunnel, Tailscale's
    // exit node, a hand-made `from` rule for a third uplink), nothing changes — and so
    // main's default wins for connections no reply_via policy matched (seed 2's direct
    // clients share the proxy's interface). The same rules answer the reverse-path check
    // of a packet to a local address (its lookup runs from that address), so loose
    // rp_filter lets a client's first packet in when main has no route back.
    let reply_gws: Vec<usize> = (0..gateways.len())
        .filter(|&i| gateways[i].reply_mark.is_some())
        .collect();
    if !reply_gws.is_empty() {
        let sources = gateway_sources(&learned, &reply_gws, host);
        // One priority for them all: an address belongs to one gateway at most, so the
        // rules are disjoint, and renumbering only swaps `from` rules.
        let p = model.settings.fallback_priority;
        priorities.insert(p);
        for &i in &reply_gws {
            for addr in sources.get(&i).into_iter().flatten() {
                rules.insert(RuleSpec::from_addr(p, *addr, gateways[i].table));
            }
        }
    }

    // Packets without a decision (most of them) jump over all our rules before main at
    // once: each `ip rule` costs every routed packet a little, and there can be hundreds
    // of them.
    for family in [Family::Inet4, Family::Inet6] {
        let before_main = rules
            .iter()
            .filter(|r| r.family == family && r.priority < end)
            .count();
        if before_main < 3 {
            continue;
        }
        rules.insert(RuleSpec {
            priority: skip_priority,
            family,
            from: None,
            iif_lo: false,
            fwmark: Some((0, mask.bits())),
            action: RuleAction::Goto(end),
            suppress_prefixlength: None,
        });
        rules.insert(RuleSpec {
            priority: end,
            family,
            from: None,
            iif_lo: false,
            fwmark: None,
            action: RuleAction::Nop,
            suppress_prefixlength: None,
        });
    }

    let mut routes = BTreeSet::new();
    let gateway_ifaces: BTreeSet<&str> = model
        .gateways
        .iter()
        .map(|g| g.interface.as_str())
        .collect();
    for (i, gp) in gateways.iter().enumerate() {
        if gp.reply_mark.is_none() && gp.route_mark.is_none() {
            continue;
        }
        let families = usable_families(&learned[i], host);
        if host.health_down.contains_key(gp.name.as_str()) {
            // Down by its health checks: only host routes to the check targets stay, so
            // the probes keep testing this path and can see it come back.
            probe_routes(&learned[i], gp.table, &families, &mut routes);
            continue;
        }
        gateway_routes(
            &learned[i],
            gp.table,
            host,
            &families,
            &gateway_ifaces,
            &mut routes,
        );
    }
    if let Some((_, table)) = divert {
        for (family, dst) in [(Family::Inet4, "0.0.0.0/0"), (Family::Inet6, "::/0")] {
            routes.insert(RouteSpec {
                table,
                family,
                kind: RouteKind::Local,
                dst: dst.parse().expect("constant prefix"),
                via: None,
                dev: "lo".into(),
            });
        }
    }

    let sysctls = sysctls(model, host);
    let local_addrs: Vec<IpAddr> = host
        .links
        .values()
        .flat_map(|l| l.addrs.iter().map(|a| a.addr()))
        .collect();
    let (nft, nft_fingerprint) = nft::render(
        model,
        &gateways,
        &policies,
        divert.map(|d| d.0),
        &local_addrs,
        host.cgroups.as_ref(),
    );

    Plan {
        mark_mask: mask,
        gateways,
        policies,
        divert,
        nft,
        nft_fingerprint,
        rules,
        routes,
        sysctls,
        priorities,
        tables,
    }
}

fn policy_plan(
    model: &Model,
    states: &[GatewayState],
    i: usize,
    p: &crate::model::Policy,
    host: &HostView,
) -> PolicyPlan {
    let waiting = p
        .selector
        .cgroup
        .iter()
        .filter_map(|c| {
            let why = match &host.cgroups {
                None => Waiting::NO_HIERARCHY,
                Some(h) if h.nft_path(c).is_none() => Waiting::ABSENT,
                Some(_) => return None,
            };
            Some(Waiting {
                cgroup: c.to_string(),
                why,
            })
        })
        .collect();
    let entry = |g: GatewayIdx, mark: Mark, weight: Option<u32>, active: bool| PolicyGateway {
        name: model.gateway(g).name.to_string(),
        mark,
        weight,
        active,
    };
    let (kind, gateways, mode, sticky) = match &p.action {
        Action::ReplyVia(g) => (
            "reply_via",
            vec![entry(*g, alloc::reply_mark(model, *g), None, true)],
            None,
            None,
        ),
        Action::RouteVia(r) => {
            let active = active_gateways(r, states);
            let weights: Vec<Option<u32>> = match &r.mode {
                RouteMode::Failover(l) => vec![None; l.len()],
                RouteMode::Share(l) => l.iter().map(|(_, w)| Some(w.get())).collect(),
            };
            let list = r
                .gateways()
                .into_iter()
                .zip(weights)
                .map(|(g, w)| {
                    let on = active.iter().any(|(a, _)| *a == g);
                    entry(g, alloc::route_mark(model, g), w, on)
                })
                .collect();
            let mode = match r.mode {
                RouteMode::Failover(_) => "failover",
                RouteMode::Share(_) => "share",
            };
            (
                "route_via",
                list,
                Some(mode),
                r.sticky.map(|d| d.as_secs_f64()),
            )
        }
    };
    let first: &PolicyGateway = gateways
        .iter()
        .find(|g| g.active)
        .expect("a policy always has an active gateway");
    PolicyPlan {
        name: p.name.to_string(),
        kind,
        gateway: first.name.clone(),
        mark: first.mark,
        counter: nft::counter_name(i, p.name.as_str()),
        gateways,
        mode,
        sticky_secs: sticky,
        waiting,
    }
}

/// The gateway with each `auto` next hop replaced by the main table's default route
/// through its interface, when there is one (else it stays `Auto`: not usable).
fn learn_next_hops(g: &Gateway, host: &HostView) -> Gateway {
    let known = host.default_via.get(g.interface.as_str());
    let mut g = g.clone();
    if g.via == Some(NextHop::Auto) {
        if let Some(v) = known.and_then(|k| k.v4) {
            g.via = Some(NextHop::Fixed(v));
        }
    }
    if g.via6 == Some(NextHop::Auto) {
        if let Some(v) = known.and_then(|k| k.v6) {
            g.via6 = Some(NextHop::Fixed(v));
        }
    }
    g
}

/// The addresses of each reply gateway (by index) that get a `from` rule: those of its
/// interface, in the families it serves, without IPv6 link-local ones (main's `fe80::/64`
/// answers those). When several reply gateways share an interface, an address belongs
/// to the one whose next hop it covers; one that names no single gateway gets none.
fn gateway_sources(
    learned: &[Gateway],
    reply_gws: &[usize],
    host: &HostView,
) -> BTreeMap<usize, Vec<IpAddr>> {
    let mut out: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
    for &i in reply_gws {
        let g = &learned[i];
        let Some(link) = host.links.get(g.interface.as_str()) else {
            continue;
        };
        let serves = families(g);
        for net in &link.addrs {
            let addr = net.addr();
            let link_local = matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if link_local || addr.is_loopback() || !serves.contains(&Family::of(&addr)) {
                continue;
            }
            let sharing: Vec<usize> = reply_gws
                .iter()
                .copied()
                .filter(|&j| learned[j].interface == g.interface)
                .filter(|&j| families(&learned[j]).contains(&Family::of(&addr)))
                .collect();
            let owner = match sharing.as_slice() {
                [only] => Some(*only),
                _ => {
                    let covering: Vec<usize> = sharing
                        .iter()
                        .copied()
                        .filter(|&j| {
                            next_hop(&learned[j], Family::of(&addr))
                                .is_some_and(|v| net.contains(&v))
                        })
                        .collect();
                    (covering.len() == 1).then(|| covering[0])
                }
            };
            if owner == Some(i) && !out.get(&i).is_some_and(|v| v.contains(&addr)) {
                out.entry(i).or_default().push(addr);
            }
        }
    }
    out
}

fn next_hop(g: &Gateway, family: Family) -> Option<IpAddr> {
    match family {
        Family::Inet4 => g.via.and_then(NextHop::fixed).map(IpAddr::V4),
        Family::Inet6 => g.via6.and_then(NextHop::fixed).map(IpAddr::V6),
    }
}

fn families(g: &crate::model::Gateway) -> Vec<Family> {
    [Family::Inet4, Family::Inet6]
        .into_iter()
        .filter(|f| g.serves(*f))
        .collect()
}

fn gateway_state(g: &crate::model::Gateway, host: &HostView) -> GatewayState {
    match link_state(g, host) {
        GatewayState::Down(why) => GatewayState::Down(why),
        state => match host.health_down.get(g.name.as_str()) {
            Some(why) => GatewayState::Down(why.clone()),
            None => state,
        },
    }
}

fn link_state(g: &crate::model::Gateway, host: &HostView) -> GatewayState {
    let Some(link) = host.links.get(g.interface.as_str()) else {
        return GatewayState::Down(format!("interface {} does not exist", g.interface));
    };
    if !link.up {
        return GatewayState::Down(format!("interface {} is down", g.interface));
    }
    let on_link = |via: IpAddr| on_link(link, via);
    let mut off: Vec<String> = [
        g.via.and_then(NextHop::fixed).map(IpAddr::V4),
        g.via6.and_then(NextHop::fixed).map(IpAddr::V6),
    ]
    .into_iter()
    .flatten()
    .filter(|via| !on_link(*via))
    .map(|via| {
        format!(
            "next hop {via} is not on any network of {} (no address of the interface covers it)",
            g.interface
        )
    })
    .collect();
    for (key, unlearned) in [
        ("via", g.via == Some(NextHop::Auto)),
        ("via6", g.via6 == Some(NextHop::Auto)),
    ] {
        if unlearned {
            off.push(format!(
                "{key} = \"auto\", but the main table has no {} default route through {} to learn the next hop from (a DHCP client or router advertisement adds one)",
                if key == "via" { "IPv4" } else { "IPv6" },
                g.interface
            ));
        }
    }
    let families = usable_families(g, host);
    match (off.is_empty(), families.is_empty()) {
        (true, _) => GatewayState::Up,
        (false, true) => GatewayState::Down(off.join("; ")),
        (false, false) => GatewayState::Partial(off.join("; ")),
    }
}

/// Whether `via` is reachable directly on `link`: IPv6 link-local, or inside one of the
/// interface's networks.
fn on_link(link: &Link, via: IpAddr) -> bool {
    matches!(via, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
        || link.networks().any(|a| a.contains(&via))
}

/// The families whose next hop is usable now (on-link, interface up).
fn usable_families(g: &crate::model::Gateway, host: &HostView) -> Vec<Family> {
    let Some(link) = host.links.get(g.interface.as_str()).filter(|l| l.up) else {
        return Vec::new();
    };
    let on_link = |via: IpAddr| on_link(link, via);
    let mut out = Vec::new();
    let v4 = match g.via {
        // A point-to-point link named without any next hop.
        None => g.serves_v4(),
        Some(NextHop::Fixed(v)) => on_link(IpAddr::V4(v)),
        Some(NextHop::Auto) => false,
    };
    if v4 {
        out.push(Family::Inet4);
    }
    if matches!(g.via6, Some(NextHop::Fixed(v)) if on_link(IpAddr::V6(v))) {
        out.push(Family::Inet6);
    }
    out
}

/// A gateway's table: its default route(s), plus the directly connected networks that a
/// steered packet may still need to reach on-link: those of its own interface (a client
/// on the gateway's own segment is answered directly, not hairpinned through the
/// gateway) and of interfaces no gateway uses (the LAN). Other uplinks' networks stay
/// out: a connection that arrived via this gateway is answered via this gateway, and the
/// table stays O(gateways) routes instead of O(gateways × interfaces).
fn probe_routes(
    g: &crate::model::Gateway,
    table: TableId,
    families: &[Family],
    out: &mut BTreeSet<RouteSpec>,
) {
    let Some(check) = &g.check else { return };
    for t in &check.targets {
        let (family, via) = match t.addr() {
            IpAddr::V4(_) => (
                Family::Inet4,
                g.via.and_then(NextHop::fixed).map(IpAddr::V4),
            ),
            IpAddr::V6(_) => (
                Family::Inet6,
                g.via6.and_then(NextHop::fixed).map(IpAddr::V6),
            ),
        };
        if !families.contains(&family) {
            continue;
        }
        out.insert(RouteSpec {
            table,
            family,
            kind: RouteKind::Unicast,
            dst: IpNet::from(t.addr()),
            via,
            dev: g.interface.to_string(),
        });
    }
}

fn gateway_routes(
    g: &crate::model::Gateway,
    table: TableId,
    host: &HostView,
    families: &[Family],
    gateway_ifaces: &BTreeSet<&str>,
    out: &mut BTreeSet<RouteSpec>,
) {
    if families.contains(&Family::Inet4) {
        out.insert(RouteSpec {
            table,
            family: Family::Inet4,
            kind: RouteKind::Unicast,
            dst: "0.0.0.0/0".parse().expect("constant prefix"),
            via: g.via.and_then(NextHop::fixed).map(IpAddr::V4),
            dev: g.interface.to_string(),
        });
    }
    if let Some(v6) = g
        .via6
        .and_then(NextHop::fixed)
        .filter(|_| families.contains(&Family::Inet6))
    {
        out.insert(RouteSpec {
            table,
            family: Family::Inet6,
            kind: RouteKind::Unicast,
            dst: "::/0".parse().expect("constant prefix"),
            via: Some(IpAddr::V6(v6)),
            dev: g.interface.to_string(),
        });
    }
    // One route per prefix: a table can't hold the same destination twice. The gateway's
    // own interface wins, then interfaces in name order.
    let mut seen = BTreeSet::new();
    let own = host.links.get_key_value(g.interface.as_str());
    let others = host
        .links
        .iter()
        .filter(|(n, _)| n.as_str() != g.interface.as_str());
    for (name, link) in own.into_iter().chain(others) {
        let other_uplink =
            name.as_str() != g.interface.as_str() && gateway_ifaces.contains(name.as_str());
        if !link.up || name == "lo" || other_uplink {
            continue;
        }
        for addr in link.networks() {
            let net = addr.trunc();
            let family = Family::of(&net.addr());
            let link_local =
                matches!(net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80);
            if net.prefix_len() == net.max_prefix_len()
                || link_local
                || !families.contains(&family)
                || !seen.insert(net)
            {
                continue;
            }
            out.insert(RouteSpec {
                table,
                family,
                kind: RouteKind::Unicast,
                dst: net,
                via: None,
                dev: name.clone(),
            });
        }
    }
}

/// Sysctls the design needs:
/// - `net.ipv4.conf.IF.rp_filter`: strict mode (1) drops the first packet of a connection
///   that arrives on an interface the main table would not answer through, before any
///   mark exists. The effective value is max(all, IF), so IF is set to loose (2) wherever
///   the effective value is strict, on every gateway interface and `in_interface`.
/// - `net.ipv4.icmp_errors_use_inbound_ifaddr = 1`: ICMP errors about steered traffic
///   then carry the address of the interface the offending packet came in on.
fn sysctls(model: &Model, host: &HostView) -> BTreeMap<String, SysctlWant> {
    let mut out = BTreeMap::new();
    let mut ifaces: BTreeSet<&str> = model
        .gateways
        .iter()
        .map(|g| g.interface.as_str())
        .collect();
    for p in &model.policies {
        ifaces.extend(p.selector.in_interface.iter().map(|i| i.as_str()));
    }
    for ifname in ifaces {
        if host.links.contains_key(ifname) {
            out.insert(
                format!("net.ipv4.conf.{ifname}.rp_filter"),
                SysctlWant::NotStrictRpFilter,
            );
        }
    }
    if model
        .policies
        .iter()
        .any(|p| matches!(p.action, Action::ReplyVia(_)))
    {
        out.insert(
            "net.ipv4.icmp_errors_use_inbound_ifaddr".to_string(),
            SysctlWant::Exactly("1".into()),
        );
    }
    out
}

/// What symroute needs of one sysctl. Wants are conditions, not values, so a host that
/// already satisfies one is left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SysctlWant {
    Exactly(String),
    /// Effective rp_filter (max of `all` and the interface) must not be strict (1).
    NotStrictRpFilter,
}

impl SysctlWant {
    /// The value to write, or `None` when the current state already satisfies the want.
    pub fn fix(&self, current: &str, host: &HostView) -> Option<String> {
        match self {
            SysctlWant::Exactly(v) => (current != v).then(|| v.clone()),
            SysctlWant::NotStrictRpFilter => {
                let all = host
                    .sysctl("net.ipv4.conf.all.rp_filter")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(0);
                let cur = current.trim().parse::<u32>().unwrap_or(0);
                (all.max(cur) == 1).then(|| "2".to_string())
            }
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use crate::config::parse_str;

    // Ids as positions, so marks read as before ids existed (a 0x01000000, b 0x03…, c 0x05…).
    const GWS: &str = "[[gateway]]\nname=\"a\"\nid=1\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n\
        [[gateway]]\nname=\"b\"\nid=2\ninterface=\"e1\"\nvia=\"192.0.2.2\"\n\
        [[gateway]]\nname=\"c\"\nid=3\ninterface=\"e2\"\nvia=\"192.0.2.3\"\n";

    fn route(route_via: &str) -> crate::model::Route {
        let cfg = format!("{GWS}[[policy]]\nname=\"p\"\nroute_via={route_via}\n");
        match parse_str(&cfg, "t.toml").expect("valid").policies[0]
            .action
            .clone()
        {
            Action::RouteVia(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// States of gateways a, b, c: 'u' up, 'p' partial, 'd' down.
    fn states(s: &str) -> Vec<GatewayState> {
        s.chars()
            .map(|c| match c {
                'u' => GatewayState::Up,
                'p' => GatewayState::Partial("v6".into()),
                _ => GatewayState::Down("test".into()),
            })
            .collect()
    }

    fn active(route_via: &str, st: &str) -> Vec<(usize, Option<u32>)> {
        active_gateways(&route(route_via), &states(st))
            .into_iter()
            .map(|(g, w)| (g.index(), w))
            .collect()
    }

    #[test]
    fn failover_takes_the_first_gateway_not_down() {
        let list = r#"["b", "a", "c"]"#;
        assert_eq!(active(list, "uuu"), [(1, None)]);
        assert_eq!(active(list, "udu"), [(0, None)]);
        assert_eq!(active(list, "dpu"), [(1, None)], "partial counts as usable");
        assert_eq!(active(list, "ddu"), [(2, None)]);
        assert_eq!(active(list, "ddd"), [(1, None)], "all down: the first");
        assert_eq!(active(r#""c""#, "uud"), [(2, None)]);
    }

    #[test]
    fn share_takes_every_gateway_not_down_or_all() {
        let w = "{ a = 3, b = 1, c = 2 }";
        assert_eq!(active(w, "uuu"), [(0, Some(3)), (1, Some(1)), (2, Some(2))]);
        assert_eq!(active(w, "udp"), [(0, Some(3)), (2, Some(2))]);
        assert_eq!(active(w, "ddu"), [(2, Some(2))]);
        assert_eq!(active(w, "ddd"), [(0, Some(3)), (1, Some(1)), (2, Some(2))]);
    }

    /// A gateway with health checks that no policy names (there for `symroute exec`,
    /// say) has its route mark, rule and table, so its probes test its own path; one
    /// without checks has none until an exec cgroup asks for it.
    #[test]
    fn a_checked_gateway_no_policy_names_gets_a_table_for_its_probes() {
        let cfg = format!(
            "{}[gateway.check]\ntargets=[\"198.51.100.7\"]\n",
            GWS.replacen(
                "via=\"192.0.2.2\"\n",
                "via=\"192.0.2.2\"\n[gateway.check]\ntargets=[\"198.51.100.7\"]\n",
                1
            )
        );
        let model = parse_str(&cfg, "t.toml").expect("valid");
        let plan = build(&model, &host(&["e0", "e1", "e2"]));
        let marks: Vec<bool> = plan
            .gateways
            .iter()
            .map(|g| g.route_mark.is_some())
            .collect();
        assert_eq!(marks, [false, true, true]);
        for g in &plan.gateways[1..] {
            assert!(plan.routes.iter().any(|r| r.table == g.table), "{g:?}");
        }
        assert!(!plan
            .routes
            .iter()
            .any(|r| r.table == plan.gateways[0].table));
    }

    /// The user names of examples/full.toml.
    fn users() -> std::collections::BTreeMap<String, u32> {
        [("backup".to_string(), 34)].into_iter().collect()
    }

    fn host(up: &[&str]) -> HostView {
        let mut h = HostView::default();
        for (i, name) in ["e0", "e1", "e2"].iter().enumerate() {
            h.links.insert(
                name.to_string(),
                Link {
                    up: up.contains(name),
                    addrs: vec![format!("192.0.2.{}/24", 10 + i).parse().unwrap()],
                    peers: Vec::new(),
                },
            );
        }
        h
    }

    #[test]
    fn the_plan_takes_the_priorities_config_counted() {
        let cfg = format!("{GWS}[[policy]]\nname=\"p\"\nroute_via={{ a = 3, b = 1 }}\n[[policy]]\nname=\"r\"\nreply_via=\"c\"\n[policy.match]\nin_interface=\"e2\"\n[[divert]]\nname=\"d\"\n");
        for text in [
            cfg.as_str(),
            include_str!("../../../../examples/two-isps-firewall.toml"),
            include_str!("../../../../examples/full.toml"),
            include_str!("../../../../examples/failover.toml"),
        ] {
            let model = crate::config::parse_str_with(text, "t.toml", &users()).unwrap();
            // The most it takes: with an exec cgroup for every gateway, every one of
            // them takes route decisions.
            let mut h = host(&["e0", "e1", "e2"]);
            let mut c = Cgroups::default();
            for g in &model.gateways {
                let p = crate::model::CgroupPath::new(&format!("x/{}", g.name)).unwrap();
                c.ids.insert(p.clone(), 1);
                c.exec.insert(g.name.to_string(), p);
            }
            h.cgroups = Some(c);
            let plan = build(&model, &h);
            assert_eq!(
                plan.priorities.len(),
                alloc::priorities_needed(&model),
                "{text}"
            );
        }
    }

    #[test]
    fn policy_plan_lists_gateways_and_the_active_ones() {
        let cfg = format!("{GWS}[[policy]]\nname=\"p\"\nroute_via={{ a = 3, b = 1 }}\nsticky=\"1m\"\n[[policy]]\nname=\"q\"\nroute_via=[\"a\",\"c\"]\n");
        let model = parse_str(&cfg, "t.toml").unwrap();
        let plan = build(&model, &host(&["e1", "e2"]));
        let p = &plan.policies[0];
        assert_eq!(
            (p.gateway.as_str(), p.mode, p.sticky_secs),
            ("b", Some("share"), Some(60.0))
        );
        let shown: Vec<_> = p
            .gateways
            .iter()
            .map(|g| (g.name.as_str(), g.weight, g.active))
            .collect();
        assert_eq!(shown, [("a", Some(3), false), ("b", Some(1), true)]);
        let q = &plan.policies[1];
        assert_eq!(
            (q.gateway.as_str(), q.mark.to_string()),
            ("c", "0x06000000".to_string())
        );
        // Every gateway of a route_via has its route mark and rule, active or not.
        assert!(plan.gateways.iter().all(|g| g.route_mark.is_some()));
        assert_eq!(
            plan.rules
                .iter()
                .filter(|r| r.fwmark.is_some_and(|(v, _)| v != 0))
                .count(),
            3
        );
        // One gateway left in the share: no random pick, no sticky sets.
        assert!(plan.nft.contains("chain set_p0 {\n\t\tcounter name \"p0_p\" ct mark set ct mark and 0x00ffffff or 0x04000000 meta mark set meta mark and 0x00ffffff or 0x04000000 accept;\n\t}"), "{}", plan.nft);
        assert!(
            !plan.nft.contains("numgen") && !plan.nft.contains("sticky_"),
            "{}",
            plan.nft
        );

        let plan = build(&model, &host(&["e0", "e1", "e2"]));
        assert!(
            plan.nft.contains(
                "numgen random mod 4 vmap { 0-2 : goto pick_p0_2000000, 3 : goto pick_p0_4000000 }"
            ),
            "{}",
            plan.nft
        );
        assert!(plan.nft.contains("\tset sticky_p0_4000000_6 {\n\t\ttype ipv6_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 60s\n\t}"), "{}", plan.nft);
        assert!(plan.nft.contains("ip saddr @sticky_p0_2000000_4 update @sticky_p0_2000000_4 { ip saddr } goto ctmark_2000000"), "{}", plan.nft);
        assert!(plan.nft.contains("chain set_p1 {\n\t\tcounter name \"p1_q\" ct mark set ct mark and 0x00ffffff or 0x02000000 meta mark set meta mark and 0x00ffffff or 0x02000000 accept;"), "{}", plan.nft);
        // A share's pick ends the same way, in the chain of the value it picked.
        assert!(plan.nft.contains("chain ctmark_2000000 {\n\t\tct mark set ct mark and 0x00ffffff or 0x02000000 meta mark set meta mark and 0x00ffffff or 0x02000000 accept;"), "{}", plan.nft);
    }
}

#[cfg(test)]
mod learned_via_tests {
    use super::*;
    use crate::config::parse_str;

    const CFG: &str =
        "[[gateway]]\nname=\"dhcp\"\ninterface=\"wan\"\nvia=\"auto\"\nvia6=\"auto\"\n\
        [[policy]]\nname=\"p\"\nreply_via=\"dhcp\"\n[policy.match]\nin_interface=\"wan\"\n";

    fn host(defaults: Vec<(String, IpAddr, u32)>) -> HostView {
        let mut h = HostView::default();
        h.links.insert(
            "wan".into(),
            Link {
                up: true,
                addrs: vec!["100.64.7.9/22".parse().unwrap()],
                peers: Vec::new(),
            },
        );
        h.learn_default_routes(defaults);
        h
    }

    fn default_vias(plan: &Plan) -> Vec<(Family, Option<IpAddr>)> {
        plan.routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .map(|r| (r.family, r.via))
            .collect()
    }

    #[test]
    fn auto_takes_the_lowest_metric_default_route_of_the_interface() {
        let model = parse_str(CFG, "t.toml").unwrap();
        let plan = build(
            &model,
            &host(vec![
                ("wan".into(), "100.64.4.2".parse().unwrap(), 200),
                ("wan".into(), "100.64.4.1".parse().unwrap(), 100),
                ("lan".into(), "10.0.0.1".parse().unwrap(), 0),
                ("wan".into(), "fe80::1".parse().unwrap(), 1024),
            ]),
        );
        assert_eq!(plan.gateways[0].state, GatewayState::Up);
        assert_eq!(
            default_vias(&plan),
            [
                (Family::Inet4, Some("100.64.4.1".parse().unwrap())),
                (Family::Inet6, Some("fe80::1".parse().unwrap()))
            ]
        );
    }

    #[test]
    fn auto_without_a_default_route_is_not_used_and_says_why() {
        let model = parse_str(CFG, "t.toml").unwrap();
        let plan = build(&model, &host(vec![]));
        match &plan.gateways[0].state {
            GatewayState::Down(why) => assert!(
                why.contains(
                    "via = \"auto\", but the main table has no IPv4 default route through wan"
                ) && why.contains("via6 = \"auto\""),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(default_vias(&plan), []);
        // IPv4 learned only: usable for IPv4, partial.
        let plan = build(
            &model,
            &host(vec![("wan".into(), "100.64.4.1".parse().unwrap(), 0)]),
        );
        assert!(matches!(plan.gateways[0].state, GatewayState::Partial(_)));
        assert_eq!(
            default_vias(&plan),
            [(Family::Inet4, Some("100.64.4.1".parse().unwrap()))]
        );
    }
}
