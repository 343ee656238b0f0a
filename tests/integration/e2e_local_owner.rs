//! End-to-end: the host's own connections steered by who opens them (`user`, `cgroup`)
//! and `symroute exec --gateway`, with real processes. Seed 1's firewall (`TwoIsps`,
//! default route via ISP2) reaches a server behind both ISPs
//! ([`TwoIsps::add_dual_homed_server`]); each ISP masquerades what it forwards, so the
//! server's greeting names the uplink a connection came by.
//!
//! Processes run in the firewall's namespace through `nsenter --net` (not `ip netns
//! exec`, which remounts /sys and would hide the cgroup tree), as another user with
//! `setpriv --reuid`, and open their connection with bash's `/dev/tcp`.
//!
//! Needs root, nft, conntrack, setpriv and nsenter. Run with `cargo test --test integration e2e_local_owner:: -- --test-threads=2`.

use crate::support;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::cgroups::TestCgroups;
use support::daemon::Daemon;
use support::{require_root, symroute_in, RemoveOnDrop};
use symroute::lab::{Netns, TwoIsps};

const GATEWAYS: &str = r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
via6 = "2001:db8:1::1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
via6 = "2001:db8:2::1"
"#;

/// A uid no process of this machine runs as (setpriv needs no passwd entry for it).
const USER: u32 = 47_017;

struct Lab {
    t: TwoIsps,
    _servers: Vec<symroute::lab::TcpServer>,
}

fn lab() -> Lab {
    require_root();
    let t = TwoIsps::build().expect("build TwoIsps");
    let servers = t.add_dual_homed_server().expect("dual-homed server");
    Lab {
        t,
        _servers: servers,
    }
}

/// Which uplink the server saw a new TCP connection come by, opened by `bash` in `ns`
/// with `wrap` before it (e.g. `setpriv --reuid=…`): "isp1", "isp2", or what went wrong.
fn uplink(ns: &Netns, wrap: &[&str], server: IpAddr) -> String {
    let script = format!("exec 3<>/dev/tcp/{server}/80 && head -n1 <&3");
    let out = Command::new("timeout")
        .arg("5")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args(wrap)
        .args(["bash", "-c", &script])
        .output()
        .expect("run nsenter");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    TwoIsps::uplink_of(&line).map_or_else(
        || {
            format!(
                "no greeting ({}): {line:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        },
        str::to_string,
    )
}

/// The interface `symroute explain --local … --json` says a new connection from this
/// host to the server leaves by (reading the live kernel of `ns`, without a config).
fn explained(ns: &Netns, extra: &[&str]) -> String {
    let dst = TwoIsps::SERVER_V4.to_string();
    let mut args = vec!["--local", "--destination", &dst, "--json"];
    args.extend(extra);
    let run = symroute_in(ns, "explain", None, &args).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("explain json");
    v["verdict"]["interface"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn servers() -> [IpAddr; 2] {
    [TwoIsps::SERVER_V4.into(), TwoIsps::SERVER_V6.into()]
}

fn as_user(uid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ]
}

/// Packets the policy's nft counter counted (first packets of the connections it took).
fn policy_packets(ns: &Netns, config: &str, policy: &str) -> u64 {
    let out = symroute_in(ns, "status", Some(config), &["--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    v["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == policy))
        .and_then(|p| p["packets"].as_u64())
        .unwrap_or_else(|| panic!("no policy {policy} in {v}"))
}

#[test]
fn another_users_connections_leave_via_the_chosen_isp() {
    let lab = lab();
    let fw = &lab.t.fw;
    let user = as_user(USER);
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    // Without symroute everyone leaves by the default route.
    for server in servers() {
        assert_eq!(uplink(fw, &user, server), "isp2", "{server}");
        assert_eq!(uplink(fw, &[], server), "isp2", "{server}");
    }
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"backup-user\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [\"nobody\", {USER}]\n"
    );
    let _remove = RemoveOnDrop(fw);
    symroute_in(fw, "apply", Some(&config), &[]).ok();
    for server in servers() {
        assert_eq!(uplink(fw, &user, server), "isp1", "{server}");
        assert_eq!(uplink(fw, &[], server), "isp2", "root, {server}");
    }
    // explain reads the same from the live table.
    assert_eq!(explained(fw, &["--user", &USER.to_string()]), "up1");
    assert_eq!(explained(fw, &["--user", "nobody"]), "up1");
    assert_eq!(explained(fw, &[]), "up2");
    // By name too: nobody (65534 on Debian and Ubuntu).
    let nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    assert_eq!(uplink(fw, &nobody, TwoIsps::SERVER_V4.into()), "isp1");
    assert_eq!(policy_packets(fw, &config, "backup-user"), 3);
}

/// `sh` moving itself into the cgroup whose `cgroup.procs` is `procs`, then running the
/// rest of the command line there.
fn in_cgroup(procs: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo $$ > {} && exec \"$@\"", procs.display()),
        "sh".into(),
    ]
}

