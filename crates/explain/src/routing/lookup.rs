//! The routing decision for one packet: policy rules, table lookups, the input checks
//! (forwarding, martians, rp_filter), following the kernel's `fib_rules_lookup`,
//! `fib_table_lookup` / `fib6_table_lookup`, `ip_route_output_key_hash_rcu`,
//! `ip_route_input_slow` and `fib_validate_source`. See the module documentation of
//! [`super`] for the behaviours that are easy to get wrong.

use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::names::ip_proto_name;
use super::types::{
    table_name, NextHop, RouteEntry, RouteKind, RoutingState, RuleAction, RuleEntry, TABLE_DEFAULT,
    TABLE_LOCAL, TABLE_MAIN,
};
use symroute_core::model::Family;

/// One packet to route. `iif: None` is a locally generated packet (an output route);
/// `iif: Some(dev)` a packet that arrived on `dev` (an input route, as `ip route get …
/// iif dev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    pub family: Family,
    /// Source address. Output: `None` lets the kernel pick one after routing (and
    /// `from PREFIX` rules cannot match). Input: required (`None` is 0.0.0.0 / ::, which
    /// the kernel treats as a martian source on IPv4).
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub iif: Option<String>,
    /// Output interface a socket is bound to (`SO_BINDTODEVICE`, `ip route get … oif`).
    /// Ignored for input packets.
    pub oif: Option<String>,
    pub mark: u32,
    pub ipproto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The TOS / traffic class byte (0 when unset).
    pub tos: u8,
}

impl Query {
    /// A locally generated packet to `dst` with nothing else set.
    pub fn output(dst: IpAddr) -> Self {
        Query {
            family: Family::of(&dst),
            src: None,
            dst,
            iif: None,
            oif: None,
            mark: 0,
            ipproto: None,
            sport: None,
            dport: None,
            tos: 0,
        }
    }
    /// A packet from `src` to `dst` arriving on `iif`.
    pub fn input(src: IpAddr, dst: IpAddr, iif: &str) -> Self {
        Query {
            src: Some(src),
            iif: Some(iif.to_string()),
            ..Query::output(dst)
        }
    }
}

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    /// Sent (or forwarded) out of `interface`, to `via` or directly.
    Unicast,
    /// Delivered to this host (`interface` is `lo`, as the kernel reports it).
    Local,
    Broadcast,
    Multicast,
    /// IPv6 anycast address of this host (subnet-router anycast): delivered locally.
    Anycast,
    /// Silently discarded by a `blackhole` route or rule.
    Blackhole,
    /// Rejected with "network/host unreachable".
    Unreachable,
    /// Rejected with "administratively prohibited".
    Prohibit,
    /// Discarded by a check after routing: rp_filter, martian addresses, forwarding off
    /// (IPv6), no such device.
    Drop,
}

/// The error `ip route get` prints for this packet (`RTNETLINK answers: …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RouteError {
    /// ENETUNREACH
    NetworkUnreachable,
    /// EHOSTUNREACH
    HostUnreachable,
    /// EACCES
    PermissionDenied,
    /// EINVAL: blackhole, and every input-path drop (martians, rp_filter) since kernel
    /// 6.13 (older kernels said "Invalid cross-device link", EXDEV, for rp_filter).
    InvalidArgument,
    /// ENODEV: `iif`/`oif` names no interface.
    NoSuchDevice,
}

impl RouteError {
    /// strerror() text, as `ip route get` prints it.
    pub fn message(self) -> &'static str {
        match self {
            Self::NetworkUnreachable => "Network is unreachable",
            Self::HostUnreachable => "No route to host",
            Self::PermissionDenied => "Permission denied",
            Self::InvalidArgument => "Invalid argument",
            Self::NoSuchDevice => "No such device",
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// Egress interface (`lo` for local delivery); `None` when multipath candidates use
    /// different interfaces, or when nothing leaves.
    pub interface: Option<String>,
    /// Next hop (gateway); `None` for on-link destinations or when candidates differ.
    pub via: Option<IpAddr>,
    /// Table of the route used.
    pub table: Option<u32>,
    /// Priority of the rule that decided.
    pub rule: Option<u32>,
    /// The route used, as printed.
    pub route: Option<String>,
    /// Every (interface, next hop) the kernel may pick: for multipath routes it hashes
    /// the flow over these, any of them is a correct answer.
    pub candidates: Vec<(String, Option<IpAddr>)>,
    /// Other outcomes the multipath hash can lead to: when the kernel picks a next hop
    /// that is not in `candidates`, rp_filter may reject the packet, or (IPv6)
    /// `suppress_ifgroup` may suppress the route and the rule walk goes on. Each
    /// alternative lists its own next hops in its `candidates` (empty for errors).
    pub alternatives: Vec<Verdict>,
    /// What `ip route get` answers instead of a route (`None`: it prints a route; for a
    /// `Drop` without error, e.g. IPv6 forwarding off, the route it prints is
    /// `interface`/`via`, the drop happens later).
    pub error: Option<RouteError>,
    pub reason: String,
}

/// Which decision a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The packet's own route.
    Route,
    /// rp_filter / source validation: the reverse lookup of the source address.
    RpFilter,
    /// Checks outside the rule walk (interfaces, martians, forwarding).
    Check,
}

/// One thing the engine looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub stage: Stage,
    pub priority: Option<u32>,
    /// The rule as printed.
    pub rule: Option<String>,
    pub matched: bool,
    pub table: Option<u32>,
    /// The route the table lookup found, as printed.
    pub route: Option<String>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub verdict: Verdict,
    pub steps: Vec<Step>,
}

/// Routes one packet through `state`. Pure: no I/O, never panics.
pub fn lookup(state: &RoutingState, q: &Query) -> Lookup {
    let mut e = Engine {
        st: state,
        steps: Vec::new(),
        stage: Stage::Route,
        branches: 0,
    };
    let verdict = e.route(q);
    Lookup {
        verdict,
        steps: e.steps,
    }
}

/// The flow key of one FIB lookup (`struct flowi4`/`flowi6`).
#[derive(Debug, Clone)]
struct Flow<'a> {
    family: Family,
    /// `None`: no source address (0.0.0.0 / ::).
    src: Option<IpAddr>,
    dst: IpAddr,
    /// `lo` for locally generated packets.
    iif: &'a str,
    oif: Option<&'a str>,
    mark: u32,
    proto: u8,
    sport: u16,
    dport: u16,
    tos: u8,
}

/// Table lookup options.
#[derive(Debug, Clone, Copy)]
struct Opts<'a> {
    /// IPv4: only next hops on this device qualify. IPv6: preferred device (score), and
    /// with `strict` required.
    oif: Option<&'a str>,
    /// IPv6 RT6_LOOKUP_F_IFACE.
    strict: bool,
    /// FIB_LOOKUP_IGNORE_LINKSTATE.
    ignore_linkstate: bool,
    /// IPv4 `flowi4_scope`: routes of a narrower scope are skipped (gateway resolution
    /// uses link scope, everything else universe = 0).
    min_scope: u8,
}

