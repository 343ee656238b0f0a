//! The two seed topologies, built from namespaces. Addresses and interface names are
//! fixed: example configs and end-to-end tests refer to them.

use super::netns::{in_netns, veth, veth_mac, Netns};
use super::traffic::{TcpServer, UdpEcho};
use anyhow::{bail, Context};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Servers started for a topology; they stop when this is dropped.
pub struct Services {
    pub tcp: Vec<TcpServer>,
    pub udp: Vec<UdpEcho>,
}

/// Seed 1: a firewall with a LAN and two ISPs. Connections from the client arrive via
/// ISP1, but the firewall's default route is ISP2, which drops transit traffic: without
/// symmetric routing every reply to the client dies (and strict rp_filter on `up1`
/// drops IPv4 SYNs before that).
///
/// ```text
/// client eth0 ── cl0 isp1 fw0 ── up1 ┐
///                                    fw ── lan0 ── eth0 lan
///                isp2 fw0 ── up2 ────┘   (default via isp2)
/// ```
pub struct TwoIsps {
    /// The firewall, where symroute runs.
    pub fw: Netns,
    pub isp1: Netns,
    pub isp2: Netns,
    pub client: Netns,
    pub lan: Netns,
}

impl TwoIsps {
    pub const FW_UP1_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    pub const FW_UP1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const ISP1_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const ISP1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const FW_UP2_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    pub const FW_UP2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
    pub const ISP2_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const ISP2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
    pub const FW_LAN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    pub const FW_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
    pub const LAN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
    pub const LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10);
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);
    /// TCP served on the firewall itself and on the LAN host.
    pub const SMTP_PORT: u16 = 25;
    /// TCP port on `up1` that the foreign `labnat` table DNATs to the LAN host's :25.
    pub const DNAT_PORT: u16 = 2525;
    /// UDP echo on the firewall's ISP1 addresses.
    pub const UDP_PORT: u16 = 5353;
    /// The server of [`Self::add_dual_homed_server`], and how its greeting starts for a
    /// connection that came via each ISP (masqueraded to the ISP's address).
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 1);
    pub const VIA_ISP1: &'static str = "hello 192.0.2.1 ";
    pub const VIA_ISP2: &'static str = "hello 10.99.0.1 ";
    pub const VIA_ISP1_V6: &'static str = "hello 2001:db8:c::1 ";
    pub const VIA_ISP2_V6: &'static str = "hello fd99::1 ";

    /// The firewall's own DNAT of up1:[`Self::DNAT_PORT`] to the LAN host's :25, a foreign
    /// nft table per family (`ip labnat`, `ip6 labnat6`).
    pub const DNAT_V4_NFT: &'static str = "table ip labnat {\n\
        \tchain pre { type nat hook prerouting priority dstnat; policy accept;\n\
        \t\tiifname \"up1\" tcp dport 2525 dnat to 10.77.0.10:25\n\t}\n}\n";
    pub const DNAT_V6_NFT: &'static str = "table ip6 labnat6 {\n\
        \tchain pre { type nat hook prerouting priority dstnat; policy accept;\n\
        \t\tiifname \"up1\" tcp dport 2525 dnat to [fd77::10]:25\n\t}\n}\n";

    pub fn build() -> anyhow::Result<TwoIsps> {
        require_tool("nft", &["--version"])?;
        let fw = Netns::new("fw")?;
        let isp1 = Netns::new("isp1")?;
        let isp2 = Netns::new("isp2")?;
        let client = Netns::new("client")?;
        let lan = Netns::new("lan")?;

        veth(&fw, "lan0", &lan, "eth0")?;
        veth(&fw, "up1", &isp1, "fw0")?;
        veth(&fw, "up2", &isp2, "fw0")?;
        veth(&isp1, "cl0", &client, "eth0")?;

        addrs(&fw, "lan0", &["10.77.0.1/24", "fd77::1/64"])?;
        addrs(&fw, "up1", &["203.0.113.2/24", "2001:db8:1::2/64"])?;
        addrs(&fw, "up2", &["198.51.100.2/24", "2001:db8:2::2/64"])?;
        fw.ip("route add default via 198.51.100.1 dev up2")?;
        fw.ip("-6 route add default via 2001:db8:2::1 dev up2")?;
        forwarding(&fw, true)?;
        // Strict reverse-path filtering, as many distributions ship: symroute must
        // loosen it for asymmetric-looking traffic on up1.
        fw.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
        fw.sysctl("net.ipv4.conf.up1.rp_filter", "1")?;
        // A foreign table (not symroute's): symroute must coexist with it.
        fw.nft(&format!("{}{}", Self::DNAT_V4_NFT, Self::DNAT_V6_NFT))?;

        addrs(&isp1, "fw0", &["203.0.113.1/24", "2001:db8:1::1/64"])?;
        addrs(&isp1, "cl0", &["192.0.2.1/24", "2001:db8:c::1/64"])?;
        forwarding(&isp1, true)?;

        addrs(&isp2, "fw0", &["198.51.100.1/24", "2001:db8:2::1/64"])?;
        // Explicit: new namespaces may inherit IPv4 settings from the host.
        forwarding(&isp2, false)?;

        addrs(&client, "eth0", &["192.0.2.10/24", "2001:db8:c::10/64"])?;
        default_routes(&client, "192.0.2.1", "2001:db8:c::1")?;

        addrs(&lan, "eth0", &["10.77.0.10/24", "fd77::10/64"])?;
        default_routes(&lan, "10.77.0.1", "fd77::1")?;

        Ok(TwoIsps {
            fw,
            isp1,
            isp2,
            client,
            lan,
        })
    }

    /// A server both ISPs reach, for route_via failover and sharing: [`Self::SERVER_V4`] on
    /// the client's loopback, behind isp1 (as before) and behind isp2 over a second link
    /// (10.99.0.0/24). Each ISP masquerades what it forwards to the client, so the
    /// server's greeting (`hello <peer> <port>`) names the ISP a connection took:
    /// [`Self::VIA_ISP1`] or [`Self::VIA_ISP2`] (and their `_V6` twins for
    /// [`Self::SERVER_V6`]). Also lets isp2 forward, which seed 1's isp2 does not.
    /// Returns the TCP :80 servers (IPv4 and IPv6).
    pub fn add_dual_homed_server(&self) -> anyhow::Result<Vec<TcpServer>> {
        veth(&self.isp2, "cl0", &self.client, "eth1")?;
        // `nodad`: usable at once, not after duplicate address detection.
        self.client.sh(
            "ip addr add 100.64.0.1/32 dev lo && ip addr add 2001:db8:64::1/128 dev lo && \
             ip addr add 10.99.0.2/24 dev eth1 && ip addr add fd99::2/64 dev eth1 nodad",
        )?;
        self.isp2
            .sh("ip addr add 10.99.0.1/24 dev cl0 && ip addr add fd99::1/64 dev cl0 nodad")?;
        forwarding(&self.isp2, true)?;
        self.isp2.sh(
            "ip route add 100.64.0.1/32 via 10.99.0.2 && ip route add 10.77.0.0/24 via 198.51.100.2 && \
             ip -6 route add 2001:db8:64::1/128 via fd99::2 && ip -6 route add fd77::/64 via 2001:db8:2::2",
        )?;
        self.isp1.sh(
            "ip route add 100.64.0.1/32 via 192.0.2.10 && ip route add 10.77.0.0/24 via 203.0.113.2 && \
             ip -6 route add 2001:db8:64::1/128 via 2001:db8:c::10 && ip -6 route add fd77::/64 via 2001:db8:1::2",
        )?;
        for isp in [&self.isp1, &self.isp2] {
            isp.nft("table inet masq {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"cl0\" masquerade\n\t}\n}\n")?;
        }
        Ok(vec![
            TcpServer::start(&self.client, sa(Self::SERVER_V4, 80))?,
            TcpServer::start(&self.client, sa(Self::SERVER_V6, 80))?,
        ])
    }

    /// Which ISP a new TCP connection from the LAN host to the dual-homed server (over
    /// IPv4, or IPv6) takes now; `None` when it gets no answer within `timeout`.
    pub fn lan_path_now(&self, v6: bool, timeout: Duration) -> Option<&'static str> {
        let server = if v6 {
            sa(Self::SERVER_V6, 80)
        } else {
            sa(Self::SERVER_V4, 80)
        };
        let line = super::traffic::tcp_probe(&self.lan, server, timeout).ok()?;
        Self::uplink_of(&line)
    }

    /// The ISP a greeting of the dual-homed server names (`hello 192.0.2.1 40000`):
    /// "isp1", "isp2", or `None`.
    pub fn uplink_of(greeting: &str) -> Option<&'static str> {
        let g = format!("{} ", greeting.trim());
        if g.starts_with(Self::VIA_ISP1) || g.starts_with(Self::VIA_ISP1_V6) {
            Some("isp1")
        } else if g.starts_with(Self::VIA_ISP2) || g.starts_with(Self::VIA_ISP2_V6) {
            Some("isp2")
        } else {
            None
        }
    }

    /// ISP1 stops forwarding to its upstream (the client) while every link stays up: the
    /// failure only health checks see. `false` restores it.
    pub fn cut_isp1_upstream(&self, cut: bool) -> anyhow::Result<()> {
        if cut {
            self.isp1.nft("table inet cut {\n\tchain f {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\toifname \"cl0\" drop\n\t}\n}\n")
        } else {
            self.isp1
                .exec(&["nft", "delete", "table", "inet", "cut"])
                .map(drop)
        }
    }

    /// TCP :25 and UDP :5353 on the firewall, TCP :25 on the LAN host (DNAT target).
    pub fn start_services(&self) -> anyhow::Result<Services> {
        let tcp = vec![
            TcpServer::start(&self.fw, sa(Ipv4Addr::UNSPECIFIED, Self::SMTP_PORT))?,
            TcpServer::start(&self.fw, sa(Self::FW_UP1_V6, Self::SMTP_PORT))?,
            TcpServer::start(&self.lan, sa(Self::LAN_V4, Self::SMTP_PORT))?,
            TcpServer::start(&self.lan, sa(Self::LAN_V6, Self::SMTP_PORT))?,
        ];
        let udp = vec![
            UdpEcho::start(&self.fw, sa(Self::FW_UP1_V4, Self::UDP_PORT))?,
            UdpEcho::start(&self.fw, sa(Self::FW_UP1_V6, Self::UDP_PORT))?,
        ];
        Ok(Services { tcp, udp })
    }
}

