//! What the plan needs to know about the host: interfaces (up or not, addresses) and the
//! sysctls symroute may adjust. Observed by `kernel::observe`, or made up in tests.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::CgroupPath;

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
    /// The cgroup2 hierarchy and the cgroups the plan may match in it; `None` when no
    /// cgroup2 hierarchy is mounted (or none was looked at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Cgroups>,
}

/// What the plan needs of the cgroup2 hierarchy: how nft names a cgroup, which of the
/// cgroups it may match exist (with their ids), and which have processes.
///
/// nft 1.0.x takes a cgroup in `socket cgroupv2 level N "PATH"` only as a path, which it
/// resolves below /sys/fs/cgroup to the directory's inode number (the cgroup id the
/// kernel compares) when the rule is loaded: a number is read as a path too, and a
/// cgroup that does not exist (yet) fails the whole transaction. So only existing
/// cgroups are rendered, and their ids go into the table's fingerprint: a cgroup
/// removed and made again (a service restarted) has a new id, and the table is loaded
/// again for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cgroups {
    /// What goes before a path below the cgroup2 root for nft: `""` where cgroup2 is
    /// /sys/fs/cgroup itself (unified hosts), `"unified/"` on hybrid ones,
    /// `"../../../mnt/cg2/"` for a mount elsewhere.
    pub nft_root: String,
    /// The cgroups that exist now, of those the plan may match: path → cgroup id.
    pub ids: BTreeMap<CgroupPath, u64>,
    /// Those of them with processes (cgroup.events says `populated 1`).
    pub populated: BTreeSet<CgroupPath>,
    /// `symroute exec`'s cgroup for each gateway (by name), whether it exists or not.
    pub exec: BTreeMap<String, CgroupPath>,
}

impl Cgroups {
    /// Whether `symroute exec --gateway GATEWAY`'s cgroup exists.
    pub fn exec_exists(&self, gateway: &str) -> bool {
        self.exec
            .get(gateway)
            .is_some_and(|p| self.ids.contains_key(p))
    }

    /// `"PREFIX/PATH"`, quoted for nft, when the cgroup exists (and the prefix is plain
    /// text: it comes from the host's mount table).
    pub fn nft_path(&self, path: &CgroupPath) -> Option<String> {
        let plain = self
            .nft_root
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:+,=/".contains(c));
        (plain && self.ids.contains_key(path)).then(|| format!("\"{}{path}\"", self.nft_root))
    }
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
