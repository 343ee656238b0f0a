//! The README's main command, as a new user runs it: `symroute lab` must show the failure
//! without symroute and the fix with it (and, for `failover`, the daemon moving the LAN's
//! connections to ISP2 and back), and leave nothing behind. Needs root, nft,
//! conntrack and haproxy (scripts/setup).

mod support;

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lab(scenario: &str) -> String {
    let before = netns_list();
    let r = support::symroute(&["lab", scenario]).ok();
    assert_eq!(
        before,
        netns_list(),
        "lab {scenario} left namespaces behind"
    );
    r.stdout
}

/// One test for both scenarios, so the namespace list before and after can't see another
/// test's namespaces come and go.
#[test]
fn lab_shows_failure_then_fix() {
    support::require_root();
    let out = lab("two-isps");
    assert!(
        out.contains("== result: 0/6 answered without symroute, 6/6 with it"),
        "{out}"
    );
    assert!(
        out.contains("mark=16777216"),
        "the conntrack view must show the remembered path:\n{out}"
    );
    let out = lab("proxy-relay");
    assert!(
        out.contains("== result: 2/4 answered without symroute, 4/4 with it"),
        "{out}"
    );
    let out = lab("failover");
    for want in [
        "LAN -> server: via isp2",
        "LAN -> server: via isp1",
        "WARN gateway isp1 down: 7 of last 10 probes lost to 192.0.2.10",
        "down since",
        "== result: new connections moved to isp2 ",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // While the daemon holds isp1 down, status compares with the daemon's plan.
    assert!(!out.contains("differs from the config"), "{out}");
}
