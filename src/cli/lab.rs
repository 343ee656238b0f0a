//! `symroute lab`: the seed scenarios, live, in private network namespaces. Shows the
//! failure, applies the example config with this very binary (`apply --netns`), shows the
//! fix and the conntrack view, removes, and tears the namespaces down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};

use symroute::lab::{
    interrupt, tcp_probe, udp_probe, HaDaemons, HaPair, Netns, ProxyRelay, Session, TcpEcho,
    TwoIsps,
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// Seed 1: firewall with a LAN and two ISPs; connections arriving on ISP1 time out
    TwoIsps,
    /// Seed 2: SMTP relay behind a transparent HAProxy (usesrc clientip)
    ProxyRelay,
    /// The daemon: ISP1's upstream dies behind a live link; health checks move the LAN's
    /// new connections to ISP2, and back when it returns
    Failover,
    /// Seed 1's firewall as an HA pair (keepalived + conntrackd): a session through a
    /// DNAT survives the master's death and return; without symroute on the backup it dies
    HaPair,
}

const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");
const RELAY: &str = include_str!("../../examples/proxy-relay.toml");
const DIVERT: &str = include_str!("../../examples/haproxy-divert.toml");
const FAILOVER: &str = include_str!("../../examples/failover-health.toml");
const HA_PAIR: &str = include_str!("../../examples/ha-pair.toml");

const TIMEOUT: Duration = Duration::from_millis(1500);

/// Build a seed scenario in private network namespaces and show symroute fixing it.
///
/// Shows the connection failing without symroute, applies, shows it working with the
/// conntrack view, then removes everything it made. `failover` runs `symroute run`
/// instead and cuts ISP1's upstream: the LAN's new connections move to ISP2 within
/// about 1.5 s, and back when ISP1 answers again. `ha-pair` runs seed 1's firewall as
/// a keepalived + conntrackd pair and kills the master under a live session. Needs
/// root, nft, conntrack and (for proxy-relay) haproxy, (for ha-pair) keepalived and
/// conntrackd.
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
        Scenario::HaPair => ha_pair(&dir.0),
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
    /// Its log is shown as it comes, each line prefixed by `label`; the lines listing
    /// single changes (`applied: …`) only when `each_change`.
    fn start(cfg: &str, ns: &str, label: &str, each_change: bool) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe().context("finding the symroute binary")?;
        println!("$ symroute run -c {cfg} --netns {ns} &");
        let label = label.to_string();
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
                if each_change || !msg.contains("applied: ") {
                    println!("    [{label}] {}", msg.trim_start());
                }
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
    let daemon = Daemon::start(&cfg, &ns, "run", true)?;
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

