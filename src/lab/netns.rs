//! Network-namespace guards: every lab host is a netns that deletes itself on drop,
//! so a failing (panicking) test leaves nothing behind.

use anyhow::{bail, Context};
use std::fs::File;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Distinguishes guards created by the same process (tests build many at once).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// RAII guard for one named network namespace (`ip netns add`), plus the background
/// processes started in it. Dropping kills those processes and deletes the namespace.
pub struct Netns {
    name: String,
    children: Mutex<Vec<(String, Child)>>,
}

impl Netns {
    /// Creates `sr-<role>-<pid>-<n>` with `lo` up and IPv6 DAD off, so addresses are
    /// usable immediately instead of staying "tentative" for a second or two.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sr-{role}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]), None)?;
        // From here on the guard owns the namespace: any error below still deletes it.
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip("link set lo up")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// The name as listed by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip netns exec NAME args...` and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&mut self.cmd(args), None)
    }

    /// Runs `nsenter --net=/run/netns/NAME args...` and returns its stdout: the network
    /// namespace only, so the process sees this host's /sys as it is (`ip netns exec`
    /// mounts a fresh sysfs, which hides the cgroup tree that nft resolves cgroup paths
    /// in) and its /etc (not /etc/netns/NAME).
    pub fn nsenter(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .args(args);
        run(&mut cmd, None)
    }

    /// Runs a shell script (`sh -ec`) inside the namespace; returns its stdout.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec(&["sh", "-ec", script])
    }

    /// Runs `ip -n NAME <words>`: shorthand for the many address/route/link commands.
    pub fn ip(&self, words: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(words.split_whitespace());
        run(&mut cmd, None)
    }

    /// Loads an nft ruleset (nft script syntax) inside the namespace via `nft -f -`.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        run(&mut self.cmd(&["nft", "-f", "-"]), Some(ruleset)).map(drop)
    }

    /// Sets a sysctl inside the namespace (the `net.*` tree is per-namespace).
    /// procps' `sysctl -w` exits 0 even when the kernel refuses the write, so the value
    /// is read back and compared.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        let now = self.exec(&["sysctl", "-n", key])?;
        anyhow::ensure!(
            now.trim() == value,
            "sysctl {key}={value} in netns {} did not take (still {})",
            self.name(),
            now.trim()
        );
        Ok(())
    }

    /// Starts a background process inside the namespace (e.g. haproxy). The guard owns
    /// it: it is killed and reaped when the guard drops. Output is discarded.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<()> {
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn `{}` in netns {}", args.join(" "), self.name))?;
        lock(&self.children).push((args.join(" "), child));
        Ok(())
    }

    /// Fails if a process started with [`Netns::spawn`] has already exited, so callers
    /// waiting for a daemon can stop early with a useful message.
    pub fn check_spawned(&self) -> anyhow::Result<()> {
        for (line, child) in lock(&self.children).iter_mut() {
            if let Some(status) = child.try_wait().context("try_wait")? {
                bail!("`{line}` in netns {} exited early: {status}", self.name);
            }
        }
        Ok(())
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, child) in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The namespace's own `/etc`: files under `/etc/netns/NAME/`, which `ip netns exec NAME`
/// bind-mounts over `/etc/…` (e.g. `iproute2/rt_tables`, the namespace's table names).
/// Tests give a namespace names this way without touching the host's files. The
/// directory is removed on drop (the namespace itself is [`Netns`]'s).
pub struct EtcNetns {
    dir: std::path::PathBuf,
}

impl Netns {
    /// Creates `/etc/netns/NAME` (empty) for [`EtcNetns::write`].
    pub fn etc(&self) -> anyhow::Result<EtcNetns> {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        // Another guard's drop may remove an empty /etc/netns between our two mkdirs.
        let mut tries = 0;
        while let Err(e) = std::fs::create_dir_all(&dir) {
            tries += 1;
            if tries == 3 {
                return Err(e).with_context(|| format!("create {}", dir.display()));
            }
        }
        Ok(EtcNetns { dir })
    }
}

impl EtcNetns {
    /// Writes `/etc/netns/NAME/REL` (directories created), e.g. `iproute2/rt_tables`.
    pub fn write(&self, rel: &str, text: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !rel.starts_with('/') && !rel.split('/').any(|c| c == ".."),
            "{rel}: a path inside /etc/netns/NAME"
        );
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// `/etc/netns/NAME`.
    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // /etc/netns itself only when nothing else uses it (fails harmlessly otherwise).
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Locks ignoring poisoning: the vector of children stays consistent either way.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command to completion; a non-zero exit becomes an error naming the command
/// line and carrying its stderr.
fn run(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run `{line}`"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("write stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a fresh thread that first joins namespace `ns_name`. Sockets created in
/// `f` stay in that namespace after it returns, so lab servers and clients run
/// in-process without touching the caller's namespace. A panic in `f` is re-raised.
pub fn in_netns<T: Send + 'static>(
    ns_name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns_name}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    let handle = std::thread::Builder::new()
        .name(format!("in-{ns_name}"))
        .spawn(move || -> anyhow::Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns({path})"))?;
            Ok(f())
        })
        .context("spawn netns thread")?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Creates a veth pair directly inside the two namespaces (never in the caller's) and
/// brings both ends up. Interface names must be at most 15 characters.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    veth_mac(a, a_if, None, b, b_if, None)
}

/// Like [`veth`], with optional fixed MAC addresses (set at creation, as veth refuses
/// address changes while up). Policies that match `ether saddr` need a known MAC.
pub fn veth_mac(
    a: &Netns,
    a_if: &str,
    a_mac: Option<&str>,
    b: &Netns,
    b_if: &str,
    b_mac: Option<&str>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["link", "add"]);
    for (i, (ns, ifname, mac)) in [(a, a_if, a_mac), (b, b_if, b_mac)].into_iter().enumerate() {
        if ifname.len() > 15 {
            bail!("interface name {ifname:?} is longer than 15 characters");
        }
        if i == 1 {
            cmd.args(["type", "veth", "peer", "name"]);
        }
        cmd.args([ifname, "netns", ns.name()]);
        if let Some(mac) = mac {
            cmd.args(["address", mac]);
        }
    }
    run(&mut cmd, None)?;
    a.ip(&format!("link set {a_if} up"))?;
    b.ip(&format!("link set {b_if} up"))?;
    Ok(())
}
