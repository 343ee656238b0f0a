//! End-to-end: the firewall's own services answer clients beyond ISP1 when unmarked
//! traffic has no route back to them (issue 18). Seed 1's firewall with
//! examples/two-isps-firewall.toml, and main without a default route: up2 (which holds
//! it) goes down, or the host has none by design.
//!
//! The kernel routes a packet this host sends (a SYN-ACK, a UDP answer) once with the
//! socket's mark before the output hook, where symroute restores the connection's mark;
//! with no route in main that lookup fails (ENETUNREACH) and nothing is sent. symroute's
//! `from ADDRESS lookup TABLE` rules (after main and default) let it succeed via
//! the gateway that owns the address. The failure is shown with exactly those rules
//! deleted again (the rule set symroute applied before it made them).
//!
//! Needs root. Run with `cargo test --test integration e2e_local_replies:: -- --test-threads=2`.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use support::daemon::Daemon;
use support::{lab, sa};
use support::{symroute_in, Applied};
use symroute::lab::{tcp_probe, udp_probe, Netns, TcpServer, TwoIsps, UdpEcho, UdpSource};

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");

/// How long a probe gets (all probes of a round run at once).
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Wildcard-bound UDP echo answering by plain `sendto` (source chosen by routing).
const UDP_ROUTED: u16 = 5354;
/// Wildcard-bound UDP echo answering from the request's address (IP_PKTINFO).
const UDP_PKTINFO: u16 = 5355;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One way a client beyond ISP1 reaches the firewall.
struct Probe {
    what: &'static str,
    proto: Proto,
    dst: SocketAddr,
}

/// The servers besides the lab's (TCP :25 on 0.0.0.0 and up1's IPv6 address, UDP :5353
/// bound to up1's addresses, the LAN's :25 behind the DNAT on :2525).
fn wildcard_udp(fw: &Netns) -> Vec<UdpEcho> {
    [
        (false, UDP_ROUTED, UdpSource::Routed),
        (true, UDP_ROUTED, UdpSource::Routed),
        (false, UDP_PKTINFO, UdpSource::Pktinfo),
        (true, UDP_PKTINFO, UdpSource::Pktinfo),
    ]
    .into_iter()
    .map(|(v6, port, how)| UdpEcho::start_wildcard(fw, v6, port, how).expect("udp echo"))
    .collect()
}

