//! The README's main command, as a new user runs it: `symroute lab` must show the failure
//! without symroute and the fix with it (and, for `failover`, the daemon moving the LAN's
//! connections to ISP2 and back), and leave nothing behind. Needs root, nft,
//! conntrack and haproxy (scripts/setup).

use crate::support;

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `symroute lab SCENARIO`; its namespaces (`sr-ROLE-PID-N`, named by the lab's own pid)
/// must all be gone when it exits. Only its own names are compared: other tests (or
/// other runs on the machine) may create and delete namespaces meanwhile.
fn lab(scenario: &str) -> String {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_symroute"))
        .args(["lab", scenario])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run symroute lab");
    let own = format!("-{}-", child.id());
    let out = child.wait_with_output().expect("wait for symroute lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "symroute lab {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The failures it shows name the client's namespace: proof that the names filtered
    // below are the ones this lab made.
    assert!(
        scenario == "failover" || stdout.contains(&own),
        "the lab names its namespaces sr-ROLE-{own}N:\n{stdout}"
    );
    let left: Vec<String> = netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("sr-") && n.contains(&own))
        .map(str::to_string)
        .collect();
    assert!(
        left.is_empty(),
        "lab {scenario} left namespaces behind: {left:?}"
    );
    stdout
}

/// The scenarios one after another, as `scripts/lab` runs them.
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
