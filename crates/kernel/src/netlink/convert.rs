//! Pure conversions between symroute's values and rtnetlink messages: `RuleSpec` and
//! `RouteSpec` to and from `RuleMessage`/`RouteMessage`, the links of a `HostView` from
//! link and address dumps, and the `ip`-style text of foreign objects for messages.
//! No I/O here, so everything is tested without root (round trips through bytes).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{DecodeError, Emitable, NlaBuffer, NlasIterator, Parseable};
use netlink_packet_core::{ParseableParametrized, NLA_TYPE_MASK};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::rule::{
    RuleAction as NlAction, RuleAttribute, RuleFlags, RuleHeader, RuleMessage,
};
use netlink_packet_route::AddressFamily;

use symroute_core::model::{Family, IpProto, Priority, TableId};
use symroute_core::plan::{Link, RouteKind, RouteSpec, RuleAction, RuleSpec, RT_PROTO};

/// The header's table byte for tables that only fit in the 32-bit attribute (linux/rtnetlink.h).
pub const RT_TABLE_COMPAT: u8 = 252;

pub fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::Inet4 => AddressFamily::Inet,
        Family::Inet6 => AddressFamily::Inet6,
    }
}

fn family_of(af: AddressFamily) -> Option<Family> {
    match af {
        AddressFamily::Inet => Some(Family::Inet4),
        AddressFamily::Inet6 => Some(Family::Inet6),
        _ => None,
    }
}

/// A table id as the 8-bit header field holds it: itself when it fits, else "see the
/// attribute" (the kernel reads FRA_TABLE/RTA_TABLE first anyway; we always send both).
fn header_table(id: u32) -> u8 {
    u8::try_from(id).unwrap_or(RT_TABLE_COMPAT)
}

// ---------------------------------------------------------------------------------------
// parsing, tolerant of what this crate version does not know

/// The attributes of a message, skipping any this crate version cannot decode (a newer
/// kernel may add attributes or grow one): symroute only needs a few well-known ones, and
/// an odd attribute must not hide the rest. A broken length stops there, since nothing
/// after it can be framed.
fn attributes<'a, A>(
    buf: &'a [u8],
    parse: impl Fn(&NlaBuffer<&'a [u8]>) -> Result<A, DecodeError>,
) -> Vec<A> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let Ok(nla) = nla else { break };
        if let Ok(a) = parse(&nla) {
            out.push(a);
        }
    }
    out
}

fn after(payload: &[u8], header_len: usize) -> &[u8] {
    payload.get(header_len..).unwrap_or_default()
}

/// An RTM_NEWRULE payload.
pub fn parse_rule(payload: &[u8]) -> Result<RuleMessage, DecodeError> {
    let header = RuleHeader::parse(payload)?;
    let mut msg = RuleMessage::default();
    msg.attributes = attributes(after(payload, header.buffer_len()), |nla| {
        RuleAttribute::parse(nla)
    });
    msg.header = header;
    Ok(msg)
}

/// An RTM_NEWROUTE payload.
pub fn parse_route(payload: &[u8]) -> Result<RouteMessage, DecodeError> {
    const RTA_ENCAP_TYPE: u16 = 21;
    let header = RouteHeader::parse(payload)?;
    let rest = after(payload, header.buffer_len());
    let (family, kind) = (header.address_family, header.kind);
    // Tunnel encapsulations are decoded by their type, which the kernel sends after them.
    let encap = attributes(rest, |nla| {
        if nla.kind() & NLA_TYPE_MASK != RTA_ENCAP_TYPE {
            return Err(DecodeError::from("not RTA_ENCAP_TYPE"));
        }
        RouteAttribute::parse_with_param(nla, (family, kind, RouteLwEnCapType::None))
    })
    .into_iter()
    .find_map(|a| match a {
        RouteAttribute::EncapType(t) => Some(t),
        _ => None,
    })
    .unwrap_or(RouteLwEnCapType::None);
    let mut msg = RouteMessage::default();
    msg.attributes = attributes(rest, |nla| {
        RouteAttribute::parse_with_param(nla, (family, kind, encap))
    });
    msg.header = header;
    Ok(msg)
}

/// An RTM_NEWLINK payload.
pub fn parse_link(payload: &[u8]) -> Result<LinkMessage, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let family = header.interface_family;
    let mut msg = LinkMessage::default();
    msg.attributes = attributes(after(payload, header.buffer_len()), |nla| {
        LinkAttribute::parse_with_param(nla, family)
    });
    msg.header = header;
    Ok(msg)
}

