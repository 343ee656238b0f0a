//! explain against real packets: in the seed 1 topology with symroute applied, the egress
//! interface explain predicts for a connection's first packet and for its reply is where
//! nft counters on the firewall see them leave. Both before and after apply, so a
//! prediction that ignored the marks would fail one of the two. Needs root.

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::lab;
use support::{require_root, symroute_in};
use symroute::lab::{tcp_probe, Netns, TwoIsps};

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");

/// Counters per egress interface: replies (port 25, or 2525 once the DNAT is undone at
/// postrouting) and packets to the LAN server.
const COUNT: &str = "table inet count {
  chain post {
    type filter hook postrouting priority 300; policy accept;
    tcp sport { 25, 2525 } oifname \"up1\" counter
    tcp sport { 25, 2525 } oifname \"up2\" counter
    tcp dport 25 oifname \"lan0\" counter
  }
}";

fn counters(fw: &Netns) -> [u64; 3] {
    let text = fw
        .exec(&["nft", "list", "chain", "inet", "count", "post"])
        .expect("list counters");
    let mut out = [0u64; 3];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("counter packets"))
        .collect();
    for (i, l) in lines.iter().enumerate().take(3) {
        let n = l
            .split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        out[i] = n.unwrap_or(0);
    }
    out
}

fn explain(fw: &Netns, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let r = symroute_in(fw, "explain", None, &a).ok();
    serde_json::from_str(&r.stdout).expect("explain --json output")
}

/// `symroute explain --json --from DIR -c CONFIG ARGS`: a snapshot with the plan laid over.
fn explain_offline(
    dir: &std::path::Path,
    cfg: &std::path::Path,
    args: &[&str],
) -> serde_json::Value {
    let mut a = vec![
        "explain",
        "--json",
        "--from",
        dir.to_str().expect("utf-8 path"),
        "-c",
        cfg.to_str().expect("utf-8 path"),
    ];
    a.extend_from_slice(args);
    let r = support::symroute(&a).ok();
    serde_json::from_str(&r.stdout).expect("explain --json output")
}

fn iface(v: &serde_json::Value) -> String {
    v["interface"].as_str().unwrap_or("-").to_string()
}

