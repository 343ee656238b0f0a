//! The host's state as the engine reads it: sysctls (forwarding, rp_filter,
//! ignore_routes_with_linkdown), interfaces and their addresses, next hops alive or not.

use super::*;

impl<'s> Engine<'s> {
    pub(super) fn sysctl(&self, key: &str) -> Option<i64> {
        self.st.sysctl_int(key)
    }

    pub(super) fn conf4(&self, dev: &str, leaf: &str) -> Option<i64> {
        self.sysctl(&format!("net.ipv4.conf.{dev}.{leaf}"))
    }

    /// IN_DEV_ORCONF: `all` or the device.
    pub(super) fn orconf4(&self, dev: &str, leaf: &str, default: i64) -> bool {
        self.conf4("all", leaf).unwrap_or(default) != 0
            || self.conf4(dev, leaf).unwrap_or(default) != 0
    }

    /// IN_DEV_RPFILTER: max(all, device).
    pub(super) fn rp_filter(&self, dev: &str) -> i64 {
        self.conf4("all", "rp_filter")
            .unwrap_or(0)
            .max(self.conf4(dev, "rp_filter").unwrap_or(0))
    }

    /// IN_DEV_FORWARD: the device's own value (writing `all` copies to every device).
    pub(super) fn forwarding4(&self, dev: &str) -> bool {
        self.conf4(dev, "forwarding")
            .or_else(|| self.conf4("all", "forwarding"))
            .or_else(|| self.sysctl("net.ipv4.ip_forward"))
            .unwrap_or(0)
            != 0
    }

    pub(super) fn forwarding6(&self) -> bool {
        self.sysctl("net.ipv6.conf.all.forwarding").unwrap_or(0) != 0
    }

    pub(super) fn ignore_linkdown(&self, family: Family, dev: &str) -> bool {
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
    pub(super) fn nh_dead(&self, nh: &NextHop) -> bool {
        nh.dead
    }

    pub(super) fn nh_linkdown(&self, nh: &NextHop) -> bool {
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
    pub(super) fn effective_via(&self, route: &RouteEntry, nh: &NextHop) -> Option<IpAddr> {
        let (Some(via @ IpAddr::V4(_)), Some(dev)) = (nh.via, nh.dev.as_deref()) else {
            return nh.via;
        };
        if nh.onlink {
            return Some(via);
        }
        if route.table != TABLE_MAIN {
            let flow = Flow {
                oif: Some(dev),
                ..Flow::kernel4(via)
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
    pub(super) fn nh_alive(&self, family: Family, nh: &NextHop, ignore_linkstate: bool) -> bool {
        if self.nh_dead(nh) {
            return false;
        }
        if ignore_linkstate || !self.nh_linkdown(nh) {
            return true;
        }
        !self.ignore_linkdown(family, nh.dev.as_deref().unwrap_or("lo"))
    }

    /// An address configured on any interface (up or not).
    pub(super) fn is_configured(&self, addr: IpAddr) -> bool {
        self.st
            .links
            .values()
            .any(|l| l.addrs.iter().any(|n| n.addr() == addr))
    }

    /// IPv4 `__ip_dev_find`'s device: the interface `addr` is configured on, else the
    /// device of a `local` route in the local table covering it.
    pub(super) fn dev_of4(&self, addr: IpAddr) -> Option<String> {
        let mut links: Vec<(&String, &super::super::types::LinkState)> =
            self.st.links.iter().collect();
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

    pub(super) fn has_v4_addr(&self, dev: &str) -> bool {
        self.st
            .links
            .get(dev)
            .is_some_and(|l| l.addrs.iter().any(|n| matches!(n.addr(), IpAddr::V4(_))))
    }

    /// IPv4 `__ip_dev_find`: configured, or covered by a `local` route of the local
    /// table — which, without custom rules, is the trie merged with main, so a `local`
    /// route in main counts too.
    pub(super) fn is_local4(&self, addr: IpAddr) -> bool {
        if self.is_configured(addr) {
            return true;
        }
        let flow = Flow::kernel4(addr);
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
    pub(super) fn custom_rules4(&self) -> bool {
        let rules: Vec<&RuleEntry> = self.st.rules_of(Family::Inet4).collect();
        rules.len() != 3 || !rules.iter().all(|r| r.is_default())
    }

    /// `fib_has_custom_local_routes`: a `local` route someone added (not the kernel's).
    pub(super) fn custom_local_routes4(&self) -> bool {
        self.st.routes.iter().any(|r| {
            r.family == Family::Inet4
                && r.kind == RouteKind::Local
                && r.protocol.as_deref() != Some("kernel")
        })
    }

    pub(super) fn link_group(&self, dev: Option<&str>) -> Option<u32> {
        dev.and_then(|d| self.st.links.get(d)).map(|l| l.group)
    }
}