/// An RTM_NEWADDR payload.
pub fn parse_address(payload: &[u8]) -> Result<AddressMessage, DecodeError> {
    let header = AddressHeader::parse(payload)?;
    let mut msg = AddressMessage::default();
    msg.attributes = attributes(after(payload, header.buffer_len()), |nla| {
        AddressAttribute::parse(nla)
    });
    msg.header = header;
    Ok(msg)
}

// ---------------------------------------------------------------------------------------
// rules

/// The rule `ip -4|-6 rule add|del <spec.ip_args()>` would send. The same message deletes
/// it: the kernel matches a delete on every attribute given (priority, source, iif, table
/// or goto, fwmark/mask, suppress_prefixlength, protocol), so it can only hit this rule.
pub fn rule_message(spec: &RuleSpec) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(spec.family);
    let mut attrs = vec![RuleAttribute::Priority(spec.priority.get())];
    if let Some(net) = spec.from {
        msg.header.src_len = net.prefix_len();
        attrs.push(RuleAttribute::Source(net.addr()));
    }
    if spec.iif_lo {
        attrs.push(RuleAttribute::Iifname("lo".into()));
    }
    if let Some((mark, mask)) = spec.fwmark {
        attrs.push(RuleAttribute::FwMark(mark));
        attrs.push(RuleAttribute::FwMask(mask));
    }
    match spec.action {
        RuleAction::Lookup(table) => {
            msg.header.action = NlAction::ToTable;
            msg.header.table = header_table(table.id());
            attrs.push(RuleAttribute::Table(table.id()));
        }
        RuleAction::Goto(target) => {
            msg.header.action = NlAction::Goto;
            attrs.push(RuleAttribute::Goto(target.get()));
        }
        RuleAction::Nop => msg.header.action = NlAction::Nop,
    }
    if let Some(len) = spec.suppress_prefixlength {
        attrs.push(RuleAttribute::SuppressPrefixLen(len.into()));
    }
    attrs.push(RuleAttribute::Protocol(RouteProtocol::from(RT_PROTO)));
    msg.attributes = attrs;
    msg
}

/// The FRA_PROTOCOL tag (0 when absent: kernels before 4.17 have none, so nothing is ours).
pub fn rule_protocol(msg: &RuleMessage) -> u8 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Protocol(p) => Some(u8::from(*p)),
            _ => None,
        })
        .unwrap_or(0)
}

/// The priority; the kernel leaves FRA_PRIORITY out for 0 (the `lookup local` rule).
pub fn rule_priority(msg: &RuleMessage) -> Priority {
    Priority::from_kernel(
        msg.attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(0),
    )
}

/// `fwmark VALUE/MASK` as `ip rule` shows it: present when either attribute is (the kernel
/// omits FRA_FWMARK for value 0); a missing mask means all 32 bits.
pub fn rule_fwmark(msg: &RuleMessage) -> Option<(u32, u32)> {
    let (mut mark, mut mask) = (None, None);
    for a in &msg.attributes {
        match a {
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = Some(*v),
            _ => {}
        }
    }
    (mark.is_some() || mask.is_some()).then(|| (mark.unwrap_or(0), mask.unwrap_or(u32::MAX)))
}

fn rule_table(msg: &RuleMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(msg.header.table.into())
}

fn rule_goto(msg: &RuleMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Goto(t) => Some(*t),
        _ => None,
    })
}

/// Our rule, if the message is one (tagged with `RT_PROTO`) and of a shape symroute makes.
pub fn rule_spec(msg: &RuleMessage) -> Option<RuleSpec> {
    if rule_protocol(msg) != RT_PROTO {
        return None;
    }
    let family = family_of(msg.header.family)?;
    let action = match msg.header.action {
        NlAction::Goto => RuleAction::Goto(Priority::from_kernel(rule_goto(msg)?)),
        NlAction::Nop => RuleAction::Nop,
        NlAction::ToTable => match rule_table(msg) {
            0 => return None,
            t => RuleAction::Lookup(TableId::from_kernel(t)),
        },
        _ => return None,
    };
    // The kernel reports -1 (u32::MAX) when suppress_prefixlength is unset.
    let suppress_prefixlength = msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::SuppressPrefixLen(n) => u8::try_from(*n).ok(),
        _ => None,
    });
    let source = msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    });
    let from = match source {
        Some(ip) => Some(IpNet::new(ip, msg.header.src_len).ok()?),
        None if msg.header.src_len > 0 => return None,
        None => None,
    };
    // `iif lo` is the only interface selector symroute writes.
    let iif_lo = match msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Iifname(n) => Some(n.as_str()),
        _ => None,
    }) {
        Some("lo") => true,
        Some(_) => return None,
        None => false,
    };
    Some(RuleSpec {
        priority: rule_priority(msg),
        family,
        from,
        iif_lo,
        fwmark: rule_fwmark(msg),
        action,
        suppress_prefixlength,
    })
}

