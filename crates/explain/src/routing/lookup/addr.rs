//! Address classes (martians, broadcast, link-local) and the kernel's numbers for route
//! scopes and IPv6 route preferences.

use super::*;

pub(super) fn is_v4_multicast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.is_multicast())
}

/// What a packet to limited broadcast (else multicast) sent without a lookup is.
pub(super) fn broadcast_kind(dst: IpAddr) -> VerdictKind {
    if is_lbcast(dst) {
        VerdictKind::Broadcast
    } else {
        VerdictKind::Multicast
    }
}

pub(super) fn is_lbcast(a: IpAddr) -> bool {
    a == IpAddr::V4(Ipv4Addr::BROADCAST)
}

pub(super) fn is_zeronet(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.octets()[0] == 0)
}

pub(super) fn is_loopback4(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.is_loopback())
}

pub(super) fn unspecified(f: Family) -> IpAddr {
    match f {
        Family::Inet4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// IPv6 destinations that need a route on the given interface (rt6_need_strict).
pub(super) fn v6_need_strict(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v) => {
            v.is_multicast() || v.is_loopback() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
        IpAddr::V4(_) => false,
    }
}

/// A route's scope as the kernel numbers it (not printed: universe, 0).
pub(super) fn scope_num(r: &RouteEntry) -> u8 {
    match r.scope.as_deref() {
        None | Some("global") | Some("universe") => 0,
        Some("site") => 200,
        Some("link") => 253,
        Some("host") => 254,
        Some("nowhere") => 255,
        Some(n) => n.parse().unwrap_or(0),
    }
}

pub(super) const SCOPE_LINK: u8 = 253;
pub(super) const SCOPE_HOST: u8 = 254;

/// IPV6_DECODE_PREF: low 1, medium 2, high 3.
pub(super) fn pref_bits(pref: Option<&str>) -> u32 {
    match pref {
        Some("high") => 3,
        Some("low") => 1,
        _ => 2,
    }
}

pub(super) fn addr_or_none(a: Option<IpAddr>) -> String {
    a.map_or_else(|| "(none)".to_string(), |a| a.to_string())
}
