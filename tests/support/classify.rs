//! Random policies and packets for the classification tests (`classify_props`,
//! `classify_kernel`): small pools of overlapping values, so selectors overlap, share
//! values and cut each other's candidate lists.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use symroute::explain::netfilter::{evaluate, CtState, Hook, PacketCtx, Ruleset};
use symroute::fuzz::Rng;
use symroute::model::{CgroupPath, MacAddr, PacketKeys};
use symroute::plan::{Cgroups, HostView, Link};

pub struct Pools {
    pub ifaces: Vec<&'static str>,
    /// Interface names packets arrive on (`None`: the host's own).
    pub arrive: Vec<Option<&'static str>>,
    pub macs: Vec<&'static str>,
    pub v4_nets: Vec<&'static str>,
    pub v6_nets: Vec<&'static str>,
    /// Most items per address key.
    pub max_nets: usize,
    /// Whether policies may use not_source / not_destination.
    pub negations: bool,
    pub v4_addrs: Vec<&'static str>,
    pub v6_addrs: Vec<&'static str>,
    pub ports: Vec<&'static str>,
    pub packet_ports: Vec<u16>,
    /// The host's own addresses: the sources of the connections it opens.
    pub local_v4: Vec<&'static str>,
    pub local_v6: Vec<&'static str>,
    /// Users the host's own connections are opened by (and policies name).
    pub uids: Vec<u32>,
    /// Cgroup paths policies name; those not in `cgroup_ids` do not exist (yet).
    pub cgroups: Vec<&'static str>,
    /// The cgroups that exist, with their ids, and how nft names the cgroup2 root.
    pub cgroup_ids: Vec<(&'static str, u64)>,
    pub nft_root: &'static str,
    /// Cgroups the host's own connections come from ("": the root).
    pub packet_cgroups: Vec<&'static str>,
    /// A route_via policy without ingress keys gets `user` (and, apart, `cgroup`) once
    /// in this many.
    pub socket_odds: usize,
}

impl Pools {
    /// No user or cgroup keys, and the host's own packets from root in the root cgroup
    /// (these pools are about address keys).
    pub fn without_sockets(self) -> Pools {
        Pools {
            uids: Vec::new(),
            cgroups: Vec::new(),
            packet_cgroups: Vec::new(),
            ..self
        }
    }

    /// The pools' cgroups made real below `t`'s parent (the existing ones, and those
    /// packets come from), with their real ids and the hierarchy's nft root; the ones
    /// that should not exist stay absent.
    pub fn with_real_cgroups(self, t: &mut super::cgroups::TestCgroups) -> Pools {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut ids = Vec::new();
        for (p, _) in &self.cgroup_ids {
            let path = t.make(p);
            ids.push((leak(path), t.id(p)));
        }
        let packet_cgroups = self
            .packet_cgroups
            .iter()
            .map(|p| if p.is_empty() { "" } else { leak(t.make(p)) })
            .collect();
        Pools {
            cgroups: self.cgroups.iter().map(|p| leak(t.path(p))).collect(),
            cgroup_ids: ids,
            nft_root: leak(t.hierarchy.nft_root.clone()),
            packet_cgroups,
            ..self
        }
    }