/// Seed 2: an SMTP relay behind a transparent HAProxy (`usesrc clientip`). Proxied
/// connections reach the relay with the client's source address, so its replies go to
/// the default gateway and die; they must go back via the proxy, recognised by its MAC.
///
/// ```text
/// client eth0 ── cl0 router br0 ─┬─ p-proxy ── eth0 proxy (haproxy, MAC 02:03:04:05:06:07)
///                                └─ p-relay ── eth0 relay (symroute)
/// ```
pub struct ProxyRelay {
    pub client: Netns,
    /// Default gateway of proxy and relay.
    pub router: Netns,
    /// Runs HAProxy (started by [`ProxyRelay::build`], stopped with the namespace).
    pub proxy: Netns,
    /// The relay, where symroute runs.
    pub relay: Netns,
}

impl ProxyRelay {
    pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1);
    pub const PROXY_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    pub const PROXY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0x10);
    pub const PROXY_MAC: &'static str = "02:03:04:05:06:07";
    pub const RELAY_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
    pub const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0x20);
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);
    pub const SMTP_PORT: u16 = 25;

    pub fn build() -> anyhow::Result<ProxyRelay> {
        require_tool("haproxy", &["-v"])?;
        let client = Netns::new("client")?;
        let router = Netns::new("router")?;
        let proxy = Netns::new("proxy")?;
        let relay = Netns::new("relay")?;

        // Snooping off: without an MLD querier it can get in the way of IPv6 ND.
        router.ip("link add br0 type bridge mcast_snooping 0")?;
        router.ip("link set br0 up")?;
        veth(&router, "p-relay", &relay, "eth0")?;
        veth_mac(
            &router,
            "p-proxy",
            None,
            &proxy,
            "eth0",
            Some(Self::PROXY_MAC),
        )?;
        router.ip("link set p-relay master br0")?;
        router.ip("link set p-proxy master br0")?;
        veth(&router, "cl0", &client, "eth0")?;
        addrs(&router, "br0", &["198.51.100.1/24", "2001:db8:5::1/64"])?;
        addrs(&router, "cl0", &["192.0.2.1/24", "2001:db8:c::1/64"])?;
        forwarding(&router, true)?;

        addrs(&relay, "eth0", &["198.51.100.20/24", "2001:db8:5::20/64"])?;
        default_routes(&relay, "198.51.100.1", "2001:db8:5::1")?;
        addrs(&proxy, "eth0", &["198.51.100.10/24", "2001:db8:5::10/64"])?;
        default_routes(&proxy, "198.51.100.1", "2001:db8:5::1")?;
        addrs(&client, "eth0", &["192.0.2.10/24", "2001:db8:c::10/64"])?;
        default_routes(&client, "192.0.2.1", "2001:db8:c::1")?;

        start_haproxy(&proxy)?;
        Ok(ProxyRelay {
            client,
            router,
            proxy,
            relay,
        })
    }

    /// The relay's SMTP stand-in on :25 (IPv4 and IPv6).
    pub fn start_services(&self) -> anyhow::Result<Services> {
        let tcp = vec![
            TcpServer::start(&self.relay, sa(Self::RELAY_V4, Self::SMTP_PORT))?,
            TcpServer::start(&self.relay, sa(Self::RELAY_V6, Self::SMTP_PORT))?,
        ];
        Ok(Services {
            tcp,
            udp: Vec::new(),
        })
    }
}

