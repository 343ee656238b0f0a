//! Shared by the end-to-end tests: the seed lab, running the real `symroute` binary
//! inside a namespace (`daemon` for `symroute run`), its status as JSON, the kernel state
//! of a namespace, and `conntrack -L` parsed (random tests use `symroute::fuzz::Rng`). Every test
//! that builds namespaces needs root; `require_root` says so.
#![allow(dead_code)]

pub mod cgroups;
pub mod classify;
pub mod conntrack;
pub mod daemon;
pub mod metrics;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::Instant;

use symroute::kernel::netlink::{convert, Netlink};
use symroute::lab::{veth, Netns, Services, TwoIsps};
use symroute::model::Family;
use symroute::plan::{RouteSpec, RT_PROTO};

pub fn require_root() {
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        euid, 0,
        "this end-to-end test builds network namespaces and needs root: run `sudo scripts/test`"
    );
    for tool in ["nft", "conntrack", "ip"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
            || Command::new(tool)
                .arg("-V")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        assert!(
            ok,
            "`{tool}` is missing: run `scripts/setup` (or `sudo scripts/test`, which runs it)"
        );
    }
}

/// Seed 1's firewall with two ISPs, a LAN client and servers beyond (`symroute::lab`).
pub fn lab() -> TwoIsps {
    require_root();
    let t0 = Instant::now();
    let lab = TwoIsps::build().expect("build TwoIsps");
    eprintln!("TwoIsps::build took {:?}", t0.elapsed());
    lab
}

/// The lab's servers (echo, SMTP), running until dropped.
pub fn services(lab: &TwoIsps) -> Services {
    lab.start_services().expect("start lab services")
}

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Our IPv4 routes in `table`, read over `nl` (a netlink socket in the namespace).
pub fn our_routes(nl: &mut Netlink, table: u32) -> BTreeSet<RouteSpec> {
    let names = convert::link_names(&nl.dump_links().expect("dump links"));
    nl.dump_routes(Family::Inet4)
        .expect("dump routes")
        .iter()
        .filter(|r| u8::from(r.header.protocol) == RT_PROTO)
        .filter_map(|r| convert::route_spec(r, &names))
        .filter(|r| r.table.id() == table)
        .collect()
}

/// `/run/symroute/netns-<cookie>.<suffix>`: a file symroute keeps for `ns` (the cookie is
/// read by a thread that enters the namespace; only that thread moves).
pub fn run_file(ns: &Netns, suffix: &str) -> std::path::PathBuf {
    let (name, suffix) = (ns.name().to_string(), suffix.to_string());
    std::thread::spawn(move || {
        symroute::kernel::netns::enter(&name).expect("enter the namespace");
        symroute::kernel::rundir::netns_file(&suffix).expect("the namespace's cookie")
    })
    .join()
    .expect("cookie thread")
}

/// One of symroute's IPv4 rules in `ns` (its line as `ip rule show` prints it, the
/// first whose text contains `lookup TABLE`), and the `ip -4 rule del …` command that
/// deletes exactly it: rules of one kind share a priority, so the priority alone would
/// delete whichever comes first.
pub fn our_rule(ns: &Netns, table: u32) -> (String, Vec<String>) {
    let rule = ns
        .exec(&["ip", "-4", "rule", "show"])
        .expect("ip rule")
        .lines()
        .find(|l| l.contains(&format!("lookup {table}")))
        .expect("a rule of ours")
        .to_string();
    let (pref, selector) = rule.split_once(':').expect("pref");
    let mut del: Vec<String> = ["ip", "-4", "rule", "del", "pref", pref.trim()]
        .map(str::to_string)
        .into();
    // `from all fwmark V/M lookup T proto 157`: the selector and action, as `del` takes them.
    del.extend(selector.split_whitespace().map(str::to_string));
    (rule, del)
}

/// The result of one `symroute` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Exit code, stdout and stderr, for an assertion's message.
    pub fn show(&self) -> String {
        format!(
            "exit code {}\n--- stdout:\n{}--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "symroute failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `symroute ARGS` (no namespace).
pub fn symroute(args: &[&str]) -> Run {
    Run::from(
        Command::new(env!("CARGO_BIN_EXE_symroute"))
            .args(args)
            .output()
            .expect("run symroute"),
    )
}

/// `symroute CMD -c CONFIG --netns NS` with a config given as text.
pub fn symroute_in(ns: &Netns, cmd: &str, config: Option<&str>, extra: &[&str]) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "symroute-test-{}-{}",
        std::process::id(),
        ns.name()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut args: Vec<String> = vec![cmd.into(), "--netns".into(), ns.name().into()];
    if let Some(text) = config {
        let p = dir.join("symroute.toml");
        std::fs::write(&p, text).expect("write config");
        args.push("-c".into());
        args.push(p.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_symroute"))
        .args(&args)
        .output()
        .expect("run symroute");
    let _ = std::fs::remove_dir_all(&dir);
    Run::from(out)
}

/// `symroute status --json` in `ns` (with `config`; without, the daemon's or the default).
pub fn status_json(ns: &Netns, config: Option<&str>) -> serde_json::Value {
    let run = symroute_in(ns, "status", config, &["--json"]).ok();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", run.stdout))
}

/// The entry called `name` of `list` ("gateways", "policies") in status JSON.
pub fn named<'v>(st: &'v serde_json::Value, list: &str, name: &str) -> &'v serde_json::Value {
    st[list]
        .as_array()
        .unwrap_or_else(|| panic!("status has no {list}[]: {st:#}"))
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("status {list}[] has no {name:?}: {st:#}"))
}

