//! Named routing tables (issue 12, item 2): a host whose tables are named in
//! `rt_tables` and `rt_tables.d` (seed 000's `echo 1 SMTP >> /etc/iproute2/rt_tables`)
//! reads right in explain, doctor, import and snapshot, and the snapshot still reads once
//! the names are gone. Needs root.
//!
//! The names live in `/etc/netns/FW/iproute2/`, which `ip netns exec FW` bind-mounts over
//! `/etc/iproute2`: the host's own files are never touched (checked at the end), and
//! `symroute … --netns FW` reads the same names as `ip netns exec FW symroute …`.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::{require_root, symroute, symroute_in, Run};
use symroute::lab::TwoIsps;

/// `ip netns exec NS symroute ARGS`.
fn symroute_exec(ns: &str, args: &[&str]) -> Run {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_symroute")])
        .args(args)
        .output()
        .expect("run symroute");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A forwarded SMTP packet marked 1 (what seed 000's rule tests): table SMTP, via ISP1.
const EXPLAIN: &[&str] = &[
    "--json",
    "--in-interface",
    "lan0",
    "--source",
    "10.77.0.10",
    "--destination",
    "192.0.2.10",
    "--destination-port",
    "25",
    "--mark",
    "1",
];

fn explained_via_isp1(r: &Run, how: &str) {
    assert_eq!(
        r.code, 0,
        "{how}: explain failed:\n{}{}",
        r.stdout, r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("explain --json");
    assert_eq!(v["verdict"]["interface"], "up1", "{how}: {}", r.stdout);
    assert_eq!(v["verdict"]["table"], "1", "{how}: {}", r.stdout);
}

/// Doctor ran (seed 000 has error-level findings, so exit 1) and read the tables.
fn doctored(r: &Run, how: &str) -> String {
    assert_eq!(r.code, 1, "{how}: doctor:\n{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("mark-after-routing"),
        "{how}: {}",
        r.stdout
    );
    r.stdout.clone()
}

fn imported(r: &Run, how: &str) {
    assert_eq!(r.code, 0, "{how}: import:\n{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("name = \"SMTP\"") && !r.stdout.contains("table-1"),
        "{how}: the gateway is named after the host's name for table 1:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("table SMTP (1)"),
        "{how}: the comment names the table:\n{}",
        r.stdout
    );
}

fn host_names() -> Vec<u8> {
    std::fs::read("/etc/iproute2/rt_tables").unwrap_or_default()
}

#[test]
fn named_tables_read_everywhere() {
    require_root();
    let before = host_names();
    let lab = TwoIsps::build().expect("lab");
    let fw = lab.fw.name().to_string();
    let etc = lab.fw.etc().expect("/etc/netns/FW");
    let base = String::from_utf8_lossy(&before).into_owned();
    etc.write("iproute2/rt_tables", &format!("{base}\n1\tSMTP\n"))
        .expect("rt_tables");
    etc.write("iproute2/rt_tables.d/isp2.conf", "# second ISP\n2 isp2\n")
        .expect("rt_tables.d");
    // Seed 000 with its table named, typed as a user would (names resolved by `ip`), and
    // a second table named in rt_tables.d.
    lab.fw
        .sh("ip route add default via 203.0.113.1 dev up1 table SMTP; \
             ip rule add fwmark 1 table SMTP; \
             ip route add default via 198.51.100.1 dev up2 table isp2; \
             ip rule add from 198.51.100.2 table isp2; \
             iptables -t mangle -A FORWARD -i up1 -p tcp --dport 25 -j MARK --set-mark 1")
        .expect("seed 000 with named tables");
    let rules = lab.fw.exec(&["ip", "rule"]).expect("ip rule");
    assert!(
        rules.contains("lookup SMTP") && rules.contains("lookup isp2"),
        "ip prints the names:\n{rules}"
    );

    for (how, run) in [
        (
            "--netns",
            &(|args: &[&str]| {
                let (cmd, rest) = args.split_first().unwrap();
                symroute_in(&lab.fw, cmd, None, rest)
            }) as &dyn Fn(&[&str]) -> Run,
        ),
        ("ip netns exec", &|args: &[&str]| symroute_exec(&fw, args)),
    ] {
        let explain: Vec<&str> = std::iter::once("explain")
            .chain(EXPLAIN.iter().copied())
            .collect();
        explained_via_isp1(&run(&explain), how);
        let d = doctored(&run(&["doctor"]), how);
        assert!(
            d.contains("lookup SMTP"),
            "{how}: rules quoted as ip prints them:\n{d}"
        );
        imported(&run(&["import"]), how);
    }

    let dir = std::env::temp_dir().join(format!("symroute-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveDir(dir.clone());
    let snap = symroute_in(&lab.fw, "snapshot", None, &[dir.to_str().unwrap()]).ok();
    let names = std::fs::read_to_string(dir.join("rt_tables")).expect("snapshot rt_tables");
    assert!(
        names.contains("1\tSMTP")
            && names.contains("2 isp2")
            && names.contains("rt_tables.d/isp2.conf"),
        "{}\n{names}",
        snap.stdout
    );
    let live_findings = doctored(&run_from(&dir, "doctor", &[]), "snapshot");

    // The names are gone: the namespace's files removed, the snapshot read elsewhere.
    drop(etc);
    assert!(!Path::new("/etc/netns").join(&fw).exists());
    let rules = lab.fw.exec(&["ip", "rule"]).expect("ip rule");
    assert!(rules.contains("lookup 1"), "{rules}");
    let from = |cmd: &str, extra: &[&str]| run_from(&dir, cmd, extra);
    explained_via_isp1(
        &from("explain", EXPLAIN),
        "snapshot without names on the box",
    );
    assert_eq!(
        doctored(&from("doctor", &[]), "snapshot without names on the box"),
        live_findings
    );
    imported(&from("import", &[]), "snapshot without names on the box");
    // Live, with the names gone, ip prints numbers and everything still reads.
    doctored(
        &symroute_in(&lab.fw, "doctor", None, &[]),
        "live without names",
    );

    // A snapshot made without the names (older symroute, or by hand) says what to add.
    std::fs::remove_file(dir.join("rt_tables")).expect("rm");
    let r = from("doctor", &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("unknown routing table name \"isp2\"")
            && r.stderr.contains("ip-rule.txt")
            && r.stderr.contains("rt_tables"),
        "{}",
        r.stderr
    );
    assert_eq!(host_names(), before, "the host's rt_tables is untouched");
}

fn run_from(dir: &Path, cmd: &str, extra: &[&str]) -> Run {
    let mut args = vec![cmd, "--from", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    symroute(&args)
}

/// Removes the snapshot directory however the test ends.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