    /// A host holding `local_v4` / `local_v6` (on `lo`).
    pub fn host(&self) -> HostView {
        let mut h = HostView::default();
        h.links.insert(
            "lo".into(),
            Link {
                up: true,
                addrs: self
                    .local_v4
                    .iter()
                    .chain(&self.local_v6)
                    .map(|a| IpNet::from(a.parse::<IpAddr>().expect("pool address")))
                    .collect(),
                peers: Vec::new(),
            },
        );
        h.cgroups = Some(Cgroups {
            nft_root: self.nft_root.to_string(),
            ids: self
                .cgroup_ids
                .iter()
                .map(|(p, id)| (CgroupPath::new(p).expect("pool cgroup"), *id))
                .collect(),
            ..Cgroups::default()
        });
        h
    }
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            ifaces: vec!["lan0", "e0", "e1", "lan*"],
            arrive: vec![Some("lan0"), Some("e0"), Some("e1"), Some("lan1"), None],
            macs: vec![
                "02:00:00:00:00:01",
                "02:00:00:00:00:02",
                "02:00:00:00:00:03",
                "02:00:00:00:00:04",
            ],
            v4_nets: vec![
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.1.2.0/24",
                "10.1.2.3/32",
                "10.1.2.4/31",
                "10.2.0.0/16",
                "192.168.0.0/24",
                "192.168.0.7/32",
                "0.0.0.0/1",
            ],
            max_nets: 3,
            negations: true,
            v6_nets: vec![
                "2001:db8::/32",
                "2001:db8:1::/48",
                "2001:db8:1::5/128",
                "fd00::/8",
            ],
            v4_addrs: vec![
                "10.1.2.3",
                "10.1.2.4",
                "10.1.2.5",
                "10.1.9.9",
                "10.2.3.4",
                "10.9.9.9",
                "192.168.0.7",
                "192.168.0.8",
                "198.51.100.1",
                "100.64.0.1",
            ],
            v6_addrs: vec![
                "2001:db8:1::5",
                "2001:db8:1::6",
                "2001:db8:2::1",
                "fd00::1",
                "2001:db9::1",
            ],
            ports: vec!["22", "25", "80", "443", "\"1000-2000\"", "\"1500-1600\""],
            packet_ports: vec![22, 25, 80, 443, 999, 1000, 1550, 2000, 2001, 40000],
            local_v4: vec!["10.1.2.3", "192.168.0.8", "100.64.0.1"],
            local_v6: vec!["2001:db8:1::6", "fd00::1"],
            uids: vec![0, 34, 1001, 1002, 65534],
            cgroups: vec!["t/a", "t/a/b", "t/c", "t", "t/missing", "t/a/gone"],
            cgroup_ids: vec![
                ("t", 100),
                ("t/a", 101),
                ("t/a/b", 102),
                ("t/c", 103),
                ("t/c/d", 104),
            ],
            nft_root: "unified/",
            packet_cgroups: vec!["", "t", "t/a", "t/a/b", "t/c", "t/c/d", "other"],
            socket_odds: 4,
        }
    }
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// 1..=max distinct items of `pool`, as a TOML array.
fn some(rng: &mut Rng, pool: &[&str], max: usize) -> String {
    let n = 1 + rng.below(max);
    let mut items: Vec<String> = Vec::new();
    for _ in 0..n {
        let v = pick(rng, pool);
        // Quoted already (port ranges) or a number (ports) stay as they are.
        let q = if v.starts_with('"') || v.parse::<u16>().is_ok() {
            v.to_string()
        } else {
            format!("\"{v}\"")
        };
        if !items.contains(&q) {
            items.push(q);
        }
    }
    format!("[{}]", items.join(", "))
}

fn nets(rng: &mut Rng, pools: &Pools) -> String {
    let mut all: Vec<&str> = Vec::new();
    match rng.below(3) {
        0 => all.extend(&pools.v4_nets),
        1 => all.extend(&pools.v6_nets),
        _ => {
            all.extend(&pools.v4_nets);
            all.extend(&pools.v6_nets);
        }
    }
    some(rng, &all, pools.max_nets)
}

/// Prefixes that never nest (/24s and /32s in different /24s), no negations: address
/// keys become one hashed lookup per prefix length.
pub fn disjoint_pools() -> Pools {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut nets = Vec::new();
    let mut addrs = Vec::new();
    for a in 0..4 {
        for b in 0..16 {
            if b % 2 == 0 {
                nets.push(leak(format!("10.{a}.{b}.0/24")));
                addrs.push(leak(format!("10.{a}.{b}.77")));
            } else {
                nets.push(leak(format!("10.{a}.{b}.{}/32", 3 * b)));
                addrs.push(leak(format!("10.{a}.{b}.{}", 3 * b)));
                addrs.push(leak(format!("10.{a}.{b}.1")));
            }
        }
    }
    Pools {
        v4_nets: nets,
        v6_nets: vec!["2001:db8:1::/48", "2001:db8:2::5/128"],
        max_nets: 40,
        negations: false,
        v4_addrs: addrs,
        ..Pools::default().without_sockets()
    }
}