#[test]
fn a_cgroup_made_after_the_daemon_started_is_matched_within_a_second() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.path("backup.service");
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"backup\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"{service}\"\n"
    );
    let d = Daemon::start(fw, &config);
    d.wait_log(
        &format!("policy backup: cgroup {service} does not exist yet"),
        Duration::from_secs(5),
    );
    // A process beside it (in the parent) is not the service: the default route.
    let beside = in_cgroup(&cg.procs(""));
    let beside: Vec<&str> = beside.iter().map(String::as_str).collect();
    assert_eq!(uplink(fw, &beside, TwoIsps::SERVER_V4.into()), "isp2");

    // systemd starts the service: its cgroup appears.
    let mut took = Vec::new();
    for round in 1..=2 {
        let made = Instant::now();
        cg.make("backup.service");
        d.wait_log_count(
            &format!("policy backup: cgroup {service} exists now"),
            round,
            Duration::from_secs(5),
        );
        took.push(made.elapsed());
        let inside = in_cgroup(&cg.procs("backup.service"));
        let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
        for server in servers() {
            assert_eq!(
                uplink(fw, &inside, server),
                "isp1",
                "round {round}, {server}"
            );
        }
        assert_eq!(uplink(fw, &beside, TwoIsps::SERVER_V4.into()), "isp2");
        assert_eq!(
            explained(fw, &["--cgroup", &format!("{service}/worker")]),
            "up1"
        );
        assert_eq!(explained(fw, &["--cgroup", &cg.path("")]), "up2");
        // The service stops: its cgroup goes (and comes back with a new id next round).
        cg.remove("backup.service");
        d.wait_log_count(
            &format!("policy backup: cgroup {service} is gone"),
            round,
            Duration::from_secs(5),
        );
    }
    // A reload naming another cgroup: it does not exist yet (it is not "gone").
    let later = cg.path("later.service");
    std::fs::write(
        d.config_path(),
        format!("{config}[[policy]]\nname = \"later\"\nroute_via = \"isp2\"\n[policy.match]\ncgroup = \"{later}\"\n"),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log(
        &format!("policy later: cgroup {later} does not exist yet"),
        Duration::from_secs(5),
    );
    assert!(!d.log().contains(&format!("cgroup {later} is gone")));
    println!("cgroup made -> matched (daemon applied) in {took:?}");
    for t in &took {
        assert!(*t < Duration::from_secs(1), "{took:?}");
    }
}

/// CPU time (user + system) the daemon's thread named `name` has used (`None` without
/// such a thread).
fn thread_cpu(pid: i32, name: &str) -> Option<Duration> {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let task = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))?;
    let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 (1-based), 11 and 12 after "pid (comm)" (a
    // field such as tpgid may be -1, so every field counts).
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    Some(Duration::from_millis((ticks(11) + ticks(12)) * 1000 / tick))
}