#[test]
fn predicted_egress_matches_counters() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    t.fw.nft(COUNT).expect("counter table");
    let client = TwoIsps::CLIENT_V4.to_string();
    let fw_addr = TwoIsps::FW_UP1_V4.to_string();
    let local = [
        "--in-interface",
        "up1",
        "--source",
        &client,
        "--destination",
        &fw_addr,
        "--destination-port",
        "25",
    ];
    let dnat = [
        "--in-interface",
        "up1",
        "--source",
        &client,
        "--destination",
        &fw_addr,
        "--destination-port",
        "2525",
    ];

    // Without symroute: explain says the reply leaves via up2 (or the SYN is dropped by
    // strict rp_filter), and the counters agree: nothing leaves via up1.
    let e = explain(&t.fw, &local);
    let before_kind = e["verdict"]["type"].as_str().unwrap_or("").to_string();
    let c0 = counters(&t.fw);
    let _ = tcp_probe(
        &t.client,
        SocketAddr::new(IpAddr::V4(TwoIsps::FW_UP1_V4), 25),
        Duration::from_millis(800),
    );
    let c1 = counters(&t.fw);
    if before_kind == "drop" {
        assert_eq!(c1, c0, "explain predicted a drop, yet packets left: {e:#}");
    } else {
        assert_eq!(iface(&e["reply"]["verdict"]), "up2", "{e:#}");
        assert!(
            c1[1] > c0[1] && c1[0] == c0[0],
            "counters {c0:?} -> {c1:?}, explain: {e:#}"
        );
    }

    symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();

    // Local server: the first packet is delivered locally, the reply leaves via up1.
    let e = explain(&t.fw, &local);
    assert_eq!(e["verdict"]["type"], "local", "{e:#}");
    assert_eq!(iface(&e["reply"]["verdict"]), "up1", "{e:#}");
    assert_eq!(
        e["reply"]["verdict"]["via"],
        TwoIsps::ISP1_V4.to_string(),
        "{e:#}"
    );
    // isp1's reply mark (id 26 from its name).
    assert_eq!(e["reply"]["verdict"]["mark"], "0x33000000", "{e:#}");
    let c0 = counters(&t.fw);
    tcp_probe(
        &t.client,
        SocketAddr::new(IpAddr::V4(TwoIsps::FW_UP1_V4), 25),
        Duration::from_millis(1500),
    )
    .expect("local server answers");
    let c1 = counters(&t.fw);
    assert!(
        c1[0] > c0[0] && c1[1] == c0[1],
        "replies must leave via up1 only: {c0:?} -> {c1:?}"
    );

    // DNAT: the first packet leaves via lan0 to the LAN server, the reply via up1.
    let e = explain(&t.fw, &dnat);
    assert_eq!(e["verdict"]["type"], "unicast", "{e:#}");
    assert_eq!(iface(&e["verdict"]), "lan0", "{e:#}");
    assert_eq!(
        e["verdict"]["destination"],
        TwoIsps::LAN_V4.to_string(),
        "{e:#}"
    );
    assert_eq!(iface(&e["reply"]["verdict"]), "up1", "{e:#}");
    let c0 = counters(&t.fw);
    tcp_probe(
        &t.client,
        SocketAddr::new(IpAddr::V4(TwoIsps::FW_UP1_V4), 2525),
        Duration::from_millis(1500),
    )
    .expect("LAN server answers");
    let c1 = counters(&t.fw);
    assert!(
        c1[2] > c0[2],
        "the first packet must leave via lan0: {c0:?} -> {c1:?}"
    );
    assert!(
        c1[0] > c0[0] && c1[1] == c0[1],
        "replies must leave via up1 only: {c0:?} -> {c1:?}"
    );

    // The same prediction offline: a snapshot, and the plan overlaid on a pristine host.
    symroute_in(&t.fw, "remove", None, &[]).ok();
    let dir = std::env::temp_dir().join(format!("symroute-explain-{}", std::process::id()));
    symroute_in(&t.fw, "snapshot", None, &[dir.to_str().unwrap()]).ok();
    let cfg = dir.join("fw.toml");
    std::fs::write(&cfg, FIREWALL).unwrap();
    let e = explain_offline(&dir, &cfg, &dnat);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(iface(&e["verdict"]), "lan0", "{e:#}");
    assert_eq!(iface(&e["reply"]["verdict"]), "up1", "{e:#}");
    // isp1's table: id 26 from its name, 42000 + 26 - 1.
    assert_eq!(e["reply"]["verdict"]["table"], "42025", "{e:#}");
}

const RELAY: &str = include_str!("../../examples/proxy-relay.toml");
const DIVERT: &str = include_str!("../../examples/haproxy-divert.toml");

/// Counts the relay's answers (198.51.100.20 port 25) arriving at the proxy.
const ANSWERS: &str = "table inet count {
  chain c {
    type filter hook prerouting priority -300; policy accept;
    ip saddr 198.51.100.20 tcp sport 25 counter
  }
}";

/// … and those the router forwards to the client. (Its bridge may pass frames between
/// relay and proxy through the IP hooks too, when br_netfilter is loaded: only what it
/// routes out to the client counts.)
const ROUTED_ANSWERS: &str = "table inet count {
  chain c {
    type filter hook forward priority 0; policy accept;
    oifname \"cl0\" ip saddr 198.51.100.20 tcp sport 25 counter
  }
}";

