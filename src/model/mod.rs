//! The validated model: what the user asked for, with every reference resolved and every
//! value typed. Built only by `config::load`; consumed by `plan`.

pub mod types;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

pub use types::{
    Family, IfName, MacAddr, Mark, MarkMask, Name, PortRange, Priority, Protocol, TableId,
};

/// Index of a gateway in `Model::gateways`; only the validator makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GatewayIdx(pub(crate) usize);

impl GatewayIdx {
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mark_mask: MarkMask,
    pub first_table: TableId,
    pub first_priority: Priority,
    /// `symroute run`: shell commands run on every gateway up/down change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_change: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mark_mask: MarkMask::new(0xff00_0000).expect("constant mask is valid"),
            first_table: TableId::new(42000).expect("constant table is valid"),
            first_priority: Priority::new(3000).expect("constant priority is valid"),
            on_change: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Gateway {
    pub name: Name,
    pub interface: IfName,
    pub via: Option<Ipv4Addr>,
    pub via6: Option<Ipv6Addr>,
    /// Health checks (`[gateway.check]`); without them only link state counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// One probe target: an ICMP echo or a TCP connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProbeTarget {
    Icmp(std::net::IpAddr),
    Tcp(std::net::SocketAddr),
}

impl ProbeTarget {
    pub fn addr(&self) -> std::net::IpAddr {
        match self {
            ProbeTarget::Icmp(a) => *a,
            ProbeTarget::Tcp(s) => s.ip(),
        }
    }
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Icmp(a) => write!(f, "{a}"),
            ProbeTarget::Tcp(s) => write!(f, "tcp:{s}"),
        }
    }
}

/// `[gateway.check]`: a target is down after `down_lost` of its last `down_window`
/// probes were lost; the gateway is down when every target is; it is up again after
/// `up` good probes in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub targets: Vec<ProbeTarget>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub down_lost: u32,
    pub down_window: u32,
    pub up: u32,
}

impl Gateway {
    /// IPv4 is served with a next hop, or on a point-to-point link named without any.
    pub fn serves_v4(&self) -> bool {
        self.via.is_some() || self.via6.is_none()
    }
    pub fn serves_v6(&self) -> bool {
        self.via6.is_some()
    }
    pub fn serves(&self, family: Family) -> bool {
        match family {
            Family::Inet4 => self.serves_v4(),
            Family::Inet6 => self.serves_v6(),
        }
    }
}

/// What a policy does with the connections it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "gateway", rename_all = "snake_case")]
pub enum Action {
    /// Replies to connections that arrive matching leave via the gateway.
    ReplyVia(GatewayIdx),
    /// New connections that match (forwarded or local) leave via the gateway.
    RouteVia(GatewayIdx),
}

/// Prefixes split by family; normalized (host bits checked, covered entries dropped, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Prefixes {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

impl Prefixes {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
    pub fn from_nets(nets: Vec<IpNet>) -> Self {
        let mut p = Prefixes::default();
        for n in nets {
            match n {
                IpNet::V4(n) => p.v4.push(n),
                IpNet::V6(n) => p.v6.push(n),
            }
        }
        // Interval sets refuse overlapping elements; drop any prefix covered by another.
        p.v4 = Ipv4Net::aggregate(&p.v4);
        p.v6 = Ipv6Net::aggregate(&p.v6);
        p
    }
    pub fn has(&self, family: Family) -> bool {
        match family {
            Family::Inet4 => !self.v4.is_empty(),
            Family::Inet6 => !self.v6.is_empty(),
        }
    }
}

/// Which packets a policy selects. Keys are AND-ed; items within a key are OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selector {
    pub in_interface: Vec<IfName>,
    pub source_mac: Vec<MacAddr>,
    pub source: Prefixes,
    pub not_source: Prefixes,
    pub destination: Prefixes,
    pub not_destination: Prefixes,
    pub protocol: Vec<Protocol>,
    pub source_port: Vec<PortRange>,
    pub destination_port: Vec<PortRange>,
}

impl Selector {
    /// Interface and MAC exist only for packets that arrived; locally generated
    /// connections can never match such a selector.
    pub fn needs_ingress(&self) -> bool {
        !self.in_interface.is_empty() || !self.source_mac.is_empty()
    }
    /// Number of individual selector items (for reporting and benchmarks).
    pub fn item_count(&self) -> usize {
        let p = |x: &Prefixes| x.v4.len() + x.v6.len();
        self.in_interface.len()
            + self.source_mac.len()
            + p(&self.source)
            + p(&self.not_source)
            + p(&self.destination)
            + p(&self.not_destination)
            + self.protocol.len()
            + self.source_port.len()
            + self.destination_port.len()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: Name,
    pub action: Action,
    pub selector: Selector,
}

/// Local delivery of packets that belong to transparent sockets (TPROXY / HAProxy
/// `usesrc clientip`): the proxy host's side of the relay scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Divert {
    pub name: Name,
    pub protocol: Vec<Protocol>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Model {
    pub settings: Settings,
    pub gateways: Vec<Gateway>,
    pub policies: Vec<Policy>,
    pub diverts: Vec<Divert>,
}

impl Model {
    pub fn gateway(&self, idx: GatewayIdx) -> &Gateway {
        &self.gateways[idx.0]
    }
}
