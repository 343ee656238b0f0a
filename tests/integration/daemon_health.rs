//! `symroute run` with `[gateway.check]` on the two-ISP firewall lab: isp1's upstream (its
//! link to the client, the check target) dies while the firewall's own link stays up; the
//! health checks declare isp1 down, its table loses its default route (reply_via isp1
//! falls back to the main table), and after the upstream is restored the routes come
//! back. Detection and recovery times are printed; assertions allow a generous 5 s.
//! Needs root, `nft` and `ip`.

use crate::support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::{lab, our_routes};
use symroute::kernel::netlink::Netlink;
use symroute::lab::{in_netns, Netns, TwoIsps};

/// isp1's table: its id, 26, comes from its name (42000 + 26 - 1).
const ISP1_TABLE: u32 = 42025;
const LIMIT: Duration = Duration::from_secs(5);

/// Whether isp1's table holds our IPv4 default route.
fn has_default(ns: &Netns) -> bool {
    in_netns(ns.name(), || {
        let mut nl = Netlink::open().expect("netlink");
        our_routes(&mut nl, ISP1_TABLE)
            .iter()
            .any(|r| r.dst.prefix_len() == 0)
    })
    .expect("in netns")
}

/// Polls until `has_default` equals `want`; the time it took.
fn wait_default(d: &Daemon, want: bool, what: &str) -> Duration {
    let t0 = Instant::now();
    while has_default(d.ns) != want {
        assert!(
            t0.elapsed() < LIMIT,
            "{what}: table {ISP1_TABLE} default route present={} after {LIMIT:?}; log:\n{}",
            !want,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

#[test]
fn a_dead_upstream_takes_the_gateway_down_and_back() {
    let lab = lab();
    let config = include_str!("../../examples/two-isps-firewall.toml").replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\ninterval = \"100ms\"\ntimeout = \"200ms\"\n",
        1,
    );
    assert!(config.contains("[gateway.check]"));
    let d = Daemon::start(&lab.fw, &config);
    let t = wait_default(&d, true, "start");
    eprintln!("table {ISP1_TABLE} has its default route {t:?} after start");
    // Let the probes fill their window with good results first.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        has_default(&lab.fw),
        "isp1 went down with its upstream intact; log:\n{}",
        d.log()
    );

    lab.isp1.ip("link set cl0 down").expect("cl0 down");
    let down = wait_default(&d, false, "after isp1's upstream died");
    eprintln!(
        "isp1 upstream down: detected, table {ISP1_TABLE} lost its default route after {:.0} ms",
        down.as_secs_f64() * 1e3
    );
    assert!(d.log().contains("gateway isp1 down: "), "log:\n{}", d.log());
    let fw_up1 = lab.fw.ip("-o link show up1").expect("ip link");
    assert!(
        !fw_up1.contains("state DOWN"),
        "the firewall's link must stay up: {fw_up1}"
    );

    lab.isp1.ip("link set cl0 up").expect("cl0 up");
    let up = wait_default(&d, true, "after isp1's upstream came back");
    eprintln!(
        "isp1 upstream restored: table {ISP1_TABLE} has its default route again after {:.0} ms",
        up.as_secs_f64() * 1e3
    );
}

/// Median and worst of a set of durations, in ms.
fn median_worst(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(*v.last().expect("some runs")))
}

