//! Which policy a connection's first packet selects, straight from the model: the
//! reference the rendered nft classification is tested against (first match wins).

use std::net::IpAddr;

use super::{Action, Family, MacAddr, Model, Prefixes, Selector};

/// The parts of a connection's first packet that selectors look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketKeys {
    /// `None` for a connection the host opens itself.
    pub in_interface: Option<String>,
    pub source_mac: Option<MacAddr>,
    pub source: IpAddr,
    pub destination: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Ports, for protocols that have them.
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
    /// The sending socket's owner; `None` for a packet that arrived.
    pub uid: Option<u32>,
    /// The sending socket's cgroup, relative to the cgroup2 root (`""`: the root
    /// itself); `None` for a packet that arrived.
    pub cgroup: Option<String>,
}

impl PacketKeys {
    pub fn local(&self) -> bool {
        self.in_interface.is_none()
    }
}

fn within(p: &Prefixes, a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => p.v4.iter().any(|n| n.contains(v4)),
        IpAddr::V6(v6) => p.v6.iter().any(|n| n.contains(v6)),
    }
}

/// An interface name pattern: a trailing `*` matches any suffix (nft's wildcard).
fn ifname_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Selector {
    /// Whether this selector selects the packet: every key it has holds (items of a key
    /// are alternatives). A positive address key without entries of the packet's family
    /// never holds; a negative one then always does.
    pub fn matches(&self, p: &PacketKeys) -> bool {
        let family = Family::of(&p.source);
        let iif = self.in_interface.is_empty()
            || p.in_interface.as_deref().is_some_and(|n| {
                self.in_interface
                    .iter()
                    .any(|i| ifname_matches(i.as_str(), n))
            });
        let mac = self.source_mac.is_empty()
            || p.source_mac.is_some_and(|m| self.source_mac.contains(&m));
        let pos = |x: &Prefixes, a: &IpAddr| x.is_empty() || (x.has(family) && within(x, a));
        let neg = |x: &Prefixes, a: &IpAddr| !within(x, a);
        let proto =
            self.protocol.is_empty() || self.protocol.iter().any(|pr| pr.number().0 == p.protocol);
        let port = |ranges: &[super::PortRange], port: Option<u16>| {
            ranges.is_empty()
                || port.is_some_and(|v| ranges.iter().any(|r| r.first <= v && v <= r.last))
        };
        let user = self.user.is_empty() || p.uid.is_some_and(|u| self.user.contains(&u));
        let cgroup = self.cgroup.is_empty()
            || p.cgroup
                .as_deref()
                .is_some_and(|c| self.cgroup.iter().any(|g| g.contains(c)));
        iif && mac
            && user
            && cgroup
            && pos(&self.source, &p.source)
            && neg(&self.not_source, &p.source)
            && pos(&self.destination, &p.destination)
            && neg(&self.not_destination, &p.destination)
            && proto
            && port(&self.source_port, p.source_port)
            && port(&self.destination_port, p.destination_port)
    }
}

impl Model {
    /// The policy that decides a new connection whose first packet is `p`: the first
    /// whose selector matches. A connection the host opens itself is decided only by
    /// `route_via` policies (replies of its own connections follow their route).
    pub fn first_match(&self, p: &PacketKeys) -> Option<usize> {
        self.policies.iter().position(|pol| {
            (!p.local() || matches!(pol.action, Action::RouteVia(_))) && pol.selector.matches(p)
        })
    }
}