/// C's `%#x`, which `ip` uses for marks: no prefix on zero.
fn c_hex(v: u32) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn prefix_text(addr: IpAddr, len: u8) -> String {
    let host = if addr.is_ipv4() { 32 } else { 128 };
    if len == host {
        addr.to_string()
    } else {
        format!("{addr}/{len}")
    }
}

/// A rule as `ip rule` prints it (`3000: from all fwmark 0x1000000/0xf000000 lookup 100`),
/// for conflict messages. Covers the selectors and actions `ip` knows; a new attribute is
/// left out rather than guessed at.
pub fn rule_text(msg: &RuleMessage) -> String {
    let h = &msg.header;
    let mut s = format!("{}:", rule_priority(msg));
    if h.flags.contains(RuleFlags::Invert) {
        s += " not";
    }
    let src = msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    });
    match src {
        Some(ip) => s += &format!(" from {}", prefix_text(ip, h.src_len)),
        None if h.src_len > 0 => s += &format!(" from 0/{}", h.src_len),
        None => s += " from all",
    }
    for a in &msg.attributes {
        if let RuleAttribute::Destination(ip) = a {
            s += &format!(" to {}", prefix_text(*ip, h.dst_len));
        }
    }
    if h.tos != 0 {
        s += &format!(" tos {:#x}", h.tos);
    }
    if let Some((mark, mask)) = rule_fwmark(msg) {
        s += &format!(" fwmark {}", c_hex(mark));
        if mask != u32::MAX {
            s += &format!("/{}", c_hex(mask));
        }
    }
    // Selectors in the order `ip rule` prints them, whatever order the kernel sent.
    let mut selectors: Vec<(u8, String)> = msg
        .attributes
        .iter()
        .filter_map(|a| {
            let detached = |flag| {
                if h.flags.contains(flag) {
                    " [detached]"
                } else {
                    ""
                }
            };
            let range = |start: u16, end: u16| {
                if start == end {
                    start.to_string()
                } else {
                    format!("{start}-{end}")
                }
            };
            Some(match a {
                RuleAttribute::Iifname(n) => {
                    (0, format!(" iif {n}{}", detached(RuleFlags::IifDetached)))
                }
                RuleAttribute::Oifname(n) => {
                    (1, format!(" oif {n}{}", detached(RuleFlags::OifDetached)))
                }
                RuleAttribute::UidRange(r) => (2, format!(" uidrange {}-{}", r.start, r.end)),
                RuleAttribute::IpProtocol(p) => (
                    3,
                    format!(" ipproto {}", IpProto(u8::from(*p)).ip_rule_word()),
                ),
                RuleAttribute::SourcePortRange(r) => {
                    (4, format!(" sport {}", range(r.start, r.end)))
                }
                RuleAttribute::DestinationPortRange(r) => {
                    (5, format!(" dport {}", range(r.start, r.end)))
                }
                RuleAttribute::TunId(id) => (6, format!(" tun_id {id}")),
                _ => return None,
            })
        })
        .collect();
    selectors.sort_by_key(|(rank, _)| *rank);
    s.extend(selectors.into_iter().map(|(_, text)| text));
    let l3mdev = msg
        .attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::L3MDev(true)));
    match rule_table(msg) {
        _ if l3mdev => s += " lookup [l3mdev-table]",
        0 => {}
        t => s += &format!(" lookup {}", TableId::from_kernel(t)),
    }
    for a in &msg.attributes {
        match a {
            RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => {
                s += &format!(" suppress_prefixlength {n}")
            }
            RuleAttribute::SuppressIfGroup(g) if *g != u32::MAX => {
                s += &format!(" suppress_ifgroup {g}")
            }
            _ => {}
        }
    }
    match h.action {
        NlAction::ToTable | NlAction::Unspec => {}
        NlAction::Goto => match rule_goto(msg) {
            Some(t) => s += &format!(" goto {t}"),
            None => s += " goto none",
        },
        NlAction::Nop => s += " nop",
        NlAction::Blackhole => s += " blackhole",
        NlAction::Unreachable => s += " unreachable",
        NlAction::Prohibit => s += " prohibit",
        other => s += &format!(" action {}", u8::from(other)),
    }
    match rule_protocol(msg) {
        0 | 2 => {} // unspec and kernel: `ip rule` leaves them out too
        p => s += &format!(" proto {}", rt_proto_name(p)),
    }
    s
}

