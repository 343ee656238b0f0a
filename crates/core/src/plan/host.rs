//! What the plan needs to know about the host: interfaces (up or not, addresses) and the
//! sysctls symroute may adjust. Observed by `kernel::observe`, or made up in tests.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostView {
    pub links: BTreeMap<String, Link>,
    /// sysctl key (dotted, e.g. `net.ipv4.conf.up1.rp_filter`) → current value.
    pub sysctls: BTreeMap<String, String>,
    /// Gateways the daemon's health checks declare down (name → why). Not observed from
    /// the kernel: the daemon fills it in.
    #[serde(skip)]
    pub health_down: BTreeMap<String, String>,
    /// Interface → the next hops of the main table's default routes through it (lowest
    /// metric first): what `via = "auto"` learns.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub default_via: BTreeMap<String, DefaultVia>,
}

/// The main table's default next hop through one interface, per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DefaultVia {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Administratively up and with carrier (the kernel refuses routes otherwise).
    pub up: bool,
    /// The interface's own addresses with their prefix length (`10.77.0.1/24`).
    pub addrs: Vec<IpNet>,
    /// Point-to-point peers (`local A peer B/len`): the network `B/len`, on-link but not
    /// an address of this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<IpNet>,
}

impl Link {
    /// Every network reachable directly on the link: its own and its peers'.
    pub fn networks(&self) -> impl Iterator<Item = &IpNet> {
        self.addrs.iter().chain(&self.peers)
    }
}

impl HostView {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    /// Learn the main table's default routes: (interface, next hop, metric). With
    /// several on one interface and family the lowest metric wins, as in the kernel.
    pub fn learn_default_routes(&mut self, mut routes: Vec<(String, std::net::IpAddr, u32)>) {
        routes.sort_by_key(|r| std::cmp::Reverse(r.2));
        for (dev, via, _) in routes {
            let e = self.default_via.entry(dev).or_default();
            match via {
                std::net::IpAddr::V4(a) => e.v4 = Some(a),
                std::net::IpAddr::V6(a) => e.v6 = Some(a),
            }
        }
    }
}