/// Many prefixes of a few lengths (/16, /24, /32, and sometimes /20 or /28), so address
/// keys get large enough for named maps and per-length hashed lookups.
pub fn wide_pools() -> Pools {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut nets = Vec::new();
    let mut addrs = Vec::new();
    for a in 0..4 {
        nets.push(leak(format!("10.{a}.0.0/16")));
        for b in 0..12 {
            nets.push(leak(format!("10.{a}.{b}.0/24")));
            nets.push(leak(format!("10.{a}.{b}.{}/32", 1 + 2 * b)));
            addrs.push(leak(format!("10.{a}.{b}.{}", 1 + 2 * b)));
            addrs.push(leak(format!("10.{a}.{b}.200")));
        }
        nets.push(leak(format!("10.{a}.32.0/20")));
        nets.push(leak(format!("10.{a}.40.16/28")));
        addrs.push(leak(format!("10.{a}.40.17")));
        addrs.push(leak(format!("10.{a}.99.1")));
    }
    addrs.push("192.168.0.1");
    Pools {
        v4_nets: nets,
        v6_nets: vec!["2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128"],
        max_nets: 12,
        v4_addrs: addrs,
        ..Pools::default().without_sockets()
    }
}

/// A config text: 3 gateways, 1..=24 policies (sometimes a mask of 7 or 15 values, so the
/// policies fill several blocks), any mix of keys.
pub fn random_config(rng: &mut Rng, pools: &Pools) -> String {
    let mask = *pick(
        rng,
        &["0xff000000", "0xff000000", "0x0f000000", "0x07000000"],
    );
    let mut s = format!("[settings]\nmark_mask = \"{mask}\"\n");
    // Ids as positions: with a mask of 7 values only ids 1 to 3 exist, and ids from the
    // names would collide there.
    for g in 0..3 {
        s += &format!(
            "[[gateway]]\nname = \"g{g}\"\nid = {}\ninterface = \"e{g}\"\nvia = \"192.0.2.{}\"\nvia6 = \"2001:db8:ff::{}\"\n",
            g + 1,
            g + 1,
            g + 1
        );
    }
    let n = 1 + rng.below(24);
    for i in 0..n {
        s += &format!("[[policy]]\nname = \"p{i}\"\n");
        let action = rng.below(5);
        s += &match action {
            0 | 1 => format!("reply_via = \"g{}\"\n", rng.below(3)),
            2 => format!("route_via = \"g{}\"\n", rng.below(3)),
            3 => "route_via = [\"g1\", \"g0\"]\n".to_string(),
            _ => "route_via = { g0 = 3, g2 = 1 }\nsticky = \"10m\"\n".to_string(),
        };
        s += "[policy.match]\n";
        if rng.below(12) == 0 {
            continue; // matches everything
        }
        let mut keys = 0;
        while keys == 0 {
            let mut ports = false;
            let mut ingress = false;
            if rng.below(4) == 0 {
                s += &format!("in_interface = {}\n", some(rng, &pools.ifaces, 2));
                keys += 1;
                ingress = true;
            }
            if rng.below(4) == 0 {
                s += &format!("source_mac = {}\n", some(rng, &pools.macs, 3));
                keys += 1;
                ingress = true;
            }
            // The sending socket's keys: route_via policies for the host's own traffic.
            if action >= 2
                && !ingress
                && !pools.uids.is_empty()
                && rng.below(pools.socket_odds) == 0
            {
                let uids: Vec<String> = pools.uids.iter().map(|u| u.to_string()).collect();
                let uids: Vec<&str> = uids.iter().map(String::as_str).collect();
                s += &format!("user = {}\n", some(rng, &uids, 3));
                keys += 1;
            }
            if action >= 2
                && !ingress
                && !pools.cgroups.is_empty()
                && rng.below(pools.socket_odds) == 0
            {
                s += &format!("cgroup = {}\n", some(rng, &pools.cgroups, 3));
                keys += 1;
            }
            for key in ["source", "destination", "not_source", "not_destination"] {
                if rng.below(5) == 0 && (pools.negations || !key.starts_with("not_")) {
                    s += &format!("{key} = {}\n", nets(rng, pools));
                    keys += 1;
                }
            }
            for key in ["destination_port", "source_port"] {
                if rng.below(6) == 0 {
                    s += &format!("{key} = {}\n", some(rng, &pools.ports, 3));
                    keys += 1;
                    ports = true;
                }
            }
            if ports {
                s += &format!("protocol = {}\n", some(rng, &["tcp", "udp"], 2));
            } else if rng.below(4) == 0 {
                s += &format!("protocol = {}\n", some(rng, &["tcp", "udp", "icmp"], 2));
                keys += 1;
            }
        }
    }
    s
}

