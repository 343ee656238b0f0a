//! Seed 1's firewall as an HA pair: two firewalls on shared segments (bridges) for ISP1,
//! ISP2 and the LAN, keepalived (VRRPv3) moving the pair's virtual addresses, conntrackd
//! (FTFW) copying connections over a dedicated sync link. keepalived and conntrackd run
//! from contrib/ha/'s templates, inside the firewalls' namespaces only, with their pid,
//! lock, log and control-socket files in a directory of the caller's.
//!
//! ```text
//!                          ┌ up1 fw-a lan0 ┐
//! client ── isp1 (br0) ────┤  sync0 │      ├──── lan (br0: the LAN server)
//!                          └ up1 fw-b lan0 ┘
//!           isp2 (br0) ──── up2 of both (the default route; drops transit)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::netns::{veth, Netns};
use super::service::{Service, Show};
use super::topology::require_tool;

/// The two firewalls' roles as the lab starts them (keepalived priorities 150 and 100).
pub const FW_NAMES: [&str; 2] = ["fw-a", "fw-b"];

pub struct HaPair {
    /// fw-a (the master at start) and fw-b.
    pub fw: [Netns; 2],
    /// ISP1's router: its bridge is the segment of both firewalls' up1.
    pub isp1: Netns,
    /// ISP2's router (the firewalls' default route; it forwards nothing, as in seed 1).
    pub isp2: Netns,
    /// Beyond ISP1.
    pub client: Netns,
    /// The LAN server; its bridge is the segment of both firewalls' lan0.
    pub lan: Netns,
}

