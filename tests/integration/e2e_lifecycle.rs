//! End-to-end lifecycle of `symroute apply`/`remove` on the two-ISP firewall lab: remove
//! restores the kernel exactly, apply is idempotent (and keeps counters), a failing or
//! killed apply leaves nothing half-done behind, foreign objects are never touched,
//! conflicts stop apply before it changes anything, a down gateway does not stop apply,
//! and a bad config changes nothing.
//!
//! Every test builds its own namespaces (guards delete them even when a test panics) and
//! sends traffic only between them. Needs root, `nft`, `ip` and `conntrack`.

use crate::support;
use support::conntrack;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{gateway, status_json};
use support::{kernel_snapshot, require_root, settled_snapshot, symroute_in, Run};
use support::{lab, sa, services};
use symroute::lab::{tcp_probe, veth, Netns, TwoIsps};

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");
/// How long a probe that must succeed may take.
const OK: Duration = Duration::from_secs(3);
const STEPS_ALL: [&str; 4] = ["sysctls", "nft", "routes", "rules"];

// ---------------------------------------------------------------------------------------
// helpers

/// Runs `symroute remove` in the namespace when dropped (declared after the namespace
/// guards, so it drops first), so a failing test leaves no recorded state in /run/symroute.
struct RemoveOnDrop<'a>(&'a Netns);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.0, "remove", None, &[]);
    }
}

/// `symroute CMD` in `ns`, timed.
fn timed(ns: &Netns, cmd: &str, config: Option<&str>, extra: &[&str]) -> (Run, Duration) {
    let t0 = Instant::now();
    let r = symroute_in(ns, cmd, config, extra);
    (r, t0.elapsed())
}

/// A successful `apply`; returns its stdout and logs how long it took.
fn apply_ok(ns: &Netns, config: &str, what: &str) -> String {
    let (r, took) = timed(ns, "apply", Some(config), &[]);
    assert_eq!(r.code, 0, "{what}: apply failed:\n{}", r.show());
    eprintln!("{what}: apply took {took:?}");
    r.stdout
}

fn remove_ok(ns: &Netns, what: &str) -> String {
    let (r, took) = timed(ns, "remove", None, &[]);
    assert_eq!(r.code, 0, "{what}: remove failed:\n{}", r.show());
    eprintln!("{what}: remove took {took:?}");
    r.stdout
}

/// The client reaches `addr` and the server saw the client's own address.
fn expect_answer(lab: &TwoIsps, addr: SocketAddr, what: &str) -> String {
    let t0 = Instant::now();
    match tcp_probe(&lab.client, addr, OK) {
        Ok(line) => {
            assert!(
                line.starts_with(&format!("hello {} ", TwoIsps::CLIENT_V4)),
                "{what}: unexpected greeting from {addr}: {line:?}"
            );
            eprintln!("{what}: {addr} answered in {:?}: {line}", t0.elapsed());
            line
        }
        Err(e) => panic!("{what}: client -> {addr} got no answer: {e:#}"),
    }
}

fn smtp_v4() -> SocketAddr {
    sa(TwoIsps::FW_UP1_V4, TwoIsps::SMTP_PORT)
}

fn dnat_v4() -> SocketAddr {
    sa(TwoIsps::FW_UP1_V4, TwoIsps::DNAT_PORT)
}

/// Line diff (LCS) of two texts: changed lines with `-`/`+`, each under the nearest
/// `## section` header of the snapshot, so a failure says what moved and where.
fn line_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let mut header = "";
    let mut shown = "";
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        let line = if i < n && j < m && a[i] == b[j] {
            if a[i].starts_with("## ") {
                header = a[i];
            }
            i += 1;
            j += 1;
            continue;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            i += 1;
            format!("- {}", a[i - 1])
        } else {
            j += 1;
            format!("+ {}", b[j - 1])
        };
        if shown != header {
            out += header;
            out.push('\n');
            shown = header;
        }
        out += &line;
        out.push('\n');
    }
    out
}

fn assert_same(what: &str, before: &str, after: &str) {
    if before != after {
        panic!(
            "{what}: the kernel state differs (- before, + after):\n{}",
            line_diff(before, after)
        );
    }
}

/// Counters move with traffic; blank their values so two listings compare by structure.
fn normalize_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let mut fixed: Vec<String> = Vec::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            let prev = if i > 0 { words[i - 1] } else { "" };
            let is_num = !w.is_empty() && w.chars().all(|c| c.is_ascii_digit());
            let bracket = w.starts_with('[')
                && w.ends_with(']')
                && w[1..w.len() - 1]
                    .split(':')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
            fixed.push(
                if (is_num && (prev == "packets" || prev == "bytes")) || bracket {
                    "N".to_string()
                } else {
                    w.to_string()
                },
            );
        }
        out += &fixed.join(" ");
        out.push('\n');
    }
    out
}

