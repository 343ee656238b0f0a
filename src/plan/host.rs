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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Administratively up and with carrier (the kernel refuses routes otherwise).
    pub up: bool,
    /// Interface addresses with their prefix length (`10.77.0.1/24`).
    pub addrs: Vec<IpNet>,
}

impl HostView {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }
}
