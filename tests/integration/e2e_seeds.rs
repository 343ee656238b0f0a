//! End-to-end: the seed scenarios with real TCP/UDP traffic between namespaces. Every test
//! builds its own topology (guards delete it on drop, also when the test panics), shows
//! the failure without symroute, applies with the real binary (`apply --netns`), shows the
//! fix, and checks what the kernel remembered (conntrack marks, `status --json`).
//!
//! Needs root, nft, conntrack and haproxy. Run with
//! `cargo test --test integration e2e_seeds:: -- --test-threads=2`.

use crate::support;
use support::conntrack::{self, dump, Ct};

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use support::{lab, sa};
use support::{named, status_json};
use support::{require_root, symroute_in, Applied};
use symroute::lab::{
    in_netns, tcp_probe, udp_probe, Netns, ProxyRelay, TcpEcho, TcpServer, TwoIsps,
};

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");
const RELAY: &str = include_str!("../../examples/proxy-relay.toml");
const DIVERT: &str = include_str!("../../examples/haproxy-divert.toml");

/// How long a probe that must fail gets (failing probes run in parallel).
const FAIL: Duration = Duration::from_millis(1000);
/// How long a probe that must succeed gets.
const OK: Duration = Duration::from_millis(1500);

/// The conntrack mark of a reply_via decision for isp1: its id, 26, comes from its name,
/// and id N answers with value 2N-1 in the mask 0xff000000 (`plan::alloc`).
const REPLY_ISP1: u32 = 0x3300_0000;
/// … for isp2 (id 123).
const REPLY_ISP2: u32 = 0xf500_0000;
/// … for seed 2's master-relay (id 95).
const REPLY_RELAY: u32 = 0xbd00_0000;
/// The conntrack mark of a route_via decision for isp1 (value 2N).
const ROUTE_ISP1: u32 = 0x3400_0000;

// ---------------------------------------------------------------------------------------
// Probes

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// One probe: a label, where it starts, what it connects to.
#[derive(Clone)]
struct Probe<'a> {
    what: String,
    from: &'a Netns,
    proto: Proto,
    dst: SocketAddr,
}

fn tcp<'a>(what: &str, from: &'a Netns, dst: SocketAddr) -> Probe<'a> {
    Probe {
        what: what.to_string(),
        from,
        proto: Proto::Tcp,
        dst,
    }
}

fn udp<'a>(what: &str, from: &'a Netns, dst: SocketAddr) -> Probe<'a> {
    Probe {
        what: what.to_string(),
        from,
        proto: Proto::Udp,
        dst,
    }
}

/// The probes of (probe, expected prefix) pairs.
fn only_probes<'a>(v: &[(Probe<'a>, String)]) -> Vec<Probe<'a>> {
    v.iter().map(|(p, _)| p.clone()).collect()
}

/// Runs all probes at once (so failing ones cost one timeout in total, not one each).
fn run_probes(probes: &[Probe<'_>], timeout: Duration) -> Vec<anyhow::Result<String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                s.spawn(move || match p.proto {
                    Proto::Tcp => tcp_probe(p.from, p.dst, timeout),
                    Proto::Udp => udp_probe(p.from, p.dst, timeout),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    })
}