/// `symroute status --json` of a namespace, parsed.
fn status_json(ns: &str) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding the symroute binary")?;
    let out = Command::new(exe)
        .args(["status", "--json", "--netns", ns])
        .output()
        .context("running symroute status")?;
    if !out.status.success() {
        bail!(
            "symroute status --netns {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits (up to 10 s) until the daemon of `ns` has applied.
fn wait_applied(ns: &str) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        interrupt::check()?;
        if status_json(ns).is_ok_and(|s| s["applied"] == true && s["daemon"].is_object()) {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("symroute run in {ns} has not applied after 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 5 s) until conntrackd has copied the client's connection to `port` into
/// `ns`'s kernel table; its `conntrack -L` line.
fn wait_copied(ns: &Netns, port: u16) -> anyhow::Result<String> {
    let t0 = std::time::Instant::now();
    loop {
        interrupt::check()?;
        let table = ns.exec(&["conntrack", "-L"]).unwrap_or_default();
        if let Some(l) = table
            .lines()
            .find(|l| l.contains(&format!("dport={port} ")) && l.contains("mark="))
        {
            return Ok(l.to_string());
        }
        if t0.elapsed() > Duration::from_secs(5) {
            bail!(
                "conntrackd did not copy the connection to :{port} into {} within 5 s",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a held session fared after `at`: answered again within `limit` (when, and the
/// longest gap without answers), or not.
fn session_after(
    s: &Session,
    at: std::time::Instant,
    limit: Duration,
) -> Option<(Duration, Duration)> {
    let a = s.answer_after(at, limit)?;
    Some((a.duration_since(at), s.longest_gap(at, a)))
}

fn ha_pair(dir: &Path) -> anyhow::Result<()> {
    interrupt::stop_on_signals()?;
    let t0 = std::time::Instant::now();
    say("building seed 1's firewall as an HA pair: fw-a and fw-b share ISP1's, ISP2's and the LAN's segments (bridges), with a sync link between them; the client is beyond ISP1, the default route is ISP2 (which drops transit)");
    let pair = HaPair::build()?;
    let _lan = TcpEcho::start(
        &pair.lan,
        SocketAddr::new(HaPair::LAN_SERVER.into(), HaPair::LAN_PORT),
    )?;
    let exe = std::env::current_exe().context("finding the symroute binary")?;
    // `conntrackd v1.4.7`: the first word that looks like a version.
    let version = |cmd: &str, arg: &str| -> String {
        let out = Command::new(cmd).arg(arg).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
            .unwrap_or_default();
        let v = text
            .split_whitespace()
            .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or("(version unknown)");
        format!("{cmd} {}", v.trim_end_matches('.'))
    };
    say(&format!(
        "starting {} in FTFW mode over sync0 with DisableExternalCache On, and {} with VRRPv3, advert_int 0.2 s, VIPs 203.0.113.2 (up1), 198.51.100.2 (up2), 10.77.0.1 (lan0); both from contrib/ha/, fw-a priority 150, fw-b 100",
        version("conntrackd", "-v"),
        version("keepalived", "--version")
    ));
    let ha = HaDaemons::start(&pair, dir, &exe, true, t0)?;
    pair.wait_master(0, std::time::Instant::now(), Duration::from_secs(5))?;
    println!("  fw-a holds the virtual addresses");

    let cfg = write(dir, "symroute.toml", HA_PAIR)?;
    say("symroute run on both firewalls with the same examples/ha-pair.toml");
    let names = [pair.fw[0].name().to_string(), pair.fw[1].name().to_string()];
    let _run_a = Daemon::start(&cfg, &names[0], "run fw-a", false)?;
    let mut run_b = Some(Daemon::start(&cfg, &names[1], "run fw-b", false)?);
    wait_applied(&names[0])?;
    wait_applied(&names[1])?;
    let a_status = write(
        dir,
        "fw-a-status.json",
        &serde_json::to_string_pretty(&status_json(&names[0])?)?,
    )?;
    println!("the marks mean the same on both boxes (fw-a's `status --json` compared on fw-b):");
    symroute(&["doctor", "--netns", &names[1], "--peer", &a_status])?;

    say("the client opens a TCP session to 203.0.113.2:2525 (DNAT to the LAN server) and pings it every 100 ms");
    // A session through the DNAT, once conntrackd has copied it to fw-b (and that copy).
    let dnat_session = || -> anyhow::Result<(Session, String)> {
        let s = Session::open(
            &pair.client,
            HaPair::dnat_addr(),
            TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(20),
        )?;
        let copied = wait_copied(&pair.fw[1], HaPair::DNAT_PORT)?;
        Ok((s, copied))
    };
    let (session, copied) = dnat_session()?;
    println!(
        "  {} (the LAN server sees the client itself)",
        session.greeting
    );
    println!(
        "$ ip netns exec {} conntrack -L   (fw-b: conntrackd's copy, DNAT and mark included)",
        names[1]
    );
    println!("    {copied}");

    say("fw-a dies: all its links go down at once");
    let died = std::time::Instant::now();
    pair.kill(0)?;
    let vip_b = pair.wait_master(1, died, Duration::from_secs(10))?;
    let survived = session_after(&session, died, Duration::from_secs(8));
    interrupt::check()?;
    println!(
        "  fw-b holds the virtual addresses {:.2} s after fw-a died",
        vip_b.as_secs_f64()
    );
    match survived {
        Some((after, gap)) => println!(
            "  the session answered again {:.2} s after fw-a died (longest silence {:.2} s), now through fw-b and ISP1",
            after.as_secs_f64(),
            gap.as_secs_f64()
        ),
        None => println!(
            "  the session did not answer again within 8 s: {}",
            session.failed().unwrap_or_else(|| "no answer".into())
        ),
    }
    symroute(&["status", "--netns", &names[1]])?;

    say("fw-a comes back (links up, its default route restored): it has the higher priority and takes over again");
    let back = std::time::Instant::now();
    pair.revive(0)?;
    let vip_a = pair.wait_master(0, back, Duration::from_secs(10))?;
    let returned = session_after(&session, back + vip_a, Duration::from_secs(8));
    interrupt::check()?;
    println!(
        "  fw-a holds the virtual addresses again {:.2} s after it came back",
        vip_a.as_secs_f64()
    );
    match returned {
        Some((after, _)) => println!(
            "  the session kept answering ({:.2} s after the takeover); {} answers in all",
            after.as_secs_f64(),
            session.answers()
        ),
        None => println!(
            "  the session did not answer after fw-a took over: {}",
            session.failed().unwrap_or_else(|| "no answer".into())
        ),
    }

    say("control: symroute taken off fw-b (daemon stopped, `symroute remove`), then a new session and the same failover");
    if let Some(d) = run_b.take() {
        d.stop_and_remove()?;
    }
    let (control, _) = dnat_session()?;
    let died2 = std::time::Instant::now();
    pair.kill(0)?;
    pair.wait_master(1, died2, Duration::from_secs(10))?;
    let lost = session_after(&control, died2, Duration::from_secs(5)).is_none();
    interrupt::check()?;
    if lost {
        println!("  the new session got no answer for 5 s after fw-a died: fw-b has its conntrack entry, mark included, but no rule reads the mark, so the LAN server's replies follow the default route to ISP2 and are dropped");
    } else {
        println!("  the new session answered through fw-b anyway (unexpected)");
    }

    say("cleaning up: symroute run, keepalived and conntrackd stop; the namespaces go");
    drop(control);
    drop(session);
    drop(_run_a);
    drop(ha);
    let ok = survived.is_some() && returned.is_some() && lost;
    say(&format!(
        "result: with symroute on both boxes the session {} fw-a's death (answered again after {}; VRRP moved the addresses in {:.2} s with advert_int 0.2 s) and {} its return; without symroute on the backup the same failover {}",
        if survived.is_some() { "survived" } else { "did NOT survive" },
        survived.map_or("-".to_string(), |(a, _)| format!("{:.2} s", a.as_secs_f64())),
        vip_b.as_secs_f64(),
        if returned.is_some() { "survived" } else { "did NOT survive" },
        if lost { "lost its session" } else { "did NOT lose its session" },
    ));
    if !ok {
        bail!("the HA pair did not behave as expected");
    }
    Ok(())
}