/// iproute2's names for route/rule protocol tags (rt_protos), else the number.
fn rt_proto_name(p: u8) -> String {
    let name = match p {
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        8 => "gated",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        18 => "keepalived",
        42 => "babel",
        99 => "openr",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        n => return n.to_string(),
    };
    name.into()
}

// ---------------------------------------------------------------------------------------
// routes

/// The route `ip -4|-6 route add|del <spec.ip_args()>` would send; `oif` is the index of
/// `spec.dev`. Scopes as `ip` picks them: a local route is `host`; an IPv4 unicast route
/// is `link` without a gateway and `universe` with one; IPv6 ignores scope. A delete of an
/// IPv4 unicast route says `nowhere` (match any scope), as `ip route del` does, so a route
/// made by an older symroute with another scope still goes.
pub fn route_message(spec: &RouteSpec, oif: Option<u32>, delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = address_family(spec.family);
    h.destination_prefix_length = spec.dst.prefix_len();
    h.table = header_table(spec.table.id());
    h.protocol = RouteProtocol::from(RT_PROTO);
    h.kind = match spec.kind {
        RouteKind::Unicast => RouteType::Unicast,
        RouteKind::Local => RouteType::Local,
    };
    h.scope = match (spec.kind, spec.family) {
        (RouteKind::Local, _) => RouteScope::Host,
        (RouteKind::Unicast, Family::Inet6) => RouteScope::Universe,
        (RouteKind::Unicast, Family::Inet4) if delete => RouteScope::NoWhere,
        (RouteKind::Unicast, Family::Inet4) if spec.via.is_some() => RouteScope::Universe,
        (RouteKind::Unicast, Family::Inet4) => RouteScope::Link,
    };
    let mut attrs = vec![RouteAttribute::Table(spec.table.id())];
    if spec.dst.prefix_len() > 0 {
        attrs.push(RouteAttribute::Destination(spec.dst.addr().into()));
    }
    if let Some(via) = spec.via {
        attrs.push(RouteAttribute::Gateway(via.into()));
    }
    if let Some(index) = oif {
        attrs.push(RouteAttribute::Oif(index));
    }
    msg.attributes = attrs;
    msg
}

pub fn route_table(msg: &RouteMessage) -> TableId {
    TableId::from_kernel(
        msg.attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(msg.header.table.into()),
    )
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The destination prefix; no RTA_DST means the default route of the family.
fn route_dst(msg: &RouteMessage, family: Family) -> Option<IpNet> {
    let addr = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => ip_of(d),
            _ => None,
        })
        .unwrap_or(match family {
            Family::Inet4 => IpAddr::from([0u8; 4]),
            Family::Inet6 => IpAddr::from([0u8; 16]),
        });
    IpNet::new(addr, msg.header.destination_prefix_length).ok()
}

fn route_gateway(msg: &RouteMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => ip_of(g),
        _ => None,
    })
}

/// The name of the output interface ("" without one, or when the index is unknown: the
/// interface vanished between the dumps, and its routes go with it).
fn route_dev(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> String {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Oif(i) => names.get(i).cloned(),
            _ => None,
        })
        .unwrap_or_default()
}

/// A default route of the main table with a next hop: (interface, next hop, metric),
/// what `via = "auto"` learns from (a DHCP client's or a router advertisement's route).
pub fn main_default_route(
    msg: &RouteMessage,
    names: &BTreeMap<u32, String>,
) -> Option<(String, IpAddr, u32)> {
    if msg.header.destination_prefix_length != 0
        || msg.header.kind != RouteType::Unicast
        || route_table(msg) != TableId::MAIN
    {
        return None;
    }
    let via = route_gateway(msg)?;
    let dev = route_dev(msg, names);
    let metric = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    (!dev.is_empty()).then_some((dev, via, metric))
}

/// Our route, if the message is one (tagged with `RT_PROTO`) and of a kind symroute makes.
pub fn route_spec(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<RouteSpec> {
    if u8::from(msg.header.protocol) != RT_PROTO {
        return None;
    }
    let family = family_of(msg.header.address_family)?;
    let kind = match msg.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        _ => return None,
    };
    Some(RouteSpec {
        table: route_table(msg),
        family,
        kind,
        dst: route_dst(msg, family)?,
        via: route_gateway(msg),
        dev: route_dev(msg, names),
    })
}

fn route_type_name(t: RouteType) -> String {
    match t {
        RouteType::Unspec => "none".into(),
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Broadcast => "broadcast".into(),
        RouteType::Anycast => "anycast".into(),
        RouteType::Multicast => "multicast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        RouteType::Nat => "nat".into(),
        RouteType::ExternalResolve => "xresolve".into(),
        other => u8::from(other).to_string(),
    }
}

