//! The validated model: what the user asked for, with every reference resolved and every
//! value typed. Built only by `config::parse_str`; consumed by `plan`.

pub mod ipproto;
pub mod matching;
pub mod types;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use ipproto::IpProto;
pub use matching::PacketKeys;
pub use types::{
    CgroupPath, Family, GatewayId, IfName, MacAddr, Mark, MarkMask, Name, PortRange, Priority,
    Protocol, TableId,
};

/// Index of a gateway in `Model::gateways`; only the validator makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GatewayIdx(pub(crate) usize);

impl GatewayIdx {
    pub fn index(self) -> usize {
        self.0
    }
}

impl Model {
    /// The gateways with their indices, in file order.
    pub fn gateways_indexed(&self) -> impl Iterator<Item = (GatewayIdx, &Gateway)> {
        self.gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (GatewayIdx(i), g))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Settings {
    pub mark_mask: MarkMask,
    pub first_table: TableId,
    pub first_priority: Priority,
    /// Where the local replies' `from ADDRESS lookup TABLE` rules go: after main and
    /// default, so they act only when nothing else routes the packet.
    pub fallback_priority: Priority,
    /// Where `symroute run` serves Prometheus metrics (off when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
    /// `symroute run`: shell commands run on every gateway up/down change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_change: Vec<String>,
    /// `symroute run`: this box is one of an HA pair whose connections conntrackd copies:
    /// it flushes a dead gateway's connections only while keepalived says it is the
    /// master (`symroute ha master`), never on a backup.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ha_pair: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mark_mask: MarkMask::new(0xff00_0000).expect("constant mask is valid"),
            first_table: TableId::new(42000).expect("constant table is valid"),
            first_priority: Priority::new(3000).expect("constant priority is valid"),
            fallback_priority: Priority::after_main(32800).expect("constant priority is valid"),
            metrics: None,
            on_change: Vec::new(),
            ha_pair: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gateway {
    pub name: Name,
    /// Fixes its mark values and table (`plan::alloc`).
    pub id: GatewayId,
    /// Where `id` came from: `id = N` in the file, or the name.
    pub id_from: IdFrom,
    pub interface: IfName,
    pub via: Option<NextHop<Ipv4Addr>>,
    pub via6: Option<NextHop<Ipv6Addr>>,
    /// Health checks (`[gateway.check]`); without them only link state counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// Where a gateway's id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFrom {
    /// `id = N` in the config.
    Config,
    /// Derived from the name (`plan::alloc::default_id`).
    Name,
}

/// A gateway's next hop for one family: written in the config, or `"auto"`: learned
/// from the main table's default route through the gateway's interface, the one a DHCP
/// client or router advertisements keep current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NextHop<A> {
    Fixed(A),
    Auto,
}

impl<A: Copy> NextHop<A> {
    /// The address, when known (an `Auto` one is known only once the plan learned it).
    pub fn fixed(self) -> Option<A> {
        match self {
            NextHop::Fixed(a) => Some(a),
            NextHop::Auto => None,
        }
    }
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

impl Check {
    /// Defaults, tuned together: probes every 150 ms, each judged lost after 450 ms, a
    /// target down after 7 of its last 10 are lost. A dead path is declared down about
    /// 6 × 150 + 450 ≈ 1.4 s after it dies (at most ~1.5 s, under the 2 s promised); with
    /// 5 % loss in each direction (~10 % of probes lost) a false "down" needs 7 of 10
    /// lost, about once in 130,000 probes (every 5 hours); `3/5` every 250 ms would
    /// flap about every 30 s.
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(150);
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(450);
    /// Bounds on what a config may ask of the probes.
    pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
    pub const MAX_TIMEOUT_INTERVALS: u32 = 10;
    pub const MAX_TARGETS: usize = 16;
    const _DEFAULT_TIMEOUT_IN_BOUNDS: () = assert!(
        Check::DEFAULT_TIMEOUT.as_millis()
            <= Check::MIN_INTERVAL.as_millis() * Check::MAX_TIMEOUT_INTERVALS as u128
    );
    pub const DEFAULT_DOWN: (u32, u32) = (7, 10);
    pub const DEFAULT_UP: u32 = 5;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "gateway", rename_all = "snake_case")]
pub enum Action {
    /// Replies to connections that arrive matching leave via the gateway.
    ReplyVia(GatewayIdx),
    /// New connections that match (forwarded or local) leave via one of the route's
    /// gateways; the connection keeps it for its whole life.
    RouteVia(Route),
}

impl Action {
    /// Every gateway the action may send traffic through.
    pub fn gateways(&self) -> Vec<GatewayIdx> {
        match self {
            Action::ReplyVia(g) => vec![*g],
            Action::RouteVia(r) => r.gateways(),
        }
    }
}

/// How a `route_via` policy picks the gateway of a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub mode: RouteMode,
    /// Sticky per source address: a source keeps the gateway it was last given for this
    /// long after its last new connection (only with more than one gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<std::time::Duration>,
}

