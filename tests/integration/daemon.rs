//! `symroute run` end to end on the two-ISP firewall lab: the daemon starts and converges
//! (with READY=1, STATUS= and watchdog pings on a notify socket of our own), then repairs
//! what others break — its rule, a route of its table, its nft table, a link going down
//! and up, a new address, a strict rp_filter — reloads on SIGHUP (keeping the old config when the new one is
//! invalid), exits cleanly on SIGTERM/SIGINT (leaving the policy applied, or removing it
//! exactly with --remove-on-exit), and never touches foreign rules, even in its range or
//! in its way.
//!
//! The daemon is the real binary, `symroute run -c FILE --netns NS`, as a child process
//! killed by a guard on drop (which then runs `symroute remove`). Timings are printed;
//! assertions only use generous timeouts (the 100 ms target is `benches/daemon.rs`'s).
//! Needs root, `nft`, `ip` and `conntrack`.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::daemon::{wait_plan_clean, Daemon, Options, SETTLE};
use support::{lab, our_routes, services};
use support::{settled_snapshot, symroute_in};
use symroute::kernel::netlink::{convert, Netlink};
use symroute::lab::{in_netns, tcp_probe, Netns, TwoIsps};
use symroute::model::Family;
use symroute::plan::RT_PROTO;

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");
/// isp1's table and reply mark: its id, 26, comes from its name (42000 + 26 - 1; 2×26-1).
const ISP1_TABLE: u32 = 42025;
const ISP1_MARK: &str = "0x33000000/0xff000000";
/// The priority every reply rule shares; isp1's is the one with its mark.
const REPLY_PRIORITY: u32 = 3003;
/// Deletes isp1's reply rule (and only it: isp2's shares the priority).
const DEL_ISP1_RULE: &str = "ip rule del pref 3003 fwmark 0x33000000/0xff000000 lookup 42025";
/// isp2's table (id 123 from its name).
const ISP2_TABLE: &str = "42122";

/// The daemon with a notify socket of ours (these tests check what it tells systemd),
/// once it said READY=1.
fn notified<'a>(ns: &'a Netns, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon<'a> {
    Daemon::start_with(
        ns,
        config,
        &Options {
            args,
            env,
            notify: true,
        },
    )
}

// ---------------------------------------------------------------------------------------
// probes of the namespace's kernel, in-process (a netlink dump takes well under 1 ms)

fn smtp_v4() -> SocketAddr {
    SocketAddr::new(TwoIsps::FW_UP1_V4.into(), TwoIsps::SMTP_PORT)
}

fn expect_traffic(lab: &TwoIsps, what: &str) {
    let t0 = Instant::now();
    match tcp_probe(&lab.client, smtp_v4(), SETTLE) {
        Ok(line) => {
            assert!(
                line.starts_with(&format!("hello {} ", TwoIsps::CLIENT_V4)),
                "{what}: unexpected greeting {line:?}"
            );
            eprintln!(
                "{what}: client -> {} answered in {:?}",
                smtp_v4(),
                t0.elapsed()
            );
        }
        Err(e) => panic!("{what}: client -> {} got no answer: {e:#}", smtp_v4()),
    }
}

/// isp1's IPv4 reply rule is there (ours, at its priority, with its mark).
fn isp1_rule_present(nl: &mut Netlink) -> bool {
    let mark = u32::from_str_radix(&ISP1_MARK[2..10], 16).expect("hex mark");
    nl.dump_rules(Family::Inet4)
        .expect("dump rules")
        .iter()
        .any(|r| {
            convert::rule_priority(r).get() == REPLY_PRIORITY
                && convert::rule_protocol(r) == RT_PROTO
                && convert::rule_fwmark(r).map(|(v, _)| v) == Some(mark)
        })
}

/// `nft list tables` (cheap whatever the table holds; `nft -f` is atomic, so a table that
/// is there is complete).
fn nft_table_present() -> bool {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "table inet symroute")
        })
        .unwrap_or(false)
}

/// Inside `ns`: checks `is_ok` holds, runs `break_it` (a shell script), then polls
/// `is_ok` every 2 ms. Returns the time from the end of the script until `is_ok` held
/// again, and whether the first poll saw it broken. Panics after `SETTLE`.
fn time_repair(
    ns: &Netns,
    what: &str,
    break_it: &str,
    is_ok: impl FnMut(&mut Netlink) -> bool + Send + 'static,
) -> Duration {
    time_until(ns, what, break_it, true, is_ok)
}