/// The cgroup watch sleeps between changes. It watches the directory a missing cgroup
/// will appear in; a watcher that re-armed every watch after each event woke itself
/// again at once (removing a watch queues an event) and spun on a CPU from the first
/// cgroup change on, for good.
#[test]
fn the_cgroup_watch_sleeps_after_changes() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.path("svc.service");
    // One level deeper, below a directory that does not exist yet: its watch moves down
    // when the directory is made, and back up (a watch removed) when it goes.
    let deep = cg.path("deep/er.service");
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"svc\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"{service}\"\n\n[[policy]]\nname = \"deep\"\nroute_via = \"isp2\"\n[policy.match]\ncgroup = \"{deep}\"\n"
    );
    let d = Daemon::start(fw, &config);
    d.wait_log(
        &format!("policy svc: cgroup {service} does not exist yet"),
        Duration::from_secs(5),
    );
    for round in 1..=3 {
        cg.make("svc.service");
        cg.make("deep/er.service");
        for (name, path) in [("svc", &service), ("deep", &deep)] {
            d.wait_log_count(
                &format!("policy {name}: cgroup {path} exists now"),
                round,
                Duration::from_secs(5),
            );
        }
        // Changes beside them too (another service starting and stopping).
        cg.make("other.service");
        cg.remove("other.service");
        cg.remove("svc.service");
        cg.remove("deep/er.service");
        cg.remove("deep");
        for (name, path) in [("svc", &service), ("deep", &deep)] {
            d.wait_log_count(
                &format!("policy {name}: cgroup {path} is gone"),
                round,
                Duration::from_secs(5),
            );
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = thread_cpu(d.pid(), "cgroups").expect("the daemon's cgroups thread");
    std::thread::sleep(Duration::from_secs(1));
    let used = thread_cpu(d.pid(), "cgroups").expect("the daemon's cgroups thread") - before;
    println!("the cgroup watch used {used:?} of CPU in 1 s after the changes");
    // Rescans every 500 ms cost well under a millisecond; a spin costs most of the second.
    assert!(
        used < Duration::from_millis(200),
        "the cgroup watch used {used:?} of CPU in 1 s with nothing changing"
    );
}

/// `symroute exec --gateway GW -- bash …` (config `config`) in `fw`: which uplink the
/// server saw its connection come by.
fn exec_uplink(fw: &Netns, config: Option<&str>, gw: &str, server: IpAddr) -> String {
    let script = format!("exec 3<>/dev/tcp/{server}/80 && head -n1 <&3");
    let run = symroute_in(
        fw,
        "exec",
        config,
        &["--gateway", gw, "--", "bash", "-c", &script],
    );
    TwoIsps::uplink_of(&run.stdout).map_or_else(
        || format!("exit {}: {:?} {}", run.code, run.stdout, run.stderr.trim()),
        str::to_string,
    )
}

/// How long `symroute exec --gateway GW -- true` takes (its own work before CMD, and
/// CMD's start), median of 7 runs.
fn exec_overhead(fw: &Netns, config: Option<&str>, gw: &str) -> Duration {
    let mut took: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            symroute_in(fw, "exec", config, &["--gateway", gw, "--", "true"]).ok();
            t.elapsed()
        })
        .collect();
    took.sort();
    took[3]
}

