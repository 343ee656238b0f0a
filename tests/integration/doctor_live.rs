//! `symroute doctor` on live namespaces (root; private namespaces only).
//!
//! 1. Every tests/fixtures/NAME/setup.sh is built for real, the way tests/fixtures/make.sh
//!    builds it (a host namespace whose `# link` interfaces are veths to a peer namespace,
//!    then the script inside the host), the state is captured live (`snapshot::capture`
//!    inside the namespace), and doctor must find exactly what it finds on the committed
//!    fixture — so the fixtures cannot drift from what the kernel and tools really print.
//!    The seeds get the same assertions as in tests/integration/doctor.rs.
//! 2. symroute's own setups (the lab topologies with the examples applied) have no error
//!    and no warning.
//!
//! Run with `cargo test --test integration doctor_live:: -- --test-threads=2`.

use crate::support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use support::lab;
use support::{require_root, symroute_in};
use symroute::explain::doctor::{doctor, render, Finding, Severity};
use symroute::explain::host::HostState;
use symroute::kernel::snapshot;
use symroute::lab::{in_netns, veth_mac, Netns, ProxyRelay};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The namespaces a setup.sh lives in (both deleted on drop).
struct Built {
    host: Netns,
    _peer: Netns,
}

fn build(name: &str) -> Built {
    let script = fixture_dir(name).join("setup.sh");
    let text =
        std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let host = Netns::new("dh").expect("netns");
    let peer = Netns::new("dp").expect("netns");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# link ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (ifname, mac) = (words[0], words.get(1).copied());
        veth_mac(&host, ifname, mac, &peer, &format!("p-{ifname}"), None)
            .unwrap_or_else(|e| panic!("{name}: veth {ifname}: {e:#}"));
    }
    host.exec(&["sh", "-e", script.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{name}: setup.sh failed: {e:#}"));
    Built { host, _peer: peer }
}

/// The namespace's state, captured the way `symroute doctor --netns` does.
fn live(ns: &Netns) -> HostState {
    let c = in_netns(ns.name(), snapshot::capture).expect("capture in netns");
    assert!(c.missing.is_empty(), "could not capture: {:?}", c.missing);
    HostState::from_files(&c.files, Vec::new(), "live").unwrap_or_else(|e| panic!("{e}"))
}

fn from_fixture(name: &str) -> Vec<Finding> {
    let loaded = snapshot::load(&fixture_dir(name)).expect("fixture");
    doctor(&HostState::from_files(&loaded.files, loaded.missing, name).expect("fixture state"))
}

type Key = (Severity, &'static str, String);

fn keys(f: &[Finding]) -> BTreeSet<Key> {
    f.iter()
        .map(|x| (x.severity, x.code, x.rule.clone()))
        .collect()
}

/// Builds `name` live and checks doctor agrees with the committed fixture.
fn live_matches_fixture(name: &str) -> Vec<Finding> {
    require_root();
    let b = build(name);
    let got = doctor(&live(&b.host));
    let want = from_fixture(name);
    assert_eq!(
        keys(&got),
        keys(&want),
        "{name}: live findings differ from the fixture's (rebuild with tests/fixtures/make.sh?)\nlive:\n{}\nfixture:\n{}",
        render(&got),
        render(&want)
    );
    got
}

#[test]
fn seed000_live() {
    let f = live_matches_fixture("seed000");
    let codes: BTreeSet<(Severity, &str)> = f.iter().map(|x| (x.severity, x.code)).collect();
    for want in [
        (Severity::Error, "mark-zero"),
        (Severity::Error, "fwmark-never-set"),
        (Severity::Error, "mark-after-routing"),
        (Severity::Error, "rp-filter-strict"),
        (Severity::Warning, "mark-not-saved"),
    ] {
        assert!(codes.contains(&want), "{want:?} missing:\n{}", render(&f));
    }
}

#[test]
fn seed004_relay_live() {
    let f = live_matches_fixture("seed004-relay");
    assert!(
        f.iter().all(|x| x.severity == Severity::Info),
        "{}",
        render(&f)
    );
}

#[test]
fn seed004_haproxy_live() {
    let f = live_matches_fixture("seed004-haproxy");
    assert!(
        f.iter().all(|x| x.severity == Severity::Info),
        "{}",
        render(&f)
    );
}

#[test]
fn good_two_isps_live() {
    let f = live_matches_fixture("good-two-isps");
    assert!(f.is_empty(), "{}", render(&f));
}

#[test]
fn shorewall_two_isps_live() {
    let f = live_matches_fixture("shorewall-two-isps");
    assert!(
        f.iter().all(|x| x.severity == Severity::Info),
        "{}",
        render(&f)
    );
}

#[test]
fn bad_routing_live() {
    live_matches_fixture("bad-routing");
}

#[test]
fn bad_marks_nft_live() {
    live_matches_fixture("bad-marks-nft");
}

#[test]
fn bad_save_restore_live() {
    live_matches_fixture("bad-save-restore");
}

#[test]
fn tools_present_live() {
    live_matches_fixture("tools-present");
}

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");
const RELAY: &str = include_str!("../../examples/proxy-relay.toml");
const DIVERT: &str = include_str!("../../examples/haproxy-divert.toml");

fn no_error_or_warning(what: &str, ns: &Netns) {
    let h = live(ns);
    assert!(
        h.routing
            .rules
            .iter()
            .any(|r| r.protocol.as_deref() == Some("157")),
        "{what}: symroute's rules are there"
    );
    assert!(
        h.firewall.chains.iter().any(|c| c.table == "symroute"),
        "{what}: symroute's table is there"
    );
    let f = doctor(&h);
    assert!(
        f.iter().all(|x| x.severity == Severity::Info),
        "{what}: symroute's own setup should be clean:\n{}",
        render(&f)
    );
}

/// The two-ISP lab firewall with examples/two-isps-firewall.toml applied.
#[test]
fn symroute_applied_two_isps_is_clean() {
    let lab = lab();
    let _cleanup = support::RemoveOnDrop(&lab.fw);
    symroute_in(&lab.fw, "apply", Some(FIREWALL), &[]).ok();
    no_error_or_warning("two-isps firewall", &lab.fw);
}

/// The proxy-relay lab with examples/proxy-relay.toml on the relay and
/// examples/haproxy-divert.toml on the proxy.
#[test]
fn symroute_applied_proxy_relay_is_clean() {
    require_root();
    let lab = ProxyRelay::build().expect("lab");
    let _cleanup = (
        support::RemoveOnDrop(&lab.relay),
        support::RemoveOnDrop(&lab.proxy),
    );
    symroute_in(&lab.relay, "apply", Some(RELAY), &[]).ok();
    symroute_in(&lab.proxy, "apply", Some(DIVERT), &[]).ok();
    no_error_or_warning("relay", &lab.relay);
    no_error_or_warning("haproxy host", &lab.proxy);
}

/// `symroute doctor --netns NS` exit codes, once the CLI has the subcommand.
#[test]
fn cli_exit_codes_live() {
    require_root();
    let seed = build("seed000");
    let r = symroute_in(&seed.host, "doctor", None, &[]);
    assert_eq!(
        r.code, 1,
        "error-level findings: exit 1\n{}{}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.contains("error[mark-zero]"), "{}", r.stdout);
    let r = symroute_in(&seed.host, "doctor", None, &["--json"]);
    assert_eq!(r.code, 1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["code"] == "rp-filter-strict"),
        "{v}"
    );
    let relay = build("seed004-relay");
    let r = symroute_in(&relay.host, "doctor", None, &[]);
    assert_eq!(r.code, 0, "no error: exit 0\n{}{}", r.stdout, r.stderr);
}

/// `symroute doctor --peer`: the same box, once with the example's ids (from the names),
/// compared with itself later under a config that swaps the two gateways' ids (what a
/// pair whose files disagree looks like: isp1's reply mark means isp2 there). The peer
/// is given as a `status --json` file and as a snapshot directory; both find the
/// mismatch as an error (exit 1), and agreement once the config is back.
#[test]
fn peer_marks_compared_with_a_status_file_and_a_snapshot() {
    let lab = lab();
    let _cleanup = support::RemoveOnDrop(&lab.fw);
    let dir = std::env::temp_dir().join(format!("symroute-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());

    symroute_in(&lab.fw, "apply", Some(FIREWALL), &[]).ok();
    let status = symroute_in(&lab.fw, "status", Some(FIREWALL), &["--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(v["marks"]["gateways"][0]["name"], "isp1", "{v:#}");
    assert_eq!(v["marks"]["gateways"][0]["id"], 26, "{v:#}");
    assert_eq!(
        v["marks"]["gateways"][0]["reply_mark"], "0x33000000",
        "{v:#}"
    );
    assert_eq!(v["marks"]["gateways"][0]["table"], 42025, "{v:#}");
    assert!(
        v["marks"]["digest"].as_str().is_some_and(|d| d.len() == 16),
        "{v:#}"
    );
    let status_file = dir.join("peer.json");
    std::fs::write(&status_file, &status.stdout).expect("write status");
    let snap = dir.join("snap");
    symroute_in(&lab.fw, "snapshot", None, &[snap.to_str().unwrap()]).ok();

    let peers = [status_file.to_str().unwrap(), snap.to_str().unwrap()];
    for peer in peers {
        let r = symroute_in(&lab.fw, "doctor", None, &["--peer", peer]);
        assert_eq!(r.code, 0, "same box, same config: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("info[peer-marks-agree]"), "{}", r.stdout);
    }

    // The peer's file lists the gateways the other way round *and* gives them each
    // other's ids: positions would not matter any more, ids do.
    let swapped = FIREWALL
        .replacen("name = \"isp1\"\n", "name = \"isp1\"\nid = 123\n", 1)
        .replacen("name = \"isp2\"\n", "name = \"isp2\"\nid = 26\n", 1);
    symroute_in(&lab.fw, "apply", Some(&swapped), &[]).ok();
    for peer in peers {
        let r = symroute_in(&lab.fw, "doctor", None, &["--peer", peer, "--json"]);
        assert_eq!(r.code, 1, "ids swapped: exit 1\n{}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
        let differ: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == "peer-marks-differ" && f["severity"] == "error")
            .filter_map(|f| f["rule"].as_str())
            .collect();
        assert!(
            differ.iter().any(|r| r
                .starts_with("mark 0x33000000: here it answers replies via 198.51.100.1 dev up2")
                && r.contains("on the peer it answers replies via 203.0.113.1 dev up1")),
            "{peer}: {differ:#?}"
        );
    }
    let r = symroute_in(&lab.fw, "doctor", None, &["--peer", "/nonexistent.json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no such file or directory"),
        "{}",
        r.stderr
    );
}