/// The lines of `ip rule`/`ip route` output that carry symroute's tag.
fn ours(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains("proto 157")).collect()
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec(&["sysctl", "-n", key])
        .expect("sysctl -n")
        .trim()
        .to_string()
}

/// One namespace `fw` with the lab firewall's interfaces (up1, up2, lan0) wired to a peer
/// namespace: enough for tests that never send traffic.
fn small_fw() -> (Netns, Netns) {
    require_root();
    let fw = Netns::new("fw").expect("netns fw");
    let peer = Netns::new("peer").expect("netns peer");
    for (ifname, peer_if, addrs) in [
        ("up1", "p1", ["203.0.113.2/24", "2001:db8:1::2/64"]),
        ("up2", "p2", ["198.51.100.2/24", "2001:db8:2::2/64"]),
        ("lan0", "p3", ["10.77.0.1/24", "fd77::1/64"]),
    ] {
        veth(&fw, ifname, &peer, peer_if).expect("veth");
        for a in addrs {
            fw.ip(&format!("addr add {a} dev {ifname}"))
                .expect("addr add");
        }
    }
    fw.ip("route add default via 198.51.100.1 dev up2")
        .expect("default route");
    fw.ip("-6 route add default via 2001:db8:2::1 dev up2")
        .expect("default route v6");
    fw.sysctl("net.ipv4.conf.all.rp_filter", "1")
        .expect("rp_filter");
    fw.sysctl("net.ipv4.conf.up1.rp_filter", "1")
        .expect("rp_filter");
    (fw, peer)
}

// ---------------------------------------------------------------------------------------
// 1

#[test]
fn remove_restores_everything() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);
    let before = settled_snapshot(fw);
    assert_eq!(
        sysctl(fw, "net.ipv4.conf.up1.rp_filter"),
        "1",
        "lab precondition"
    );
    assert!(!before.contains("table inet symroute"), "lab precondition");

    let out = apply_ok(fw, CONFIG, "first apply");
    eprintln!("apply said:\n{out}");
    let applied = kernel_snapshot(fw);
    assert_ne!(before, applied, "apply changed nothing");
    for fam in ["-4", "-6"] {
        let rules = fw.ip(&format!("{fam} rule show")).expect("ip rule");
        assert!(
            !ours(&rules).is_empty(),
            "no `proto 157` rules ({fam}) after apply:\n{rules}"
        );
    }
    let routes = fw.ip("route show table all").expect("ip route");
    assert!(
        !ours(&routes).is_empty(),
        "no `proto 157` routes after apply:\n{routes}"
    );
    assert!(
        applied.contains("table inet symroute"),
        "no nft table inet symroute after apply:\n{applied}"
    );
    assert_eq!(
        sysctl(fw, "net.ipv4.conf.up1.rp_filter"),
        "2",
        "rp_filter of up1 after apply"
    );
    assert_eq!(sysctl(fw, "net.ipv4.icmp_errors_use_inbound_ifaddr"), "1");

    let out = remove_ok(fw, "remove");
    eprintln!("remove said:\n{out}");
    assert!(out.contains("removed"), "{out}");
    assert_same("after remove", &before, &kernel_snapshot(fw));

    // Removing again is harmless and says so.
    let out = remove_ok(fw, "second remove");
    assert!(out.contains("nothing to remove"), "second remove:\n{out}");
    assert_same("after a second remove", &before, &kernel_snapshot(fw));
}

// ---------------------------------------------------------------------------------------
// 2