enum TableResult<'s> {
    Miss,
    Reject(&'s RouteEntry),
    Found(&'s RouteEntry, Vec<&'s NextHop>),
}

/// A successful FIB lookup.
struct Hit<'s> {
    route: &'s RouteEntry,
    rule: Option<u32>,
    /// Next hops the kernel may use (more than one: multipath, picked by hash).
    hops: Vec<&'s NextHop>,
    /// Found in the local table through the merged local+main trie: the kernel reports
    /// table main.
    merged: bool,
    /// IPv6 multipath + `suppress_ifgroup`: where the walk goes when the hash picks a
    /// suppressed sibling (then `hops` are the unsuppressed ones).
    alt: Option<Box<Result<Hit<'s>, Failure>>>,
}

impl Hit<'_> {
    /// The table the kernel reports for this result.
    fn table(&self) -> u32 {
        if self.merged {
            TABLE_MAIN
        } else {
            self.route.table
        }
    }
}

/// A failed FIB lookup.
struct Failure {
    error: RouteError,
    kind: VerdictKind,
    table: Option<u32>,
    rule: Option<u32>,
    route: Option<String>,
    reason: String,
}

struct Engine<'s> {
    st: &'s RoutingState,
    steps: Vec<Step>,
    stage: Stage,
    /// Hash-dependent branches followed so far (bounded: each one walks the rest of
    /// the rules again).
    branches: u32,
}

/// At most this many hash-dependent branches per lookup.
const MAX_BRANCHES: u32 = 8;

fn is_v4_multicast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.is_multicast())
}

/// What a packet to limited broadcast (else multicast) sent without a lookup is.
fn broadcast_kind(dst: IpAddr) -> VerdictKind {
    if is_lbcast(dst) {
        VerdictKind::Broadcast
    } else {
        VerdictKind::Multicast
    }
}

fn is_lbcast(a: IpAddr) -> bool {
    a == IpAddr::V4(Ipv4Addr::BROADCAST)
}

fn is_zeronet(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.octets()[0] == 0)
}

fn is_loopback4(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.is_loopback())
}

