//! The sandbox of the units in `contrib/` (issue 12, item 7), checked against what symroute
//! and its children really do, on a machine where systemd may not be PID 1 (this one's is
//! not, so `systemd-run -p …` cannot apply the unit's properties).
//!
//! What can be applied here is applied: the unit's capability bounding and ambient sets
//! and `NoNewPrivileges=` (`setpriv`), `UMask=` and `LimitNOFILE=` (`sh`), and the
//! namespace join systemd does for `NetworkNamespacePath=` (`nsenter --net`). Under that,
//! the real workload runs — `apply`, `status`, a `symroute run` with ICMP health checks,
//! a metrics scrape, an `on_change` hook and a link going down and up, `remove`; and
//! `apply --netns` with CAP_SYS_ADMIN added, as a `--netns` drop-in would — traced with
//! `strace -f`, children (nft, iptables-save, the hook's sh) included. What cannot be
//! applied here is checked on the trace, against the unit's own lines:
//!
//! - every system call is in what `SystemCallFilter=` allows (groups expanded by this
//!   systemd's `systemd-analyze syscall-filter`), none from a 32-bit ABI
//!   (`SystemCallArchitectures=native`);
//! - `MemoryDenyWriteExecute=`: no writable+executable mapping, no `mprotect` to exec;
//! - `RestrictAddressFamilies=`: only the listed socket families;
//! - `RestrictNamespaces=`: no namespace operation but the listed kinds;
//! - `ProtectSystem=strict` + `ReadWritePaths=` + `PrivateTmp=`: nothing written outside
//!   those paths and /proc/sys (`ProtectKernelTunables=` is deliberately off);
//! - `PrivateDevices=`: no device opened but the pseudo-devices systemd keeps;
//! - `ProtectKernelModules/Logs=`, `ProtectClock=`, `ProtectHostname=`,
//!   `RestrictSUIDSGID=`, `LockPersonality=`: the calls and files they block are never
//!   used.
//!
//! The daemon's run here, joined with `nsenter --net` and without CAP_SYS_ADMIN, runs
//! under symroute@NAME.service's lines: symroute.service's (contrib_files checks it)
//! plus `NetworkNamespacePath=` and `Environment=SYMROUTE_NETNS=NAME`, which its hook
//! sees. `--netns` with CAP_SYS_ADMIN added runs under symroute.service's.
//!
//! Needs root, `ip`, `nft`, `strace`, `setpriv`, `nsenter`, `systemd-analyze`.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{two_uplinks, TempDir};
use symroute::lab::{in_netns, Netns};

const SYMROUTE: &str = env!("CARGO_BIN_EXE_symroute");

/// The `[Service]` lines of a unit in contrib/: (key, value) in file order.
struct Unit(Vec<(String, String)>);

impl Unit {
    fn load(name: &str) -> Unit {
        let text = std::fs::read_to_string(format!("contrib/{name}")).expect("read unit");
        let mut in_service = false;
        let mut lines = Vec::new();
        for l in text.lines().map(str::trim) {
            if l.starts_with('[') {
                in_service = l == "[Service]";
            } else if in_service && !l.starts_with('#') {
                if let Some((k, v)) = l.split_once('=') {
                    lines.push((k.to_string(), v.to_string()));
                }
            }
        }
        Unit(lines)
    }

