//! `symroute lab`: the seed scenarios, live, in private network namespaces. Shows the
//! failure, applies the example config with this very binary (`apply --netns`), shows the
//! fix and the conntrack view, removes, and tears the namespaces down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};

use symroute::lab::{tcp_probe, udp_probe, Netns, ProxyRelay, TwoIsps};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// Seed 1: firewall with a LAN and two ISPs; connections arriving on ISP1 time out
    TwoIsps,
    /// Seed 2: SMTP relay behind a transparent HAProxy (usesrc clientip)
    ProxyRelay,
    /// The daemon: ISP1's upstream dies behind a live link; health checks move the LAN's
    /// new connections to ISP2, and back when it returns
    Failover,
}

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");
const RELAY: &str = include_str!("../../examples/proxy-relay.toml");
const DIVERT: &str = include_str!("../../examples/haproxy-divert.toml");
const FAILOVER: &str = include_str!("../../examples/failover-health.toml");

const TIMEOUT: Duration = Duration::from_millis(1500);

/// Build a seed scenario in private network namespaces and show symroute fixing it.
///
/// Shows the connection failing without symroute, applies, shows it working with the
/// conntrack view, then removes everything it made. `failover` runs `symroute run`
/// instead and cuts ISP1's upstream: the LAN's new connections move to ISP2 within
/// about 1.5 s, and back when ISP1 answers again. Needs root, nft, conntrack and (for
/// proxy-relay) haproxy.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum, default_value = "two-isps")]
    scenario: Scenario,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    scenario(args.scenario).context("lab failed")?;
    Ok(ExitCode::SUCCESS)
}

fn scenario(s: Scenario) -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    match s {
        Scenario::TwoIsps => two_isps(&dir.0),
        Scenario::ProxyRelay => proxy_relay(&dir.0),
        Scenario::Failover => failover(&dir.0),
    }
}

/// A private directory for the lab's config files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("symroute-lab-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn say(s: &str) {
    println!("\n== {s}");
}

/// Run this binary with `args`, show its output, fail if it fails.
fn symroute(args: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the symroute binary")?;
    println!("$ symroute {}", args.join(" "));
    let out = Command::new(exe)
        .args(args)
        .output()
        .context("running symroute")?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    if !out.status.success() {
        bail!("symroute {} failed ({})", args.join(" "), out.status);
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p.display().to_string())
}

/// Probe and print the outcome; return whether it answered.
fn probe(from: &Netns, what: &str, dst: SocketAddr, udp: bool) -> bool {
    let r = if udp {
        udp_probe(from, dst, TIMEOUT)
    } else {
        tcp_probe(from, dst, TIMEOUT)
    };
    match r {
        Ok(answer) => {
            println!("  ok      {what:<44} answered: {answer}");
            true
        }
        Err(e) => {
            println!("  FAILED  {what:<44} {e:#}");
            false
        }
    }
}