pub fn random_packet(rng: &mut Rng, pools: &Pools) -> PacketKeys {
    let v6 = rng.below(3) == 0;
    let addrs = if v6 { &pools.v6_addrs } else { &pools.v4_addrs };
    let addr = |rng: &mut Rng| -> IpAddr { pick(rng, addrs).parse().expect("pool address") };
    let in_interface = pick(rng, &pools.arrive).map(str::to_string);
    let source_mac = in_interface.as_ref().map(|_| {
        let m = if rng.below(5) == 0 {
            "02:00:00:00:00:09"
        } else {
            pick(rng, &pools.macs)
        };
        MacAddr::parse(m).expect("pool MAC")
    });
    let protocol = match rng.below(5) {
        0 => {
            if v6 {
                58
            } else {
                1
            }
        }
        1 | 2 => 6,
        _ => 17,
    };
    let ports = protocol == 6 || protocol == 17;
    let port = |rng: &mut Rng| ports.then(|| *pick(rng, &pools.packet_ports));
    let local = if v6 { &pools.local_v6 } else { &pools.local_v4 };
    let source = match in_interface {
        Some(_) => addr(rng),
        None => pick(rng, local).parse().expect("pool address"),
    };
    let (uid, cgroup) = match in_interface {
        Some(_) => (None, None),
        None => (
            Some(if pools.uids.is_empty() {
                0
            } else {
                *pick(rng, &pools.uids)
            }),
            Some(if pools.packet_cgroups.is_empty() {
                String::new()
            } else {
                pick(rng, &pools.packet_cgroups).to_string()
            }),
        ),
    };
    PacketKeys {
        in_interface,
        source_mac,
        source,
        destination: addr(rng),
        protocol,
        source_port: port(rng),
        destination_port: port(rng),
        uid,
        cgroup,
    }
}

/// The policy the rendered table decides `p` by (the `set_pN` chain it reaches), and our
/// bits of its conntrack mark and of its packet mark afterwards. `nft_root`: how the
/// table names the cgroup2 root.
pub fn winner_by_nft(
    rs: &Ruleset,
    p: &PacketKeys,
    mask: u32,
    nft_root: &str,
) -> (Option<usize>, u32, u32) {
    let sock = |a: IpAddr, port: Option<u16>| SocketAddr::new(a, port.unwrap_or(0));
    let mut ctx = PacketCtx::new(
        p.protocol,
        sock(p.source, p.source_port),
        sock(p.destination, p.destination_port),
    );
    assert_eq!(ctx.ct.state, CtState::New);
    let hook = match &p.in_interface {
        Some(i) => {
            ctx = ctx.with_iif(i);
            if let Some(m) = p.source_mac {
                ctx = ctx.with_src_mac(&m.to_string());
            }
            Hook::Prerouting
        }
        None => {
            ctx = ctx.with_sender(p.uid, p.cgroup.as_deref(), nft_root);
            Hook::Output
        }
    };
    let r = evaluate(rs, hook, &ctx);
    assert!(!r.uncertain, "{:#?}", r.notes);
    let winner = r.steps.iter().find_map(|s| {
        s.chain
            .strip_prefix("inet symroute set_p")
            .and_then(|n| n.parse().ok())
    });
    (winner, r.ctx_after.ct.mark & mask, r.ctx_after.mark & mask)
}