#[test]
fn apply_is_idempotent() {
    let lab = lab();
    let _svc = services(&lab);
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);

    apply_ok(fw, CONFIG, "first apply");
    let plan = symroute_in(fw, "plan", Some(CONFIG), &[]);
    assert_eq!(plan.code, 0, "plan after apply:\n{}", plan.show());
    assert!(
        plan.stdout.contains("no changes"),
        "plan after apply should say no changes:\n{}",
        plan.show()
    );
    let script = symroute_in(fw, "plan", Some(CONFIG), &["--script"]);
    assert_eq!(script.code, 0, "{}", script.show());
    assert!(
        script.stdout.trim().is_empty(),
        "plan --script after apply should be empty:\n{}",
        script.stdout
    );

    expect_answer(&lab, smtp_v4(), "after apply");
    let st = status_json(fw, Some(CONFIG));
    let packets = st["policies"][0]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no policies[0].packets:\n{st:#}"));
    assert_eq!(st["policies"][0]["name"], "answer-on-isp1", "{st:#}");
    assert!(
        packets > 0,
        "policy answer-on-isp1 classified nothing after a probe:\n{st:#}"
    );
    let table_before = fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("nft list");

    let (second, took) = timed(fw, "apply", Some(CONFIG), &[]);
    assert_eq!(second.code, 0, "second apply:\n{}", second.show());
    assert!(
        second.stdout.contains("no changes"),
        "second apply should say no changes:\n{}",
        second.show()
    );
    eprintln!("no-op apply took {took:?}");

    let st2 = status_json(fw, Some(CONFIG));
    assert_eq!(
        st2["policies"][0]["packets"].as_u64(),
        Some(packets),
        "the no-op apply reset (or changed) the policy counter:\nbefore {st:#}\nafter {st2:#}"
    );
    let table_after = fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("nft list");
    assert_same(
        "nft table across a no-op apply",
        &table_before,
        &table_after,
    );
    expect_answer(&lab, smtp_v4(), "after the no-op apply");

    // Someone flushes a chain inside our table (its fingerprint chain stays): plan sees
    // it, apply replaces the table, and the next apply is a no-op again.
    fw.exec(&["nft", "flush", "chain", "inet", "symroute", "pre"])
        .expect("flush chain");
    let plan = symroute_in(fw, "plan", Some(CONFIG), &[]);
    assert!(
        plan.stdout.contains("nftables table inet symroute"),
        "plan must see the altered table:\n{}",
        plan.show()
    );
    apply_ok(fw, CONFIG, "apply after the chain was flushed");
    let table_again = fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("nft list");
    // The replaced table starts its counters from zero; everything else is as before.
    let without_counts = |t: &str| -> String {
        let mut words = t.split_whitespace();
        let mut out = Vec::new();
        while let Some(w) = words.next() {
            out.push(w);
            if w == "packets" || w == "bytes" {
                words.next();
            }
        }
        out.join(" ")
    };
    assert_eq!(
        without_counts(&table_before),
        without_counts(&table_again),
        "the altered table, written again"
    );
    let (again, _) = timed(fw, "apply", Some(CONFIG), &[]);
    assert!(again.stdout.contains("no changes"), "{}", again.show());
    expect_answer(&lab, smtp_v4(), "after the repair");
}

// ---------------------------------------------------------------------------------------
// 3

#[test]
fn rollback_on_injected_failure() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);
    let before = settled_snapshot(fw);
    for step in STEPS_ALL {
        let (r, took) = timed(fw, "apply", Some(CONFIG), &["--inject-failure", step]);
        eprintln!(
            "apply --inject-failure {step}: exit {} in {took:?}; stderr: {}",
            r.code,
            r.stderr.trim()
        );
        assert_eq!(r.code, 1, "--inject-failure {step}:\n{}", r.show());
        assert!(
            r.stderr.contains("rolled back"),
            "--inject-failure {step}: stderr should say rolled back:\n{}",
            r.show()
        );
        assert!(
            !r.stderr.contains("rollback also failed"),
            "--inject-failure {step}:\n{}",
            r.show()
        );
        assert_same(
            &format!("after --inject-failure {step}"),
            &before,
            &kernel_snapshot(fw),
        );
    }
    let out = apply_ok(fw, CONFIG, "normal apply after the rollbacks");
    assert!(!out.contains("no changes"), "{out}");
    assert_eq!(sysctl(fw, "net.ipv4.conf.up1.rp_filter"), "2");
    let again = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert!(
        again.code == 0 && again.stdout.contains("no changes"),
        "{}",
        again.show()
    );
    // The rollbacks must not have lost the sysctls' previous values either.
    remove_ok(fw, "remove");
    assert_same("after apply + remove", &before, &kernel_snapshot(fw));
}

/// A failure injected into an apply that *changes* an existing installation (the table is
/// replaced, rules/routes differ) must put back the previous installation, not nothing.
#[test]
fn rollback_restores_previous_installation() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);
    let pristine = settled_snapshot(fw);
    apply_ok(fw, CONFIG, "initial apply");
    let installed = kernel_snapshot(fw);
    // A different config: only isp1 (drops isp2's rule, table and the rp_filter of up2).
    let only_isp1 = "[[gateway]]\nname = \"isp1\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\nvia6 = \"2001:db8:1::1\"\n\n[[policy]]\nname = \"answer-on-isp1\"\nreply_via = \"isp1\"\n[policy.match]\nin_interface = \"up1\"\nprotocol = \"tcp\"\n";
    for step in STEPS_ALL {
        let r = symroute_in(fw, "apply", Some(only_isp1), &["--inject-failure", step]);
        assert_eq!(
            r.code,
            1,
            "--inject-failure {step} on an installed host:\n{}",
            r.show()
        );
        assert!(r.stderr.contains("rolled back"), "{}", r.show());
        assert_same(
            &format!("installed host after --inject-failure {step}"),
            &installed,
            &kernel_snapshot(fw),
        );
    }
    let again = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert!(
        again.code == 0 && again.stdout.contains("no changes"),
        "{}",
        again.show()
    );
    remove_ok(fw, "remove");
    assert_same("after remove", &pristine, &kernel_snapshot(fw));
}

// ---------------------------------------------------------------------------------------
// 4