/// A route as `ip route show table all` prints it (`10.99.0.0/24 dev lan0 table 42000`),
/// for conflict messages.
pub fn route_text(msg: &RouteMessage, names: &BTreeMap<u32, String>) -> String {
    let mut s = String::new();
    if !matches!(msg.header.kind, RouteType::Unicast) {
        s += &route_type_name(msg.header.kind);
        s.push(' ');
    }
    let len = msg.header.destination_prefix_length;
    match msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => ip_of(d),
        _ => None,
    }) {
        Some(addr) => s += &prefix_text(addr, len),
        None if len == 0 => s += "default",
        None => s += &format!("0/{len}"),
    }
    if let Some(g) = route_gateway(msg) {
        s += &format!(" via {g}");
    }
    for a in &msg.attributes {
        if let RouteAttribute::Oif(i) = a {
            match names.get(i) {
                Some(n) => s += &format!(" dev {n}"),
                None => s += &format!(" dev if{i}"),
            }
        }
    }
    s += &format!(" table {}", route_table(msg));
    match u8::from(msg.header.protocol) {
        3 => {} // boot, what `ip route add` tags with: `ip route` leaves it out too
        p => s += &format!(" proto {}", rt_proto_name(p)),
    }
    s
}

// ---------------------------------------------------------------------------------------
// links and addresses