/// Never empty, gateways never repeated (the validator makes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// The first usable gateway of the list; `route_via = "isp1"` is a list of one.
    Failover(Vec<GatewayIdx>),
    /// New connections are shared among the usable gateways by weight.
    Share(Vec<(GatewayIdx, Weight)>),
}

impl Route {
    /// A single gateway, no stickiness: `route_via = "NAME"`.
    pub fn one(g: GatewayIdx) -> Route {
        Route {
            mode: RouteMode::Failover(vec![g]),
            sticky: None,
        }
    }
    /// The gateways in the order written.
    pub fn gateways(&self) -> Vec<GatewayIdx> {
        match &self.mode {
            RouteMode::Failover(l) => l.clone(),
            RouteMode::Share(l) => l.iter().map(|(g, _)| *g).collect(),
        }
    }
}

/// A share weight, 1..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Weight(u16);

impl Weight {
    pub const MAX: u16 = 1000;
    pub fn new(w: i64) -> Option<Weight> {
        u16::try_from(w)
            .ok()
            .filter(|w| (1..=Self::MAX).contains(w))
            .map(Weight)
    }
    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
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
    /// The sending socket's owner (`meta skuid`), sorted: the host's own traffic only.
    pub user: Vec<u32>,
    /// The sending socket's cgroup or one below it (`socket cgroupv2`), sorted: the
    /// host's own traffic only.
    pub cgroup: Vec<CgroupPath>,
}

impl Selector {
    /// Interface and MAC exist only for packets that arrived; locally generated
    /// connections can never match such a selector.
    pub fn needs_ingress(&self) -> bool {
        !self.in_interface.is_empty() || !self.source_mac.is_empty()
    }
    /// User and cgroup belong to the socket that sends: only connections the host opens
    /// itself can match such a selector.
    pub fn needs_socket(&self) -> bool {
        !self.user.is_empty() || !self.cgroup.is_empty()
    }
    /// Whether a packet from one of `addrs` can pass the `source` key (a host's own
    /// connections come from its own addresses).
    pub fn may_have_source(&self, addrs: &[IpAddr]) -> bool {
        self.source.is_empty()
            || addrs.iter().any(|a| match a {
                IpAddr::V4(v4) => self.source.v4.iter().any(|n| n.contains(v4)),
                IpAddr::V6(v6) => self.source.v6.iter().any(|n| n.contains(v6)),
            })
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
            + self.user.len()
            + self.cgroup.len()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Policy {
    pub name: Name,
    pub action: Action,
    pub selector: Selector,
}

/// Local delivery of packets that belong to transparent sockets (TPROXY / HAProxy
/// `usesrc clientip`): the proxy host's side of the relay scenario.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divert {
    pub name: Name,
    pub protocol: Vec<Protocol>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Model {
    pub settings: Settings,
    pub gateways: Vec<Gateway>,
    pub policies: Vec<Policy>,
    pub diverts: Vec<Divert>,
    /// The config text this model was parsed from (empty when built otherwise): the
    /// daemon records it with a pending `apply --confirm`, so a restarted daemon goes
    /// back to the config it really ran, whatever its file says by then.
    #[serde(skip)]
    pub source: String,
}

impl Model {
    pub fn gateway(&self, idx: GatewayIdx) -> &Gateway {
        &self.gateways[idx.0]
    }
    /// Some `reply_via` policy answers through gateway `idx`.
    pub fn replies_via(&self, idx: GatewayIdx) -> bool {
        self.policies
            .iter()
            .any(|p| p.action == Action::ReplyVia(idx))
    }
    /// Some `route_via` policy may send new connections through gateway `idx`.
    pub fn routes_via(&self, idx: GatewayIdx) -> bool {
        self.policies.iter().any(|p| match &p.action {
            Action::RouteVia(r) => r.gateways().contains(&idx),
            Action::ReplyVia(_) => false,
        })
    }

    /// Gateway `idx` has health checks but no policy names it (it may be there for
    /// `symroute exec`): its probes need a table of its own to test its path by, so it
    /// takes route decisions all the time (its route mark, rule and table), as if a
    /// `route_via` named it. Without, they would take the main table.
    pub fn probed_alone(&self, idx: GatewayIdx) -> bool {
        self.gateway(idx).check.is_some() && !self.routes_via(idx) && !self.replies_via(idx)
    }
}