    fn values(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn words(&self, key: &str) -> Vec<&str> {
        self.values(key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    fn one(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [v] => v,
            other => panic!("{key}= should appear once, found {other:?}"),
        }
    }

    /// `setpriv` capability list (`-all,+net_admin,…`) from CAP_* words.
    fn caps(&self, key: &str, extra: &[&str]) -> String {
        let mut s = String::from("-all");
        for c in self.words(key).into_iter().chain(extra.iter().copied()) {
            let c = c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase();
            s += &format!(",+{c}");
        }
        s
    }

    /// What the `SystemCallFilter=` lines allow: the first line is an allow list, later
    /// lines add to it, `~` lines take away (systemd's rule).
    fn allowed_syscalls(&self) -> BTreeSet<String> {
        let groups = syscall_groups();
        let names = |words: &str| -> BTreeSet<String> {
            words
                .split_whitespace()
                .flat_map(|w| expand(&groups, w))
                .collect()
        };
        let mut allowed = BTreeSet::new();
        for (i, v) in self.values("SystemCallFilter").into_iter().enumerate() {
            match v.strip_prefix('~') {
                Some(deny) => {
                    assert!(
                        i > 0,
                        "the first SystemCallFilter= line must be an allow list"
                    );
                    for n in names(deny) {
                        allowed.remove(&n);
                    }
                }
                None => allowed.extend(names(v)),
            }
        }
        assert!(!allowed.is_empty(), "no SystemCallFilter=");
        allowed
    }
}

/// `systemd-analyze syscall-filter`: group → its members (calls and groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("systemd-analyze (scripts/setup installs it)");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with('@') {
            cur = Some(l.split_whitespace().next().unwrap_or(l).to_string());
            groups.entry(cur.clone().unwrap_or_default()).or_default();
        } else if let (Some(g), w) = (&cur, l.trim()) {
            if !w.is_empty() && !w.starts_with('#') {
                groups.entry(g.clone()).or_default().push(w.to_string());
            }
        }
    }
    assert!(
        groups.contains_key("@system-service"),
        "no @system-service group"
    );
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, name: &str) -> BTreeSet<String> {
    match groups.get(name) {
        Some(members) => members.iter().flat_map(|m| expand(groups, m)).collect(),
        None if name.starts_with('@') => panic!("unknown syscall group {name}"),
        None => BTreeSet::from([name.to_string()]),
    }
}

/// Runs symroute the way the unit would, traced.
struct Sandbox<'a> {
    unit: &'a Unit,
    /// Capabilities beyond the unit's (the `--netns` drop-in's CAP_SYS_ADMIN).
    extra_caps: &'a [&'a str],
    dir: &'a Path,
    /// Names this sandbox's trace files apart from another's in the same directory.
    tag: &'a str,
    traces: Vec<PathBuf>,
}