/// Every probe must fail (time out, be refused or unreachable): the failure symroute fixes.
fn expect_all_fail(stage: &str, probes: &[Probe<'_>]) {
    let results = run_probes(probes, FAIL);
    let mut unexpected = Vec::new();
    for (p, r) in probes.iter().zip(results) {
        match r {
            Ok(line) => unexpected.push(format!("{}: answered {line:?}", p.what)),
            Err(e) => eprintln!("  [{stage}] {}: fails as expected: {e:#}", p.what),
        }
    }
    assert!(
        unexpected.is_empty(),
        "{stage}: these must fail but worked:\n  {}",
        unexpected.join("\n  ")
    );
}

/// Every probe must answer with a line starting with its expected prefix; returns the
/// answers in probe order.
fn expect_all_ok(stage: &str, probes: &[(Probe<'_>, String)]) -> Vec<String> {
    let results = run_probes(&only_probes(probes), OK);
    let mut problems = Vec::new();
    let mut answers = Vec::new();
    for ((p, prefix), r) in probes.iter().zip(results) {
        match r {
            Ok(line) if line.starts_with(prefix.as_str()) => {
                eprintln!("  [{stage}] {}: ok: {line}", p.what);
                answers.push(line);
            }
            Ok(line) => {
                problems.push(format!("{}: expected {prefix:?}…, got {line:?}", p.what));
                answers.push(line);
            }
            Err(e) => {
                problems.push(format!("{}: {e:#}", p.what));
                answers.push(String::new());
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{stage}: these must work:\n  {}",
        problems.join("\n  ")
    );
    answers
}

/// `hello <ip> <port>` / `echo <ip> <port>` → (ip, port) as the server saw the peer.
fn peer_of(answer: &str) -> (IpAddr, u16) {
    let w: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(w.len(), 3, "unexpected answer {answer:?}");
    (
        w[1].parse()
            .unwrap_or_else(|_| panic!("bad ip in {answer:?}")),
        w[2].parse()
            .unwrap_or_else(|_| panic!("bad port in {answer:?}")),
    )
}

// ---------------------------------------------------------------------------------------
// symroute runs

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

// ---------------------------------------------------------------------------------------
// conntrack

/// The entry whose original tuple is exactly this TCP connection.
fn ct_entry(entries: &[Ct], src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> &Ct {
    let found: Vec<&Ct> = entries
        .iter()
        .filter(|c| {
            c.proto == "tcp" && c.src == src && c.sport == sport && c.dst == dst && c.dport == dport
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one conntrack entry tcp {src}:{sport} -> {dst}:{dport}, found {}:\n{}",
        found.len(),
        dump(entries)
    );
    found[0]
}

// ---------------------------------------------------------------------------------------
// Seed 1

fn seed1_tcp_probes(t: &TwoIsps) -> Vec<(Probe<'_>, String)> {
    let c = &t.client;
    vec![
        (
            tcp("TCP 25 on fw (v4)", c, sa(TwoIsps::FW_UP1_V4, 25)),
            "hello 192.0.2.10 ".into(),
        ),
        (
            tcp("TCP 25 on fw (v6)", c, sa(TwoIsps::FW_UP1_V6, 25)),
            "hello 2001:db8:c::10 ".into(),
        ),
        (
            tcp("TCP 2525 DNAT to LAN (v4)", c, sa(TwoIsps::FW_UP1_V4, 2525)),
            "hello 192.0.2.10 ".into(),
        ),
        (
            tcp("TCP 2525 DNAT to LAN (v6)", c, sa(TwoIsps::FW_UP1_V6, 2525)),
            "hello 2001:db8:c::10 ".into(),
        ),
    ]
}

#[test]
fn seed1_local_and_dnat_ipv4_ipv6() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    let probes = seed1_tcp_probes(&t);

    expect_all_fail("without symroute", &only_probes(&probes));

    let applied = Applied::apply(&t.fw, FIREWALL);
    let answers = expect_all_ok("with symroute", &probes);
    // The LAN server (DNAT) saw the client itself, not the firewall.
    assert_eq!(peer_of(&answers[2]).0, IpAddr::V4(TwoIsps::CLIENT_V4));
    assert_eq!(peer_of(&answers[3]).0, IpAddr::V6(TwoIsps::CLIENT_V6));

    // Each answered connection is remembered as isp1's (reply mark 0x33000000).
    let ct = conntrack::list(&t.fw, &[]);
    for (i, answer) in answers.iter().enumerate() {
        let (ip, port) = peer_of(answer);
        let e = ct
            .iter()
            .find(|c| c.proto == "tcp" && c.src == ip && c.sport == port)
            .unwrap_or_else(|| panic!("no conntrack entry for {answer:?}:\n{}", dump(&ct)));
        assert_eq!(e.mark, REPLY_ISP1, "{}: {}", probes[i].0.what, e.line);
    }

    let st = status_json(&t.fw, Some(FIREWALL));
    eprintln!("status --json:\n{st:#}");
    assert_eq!(st["applied"], true, "{st:#}");
    let isp1 = named(&st, "gateways", "isp1");
    assert!(num(isp1, "connections") >= 4, "isp1 connections: {isp1:#}");
    named(&st, "gateways", "isp2");
    let pol = named(&st, "policies", "answer-on-isp1");
    assert!(num(pol, "packets") >= 4, "answer-on-isp1 packets: {pol:#}");
    assert!(num(pol, "bytes") > 0, "answer-on-isp1 bytes: {pol:#}");

    let out = symroute_in(&t.fw, "remove", None, &[]).ok();
    eprintln!("symroute remove:\n{}", out.stdout);
    expect_all_fail("after symroute remove", &only_probes(&probes));
    drop(applied);
}

#[test]
fn seed1_udp_request_response() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    let c = &t.client;
    let probes = || {
        vec![
            (
                udp("UDP 5353 on fw (v4)", c, sa(TwoIsps::FW_UP1_V4, 5353)),
                "echo 192.0.2.10 ".to_string(),
            ),
            (
                udp("UDP 5353 on fw (v6)", c, sa(TwoIsps::FW_UP1_V6, 5353)),
                "echo 2001:db8:c::10 ".to_string(),
            ),
        ]
    };

    expect_all_fail("without symroute", &only_probes(&probes()));
    let _applied = Applied::apply(&t.fw, FIREWALL);
    let answers = expect_all_ok("with symroute", &probes());

    let ct = conntrack::list(&t.fw, &[]);
    for answer in &answers {
        let (ip, port) = peer_of(answer);
        let e = ct
            .iter()
            .find(|c| c.proto == "udp" && c.src == ip && c.sport == port && c.dport == 5353)
            .unwrap_or_else(|| panic!("no conntrack entry for {answer:?}:\n{}", dump(&ct)));
        assert_eq!(e.mark, REPLY_ISP1, "{}", e.line);
    }
}

// ---------------------------------------------------------------------------------------
// Seed 2

#[test]
fn seed2_proxy_relay_with_haproxy() {
    require_root();
    let t = ProxyRelay::build().expect("build ProxyRelay");
    let _svc = t.start_services().expect("services");
    let c = &t.client;
    let direct = || {
        vec![
            (
                tcp("direct to relay (v4)", c, sa(ProxyRelay::RELAY_V4, 25)),
                "hello 192.0.2.10 ".to_string(),
            ),
            (
                tcp("direct to relay (v6)", c, sa(ProxyRelay::RELAY_V6, 25)),
                "hello 2001:db8:c::10 ".to_string(),
            ),
        ]
    };
    let proxied = || {
        vec![
            (
                tcp("through HAProxy (v4)", c, sa(ProxyRelay::PROXY_V4, 25)),
                "hello 192.0.2.10 ".to_string(),
            ),
            (
                tcp("through HAProxy (v6)", c, sa(ProxyRelay::PROXY_V6, 25)),
                "hello 2001:db8:c::10 ".to_string(),
            ),
        ]
    };

    // The divert on the HAProxy host only: HAProxy's transparent sockets get their
    // answers, but the relay still answers proxied connections via the router.
    let _divert = Applied::apply(&t.proxy, DIVERT);
    let st = status_json(&t.proxy, Some(DIVERT));
    assert_eq!(st["applied"], true, "divert status on the proxy: {st:#}");
    expect_all_ok("divert only: direct", &direct());
    expect_all_fail("divert only: proxied", &only_probes(&proxied()));

    let _relay = Applied::apply(&t.relay, RELAY);
    let direct_answers = expect_all_ok("with symroute: direct", &direct());
    let proxied_answers = expect_all_ok("with symroute: proxied", &proxied());

    // Which path the relay remembered, per connection: the answer names the source port
    // the relay saw (the client's own for direct connections, HAProxy's for proxied ones).
    let ct = conntrack::list(&t.relay, &[]);
    eprintln!("conntrack on the relay:\n{}", dump(&ct));
    let relay_of = |ip: IpAddr| -> IpAddr {
        match ip {
            IpAddr::V4(_) => ProxyRelay::RELAY_V4.into(),
            IpAddr::V6(_) => ProxyRelay::RELAY_V6.into(),
        }
    };
    for a in &proxied_answers {
        let (ip, port) = peer_of(a);
        let e = ct_entry(&ct, ip, port, relay_of(ip), 25);
        assert_eq!(
            e.mark, REPLY_RELAY,
            "proxied {a:?} must carry the master-relay mark: {}",
            e.line
        );
    }
    for a in &direct_answers {
        let (ip, port) = peer_of(a);
        let e = ct_entry(&ct, ip, port, relay_of(ip), 25);
        assert_eq!(e.mark, 0, "direct {a:?} must stay unmarked: {}", e.line);
    }
    let marked = ct.iter().filter(|c| c.mark == REPLY_RELAY).count();
    let unmarked = ct.iter().filter(|c| c.mark == 0).count();
    assert!(
        marked >= proxied_answers.len(),
        "marked entries:\n{}",
        dump(&ct)
    );
    assert!(
        unmarked >= direct_answers.len(),
        "unmarked entries:\n{}",
        dump(&ct)
    );
    if marked != proxied_answers.len() {
        eprintln!(
            "note: {marked} marked entries for {} proxied probes (HAProxy retries of the failed attempts)",
            proxied_answers.len()
        );
    }

    let st = status_json(&t.relay, Some(RELAY));
    eprintln!("relay status --json:\n{st:#}");
    assert!(
        num(named(&st, "gateways", "master-relay"), "connections") >= 2,
        "{st:#}"
    );
    assert!(
        num(named(&st, "policies", "proxied"), "packets") >= 2,
        "{st:#}"
    );
}

// ---------------------------------------------------------------------------------------
// route_via

const ROUTE_SMTP: &str = r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
via6 = "2001:db8:1::1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
via6 = "2001:db8:2::1"

[[policy]]
name = "smtp-via-isp1"
route_via = "isp1"
[policy.match]
protocol = "tcp"
destination_port = 25
"#;

#[test]
fn route_via_new_connections() {
    let t = lab();
    // ISP1 can carry the LAN's traffic back (the client answers the LAN's own addresses).
    t.isp1
        .ip("route add 10.77.0.0/24 via 203.0.113.2")
        .expect("isp1 v4 route");
    t.isp1
        .ip("-6 route add fd77::/64 via 2001:db8:1::2")
        .expect("isp1 v6 route");
    let client_v4: IpAddr = TwoIsps::CLIENT_V4.into();
    let client_v6: IpAddr = TwoIsps::CLIENT_V6.into();
    let _servers: Vec<TcpServer> = [client_v4, client_v6]
        .into_iter()
        .flat_map(|ip| [sa(ip, 25), sa(ip, 2626)])
        .map(|a| TcpServer::start(&t.client, a).expect("client server"))
        .collect();

    let lan_smtp = || {
        vec![
            (
                tcp("LAN -> client:25 (v4)", &t.lan, sa(client_v4, 25)),
                "hello 10.77.0.10 ".to_string(),
            ),
            (
                tcp("LAN -> client:25 (v6)", &t.lan, sa(client_v6, 25)),
                "hello fd77::10 ".to_string(),
            ),
        ]
    };
    let other_port = || {
        vec![
            tcp("LAN -> client:2626 (v4)", &t.lan, sa(client_v4, 2626)),
            tcp("LAN -> client:2626 (v6)", &t.lan, sa(client_v6, 2626)),
        ]
    };
    let local_smtp = || {
        vec![
            (
                tcp("fw itself -> client:25 (v4)", &t.fw, sa(client_v4, 25)),
                // masqueraded to up1's address
                format!("hello {} ", TwoIsps::FW_UP1_V4),
            ),
            (
                tcp("fw itself -> client:25 (v6)", &t.fw, sa(client_v6, 25)),
                format!("hello {} ", TwoIsps::FW_UP1_V6),
            ),
        ]
    };

    let mut before = only_probes(&lan_smtp());
    before.extend(other_port());
    before.extend(only_probes(&local_smtp()));
    expect_all_fail("without symroute", &before);

    let _applied = Applied::apply(&t.fw, ROUTE_SMTP);
    let answers = expect_all_ok("with symroute: forwarded", &lan_smtp());
    // The decision is remembered for the connection: route mark of isp1 (value 2×26).
    let ct = conntrack::list(&t.fw, &[]);
    for a in &answers {
        let (ip, port) = peer_of(a);
        let dst = if ip.is_ipv4() { client_v4 } else { client_v6 };
        let e = ct_entry(&ct, ip, port, dst, 25);
        assert_eq!(e.mark, ROUTE_ISP1, "{}", e.line);
    }
    // Only port 25 is steered: the rest still follows the default route (ISP2, drops).
    expect_all_fail("with symroute: other port", &other_port());
    // Connections the firewall opens itself leave via up1 with up1's address.
    expect_all_ok("with symroute: locally generated", &local_smtp());
}

// ---------------------------------------------------------------------------------------
// Policy order and stickiness

fn two_reply_policies(first: (&str, &str), second: (&str, &str)) -> String {
    let policy = |(gw, extra): (&str, &str), n: usize| {
        format!(
            "[[policy]]\nname = \"p{n}-{gw}\"\nreply_via = \"{gw}\"\n[policy.match]\nin_interface = \"up1\"\n{extra}\n"
        )
    };
    format!(
        "{}\n{}\n{}",
        r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
via6 = "2001:db8:1::1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
via6 = "2001:db8:2::1"
"#,
        policy(first, 1),
        policy(second, 2)
    )
}

const SMTP_ONLY: &str = "protocol = \"tcp\"\ndestination_port = 25";

/// A client connection kept open: connect from `ns`, read the greeting.
fn open_session(ns: &Netns, dst: SocketAddr) -> (BufReader<TcpStream>, String) {
    let s = in_netns(ns.name(), move || TcpStream::connect_timeout(&dst, OK))
        .expect("netns")
        .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    s.set_read_timeout(Some(OK)).expect("read timeout");
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .unwrap_or_else(|e| panic!("greeting from {dst}: {e}"));
    (r, greeting.trim().to_string())
}

fn ping_session(r: &mut BufReader<TcpStream>, word: &str) -> std::io::Result<String> {
    r.get_mut().write_all(format!("{word}\n").as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[test]
fn first_match_wins_and_sticky() {
    let t = lab();
    let fw_v4: IpAddr = TwoIsps::FW_UP1_V4.into();
    let fw_v6: IpAddr = TwoIsps::FW_UP1_V6.into();
    let _echo =
        [sa(fw_v4, 25), sa(fw_v6, 25)].map(|a| TcpEcho::start(&t.fw, a).expect("echo server"));
    let c = &t.client;
    let smtp = || {
        vec![
            (
                tcp("TCP 25 on fw (v4)", c, sa(fw_v4, 25)),
                "hello 192.0.2.10 ".to_string(),
            ),
            (
                tcp("TCP 25 on fw (v6)", c, sa(fw_v6, 25)),
                "hello 2001:db8:c::10 ".to_string(),
            ),
        ]
    };
    expect_all_fail("without symroute", &only_probes(&smtp()));

    // The specific policy (→ isp1) first: it wins for TCP 25.
    let smtp_first = two_reply_policies(("isp1", SMTP_ONLY), ("isp2", ""));
    let _applied = Applied::apply(&t.fw, &smtp_first);
    let answers = expect_all_ok("smtp policy first", &smtp());
    // A connection that stays open across the re-apply below.
    let (mut session, greeting) = open_session(c, sa(fw_v4, 25));
    assert!(greeting.starts_with("hello 192.0.2.10 "), "{greeting:?}");
    assert_eq!(
        ping_session(&mut session, "one").expect("session echo"),
        "one"
    );

    let ct = conntrack::list(&t.fw, &[]);
    for a in answers.iter().chain([&greeting]) {
        let (ip, port) = peer_of(a);
        let dst = if ip.is_ipv4() { fw_v4 } else { fw_v6 };
        let e = ct_entry(&ct, ip, port, dst, 25);
        assert_eq!(
            e.mark, REPLY_ISP1,
            "first policy (isp1) must win: {}",
            e.line
        );
    }
    let st = status_json(&t.fw, Some(&smtp_first));
    assert!(
        num(named(&st, "policies", "p1-isp1"), "packets") >= 3,
        "{st:#}"
    );
    assert_eq!(
        num(named(&st, "policies", "p2-isp2"), "packets"),
        0,
        "{st:#}"
    );

    // Swapped: the catch-all (→ isp2, which drops) now comes first and wins.
    let catch_all_first = two_reply_policies(("isp2", ""), ("isp1", SMTP_ONLY));
    let out = symroute_in(&t.fw, "apply", Some(&catch_all_first), &[]).ok();
    eprintln!("symroute apply (swapped):\n{}", out.stdout);
    expect_all_fail("catch-all policy first", &only_probes(&smtp()));
    let ct = conntrack::list(&t.fw, &[]);
    let isp2_smtp = ct
        .iter()
        .filter(|c| c.proto == "tcp" && c.dport == 25 && c.mark == REPLY_ISP2)
        .count();
    assert!(
        isp2_smtp >= 2,
        "the failed connections must be remembered as isp2's (mark {REPLY_ISP2}):\n{}",
        dump(&ct)
    );

    // Sticky: the connection classified before the swap keeps its path (isp1).
    assert_eq!(
        ping_session(&mut session, "two").expect("the open connection must keep working"),
        "two"
    );
    let (ip, port) = peer_of(&greeting);
    let e = ct_entry(&conntrack::list(&t.fw, &[]), ip, port, fw_v4, 25).clone();
    assert_eq!(e.mark, REPLY_ISP1, "{}", e.line);
}