fn unspecified(f: Family) -> IpAddr {
    match f {
        Family::Inet4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// IPv6 destinations that need a route on the given interface (rt6_need_strict).
fn v6_need_strict(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v) => {
            v.is_multicast() || v.is_loopback() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
        IpAddr::V4(_) => false,
    }
}

/// A route's scope as the kernel numbers it (not printed: universe, 0).
fn scope_num(r: &RouteEntry) -> u8 {
    match r.scope.as_deref() {
        None | Some("global") | Some("universe") => 0,
        Some("site") => 200,
        Some("link") => 253,
        Some("host") => 254,
        Some("nowhere") => 255,
        Some(n) => n.parse().unwrap_or(0),
    }
}

const SCOPE_LINK: u8 = 253;
const SCOPE_HOST: u8 = 254;

/// IPV6_DECODE_PREF: low 1, medium 2, high 3.
fn pref_bits(pref: Option<&str>) -> u32 {
    match pref {
        Some("high") => 3,
        Some("low") => 1,
        _ => 2,
    }
}

fn addr_or_none(a: Option<IpAddr>) -> String {
    a.map_or_else(|| "(none)".to_string(), |a| a.to_string())
}

fn route_error_kind(kind: RouteKind, family: Family) -> (RouteError, VerdictKind, &'static str) {
    match (kind, family) {
        (RouteKind::Blackhole, _) => (
            RouteError::InvalidArgument,
            VerdictKind::Blackhole,
            "a blackhole route discards it silently",
        ),
        (RouteKind::Prohibit, _) => (
            RouteError::PermissionDenied,
            VerdictKind::Prohibit,
            "a prohibit route rejects it (ICMP administratively prohibited)",
        ),
        _ => (
            RouteError::HostUnreachable,
            VerdictKind::Unreachable,
            "an unreachable route rejects it (ICMP host unreachable)",
        ),
    }
}

impl<'s> Engine<'s> {
    fn step(&mut self, rule: Option<&RuleEntry>, matched: bool, note: impl Into<String>) {
        self.steps.push(Step {
            stage: self.stage,
            priority: rule.map(|r| r.priority),
            rule: rule.map(|r| r.text.clone()),
            matched,
            table: None,
            route: None,
            note: note.into(),
        });
    }

    fn table_step(
        &mut self,
        rule: Option<&RuleEntry>,
        table: u32,
        route: Option<&RouteEntry>,
        note: impl Into<String>,
    ) {
        self.steps.push(Step {
            stage: self.stage,
            priority: rule.map(|r| r.priority),
            rule: rule.map(|r| r.text.clone()),
            matched: true,
            table: Some(table),
            route: route.map(|r| r.text.clone()),
            note: note.into(),
        });
    }

    fn check(&mut self, note: impl Into<String>) {
        let stage = self.stage;
        self.stage = Stage::Check;
        self.step(None, true, note);
        self.stage = stage;
    }

    // ---- state helpers ------------------------------------------------------------

    fn sysctl(&self, key: &str) -> Option<i64> {
        self.st.sysctl_int(key)
    }

    fn conf4(&self, dev: &str, leaf: &str) -> Option<i64> {
        self.sysctl(&format!("net.ipv4.conf.{dev}.{leaf}"))
    }

    /// IN_DEV_ORCONF: `all` or the device.
    fn orconf4(&self, dev: &str, leaf: &str, default: i64) -> bool {
        self.conf4("all", leaf).unwrap_or(default) != 0
            || self.conf4(dev, leaf).unwrap_or(default) != 0
    }

    /// IN_DEV_RPFILTER: max(all, device).
    fn rp_filter(&self, dev: &str) -> i64 {
        self.conf4("all", "rp_filter")
            .unwrap_or(0)
            .max(self.conf4(dev, "rp_filter").unwrap_or(0))
    }

    /// IN_DEV_FORWARD: the device's own value (writing `all` copies to every device).
    fn forwarding4(&self, dev: &str) -> bool {
        self.conf4(dev, "forwarding")
            .or_else(|| self.conf4("all", "forwarding"))
            .or_else(|| self.sysctl("net.ipv4.ip_forward"))
            .unwrap_or(0)
            != 0
    }

    fn forwarding6(&self) -> bool {
        self.sysctl("net.ipv6.conf.all.forwarding").unwrap_or(0) != 0
    }

    fn ignore_linkdown(&self, family: Family, dev: &str) -> bool {
        match family {
            Family::Inet4 => self.orconf4(dev, "ignore_routes_with_linkdown", 0),
            Family::Inet6 => {
                self.sysctl(&format!("net.ipv6.conf.{dev}.ignore_routes_with_linkdown"))
                    .or_else(|| self.sysctl("net.ipv6.conf.all.ignore_routes_with_linkdown"))
                    .unwrap_or(0)
                    != 0
            }
        }
    }

    /// A next hop the kernel will not use. The printed flags are the truth: the kernel
    /// deletes routes through an interface that goes down (except IPv4 `local` routes,
    /// which stay and keep working), flags multipath next hops `dead`, and adds `dead` to
    /// `linkdown` when `ignore_routes_with_linkdown` applies. Link state is not used to
    /// second-guess them (IPv6 `local` routes, for one, never get `linkdown`).
    fn nh_dead(&self, nh: &NextHop) -> bool {
        nh.dead
    }

    fn nh_linkdown(&self, nh: &NextHop) -> bool {
        nh.linkdown
    }

    /// The gateway the kernel really uses. When a route is added, each IPv4 gateway is
    /// resolved once, with oif = the next hop's device and at least link scope: first in
    /// the route's own table (unless that is main), then through the rules. If that finds
    /// a `local` route (the gateway is an address of that very device) the next hop gets
    /// host scope and the kernel sends directly to the destination, ignoring the gateway.
    /// `onlink` next hops always keep theirs.
    ///
    /// The resolution happened under the rules of that moment, which no output shows;
    /// the model assumes the local table was reached first (as with `0: lookup local`).
    fn effective_via(&self, route: &RouteEntry, nh: &NextHop) -> Option<IpAddr> {
        let (Some(via @ IpAddr::V4(_)), Some(dev)) = (nh.via, nh.dev.as_deref()) else {
            return nh.via;
        };
        if nh.onlink {
            return Some(via);
        }
        if route.table != TABLE_MAIN {
            let flow = Flow {
                family: Family::Inet4,
                src: None,
                dst: via,
                iif: "lo",
                oif: Some(dev),
                mark: 0,
                proto: 0,
                sport: 0,
                dport: 0,
                tos: 0,
            };
            let opts = Opts {
                oif: Some(dev),
                strict: false,
                ignore_linkstate: true,
                min_scope: SCOPE_LINK,
            };
            if let TableResult::Found(r, _) = self.table4(&[route.table], &flow, &opts) {
                return if r.kind == RouteKind::Local || scope_num(r) >= SCOPE_HOST {
                    None
                } else {
                    Some(via)
                };
            }
        }
        let own = self
            .st
            .links
            .get(dev)
            .is_some_and(|l| l.addrs.iter().any(|a| a.addr() == via))
            || self.st.routes.iter().any(|r| {
                r.family == Family::Inet4
                    && r.table == TABLE_LOCAL
                    && r.kind == RouteKind::Local
                    && r.dst.contains(&via)
                    && r.nexthops.iter().any(|h| h.dev.as_deref() == Some(dev))
            });
        (!own).then_some(via)
    }

    /// Usable by the lookup at all (dead, or linkdown while ignored).
    fn nh_alive(&self, family: Family, nh: &NextHop, ignore_linkstate: bool) -> bool {
        if self.nh_dead(nh) {
            return false;
        }
        if ignore_linkstate || !self.nh_linkdown(nh) {
            return true;
        }
        !self.ignore_linkdown(family, nh.dev.as_deref().unwrap_or("lo"))
    }

    /// An address configured on any interface (up or not).
    fn is_configured(&self, addr: IpAddr) -> bool {
        self.st
            .links
            .values()
            .any(|l| l.addrs.iter().any(|n| n.addr() == addr))
    }

    /// IPv4 `__ip_dev_find`'s device: the interface `addr` is configured on, else the
    /// device of a `local` route in the local table covering it.
    fn dev_of4(&self, addr: IpAddr) -> Option<String> {
        let mut links: Vec<(&String, &super::types::LinkState)> = self.st.links.iter().collect();
        links.sort_by_key(|(_, l)| l.index);
        if let Some((name, _)) = links
            .iter()
            .find(|(_, l)| l.addrs.iter().any(|n| n.addr() == addr))
        {
            return Some((*name).clone());
        }
        self.st
            .routes
            .iter()
            .filter(|r| {
                r.family == Family::Inet4
                    && r.table == TABLE_LOCAL
                    && r.kind == RouteKind::Local
                    && r.dst.contains(&addr)
            })
            .max_by_key(|r| r.dst.prefix_len())
            .and_then(|r| r.nexthops.first()?.dev.clone())
    }

    fn has_v4_addr(&self, dev: &str) -> bool {
        self.st
            .links
            .get(dev)
            .is_some_and(|l| l.addrs.iter().any(|n| matches!(n.addr(), IpAddr::V4(_))))
    }

    /// IPv4 `__ip_dev_find`: configured, or covered by a `local` route of the local
    /// table — which, without custom rules, is the trie merged with main, so a `local`
    /// route in main counts too.
    fn is_local4(&self, addr: IpAddr) -> bool {
        if self.is_configured(addr) {
            return true;
        }
        let flow = Flow {
            family: Family::Inet4,
            src: None,
            dst: addr,
            iif: "lo",
            oif: None,
            mark: 0,
            proto: 0,
            sport: 0,
            dport: 0,
            tos: 0,
        };
        let opts = Opts {
            oif: None,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let tables: &[u32] = if self.custom_rules4() {
            &[TABLE_LOCAL]
        } else {
            &[TABLE_LOCAL, TABLE_MAIN]
        };
        matches!(self.table4(tables, &flow, &opts), TableResult::Found(r, _) if r.kind == RouteKind::Local)
    }

    /// `fib4_has_custom_rules`: the kernel sets it when any rule is added. A rule list
    /// equal to the three defaults is taken as never customised.
    fn custom_rules4(&self) -> bool {
        let rules: Vec<&RuleEntry> = self.st.rules_of(Family::Inet4).collect();
        rules.len() != 3 || !rules.iter().all(|r| r.is_default())
    }

    /// `fib_has_custom_local_routes`: a `local` route someone added (not the kernel's).
    fn custom_local_routes4(&self) -> bool {
        self.st.routes.iter().any(|r| {
            r.family == Family::Inet4
                && r.kind == RouteKind::Local
                && r.protocol.as_deref() != Some("kernel")
        })
    }

    fn link_group(&self, dev: Option<&str>) -> Option<u32> {
        dev.and_then(|d| self.st.links.get(d)).map(|l| l.group)
    }

    // ---- table lookups ----------------------------------------------------------

    fn table(&self, family: Family, tables: &[u32], flow: &Flow, o: &Opts) -> TableResult<'s> {
        match family {
            Family::Inet4 => self.table4(tables, flow, o),
            Family::Inet6 => self.table6(tables, flow, o),
        }
    }

    /// `fib_table_lookup`: longest prefix first; within a prefix, TOS-specific routes
    /// first, then by metric; reject types answer at once (before any next-hop check);
    /// other routes need a next hop that is alive and, with an oif, on that device.
    fn table4(&self, tables: &[u32], flow: &Flow, o: &Opts) -> TableResult<'s> {
        let st = self.st;
        let mut cands: Vec<&'s RouteEntry> = st
            .routes
            .iter()
            .filter(|r| {
                r.family == Family::Inet4 && tables.contains(&r.table) && r.dst.contains(&flow.dst)
            })
            .collect();
        cands.sort_by_key(|r| (Reverse(r.dst.prefix_len()), Reverse(r.tos), r.metric));
        for r in cands {
            if r.tos != 0 && r.tos != flow.tos & 0x1c {
                continue;
            }
            if scope_num(r) < o.min_scope {
                continue;
            }
            if r.kind == RouteKind::Other {
                continue;
            }
            if r.kind.is_reject() {
                return TableResult::Reject(r);
            }
            if !r.nexthops.is_empty() && r.nexthops.iter().all(|nh| self.nh_dead(nh)) {
                continue;
            }
            let alive: Vec<&'s NextHop> = r
                .nexthops
                .iter()
                .filter(|nh| self.nh_alive(Family::Inet4, nh, o.ignore_linkstate))
                .collect();
            if r.nexthops.is_empty() {
                if o.oif.is_none() {
                    return TableResult::Found(r, Vec::new());
                }
                continue;
            }
            let first = alive
                .iter()
                .find(|nh| o.oif.is_none_or(|oif| nh.dev.as_deref() == Some(oif)));
            let Some(first) = first else {
                continue;
            };
            let hops = if o.oif.is_some() {
                vec![*first]
            } else {
                alive.clone()
            };
            return TableResult::Found(r, hops);
        }
        TableResult::Miss
    }

    /// `fib6_table_lookup` + `fib6_select_path`: the trie nodes containing the
    /// destination, longest first; in a node the routes of the lowest metric are scored
    /// (device = oif: 2, router preference on top) and the first best wins; only when
    /// none of them is usable are the higher metrics considered; a node with nothing
    /// usable hands over to the next one. Reject routes sit on `lo` and compete like any
    /// other.
    ///
    /// Source-specific routes (`from PREFIX`) hang in a subtree of their destination
    /// node. The first descent (`fib6_node_lookup_1`) looks only into that subtree: a
    /// destination prefix with source-specific routes none of which matches the source
    /// is skipped *including its plain routes* (except `::/0`, the root, where the kernel
    /// falls back when the descent finds nothing). Those are only reached when
    /// backtracking (`fib6_backtrack`) after a matching node had nothing usable: the
    /// remaining (shorter) source nodes, then the prefix's plain routes, then the parents.
    ///
    /// Not visible in any output, so not modelled: when the plain routes of a prefix with
    /// a source subtree are deleted (an interface went down), the kernel's node keeps a
    /// leaf borrowed from a more specific prefix and then only reaches the subtree for
    /// destinations inside that prefix; for the others it falls back to shorter prefixes.
    fn table6(&self, tables: &[u32], flow: &Flow, o: &Opts) -> TableResult<'s> {
        let st = self.st;
        let src = flow.src.unwrap_or(unspecified(Family::Inet6));
        let cands: Vec<&'s RouteEntry> = st
            .routes
            .iter()
            .filter(|r| {
                r.family == Family::Inet6
                    && tables.contains(&r.table)
                    && r.dst.contains(&flow.dst)
                    && r.kind != RouteKind::Other
            })
            .collect();
        let specific = |r: &RouteEntry| r.src.is_some_and(|s| s.prefix_len() > 0);
        let mut dsts: Vec<ipnet::IpNet> = cands.iter().map(|r| r.dst).collect();
        dsts.sort_by_key(|d| Reverse(d.prefix_len()));
        dsts.dedup();
        // The nodes in visiting order, each a list of routes in printed order.
        let mut nodes: Vec<Vec<&'s RouteEntry>> = Vec::new();
        for d in dsts {
            let at: Vec<&'s RouteEntry> = cands.iter().copied().filter(|r| r.dst == d).collect();
            let plain: Vec<&'s RouteEntry> = at.iter().copied().filter(|r| !specific(r)).collect();
            let has_subtree = at.iter().any(|r| specific(r));
            let mut srcs: Vec<ipnet::IpNet> = at
                .iter()
                .filter_map(|r| r.src.filter(|s| s.prefix_len() > 0 && s.contains(&src)))
                .collect();
            srcs.sort_by_key(|s| Reverse(s.prefix_len()));
            srcs.dedup();
            // The first descent skips this prefix entirely — except the root (::/0):
            // when the descent finds nothing the kernel falls back to the root node.
            if nodes.is_empty() && has_subtree && srcs.is_empty() && d.prefix_len() > 0 {
                continue;
            }
            for s in srcs {
                nodes.push(at.iter().copied().filter(|r| r.src == Some(s)).collect());
            }
            if !plain.is_empty() {
                nodes.push(plain);
            }
        }
        for mut group in nodes {
            group.sort_by_key(|r| r.metric);
            // Each next hop of a multipath route is its own sibling entry in the kernel.
            let entries: Vec<(&'s RouteEntry, Option<&'s NextHop>)> = group
                .iter()
                .flat_map(|r| {
                    if r.nexthops.is_empty() {
                        vec![(*r, None)]
                    } else {
                        r.nexthops.iter().map(|nh| (*r, Some(nh))).collect()
                    }
                })
                .collect();
            let Some(m0) = entries.first().map(|(r, _)| r.metric) else {
                continue;
            };
            let pick = |same: bool| {
                let mut best: Option<(u32, (&'s RouteEntry, Option<&'s NextHop>))> = None;
                for e in entries.iter().filter(|(r, _)| (r.metric == m0) == same) {
                    if let Some(s) = self.score6(e.0, e.1, o) {
                        if best.is_none_or(|(b, _)| s > b) {
                            best = Some((s, *e));
                        }
                    }
                }
                best.map(|(_, e)| e)
            };
            let Some((r, nh)) = pick(true).or_else(|| pick(false)) else {
                continue;
            };
            if r.kind.is_reject() {
                return TableResult::Reject(r);
            }
            let hops: Vec<&'s NextHop> = if r.nexthops.len() > 1 {
                r.nexthops
                    .iter()
                    .filter(|h| {
                        self.nh_alive(Family::Inet6, h, o.ignore_linkstate)
                            && (!o.strict || o.oif.is_none_or(|oif| h.dev.as_deref() == Some(oif)))
                    })
                    .collect()
            } else {
                nh.into_iter().collect()
            };
            return TableResult::Found(r, hops);
        }
        TableResult::Miss
    }

    /// `find_match`/`rt6_score_route`: `None` when unusable.
    fn score6(&self, r: &RouteEntry, nh: Option<&NextHop>, o: &Opts) -> Option<u32> {
        let dev = nh.and_then(|n| n.dev.as_deref()).unwrap_or("lo");
        if let Some(nh) = nh {
            if !self.nh_alive(Family::Inet6, nh, o.ignore_linkstate) {
                return None;
            }
        }
        let m = if o.oif.is_none_or(|oif| oif == dev) {
            2
        } else {
            0
        };
        if m == 0 && o.strict {
            return None;
        }
        Some(m | (pref_bits(r.pref.as_deref()) << 2))
    }

    // ---- rules ---------------------------------------------------------------------

    /// Why the rule's selectors do not match (`Err`), before `not`.
    fn selectors(&self, r: &RuleEntry, f: &Flow) -> Result<(), String> {
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
                    ip_proto_name(p),
                    if f.proto == 0 {
                        "unset".to_string()
                    } else {
                        ip_proto_name(f.proto)
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

    fn rule_matches(&self, r: &RuleEntry, f: &Flow) -> Result<(), String> {
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
    fn fib_lookup(&mut self, flow: &Flow, o: &Opts) -> Result<Hit<'s>, Failure> {
        if flow.family == Family::Inet4 && !self.custom_rules4() {
            return self.merged_lookup4(flow, o);
        }
        self.fib_lookup_from(flow, o, 0)
    }

    /// The rule walk from the `start`-th rule of the family.
    fn fib_lookup_from(&mut self, flow: &Flow, o: &Opts, start: usize) -> Result<Hit<'s>, Failure> {
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
    fn merged_lookup4(&mut self, flow: &Flow, o: &Opts) -> Result<Hit<'s>, Failure> {
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

    // ---- verdicts ------------------------------------------------------------------

    fn failed(&self, f: Failure) -> Verdict {
        Verdict {
            kind: f.kind,
            interface: None,
            via: None,
            table: f.table,
            rule: f.rule,
            route: f.route,
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: Some(f.error),
            reason: f.reason,
        }
    }

    fn dropped(&self, error: RouteError, reason: impl Into<String>) -> Verdict {
        Verdict {
            error: Some(error),
            ..Verdict::new(VerdictKind::Drop, reason)
        }
    }

    /// A verdict that names the route found.
    fn found(&self, hit: &Hit, kind: VerdictKind, hops: &[&NextHop], reason: String) -> Verdict {
        let candidates: Vec<(String, Option<IpAddr>)> = hops
            .iter()
            .map(|nh| {
                (
                    nh.dev.clone().unwrap_or_default(),
                    self.effective_via(hit.route, nh),
                )
            })
            .collect();
        let same_dev = candidates.windows(2).all(|w| w[0].0 == w[1].0);
        let same_via = candidates.windows(2).all(|w| w[0].1 == w[1].1);
        Verdict {
            kind,
            interface: candidates
                .first()
                .filter(|_| same_dev)
                .map(|c| c.0.clone())
                .filter(|d| !d.is_empty()),
            via: candidates.first().filter(|_| same_via).and_then(|c| c.1),
            table: Some(hit.table()),
            rule: hit.rule,
            route: Some(hit.route.text.clone()),
            candidates,
            alternatives: Vec::new(),
            error: None,
            reason,
        }
    }

    /// Local delivery: the kernel reports `dev lo`.
    fn delivered(&self, hit: &Hit, kind: VerdictKind, reason: String) -> Verdict {
        Verdict {
            kind,
            interface: Some("lo".into()),
            via: None,
            table: Some(hit.table()),
            rule: hit.rule,
            route: Some(hit.route.text.clone()),
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason,
        }
    }

    fn describe_hops(hops: &[&NextHop]) -> String {
        let one = |nh: &NextHop| match (&nh.dev, nh.via) {
            (Some(d), Some(v)) => format!("via {v} dev {d}"),
            (Some(d), None) => format!("dev {d}"),
            (None, Some(v)) => format!("via {v}"),
            (None, None) => "?".into(),
        };
        match hops {
            [] => "nowhere".into(),
            [nh] => one(nh),
            many => format!(
                "one of {} (multipath: the kernel hashes the flow)",
                many.iter().map(|n| one(n)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    // ---- paths ---------------------------------------------------------------------

    fn route(&mut self, q: &Query) -> Verdict {
        let family = Family::of(&q.dst);
        if family != q.family {
            return self.dropped(
                RouteError::InvalidArgument,
                format!("destination {} is not an {} address", q.dst, q.family),
            );
        }
        if let Some(src) = q.src.filter(|s| Family::of(s) != family) {
            return self.dropped(
                RouteError::InvalidArgument,
                format!("source {src} and destination {} differ in family", q.dst),
            );
        }
        match (&q.iif, family) {
            (Some(iif), Family::Inet4) => self.input4(q, iif),
            (Some(iif), Family::Inet6) => self.input6(q, iif),
            (None, Family::Inet4) => self.output4(q),
            (None, Family::Inet6) => self.output6(q),
        }
    }

    fn flow<'q>(&self, q: &'q Query, iif: &'q str, oif: Option<&'q str>) -> Flow<'q> {
        Flow {
            family: q.family,
            src: q.src.filter(|s| !s.is_unspecified()),
            dst: q.dst,
            iif,
            oif,
            mark: q.mark,
            proto: q.ipproto.unwrap_or(0),
            sport: q.sport.unwrap_or(0),
            dport: q.dport.unwrap_or(0),
            tos: q.tos,
        }
    }

    /// `ip_route_output_key_hash_rcu`.
    fn output4(&mut self, q: &Query) -> Verdict {
        let oif = q.oif.as_deref();
        if let Some(oif) = oif {
            match self.st.links.get(oif) {
                None if !self.st.links.is_empty() => {
                    return self.dropped(
                        RouteError::NoSuchDevice,
                        format!("oif {oif}: no such interface"),
                    );
                }
                Some(link) if !link.up && oif != "lo" => {
                    self.check(format!("oif {oif} is down"));
                    return Verdict {
                        kind: VerdictKind::Unreachable,
                        ..self.dropped(
                            RouteError::NetworkUnreachable,
                            format!("the output interface {oif} is down (network unreachable)"),
                        )
                    };
                }
                _ => {}
            }
        }
        self.output4_lookup(q, oif)
    }

    fn output4_lookup(&mut self, q: &Query, oif: Option<&str>) -> Verdict {
        let dst = q.dst;
        let on_oif = |kind: VerdictKind, oif: &str, reason: String| Verdict {
            kind,
            interface: Some(oif.to_string()),
            via: None,
            table: None,
            rule: None,
            route: None,
            candidates: vec![(oif.to_string(), None)],
            alternatives: Vec::new(),
            error: None,
            reason,
        };
        if let Some(oif) = oif {
            let local_mc = matches!(dst, IpAddr::V4(v) if v.octets()[..3] == [224, 0, 0]);
            if (is_lbcast(dst) || local_mc) && q.src.is_some_and(is_loopback4) && oif != "lo" {
                return self.dropped(
                    RouteError::InvalidArgument,
                    format!("a 127.0.0.0/8 source may only leave via lo, not {oif}"),
                );
            }
            if is_lbcast(dst) || local_mc {
                return on_oif(
                    broadcast_kind(dst),
                    oif,
                    format!("{dst} with an output interface is sent on {oif} without a lookup"),
                );
            }
        }
        if let Some(src) = q.src.filter(|s| !s.is_unspecified()) {
            if is_v4_multicast(src) || is_lbcast(src) || is_zeronet(src) {
                return self.dropped(
                    RouteError::InvalidArgument,
                    format!("source {src} is multicast/broadcast/zero: invalid"),
                );
            }
            if !self.st.links.is_empty() && !self.is_local4(src) {
                self.check(format!(
                    "source {src} is not an address of this host: the kernel refuses to route it"
                ));
                return Verdict {
                    kind: VerdictKind::Unreachable,
                    ..self.dropped(
                        RouteError::NetworkUnreachable,
                        format!(
                            "locally generated packets may only use this host's addresses as source; \
                             {src} is not one (network unreachable)"
                        ),
                    )
                };
            }
        }
        if let (None, Some(src)) = (oif, q.src.filter(|s| !s.is_unspecified())) {
            if is_lbcast(dst) || is_v4_multicast(dst) {
                // `ip_route_output_key_hash_rcu`: with a source and no output interface,
                // limited broadcast and multicast leave through the source's own
                // interface, without a lookup.
                if let Some(dev) = self.dev_of4(src) {
                    return on_oif(
                        broadcast_kind(dst),
                        &dev,
                        format!(
                            "{dst} from {src}: sent on {dev}, the interface of its source, without a lookup"
                        ),
                    );
                }
            }
        }
        if dst.is_unspecified() {
            let mut v = Verdict::new(
                VerdictKind::Local,
                "0.0.0.0 is this host: delivered over lo",
            );
            v.interface = Some("lo".into());
            return v;
        }
        let flow = self.flow(q, "lo", oif);
        let opts = Opts {
            oif,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let loopback_src = q.src.is_some_and(is_loopback4);
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(f) => {
                if let Some(oif) = oif.filter(|o| *o != "lo" && loopback_src) {
                    return self.dropped(
                        RouteError::InvalidArgument,
                        format!("a 127.0.0.0/8 source may only leave via lo, not {oif}"),
                    );
                }
                if let Some(oif) = oif {
                    self.check(format!(
                        "lookup failed ({}), but an output interface is set: the kernel assumes {dst} is on-link on {oif}",
                        f.error.message()
                    ));
                    return on_oif(
                        VerdictKind::Unicast,
                        oif,
                        format!(
                            "no usable route via {oif} ({}); with an output interface the kernel \
                             sends on-link there anyway",
                            f.reason
                        ),
                    );
                }
                return self.failed(f);
            }
        };
        let route = hit.route;
        if route.kind == RouteKind::Local {
            return self.delivered(
                &hit,
                VerdictKind::Local,
                format!(
                    "{dst} is an address of this host ({}): delivered locally over lo",
                    route.text
                ),
            );
        }
        let hops = hit.hops.clone();
        let dev_is_lo = hops.first().and_then(|n| n.dev.as_deref()) == Some("lo");
        if q.src.is_some_and(is_loopback4) && !dev_is_lo {
            return self.dropped(
                RouteError::InvalidArgument,
                "a 127.0.0.0/8 source may only leave via lo",
            );
        }
        let kind = if is_lbcast(dst) {
            VerdictKind::Broadcast
        } else if is_v4_multicast(dst) {
            VerdictKind::Multicast
        } else if is_zeronet(dst) {
            return self.dropped(RouteError::InvalidArgument, "destination in 0.0.0.0/8");
        } else {
            match route.kind {
                RouteKind::Broadcast => VerdictKind::Broadcast,
                RouteKind::Multicast => VerdictKind::Multicast,
                RouteKind::Anycast => VerdictKind::Anycast,
                _ => VerdictKind::Unicast,
            }
        };
        let reason = format!(
            "rule {} → table {}: {} {}",
            hit.rule
                .map_or_else(|| "(default)".into(), |p| p.to_string()),
            table_name(route.table),
            route.dst,
            Self::describe_hops(&hops)
        );
        self.found(&hit, kind, &hops, reason)
    }

    /// The arrival interface must exist (when links are known); a down one is noted.
    fn check_iif(&mut self, iif: &str) -> Option<Verdict> {
        if !self.st.links.is_empty() && !self.st.links.contains_key(iif) {
            return Some(self.dropped(
                RouteError::NoSuchDevice,
                format!("iif {iif}: no such interface"),
            ));
        }
        if self.st.links.get(iif).is_some_and(|l| !l.up) {
            self.check(format!(
                "iif {iif} is down: no packet can arrive there; routing it as if it did"
            ));
        }
        None
    }

    /// `ip_route_input_slow`.
    fn input4(&mut self, q: &Query, iif: &str) -> Verdict {
        if let Some(v) = self.check_iif(iif) {
            return v;
        }
        let src = q.src.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let dst = q.dst;
        let martian_src = |e: &mut Self, why: String| {
            e.check(format!("martian source: {why}"));
            e.dropped(
                RouteError::InvalidArgument,
                format!("martian source: {why}"),
            )
        };
        let martian_dst = |e: &mut Self, why: String| {
            e.check(format!("martian destination: {why}"));
            e.dropped(
                RouteError::InvalidArgument,
                format!("martian destination: {why}"),
            )
        };
        if is_v4_multicast(dst) {
            return Verdict {
                kind: VerdictKind::Multicast,
                ..self.dropped(
                    RouteError::InvalidArgument,
                    "multicast input (group membership, multicast routing) is not modelled",
                )
            };
        }
        if is_v4_multicast(src) || is_lbcast(src) {
            return martian_src(self, format!("{src} is multicast/broadcast"));
        }
        if is_lbcast(dst) || (src.is_unspecified() && dst.is_unspecified()) {
            return self.broadcast_input4(q, iif, src, None);
        }
        if is_zeronet(src) {
            return martian_src(self, format!("{src} is in 0.0.0.0/8 (no source given?)"));
        }
        if is_zeronet(dst) {
            return martian_dst(self, format!("{dst} is in 0.0.0.0/8"));
        }
        let localnet = self.orconf4(iif, "route_localnet", 0);
        if is_loopback4(dst) && !localnet {
            return martian_dst(self, format!("{dst} is loopback (route_localnet=0)"));
        }
        if is_loopback4(src) && !is_loopback4(dst) && !localnet {
            return martian_src(self, format!("{src} is loopback (route_localnet=0)"));
        }
        let flow = self.flow(q, iif, None);
        let opts = Opts {
            oif: None,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let forwarding = self.forwarding4(iif);
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(mut f) => {
                if !forwarding {
                    self.check(format!(
                        "no route ({}), and forwarding is off on {iif}: the kernel answers host unreachable",
                        f.error.message()
                    ));
                    f.error = RouteError::HostUnreachable;
                    f.kind = VerdictKind::Unreachable;
                    f.reason = format!(
                        "{}; forwarding is off on {iif} (net.ipv4.conf.{iif}.forwarding=0), so host unreachable",
                        f.reason
                    );
                }
                return self.failed(f);
            }
        };
        let route = hit.route;
        match route.kind {
            RouteKind::Broadcast if !self.orconf4(iif, "bc_forwarding", 0) => {
                return self.broadcast_input4(q, iif, src, Some(&hit));
            }
            RouteKind::Local => {
                return match self.validate_source4(q, src, Some(dst), None, iif) {
                    Ok(()) => self.delivered(
                        &hit,
                        VerdictKind::Local,
                        format!("{dst} is an address of this host: delivered locally"),
                    ),
                    Err(why) => self.dropped(RouteError::InvalidArgument, why),
                };
            }
            _ => {}
        }
        if !forwarding {
            self.check(format!(
                "{dst} is not local and forwarding is off on {iif}: the kernel answers host unreachable"
            ));
            return Verdict {
                kind: VerdictKind::Unreachable,
                table: Some(route.table),
                rule: hit.rule,
                route: Some(route.text.clone()),
                ..self.dropped(
                    RouteError::HostUnreachable,
                    format!(
                        "{dst} would be forwarded, but forwarding is off on {iif} \
                         (net.ipv4.conf.{iif}.forwarding=0): host unreachable"
                    ),
                )
            };
        }
        if route.kind != RouteKind::Unicast && route.kind != RouteKind::Broadcast {
            return martian_dst(
                self,
                format!(
                    "the route to {dst} is {} (only unicast is forwarded)",
                    route.kind.name()
                ),
            );
        }
        let hops = hit.hops.clone();
        let mut pass = Vec::new();
        let mut fail = Vec::new();
        let mut first_err: Option<String> = None;
        for nh in &hops {
            match self.validate_source4(q, src, Some(dst), nh.dev.as_deref(), iif) {
                Ok(()) => pass.push(*nh),
                Err(why) => {
                    first_err.get_or_insert(why);
                    fail.push(*nh);
                }
            }
        }
        if pass.is_empty() {
            let why = first_err.unwrap_or_else(|| "route has no next hop".into());
            return Verdict {
                table: Some(route.table),
                rule: hit.rule,
                route: Some(route.text.clone()),
                ..self.dropped(RouteError::InvalidArgument, why)
            };
        }
        let reason = format!(
            "forwarded: rule {} → table {}: {} {}",
            hit.rule
                .map_or_else(|| "(default)".into(), |p| p.to_string()),
            table_name(route.table),
            route.dst,
            Self::describe_hops(&pass)
        );
        let mut v = self.found(&hit, VerdictKind::Unicast, &pass, reason);
        if !fail.is_empty() {
            v.reason.push_str(&format!(
                "; rp_filter drops the packet if the hash picks {}",
                Self::describe_hops(&fail)
            ));
            let mut alt = self.found(
                &hit,
                VerdictKind::Drop,
                &fail,
                first_err.unwrap_or_default(),
            );
            alt.error = Some(RouteError::InvalidArgument);
            v.alternatives.push(alt);
        }
        v
    }

    fn broadcast_input4(
        &mut self,
        q: &Query,
        iif: &str,
        src: IpAddr,
        hit: Option<&Hit>,
    ) -> Verdict {
        if !src.is_unspecified() {
            if let Err(why) = self.validate_source4(q, src, None, None, iif) {
                return self.dropped(RouteError::InvalidArgument, why);
            }
        }
        Verdict {
            kind: VerdictKind::Broadcast,
            interface: Some("lo".into()),
            via: None,
            table: hit.map(|h| h.table()),
            rule: hit.and_then(|h| h.rule),
            route: hit.map(|h| h.route.text.clone()),
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason: format!("{} is a broadcast address: received locally", q.dst),
        }
    }

    /// `fib_validate_source`: rp_filter and the source-address sanity checks of the input
    /// path. `oif` is the forward route's device (`None` for local delivery).
    fn validate_source4(
        &mut self,
        q: &Query,
        src: IpAddr,
        dst: Option<IpAddr>,
        oif: Option<&str>,
        iif: &str,
    ) -> Result<(), String> {
        let rpf = self.rp_filter(iif);
        let accept_local = self.orconf4(iif, "accept_local", 0);
        let redirects = self.orconf4(iif, "send_redirects", 1);
        if rpf == 0 && (oif != Some(iif) || !redirects) {
            if accept_local {
                return Ok(());
            }
            if !self.custom_rules4() && !self.custom_local_routes4() {
                if self.is_configured(src) {
                    let why = format!(
                        "source {src} is one of this host's own addresses (accept_local=0): martian source"
                    );
                    self.check(why.clone());
                    return Err(why);
                }
                return Ok(());
            }
        }
        let saved = self.stage;
        self.stage = Stage::RpFilter;
        let result = self.reverse_lookup4(q, src, dst, oif, iif, rpf, accept_local);
        self.stage = saved;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn reverse_lookup4(
        &mut self,
        q: &Query,
        src: IpAddr,
        dst: Option<IpAddr>,
        oif: Option<&str>,
        iif: &str,
        rpf: i64,
        accept_local: bool,
    ) -> Result<(), String> {
        let src_valid_mark = self.orconf4(iif, "src_valid_mark", 0);
        let mark = if src_valid_mark { q.mark } else { 0 };
        let rev_iif = oif.unwrap_or("lo");
        self.step(
            None,
            true,
            format!(
                "reverse lookup of {src} (rp_filter={rpf} on {iif}): iif {rev_iif}, mark {mark:#x}{}",
                if src_valid_mark || q.mark == 0 {
                    ""
                } else {
                    " (src_valid_mark=0: the packet's mark is not used)"
                }
            ),
        );
        let flow = Flow {
            family: Family::Inet4,
            src: dst.filter(|d| !d.is_unspecified()),
            dst: src,
            iif: rev_iif,
            oif: None,
            mark,
            proto: q.ipproto.unwrap_or(0),
            sport: q.dport.unwrap_or(0),
            dport: q.sport.unwrap_or(0),
            tos: q.tos,
        };
        let opts = Opts {
            oif: None,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(f) => {
                if rpf != 0 {
                    let why = format!(
                        "rp_filter: no route back to {src} ({}), so the source is not reachable via {iif}",
                        f.error.message()
                    );
                    self.step(None, true, why.clone());
                    return Err(why);
                }
                return Ok(());
            }
        };
        let kind = hit.route.kind;
        if kind != RouteKind::Unicast {
            if kind != RouteKind::Local {
                let why = format!(
                    "martian source: the route to {src} is {} ({})",
                    kind.name(),
                    hit.route.text
                );
                self.step(None, true, why.clone());
                return Err(why);
            }
            if !accept_local {
                let why =
                    format!("martian source: {src} is an address of this host (accept_local=0)");
                self.step(None, true, why.clone());
                return Err(why);
            }
        }
        let dev_match = hit
            .route
            .nexthops
            .iter()
            .any(|nh| nh.dev.as_deref() == Some(iif))
            || (kind == RouteKind::Local && iif == "lo");
        if dev_match {
            self.step(
                None,
                true,
                format!("the route back to {src} uses {iif}: source valid"),
            );
            return Ok(());
        }
        let back = Self::describe_hops(&hit.route.nexthops.iter().collect::<Vec<_>>());
        if !self.has_v4_addr(iif) {
            if rpf != 0 {
                let why = format!(
                    "rp_filter: {iif} has no IPv4 address, and the route back to {src} leaves {back}, not via {iif}"
                );
                self.step(None, true, why.clone());
                return Err(why);
            }
            return Ok(());
        }
        if rpf == 1 {
            let why = format!(
                "rp_filter (strict, 1): the route back to {src} leaves {back}, not via {iif}"
            );
            self.step(None, true, why.clone());
            return Err(why);
        }
        self.step(
            None,
            true,
            format!(
                "the route back to {src} leaves {back}, not via {iif}; {}",
                if rpf == 2 {
                    "loose rp_filter (2) only needs a route: source valid"
                } else {
                    "rp_filter off: source valid"
                }
            ),
        );
        Ok(())
    }

    /// `ip6_route_output`.
    fn output6(&mut self, q: &Query) -> Verdict {
        let oif = q.oif.as_deref();
        if let Some(oif) = oif {
            if !self.st.links.is_empty() && !self.st.links.contains_key(oif) {
                return self.dropped(
                    RouteError::NoSuchDevice,
                    format!("oif {oif}: no such interface"),
                );
            }
        }
        let src = q.src.filter(|s| !s.is_unspecified());
        let strict = v6_need_strict(q.dst) || (oif.is_some() && src.is_none());
        if strict && oif.is_some() {
            self.check(format!(
                "oif {} without a source address: only routes through {} qualify",
                oif.unwrap_or(""),
                oif.unwrap_or("")
            ));
        }
        let flow = self.flow(q, "lo", oif);
        let opts = Opts {
            oif,
            strict,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let result = self.fib_lookup(&flow, &opts);
        self.v6_result(q, result, false)
    }

    fn v6_result(&mut self, q: &Query, result: Result<Hit<'s>, Failure>, input: bool) -> Verdict {
        match result {
            Ok(mut hit) => {
                let alt = hit.alt.take();
                let mut v = self.v6_hit(q, &hit, input);
                if let Some(alt) = alt {
                    let other = self.v6_result(q, *alt, input);
                    v.alternatives.push(other);
                }
                v
            }
            Err(f) => self.failed(f),
        }
    }

    /// `ip6_route_input`: the lookup scores routes through the arrival interface higher
    /// (it is passed as the lookup's oif). There is no rp_filter for IPv6.
    fn input6(&mut self, q: &Query, iif: &str) -> Verdict {
        if let Some(v) = self.check_iif(iif) {
            return v;
        }
        let flow = self.flow(q, iif, None);
        let opts = Opts {
            oif: Some(iif),
            strict: v6_need_strict(q.dst),
            ignore_linkstate: false,
            min_scope: 0,
        };
        let result = self.fib_lookup(&flow, &opts);
        self.v6_result(q, result, true)
    }

    fn v6_hit(&mut self, q: &Query, hit: &Hit, input: bool) -> Verdict {
        let route = hit.route;
        match route.kind {
            RouteKind::Local => {
                return self.delivered(
                    hit,
                    VerdictKind::Local,
                    format!("{} is an address of this host: delivered locally", q.dst),
                )
            }
            RouteKind::Anycast => {
                return self.delivered(
                    hit,
                    VerdictKind::Anycast,
                    format!(
                        "{} is an anycast address of this host: delivered locally",
                        q.dst
                    ),
                )
            }
            _ => {}
        }
        let kind = match route.kind {
            RouteKind::Multicast => VerdictKind::Multicast,
            RouteKind::Broadcast => VerdictKind::Broadcast,
            _ => VerdictKind::Unicast,
        };
        let hops = hit.hops.clone();
        let reason = format!(
            "{}rule {} → table {}: {} {}",
            if input { "forwarded: " } else { "" },
            hit.rule
                .map_or_else(|| "(default)".into(), |p| p.to_string()),
            table_name(route.table),
            route.dst,
            Self::describe_hops(&hops)
        );
        let mut v = self.found(hit, kind, &hops, reason);
        if input && kind == VerdictKind::Unicast && !self.forwarding6() {
            self.check(
                "net.ipv6.conf.all.forwarding=0: ip6_forward drops the packet (route lookup still succeeds)",
            );
            v.kind = VerdictKind::Drop;
            v.reason = format!(
                "{}; but IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): dropped in ip6_forward",
                v.reason
            );
        }
        v
    }
}

impl Verdict {
    fn new(kind: VerdictKind, reason: impl Into<String>) -> Self {
        Verdict {
            kind,
            interface: None,
            via: None,
            table: None,
            rule: None,
            route: None,
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason: reason.into(),
        }
    }
}

/// Human one-liner for a query, for reports: `10.0.0.1 → 8.8.8.8 iif eth0 mark 0x1`.
pub fn describe_query(q: &Query) -> String {
    let mut s = format!("{} → {}", addr_or_none(q.src), q.dst);
    if let Some(i) = &q.iif {
        s.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &q.oif {
        s.push_str(&format!(" oif {o}"));
    }
    if q.mark != 0 {
        s.push_str(&format!(" mark {:#x}", q.mark));
    }
    if let Some(p) = q.ipproto {
        s.push_str(&format!(" ipproto {}", ip_proto_name(p)));
    }
    if let Some(p) = q.sport {
        s.push_str(&format!(" sport {p}"));
    }
    if let Some(p) = q.dport {
        s.push_str(&format!(" dport {p}"));
    }
    if q.tos != 0 {
        s.push_str(&format!(" tos {:#x}", q.tos));
    }
    s
}