const HAPROXY_CFG: &str = "\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 3s
    timeout client 3s
    timeout server 3s
frontend smtp
    bind 198.51.100.10:25 transparent
    default_backend relays
backend relays
    source 0.0.0.0 usesrc clientip
    server relay1 198.51.100.20:25
frontend smtp6
    bind [2001:db8:5::10]:25 transparent
    default_backend relays6
backend relays6
    source [::] usesrc clientip
    server relay1 [2001:db8:5::20]:25
";

/// Starts HAProxy in the proxy namespace and waits (up to 3 s) until both frontends
/// accept connections. The config file is only needed at startup, so it is removed.
fn start_haproxy(proxy: &Netns) -> anyhow::Result<()> {
    let cfg = std::env::temp_dir().join(format!("{}-haproxy.cfg", proxy.name()));
    std::fs::write(&cfg, HAPROXY_CFG).with_context(|| format!("write {}", cfg.display()))?;
    let result = (|| {
        let path = cfg.to_str().context("temp path is not UTF-8")?;
        proxy
            .exec(&["haproxy", "-c", "-f", path])
            .context("haproxy config check")?;
        proxy.spawn(&["haproxy", "-db", "-f", path])?;
        let deadline = Instant::now() + Duration::from_secs(3);
        for addr in [
            sa(ProxyRelay::PROXY_V4, ProxyRelay::SMTP_PORT),
            sa(ProxyRelay::PROXY_V6, ProxyRelay::SMTP_PORT),
        ] {
            while !can_connect(proxy, addr)? {
                proxy.check_spawned()?;
                if Instant::now() > deadline {
                    bail!(
                        "haproxy in netns {} not listening on {addr} after 3 s",
                        proxy.name()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&cfg);
    result
}

fn can_connect(ns: &Netns, addr: SocketAddr) -> anyhow::Result<bool> {
    in_netns(ns.name(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Fails with a pointer to the setup script when a required tool is missing.
pub(crate) fn require_tool(tool: &str, version_args: &[&str]) -> anyhow::Result<()> {
    match Command::new(tool).args(version_args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`{tool} {}` failed ({}): {}",
            version_args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} not found: run scripts/setup")
        }
        Err(e) => Err(e).with_context(|| format!("run {tool}")),
    }
}

fn addrs(ns: &Netns, ifname: &str, cidrs: &[&str]) -> anyhow::Result<()> {
    for cidr in cidrs {
        ns.ip(&format!("addr add {cidr} dev {ifname}"))?;
    }
    Ok(())
}

fn default_routes(ns: &Netns, v4: &str, v6: &str) -> anyhow::Result<()> {
    ns.ip(&format!("route add default via {v4}"))?;
    ns.ip(&format!("-6 route add default via {v6}"))?;
    Ok(())
}

fn forwarding(ns: &Netns, on: bool) -> anyhow::Result<()> {
    let v = if on { "1" } else { "0" };
    ns.sysctl("net.ipv4.ip_forward", v)?;
    ns.sysctl("net.ipv6.conf.all.forwarding", v)
}

fn sa(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::traffic::{tcp_probe, udp_probe};

    /// Proxy host: replies to HAProxy's spoofed connections go to its transparent socket.
    const DIVERT: &str = "
table FAMILY div {
    chain pre {
        type filter hook prerouting priority mangle;
        meta l4proto tcp socket transparent 1 meta mark set 1 accept
    }
}
";

    /// Relay: connections first seen from the proxy's MAC get mark 254 (kept in the
    /// conntrack mark), and their replies are routed by that mark.
    const ANSWER: &str = "
table FAMILY t {
    chain pre {
        type filter hook prerouting priority mangle;
        meta mark set ct mark
        meta mark != 0 return
        ether saddr 02:03:04:05:06:07 meta mark set 254
        ct mark set meta mark
    }
    chain out {
        type route hook output priority mangle;
        meta mark set ct mark
    }
}
";

    const FAIL: Duration = Duration::from_secs(1);
    const OK: Duration = Duration::from_secs(3);

    fn require_root() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
        assert_eq!(
            euid.as_deref(),
            Some("0"),
            "needs root: run as root after scripts/setup"
        );
    }

    fn expect_fail(what: &str, r: anyhow::Result<String>) {
        match r {
            Ok(line) => panic!("{what}: expected failure, got {line:?}"),
            Err(e) => eprintln!("  {what}: fails as expected: {e:#}"),
        }
    }

    fn expect_ok(what: &str, r: anyhow::Result<String>, prefix: &str) {
        match r {
            Ok(line) if line.starts_with(prefix) => eprintln!("  {what}: ok: {line}"),
            Ok(line) => panic!("{what}: expected {prefix:?}…, got {line:?}"),
            Err(e) => panic!("{what}: {e:#}"),
        }
    }

    fn ns_exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    #[test]
    fn guard_cleans_up_on_panic() {
        require_root();
        let name = std::sync::Mutex::new(String::new());
        let r = std::panic::catch_unwind(|| {
            let ns = Netns::new("panic").expect("create netns");
            *name.lock().expect("lock") = ns.name().to_string();
            ns.spawn(&["sleep", "30"]).expect("spawn");
            panic!("deliberate");
        });
        assert!(r.is_err());
        let name = name.into_inner().expect("lock");
        assert!(!name.is_empty() && !ns_exists(&name), "{name} left behind");
    }

    #[test]
    fn two_isps_fails_then_succeeds() {
        require_root();
        let t0 = Instant::now();
        let lab = TwoIsps::build().expect("build TwoIsps");
        eprintln!("TwoIsps::build took {:?}", t0.elapsed());
        let _services = lab.start_services().expect("start services");
        let c = &lab.client;
        let (v4, v6) = (TwoIsps::FW_UP1_V4, TwoIsps::FW_UP1_V6);
        let probes = |timeout: Duration| {
            [
                ("tcp v4 fw:25", tcp_probe(c, sa(v4, 25), timeout)),
                ("tcp v6 fw:25", tcp_probe(c, sa(v6, 25), timeout)),
                ("tcp v4 dnat :2525", tcp_probe(c, sa(v4, 2525), timeout)),
                ("tcp v6 dnat :2525", tcp_probe(c, sa(v6, 2525), timeout)),
                ("udp v4 fw:5353", udp_probe(c, sa(v4, 5353), timeout)),
                ("udp v6 fw:5353", udp_probe(c, sa(v6, 5353), timeout)),
            ]
        };

        eprintln!("TwoIsps without symmetric routing:");
        for (what, r) in probes(FAIL) {
            expect_fail(what, r);
        }

        // Poor man's fix: route the client's prefixes back via ISP1 and loosen rp_filter.
        lab.fw
            .ip("route add 192.0.2.0/24 via 203.0.113.1 dev up1")
            .expect("route v4");
        lab.fw
            .ip("-6 route add 2001:db8:c::/64 via 2001:db8:1::1 dev up1")
            .expect("route v6");
        lab.fw
            .sysctl("net.ipv4.conf.up1.rp_filter", "2")
            .expect("rp_filter");
        eprintln!("TwoIsps with return routes via ISP1:");
        for (what, r) in probes(OK) {
            let ip = if what.contains("v4") {
                "192.0.2.10 "
            } else {
                "2001:db8:c::10 "
            };
            let word = if what.starts_with("udp") {
                "echo "
            } else {
                "hello "
            };
            expect_ok(what, r, &format!("{word}{ip}"));
        }
        let names: Vec<String> = [&lab.fw, &lab.isp1, &lab.isp2, &lab.client, &lab.lan]
            .map(|n| n.name().into())
            .into();
        drop(_services);
        drop(lab);
        assert!(
            names.iter().all(|n| !ns_exists(n)),
            "namespaces left behind"
        );
    }

    #[test]
    fn proxy_relay_fails_then_succeeds() {
        require_root();
        let t0 = Instant::now();
        let lab = ProxyRelay::build().expect("build ProxyRelay");
        eprintln!("ProxyRelay::build took {:?}", t0.elapsed());
        let _services = lab.start_services().expect("start services");

        // What symroute's [[divert]] does on the proxy host, by hand: deliver replies
        // addressed to the client's IP to HAProxy's transparent socket.
        lab.proxy
            .nft(
                &["ip", "ip6"]
                    .map(|family| DIVERT.replace("FAMILY", family))
                    .concat(),
            )
            .expect("divert nft");
        for cmd in [
            "rule add fwmark 1 lookup 100",
            "route add local 0.0.0.0/0 dev lo table 100",
            "-6 rule add fwmark 1 lookup 100",
            "-6 route add local ::/0 dev lo table 100",
        ] {
            lab.proxy.ip(cmd).expect(cmd);
        }

        let c = &lab.client;
        let direct = |ip: std::net::IpAddr| tcp_probe(c, sa(ip, 25), OK);
        eprintln!("ProxyRelay without source-MAC routing on the relay:");
        expect_ok(
            "direct v4",
            direct(ProxyRelay::RELAY_V4.into()),
            "hello 192.0.2.10 ",
        );
        expect_ok(
            "direct v6",
            direct(ProxyRelay::RELAY_V6.into()),
            "hello 2001:db8:c::10 ",
        );
        expect_fail(
            "proxied v4",
            tcp_probe(c, sa(ProxyRelay::PROXY_V4, 25), FAIL),
        );
        expect_fail(
            "proxied v6",
            tcp_probe(c, sa(ProxyRelay::PROXY_V6, 25), FAIL),
        );

        // The seed answer, by hand: connections whose first packet came from the proxy's
        // MAC are marked, and their replies are routed back via the proxy.
        lab.relay
            .nft(
                &["ip", "ip6"]
                    .map(|family| ANSWER.replace("FAMILY", family))
                    .concat(),
            )
            .expect("relay nft");
        for cmd in [
            "rule add fwmark 254 lookup 1000254",
            "route add default via 198.51.100.10 dev eth0 table 1000254",
            "-6 rule add fwmark 254 lookup 1000254",
            "-6 route add default via 2001:db8:5::10 dev eth0 table 1000254",
        ] {
            lab.relay.ip(cmd).expect(cmd);
        }
        eprintln!("ProxyRelay with the seed answer on the relay:");
        expect_ok(
            "proxied v4",
            tcp_probe(c, sa(ProxyRelay::PROXY_V4, 25), OK),
            "hello 192.0.2.10 ",
        );
        expect_ok(
            "proxied v6",
            tcp_probe(c, sa(ProxyRelay::PROXY_V6, 25), OK),
            "hello 2001:db8:c::10 ",
        );
        expect_ok(
            "direct v4",
            direct(ProxyRelay::RELAY_V4.into()),
            "hello 192.0.2.10 ",
        );
        expect_ok(
            "direct v6",
            direct(ProxyRelay::RELAY_V6.into()),
            "hello 2001:db8:c::10 ",
        );
    }
}