/// Interface index → name.
pub fn link_names(links: &[LinkMessage]) -> BTreeMap<u32, String> {
    links
        .iter()
        .filter_map(|l| Some((l.header.index, link_name(l)?)))
        .collect()
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The links of a `HostView`: up when administratively up and with carrier (`lo` never
/// reports carrier), with every address and its prefix length. A point-to-point address
/// (`local A peer B/len`) also lists the peer's network, which is on-link.
pub fn host_links(links: &[LinkMessage], addrs: &[AddressMessage]) -> BTreeMap<String, Link> {
    let mut out = BTreeMap::new();
    let mut by_index = BTreeMap::new();
    for l in links {
        let Some(name) = link_name(l) else { continue };
        let flags = l.header.flags;
        let up =
            flags.contains(LinkFlags::Up) && (flags.contains(LinkFlags::LowerUp) || name == "lo");
        by_index.insert(l.header.index, name.clone());
        out.insert(
            name,
            Link {
                up,
                ..Link::default()
            },
        );
    }
    for a in addrs {
        let Some(link) = by_index.get(&a.header.index).and_then(|n| out.get_mut(n)) else {
            continue;
        };
        let (mut local, mut address) = (None, None);
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        // IPv6 sends only IFA_ADDRESS; on point-to-point links IFA_ADDRESS is the peer.
        let Some(local) = local.or(address) else {
            continue;
        };
        let len = a.header.prefix_len;
        if let Ok(net) = IpNet::new(local, len) {
            link.addrs.push(net);
        }
        if let Some(peer) = address.filter(|p| *p != local) {
            if let Ok(net) = IpNet::new(peer, len) {
                link.peers.push(net);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::rule::RulePortRange;

    fn bytes(m: &impl Emitable) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn p(n: u32) -> Priority {
        Priority::from_kernel(n)
    }

    fn t(n: u32) -> TableId {
        TableId::from_kernel(n)
    }

    fn rules() -> Vec<RuleSpec> {
        vec![
            RuleSpec {
                priority: p(3001),
                family: Family::Inet4,
                from: None,
                iif_lo: false,
                fwmark: Some((0x0100_0000, 0xff00_0000)),
                action: RuleAction::Lookup(t(42000)),
                suppress_prefixlength: None,
            },
            RuleSpec {
                priority: p(3003),
                family: Family::Inet6,
                from: None,
                iif_lo: false,
                fwmark: None,
                action: RuleAction::Lookup(TableId::MAIN),
                suppress_prefixlength: Some(0),
            },
            RuleSpec {
                priority: p(3000),
                family: Family::Inet4,
                from: None,
                iif_lo: false,
                fwmark: Some((0, 0xff00_0000)),
                action: RuleAction::Goto(p(3004)),
                suppress_prefixlength: None,
            },
            RuleSpec {
                priority: p(3001),
                family: Family::Inet6,
                from: None,
                iif_lo: false,
                fwmark: Some((1, u32::MAX)),
                action: RuleAction::Lookup(t(100)),
                suppress_prefixlength: Some(24),
            },
            RuleSpec {
                iif_lo: true,
                fwmark: None,
                action: RuleAction::Lookup(TableId::MAIN),
                suppress_prefixlength: Some(0),
                from: None,
                ..RuleSpec::from_addr(p(3005), "192.0.2.1".parse().unwrap(), t(1))
            },
            RuleSpec::from_addr(p(3006), "203.0.113.2".parse().unwrap(), t(42000)),
            RuleSpec::from_addr(p(3006), "2001:db8:1::2".parse().unwrap(), t(42000)),
            // The end marker the second skip rule lands on.
            RuleSpec {
                priority: p(3008),
                family: Family::Inet6,
                from: None,
                iif_lo: false,
                fwmark: None,
                action: RuleAction::Nop,
                suppress_prefixlength: None,
            },
        ]
    }

    #[test]
    fn rules_round_trip_through_bytes() {
        for spec in rules() {
            let msg = rule_message(&spec);
            let parsed = parse_rule(&bytes(&msg)).expect("parses");
            assert_eq!(parsed, msg, "{spec}");
            assert_eq!(rule_spec(&parsed), Some(spec.clone()), "{spec}");
        }
    }

    #[test]
    fn rule_tables_above_255_live_in_the_attribute() {
        let msgs: Vec<RuleMessage> = rules().iter().take(4).map(rule_message).collect();
        let [big, main, goto, small]: [RuleMessage; 4] = msgs.try_into().expect("four rules");
        assert_eq!(big.header.table, RT_TABLE_COMPAT);
        assert!(big.attributes.contains(&RuleAttribute::Table(42000)));
        assert_eq!(main.header.table, 254);
        assert_eq!(small.header.table, 100);
        assert_eq!(goto.header.action, NlAction::Goto);
        assert!(goto.attributes.contains(&RuleAttribute::Goto(3004)));
        for m in [big, main, goto, small] {
            assert!(m
                .attributes
                .contains(&RuleAttribute::Protocol(RouteProtocol::from(RT_PROTO))));
        }
    }

    /// A rule as the kernel reports it: FRA_TABLE always, FRA_SUPPRESS_PREFIXLEN -1 when
    /// unset, no FRA_FWMARK for mark 0, no FRA_PRIORITY for 0.
    fn kernel_rule(
        family: Family,
        prio: u32,
        attrs: Vec<RuleAttribute>,
        table: u32,
        proto: u8,
    ) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = address_family(family);
        m.header.action = NlAction::ToTable;
        m.header.table = header_table(table);
        if prio != 0 {
            m.attributes.push(RuleAttribute::Priority(prio));
        }
        m.attributes.extend(attrs);
        m.attributes.push(RuleAttribute::Table(table));
        m.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(proto)));
        m
    }

    #[test]
    fn kernel_reported_rules_are_ours_only_with_our_tag() {
        let ours = kernel_rule(
            Family::Inet4,
            3000,
            vec![RuleAttribute::FwMask(0xff00_0000)],
            42000,
            RT_PROTO,
        );
        let spec = rule_spec(&parse_rule(&bytes(&ours)).unwrap()).expect("ours");
        assert_eq!(spec.fwmark, Some((0, 0xff00_0000)));
        assert_eq!(spec.suppress_prefixlength, None);
        assert_eq!(spec.action, RuleAction::Lookup(t(42000)));
        let boot = kernel_rule(Family::Inet4, 3000, vec![], 254, 3);
        assert_eq!(rule_spec(&boot), None);
        let untagged = kernel_rule(Family::Inet4, 0, vec![], 255, 0);
        assert_eq!(rule_spec(&untagged), None);
        assert_eq!(rule_priority(&untagged).get(), 0);
    }

    #[test]
    fn foreign_rules_read_like_ip_rule() {
        let cases = [
            (
                kernel_rule(Family::Inet4, 3000, vec![], 254, 0),
                "3000: from all lookup main",
            ),
            (
                kernel_rule(
                    Family::Inet4,
                    32765,
                    vec![
                        RuleAttribute::FwMark(0x0100_0000),
                        RuleAttribute::FwMask(0x0f00_0000),
                    ],
                    100,
                    0,
                ),
                "32765: from all fwmark 0x1000000/0xf000000 lookup 100",
            ),
            (
                kernel_rule(Family::Inet4, 0, vec![], 255, 0),
                "0: from all lookup local",
            ),
            (
                kernel_rule(Family::Inet4, 4005, vec![], 40000, 186),
                "4005: from all lookup 40000 proto bgp",
            ),
            (
                kernel_rule(
                    Family::Inet6,
                    5210,
                    vec![
                        RuleAttribute::Source("fd00::".parse().unwrap()),
                        RuleAttribute::Iifname("wg0".into()),
                        // Sent in attribute-number order; `ip` prints ipproto first.
                        RuleAttribute::DestinationPortRange(RulePortRange { start: 25, end: 25 }),
                        RuleAttribute::IpProtocol(6.into()),
                    ],
                    52,
                    0,
                ),
                "5210: from fd00::/8 iif wg0 ipproto tcp dport 25 lookup 52",
            ),
            // As `ip rule` prints them: /etc/protocols names, else `ipproto-N`.
            (
                kernel_rule(
                    Family::Inet4,
                    1033,
                    vec![RuleAttribute::IpProtocol(33.into())],
                    100,
                    0,
                ),
                "1033: from all ipproto dccp lookup 100",
            ),
            (
                kernel_rule(
                    Family::Inet4,
                    1200,
                    vec![RuleAttribute::IpProtocol(200.into())],
                    100,
                    0,
                ),
                "1200: from all ipproto ipproto-200 lookup 100",
            ),
        ];
        for (mut msg, want) in cases {
            if want.contains("fd00::/8") {
                msg.header.src_len = 8;
            }
            let parsed = parse_rule(&bytes(&msg)).unwrap();
            assert_eq!(rule_text(&parsed), want);
        }
        let mut wg = kernel_rule(
            Family::Inet4,
            32764,
            vec![
                RuleAttribute::FwMark(0xca6c),
                RuleAttribute::FwMask(u32::MAX),
            ],
            51820,
            0,
        );
        wg.header.flags = RuleFlags::Invert;
        assert_eq!(
            rule_text(&wg),
            "32764: not from all fwmark 0xca6c lookup 51820"
        );
        assert_eq!(rule_fwmark(&wg), Some((0xca6c, u32::MAX)));
        let mut skip = kernel_rule(Family::Inet4, 3000, vec![RuleAttribute::FwMask(0xff)], 0, 0);
        skip.header.action = NlAction::Goto;
        skip.attributes.push(RuleAttribute::Goto(3005));
        assert_eq!(rule_text(&skip), "3000: from all fwmark 0/0xff goto 3005");
    }

    fn names() -> BTreeMap<u32, String> {
        [(1, "lo"), (2, "up1"), (4, "lan0")]
            .map(|(i, n)| (i, n.to_string()))
            .into()
    }

    fn routes() -> Vec<RouteSpec> {
        let r = |family, kind, dst: &str, via: Option<&str>, dev: &str, table| RouteSpec {
            table: t(table),
            family,
            kind,
            dst: dst.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
            dev: dev.into(),
        };
        vec![
            r(
                Family::Inet4,
                RouteKind::Unicast,
                "0.0.0.0/0",
                Some("203.0.113.1"),
                "up1",
                42000,
            ),
            r(
                Family::Inet4,
                RouteKind::Unicast,
                "10.77.0.0/24",
                None,
                "lan0",
                42000,
            ),
            r(
                Family::Inet6,
                RouteKind::Unicast,
                "::/0",
                Some("2001:db8:1::1"),
                "up1",
                42001,
            ),
            r(
                Family::Inet6,
                RouteKind::Unicast,
                "fd77::/64",
                None,
                "lan0",
                200,
            ),
            r(
                Family::Inet4,
                RouteKind::Local,
                "0.0.0.0/0",
                None,
                "lo",
                100,
            ),
            r(Family::Inet6, RouteKind::Local, "::/0", None, "lo", 42002),
            r(
                Family::Inet4,
                RouteKind::Unicast,
                "192.0.2.7/32",
                None,
                "up1",
                42000,
            ),
        ]
    }

    fn index_of(dev: &str) -> Option<u32> {
        names().into_iter().find(|(_, n)| n == dev).map(|(i, _)| i)
    }

    #[test]
    fn routes_round_trip_through_bytes() {
        for spec in routes() {
            for delete in [false, true] {
                let msg = route_message(&spec, index_of(&spec.dev), delete);
                let parsed = parse_route(&bytes(&msg)).expect("parses");
                assert_eq!(parsed, msg, "{spec}");
                assert_eq!(route_spec(&parsed, &names()), Some(spec.clone()), "{spec}");
            }
        }
    }

    #[test]
    fn route_headers_are_what_ip_sends() {
        let m: Vec<RouteMessage> = routes()
            .iter()
            .map(|r| route_message(r, index_of(&r.dev), false))
            .collect();
        assert_eq!(m[0].header.scope, RouteScope::Universe);
        assert_eq!(m[0].header.table, RT_TABLE_COMPAT);
        assert!(m[0].attributes.contains(&RouteAttribute::Table(42000)));
        assert!(m[0].attributes.contains(&RouteAttribute::Oif(2)));
        assert!(!m[0]
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(m[1].header.scope, RouteScope::Link);
        assert_eq!(m[1].header.destination_prefix_length, 24);
        assert_eq!(m[3].header.table, 200);
        assert_eq!(m[4].header.kind, RouteType::Local);
        assert_eq!(m[4].header.scope, RouteScope::Host);
        for r in &m {
            assert_eq!(u8::from(r.header.protocol), RT_PROTO);
        }
        let del = route_message(&routes()[1], None, true);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert!(!del
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_))));
    }

    #[test]
    fn foreign_routes_read_like_ip_route() {
        let spec = RouteSpec {
            table: t(42000),
            family: Family::Inet4,
            kind: RouteKind::Unicast,
            dst: "10.99.0.0/24".parse().unwrap(),
            via: None,
            dev: "lan0".into(),
        };
        let mut msg = route_message(&spec, Some(4), false);
        msg.header.protocol = RouteProtocol::Boot;
        let parsed = parse_route(&bytes(&msg)).unwrap();
        assert_eq!(route_spec(&parsed, &names()), None);
        assert_eq!(
            route_text(&parsed, &names()),
            "10.99.0.0/24 dev lan0 table 42000"
        );
        let mut wg = route_message(&routes()[0], Some(9), false);
        wg.header.protocol = RouteProtocol::Boot;
        assert_eq!(
            route_text(&wg, &names()),
            "default via 203.0.113.1 dev if9 table 42000"
        );
        let mut bh = route_message(&routes()[6], None, false);
        bh.header.kind = RouteType::BlackHole;
        assert_eq!(
            route_text(&bh, &names()),
            "blackhole 192.0.2.7 table 42000 proto 157"
        );
        assert_eq!(route_spec(&bh, &names()), None);
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let spec = &rules()[0];
        let mut b = bytes(&rule_message(spec));
        // An attribute kind no kernel has (yet), and one known kind with a bad length.
        b.extend_from_slice(&[8, 0, 0x7f, 0x00, 1, 2, 3, 4]);
        b.extend_from_slice(&[6, 0, 16, 0, 1, 2, 0, 0]); // FRA_FWMASK with 2 bytes
        let parsed = parse_rule(&b).expect("parses");
        assert_eq!(rule_spec(&parsed).as_ref(), Some(spec));
        assert!(parse_rule(&[1, 2, 3]).is_err());
    }

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = flags;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    fn addr(index: u32, prefix_len: u8, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.prefix_len = prefix_len;
        a.attributes = attrs;
        a
    }

    #[test]
    fn host_links_from_dumps() {
        let links = [
            link(1, "lo", LinkFlags::Up | LinkFlags::Loopback),
            link(2, "up1", LinkFlags::Up | LinkFlags::LowerUp),
            link(3, "up2", LinkFlags::Up),
            link(4, "ppp0", LinkFlags::Up | LinkFlags::LowerUp),
        ]
        .map(|l| parse_link(&bytes(&l)).unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = [
            addr(
                1,
                8,
                vec![
                    AddressAttribute::Local(ip("127.0.0.1")),
                    AddressAttribute::Address(ip("127.0.0.1")),
                ],
            ),
            addr(
                2,
                24,
                vec![
                    AddressAttribute::Address(ip("203.0.113.2")),
                    AddressAttribute::Local(ip("203.0.113.2")),
                ],
            ),
            addr(2, 64, vec![AddressAttribute::Address(ip("2001:db8:1::2"))]),
            addr(
                4,
                32,
                vec![
                    AddressAttribute::Local(ip("192.0.2.1")),
                    AddressAttribute::Address(ip("192.0.2.9")),
                ],
            ),
            addr(9, 24, vec![AddressAttribute::Local(ip("10.9.9.9"))]),
        ]
        .map(|a| parse_address(&bytes(&a)).unwrap());
        let host = host_links(&links, &addrs);
        let view: Vec<(String, bool, Vec<String>)> = host
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    l.up,
                    l.addrs.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            view,
            vec![
                ("lo".into(), true, s(&["127.0.0.1/8"])),
                ("ppp0".into(), true, s(&["192.0.2.1/32"])),
                (
                    "up1".into(),
                    true,
                    s(&["203.0.113.2/24", "2001:db8:1::2/64"])
                ),
                ("up2".into(), false, s(&[])),
            ]
        );
        assert_eq!(
            host["ppp0"].peers,
            ["192.0.2.9/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(link_names(&links).get(&3).map(String::as_str), Some("up2"));
    }
}