fn conntrack(ns: &Netns) {
    println!(
        "$ ip netns exec {} conntrack -L   (mark = the path symroute remembered)",
        ns.name()
    );
    match ns.exec(&["conntrack", "-L"]) {
        Ok(t) => print!("{}", indent(&t)),
        Err(e) => println!("    (conntrack unavailable: {e:#})"),
    }
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn two_isps(dir: &Path) -> anyhow::Result<()> {
    say("building seed 1: client — ISP1 — [up1] firewall [up2] — ISP2 (default route), LAN server behind the firewall");
    let t = TwoIsps::build()?;
    let _svc = t.start_services()?;
    let checks = |t: &TwoIsps| {
        let c = &t.client;
        [
            probe(
                c,
                "TCP 25 on the firewall (IPv4)",
                sa(TwoIsps::FW_UP1_V4, 25),
                false,
            ),
            probe(
                c,
                "TCP 25 on the firewall (IPv6)",
                sa(TwoIsps::FW_UP1_V6, 25),
                false,
            ),
            probe(
                c,
                "TCP 2525 DNAT to the LAN server (IPv4)",
                sa(TwoIsps::FW_UP1_V4, 2525),
                false,
            ),
            probe(
                c,
                "TCP 2525 DNAT to the LAN server (IPv6)",
                sa(TwoIsps::FW_UP1_V6, 2525),
                false,
            ),
            probe(
                c,
                "UDP 5353 on the firewall (IPv4)",
                sa(TwoIsps::FW_UP1_V4, 5353),
                true,
            ),
            probe(
                c,
                "UDP 5353 on the firewall (IPv6)",
                sa(TwoIsps::FW_UP1_V6, 5353),
                true,
            ),
        ]
    };
    say("without symroute: the client beyond ISP1 connects to the firewall; replies leave via ISP2 and die");
    let before = checks(&t);
    let cfg = write(dir, "symroute.toml", FIREWALL)?;
    let ns = t.fw.name().to_string();
    say("applying examples/two-isps-firewall.toml on the firewall");
    symroute(&["apply", "-c", &cfg, "--netns", &ns])?;
    say("with symroute: replies leave by the path their connection came in on");
    let after = checks(&t);
    conntrack(&t.fw);
    symroute(&["status", "-c", &cfg, "--netns", &ns])?;
    say("removing symroute: the firewall is back as it was");
    symroute(&["remove", "--netns", &ns])?;
    verdict(&before, &after)
}

fn proxy_relay(dir: &Path) -> anyhow::Result<()> {
    say("building seed 2: client — router (default gateway) — LAN with HAProxy (transparent, usesrc clientip) and relay1");
    let t = ProxyRelay::build()?;
    let _svc = t.start_services()?;
    let divert = write(dir, "haproxy.toml", DIVERT)?;
    say("on the HAProxy host: the divert for its transparent sockets (examples/haproxy-divert.toml)");
    symroute(&["apply", "-c", &divert, "--netns", t.proxy.name()])?;
    let checks = |t: &ProxyRelay| {
        let c = &t.client;
        [
            probe(
                c,
                "direct to relay1 (IPv4)",
                sa(ProxyRelay::RELAY_V4, 25),
                false,
            ),
            probe(
                c,
                "through HAProxy to relay1 (IPv4)",
                sa(ProxyRelay::PROXY_V4, 25),
                false,
            ),
            probe(
                c,
                "direct to relay1 (IPv6)",
                sa(ProxyRelay::RELAY_V6, 25),
                false,
            ),
            probe(
                c,
                "through HAProxy to relay1 (IPv6)",
                sa(ProxyRelay::PROXY_V6, 25),
                false,
            ),
        ]
    };
    say("without symroute on the relay: proxied connections are answered via the router and die");
    let before = checks(&t);
    let cfg = write(dir, "relay.toml", RELAY)?;
    say("applying examples/proxy-relay.toml on relay1");
    symroute(&["apply", "-c", &cfg, "--netns", t.relay.name()])?;
    say("with symroute: proxied connections are answered via HAProxy, direct ones via the router; relay1 sees the client's address");
    let after = checks(&t);
    conntrack(&t.relay);
    symroute(&["status", "-c", &cfg, "--netns", t.relay.name()])?;
    say("removing symroute from both hosts");
    symroute(&["remove", "--netns", t.relay.name()])?;
    symroute(&["remove", "--netns", t.proxy.name()])?;
    verdict(&before, &after)
}

fn verdict(before: &[bool], after: &[bool]) -> anyhow::Result<()> {
    let ok_before = before.iter().filter(|b| **b).count();
    let ok_after = after.iter().filter(|b| **b).count();
    say(&format!(
        "result: {ok_before}/{} answered without symroute, {ok_after}/{} with it",
        before.len(),
        after.len()
    ));
    if ok_after != after.len() {
        bail!("some connections still fail with symroute applied");
    }
    Ok(())
}

/// `symroute run` as a child of the lab, its log shown as it comes. `stop_and_remove`
/// ends it (SIGTERM) and removes what it applied; dropped early (the lab failed), it does
/// the same quietly, so no state is left behind for a namespace about to disappear.
struct Daemon {
    child: std::process::Child,
    ns: String,
    removed: bool,
}

impl Daemon {
    fn start(cfg: &str, ns: &str) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe().context("finding the symroute binary")?;
        println!("$ symroute run -c {cfg} --netns {ns} &");
        let mut child = Command::new(exe)
            .args(["run", "-c", cfg, "--netns", ns])
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting symroute run")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                // The timestamp is noise here; the level and message are the story.
                let msg = line.split_once(' ').map_or(line.as_str(), |(_, m)| m);
                println!("    [run] {}", msg.trim_start());
            }
        });
        Ok(Daemon {
            child,
            ns: ns.to_string(),
            removed: false,
        })
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    /// SIGTERM (which leaves the policy applied), then `symroute remove`, shown.
    fn stop_and_remove(mut self) -> anyhow::Result<()> {
        self.stop();
        self.removed = true;
        symroute(&["remove", "--netns", &self.ns])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.removed {
            self.stop();
            if let Ok(exe) = std::env::current_exe() {
                let _ = Command::new(exe)
                    .args(["remove", "--netns", &self.ns])
                    .output();
            }
        }
    }
}