impl HaPair {
    /// The pair's virtual addresses (keepalived moves them).
    pub const VIP_UP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    pub const VIP_UP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    pub const VIP_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    /// Each firewall's own addresses (up1, up2, lan0, sync0).
    pub const FW_UP1: [Ipv4Addr; 2] =
        [Ipv4Addr::new(203, 0, 113, 3), Ipv4Addr::new(203, 0, 113, 4)];
    pub const FW_UP2: [Ipv4Addr; 2] = [
        Ipv4Addr::new(198, 51, 100, 3),
        Ipv4Addr::new(198, 51, 100, 4),
    ];
    pub const FW_LAN: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)];
    pub const FW_SYNC: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 254, 0, 1), Ipv4Addr::new(10, 254, 0, 2)];
    pub const ISP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const ISP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    pub const LAN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
    /// ISP1's virtual address :2525 is DNAT'd to the LAN server's :25.
    pub const DNAT_PORT: u16 = 2525;
    pub const LAN_PORT: u16 = 25;
    /// A server on the client, for the LAN's own (route_via) connections.
    pub const CLIENT_PORT: u16 = 7;

    /// What the firewall's admin configured besides symroute, the same on both boxes: the
    /// DNAT, the LAN's SNAT to the virtual addresses (so the peer can carry the connection
    /// on), and a stateful forward filter that accepts only SYNs as new connections, so a
    /// connection whose conntrack entry is missing is dropped rather than picked up
    /// mid-stream: the entries conntrackd copies are what keep connections alive.
    pub const FIREWALL_NFT: &'static str = "table ip labha {\n\
        \tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
        \t\tiifname \"up1\" ip daddr 203.0.113.2 tcp dport 2525 dnat to 10.77.0.10:25\n\t}\n\
        \tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
        \t\toifname \"up1\" ip saddr 10.77.0.0/24 snat to 203.0.113.2\n\
        \t\toifname \"up2\" ip saddr 10.77.0.0/24 snat to 198.51.100.2\n\t}\n\
        \tchain filter_forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\
        \t\tct state established,related accept\n\
        \t\tct state new tcp flags & (fin | syn | rst | ack) != syn drop\n\
        \t\tiifname \"lan0\" accept\n\
        \t\tct status dnat accept\n\t}\n}\n";

    pub fn build() -> anyhow::Result<HaPair> {
        require_tool("nft", &["--version"])?;
        require_tool("keepalived", &["--version"])?;
        require_tool("conntrackd", &["-v"])?;
        let fw = [Netns::new("fwa")?, Netns::new("fwb")?];
        let isp1 = Netns::new("isp1")?;
        let isp2 = Netns::new("isp2")?;
        let client = Netns::new("client")?;
        let lan = Netns::new("lan")?;

        // The three shared segments: a bridge in the ISP routers and the LAN host.
        // Snooping off: VRRP is multicast, and nothing here is an IGMP querier.
        for (host, addr) in [
            (&isp1, "203.0.113.1/24"),
            (&isp2, "198.51.100.1/24"),
            (&lan, "10.77.0.10/24"),
        ] {
            host.ip("link add br0 type bridge mcast_snooping 0")?;
            host.ip("link set br0 up")?;
            host.ip(&format!("addr add {addr} dev br0"))?;
        }
        for (i, f) in fw.iter().enumerate() {
            for (seg, host) in [("up1", &isp1), ("up2", &isp2), ("lan0", &lan)] {
                let port = format!("{seg}-{}", ["a", "b"][i]);
                veth(f, seg, host, &port)?;
                host.ip(&format!("link set {port} master br0"))?;
            }
            f.ip(&format!("addr add {}/24 dev up1", Self::FW_UP1[i]))?;
            f.ip(&format!("addr add {}/24 dev up2", Self::FW_UP2[i]))?;
            f.ip(&format!("addr add {}/24 dev lan0", Self::FW_LAN[i]))?;
            f.ip(&format!("route add default via {} dev up2", Self::ISP2))?;
            f.sysctl("net.ipv4.ip_forward", "1")?;
            f.nft(Self::FIREWALL_NFT)?;
            // conntrackd's copies carry the window of the moment they were copied: without
            // liberal tracking the backup would call later segments out of window.
            f.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1")?;
        }
        veth(&fw[0], "sync0", &fw[1], "sync0")?;
        for (i, f) in fw.iter().enumerate() {
            f.ip(&format!("addr add {}/30 dev sync0", Self::FW_SYNC[i]))?;
        }

        veth(&isp1, "cl0", &client, "eth0")?;
        isp1.ip("addr add 192.0.2.1/24 dev cl0")?;
        isp1.sysctl("net.ipv4.ip_forward", "1")?;
        isp2.sysctl("net.ipv4.ip_forward", "0")?;
        client.ip("addr add 192.0.2.10/24 dev eth0")?;
        client.ip("route add default via 192.0.2.1")?;
        lan.ip(&format!("route add default via {}", Self::VIP_LAN))?;
        Ok(HaPair {
            fw,
            isp1,
            isp2,
            client,
            lan,
        })
    }

    /// Firewall `i` dies: every link down at once (the sync link too).
    pub fn kill(&self, i: usize) -> anyhow::Result<()> {
        self.fw[i]
            .sh("for l in up1 up2 lan0 sync0; do ip link set $l down; done")
            .map(drop)
    }

    /// Firewall `i` comes back: links up, and the default route the kernel dropped with
    /// up2 put back (as its network configuration would).
    pub fn revive(&self, i: usize) -> anyhow::Result<()> {
        self.fw[i].sh(&format!(
            "for l in sync0 lan0 up2 up1; do ip link set $l up; done; \
             ip route replace default via {} dev up2",
            Self::ISP2
        ))?;
        Ok(())
    }

    /// Whether firewall `i` holds all three virtual addresses.
    pub fn holds_vips(&self, i: usize) -> bool {
        let Ok(out) = self.fw[i].ip("-4 -br addr show") else {
            return false;
        };
        [Self::VIP_UP1, Self::VIP_UP2, Self::VIP_LAN]
            .iter()
            .all(|v| out.split_whitespace().any(|w| w == format!("{v}/24")))
    }

    /// Waits until firewall `i` holds the virtual addresses and the other does not; how
    /// long that took from `since`.
    pub fn wait_master(
        &self,
        i: usize,
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        loop {
            if self.holds_vips(i) && !self.holds_vips(1 - i) {
                return Ok(since.elapsed());
            }
            super::interrupt::check()?;
            if since.elapsed() > limit {
                bail!(
                    "{} does not hold the virtual addresses alone after {limit:?}",
                    FW_NAMES[i]
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The DNAT'd service as the client reaches it.
    pub fn dnat_addr() -> SocketAddr {
        SocketAddr::new(Self::VIP_UP1.into(), Self::DNAT_PORT)
    }

    /// The client's server as the LAN reaches it (route_via via ISP1, SNAT'd).
    pub fn client_addr() -> SocketAddr {
        SocketAddr::new(Self::CLIENT.into(), Self::CLIENT_PORT)
    }
}

/// keepalived and conntrackd on both firewalls. Dropped, they stop (keepalived first, so
/// no notify script runs after), and the HA role their notify scripts recorded in
/// /run/symroute (`symroute ha`) goes with them.
pub struct HaDaemons {
    pub keepalived: Vec<Service>,
    pub conntrackd: Vec<Service>,
    netns: Vec<String>,
}

impl Drop for HaDaemons {
    fn drop(&mut self) {
        for s in self.keepalived.iter_mut().chain(self.conntrackd.iter_mut()) {
            s.stop();
        }
        for ns in self.netns.clone() {
            // In a thread of its own: entering a namespace is per thread.
            let _ = std::thread::spawn(move || {
                crate::kernel::netns::enter(&ns)?;
                crate::kernel::state::forget_ha()
            })
            .join();
        }
    }
}

impl HaDaemons {
    /// Starts conntrackd, then keepalived, on both firewalls, from contrib/ha/'s files
    /// rendered for each box; their files live in `dir`. `symroute` is the binary the
    /// keepalived notify scripts call. `show` prints the lines worth seeing (VRRP state
    /// changes) as they come, prefixed by box; `t0` is the time they are shown from.
    pub fn start(
        pair: &HaPair,
        dir: &Path,
        symroute: &Path,
        show: bool,
        t0: Instant,
    ) -> anyhow::Result<HaDaemons> {
        let mut conntrackd = Vec::new();
        let mut keepalived = Vec::new();
        for (i, f) in pair.fw.iter().enumerate() {
            let name = FW_NAMES[i];
            let d = dir.join(name);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let ct_conf = write(&d, "conntrackd.conf", &conntrackd_conf(i, &d)?)?;
            let ct = Service::start(
                f,
                &format!("conntrackd {name}"),
                &["conntrackd", "-C", &ct_conf],
                None,
            )?;
            conntrackd.push(ct);
            let ka_conf = write(&d, "keepalived.conf", &keepalived_conf(i, symroute)?)?;
            let (pid, vrrp_pid) = (d.join("keepalived.pid"), d.join("vrrp.pid"));
            let show: Option<Show> = show.then(|| -> Show {
                Box::new(move |line: &str| {
                    vrrp_event(line).map(|e| {
                        format!(
                            "  {:>6.2} s  keepalived {name}: {e}",
                            t0.elapsed().as_secs_f64()
                        )
                    })
                })
            });
            let ka = Service::start(
                f,
                &format!("keepalived {name}"),
                &[
                    "keepalived",
                    "--vrrp",
                    "--dont-fork",
                    "--log-console",
                    "--no-syslog",
                    "--use-file",
                    &ka_conf,
                    "--pid",
                    &path_str(&pid)?,
                    "--vrrp_pid",
                    &path_str(&vrrp_pid)?,
                ],
                show,
            )?
            .with_pid_files(vec![vrrp_pid]);
            keepalived.push(ka);
        }
        let mut d = HaDaemons {
            keepalived,
            conntrackd,
            netns: pair.fw.iter().map(|f| f.name().to_string()).collect(),
        };
        // Both up: conntrackd's control socket answers, keepalived reached a state.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for s in d.keepalived.iter_mut().chain(d.conntrackd.iter_mut()) {
                s.check_running()?;
            }
            let ready = (0..2).all(|i| {
                d.keepalived[i]
                    .log()
                    .iter()
                    .any(|l| vrrp_event(l).is_some())
                    && dir.join(FW_NAMES[i]).join("conntrackd.ctl").exists()
            });
            if ready {
                return Ok(d);
            }
            super::interrupt::check()?;
            if Instant::now() > deadline {
                bail!("keepalived and conntrackd not both up after 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every pid they run as (keepalived's VRRP children included), for checking that
    /// none is left.
    pub fn pids(&self, dir: &Path) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .keepalived
            .iter()
            .chain(&self.conntrackd)
            .map(|s| s.pid())
            .collect();
        for name in FW_NAMES {
            if let Ok(t) = std::fs::read_to_string(dir.join(name).join("vrrp.pid")) {
                out.extend(t.trim().parse::<u32>().ok());
            }
        }
        out
    }
}

/// `(up1) Entering MASTER STATE` and the like, from a keepalived log line.
pub fn vrrp_event(line: &str) -> Option<String> {
    let at = line.find(") Entering ")?;
    let start = line[..at].rfind('(')?;
    Some(line[start..].trim().to_string())
}

/// contrib/ha/keepalived.conf for box `i`: its name and priority, and this `symroute`
/// binary in the notify scripts.
pub fn keepalived_conf(i: usize, symroute: &Path) -> anyhow::Result<String> {
    render(
        include_str!("../../contrib/ha/keepalived.conf"),
        &[
            ("@ROUTER_ID@", FW_NAMES[i]),
            ("@PRIORITY@", ["150", "100"][i]),
        ],
    )
    .map(|t| t.replace("/usr/sbin/symroute", &symroute.display().to_string()))
}

/// contrib/ha/conntrackd.conf for box `i`, its files in `dir` and nothing in syslog.
pub fn conntrackd_conf(i: usize, dir: &Path) -> anyhow::Result<String> {
    let local = HaPair::FW_SYNC[i].to_string();
    let peer = HaPair::FW_SYNC[1 - i].to_string();
    let lock = format!("LockFile {}", dir.join("conntrackd.lock").display());
    let ctl = format!("Path {}", dir.join("conntrackd.ctl").display());
    render(
        include_str!("../../contrib/ha/conntrackd.conf"),
        &[
            ("@SYNC_LOCAL@", &local),
            ("@SYNC_PEER@", &peer),
            ("Syslog on", "Syslog off"),
            ("LockFile /var/lock/conntrackd.lock", &lock),
            ("Path /var/run/conntrackd.ctl", &ctl),
        ],
    )
}

/// Replaces each `from` (which must occur in the template: a template that changed shape
/// fails here, not in a daemon) and checks no `@NAME@` placeholder is left.
fn render(template: &str, subst: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = template.to_string();
    for (from, to) in subst {
        if !out.contains(from) {
            bail!("template has no {from:?}");
        }
        out = out.replace(from, to);
    }
    if let Some(at) = out
        .find('@')
        .filter(|at| out[at + 1..].find('@').is_some_and(|n| n < 32))
    {
        let tail: String = out[at..].chars().take(32).collect();
        bail!("template placeholder left unreplaced: {tail:?}");
    }
    Ok(out)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    path_str(&p)
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_for_both_boxes() {
        let dir = Path::new("/tmp/lab");
        for (i, name) in FW_NAMES.iter().enumerate() {
            let k = keepalived_conf(i, Path::new("/opt/symroute")).unwrap();
            assert!(k.contains(&format!("router_id {name}")), "{k}");
            assert!(!k.contains('@'), "{k}");
            let c = conntrackd_conf(i, dir).unwrap();
            assert!(
                c.contains(&format!("IPv4_address {}\n", HaPair::FW_SYNC[i])),
                "{c}"
            );
            assert!(c.contains("LockFile /tmp/lab/conntrackd.lock"), "{c}");
            assert!(!c.contains('@'), "{c}");
        }
        assert!(render("x @A@", &[]).is_err());
        assert!(render("x", &[("y", "z")]).is_err());
    }

    #[test]
    fn vrrp_events_are_found_in_keepalived_lines() {
        assert_eq!(
            vrrp_event("Mon Dec  7 03:21:41 2026: (up1) Entering MASTER STATE").as_deref(),
            Some("(up1) Entering MASTER STATE")
        );
        assert_eq!(
            vrrp_event("Mon Dec  7 03:21:40 2026: (up1) Entering BACKUP STATE (init)").as_deref(),
            Some("(up1) Entering BACKUP STATE (init)")
        );
        assert_eq!(vrrp_event("Mon Dec  7: (up1) setting VIPs."), None);
    }
}
