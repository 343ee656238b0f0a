//! End-to-end: `route_via` with several gateways, with real traffic. The seed 1 firewall
//! (`TwoIsps`) routes its LAN's new connections to a server address that both ISP
//! namespaces own (198.18.0.1 on their `lo`), so the ISP a connection arrived at is the
//! path it took; an nft counter in each ISP namespace counts the datagrams. Every
//! connection is a UDP exchange from its own source port (a new 5-tuple, so a new
//! conntrack entry and a new decision) and must be answered.
//!
//! Needs root, nft and conntrack. Run with `cargo test --test integration e2e_share::`.

use crate::support;
use support::conntrack;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use support::{require_root, symroute_in, RemoveOnDrop};
use symroute::lab::{in_netns, Netns, TwoIsps, UdpEcho};

/// The "internet" server, present in both ISP namespaces.
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PORT: u16 = 9999;
const LAN_HOST: Ipv4Addr = TwoIsps::LAN_V4;

const GATEWAYS: &str = r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
"#;

/// The gateways plus one policy for the LAN's traffic to the server.
fn config(route_via: &str, extra: &str) -> String {
    format!(
        "{GATEWAYS}\n[[policy]]\nname = \"lan-out\"\nroute_via = {route_via}\n{extra}\n[policy.match]\nin_interface = \"lan0\"\n"
    )
}

/// The seed 1 topology with the server in both ISPs, each answering the LAN by way of the
/// firewall and counting what it receives.
struct Lab {
    t: TwoIsps,
    _servers: Vec<UdpEcho>,
}

impl Lab {
    fn build() -> Lab {
        let t = TwoIsps::build().expect("build TwoIsps");
        let mut servers = Vec::new();
        for (isp, fw_addr) in [(&t.isp1, "203.0.113.2"), (&t.isp2, "198.51.100.2")] {
            isp.ip(&format!("addr add {SERVER}/32 dev lo"))
                .expect("server address");
            isp.ip(&format!("route add 10.77.0.0/24 via {fw_addr}"))
                .expect("route back to the LAN");
            isp.nft(&format!(
                "table inet cnt {{\n\tcounter got {{\n\t}}\n\tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\t\tip daddr {SERVER} udp dport {PORT} counter name \"got\"\n\t}}\n}}\n"
            ))
            .expect("counter table");
            servers.push(UdpEcho::start(isp, SocketAddr::new(SERVER.into(), PORT)).expect("echo"));
        }
        Lab {
            t,
            _servers: servers,
        }
    }

    /// Datagrams each ISP's server received so far: (isp1, isp2).
    fn counts(&self) -> (u64, u64) {
        let read = |ns: &Netns| {
            let text = ns
                .exec(&["nft", "list", "counter", "inet", "cnt", "got"])
                .expect("list counter");
            let words: Vec<&str> = text.split_whitespace().collect();
            let i = words
                .iter()
                .position(|w| *w == "packets")
                .unwrap_or_else(|| panic!("no packets in {text}"));
            words[i + 1].parse::<u64>().expect("packet count")
        };
        (read(&self.t.isp1), read(&self.t.isp2))
    }

    /// Runs `n` connections from `src` (source ports `first_port..`), each answered;
    /// returns how many datagrams each ISP got meanwhile.
    fn connections(&self, src: Ipv4Addr, first_port: u16, n: u16) -> (u64, u64) {
        let before = self.counts();
        let answered = in_netns(self.t.lan.name(), move || {
            (0..n)
                .filter(|i| exchange(&bound(src, first_port + i)))
                .count()
        })
        .expect("in lan netns");
        assert_eq!(
            answered,
            usize::from(n),
            "every connection from {src} must be answered"
        );
        let after = self.counts();
        (after.0 - before.0, after.1 - before.1)
    }

    fn apply(&self, config: &str) {
        let run = symroute_in(&self.t.fw, "apply", Some(config), &[]).ok();
        eprintln!("symroute apply:\n{}", run.stdout);
    }
}

/// A UDP socket from `src:port` to the server.
fn bound(src: Ipv4Addr, port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(src.into(), port)).expect("bind");
    s.connect(SocketAddr::new(SERVER.into(), PORT))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("timeout");
    s
}

/// One datagram and its answer.
fn exchange(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 256];
    s.send(b"ping").is_ok() && s.recv(&mut buf).is_ok()
}

/// The conntrack mark of the UDP flow from `src:sport` to the server, in the firewall.
fn ct_mark(fw: &Netns, src: Ipv4Addr, sport: u16) -> u32 {
    let text = fw
        .exec(&[
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--orig-src",
            &src.to_string(),
        ])
        .expect("conntrack -L");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("sport={sport} ")) && l.contains(&format!("dst={SERVER} ")))
        .unwrap_or_else(|| panic!("no conntrack entry for {src}:{sport}:\n{text}"));
    conntrack::field(line, "mark")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mark in {line}"))
}

/// Route marks of isp1 and isp2: ids 26 and 123 from their names, value 2N (`plan::alloc`).
const ISP1_ROUTE: u32 = 0x3400_0000;
const ISP2_ROUTE: u32 = 0xf600_0000;

