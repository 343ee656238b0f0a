//! The README's main command, as a new user runs it: `symroute lab` must show the failure
//! without symroute and the fix with it (and, for `failover`, the daemon moving the LAN's
//! connections to ISP2 and back; for `ha-pair`, a session surviving a router failover),
//! and leave nothing behind, even when interrupted. Needs root, nft, conntrack, haproxy,
//! keepalived and conntrackd (scripts/setup).

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
    // isp1's reply mark (id 26 from its name: 0x33000000), as conntrack prints it.
    assert!(
        out.contains(&format!("mark={}", 0x3300_0000u32)),
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

/// Processes whose command line names `needle` (the lab's temp directory, which every
/// keepalived, conntrackd and `symroute run` it starts has in its arguments).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"));
        if cmd.contains(needle) && !zombie {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

/// `symroute lab ha-pair`: the session survives the master's death and return, the
/// control loses it, the output names keepalived and conntrackd and shows VRRP states;
/// no namespace and no keepalived, conntrackd or `symroute run` is left.
#[test]
fn lab_ha_pair_survives_and_cleans_up() {
    support::require_root();
    let out = lab("ha-pair");
    for want in [
        "keepalived v",
        "conntrackd v",
        "keepalived fw-b: (up1) Entering MASTER STATE",
        "keepalived fw-a: (up1) Entering FAULT STATE",
        "info[peer-marks-agree]",
        "== result: with symroute on both boxes the session survived fw-a's death",
        "and survived its return; without symroute on the backup the same failover lost its session",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let dir = out
        .split_whitespace()
        .find(|w| w.contains("/symroute-lab-"))
        .and_then(|w| w.split("/symroute.toml").next())
        .expect("the lab names its directory")
        .to_string();
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is left");
    let left = processes_naming(&dir);
    assert!(left.is_empty(), "left running: {left:#?}");
}

/// Ctrl-C in the middle of `lab ha-pair` (SIGINT once the master is dead): the lab stops
/// with an error and still removes everything it made.
#[test]
fn lab_ha_pair_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    support::require_root();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_symroute"))
        .args(["lab", "ha-pair"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run symroute lab");
    let own = format!("-{}-", child.id());
    let dir = std::env::temp_dir()
        .join(format!("symroute-lab-{}", child.id()))
        .display()
        .to_string();
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    // Read to the end (the lab goes on printing while it cleans up).
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("== fw-a dies") {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        seen.push(line);
    }
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "interrupted, it must fail:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter().any(|l| l.contains("== fw-a dies")),
        "{}",
        seen.join("\n")
    );
    let left: Vec<String> = netns_list()
        .lines()
        .filter(|n| n.starts_with("sr-") && n.contains(&own))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is left");
    let procs = processes_naming(&dir);
    assert!(procs.is_empty(), "left running: {procs:#?}");
}