#[test]
fn converges_after_kill_halfway() {
    let lab = lab();
    let _svc = services(&lab);
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);
    let pristine = settled_snapshot(fw);
    // The aborted runs must not drop core files into the working directory (the repo).
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; it only lowers this process's limit,
    // which the symroute children inherit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    for step in ["sysctls", "nft", "routes"] {
        let (r, took) = timed(fw, "apply", Some(CONFIG), &["--abort-after", step]);
        eprintln!("apply --abort-after {step}: exit {} in {took:?}", r.code);
        // -1: no exit code, the process died of a signal (SIGABRT).
        assert_eq!(
            r.code,
            -1,
            "--abort-after {step} should die of a signal:\n{}",
            r.show()
        );
        assert!(r.stderr.contains("aborting after step"), "{}", r.show());
        let half = kernel_snapshot(fw);
        assert_ne!(
            half, pristine,
            "--abort-after {step} changed nothing before dying"
        );

        let out = apply_ok(fw, CONFIG, &format!("apply after abort-after {step}"));
        assert!(
            !out.contains("no changes"),
            "apply after a half-done apply found nothing to do:\n{out}"
        );
        let (again, took) = timed(fw, "apply", Some(CONFIG), &[]);
        assert!(
            again.code == 0 && again.stdout.contains("no changes"),
            "second apply after abort-after {step}:\n{}",
            again.show()
        );
        eprintln!("no-op apply after abort-after {step} took {took:?}");
        expect_answer(
            &lab,
            smtp_v4(),
            &format!("after abort-after {step} + apply"),
        );

        remove_ok(fw, &format!("remove after abort-after {step}"));
        assert_same(
            &format!("after abort-after {step}, apply, remove"),
            &pristine,
            &kernel_snapshot(fw),
        );
    }
    // `remove` straight after a killed apply cleans up the half-done state as well.
    for step in ["sysctls", "nft", "routes", "rules"] {
        let r = symroute_in(fw, "apply", Some(CONFIG), &["--abort-after", step]);
        assert_eq!(r.code, -1, "--abort-after {step}:\n{}", r.show());
        remove_ok(fw, &format!("remove right after abort-after {step}"));
        assert_same(
            &format!("after abort-after {step}, remove"),
            &pristine,
            &kernel_snapshot(fw),
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5

#[test]
fn coexistence_foreign_objects_untouched() {
    let lab = lab();
    let _svc = services(&lab);
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);

    // wg-quick-like: everything not marked 0xca6c uses table 51820.
    fw.ip("rule add not fwmark 0xca6c lookup 51820 pref 32764")
        .expect("wg rule");
    fw.ip("route add default dev lan0 table 51820")
        .expect("wg route");
    // kube-proxy-like: sets mark bit 0x4000 on every packet, before symroute's prerouting
    // chain (priority mangle = -150) runs, so our `meta mark set` must keep it; a later
    // forward-hook chain counts the packets that still carry it.
    fw.nft(
        "table inet other {\n\
         \tchain c { type filter hook prerouting priority -200; meta mark set meta mark or 0x4000; }\n\
         \tchain f { type filter hook forward priority 0;\n\
         \t\tct direction original meta mark and 0x4000 == 0x4000 counter\n\
         \t\tct direction reply meta mark and 0x4000 == 0x4000 counter\n\
         \t}\n\
         }\n",
    )
    .expect("foreign nft table");
    let iptables = fw
        .exec(&[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-j",
            "MARK",
            "--or-mark",
            "0x8000",
        ])
        .map(|_| true)
        .unwrap_or_else(|e| {
            eprintln!("iptables does not work in the namespace, skipping that part: {e:#}");
            false
        });

    let foreign = || {
        let mut s = String::new();
        s += &fw.ip("-4 rule show").expect("ip rule");
        s += &fw.ip("-6 rule show").expect("ip -6 rule");
        s += &fw.ip("route show table 51820").expect("table 51820");
        s += &fw
            .exec(&["nft", "list", "table", "inet", "other"])
            .expect("nft list table inet other");
        if iptables {
            let save = fw
                .exec(&["iptables-save", "-t", "mangle"])
                .expect("iptables-save");
            s += &save
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
        }
        normalize_counters(&s)
    };
    let foreign_before = foreign();
    let before = normalize_counters(&settled_snapshot(fw));

    let out = apply_ok(fw, CONFIG, "apply next to foreign objects");
    eprintln!("apply said:\n{out}");
    let foreign_applied = foreign();
    // Our rules appear in `ip rule`; everything else must be as it was.
    let strip_ours = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("proto 157"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_same(
        "foreign objects after apply",
        &strip_ours(&foreign_before),
        &strip_ours(&foreign_applied),
    );

    expect_answer(&lab, smtp_v4(), "fw:25 next to foreign objects");
    let via_dnat = expect_answer(&lab, dnat_v4(), "DNAT :2525 next to foreign objects");
    assert!(via_dnat.starts_with("hello 192.0.2.10 "), "{via_dnat}");

    // Both directions of the forwarded connection kept the foreign bit.
    let counters = fw
        .exec(&["nft", "list", "chain", "inet", "other", "f"])
        .expect("nft list chain");
    for dir in ["original", "reply"] {
        let line = counters
            .lines()
            .find(|l| l.contains(&format!("ct direction {dir}")))
            .unwrap_or_else(|| panic!("no {dir} counter:\n{counters}"));
        let packets: u64 = line
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {line:?}"));
        assert!(
            packets > 0,
            "forwarded {dir}-direction packets lost the foreign mark bit 0x4000:\n{counters}"
        );
    }
    // And ours was set: the forwarded connection carries isp1's reply decision (its id, 26,
    // comes from its name: value 2×26-1, 0x33000000 under the default mask) in its
    // conntrack mark.
    let ct = fw.exec(&["conntrack", "-L"]).expect("conntrack -L");
    let line = ct
        .lines()
        .find(|l| l.contains("dport=2525"))
        .unwrap_or_else(|| panic!("no conntrack entry for the DNAT connection:\n{ct}"));
    let mark: u32 = conntrack::field(line, "mark")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mark in {line:?}"));
    assert_eq!(
        mark & 0xff00_0000,
        0x3300_0000,
        "conntrack mark of the DNAT connection: {line}"
    );

    remove_ok(fw, "remove next to foreign objects");
    assert_same("foreign objects after remove", &foreign_before, &foreign());
    assert_same(
        "full snapshot after remove",
        &before,
        &normalize_counters(&kernel_snapshot(fw)),
    );
}

// ---------------------------------------------------------------------------------------
// 6

/// Adds a foreign object with `setup`, then checks apply refuses (exit 1, stderr naming it
/// by every string in `names`) without changing anything.
fn refuses(what: &str, config: &str, setup: impl FnOnce(&Netns), names: &[&str]) {
    let (fw, _peer) = small_fw();
    let _cleanup = RemoveOnDrop(&fw);
    setup(&fw);
    let before = settled_snapshot(&fw);
    let (r, took) = timed(&fw, "apply", Some(config), &[]);
    eprintln!("{what}: exit {} in {took:?}; stderr:\n{}", r.code, r.stderr);
    assert_eq!(r.code, 1, "{what}: apply should refuse:\n{}", r.show());
    for n in names {
        assert!(
            r.stderr.contains(n),
            "{what}: the error should name {n:?}:\n{}",
            r.show()
        );
    }
    assert_same(what, &before, &kernel_snapshot(&fw));
    let plan = symroute_in(&fw, "plan", Some(config), &[]);
    assert_eq!(
        plan.code,
        1,
        "{what}: plan should report the conflict too:\n{}",
        plan.show()
    );
}

#[test]
fn conflicts_stop_apply_before_any_change_a_priority() {
    refuses(
        "foreign rule at priority 3000",
        CONFIG,
        |fw| {
            fw.ip("rule add pref 3000 lookup main").expect("rule");
        },
        &["3000", "lookup main"],
    );
}

#[test]
fn conflicts_stop_apply_before_any_change_b_table() {
    refuses(
        "foreign route in isp1's table (42025)",
        CONFIG,
        |fw| {
            fw.ip("route add 10.99.0.0/24 dev lan0 table 42025")
                .expect("route");
        },
        &["42025", "10.99.0.0/24"],
    );
}

const FOREIGN_MARKER: &str = "table ip foreignmark {\n\tchain c { type filter hook prerouting priority 0; meta mark set meta mark or 0x01000000; }\n}\n";

#[test]
fn conflicts_stop_apply_before_any_change_c_nft_mark() {
    refuses(
        "foreign nft rule setting 0x01000000",
        CONFIG,
        |fw| fw.nft(FOREIGN_MARKER).expect("nft"),
        &["foreignmark", "0x01000000"],
    );
}

#[test]
fn conflicts_stop_apply_before_any_change_d_fwmark_rule() {
    refuses(
        "foreign ip rule fwmark 0x01000000/0x0f000000",
        CONFIG,
        |fw| {
            fw.ip("rule add fwmark 0x01000000/0x0f000000 lookup 100")
                .expect("rule");
        },
        &["fwmark", "lookup 100"],
    );
}

#[test]
fn conflicts_stop_apply_before_any_change_e_other_mask_ok() {
    let (fw, _peer) = small_fw();
    let _cleanup = RemoveOnDrop(&fw);
    fw.nft(FOREIGN_MARKER).expect("nft");
    let before = settled_snapshot(&fw);
    let config = format!("[settings]\nmark_mask = \"0x00f00000\"\n\n{CONFIG}");
    let out = apply_ok(
        &fw,
        &config,
        "apply with mark_mask 0x00f00000 next to a 0x01000000 user",
    );
    eprintln!("{out}");
    let table = fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("our table");
    assert!(
        table.contains("0x00f00000") || table.contains("0xff0fffff"),
        "our table does not use the chosen mask:\n{table}"
    );
    let rules = fw.ip("rule show").expect("ip rule");
    let marked: Vec<&str> = ours(&rules)
        .into_iter()
        .filter(|l| l.contains("fwmark"))
        .collect();
    assert!(
        marked.len() >= 2 && marked.iter().all(|l| l.contains("/0xf00000")),
        "rules not under mask 0x00f00000:\n{rules}"
    );
    remove_ok(&fw, "remove");
    assert_same(
        "after apply + remove with another mask",
        &before,
        &kernel_snapshot(&fw),
    );
}

// ---------------------------------------------------------------------------------------
// 7

#[test]
fn gateway_down_does_not_stop_apply() {
    let lab = lab();
    let _svc = services(&lab);
    let fw = &lab.fw;
    let _cleanup = RemoveOnDrop(fw);
    fw.ip("link set up1 down").expect("up1 down");

    let out = apply_ok(fw, CONFIG, "apply with up1 down");
    eprintln!("apply said:\n{out}");
    assert!(
        out.contains("gateway isp1 is down") && out.contains("up1"),
        "apply should say isp1 is down:\n{out}"
    );
    let st = status_json(fw, Some(CONFIG));
    let isp1 = gateway(&st, "isp1");
    assert_eq!(isp1["state"], "down", "isp1 in status:\n{st:#}");
    eprintln!("status: isp1 down: {}", isp1["reason"]);
    assert_eq!(
        gateway(&st, "isp2")["state"],
        "up",
        "isp2 in status:\n{st:#}"
    );

    for fam in ["-4", "-6"] {
        let rules = fw.ip(&format!("{fam} rule show")).expect("ip rule");
        let ours = ours(&rules);
        assert!(
            ours.iter().any(|l| l.contains("lookup 42025"))
                && ours.iter().any(|l| l.contains("lookup 42122")),
            "both gateways' rules ({fam}) should be installed:\n{rules}"
        );
        let t2 = fw
            .ip(&format!("{fam} route show table 42122"))
            .expect("table 42122");
        assert!(
            t2.contains("default via") && t2.contains("dev up2"),
            "isp2's table ({fam}):\n{t2}"
        );
        let t1 = fw
            .ip(&format!("{fam} route show table 42025"))
            .unwrap_or_default();
        assert!(
            t1.trim().is_empty(),
            "isp1's table ({fam}) should be empty while up1 is down:\n{t1}"
        );
    }
    assert!(
        tcp_probe(&lab.client, smtp_v4(), Duration::from_millis(500)).is_err(),
        "up1 is down: the probe cannot work"
    );

    // up1 comes back: the kernel flushed its IPv6 addresses, put them back as an admin would.
    fw.ip("link set up1 up").expect("up1 up");
    let v6 = fw.ip("-6 addr show dev up1").expect("addr");
    if !v6.contains("2001:db8:1::2/64") {
        fw.ip("-6 addr add 2001:db8:1::2/64 dev up1")
            .expect("re-add v6");
    }
    let v4 = fw.ip("-4 addr show dev up1").expect("addr");
    if !v4.contains("203.0.113.2/24") {
        fw.ip("addr add 203.0.113.2/24 dev up1").expect("re-add v4");
    }
    let out = apply_ok(fw, CONFIG, "apply with up1 up again");
    eprintln!("apply said:\n{out}");
    assert!(!out.contains("is down"), "{out}");
    for (fam, via) in [("-4", "203.0.113.1"), ("-6", "2001:db8:1::1")] {
        let t1 = fw
            .ip(&format!("{fam} route show table 42025"))
            .expect("table 42025");
        assert!(
            t1.contains(&format!("default via {via} dev up1")),
            "isp1's table ({fam}) after up1 came back:\n{t1}"
        );
    }
    assert_eq!(
        gateway(&status_json(fw, Some(CONFIG)), "isp1")["state"],
        "up"
    );
    expect_answer(&lab, smtp_v4(), "fw:25 after up1 came back");
    expect_answer(&lab, dnat_v4(), "DNAT :2525 after up1 came back");
    let again = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert!(
        again.code == 0 && again.stdout.contains("no changes"),
        "{}",
        again.show()
    );
}

#[test]
fn missing_interface_gateway_does_not_stop_apply() {
    let (fw, _peer) = small_fw();
    let _cleanup = RemoveOnDrop(&fw);
    let before = settled_snapshot(&fw);
    let config = format!(
        "{CONFIG}\n[[gateway]]\nname = \"isp3\"\ninterface = \"nosuch0\"\nvia = \"192.0.2.1\"\n\n[[policy]]\nname = \"answer-on-isp3\"\nreply_via = \"isp3\"\n[policy.match]\nin_interface = \"nosuch0\"\n"
    );
    let out = apply_ok(&fw, &config, "apply with a gateway on nosuch0");
    eprintln!("apply said:\n{out}");
    assert!(
        out.contains("gateway isp3 is down") && out.contains("nosuch0"),
        "{out}"
    );
    let st = status_json(&fw, Some(&config));
    assert_eq!(gateway(&st, "isp3")["state"], "down", "{st:#}");
    assert_eq!(gateway(&st, "isp1")["state"], "up", "{st:#}");
    let t = fw.ip("route show table 42025").expect("isp1's table");
    assert!(t.contains("default via 203.0.113.1 dev up1"), "{t}");
    let again = symroute_in(&fw, "apply", Some(&config), &[]);
    assert!(
        again.code == 0 && again.stdout.contains("no changes"),
        "{}",
        again.show()
    );
    remove_ok(&fw, "remove");
    assert_same("after remove", &before, &kernel_snapshot(&fw));
}

// ---------------------------------------------------------------------------------------
// 8

#[test]
fn bad_config_changes_nothing() {
    let (fw, _peer) = small_fw();
    let _cleanup = RemoveOnDrop(&fw);
    let before = settled_snapshot(&fw);
    let unknown_gw = CONFIG.replacen("reply_via = \"isp1\"", "reply_via = \"isp9\"", 1);
    let line = unknown_gw
        .lines()
        .position(|l| l.contains("isp9"))
        .expect("edited line")
        + 1;
    let col = unknown_gw
        .lines()
        .nth(line - 1)
        .and_then(|l| l.find("\"isp9\""))
        .expect("col")
        + 1;
    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "reply_via an unknown gateway",
            unknown_gw,
            Some(format!("symroute.toml:{line}:{col}:")),
        ),
        (
            "TOML syntax error",
            format!("{CONFIG}\n[[gateway]\nname = \"x\"\n"),
            None,
        ),
        (
            "bad mark_mask",
            format!("[settings]\nmark_mask = \"0x00000000\"\n\n{CONFIG}"),
            Some("symroute.toml:2:".into()),
        ),
    ];
    for (what, config, expect) in cases {
        for cmd in ["apply", "plan"] {
            let (r, took) = timed(&fw, cmd, Some(&config), &[]);
            eprintln!(
                "{what}: {cmd} exit {} in {took:?}: {}",
                r.code,
                r.stderr.trim()
            );
            assert_eq!(r.code, 2, "{what}: {cmd} should exit 2:\n{}", r.show());
            // FILE:LINE:COL: message
            let loc = r
                .stderr
                .split("symroute.toml:")
                .nth(1)
                .unwrap_or_else(|| panic!("{what}: no FILE:LINE:COL in:\n{}", r.show()));
            let mut parts = loc.splitn(3, ':');
            let (l, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                l.parse::<u32>().is_ok()
                    && c.parse::<u32>().is_ok()
                    && parts.next().is_some_and(|m| !m.trim().is_empty()),
                "{what}: expected FILE:LINE:COL: message, got:\n{}",
                r.stderr
            );
            if let Some(e) = &expect {
                assert!(
                    r.stderr.contains(e.as_str()),
                    "{what}: expected {e:?} in:\n{}",
                    r.stderr
                );
            }
            assert!(
                r.stdout.is_empty(),
                "{what}: {cmd} printed on stdout:\n{}",
                r.stdout
            );
        }
        assert_same(what, &before, &kernel_snapshot(&fw));
    }
}