fn probes(v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<Probe> {
    let p = |what, proto, ip: IpAddr, port| Probe {
        what,
        proto,
        dst: sa(ip, port),
    };
    let (a4, a6) = (IpAddr::V4(v4), IpAddr::V6(v6));
    vec![
        p("local TCP :25 v4", Proto::Tcp, a4, TwoIsps::SMTP_PORT),
        p("local TCP :25 v6", Proto::Tcp, a6, TwoIsps::SMTP_PORT),
        p("local UDP bound v4", Proto::Udp, a4, TwoIsps::UDP_PORT),
        p("local UDP bound v6", Proto::Udp, a6, TwoIsps::UDP_PORT),
        p("local UDP wildcard+pktinfo v4", Proto::Udp, a4, UDP_PKTINFO),
        p("local UDP wildcard+pktinfo v6", Proto::Udp, a6, UDP_PKTINFO),
        p("local UDP wildcard v4", Proto::Udp, a4, UDP_ROUTED),
        p("local UDP wildcard v6", Proto::Udp, a6, UDP_ROUTED),
        p("DNAT TCP :2525 v4", Proto::Tcp, a4, TwoIsps::DNAT_PORT),
        p("DNAT TCP :2525 v6", Proto::Tcp, a6, TwoIsps::DNAT_PORT),
    ]
}

/// Runs every probe at once from the client; whether each answered, naming the client
/// as the server saw it.
fn run(t: &TwoIsps, probes: &[Probe]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                let c = &t.client;
                s.spawn(move || match p.proto {
                    Proto::Tcp => tcp_probe(c, p.dst, TIMEOUT),
                    Proto::Udp => udp_probe(c, p.dst, TIMEOUT),
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(probes)
            .map(|(h, p)| {
                let r = h.join().expect("probe thread");
                let client = match p.dst {
                    SocketAddr::V4(_) => TwoIsps::CLIENT_V4.to_string(),
                    SocketAddr::V6(_) => TwoIsps::CLIENT_V6.to_string(),
                };
                match &r {
                    Ok(line) => eprintln!("    {:<32} answered: {line}", p.what),
                    Err(e) => eprintln!("    {:<32} no answer: {e:#}", p.what),
                }
                r.is_ok_and(|l| l.split_whitespace().nth(1) == Some(client.as_str()))
            })
            .collect()
    })
}

/// Checks each probe's outcome against `want` (probe label → answers?, `None`: either).
fn expect(stage: &str, probes: &[Probe], got: &[bool], want: &dyn Fn(&str) -> Option<bool>) {
    eprintln!("  [{stage}]");
    let wrong: Vec<String> = probes
        .iter()
        .zip(got)
        .filter(|(p, ok)| want(p.what).is_some_and(|w| w != **ok))
        .map(|(p, ok)| {
            format!(
                "{}: {}",
                p.what,
                if *ok {
                    "answered, expected no answer"
                } else {
                    "no answer, expected one"
                }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{stage}:\n  {}", wrong.join("\n  "));
}

/// What answers with symroute's local reply rules when main has no route back: every
/// local service that answers from the address the client used, and IPv6 DNAT. A
/// wildcard-bound IPv4 UDP server's `sendto` does its one lookup with no source
/// (ENETUNREACH). IPv6 then picks a source by address selection: up1's when it is the
/// only global address left (up2 down), either otherwise (not asserted). IPv4 DNAT:
/// loose rp_filter drops the client's first packet, having no route back at all
/// (forwarded traffic, not a local reply).
fn fixed(up2_addresses: bool) -> impl Fn(&str) -> Option<bool> {
    move |what| match what {
        "local UDP wildcard v4" | "DNAT TCP :2525 v4" => Some(false),
        "local UDP wildcard v6" if up2_addresses => None,
        _ => Some(true),
    }
}

/// Without the rules only IPv6 DNAT answers (IPv4 DNAT: rp_filter, as above).
fn broken(what: &str) -> Option<bool> {
    Some(what == "DNAT TCP :2525 v6")
}

/// symroute's rules that exist for local replies: the `from ADDRESS` rules, as (family
/// flag, priority, `ip rule` line).
fn local_reply_rules(ns: &Netns) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for flag in ["-4", "-6"] {
        let text = ns.exec(&["ip", flag, "rule", "show"]).expect("ip rule");
        for line in text.lines().filter(|l| l.contains("proto 157")) {
            let (prio, rest) = line.split_once(':').expect("priority");
            if !rest.trim_start().starts_with("from all") || rest.contains(" iif lo ") {
                out.push((flag, prio.to_string(), line.to_string()));
            }
        }
    }
    out
}

/// Deletes the local reply rules: the rule set symroute applied before it had them.
fn strip_local_reply_rules(ns: &Netns) {
    let rules = local_reply_rules(ns);
    assert!(
        rules
            .iter()
            .any(|(_, _, l)| l.contains("from 203.0.113.2 ")),
        "symroute made no `from` rule for up1's address: {rules:#?}"
    );
    for (flag, prio, _) in rules {
        ns.exec(&["ip", flag, "rule", "del", "pref", &prio])
            .expect("ip rule del");
    }
}

/// The host's own rules keep deciding where its own unmarked packets go: a hand-made
/// `from` rule for another path, and wg-quick's full-tunnel pair (`suppress_prefixlength
/// 0`, then `not fwmark 0xca6c lookup 51820`). The local reply rules are a fallback after
/// main and default, so none of them is passed over (an earlier layout's `iif lo lookup
/// main` in symroute's range took every such packet to main first).
#[test]
fn the_hosts_own_rules_still_route_its_own_packets() {
    support::require_root();
    let t = TwoIsps::build().expect("build TwoIsps");
    for c in [
        "route add default via 203.0.113.1 dev up1 table 100",
        "rule add pref 5000 from 198.51.100.2 lookup 100",
        "route add default via 10.77.0.10 dev lan0 table 51820",
        "rule add pref 32764 lookup main suppress_prefixlength 0",
        "rule add pref 32765 not fwmark 0xca6c lookup 51820",
    ] {
        t.fw.ip(c).expect(c);
    }
    let routes = || {
        [
            "route get 192.0.2.10 from 198.51.100.2",
            "route get 192.0.2.10",
            "route get 192.0.2.10 mark 0xca6c",
        ]
        .map(|q| t.fw.ip(q).expect(q))
    };
    let before = routes();
    assert!(before[0].contains("table 100"), "{before:?}");
    assert!(before[1].contains("dev lan0 table 51820"), "{before:?}");
    assert!(before[2].contains("dev up2"), "{before:?}");
    let _applied = Applied::apply(&t.fw, FIREWALL);
    assert!(
        !local_reply_rules(&t.fw).is_empty(),
        "the local reply rules are in place"
    );
    assert_eq!(routes(), before, "symroute moved the host's own packets");
}

fn main_defaults(t: &TwoIsps) -> String {
    t.fw.ip("route show default").expect("ip route")
        + &t.fw.ip("-6 route show default").expect("ip -6 route")
}

#[test]
fn local_replies_without_main_default_apply() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    let _udp = wildcard_udp(&t.fw);
    let probes = probes(TwoIsps::FW_UP1_V4, TwoIsps::FW_UP1_V6);
    let _applied = Applied::apply(&t.fw, FIREWALL);
    let up = run(&t, &probes);
    // With main's default up, every reply that leaves from the address the client used
    // answers; a wildcard UDP server's answers leave from up2's address (no conntrack
    // reply, no mark) via ISP2, and are lost.
    expect("main's default up", &probes, &up, &|w| {
        Some(!w.starts_with("local UDP wildcard "))
    });

    t.fw.ip("link set up2 down").expect("up2 down");
    assert!(main_defaults(&t).trim().is_empty(), "{}", main_defaults(&t));
    strip_local_reply_rules(&t.fw);
    let before = run(&t, &probes);
    expect(
        "up2 down, without local reply rules",
        &probes,
        &before,
        &broken,
    );

    // apply puts them back (the addresses left on the gateways' interfaces).
    let again = symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();
    eprintln!("apply again:\n{}", again.stdout);
    for want in [
        // At fallback_priority, after main and default; isp1's table is 42025 (its id,
        // 26, from its name).
        "+ ip -4 rule pref 32800 from 203.0.113.2/32 lookup 42025 protocol 157",
        "+ ip -6 rule pref 32800 from 2001:db8:1::2/128 lookup 42025 protocol 157",
    ] {
        assert!(again.stdout.contains(want), "{want}:\n{}", again.stdout);
    }
    let after = run(&t, &probes);
    expect(
        "up2 down, with local reply rules",
        &probes,
        &after,
        &fixed(false),
    );

    // plan shows them, remove takes them away.
    let plan = symroute_in(&t.fw, "plan", Some(FIREWALL), &[]).ok();
    assert!(plan.stdout.contains("no changes"), "{}", plan.stdout);
    symroute_in(&t.fw, "remove", None, &[]).ok();
    assert!(
        local_reply_rules(&t.fw).is_empty(),
        "{:?}",
        local_reply_rules(&t.fw)
    );
}

/// The daemon on a host with no main default by design (up2 stays up, the default
/// routes are deleted): it answers via ISP1 at once, repairs the rules when they are
/// deleted, and follows a renumbered uplink (the DHCP case) within a second.
#[test]
fn local_replies_without_main_default_run_and_renumbered() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    let _udp = wildcard_udp(&t.fw);
    t.fw.ip("route del default").expect("del default");
    t.fw.ip("-6 route del default").expect("del default v6");
    let d = Daemon::start(&t.fw, FIREWALL);
    let probes = probes(TwoIsps::FW_UP1_V4, TwoIsps::FW_UP1_V6);
    let got = run(&t, &probes);
    expect("no main default, daemon", &probes, &got, &fixed(true));

    // Deleted by hand: the daemon puts them back.
    strip_local_reply_rules(&t.fw);
    wait_for(
        &t.fw,
        "the daemon restores the local reply rules",
        |rules| rules.contains("from 203.0.113.2 lookup 42025"),
    );
    let got = run(&t, &probes[..2]);
    expect("after the repair", &probes[..2], &got, &|_| Some(true));

    // Renumbered: up1's addresses go and new ones come (a new DHCP lease, a new prefix;
    // IPv4 in that order: deleting a primary address takes its secondaries with it).
    let (new4, new6): (Ipv4Addr, Ipv6Addr) = (
        "203.0.113.7".parse().unwrap(),
        "2001:db8:1::7".parse().unwrap(),
    );
    t.fw.sh(
        "ip addr del 203.0.113.2/24 dev up1 && ip addr add 203.0.113.7/24 dev up1 && \
         ip -6 addr add 2001:db8:1::7/64 dev up1 nodad && ip -6 addr del 2001:db8:1::2/64 dev up1",
    )
    .expect("renumber up1");
    let started = std::time::Instant::now();
    wait_for(&t.fw, "the from rules follow the new addresses", |rules| {
        rules.contains("from 203.0.113.7 lookup 42025")
            && !rules.contains("from 203.0.113.2 ")
            && rules.contains("from 2001:db8:1::7 lookup 42025")
            && !rules.contains("from 2001:db8:1::2 ")
    });
    eprintln!(
        "from rules followed the renumbering in {:?}",
        started.elapsed()
    );
    // Services on the new addresses (the bound ones were bound to the old).
    let _new_tcp6 = TcpServer::start(&t.fw, sa(new6, TwoIsps::SMTP_PORT)).expect("tcp v6");
    let _new_udp = [
        UdpEcho::start(&t.fw, sa(new4, TwoIsps::UDP_PORT)).expect("udp v4"),
        UdpEcho::start(&t.fw, sa(new6, TwoIsps::UDP_PORT)).expect("udp v6"),
    ];
    let renumbered = self::probes(new4, new6);
    let got = run(&t, &renumbered);
    expect("renumbered", &renumbered, &got, &fixed(true));
    drop(d);
}

/// Waits up to 3 s until `ok` holds for `ip -4 rule; ip -6 rule` of `ns`.
fn wait_for(ns: &Netns, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let rules =
            ns.ip("rule show").expect("ip rule") + &ns.ip("-6 rule show").expect("ip -6 rule");
        if ok(&rules) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 3 s:\n{rules}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