#[test]
fn weights_3_to_1_over_2000_connections() {
    require_root();
    let lab = Lab::build();
    let _remove = RemoveOnDrop(&lab.t.fw);
    lab.apply(&config("{ isp1 = 3, isp2 = 1 }", ""));
    let (isp1, isp2) = lab.connections(LAN_HOST, 20000, 2000);
    let share = isp1 as f64 * 100.0 / (isp1 + isp2) as f64;
    eprintln!("2000 new connections, weights 3:1: isp1 {isp1}, isp2 {isp2} ({share:.1}% via isp1)");
    assert_eq!(isp1 + isp2, 2000);
    assert!(
        (70.0..=80.0).contains(&share),
        "isp1 took {share:.1}% ({isp1} vs {isp2}); want 75% ± 5"
    );
}

#[test]
fn failover_list_follows_the_first_usable_gateway_and_keeps_connections() {
    require_root();
    let lab = Lab::build();
    let _remove = RemoveOnDrop(&lab.t.fw);
    let cfg = config(r#"["isp1", "isp2"]"#, "");

    // isp1's interface is down at apply: new connections take isp2.
    lab.t.fw.ip("link set up1 down").expect("up1 down");
    lab.apply(&cfg);
    assert_eq!(lab.connections(LAN_HOST, 21000, 20), (0, 20));
    // A flow that stays open across the switch.
    let kept = in_netns(lab.t.lan.name(), || {
        let s = bound(LAN_HOST, 21500);
        assert!(exchange(&s), "first exchange of the kept flow");
        s
    })
    .expect("in lan netns");
    assert_eq!(ct_mark(&lab.t.fw, LAN_HOST, 21500), ISP2_ROUTE);

    // isp1 back, re-applied: new connections take isp1 again.
    lab.t.fw.ip("link set up1 up").expect("up1 up");
    lab.apply(&cfg);
    assert_eq!(lab.connections(LAN_HOST, 22000, 20), (20, 0));
    // The flow that started on isp2 stays there.
    let before = lab.counts();
    for _ in 0..3 {
        assert!(exchange(&kept), "the kept flow must still be answered");
    }
    let after = lab.counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 3));
    assert_eq!(ct_mark(&lab.t.fw, LAN_HOST, 21500), ISP2_ROUTE);
    assert_eq!(ct_mark(&lab.t.fw, LAN_HOST, 22000), ISP1_ROUTE);
}

#[test]
fn sticky_per_source_keeps_a_source_on_one_gateway() {
    require_root();
    let lab = Lab::build();
    let _remove = RemoveOnDrop(&lab.t.fw);
    const SOURCES: u8 = 40;
    for i in 0..SOURCES {
        lab.t
            .lan
            .ip(&format!("addr add 10.77.0.{}/24 dev eth0", 100 + i))
            .expect("extra LAN address");
    }

    // Without sticky, one source's 50 connections use both ISPs.
    lab.apply(&config("{ isp1 = 3, isp2 = 1 }", ""));
    let (a, b) = lab.connections(LAN_HOST, 23000, 50);
    eprintln!("one source, no sticky: isp1 {a}, isp2 {b}");
    assert!(a > 0 && b > 0, "isp1 {a}, isp2 {b}");

    // With sticky, they all take the ISP of the first one ...
    lab.apply(&config("{ isp1 = 3, isp2 = 1 }", "sticky = \"1m\""));
    let (a, b) = lab.connections(LAN_HOST, 24000, 50);
    eprintln!("one source, sticky: isp1 {a}, isp2 {b}");
    assert!((a, b) == (50, 0) || (a, b) == (0, 50), "isp1 {a}, isp2 {b}");
    // Named after the gateway's route mark (isp1 0x34000000, isp2 0xf6000000).
    let set = if a == 50 {
        "sticky_p0_34000000_4"
    } else {
        "sticky_p0_f6000000_4"
    };
    let listed = lab
        .t
        .fw
        .exec(&["nft", "list", "set", "inet", "symroute", set])
        .expect("list sticky set");
    assert!(listed.contains(&LAN_HOST.to_string()), "{listed}");

    // ... while several sources are still spread over both, each staying on its own.
    let (mut a, mut b) = (0, 0);
    for i in 0..SOURCES {
        let src = Ipv4Addr::new(10, 77, 0, 100 + i);
        let (x, y) = lab.connections(src, 25000, 3);
        assert!(x == 0 || y == 0, "{src}: isp1 {x}, isp2 {y}");
        a += x;
        b += y;
    }
    eprintln!("{SOURCES} sources, 3 connections each, sticky: isp1 {a}, isp2 {b}");
    assert!(a > 0 && b > 0, "isp1 {a}, isp2 {b}");

    // A change elsewhere replaces the table: the remembered sources are carried over, so
    // every source keeps its gateway (without the carry-over, ~3/8 of them would move).
    let before: Vec<(Ipv4Addr, bool)> = (0..SOURCES)
        .map(|i| {
            let src = Ipv4Addr::new(10, 77, 0, 100 + i);
            let (x, _) = lab.connections(src, 26000, 1);
            (src, x == 1)
        })
        .collect();
    lab.apply(&format!(
        "{}\n[[policy]]\nname = \"other\"\nroute_via = \"isp2\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 2222\n",
        config("{ isp1 = 3, isp2 = 1 }", "sticky = \"1m\"")
    ));
    let moved: Vec<Ipv4Addr> = before
        .iter()
        .filter(|(src, on_isp1)| {
            let (x, _) = lab.connections(*src, 27000, 1);
            (x == 1) != *on_isp1
        })
        .map(|(src, _)| *src)
        .collect();
    eprintln!(
        "after a table replace: {} of {SOURCES} sources changed ISP",
        moved.len()
    );
    assert!(moved.is_empty(), "sources that lost their ISP: {moved:?}");
}
