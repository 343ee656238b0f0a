//! End-to-end: the firewall's own services answer clients beyond ISP1 when unmarked
//! traffic has no route back to them (issue 18). Seed 1's firewall with
//! examples/two-isps-firewall.toml; up2, which holds main's default route, goes down.
//!
//! The kernel routes a packet this host sends (a SYN-ACK, a UDP answer) once with the
//! socket's mark before the output hook, where symroute restores the connection's mark;
//! with no route in main that lookup fails (ENETUNREACH) and nothing is sent. symroute's
//! `from ADDRESS lookup TABLE` rules answer such packets by their source address. The
//! failure is shown with exactly those rules deleted again (what symroute applied before
//! it made them).
//!
//! Needs root. Run with `cargo test --test e2e_local_replies -- --test-threads=2`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::{require_root, symroute_in, Applied};
use symroute::lab::{tcp_probe, Netns, TwoIsps};

const FIREWALL: &str = include_str!("../examples/two-isps-firewall.toml");

/// How long a probe that must fail gets.
const FAIL: Duration = Duration::from_millis(1000);
/// How long a probe that must succeed gets.
const OK: Duration = Duration::from_millis(2000);

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// symroute's rules that exist for local replies: the `from ADDRESS` rules and the
/// `iif lo` copy of main, as (family flag, priority, `ip rule` line).
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

/// up2 goes down: main loses its default routes (IPv4 and IPv6) and up2's IPv6 address.
fn lose_main_default(t: &TwoIsps) {
    t.fw.ip("link set up2 down").expect("up2 down");
    let main = t.fw.ip("route show default").expect("ip route");
    assert!(main.trim().is_empty(), "main still has a default: {main}");
}

#[test]
fn local_tcp_v4_answers_via_isp1_without_main_default_apply() {
    require_root();
    let t = TwoIsps::build().expect("build TwoIsps");
    let _svc = t.start_services().expect("services");
    let smtp = sa(TwoIsps::FW_UP1_V4, TwoIsps::SMTP_PORT);
    let _applied = Applied::apply(&t.fw, FIREWALL);
    tcp_probe(&t.client, smtp, OK).expect("SMTP answers with main's default up");

    lose_main_default(&t);
    let rules = local_reply_rules(&t.fw);
    eprintln!("local reply rules: {rules:#?}");
    strip_local_reply_rules(&t.fw);
    let before = tcp_probe(&t.client, smtp, FAIL);
    assert!(
        before.is_err(),
        "without the local reply rules SMTP must time out (the SYN-ACK's first lookup fails), got {before:?}"
    );
    eprintln!("without the local reply rules: {:#}", before.unwrap_err());

    // apply puts them back; the SYN-ACK is routed by its source address via ISP1.
    let again = symroute_in(&t.fw, "apply", Some(FIREWALL), &[]).ok();
    assert!(
        again
            .stdout
            .contains("+ ip -4 rule pref 3004 from 203.0.113.2/32 lookup 42000"),
        "{}",
        again.stdout
    );
    let answer = tcp_probe(&t.client, smtp, OK).expect("SMTP answers via ISP1");
    assert!(answer.starts_with("hello 192.0.2.10 "), "{answer}");
}