/// The default check settings (only `targets` given), with an ICMPv6 and a TCP target:
/// isp1 is judged down only when both are, within 2 s of its upstream dying, every time
/// of 10; each recovery follows `up` good probes. Figures are printed for the notes.
#[test]
fn defaults_judge_a_dead_upstream_within_2s_with_icmpv6_and_tcp_targets() {
    let lab = lab();
    let _server = symroute::lab::TcpServer::start(
        &lab.client,
        std::net::SocketAddr::new(TwoIsps::CLIENT_V4.into(), 7777),
    )
    .expect("tcp server on the client");
    let config = include_str!("../../examples/two-isps-firewall.toml").replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"2001:db8:c::10\", \"tcp:192.0.2.10:7777\"]\n",
        1,
    );
    let d = Daemon::start(&lab.fw, &config);
    wait_default(&d, true, "start");
    // A full window of good probes (10 × 150 ms) before the first cut.
    std::thread::sleep(Duration::from_millis(1600));
    assert!(
        has_default(&lab.fw),
        "isp1 went down with both targets answering; log:\n{}",
        d.log()
    );
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for run in 0..10 {
        lab.isp1.ip("link set cl0 down").expect("cl0 down");
        let down = wait_default(&d, false, "after isp1's upstream died");
        lab.isp1.ip("link set cl0 up").expect("cl0 up");
        // IPv6 needs its address back from DAD before the ICMPv6 target can answer;
        // the TCP target answers at once, and the gateway is up when either is.
        let up = wait_default(&d, true, "after isp1's upstream came back");
        eprintln!(
            "run {run}: down after {:.0} ms, up after {:.0} ms",
            down.as_secs_f64() * 1e3,
            up.as_secs_f64() * 1e3
        );
        downs.push(down);
        ups.push(up);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (dm, dw) = median_worst(downs);
    let (um, uw) = median_worst(ups);
    eprintln!(
        "defaults (150ms, 450ms, 7/10, up 5), ICMPv6 + TCP targets, 10 runs: detection median {dm:.0} ms worst {dw:.0} ms; recovery median {um:.0} ms worst {uw:.0} ms"
    );
    assert!(dw < 2000.0, "a detection took {dw:.0} ms (target 2 s)");
    let log = d.log();
    assert!(
        log.contains("of last 10 probes lost to 2001:db8:c::10")
            && log.contains("of last 10 probes lost to tcp:192.0.2.10:7777"),
        "both targets must be named when isp1 goes down; log:\n{log}"
    );
}