/// Like `time_repair`, for a state that only holds after the change (`ok_before` false).
fn time_until(
    ns: &Netns,
    what: &str,
    break_it: &str,
    ok_before: bool,
    is_ok: impl FnMut(&mut Netlink) -> bool + Send + 'static,
) -> Duration {
    let (script, label) = (break_it.to_string(), what.to_string());
    let (took, saw_broken) = in_netns(ns.name(), move || {
        let mut is_ok = is_ok;
        let mut nl = Netlink::open().expect("netlink");
        assert_eq!(
            is_ok(&mut nl),
            ok_before,
            "{label}: the state before the change"
        );
        let out = Command::new("sh")
            .args(["-ec", &script])
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{label}: `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t0 = Instant::now();
        let mut first = true;
        let mut saw_broken = false;
        loop {
            if is_ok(&mut nl) {
                return (t0.elapsed(), saw_broken);
            }
            if first {
                saw_broken = true;
            }
            first = false;
            assert!(
                t0.elapsed() < SETTLE,
                "{label}: not repaired within {SETTLE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .expect("in netns");
    eprintln!(
        "{what}: repaired {:.1} ms after `{break_it}`{} (target 100 ms)",
        took.as_secs_f64() * 1e3,
        if saw_broken {
            ""
        } else {
            " (already back at the first look)"
        }
    );
    took
}

fn ip_rules(ns: &Netns) -> String {
    ns.ip("-4 rule show").expect("ip rule") + &ns.ip("-6 rule show").expect("ip -6 rule")
}

// ---------------------------------------------------------------------------------------
// the tests

/// (1) Start: READY=1 after the first apply, a STATUS= summary, watchdog pings at half
/// of $WATCHDOG_USEC; the kernel matches the plan and client traffic works.
#[test]
fn starts_converges_and_notifies_systemd() {
    let lab = lab();
    let _services = services(&lab);
    let d = notified(&lab.fw, CONFIG, &[], &[("WATCHDOG_USEC", "400000")]);
    d.wait_converged("start");
    expect_traffic(&lab, "after start");
    let notes = d.notes();
    assert!(
        notes.iter().any(|n| n == "STATUS=applied, 2 gateways up"),
        "no STATUS summary: {notes:?}"
    );
    // Pings every 200 ms: a handful within a second.
    let first = d.wait_note("WATCHDOG=1", 0, Duration::from_secs(2));
    d.wait_note("WATCHDOG=1", first + 1, Duration::from_secs(2));
    let log = d.log();
    assert!(log.contains("reconciled at startup"), "{log}");
    // Idle means idle: no reconcile loop fed by our own changes.
    let reconciles = |log: &str| log.matches("reconciled").count();
    let before = reconciles(&log);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        reconciles(&d.log()),
        before,
        "the daemon kept reconciling while nothing changed:\n{}",
        d.log()
    );
    assert!(
        before <= 3,
        "more than the startup apply and its echo: {}",
        d.log()
    );
}

/// (2) Someone deletes symroute's rule: it comes back.
#[test]
fn deleted_rule_comes_back() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    time_repair(
        &lab.fw,
        "isp1's reply rule deleted",
        DEL_ISP1_RULE,
        isp1_rule_present,
    );
    d.wait_converged("after the rule came back");
    assert!(
        d.log().contains(&format!(
            "applied: + ip -4 rule pref 3003 fwmark 0x33000000/0xff000000 lookup {ISP1_TABLE}"
        )),
        "{}",
        d.log()
    );
}

/// (3) Someone deletes a route of symroute's table: it comes back.
#[test]
fn deleted_route_comes_back() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let want = in_netns(lab.fw.name(), || {
        our_routes(&mut Netlink::open().expect("netlink"), ISP1_TABLE)
    })
    .expect("in netns");
    assert!(
        want.iter().any(|r| r.dst.prefix_len() == 0),
        "no default route in table {ISP1_TABLE}: {want:?}"
    );
    time_repair(
        &lab.fw,
        "default route of isp1's table deleted",
        &format!("ip route del default table {ISP1_TABLE}"),
        move |nl| our_routes(nl, ISP1_TABLE) == want,
    );
    d.wait_converged("after the route came back");
}

/// (4) `nft delete table inet symroute`: the table comes back (nftables notifications).
#[test]
fn deleted_nft_table_comes_back() {
    let lab = lab();
    let _services = services(&lab);
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    time_repair(
        &lab.fw,
        "nft table deleted",
        "nft delete table inet symroute",
        |_| nft_table_present(),
    );
    d.wait_converged("after the table came back");
    expect_traffic(&lab, "after the table came back");
}

/// (4c) A repair after a commit on our table alone reuses the last listing's foreign
/// tables (the monitor read no commit to them since), and sees everything that changed
/// elsewhere otherwise: a foreign table that starts setting marks in our bits, created in
/// the same transaction that deletes our table or in one just before, is a conflict the
/// daemon must not write our table back beside (a stale listing would hide it).
#[test]
fn a_kept_listing_never_hides_a_foreign_change() {
    const MARKER: &str = "add table ip foreignmark; add chain ip foreignmark c { type filter hook prerouting priority 0; }; add rule ip foreignmark c meta mark set meta mark or 0x01000000";
    const REUSED: &str = "only table inet symroute changed since the last listing";
    const REFUSED: &str = "not applying, a foreign object is in the way";
    let lab = lab();
    let mut d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let reused = |d: &Daemon| d.log().matches(REUSED).count();
    let present = || in_netns(lab.fw.name(), nft_table_present).expect("in netns");
    // A change that adds the foreign mark user with our table deleted: refused, and our
    // table stays away (a stale listing would have it written back).
    let refused = |d: &Daemon, break_it: &dyn Fn()| {
        let refused = d.log().matches(REFUSED).count();
        break_it();
        d.wait_log_count(REFUSED, refused + 1, SETTLE);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !present(),
            "the table was written back beside a new mark user:\n{}",
            d.log()
        );
    };
    // The mark user goes: converged again, our table back.
    let cleared = |d: &Daemon, when: &str| {
        lab.fw
            .exec(&["nft", "delete table ip foreignmark"])
            .expect("foreign table gone");
        d.wait_converged(when);
        assert!(present(), "not repaired:\n{}", d.log());
    };
    // Our table alone: repaired, and from the kept listing (after the first repair, whose
    // pass may have been the first to list since the start).
    for round in 0..3 {
        let before = reused(&d);
        time_repair(
            &lab.fw,
            "nft table deleted",
            "nft delete table inet symroute",
            |_| nft_table_present(),
        );
        d.wait_converged("after the table came back");
        if round > 0 {
            assert!(
                reused(&d) > before,
                "round {round}: the repair listed the ruleset again though only our table changed:\n{}",
                d.log()
            );
        }
    }
    // One transaction: the foreign mark user, and our table deleted.
    refused(&d, &|| {
        lab.fw
            .exec(&["nft", &format!("{MARKER}; delete table inet symroute")])
            .expect("one transaction");
    });
    assert!(d.running(), "a conflict killed the daemon:\n{}", d.log());
    cleared(&d, "after the conflict went away");
    // Two transactions, the foreign one first, then ours right after (`nft -i` commits
    // each line on its own).
    let lines: String = MARKER.split("; add ").collect::<Vec<_>>().join("\nadd ");
    refused(&d, &|| {
        lab.fw
            .sh(&format!(
                "nft -i <<'EOF'\n{lines}\ndelete table inet symroute\nEOF"
            ))
            .expect("two transactions");
    });
    cleared(&d, "at the end");
}

/// Routes of main's own (a BGP feed, a LAN's static routes) are nothing a reconcile
/// reads: 2,000 of them added and removed start no pass, where each burst used to start
/// one (and a dump of every route). A default route in main still does: `via = "auto"`
/// follows it.
#[test]
fn routes_of_mains_own_start_no_pass() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    std::thread::sleep(Duration::from_millis(300));
    let passes = |d: &Daemon| d.log().matches("reconciled").count();
    let before = passes(&d);
    let batch = |verb: &str| -> String {
        (0..2000)
            .map(|i| {
                format!(
                    "route {verb} 100.{}.{}.{}/32 via 198.51.100.1 dev up2 proto 186\n",
                    64 + i / 65536,
                    (i / 256) % 256,
                    i % 256
                )
            })
            .collect()
    };
    for verb in ["add", "del"] {
        lab.fw
            .sh(&format!("ip -batch - <<'EOF'\n{}EOF", batch(verb)))
            .expect("2,000 routes");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        passes(&d),
        before,
        "routes of main's own started a pass:\n{}",
        d.log()
    );
    // A default route in main (another next hop for up1): a pass.
    lab.fw
        .ip("route add default via 203.0.113.1 dev up1 metric 500")
        .expect("default route");
    d.wait_log_count("reconciled", before + 1, SETTLE);
    lab.fw
        .ip("route del default via 203.0.113.1 dev up1 metric 500")
        .expect("default route gone");
    d.wait_converged("at the end");
}

/// Rules of our `pre` chain (0 when the chain or table is missing).
fn pre_rules() -> usize {
    Command::new("nft")
        .args(["list", "chain", "inet", "symroute", "pre"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("jump") || l.contains("vmap"))
                .count()
        })
        .unwrap_or(0)
}

/// (4b) Someone alters the inside of the table (its fingerprint chain stays): a chain
/// flushed, or a rule added, is noticed from the nftables notification and the table is
/// replaced.
#[test]
fn altered_nft_table_is_replaced() {
    let lab = lab();
    let _services = services(&lab);
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let want = in_netns(lab.fw.name(), pre_rules).expect("in netns");
    assert!(want > 0, "our pre chain has rules");
    time_repair(
        &lab.fw,
        "nft chain pre flushed",
        "nft flush chain inet symroute pre",
        move |_| pre_rules() == want,
    );
    expect_traffic(&lab, "after the chain was restored");
    time_repair(
        &lab.fw,
        "a foreign drop rule added to our chain",
        "nft insert rule inet symroute pre tcp dport 25 drop",
        move |_| {
            let out = Command::new("nft")
                .args(["list", "chain", "inet", "symroute", "pre"])
                .output()
                .expect("nft");
            !String::from_utf8_lossy(&out.stdout).contains("drop")
        },
    );
    d.wait_converged("after the table was restored");
    expect_traffic(&lab, "after the foreign rule was removed");
}

/// (5) The ISP1 link goes down and up: its table's routes (which the kernel flushed) are
/// back after link-up, and traffic works.
#[test]
fn link_down_and_up_restores_the_gateway_table() {
    let lab = lab();
    let _services = services(&lab);
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let want = in_netns(lab.fw.name(), || {
        our_routes(&mut Netlink::open().expect("netlink"), ISP1_TABLE)
    })
    .expect("in netns");
    time_repair(
        &lab.fw,
        "up1 down, 300 ms, up",
        "ip link set up1 down; sleep 0.3; ip link set up1 up",
        move |nl| our_routes(nl, ISP1_TABLE) == want,
    );
    d.wait_log("gateway isp1 is down", SETTLE);
    d.wait_converged("after link-up");
    expect_traffic(&lab, "after link-up");
}

/// (6) A second LAN address: the gateway table gains its connected network.
#[test]
fn new_address_adds_its_network_to_the_gateway_table() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let net: ipnet::IpNet = "10.78.0.0/24".parse().unwrap();
    time_until(
        &lab.fw,
        "address 10.78.0.1/24 added to lan0",
        "ip addr add 10.78.0.1/24 dev lan0",
        false,
        move |nl| {
            our_routes(nl, ISP1_TABLE)
                .iter()
                .any(|r| r.dst == net && r.dev == "lan0")
        },
    );
    d.wait_converged("after the address change");
}

/// (6b) rp_filter set back to strict on the ISP1 interface: loosened again (IPv4 netconf
/// notifications).
#[test]
fn strict_rp_filter_is_loosened_again() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let key = "/proc/sys/net/ipv4/conf/up1/rp_filter";
    time_repair(
        &lab.fw,
        "rp_filter on up1 set to 1 (strict)",
        &format!("echo 1 > {key}"),
        move |_| {
            std::fs::read_to_string(key)
                .map(|v| v.trim() == "2")
                .unwrap_or(false)
        },
    );
    d.wait_converged("after rp_filter was loosened again");
}

/// (7) SIGHUP applies a changed config (RELOADING=1, then READY=1); an invalid one is
/// logged with FILE:LINE:COL and the old config stays in force.
#[test]
fn sighup_reloads_and_keeps_the_old_config_when_invalid() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    assert!(ip_rules(&lab.fw).contains(&format!("lookup {ISP2_TABLE}")));

    let without_isp2 = CONFIG
        .split("# The same for ISP2")
        .next()
        .expect("example has the isp2 policy")
        .to_string();
    d.write_config(&without_isp2);
    let from = d.notes().len();
    d.signal(Signal::SIGHUP);
    let reloading = d.wait_note("RELOADING=1", from, SETTLE);
    d.wait_note("READY=1", reloading, SETTLE);
    d.wait_converged("after the reload");
    let rules = ip_rules(&lab.fw);
    assert!(
        !rules.contains(&format!("lookup {ISP2_TABLE}")),
        "isp2's rule is still there:\n{rules}"
    );
    assert!(
        rules.contains(&format!("lookup {ISP1_TABLE}")),
        "isp1's rule is gone:\n{rules}"
    );

    // Invalid: a number where a name belongs.
    d.write_config("[[gateway]]\nname = 3\n");
    let from = d.notes().len();
    d.signal(Signal::SIGHUP);
    d.wait_note("READY=1", from, SETTLE);
    let path = d.config_path().display().to_string();
    d.wait_log(
        &format!("reload failed, keeping the previous config: {path}:2:8:"),
        SETTLE,
    );
    let mut d = d;
    assert!(
        d.running(),
        "the daemon died on an invalid config:\n{}",
        d.log()
    );
    assert!(
        d.notes()
            .iter()
            .any(|n| n.starts_with("STATUS=") && n.contains("last reload failed")),
        "{:?}",
        d.notes()
    );
    // Still enforcing the previous (valid) config.
    time_repair(
        &lab.fw,
        "isp1's reply rule deleted after a failed reload",
        DEL_ISP1_RULE,
        isp1_rule_present,
    );
    wait_plan_clean(
        &lab.fw,
        "previous config still in force",
        || symroute_in(&lab.fw, "plan", Some(&without_isp2), &[]),
        &d.log(),
    );
    assert!(!ip_rules(&lab.fw).contains(&format!("lookup {ISP2_TABLE}")));
}

/// (8) SIGTERM exits 0 and leaves the policy applied; with --remove-on-exit it removes it,
/// and the kernel is exactly as before the daemon.
#[test]
fn sigterm_exits_cleanly_leaving_or_removing_the_policy() {
    let lab = lab();
    let before = settled_snapshot(&lab.fw);

    let mut d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(SETTLE);
    assert_eq!(code, 0, "exit code after SIGTERM; log:\n{}", d.log());
    assert!(
        d.notes().iter().any(|n| n == "STOPPING=1"),
        "{:?}",
        d.notes()
    );
    let r = symroute_in(&lab.fw, "plan", Some(CONFIG), &[]);
    assert!(
        r.stdout.contains("no changes"),
        "the policy did not stay applied:\n{}",
        r.stdout
    );
    drop(d); // (its guard runs `symroute remove`: start the second run from scratch)
    assert_eq!(
        settled_snapshot(&lab.fw),
        before,
        "remove after the first run"
    );

    // Applied by hand first: the daemon starts on an applied host, then removes it all.
    let r = symroute_in(&lab.fw, "apply", Some(CONFIG), &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut d = notified(&lab.fw, CONFIG, &["--remove-on-exit"], &[]);
    d.wait_converged("second start");
    assert!(
        d.log().contains("reconciled at startup: no changes"),
        "{}",
        d.log()
    );
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(SETTLE);
    assert_eq!(code, 0, "exit code after SIGTERM; log:\n{}", d.log());
    assert!(d.log().contains("removed"), "{}", d.log());
    assert_eq!(
        settled_snapshot(&lab.fw),
        before,
        "--remove-on-exit left the kernel different from before the daemon"
    );
}

/// (9) Foreign rules are never touched: one at a free priority (inside symroute's range)
/// survives repairs; one in symroute's way stops the daemon from applying (logged, not
/// forced) until it goes away. SIGINT exits 0.
#[test]
fn foreign_rules_are_left_alone() {
    let lab = lab();
    let mut d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");

    lab.fw
        .ip("rule add pref 3050 from 192.0.2.99 lookup main")
        .expect("foreign rule");
    let foreign = |ns: &Netns, pref: &str| -> Vec<String> {
        ns.ip("-4 rule show")
            .expect("ip rule")
            .lines()
            .filter(|l| l.starts_with(pref))
            .map(str::to_string)
            .collect()
    };
    let before = foreign(&lab.fw, "3050:");
    assert_eq!(before.len(), 1, "{before:?}");
    // A repair right after: the reconcile sees the foreign rule and leaves it.
    time_repair(
        &lab.fw,
        "isp1's reply rule deleted next to a foreign rule",
        DEL_ISP1_RULE,
        isp1_rule_present,
    );
    d.wait_converged("with a foreign rule at 3050");
    assert_eq!(
        foreign(&lab.fw, "3050:"),
        before,
        "the foreign rule was touched"
    );

    // A foreign rule at one of symroute's priorities: a conflict, logged, not forced.
    lab.fw
        .ip("rule add pref 3003 from 192.0.2.98 lookup main")
        .expect("conflicting rule");
    d.wait_log(
        "not applying, a foreign object is in the way: priority 3003",
        SETTLE,
    );
    lab.fw
        .ip(DEL_ISP1_RULE.trim_start_matches("ip "))
        .expect("delete our rule");
    std::thread::sleep(Duration::from_millis(500));
    let rules = lab.fw.ip("-4 rule show").expect("ip rule");
    assert!(
        !rules
            .lines()
            .any(|l| l.contains(&format!("fwmark {ISP1_MARK}"))),
        "applied despite the conflict:\n{rules}"
    );
    assert!(rules.contains("from 192.0.2.98 lookup main"), "{rules}");
    assert!(d.running(), "a conflict killed the daemon:\n{}", d.log());
    // The foreign rule goes: the daemon converges again by itself.
    lab.fw
        .ip("rule del pref 3003 from 192.0.2.98 lookup main")
        .expect("delete the conflicting rule");
    d.wait_converged("after the conflict went away");
    assert_eq!(
        foreign(&lab.fw, "3050:"),
        before,
        "the foreign rule was touched"
    );

    d.signal(Signal::SIGINT);
    assert_eq!(
        d.wait_exit(SETTLE),
        0,
        "exit code after SIGINT; log:\n{}",
        d.log()
    );
}

/// (10) Startup: a bad config exits 2 before touching anything; a conflict exits 1 with
/// nothing changed; a gateway that is down is only logged, and picked up when it comes.
#[test]
fn startup_errors_and_a_gateway_down() {
    let lab = lab();
    let before = settled_snapshot(&lab.fw);
    let mut bad = Daemon::spawn(
        &lab.fw,
        "[[gateway]]\nname = 3\n",
        &Options {
            notify: true,
            ..Options::default()
        },
    );
    assert_eq!(bad.wait_exit(SETTLE), 2, "bad config; log:\n{}", bad.log());
    bad.wait_log(":2:8:", SETTLE);
    drop(bad);

    lab.fw
        .ip(&format!("rule add pref {REPLY_PRIORITY} lookup main"))
        .expect("conflicting rule");
    let mut conflict = Daemon::spawn(
        &lab.fw,
        CONFIG,
        &Options {
            notify: true,
            ..Options::default()
        },
    );
    assert_eq!(
        conflict.wait_exit(SETTLE),
        1,
        "conflict; log:\n{}",
        conflict.log()
    );
    conflict.wait_log("priority 3003", SETTLE);
    assert!(!conflict.notes().iter().any(|n| n == "READY=1"));
    drop(conflict);
    lab.fw
        .ip(&format!("rule del pref {REPLY_PRIORITY} lookup main"))
        .expect("delete conflicting rule");
    assert_eq!(
        settled_snapshot(&lab.fw),
        before,
        "a failed start changed the kernel"
    );

    // Keep up2's IPv6 addresses while it is down (by default the kernel flushes them,
    // and the gateway would come back IPv4-only: "partly up").
    lab.fw
        .sysctl("net.ipv6.conf.up2.keep_addr_on_down", "1")
        .expect("keep_addr_on_down");
    lab.fw.ip("link set up2 down").expect("up2 down");
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_log("gateway isp2 is down", SETTLE);
    assert!(
        d.notes()
            .iter()
            .any(|n| n == "STATUS=applied, 1 of 2 gateways up; down: isp2"),
        "{:?}",
        d.notes()
    );
    d.wait_converged("with up2 down");
    lab.fw.ip("link set up2 up").expect("up2 up");
    d.wait_log("gateway isp2 is up", SETTLE);
    d.wait_converged("after up2 came up");
    let table = lab
        .fw
        .ip(&format!("-4 route show table {ISP2_TABLE}"))
        .expect("ip route");
    assert!(
        table.contains("default via 198.51.100.1 dev up2"),
        "{table}"
    );
}

/// (11) An apply the kernel refuses (an IPv6 next hop that is the firewall's own address:
/// a valid config, but "Gateway can not be a local address") is rolled back and retried after 1 s, 2 s, 4 s… — not in
/// a loop, although each rollback is itself a burst of changes. The previous policy stays
/// in force meanwhile; a reload with a good config converges at once.
#[test]
fn a_failing_apply_backs_off_instead_of_looping() {
    let lab = lab();
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let broken = CONFIG.replace("via6 = \"2001:db8:1::1\"", "via6 = \"2001:db8:1::2\"");
    assert_ne!(broken, CONFIG);
    d.write_config(&broken);
    d.signal(Signal::SIGHUP);
    d.wait_log("apply failed", SETTLE);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(3500));
    let failures = d.log().matches("apply failed").count();
    eprintln!("{failures} failed applies in {:?}", t0.elapsed());
    assert!(
        (2..=5).contains(&failures),
        "expected the reload's attempt and 1-3 retries (1 s, 2 s, …), got {failures}:\n{}",
        d.log()
    );
    assert!(d.log().contains("trying again in 2 s"), "{}", d.log());
    assert!(
        d.notes()
            .iter()
            .any(|n| n.starts_with("STATUS=apply failed")),
        "{:?}",
        d.notes()
    );
    // Rolled back each time: the previous policy is still exactly in place.
    wait_plan_clean(
        &lab.fw,
        "old policy still in force",
        || symroute_in(&lab.fw, "plan", Some(CONFIG), &[]),
        &d.log(),
    );
    d.write_config(CONFIG);
    d.signal(Signal::SIGHUP);
    d.wait_converged("after reloading a good config");
    let failures_after = d.log().matches("apply failed").count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.log().matches("apply failed").count(),
        failures_after,
        "still failing after the good config:\n{}",
        d.log()
    );
}

/// CPU time (user + system) a process and its finished children have used so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, and cutime, cstime: the `nft` children it waited for count too.
    let ticks: u64 = f[11..15]
        .iter()
        .map(|x| x.parse::<u64>().expect("cpu ticks"))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// (10) A flap storm: up1 goes down and up 500 times in 10 s. The daemon keeps answering
/// (a SIGHUP in the middle is taken in within the storm), uses a bounded share of one CPU
/// (its reconciles are paced), and ends in the right state with traffic working.
#[test]
fn flap_storm_500_flaps_in_10s_stays_bounded_and_converges() {
    let lab = lab();
    let _services = services(&lab);
    let mut d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    let cpu0 = cpu_time(d.pid());
    let t0 = Instant::now();
    // 100 bursts of 5 flaps, one every 100 ms.
    let batch = "link set up1 down\nlink set up1 up\n".repeat(5);
    let mut reload_seen = None;
    for burst in 0..100u32 {
        lab.fw
            .sh(&format!("ip -batch - <<'EOF'\n{batch}EOF"))
            .expect("5 flaps");
        if burst == 50 {
            let from = d.log().lines().count();
            d.signal(Signal::SIGHUP);
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_secs(3) {
                if d.log()
                    .lines()
                    .skip(from)
                    .any(|l| l.contains("SIGHUP: reloading"))
                {
                    reload_seen = Some(sent.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if burst < 99 {
            let next = Duration::from_millis(100 * (u64::from(burst) + 1));
            std::thread::sleep(next.saturating_sub(t0.elapsed()));
        }
    }
    let storm = t0.elapsed();
    let after = Instant::now();
    d.wait_converged("after the flap storm");
    let settle = after.elapsed();
    let cpu = cpu_time(d.pid()) - cpu0;
    let reconciles = d.log().lines().filter(|l| l.contains("reconciled")).count();
    eprintln!(
        "flap storm: 500 flaps in {storm:.1?}; {reconciles} reconciles; daemon CPU incl. nft children {cpu:.2?} ({:.0} % of one core); SIGHUP answered after {reload_seen:?}; converged {settle:.0?} after the last flap",
        100.0 * cpu.as_secs_f64() / (storm + settle).as_secs_f64()
    );
    let reload = reload_seen.expect("the daemon must take in a SIGHUP during the storm");
    assert!(reload < Duration::from_secs(1), "SIGHUP took {reload:?}");
    assert!(
        cpu.as_secs_f64() < 0.5 * (storm + settle).as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {:?}",
        storm + settle
    );
    expect_traffic(&lab, "after the flap storm");
    assert!(d.running(), "the daemon exited; log:\n{}", d.log());
}

/// The IPv4 next hop of isp1's table's default route, if any.
fn isp1_default_via(nl: &mut Netlink) -> Option<std::net::IpAddr> {
    our_routes(nl, ISP1_TABLE)
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0 && r.family == Family::Inet4)
        .and_then(|r| r.via)
}

/// (11) `via = "auto"`: isp1's next hop is learned from the main table's default route
/// through up1 (metric 100, as a DHCP client adds beside the default via isp2). A new
/// lease with another gateway moves isp1's table to it, traffic keeps working; losing the
/// lease takes isp1 down with the reason logged.
#[test]
fn auto_next_hop_follows_the_dhcp_default_route() {
    let lab = lab();
    let _services = services(&lab);
    lab.fw
        .ip("route add default via 203.0.113.1 dev up1 metric 100")
        .expect("dhcp-like default route");
    lab.isp1
        .ip("addr add 203.0.113.5/24 dev fw0")
        .expect("isp1's second router address");
    let config = CONFIG.replacen("via = \"203.0.113.1\"", "via = \"auto\"", 1);
    assert!(config.contains("via = \"auto\""));
    let d = notified(&lab.fw, &config, &[], &[]);
    d.wait_converged("start");
    let first = in_netns(lab.fw.name(), || {
        isp1_default_via(&mut Netlink::open().expect("netlink"))
    })
    .expect("in netns");
    assert_eq!(first, Some("203.0.113.1".parse().expect("addr")));
    expect_traffic(&lab, "via learned 203.0.113.1");

    let new: std::net::IpAddr = "203.0.113.5".parse().expect("addr");
    time_until(
        &lab.fw,
        "new lease: default via 203.0.113.5",
        "ip route replace default via 203.0.113.5 dev up1 metric 100",
        false,
        move |nl| isp1_default_via(nl) == Some(new),
    );
    d.wait_converged("after the new lease");
    expect_traffic(&lab, "via learned 203.0.113.5");

    time_until(
        &lab.fw,
        "lease lost: no default route through up1",
        "ip route del default via 203.0.113.5 dev up1 metric 100",
        false,
        |nl| isp1_default_via(nl).is_none(),
    );
    d.wait_log(
        "the main table has no IPv4 default route through up1",
        SETTLE,
    );
}

/// (12) `on_change` hooks under a flapping link: at most one run waits per gateway (the
/// latest change wins), a hook does not see the daemon's systemd variables, its output
/// goes to the log, and what it leaves running in the background is killed.
#[test]
fn hooks_coalesce_see_no_systemd_variables_and_leave_nothing_running() {
    let lab = lab();
    let hooks = std::env::temp_dir().join(format!("symroute-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&hooks);
    std::fs::create_dir_all(&hooks).expect("hooks dir");
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(hooks.clone());
    let h = hooks.display();
    let config = format!(
        "[settings]\non_change = \"sleep 4; echo $SYMROUTE_GATEWAY $SYMROUTE_OLD_STATE $SYMROUTE_NEW_STATE >> {h}/runs; env > {h}/env-$SYMROUTE_GATEWAY; sleep 60 & echo $! >> {h}/strays; echo said-$SYMROUTE_GATEWAY; echo err-$SYMROUTE_GATEWAY >&2\"\n{CONFIG}"
    );
    let d = notified(&lab.fw, &config, &[], &[("WATCHDOG_USEC", "30000000")]);
    // While isp1's startup hook sleeps (4 s), isp1 goes down, up and down again, each
    // change seen by the daemon before the next (so none is merged in one reconcile):
    // the second down replaces the up waiting behind the startup run.
    // (Back up, it is "partly up" first, until IPv6's next hop is on-link again: up for
    // the hooks.)
    let seen = |needles: &[&str], n: usize| {
        let t0 = Instant::now();
        while needles
            .iter()
            .map(|x| d.log().matches(x).count())
            .sum::<usize>()
            < n
        {
            assert!(t0.elapsed() < SETTLE, "no {needles:?} #{n}:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    lab.fw.ip("link set up1 down").expect("up1 down");
    seen(&["gateway isp1 is down"], 1);
    lab.fw.ip("link set up1 up").expect("up1 up");
    seen(&["gateway isp1 is up", "gateway isp1 is partly up"], 1);
    lab.fw.ip("link set up1 down").expect("up1 down");
    seen(&["gateway isp1 is down"], 2);
    d.wait_log("came before the hooks for", SETTLE);
    let runs = || std::fs::read_to_string(hooks.join("runs")).unwrap_or_default();
    let t0 = Instant::now();
    while runs().lines().count() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "runs so far: {}\n{}",
            runs(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        runs(),
        "isp1 none up\nisp2 none up\nisp1 up down\n",
        "one startup run each, then one run for isp1's latest change:\n{}",
        d.log()
    );
    let env = std::fs::read_to_string(hooks.join("env-isp1")).expect("env-isp1");
    assert!(env.contains("SYMROUTE_GATEWAY=isp1"), "{env}");
    for private in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
        assert!(!env.contains(private), "the hook saw {private}:\n{env}");
    }
    let log = d.log();
    for said in ["said: said-isp1", "said: err-isp1", "said: said-isp2"] {
        assert!(log.contains(said), "no {said:?} in the log:\n{log}");
    }
    let strays = std::fs::read_to_string(hooks.join("strays")).expect("strays");
    for pid in strays.lines() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(
            !running,
            "a hook's background child {pid} still runs: {stat}"
        );
    }
    lab.fw.ip("link set up1 up").expect("up1 up");
}

/// (11) Another program commits to its own nftables table thousands of times a second (an
/// nftset of dnsmasq, fail2ban, docker's iptables-nft): the daemon waits out the quiet
/// period (or the maximum delay) before each pass, as for any burst; only whole
/// transactions on its own table are reconciled at once. Each pass logs how long after
/// the burst's first change it started: never sooner than the quiet period here (a
/// daemon that took every foreign transaction as its own started passes 0 ms after).
#[test]
fn other_programs_nft_commits_keep_the_quiet_period() {
    let lab = lab();
    let _services = services(&lab);
    let d = notified(&lab.fw, CONFIG, &[], &[]);
    d.wait_converged("start");
    lab.fw
        .exec(&[
            "nft",
            "add table inet busy; add set inet busy s { type ipv4_addr; }",
        ])
        .expect("a foreign table");
    std::thread::sleep(Duration::from_millis(300));
    let from = d.log().lines().count();
    let t0 = Instant::now();
    // `nft -i` runs each line as a transaction of its own: 3,000 commits from one
    // process, closer together than the quiet period.
    let commands: String = (0..3000)
        .map(|i| {
            format!(
                "add element inet busy s {{ 10.9.{}.{} }}\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    lab.fw
        .sh(&format!("nft -i >/dev/null <<'EOF'\n{commands}EOF"))
        .expect("3,000 commits");
    let storm = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let log = d.log();
    let passes: Vec<&str> = log
        .lines()
        .skip(from)
        .filter(|l| l.contains("reconciled"))
        .collect();
    eprintln!(
        "3,000 foreign commits in {storm:.1?}: {} reconcile pass(es)",
        passes.len()
    );
    assert!(
        !passes.is_empty(),
        "the commits were never taken in:\n{log}"
    );
    for p in &passes {
        let after: u64 = p
            .split("reconciled ")
            .nth(1)
            .and_then(|r| r.split(" ms after a change").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a pass after a change: {p}"));
        assert!(
            after >= 15,
            "a pass started {after} ms after another program's commit, inside the quiet period:\n{p}"
        );
    }
    d.wait_converged("after the foreign commits");
}