/// The failure message of `assert_same` (no root needed).
#[test]
fn snapshot_diff_is_readable() {
    let before = "## ip -4 rule show\n0: from all lookup local\n32766: from all lookup main\n## sysctls\na = 1\nb = 0\n";
    let after = "## ip -4 rule show\n0: from all lookup local\n3000: from all fwmark 0x1000000/0xff000000 lookup 42000 proto 157\n32766: from all lookup main\n## sysctls\na = 2\nb = 0\n";
    assert_eq!(
        line_diff(before, after),
        "## ip -4 rule show\n+ 3000: from all fwmark 0x1000000/0xff000000 lookup 42000 proto 157\n## sysctls\n- a = 1\n+ a = 2\n"
    );
    assert_eq!(
        normalize_counters("x counter packets 5 bytes 268\n:PREROUTING ACCEPT [3:180]\n"),
        "x counter packets N bytes N\n:PREROUTING ACCEPT N\n"
    );
}

/// wg-quick on an nft host: its premangle copies the conntrack mark into the packet mark
/// for UDP, its postmangle stores 0xca6c for its own packets, and `not fwmark 0xca6c
/// lookup 51820` sends everything else to its table. None of this touches symroute's
/// bits, so apply must go ahead, and TCP and UDP through ISP1 must work beside it.
#[test]
fn coexists_with_wg_quick_nft() {
    let t = lab();
    let _svc = services(&t);
    let fw = &t.fw;
    fw.nft(
        "table ip wg-quick-wg0 {\n\
         \tchain preraw {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t}\n\
         \tchain premangle {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\t\tmeta l4proto udp meta mark set ct mark\n\t}\n\
         \tchain postmangle {\n\t\ttype filter hook postrouting priority mangle; policy accept;\n\t\tmeta l4proto udp meta mark 0x0000ca6c ct mark set meta mark\n\t}\n\
         }\n",
    )
    .expect("wg-quick table");
    fw.ip("rule add not fwmark 0xca6c lookup 51820 pref 32764")
        .expect("wg rule");
    fw.ip("rule add table main suppress_prefixlength 0 pref 32763")
        .expect("wg suppress");
    fw.ip("route add default dev lan0 table 51820")
        .expect("wg table");
    let _cleanup = RemoveOnDrop(fw);
    apply_ok(fw, CONFIG, "apply beside wg-quick");
    expect_answer(&t, smtp_v4(), "TCP beside wg-quick");
    let udp = symroute::lab::udp_probe(&t.client, sa(TwoIsps::FW_UP1_V4, TwoIsps::UDP_PORT), OK)
        .expect("UDP beside wg-quick");
    assert!(
        udp.starts_with(&format!("echo {} ", TwoIsps::CLIENT_V4)),
        "{udp}"
    );
    let rules = fw.ip("rule show").expect("ip rule");
    assert!(
        rules.contains("32764:\tnot from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
}

/// iptables-save runs only where a mangle table exists: an iptables-nft one (nft table
/// `ip mangle`) and an iptables-legacy one (`/proc/net/ip_tables_names`) are both seen.
#[test]
fn conflicts_stop_apply_before_any_change_f_iptables_nft_and_legacy_marks() {
    for (tool, save_says) in [("iptables-nft", "nf_tables"), ("iptables-legacy", "legacy")] {
        refuses(
            &format!("{tool} MARK --set-xmark 0x01000000"),
            CONFIG,
            |fw| {
                fw.exec(&[
                    tool,
                    "-t",
                    "mangle",
                    "-A",
                    "PREROUTING",
                    "-j",
                    "MARK",
                    "--set-xmark",
                    "0x01000000/0x01000000",
                ])
                .unwrap_or_else(|e| panic!("{tool}: {e:#}"));
            },
            &["MARK", "0x1000000"],
        );
        eprintln!("{tool} ({save_says}) rule refused");
    }
}

/// Mark users outside the mangle table count too: kube-proxy sets its bits from `nat`,
/// and a `filter` rule may test ours under a partial mask. Both variants of iptables.
#[test]
fn conflicts_stop_apply_before_any_change_g_marks_in_other_tables() {
    for tool in ["iptables-nft", "iptables-legacy"] {
        refuses(
            &format!("{tool} -t nat MARK --set-xmark 0x01000000"),
            CONFIG,
            |fw| {
                fw.exec(&[
                    tool,
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-j",
                    "MARK",
                    "--set-xmark",
                    "0x01000000/0x01000000",
                ])
                .unwrap_or_else(|e| panic!("{tool}: {e:#}"));
            },
            &["-t nat", "0x01000000"],
        );
        refuses(
            &format!("{tool} -t filter -m mark --mark 0x01000000/0x0f000000"),
            CONFIG,
            |fw| {
                fw.exec(&[
                    tool,
                    "-t",
                    "filter",
                    "-A",
                    "FORWARD",
                    "-m",
                    "mark",
                    "--mark",
                    "0x01000000/0x0f000000",
                    "-j",
                    "ACCEPT",
                ])
                .unwrap_or_else(|e| panic!("{tool}: {e:#}"));
            },
            &["0x0f000000"],
        );
    }
}

/// A snapshot holds the save output of each iptables variant that has tables, as apply's
/// mark check reads them (plain `iptables-save` is only the variant Debian's alternatives
/// chose, and missed the other one's mark users).
#[test]
fn snapshot_saves_every_iptables_variant() {
    let (fw, _peer) = small_fw();
    for (tool, mark) in [
        ("iptables-nft", "0x1000000"),
        ("iptables-legacy", "0x2000000"),
    ] {
        let xmark = format!("{mark}/{mark}");
        fw.exec(&[
            tool,
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-j",
            "MARK",
            "--set-xmark",
            &xmark,
        ])
        .unwrap_or_else(|e| panic!("{tool}: {e:#}"));
    }
    let dir = support::TempDir::new("snap-xt");
    let snap = dir.0.join("snap");
    let r = symroute_in(&fw, "snapshot", None, &[snap.to_str().unwrap()]);
    assert_eq!(r.code, 0, "snapshot:\n{}", r.show());
    let text = std::fs::read_to_string(snap.join("iptables-save.txt")).expect("iptables-save.txt");
    for mark in ["0x1000000", "0x2000000"] {
        assert!(
            text.contains(&format!("--set-xmark {mark}/{mark}")),
            "the snapshot lacks the rule setting {mark}:\n{text}"
        );
    }
    let v6 = std::fs::read_to_string(snap.join("ip6tables-save.txt")).expect("ip6tables-save.txt");
    assert!(!v6.contains("MARK"), "{v6}");
}