/// A gateway in status JSON.
pub fn gateway<'v>(st: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    named(st, "gateways", name)
}

/// Everything `remove` must restore, as text: rules, routes (all tables), the nft ruleset,
/// and the sysctls symroute may touch.
pub fn kernel_snapshot(ns: &Netns) -> String {
    let mut s = String::new();
    for args in [
        &["ip", "-4", "rule", "show"][..],
        &["ip", "-6", "rule", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["nft", "list", "ruleset"],
    ] {
        s += &format!("## {}\n", args.join(" "));
        let out = ns.exec(args).expect("snapshot command");
        s += &if args[2] == "rule" {
            ours_sorted_within_a_priority(&out)
        } else {
            out
        };
    }
    s += "## sysctls\n";
    s += &ns
        .sh("sysctl -a 2>/dev/null | grep -E 'rp_filter|icmp_errors_use_inbound_ifaddr' | sort")
        .expect("sysctl -a");
    s
}

/// `ip rule show` with each run of symroute's rules (`proto 157`) that share a priority
/// sorted: symroute gives every rule of one kind the same priority (their marks or
/// sources are disjoint, so their order does not matter), and the kernel lists them in
/// the order they were added, which a rollback that re-adds one changes. Foreign rules
/// keep their order (it can matter for them, and symroute never touches them).
fn ours_sorted_within_a_priority(rules: &str) -> String {
    let mut lines: Vec<&str> = rules.lines().collect();
    let prio = |l: &str| l.split(':').next().unwrap_or("").to_string();
    let mut i = 0;
    while i < lines.len() {
        let mut j = i + 1;
        while j < lines.len() && prio(lines[j]) == prio(lines[i]) {
            j += 1;
        }
        if lines[i..j].iter().all(|l| l.contains("proto 157")) {
            lines[i..j].sort_unstable();
        }
        i = j;
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Applies a config in a namespace and removes it again on drop (declare it after the
/// topology, so it drops first): keeps /run/symroute free of records for deleted
/// namespaces.
pub struct Applied<'a> {
    pub ns: &'a Netns,
}

impl<'a> Applied<'a> {
    pub fn apply(ns: &'a Netns, config: &str) -> Applied<'a> {
        let run = symroute_in(ns, "apply", Some(config), &[]).ok();
        eprintln!("symroute apply in {}:\n{}", ns.name(), run.stdout);
        Applied { ns }
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.ns, "remove", None, &[]);
    }
}

/// Runs `symroute remove` in its namespace when dropped (also when the test panics), so
/// no recorded sysctl state is left in /run/symroute after the namespace is gone.
pub struct RemoveOnDrop<'a>(pub &'a Netns);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.0, "remove", None, &[]);
    }
}

/// The kernel snapshot once the namespace has stopped changing by itself: no tentative
/// IPv6 addresses, and two snapshots in a row equal (link-local routes and addresses
/// appear shortly after link-up).
pub fn settled_snapshot(ns: &Netns) -> String {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let tentative = ns
            .exec(&["ip", "-6", "addr", "show", "tentative"])
            .expect("ip -6 addr show tentative");
        if tentative.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut prev = kernel_snapshot(ns);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let next = kernel_snapshot(ns);
        if next == prev {
            return next;
        }
        prev = next;
    }
    panic!(
        "the kernel state of {} kept changing by itself:\n{prev}",
        ns.name()
    );
}

/// A router `fw` with the two uplinks of examples/two-isps-firewall.toml (up1
/// 203.0.113.2/24, up2 198.51.100.2/24) to a peer `isp` holding both next hops.
pub fn two_uplinks(role: &str) -> (Netns, Netns) {
    require_root();
    let fw = Netns::new(role).expect("netns fw");
    let isp = Netns::new(&format!("{role}-isp")).expect("netns isp");
    veth(&fw, "up1", &isp, "i1").expect("veth up1");
    veth(&fw, "up2", &isp, "i2").expect("veth up2");
    for (ns, words) in [
        (&fw, "addr add 203.0.113.2/24 dev up1"),
        (&fw, "addr add 198.51.100.2/24 dev up2"),
        (&isp, "addr add 203.0.113.1/24 dev i1"),
        (&isp, "addr add 198.51.100.1/24 dev i2"),
    ] {
        ns.ip(words).expect("address");
    }
    (fw, isp)
}

/// A temp directory of this test (mode 0755), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        // The tests of the binary run at once: a count keeps equal tags apart.
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("symroute-tmp-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(p)
    }

    /// Writes `bytes` to `name` in the directory with `mode`; its path.
    pub fn file(&self, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