/// Polls new LAN connections (every 100 ms) until they take `want`; prints each change
/// of path with the time since `t0`. The time it took, or an error after 6 s.
fn wait_path(t: &TwoIsps, want: &str, t0: std::time::Instant) -> anyhow::Result<Duration> {
    let mut last = Some("");
    loop {
        let now = t.lan_path_now(false, Duration::from_millis(150));
        if now != last {
            println!(
                "  {:>5.2} s  LAN -> server: {}",
                t0.elapsed().as_secs_f64(),
                now.map_or("no answer".to_string(), |p| format!("via {p}"))
            );
            last = now;
        }
        if now == Some(want) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(6) {
            bail!("new connections still not via {want} after 6 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn failover(dir: &Path) -> anyhow::Result<()> {
    say("building seed 1 with a server both ISPs reach: LAN — firewall — ISP1 (checked) / ISP2 — server");
    let t = TwoIsps::build()?;
    let _server = t.add_dual_homed_server()?;
    let ns = t.fw.name().to_string();
    let t0 = std::time::Instant::now();
    say("without symroute: the LAN's connections follow the main table's default route");
    wait_path(&t, "isp2", t0)?;
    let cfg = write(dir, "symroute.toml", FAILOVER)?;
    say("starting the daemon with examples/failover-health.toml: isp1 first, isp2 while isp1 is down");
    let daemon = Daemon::start(&cfg, &ns)?;
    wait_path(&t, "isp1", std::time::Instant::now())?;
    // Let the probes fill their window with good results.
    std::thread::sleep(Duration::from_millis(1600));
    symroute(&["status", "--netns", &ns])?;
    say("ISP1's upstream dies; its link to the firewall stays up (static routing never notices)");
    t.cut_isp1_upstream(true)?;
    let cut = std::time::Instant::now();
    let moved = wait_path(&t, "isp2", cut)?;
    symroute(&["status", "--netns", &ns])?;
    say("ISP1's upstream is back");
    t.cut_isp1_upstream(false)?;
    let back = wait_path(&t, "isp1", std::time::Instant::now())?;
    say("stopping the daemon (SIGTERM leaves the policy applied) and removing symroute");
    daemon.stop_and_remove()?;
    say(&format!(
        "result: new connections moved to isp2 {:.1} s after ISP1's upstream died, and back to isp1 {:.1} s after it returned",
        moved.as_secs_f64(),
        back.as_secs_f64()
    ));
    Ok(())
}