fn answers(ns: &Netns) -> u64 {
    let text = ns
        .exec(&["nft", "list", "chain", "inet", "count", "c"])
        .expect("list counter");
    text.lines()
        .find(|l| l.contains("counter packets"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Seed 2: explain on the relay predicts the proxied connection's reply goes to the proxy
/// and the direct one's to the router; counters where the answers arrive agree.
#[test]
fn relay_reply_next_hop_matches_where_answers_arrive() {
    require_root();
    let t = symroute::lab::ProxyRelay::build().expect("topology");
    let _svc = t.start_services().expect("services");
    symroute_in(&t.proxy, "apply", Some(DIVERT), &[]).ok();
    symroute_in(&t.relay, "apply", Some(RELAY), &[]).ok();
    t.proxy.nft(ANSWERS).expect("proxy counter");
    t.router.nft(ROUTED_ANSWERS).expect("router counter");
    let client = symroute::lab::ProxyRelay::CLIENT_V4.to_string();
    let relay = symroute::lab::ProxyRelay::RELAY_V4.to_string();
    let base = [
        "--in-interface",
        "eth0",
        "--source",
        &client,
        "--destination",
        &relay,
        "--destination-port",
        "25",
    ];

    let mut proxied = base.to_vec();
    proxied.extend(["--source-mac", symroute::lab::ProxyRelay::PROXY_MAC]);
    let e = explain(&t.relay, &proxied);
    assert_eq!(e["verdict"]["type"], "local", "{e:#}");
    assert_eq!(
        e["reply"]["verdict"]["via"],
        symroute::lab::ProxyRelay::PROXY_V4.to_string(),
        "{e:#}"
    );
    // master-relay's reply mark (id 95 from its name).
    assert_eq!(e["reply"]["verdict"]["mark"], "0xbd000000", "{e:#}");
    let e = explain(&t.relay, &base);
    assert_eq!(
        e["reply"]["verdict"]["via"],
        symroute::lab::ProxyRelay::ROUTER_V4.to_string(),
        "{e:#}"
    );

    let (p0, r0) = (answers(&t.proxy), answers(&t.router));
    let proxy = SocketAddr::new(IpAddr::V4(symroute::lab::ProxyRelay::PROXY_V4), 25);
    tcp_probe(&t.client, proxy, Duration::from_millis(1500)).expect("proxied connection");
    let (p1, r1) = (answers(&t.proxy), answers(&t.router));
    assert!(
        p1 > p0 && r1 == r0,
        "proxied answers must reach the proxy only: proxy {p0}->{p1}, router {r0}->{r1}"
    );
    let direct = SocketAddr::new(IpAddr::V4(symroute::lab::ProxyRelay::RELAY_V4), 25);
    tcp_probe(&t.client, direct, Duration::from_millis(1500)).expect("direct connection");
    let (p2, r2) = (answers(&t.proxy), answers(&t.router));
    assert!(
        r2 > r1 && p2 == p1,
        "direct answers must reach the router only: proxy {p1}->{p2}, router {r1}->{r2}"
    );
    symroute_in(&t.relay, "remove", None, &[]).ok();
    symroute_in(&t.proxy, "remove", None, &[]).ok();
}

/// One of the firewall's own services a client beyond ISP1 uses.
struct Service {
    what: &'static str,
    udp: bool,
    dst: SocketAddr,
}

fn own_services() -> Vec<Service> {
    let v4 = IpAddr::V4(TwoIsps::FW_UP1_V4);
    let v6 = IpAddr::V6(TwoIsps::FW_UP1_V6);
    vec![
        Service {
            what: "TCP v4",
            udp: false,
            dst: SocketAddr::new(v4, TwoIsps::SMTP_PORT),
        },
        Service {
            what: "TCP v6",
            udp: false,
            dst: SocketAddr::new(v6, TwoIsps::SMTP_PORT),
        },
        Service {
            what: "UDP v4",
            udp: true,
            dst: SocketAddr::new(v4, TwoIsps::UDP_PORT),
        },
        Service {
            what: "UDP v6",
            udp: true,
            dst: SocketAddr::new(v6, TwoIsps::UDP_PORT),
        },
    ]
}

/// explain's arguments for the client's connection to `s`.
fn service_args(s: &Service) -> Vec<String> {
    let client = match s.dst {
        SocketAddr::V4(_) => TwoIsps::CLIENT_V4.to_string(),
        SocketAddr::V6(_) => TwoIsps::CLIENT_V6.to_string(),
    };
    [
        "--in-interface",
        "up1",
        "--source",
        &client,
        "--destination",
        &s.dst.ip().to_string(),
        "--destination-port",
        &s.dst.port().to_string(),
        "--protocol",
        if s.udp { "udp" } else { "tcp" },
    ]
    .map(String::from)
    .to_vec()
}

/// Whether explain says the client gets an answer: delivered here, answered via up1.
fn predicts_answer(e: &serde_json::Value) -> bool {
    e["verdict"]["type"] == "local"
        && e["reply"]["verdict"]["type"] == "unicast"
        && iface(&e["reply"]["verdict"]) == "up1"
}

fn answered(t: &TwoIsps, s: &Service) -> bool {
    let timeout = Duration::from_millis(1200);
    if s.udp {
        symroute::lab::udp_probe(&t.client, s.dst, timeout).is_ok()
    } else {
        tcp_probe(&t.client, s.dst, timeout).is_ok()
    }
}

/// explain's prediction and the real sockets' outcome for every service, which must agree;
/// returns the outcomes.
fn predicted_and_real(
    t: &TwoIsps,
    stage: &str,
    explain_with: &dyn Fn(&[String]) -> serde_json::Value,
) -> Vec<bool> {
    let mut out = Vec::new();
    for s in own_services() {
        let e = explain_with(&service_args(&s));
        let (predicted, real) = (predicts_answer(&e), answered(t, &s));
        eprintln!(
            "  [{stage}] {}: explain says {} / {} ({}), the socket {}",
            s.what,
            e["verdict"]["type"],
            e["reply"]["verdict"]["type"],
            e["reply"]["verdict"]["reason"]
                .as_str()
                .or(e["verdict"]["reason"].as_str())
                .unwrap_or(""),
            if real { "got an answer" } else { "got none" }
        );
        assert_eq!(
            predicted, real,
            "{stage}, {}: explain predicted {predicted}, the kernel did {real}: {e:#}",
            s.what
        );
        out.push(real);
    }
    out
}

/// Seed 1 with up2 down, so main has no way back to the client: explain's verdicts for the
/// firewall's own TCP and UDP services (IPv4 and IPv6) agree with real sockets without
/// symroute's local reply rules (the rule set before them: IPv4 SYNs die at loose
/// rp_filter, IPv6 replies at their first lookup before the output hook), with them,
/// and offline from a snapshot of the host without symroute with `-c` (the plan laid
/// over it), checked against the host after `apply`.
#[test]
fn local_replies_without_a_way_back_match_real_sockets() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();
    t.fw.ip("link set up2 down").expect("up2 down");
    // The `from` rules (fallback_priority; several share it).
    for flag in ["-4", "-6"] {
        for prio in ["32800"] {
            while t
                .fw
                .exec(&["ip", flag, "rule", "del", "pref", prio])
                .is_ok()
            {}
        }
        let left = t.fw.ip(&format!("{flag} rule")).expect("ip rule");
        assert!(
            !left.contains("iif lo lookup main") && !left.contains(" from 2"),
            "the local reply rules must be gone:\n{left}"
        );
    }
    let live = |args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        explain(&t.fw, &a)
    };
    let before = predicted_and_real(&t, "without local reply rules", &live);
    assert_eq!(before, [false; 4], "nothing answers without a way back");
    let e = live(&service_args(&own_services()[1]));
    assert_eq!(e["reply"]["verdict"]["type"], "unreachable", "{e:#}");
    assert!(
        e["reply"]["verdict"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("before the output hook"),
        "{e:#}"
    );

    // rp_filter off: the IPv4 requests arrive too, and their answers die at the first
    // lookup as the IPv6 ones do.
    let rp = |all: &str, up1: &str| {
        t.fw.sysctl("net.ipv4.conf.all.rp_filter", all)
            .expect("sysctl");
        t.fw.sysctl("net.ipv4.conf.up1.rp_filter", up1)
            .expect("sysctl");
    };
    rp("0", "0");
    let rp_off = predicted_and_real(&t, "without local reply rules, rp_filter 0", &live);
    assert_eq!(rp_off, [false; 4]);
    let e = live(&service_args(&own_services()[0]));
    assert_eq!(e["reply"]["verdict"]["type"], "unreachable", "{e:#}");
    rp("1", "2");

    symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();
    let after = predicted_and_real(&t, "with local reply rules", &live);
    assert_eq!(after, [true; 4], "every service answers via ISP1");

    // Offline: the host without symroute (up2 still down), the plan laid over it.
    symroute_in(&t.fw, "remove", None, &[]).ok();
    let dir = std::env::temp_dir().join(format!("symroute-explain-noway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    symroute_in(&t.fw, "snapshot", None, &[dir.to_str().unwrap()]).ok();
    let cfg = dir.join("fw.toml");
    std::fs::write(&cfg, FIREWALL).unwrap();
    let overlay = |args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        explain_offline(&dir, &cfg, &a)
    };
    symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();
    let offline = predicted_and_real(&t, "snapshot + -c, checked after apply", &overlay);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(offline, [true; 4]);
    symroute_in(&t.fw, "remove", None, &[]).ok();
}