impl<'a> Sandbox<'a> {
    fn new(unit: &'a Unit, extra_caps: &'a [&'a str], dir: &'a Path, tag: &'a str) -> Self {
        Sandbox {
            unit,
            extra_caps,
            dir,
            tag,
            traces: Vec::new(),
        }
    }

    /// `strace -f nsenter --net=NS setpriv … sh -c 'umask …; ulimit -n …; exec symroute …'`.
    fn command(&mut self, join: Option<&Netns>, args: &[&str]) -> Command {
        let trace = self
            .dir
            .join(format!("trace.{}.{}", self.tag, self.traces.len()));
        self.traces.push(trace.clone());
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-s", "256", "-o"]).arg(&trace);
        if let Some(ns) = join {
            // What systemd does for NetworkNamespacePath= before it starts the service.
            c.arg("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()));
        }
        let bounding = self.unit.caps("CapabilityBoundingSet", self.extra_caps);
        let ambient = self.unit.caps("AmbientCapabilities", self.extra_caps);
        c.args(["setpriv", "--no-new-privs", "--bounding-set", &bounding])
            .args(["--inh-caps", &ambient, "--ambient-caps", &ambient]);
        let limits = format!(
            "umask {}; ulimit -n {}; exec \"$@\"",
            self.unit.one("UMask"),
            self.unit.one("LimitNOFILE")
        );
        c.args(["sh", "-c", &limits, "sh", SYMROUTE]).args(args);
        c.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
        // The unit's Environment= lines, a template's `%i` being the joined namespace.
        for line in self.unit.values("Environment") {
            let line = match join {
                Some(ns) => line.replace("%i", ns.name()),
                None => line.to_string(),
            };
            if let Some((k, v)) = line.split_once('=') {
                c.env(k, v);
            }
        }
        c
    }

    fn run(&mut self, join: Option<&Netns>, args: &[&str]) -> String {
        let out = self.command(join, args).output().expect("run under strace");
        assert!(
            out.status.success(),
            "{args:?} in the sandbox: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `symroute ARGS` in the background, its output going to `log`.
    fn spawn(&mut self, join: Option<&Netns>, args: &[&str], log: &Path) -> Child {
        let out = std::fs::File::create(log).expect("log file");
        self.command(join, args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn under strace")
    }

    /// Everything the traces show that the unit would forbid, and the programs run.
    fn violations(&self) -> (Vec<String>, BTreeSet<String>) {
        let rules = Rules::of(self.unit);
        let mut bad = Vec::new();
        let mut programs = BTreeSet::new();
        for t in &self.traces {
            let text = std::fs::read_to_string(t).expect("trace");
            // execve's path, until its result (possibly on a later `resumed` line).
            let mut exec: BTreeMap<u32, String> = BTreeMap::new();
            for (pid, line) in sandboxed(&text) {
                if syscall_name(line) == Some("execve") {
                    if let Some(p) = quoted(line).first().filter(|_| !line.starts_with("<...")) {
                        exec.insert(pid, p.to_string());
                    }
                    if line.ends_with("= 0") {
                        programs.extend(exec.remove(&pid));
                    }
                }
                if let Some(v) = rules.check(line) {
                    bad.push(format!("{}: pid {pid}: {v}\n    {line}", t.display()));
                }
            }
        }
        bad.sort();
        bad.dedup_by(|a, b| a.split("\n").next() == b.split("\n").next());
        (bad, programs)
    }
}

/// The trace lines of symroute (from its exec on) and of every process it started.
fn sandboxed(text: &str) -> Vec<(u32, &str)> {
    let mut root: Option<(u32, usize)> = None;
    let mut children: Vec<(u32, u32)> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let Some((pid, rest)) = parse(l) else {
            continue;
        };
        if root.is_none()
            && rest.starts_with(&format!("execve(\"{SYMROUTE}\""))
            && rest.ends_with("= 0")
        {
            root = Some((pid, i));
        }
        let name = syscall_name(rest);
        if matches!(name, Some("clone" | "clone3" | "fork" | "vfork")) {
            if let Some(child) = rest.rsplit("= ").next().and_then(|r| r.trim().parse().ok()) {
                children.push((pid, child));
            }
        }
    }
    let (root_pid, from) = root.expect("symroute was never executed in the trace");
    let mut inside = BTreeSet::from([root_pid]);
    loop {
        let before = inside.len();
        for (p, c) in &children {
            if inside.contains(p) {
                inside.insert(*c);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let (pid, rest) = parse(l)?;
            (inside.contains(&pid) && (pid != root_pid || i >= from)).then_some((pid, rest))
        })
        .collect()
}

/// `PID rest-of-line` of a trace line.
fn parse(l: &str) -> Option<(u32, &str)> {
    let (pid, rest) = l.split_once(' ')?;
    Some((pid.parse().ok()?, rest.trim_start()))
}

/// `name` of `name(args…` or `<... name resumed>`.
fn syscall_name(rest: &str) -> Option<&str> {
    let s = rest.strip_prefix("<... ").unwrap_or(rest);
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    (end > 0).then_some(&s[..end])
}

/// The mode argument of chmod/mkdir/open (the last argument, in octal).
fn mode_arg(line: &str) -> Option<u32> {
    let args = line.rsplit_once(") = ")?.0;
    let last = args.rsplit(", ").next()?.trim();
    (last.starts_with('0') && last.len() > 1)
        .then(|| u32::from_str_radix(last, 8).ok())
        .flatten()
}

/// The quoted strings of a trace line (paths, for the calls that take them).
fn quoted(line: &str) -> Vec<&str> {
    line.split('"').skip(1).step_by(2).collect()
}

/// The unit's rules, ready to check trace lines against.
struct Rules {
    syscalls: BTreeSet<String>,
    families: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    writable: Vec<String>,
}

/// Pseudo-devices `PrivateDevices=yes` keeps in its /dev.
const PRIVATE_DEV: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts/",
    "/dev/shm/",
    "/dev/fd/",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/log",
];

impl Rules {
    fn of(unit: &Unit) -> Rules {
        let mut writable: Vec<String> = unit
            .words("ReadWritePaths")
            .into_iter()
            .map(|p| format!("{}/", p.trim_end_matches('/')))
            .collect();
        // /proc/sys stays writable (no ProtectKernelTunables=); PrivateTmp= gives a /tmp.
        assert!(unit.values("ProtectKernelTunables").is_empty());
        writable.push("/proc/".into());
        if unit.one("PrivateTmp") == "yes" {
            writable.extend(["/tmp/".to_string(), "/var/tmp/".to_string()]);
        }
        writable.extend(["/dev/null".to_string(), "/dev/pts/".to_string()]);
        assert_eq!(unit.one("ProtectSystem"), "strict");
        assert_eq!(unit.one("PrivateDevices"), "yes");
        assert_eq!(unit.one("MemoryDenyWriteExecute"), "yes");
        assert_eq!(unit.one("SystemCallArchitectures"), "native");
        for key in [
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectClock",
            "ProtectHostname",
            "RestrictSUIDSGID",
            "LockPersonality",
            "NoNewPrivileges",
        ] {
            assert_eq!(unit.one(key), "yes", "{key}=");
        }
        Rules {
            syscalls: unit.allowed_syscalls(),
            families: unit
                .words("RestrictAddressFamilies")
                .into_iter()
                .map(String::from)
                .collect(),
            namespaces: unit
                .words("RestrictNamespaces")
                .into_iter()
                .map(|n| format!("CLONE_NEW{}", n.to_uppercase()))
                .collect(),
            writable,
        }
    }

    /// What is wrong with one line, if anything.
    fn check(&self, line: &str) -> Option<String> {
        if line.contains("runs in 32 bit mode") || line.contains("x32 mode") {
            return Some("a system call from another ABI (SystemCallArchitectures=native)".into());
        }
        let name = syscall_name(line)?;
        if !self.syscalls.contains(name) && !matches!(name, "restart_syscall") {
            return Some(format!("{name} is not allowed by SystemCallFilter="));
        }
        if line.starts_with("<...") {
            // The arguments were on the `<unfinished ...>` line, checked there.
            return None;
        }
        let failed = line.contains(") = -1 ");
        match name {
            "socket" | "socketpair" => {
                let family = line.split(['(', ',']).nth(1).unwrap_or("").trim();
                if !self.families.contains(family) {
                    return Some(format!("socket family {family} (RestrictAddressFamilies=)"));
                }
            }
            "mmap" if line.contains("PROT_WRITE") && line.contains("PROT_EXEC") => {
                return Some("a writable and executable mapping (MemoryDenyWriteExecute=)".into());
            }
            "mprotect" | "pkey_mprotect" if line.contains("PROT_EXEC") => {
                return Some("memory made executable (MemoryDenyWriteExecute=)".into());
            }
            "shmat" if line.contains("SHM_EXEC") => {
                return Some("executable shared memory (MemoryDenyWriteExecute=)".into());
            }
            "setns" | "unshare" | "clone" | "clone3" => {
                for flag in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if flag.starts_with("CLONE_NEW") && !self.namespaces.contains(flag) {
                        return Some(format!("{flag} (RestrictNamespaces=)"));
                    }
                }
                if name == "setns" && line.contains(", 0)") {
                    return Some("setns to any namespace kind (RestrictNamespaces=)".into());
                }
            }
            "chmod" | "fchmod" | "fchmodat" | "mkdir" | "mkdirat" | "open" | "openat"
                if line.contains("S_ISUID")
                    || line.contains("S_ISGID")
                    || mode_arg(line).is_some_and(|m| m & 0o6000 != 0) =>
            {
                return Some("a set-user/group-ID mode (RestrictSUIDSGID=)".into());
            }
            "personality" if !line.contains("0xffffffff") => {
                return Some("changes the execution domain (LockPersonality=)".into());
            }
            _ => {}
        }
        let writes = match name {
            "open" | "openat" | "creat" => {
                line.contains("O_WRONLY")
                    || line.contains("O_RDWR")
                    || line.contains("O_CREAT")
                    || name == "creat"
            }
            "mkdir" | "mkdirat" | "rename" | "renameat" | "renameat2" | "unlink" | "unlinkat"
            | "rmdir" | "chmod" | "fchmodat" | "symlink" | "symlinkat" | "link" | "linkat"
            | "truncate" | "chown" | "fchownat" | "mknod" | "mknodat" | "utimensat" => true,
            _ => false,
        };
        for path in quoted(line) {
            if !path.starts_with('/') {
                if writes && !failed {
                    return Some(format!("writes the relative path {path:?}"));
                }
                continue;
            }
            if path.starts_with("/dev/")
                && !PRIVATE_DEV.iter().any(|d| path.starts_with(d))
                && !failed
            {
                return Some(format!("opens device {path} (PrivateDevices=)"));
            }
            for (blocked, why) in [
                ("/proc/kmsg", "ProtectKernelLogs="),
                ("/dev/kmsg", "ProtectKernelLogs="),
                ("/usr/lib/modules", "ProtectKernelModules="),
                ("/lib/modules", "ProtectKernelModules="),
                ("/proc/sys/kernel/hostname", "ProtectHostname="),
                ("/proc/sys/kernel/domainname", "ProtectHostname="),
                ("/dev/rtc", "ProtectClock="),
            ] {
                if path.starts_with(blocked) {
                    return Some(format!("touches {path} ({why})"));
                }
            }
            if writes
                && !self
                    .writable
                    .iter()
                    .any(|w| path.starts_with(w.as_str()) || format!("{path}/") == *w)
            {
                return Some(format!(
                    "writes {path} outside ReadWritePaths= {:?} (ProtectSystem=strict){}",
                    self.writable,
                    if failed {
                        " (the call failed here too)"
                    } else {
                        ""
                    }
                ));
            }
        }
        None
    }
}

fn config(metrics: u16) -> String {
    format!(
        r#"[settings]
metrics = "127.0.0.1:{metrics}"
on_change = "printf '%s %s %s\n' \"$SYMROUTE_GATEWAY\" \"$SYMROUTE_NEW_STATE\" \"$SYMROUTE_NETNS\""

[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
[gateway.check]
targets = ["203.0.113.1"]
interval = "100ms"
down = "2/3"
up = 2

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"

[[policy]]
name = "answer-on-isp1"
reply_via = "isp1"
[policy.match]
in_interface = "up1"
"#
    )
}

/// One HTTP GET of /metrics from inside `ns`.
fn scrape(ns: &Netns, port: u16) -> String {
    in_netns(ns.name(), move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if !body.is_empty() {
                    return body;
                }
            }
            assert!(Instant::now() < deadline, "no metrics on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .expect("scrape in netns")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(unit: &str, sb: &Sandbox) {
    let (bad, programs) = sb.violations();
    eprintln!("{unit}: programs run in the sandbox: {programs:?}");
    assert!(
        programs.iter().any(|p| p.ends_with("/nft")),
        "nft never ran: {programs:?}"
    );
    assert!(
        bad.is_empty(),
        "{unit}: {} thing(s) its sandbox forbids:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_daemon_runs_inside_its_units_sandbox() {
    // Joined as NetworkNamespacePath= joins: symroute@NAME.service, which holds every
    // line of symroute.service (contrib_files checks it) and names NAME to the hooks.
    let unit = Unit::load("symroute@.service");
    let daemon_unit = Unit::load("symroute.service");
    let (fw, isp) = two_uplinks("sbx");
    let dir = TempDir::new("sandbox");
    let port = 19469 + (std::process::id() % 1000) as u16;
    let cfg = dir.file("symroute.toml", config(port).as_bytes(), 0o644);
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut sb = Sandbox::new(&unit, &[], &dir.0, "unit");
    let out = sb.run(Some(&fw), &["apply", "-c", cfg]);
    assert!(out.contains("applied"), "{out}");
    let log = dir.0.join("run.log");
    let mut daemon = sb.spawn(Some(&fw), &["run", "-c", cfg], &log);
    let status = |sb: &mut Sandbox| sb.run(Some(&fw), &["status", "-c", cfg]);
    wait_for("the daemon and a healthy isp1", || {
        let s = status(&mut sb);
        s.contains("daemon: pid") && s.contains("rtt")
    });
    assert!(scrape(&fw, port).contains("symroute_gateway_up"));
    // A failover and back: probes lost, a reconcile, the hook and the flush run.
    isp.ip("link set i1 down").expect("link down");
    wait_for("isp1 down", || status(&mut sb).contains(" down "));
    isp.ip("link set i1 up").expect("link up");
    wait_for("isp1 up again", || !status(&mut sb).contains(" down "));
    // symroute is strace's child (nsenter, setpriv and sh each exec'd the next).
    let pid: i32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", daemon.id()))
        .expect("strace's children")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("symroute's pid");
    // The daemon we started (our grandchild).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = daemon.wait().expect("daemon exit");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "symroute run: {status}\n{log}");
    assert!(log.contains("on_change"), "no hook ran:\n{log}");
    assert!(
        log.contains(&format!("isp1 down {}", fw.name())),
        "the hook did not see SYMROUTE_NETNS:\n{log}"
    );
    sb.run(Some(&fw), &["remove"]);

    // `--netns` instead of NetworkNamespacePath=: the drop-in adds CAP_SYS_ADMIN.
    let mut sb2 = Sandbox::new(&daemon_unit, &["CAP_SYS_ADMIN"], &dir.0, "netns");
    let out = sb2.run(None, &["apply", "-c", cfg, "--netns", fw.name()]);
    assert!(out.contains("applied"), "{out}");
    sb2.run(None, &["remove", "--netns", fw.name()]);
    // With the unit's own capabilities, --netns says what it needs.
    let refused = sb
        .command(None, &["status", "-c", cfg, "--netns", fw.name()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "entering network namespace {} needs CAP_SYS_ADMIN",
            fw.name()
        )),
        "{stderr}"
    );
    sb.traces.extend(sb2.traces);
    report("symroute@.service and symroute.service", &sb);
}

#[test]
fn apply_at_boot_runs_inside_its_units_sandbox() {
    let unit = Unit::load("symroute-apply.service");
    let (fw, _isp) = two_uplinks("sbxa");
    let dir = TempDir::new("sandbox-apply");
    let cfg = dir.file(
        "symroute.toml",
        include_str!("../../examples/two-isps-firewall.toml").as_bytes(),
        0o644,
    );
    let cfg = cfg.to_str().expect("utf-8 path");
    let mut sb = Sandbox::new(&unit, &[], &dir.0, "apply");
    sb.run(Some(&fw), &["check", "-c", cfg]);
    let out = sb.run(Some(&fw), &["apply", "-c", cfg]);
    assert!(out.contains("applied"), "{out}");
    let out = sb.run(Some(&fw), &["apply", "-c", cfg]);
    assert!(out.contains("no changes"), "{out}");
    sb.run(Some(&fw), &["remove"]);
    report("symroute-apply.service", &sb);
}

/// The checks themselves: each rule flags a line that breaks it and passes its
/// everyday counterpart (so a clean trace above means something).
#[test]
fn the_checks_catch_what_the_unit_forbids() {
    let rules = Rules::of(&Unit::load("symroute.service"));
    let bad = [
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0",
        "mprotect(0x7f0, 4096, PROT_READ|PROT_EXEC) = 0",
        "socket(AF_PACKET, SOCK_RAW, 768) = 3",
        "setns(3, CLONE_NEWUSER) = 0",
        "setns(3, 0) = 0",
        "unshare(CLONE_NEWNS) = 0",
        "openat(AT_FDCWD, \"/dev/sda\", O_RDONLY) = 3",
        "openat(AT_FDCWD, \"/etc/symroute/x\", O_WRONLY|O_CREAT|O_TRUNC, 0600) = 3",
        "openat(AT_FDCWD, \"/dev/kmsg\", O_RDONLY) = -1 ENOENT (No such file or directory)",
        "finit_module(3, \"\", 0) = 0",
        "clock_settime(CLOCK_REALTIME, {tv_sec=0, tv_nsec=0}) = 0",
        "sethostname(\"x\", 1) = 0",
        "chmod(\"/run/symroute/x\", 04755) = 0",
        "openat(AT_FDCWD, \"/run/symroute/y\", O_WRONLY|O_CREAT, 02755) = 3",
        "mount(\"none\", \"/mnt\", \"tmpfs\", 0, NULL) = 0",
        "[ Process PID=7 runs in 32 bit mode. ]",
        "personality(PER_LINUX32) = 0",
    ];
    for l in bad {
        assert!(rules.check(l).is_some(), "not flagged: {l}");
    }
    let good = [
        "mmap(NULL, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_DENYWRITE, 3, 0) = 0x7f0",
        "mprotect(0x7f0, 4096, PROT_READ) = 0",
        "socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 3",
        "socket(AF_INET, SOCK_RAW|SOCK_CLOEXEC, IPPROTO_ICMP) = 4",
        "setns(3, CLONE_NEWNET) = 0",
        "openat(AT_FDCWD, \"/dev/null\", O_RDWR|O_CLOEXEC) = 3",
        "openat(AT_FDCWD, \"/run/symroute/netns-1.json.tmp\", O_WRONLY|O_CREAT|O_EXCL, 0600) = 3",
        "openat(AT_FDCWD, \"/proc/sys/net/ipv4/conf/up1/rp_filter\", O_WRONLY|O_CLOEXEC) = 3",
        "openat(AT_FDCWD, \"/etc/iproute2/rt_tables\", O_RDONLY|O_CLOEXEC) = 3",
        "<... socket resumed>) = 3",
        "chmod(\"/run/symroute/x\", 0400) = 0",
    ];
    for l in good {
        assert!(
            rules.check(l).is_none(),
            "flagged: {l}: {:?}",
            rules.check(l)
        );
    }
}