/// 5 % of the packets isp1 forwards, each way, are dropped at random (nft `numgen`) for
/// 60 s: about 10 % of the probes are lost, and the default settings never judge isp1
/// down.
#[test]
fn five_percent_loss_for_60s_changes_no_state() {
    let lab = lab();
    let config = include_str!("../../examples/two-isps-firewall.toml").replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\n",
        1,
    );
    let d = Daemon::start(&lab.fw, &config);
    wait_default(&d, true, "start");
    std::thread::sleep(Duration::from_millis(1600));
    lab.isp1
        .nft(
            "table inet loss {\n\tcounter seen {\n\t}\n\tcounter dropped {\n\t}\n\tchain lossy {\n\t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tmeta l4proto icmp counter name \"seen\"\n\
             \t\tnumgen random mod 100 < 5 meta l4proto icmp counter name \"dropped\" drop\n\
             \t\tnumgen random mod 100 < 5 meta l4proto != icmp drop\n\t}\n}\n",
        )
        .expect("loss rule");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        assert!(
            has_default(&lab.fw),
            "isp1 was judged down after {:?} of 5 % loss; log:\n{}",
            t0.elapsed(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counters = lab
        .isp1
        .exec(&["nft", "list", "counters", "table", "inet", "loss"])
        .expect("counters");
    let packets = |name: &str| -> u64 {
        let at = counters.find(&format!("counter {name}")).expect("counter");
        counters[at..]
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("packets")
    };
    let (seen, dropped) = (packets("seen"), packets("dropped"));
    eprintln!(
        "60 s of 5 % loss each way: {dropped} of {seen} ICMP packets dropped ({:.1} %); state changes: 0",
        100.0 * dropped as f64 / seen.max(1) as f64
    );
    assert!(
        seen > 600 && dropped > seen / 40,
        "the probes must have crossed the lossy link: {dropped} of {seen} dropped"
    );
    let log = d.log();
    assert!(
        !log.contains("gateway isp1 down") && !log.contains("answers its health checks again"),
        "state changed under 5 % loss; log:\n{log}"
    );
}

/// Polls new connections (IPv4, or IPv6) until they take `want`; the time it took.
fn wait_path(lab: &TwoIsps, d: &Daemon, v6: bool, want: &str, what: &str) -> Duration {
    let t0 = Instant::now();
    while lab.lan_path_now(v6, Duration::from_millis(150)) != Some(want) {
        assert!(
            t0.elapsed() < LIMIT,
            "{what}: new connections still not via {want} after {LIMIT:?}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// `route_via = ["isp1", "isp2"]` with the default checks: ISP1's upstream dies (its link
/// to the firewall stays up) and new connections from the LAN take ISP2; it comes back
/// and they return to ISP1. 10 runs; detection (the gateway's table loses its route) and
/// switch (a new connection answered via the other ISP) are printed as median/worst.
#[test]
fn failover_list_moves_new_connections_within_2s_10_runs() {
    let lab = lab();
    let _server = lab.add_dual_homed_server().expect("dual-homed server");
    let config = format!(
        "{}\n[gateway.check]\ntargets = [\"192.0.2.10\"]\n\n[[gateway]]\nname = \"isp2\"\ninterface = \"up2\"\nvia = \"198.51.100.1\"\nvia6 = \"2001:db8:2::1\"\n\n[[policy]]\nname = \"lan-out\"\nroute_via = [\"isp1\", \"isp2\"]\n[policy.match]\nin_interface = \"lan0\"\n",
        "[[gateway]]\nname = \"isp1\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\nvia6 = \"2001:db8:1::1\""
    );
    let d = Daemon::start(&lab.fw, &config);
    wait_default(&d, true, "start");
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        lab.lan_path_now(false, Duration::from_millis(150)),
        Some("isp1"),
        "log:\n{}",
        d.log()
    );
    let (mut detect, mut switch, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..10 {
        // ISP1 stops forwarding to its upstream (its links stay up, routes stay).
        lab.cut_isp1_upstream(true).expect("cut isp1's upstream");
        let cut = Instant::now();
        let down = wait_default(&d, false, "after isp1's upstream died");
        wait_path(&lab, &d, false, "isp2", "after isp1's upstream died");
        let moved = cut.elapsed();
        lab.cut_isp1_upstream(false)
            .expect("restore isp1's upstream");
        let returned = wait_path(&lab, &d, false, "isp1", "after isp1's upstream came back");
        eprintln!(
            "run {run}: isp1 judged down after {:.0} ms, new connections via isp2 after {:.0} ms, back via isp1 {:.0} ms after restore",
            down.as_secs_f64() * 1e3,
            moved.as_secs_f64() * 1e3,
            returned.as_secs_f64() * 1e3
        );
        detect.push(down);
        switch.push(moved);
        back.push(returned);
        if run == 0 {
            // IPv6 follows the same decisions (the check target is IPv4: a gateway is
            // down for both families).
            assert_eq!(
                lab.lan_path_now(true, Duration::from_millis(300)),
                Some("isp1"),
                "IPv6 via isp1 while it is up; log:\n{}",
                d.log()
            );
            lab.cut_isp1_upstream(true).expect("cut isp1's upstream");
            wait_default(&d, false, "IPv6: after isp1's upstream died");
            let v6 = wait_path(&lab, &d, true, "isp2", "IPv6: after isp1's upstream died");
            lab.cut_isp1_upstream(false).expect("restore");
            wait_path(
                &lab,
                &d,
                true,
                "isp1",
                "IPv6: after isp1's upstream came back",
            );
            eprintln!(
                "IPv6: new connections via isp2 {:.0} ms after isp1 was judged down, and back",
                v6.as_secs_f64() * 1e3
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (dm, dw) = median_worst(detect);
    let (sm, sw) = median_worst(switch);
    let (bm, bw) = median_worst(back);
    eprintln!(
        "failover, default checks, 10 runs (median/worst ms): detection {dm:.0}/{dw:.0}, switch to isp2 {sm:.0}/{sw:.0}, back to isp1 after restore {bm:.0}/{bw:.0}"
    );
    assert!(sw < 2000.0, "a switch took {sw:.0} ms (target 2 s)");
    let log = d.log();
    assert!(log.contains("gateway isp1 down"), "log:\n{log}");
}