/// The exec cgroups of `fw`'s namespace (below the hierarchy's `symroute.exec`).
fn exec_cgroups(fw: &Netns) -> Vec<String> {
    let h = symroute::kernel::cgroup::hierarchy().expect("cgroup2");
    let name = fw.name().to_string();
    let base = std::thread::spawn(move || {
        symroute::kernel::netns::enter(&name).expect("enter");
        symroute::kernel::cgroup::exec_base().expect("exec base")
    })
    .join()
    .unwrap();
    std::fs::read_dir(h.dir(&base))
        .map(|d| {
            let mut v: Vec<String> = d
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default()
}

/// `symroute exec --gateway GW -- bash …` sending one UDP datagram to the echo server
/// beyond both ISPs: which uplink the answer says it came by.
fn exec_udp_uplink(fw: &Netns, gw: &str, server: IpAddr) -> String {
    let script = format!(
        "exec 3<>/dev/udp/{server}/{UDP_PORT} && echo ping >&3 && timeout 3 dd bs=512 count=1 status=none <&3"
    );
    let run = symroute_in(
        fw,
        "exec",
        Some(GATEWAYS),
        &["--gateway", gw, "--", "bash", "-c", &script],
    );
    let out = run.stdout.trim();
    match out.split_whitespace().nth(1) {
        Some("192.0.2.1" | "2001:db8:c::1") => "isp1".into(),
        Some("10.99.0.1" | "fd99::1") => "isp2".into(),
        _ => format!("exit {}: {out:?} {}", run.code, run.stderr.trim()),
    }
}

const UDP_PORT: u16 = 7007;

#[test]
fn exec_sends_a_command_via_each_gateway_without_a_policy() {
    let lab = lab();
    let fw = &lab.t.fw;
    let _echo: Vec<_> = servers()
        .into_iter()
        .map(|s| {
            symroute::lab::UdpEcho::start(&lab.t.client, std::net::SocketAddr::new(s, UDP_PORT))
                .expect("udp echo")
        })
        .collect();
    let _remove = RemoveOnDrop(fw);
    // Nothing applied here and no daemon: exec does not put symroute in place on the
    // side, and the command does not run.
    let unapplied = symroute_in(
        fw,
        "exec",
        Some(GATEWAYS),
        &["--gateway", "isp1", "--", "sh", "-c", "echo ran"],
    );
    assert_eq!(unapplied.code, 1, "{}", unapplied.stderr);
    assert!(
        unapplied
            .stderr
            .contains("symroute is not applied in this network namespace"),
        "{}",
        unapplied.stderr
    );
    assert!(!unapplied.stdout.contains("ran"));
    assert!(exec_cgroups(fw).is_empty(), "{:?}", exec_cgroups(fw));
    // Gateways only: not one policy.
    symroute_in(fw, "apply", Some(GATEWAYS), &[]).ok();
    for server in servers() {
        for gw in ["isp1", "isp2"] {
            assert_eq!(exec_uplink(fw, Some(GATEWAYS), gw, server), gw, "{server}");
        }
        // Commands not started by symroute exec keep the default route.
        assert_eq!(uplink(fw, &[], server), "isp2", "{server}");
        for gw in ["isp1", "isp2"] {
            assert_eq!(exec_udp_uplink(fw, gw, server), gw, "udp, {server}");
        }
    }
    assert_eq!(exec_cgroups(fw), ["isp1", "isp2"]);
    // status counts them per gateway (since the table was last loaded).
    let counts = || -> Vec<u64> {
        let st = symroute_in(fw, "status", Some(GATEWAYS), &["--json"]).ok();
        let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
        st["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["exec_packets"].as_u64().unwrap())
            .collect()
    };
    let before = counts();
    assert!(before.iter().all(|n| *n >= 1), "{before:?}");
    assert_eq!(
        exec_uplink(fw, Some(GATEWAYS), "isp1", TwoIsps::SERVER_V4.into()),
        "isp1"
    );
    assert_eq!(counts(), [before[0] + 1, before[1]]);
    // The command's exit status is symroute's; a missing one is 127.
    let status = |cmd: &[&str]| {
        let mut args = vec!["--gateway", "isp1", "--"];
        args.extend(cmd);
        symroute_in(fw, "exec", Some(GATEWAYS), &args).code
    };
    println!(
        "symroute exec -- true without a daemon: {:?} (median of 7)",
        exec_overhead(fw, Some(GATEWAYS), "isp1")
    );
    assert_eq!(status(&["sh", "-c", "exit 7"]), 7);
    assert_eq!(status(&["true"]), 0);
    assert_eq!(status(&["/nonexistent/command"]), 127);
    // An unknown gateway is a usage error; a gateway that is down is a failure, and the
    // command does not run.
    let unknown = symroute_in(
        fw,
        "exec",
        Some(GATEWAYS),
        &["--gateway", "isp9", "--", "true"],
    );
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no gateway named \"isp9\""),
        "{}",
        unknown.stderr
    );
    fw.ip("link set up1 down").unwrap();
    let down = symroute_in(
        fw,
        "exec",
        Some(GATEWAYS),
        &["--gateway", "isp1", "--", "sh", "-c", "echo ran"],
    );
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(
        down.stderr
            .contains("gateway isp1 is down (interface up1 is down)"),
        "{}",
        down.stderr
    );
    assert!(!down.stdout.contains("ran"));
    fw.ip("link set up1 up").unwrap();
    // Root only.
    let user = Command::new("setpriv")
        .args([
            "--reuid",
            &USER.to_string(),
            "--regid",
            &USER.to_string(),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_symroute"))
        .args(["exec", "--gateway", "isp1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(user.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&user.stderr).contains("symroute exec needs root"),
        "{}",
        String::from_utf8_lossy(&user.stderr)
    );
    // remove takes the exec cgroups away once nothing runs in them.
    symroute_in(fw, "remove", None, &[]).ok();
    assert!(exec_cgroups(fw).is_empty(), "{:?}", exec_cgroups(fw));
}

#[test]
fn exec_under_the_daemon_uses_its_config() {
    let lab = lab();
    let fw = &lab.t.fw;
    let d = Daemon::start(
        fw,
        &format!("[settings]\nmetrics = \"{METRICS}\"\n{GATEWAYS}"),
    );
    for server in servers() {
        for gw in ["isp2", "isp1"] {
            assert_eq!(exec_uplink(fw, None, gw, server), gw, "{server}");
        }
    }
    println!(
        "symroute exec -- true under symroute run: {:?} (median of 7)",
        exec_overhead(fw, None, "isp1")
    );
    // The masquerade is there only while something runs in an exec cgroup: gone again
    // once the commands have exited.
    d.wait_log("after a change (cgroup)", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fw
        .exec(&["nft", "list", "chain", "inet", "symroute", "post"])
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the nat chain stayed:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each gateway's connections stay counted across the tables loaded as the exec
    // cgroups filled and emptied.
    let st = support::status_json(fw, None);
    for gw in ["isp1", "isp2"] {
        assert_eq!(
            support::named(&st, "gateways", gw)["exec_packets"],
            2,
            "{st:#}"
        );
        let series = format!("symroute_exec_packets_total{{gateway=\"{gw}\"}}");
        assert_eq!(metric_becomes(fw, &series, 2.0), 2.0, "{gw}");
    }
}

/// `symroute ARGS` in a mount namespace of its own where the cgroup2 hierarchy is
/// mounted by `mounts` (a shell script) instead of at /sys/fs/cgroup/unified: the
/// layouts of other hosts, on this hybrid one.
fn symroute_mounted(mounts: &str, args: &[&str]) -> support::Run {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "set -e\n{mounts}\nexec {} {}",
        env!("CARGO_BIN_EXE_symroute"),
        quoted.join(" ")
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    support::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_cgroup2_hierarchy_is_found_wherever_it_is_mounted() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.make("backup.service");
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"backup\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"{service}\"\n"
    );
    let dir = support::TempDir::new("cg2");
    let file = dir.file("symroute.toml", config.as_bytes(), 0o644);
    let elsewhere = dir.0.join("cg2");
    std::fs::create_dir(&elsewhere).unwrap();
    let hybrid = cg.hierarchy.mount.display().to_string();
    // (how it is mounted, how nft must name the service's cgroup then)
    let layouts = [
        // A unified host: cgroup2 is /sys/fs/cgroup itself.
        (
            format!("umount {hybrid}\nmount -t cgroup2 none /sys/fs/cgroup"),
            format!("\"{service}\""),
        ),
        // Mounted anywhere else: nft reaches it from /sys/fs/cgroup through `..`.
        (
            format!(
                "umount {hybrid}\nmount -t cgroup2 none {}",
                elsewhere.display()
            ),
            format!("\"../../..{}/{service}\"", elsewhere.display()),
        ),
    ];
    let _remove = RemoveOnDrop(fw);
    let inside = in_cgroup(&cg.procs("backup.service"));
    let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
    for (mounts, named) in &layouts {
        let path = file.display().to_string();
        let plan = symroute_mounted(
            mounts,
            &["plan", "--script", "--netns", fw.name(), "-c", &path],
        );
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        // Cgroups are always in named sets (see plan::nft::always_named).
        assert!(
            plan.stdout.contains("type cgroupsv2")
                && plan.stdout.contains(&format!("elements = {{ {named} }}"))
                && plan.stdout.contains("socket cgroupv2 level 2 @p0_cg2"),
            "{mounts}\n{}",
            plan.stdout
        );
        let applied = symroute_mounted(mounts, &["apply", "--netns", fw.name(), "-c", &path]);
        assert_eq!(applied.code, 0, "{}", applied.stderr);
        for server in servers() {
            assert_eq!(uplink(fw, &inside, server), "isp1", "{mounts}: {server}");
        }
        symroute_in(fw, "remove", None, &[]).ok();
        assert_eq!(uplink(fw, &inside, TwoIsps::SERVER_V4.into()), "isp2");
    }
}

/// The fingerprint chain's name of `ns`'s table: which table is loaded.
fn loaded_table(ns: &Netns) -> String {
    let out = ns
        .exec(&["nft", "-t", "list", "table", "inet", "symroute"])
        .unwrap_or_default();
    out.lines()
        .find_map(|l| l.trim().strip_prefix("chain fingerprint_"))
        .unwrap_or("none")
        .trim_end_matches(" {")
        .to_string()
}

/// A table naming cgroups is put back after a failed apply from the text symroute kept
/// when it loaded it (listing it would make nft walk the cgroup tree for each cgroup),
/// with the sources its sticky share remembered since.
#[test]
fn a_failed_apply_puts_back_a_table_naming_cgroups() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.make("backup.service");
    let config = |extra: &str| {
        format!(
            "{GATEWAYS}\n[[policy]]\nname = \"backup\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"{service}\"\n\
             [[policy]]\nname = \"lan\"\nroute_via = {{ isp1 = 1, isp2 = 1 }}\nsticky = \"10m\"\n[policy.match]\nin_interface = \"lan0\"\n{extra}"
        )
    };
    let _remove = RemoveOnDrop(fw);
    symroute_in(fw, "apply", Some(&config("")), &[]).ok();
    let before = loaded_table(fw);
    let kept = support::run_file(fw, "table.nft");
    assert!(
        std::fs::read_to_string(&kept).is_ok_and(|t| t.contains(&format!("fingerprint_{before}"))),
        "{}",
        kept.display()
    );
    // The LAN host's connection puts its address in a sticky set.
    assert!(lab.t.lan_path_now(false, Duration::from_secs(3)).is_some());
    let remembered = || {
        fw.exec(&["nft", "list", "table", "inet", "symroute"])
            .unwrap()
            .contains("10.77.0.10")
    };
    assert!(remembered());
    let failed = symroute_in(
        fw,
        "apply",
        Some(&config(
            "[[policy]]\nname = \"more\"\nroute_via = \"isp2\"\n[policy.match]\nuser = 4242\n",
        )),
        &["--inject-failure", "rules"],
    );
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("rolled back: the host is as it was before this apply"),
        "{}",
        failed.stderr
    );
    assert_eq!(loaded_table(fw), before);
    assert!(remembered(), "the sticky source survives the rollback");
    let inside = in_cgroup(&cg.procs("backup.service"));
    let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
    assert_eq!(uplink(fw, &inside, TwoIsps::SERVER_V4.into()), "isp1");
}

/// Where the daemons of these tests serve metrics, inside the firewall's namespace.
const METRICS: &str = "127.0.0.1:9469";

/// The sample `series` of the daemon's metrics page once it reads `want` (the page's
/// kernel reads are kept for up to a second): what it read last.
fn metric_becomes(fw: &Netns, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = support::metrics::value(&support::metrics::scrape(fw, METRICS), series);
        if got == Some(want) || Instant::now() >= deadline {
            return got.unwrap_or(-1.0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `route_via`'s failover lists and weights steer whose traffic as any other policy's:
/// a user's connections shared between both ISPs, a service's cgroup on a failover list.
/// When ISP1's link goes down both take ISP2, and back. `status` and the metrics count
/// each policy's connections, across the table replacements in between.
#[test]
fn failover_lists_and_weights_work_for_user_and_cgroup_policies() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.make("backup.service");
    let config = format!(
        "[settings]\nmetrics = \"{METRICS}\"\n{GATEWAYS}\n\
         [[policy]]\nname = \"spread\"\nroute_via = {{ isp1 = 1, isp2 = 1 }}\n[policy.match]\nuser = {USER}\n\n\
         [[policy]]\nname = \"backup\"\nroute_via = [\"isp1\", \"isp2\"]\n[policy.match]\ncgroup = \"{service}\"\n"
    );
    let d = Daemon::start(fw, &config);
    let user = as_user(USER);
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    let inside = in_cgroup(&cg.procs("backup.service"));
    let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
    let v4: IpAddr = TwoIsps::SERVER_V4.into();

    // Weights 1:1, per new connection: 16 connections all by one ISP would be 1 in 2^15.
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..16 {
        *seen.entry(uplink(fw, &user, v4)).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["isp1", "isp2"],
        "{seen:?}"
    );
    // The failover list's first gateway, while it is up; root keeps the default route.
    for server in servers() {
        assert_eq!(uplink(fw, &inside, server), "isp1", "{server}");
    }
    assert_eq!(uplink(fw, &[], v4), "isp2");
    assert_eq!(policy_packets(fw, &config, "spread"), 16);
    assert_eq!(policy_packets(fw, &config, "backup"), 2);
    let series = |p: &str| format!("symroute_policy_packets_total{{policy=\"{p}\"}}");
    assert_eq!(metric_becomes(fw, &series("spread"), 16.0), 16.0);
    assert_eq!(metric_becomes(fw, &series("backup"), 2.0), 2.0);

    // ISP1's link goes down: the share and the failover list both leave via ISP2.
    fw.ip("link set up1 down").unwrap();
    d.wait_log("gateway isp1 is down", Duration::from_secs(5));
    for _ in 0..4 {
        assert_eq!(uplink(fw, &user, v4), "isp2");
    }
    for server in servers() {
        assert_eq!(uplink(fw, &inside, server), "isp2", "{server}");
    }
    let st = support::status_json(fw, Some(&config));
    assert_eq!(
        support::named(&st, "policies", "backup")["gateway"],
        "isp2",
        "{st:#}"
    );
    // Counted by the policies (not by the default route), and the counts went on
    // across the table the failover replaced.
    assert_eq!(policy_packets(fw, &config, "spread"), 20);
    assert_eq!(policy_packets(fw, &config, "backup"), 4);
    assert_eq!(metric_becomes(fw, &series("spread"), 20.0), 20.0);
    assert_eq!(metric_becomes(fw, &series("backup"), 4.0), 4.0);

    // ISP1 is back: the failover list takes it again for new connections. (For IPv4:
    // the link's IPv6 addresses went with it, so it is only partly up.)
    fw.ip("link set up1 up").unwrap();
    d.wait_log_count("gateway isp1 is ", 2, Duration::from_secs(5));
    assert_eq!(uplink(fw, &inside, v4), "isp1");
}

/// Whether `status` finds the table applied in `fw` to be the one `config` makes now.
fn matches(fw: &Netns, config: &str) -> bool {
    let out = symroute_in(fw, "status", Some(config), &[]).ok().stdout;
    match out.lines().next() {
        Some("applied, matches the config") => true,
        Some(l) if l.starts_with("applied, but differs") => false,
        _ => panic!("status:\n{out}"),
    }
}

/// Without a daemon: `apply` with a cgroup that does not exist yet succeeds and says it
/// waits, as do `plan` and `status`; once it exists, `status` and `plan` say the table
/// differs, and the next `apply` matches it. Gone again, the same.
#[test]
fn apply_and_status_report_a_cgroup_that_does_not_exist_yet() {
    let lab = lab();
    let fw = &lab.t.fw;
    let mut cg = TestCgroups::new();
    let service = cg.path("backup.service");
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"backup\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"{service}\"\n"
    );
    let _remove = RemoveOnDrop(fw);
    let said = format!("policy backup: cgroup {service} does not exist yet; waiting");
    let applied = symroute_in(fw, "apply", Some(&config), &[]).ok();
    assert!(applied.stdout.contains(&said), "{}", applied.stdout);
    let plan = symroute_in(fw, "plan", Some(&config), &[]).ok();
    assert!(plan.stdout.contains(&said), "{}", plan.stdout);
    let status = symroute_in(fw, "status", Some(&config), &[]).ok();
    assert!(
        status.stdout.contains("applied, matches the config")
            && status
                .stdout
                .contains(&format!("waiting for cgroup {service}: does not exist yet")),
        "{}",
        status.stdout
    );
    let st = support::status_json(fw, Some(&config));
    let backup = support::named(&st, "policies", "backup");
    assert_eq!(backup["waiting"][0]["cgroup"], service.as_str(), "{st:#}");

    // The service starts: its processes are not matched until the table is loaded again.
    cg.make("backup.service");
    let inside = in_cgroup(&cg.procs("backup.service"));
    let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
    let v4: IpAddr = TwoIsps::SERVER_V4.into();
    assert_eq!(uplink(fw, &inside, v4), "isp2");
    assert!(!matches(fw, &config));
    let st = support::status_json(fw, Some(&config));
    assert!(
        support::named(&st, "policies", "backup")["waiting"].is_null(),
        "{st:#}"
    );
    let applied = symroute_in(fw, "apply", Some(&config), &[]).ok();
    assert!(!applied.stdout.contains("waiting"), "{}", applied.stdout);
    assert_eq!(uplink(fw, &inside, v4), "isp1");
    assert!(matches(fw, &config));

    // It stops: the table names a cgroup that is gone, which the next apply leaves out.
    cg.remove("backup.service");
    assert!(!matches(fw, &config));
    let applied = symroute_in(fw, "apply", Some(&config), &[]).ok();
    assert!(applied.stdout.contains(&said), "{}", applied.stdout);
    assert!(matches(fw, &config));
}

/// Under `symroute run`, a gateway its health checks hold down (its link is up) is down
/// for exec too: refused, the command not run; the other gateway still serves, and once
/// the checks pass again so does this one.
#[test]
fn exec_refuses_a_gateway_the_daemons_health_checks_hold_down() {
    let lab = lab();
    let fw = &lab.t.fw;
    // Gateways only: no policy names isp1, yet its probes test its own path (its
    // table, which it has for them), not the main table's default route via ISP2.
    let config = GATEWAYS.replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\ninterval = \"100ms\"\ntimeout = \"200ms\"\n",
        1,
    );
    assert!(config.contains("[gateway.check]"));
    let d = Daemon::start(fw, &config);
    let v4: IpAddr = TwoIsps::SERVER_V4.into();
    // Let the probes fill their window with good results first.
    std::thread::sleep(Duration::from_millis(800));
    assert!(!d.log().contains("gateway isp1 is down"), "{}", d.log());
    assert_eq!(exec_uplink(fw, None, "isp1", v4), "isp1");
    // ISP1 stops forwarding the probes; the firewall's link to it stays up.
    let isp1 = &lab.t.isp1;
    isp1.exec(&["nft", "add table inet probes_lost"]).unwrap();
    isp1.exec(&[
        "nft",
        "add chain inet probes_lost f { type filter hook forward priority 0; ip daddr 192.0.2.10 meta l4proto icmp drop; }",
    ])
    .unwrap();
    d.wait_log("gateway isp1 is down", Duration::from_secs(5));
    let down = symroute_in(
        fw,
        "exec",
        None,
        &["--gateway", "isp1", "--", "sh", "-c", "echo ran"],
    );
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(
        down.stderr.contains("gateway isp1 is down (") && down.stderr.contains("not running"),
        "{}",
        down.stderr
    );
    assert!(!down.stdout.contains("ran"));
    assert_eq!(exec_uplink(fw, None, "isp2", v4), "isp2");
    isp1.exec(&["nft", "delete table inet probes_lost"])
        .unwrap();
    d.wait_log("gateway isp1 is up", Duration::from_secs(10));
    assert_eq!(exec_uplink(fw, None, "isp1", v4), "isp1");
}
