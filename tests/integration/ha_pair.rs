//! An HA pair of seed 1's firewall with the real keepalived and conntrackd (Debian's
//! packages, run only inside the firewalls' namespaces from contrib/ha/'s files):
//! keepalived VRRPv3 with advert_int 0.2 s moves the virtual addresses, conntrackd (FTFW,
//! DisableExternalCache On) copies connections over a sync link, `symroute run` with
//! examples/ha-pair.toml on both.
//!
//! Run with `cargo test --test integration ha_pair:: -- --nocapture` to see the failover times.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::{require_root, run_file};
use symroute::lab::{HaDaemons, HaPair, Netns, Session, TcpEcho};

const CONFIG: &str = include_str!("../../examples/ha-pair.toml");
/// Connecting, and the patience of a held session's pings.
const CONNECT: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(100);
/// How long a failover may take before the session counts as lost (VRRP takes over in
/// ~0.7 s; TCP's retransmission backoff adds up to ~1 s more).
const SURVIVES_WITHIN: Duration = Duration::from_secs(6);

/// The pair and what runs on it; everything stops and goes on drop (fields drop in this
/// order: keepalived and conntrackd, the servers, then the namespaces they live in).
struct Lab {
    ha: Option<HaDaemons>,
    dir: PathBuf,
    _servers: Vec<TcpEcho>,
    pair: HaPair,
}

impl Lab {
    fn start() -> Lab {
        require_root();
        let pair = HaPair::build().expect("build the pair");
        let servers = vec![
            TcpEcho::start(
                &pair.lan,
                SocketAddr::new(HaPair::LAN_SERVER.into(), HaPair::LAN_PORT),
            )
            .expect("LAN server"),
            TcpEcho::start(&pair.client, HaPair::client_addr()).expect("client server"),
        ];
        let dir = std::env::temp_dir().join(format!("symroute-ha-{}", pair.fw[0].name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ha = HaDaemons::start(
            &pair,
            &dir,
            std::path::Path::new(env!("CARGO_BIN_EXE_symroute")),
            false,
            Instant::now(),
        )
        .expect("keepalived and conntrackd");
        pair.wait_master(0, Instant::now(), Duration::from_secs(5))
            .expect("fw-a becomes master");
        Lab {
            ha: Some(ha),
            dir,
            _servers: servers,
            pair,
        }
    }

    fn fw(&self, i: usize) -> &Netns {
        &self.pair.fw[i]
    }

    /// Kills firewall `i`: when, and how long until the other held the virtual addresses.
    fn kill(&self, i: usize) -> (Instant, Duration) {
        let t = Instant::now();
        self.pair.kill(i).expect("links down");
        let took = self
            .pair
            .wait_master(1 - i, t, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        (t, took)
    }

    /// Firewall `i` comes back; how long until it held the virtual addresses again.
    fn revive(&self, i: usize) -> Duration {
        let t = Instant::now();
        self.pair.revive(i).expect("links up");
        self.pair
            .wait_master(i, t, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// keepalived's and conntrackd's output, for failure messages.
    fn logs(&self) -> String {
        let Some(ha) = &self.ha else {
            return String::new();
        };
        ha.keepalived
            .iter()
            .chain(&ha.conntrackd)
            .map(|s| format!("--- {}:\n{}", s.name(), s.log().join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A session from the client to ISP1's virtual address :2525 (DNAT to the LAN
    /// server), returned once conntrackd has copied it to firewall `copy_to`.
    fn dnat_session(&self, copy_to: usize) -> Session {
        let s = self.open(&self.pair.client, HaPair::dnat_addr());
        self.wait_copied(copy_to, HaPair::DNAT_PORT);
        s
    }

    fn open(&self, from: &Netns, dst: SocketAddr) -> Session {
        Session::open(from, dst, CONNECT, EVERY, PATIENCE)
            .unwrap_or_else(|e| panic!("session to {dst}: {e:#}\n{}", self.logs()))
    }

    /// Waits until firewall `i`'s kernel table holds a connection to `port` with a mark.
    fn wait_copied(&self, i: usize, port: u16) {
        self.wait_entry(i, &[format!("dport={port} ")]);
    }

    /// Waits until firewall `i`'s kernel table holds a marked entry whose line has all of
    /// `parts`.
    fn wait_entry(&self, i: usize, parts: &[String]) {
        let t = Instant::now();
        while !self
            .fw(i)
            .exec(&["conntrack", "-L"])
            .unwrap_or_default()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p.as_str())) && !l.contains("mark=0 "))
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "conntrackd did not copy the connection {parts:?} (with its mark)\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.ha.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first answer after `t` (within `limit`), as the time it took.
fn answered(s: &Session, t: Instant, limit: Duration) -> Option<Duration> {
    s.answer_after(t, limit).map(|a| a.duration_since(t))
}

/// The scenario: a client's session through the DNAT on ISP1's virtual address
/// survives the master's death (through the backup, via ISP1, by the copied mark) and
/// its return; new connections work on the backup meanwhile (DNAT'd in, and the LAN's
/// own route_via isp1 out); then, with symroute removed from the backup, the same
/// failover loses a new session. Nothing is left running afterwards.
#[test]
fn session_survives_failover_and_return_and_dies_without_symroute_on_the_backup() {
    let lab = Lab::start();
    let a = Daemon::start(lab.fw(0), CONFIG);
    let b = Daemon::start(lab.fw(1), CONFIG);

    let held = lab.dnat_session(1);
    assert!(
        held.greeting.starts_with("hello 192.0.2.10 "),
        "the LAN server sees the client: {}",
        held.greeting
    );
    let (died, vips) = lab.kill(0);
    let after = answered(&held, died, SURVIVES_WITHIN).unwrap_or_else(|| {
        panic!(
            "the session did not survive the master's death: {:?}\n{}\n--- fw-b's daemon:\n{}",
            held.failed(),
            lab.logs(),
            b.log()
        )
    });
    eprintln!(
        "master died: fw-b held the virtual addresses after {vips:?}; the session answered again after {after:?} (VRRP advert_int 0.2 s)"
    );

    // New connections on the backup: in through the DNAT, and the LAN's out via isp1.
    let new_in = lab.open(&lab.pair.client, HaPair::dnat_addr());
    let new_out = lab.open(&lab.pair.lan, HaPair::client_addr());
    assert!(
        new_out.greeting.starts_with("hello 203.0.113.2 "),
        "the LAN's connection leaves via ISP1, SNAT'd to its virtual address: {}",
        new_out.greeting
    );
    let now = Instant::now();
    for s in [&new_in, &new_out] {
        assert!(
            answered(s, now, Duration::from_secs(2)).is_some(),
            "{:?}",
            s.failed()
        );
    }

    let takeover = lab.revive(0);
    let t = Instant::now();
    let again = answered(&held, t, SURVIVES_WITHIN).unwrap_or_else(|| {
        panic!(
            "the session did not survive the master's return: {:?}\n{}\n--- fw-a's daemon:\n{}",
            held.failed(),
            lab.logs(),
            a.log()
        )
    });
    eprintln!(
        "master returned: it held the virtual addresses again after {takeover:?}; the session answered {again:?} later"
    );
    assert!(held.failed().is_none(), "{:?}", held.failed());
    drop((new_in, new_out));

    // The control: the same failover without symroute on the backup.
    drop(b);
    let control = lab.dnat_session(1);
    let (died, _) = lab.kill(0);
    assert_eq!(
        answered(&control, died, Duration::from_secs(4)),
        None,
        "without symroute on the backup the session must die (its replies leave by the default route, ISP2)"
    );
    drop((control, held, a));

    // Everything goes: keepalived (with its VRRP children), conntrackd, the namespaces.
    let pids = lab
        .ha
        .as_ref()
        .map(|h| h.pids(&lab.dir))
        .unwrap_or_default();
    let names: Vec<String> = lab.pair.fw.iter().map(|n| n.name().to_string()).collect();
    // What keepalived's notify scripts recorded (`symroute ha`) goes too.
    let roles: Vec<PathBuf> = lab.pair.fw.iter().map(|n| run_file(n, "ha.json")).collect();
    assert!(
        roles.iter().any(|r| r.exists()),
        "no role recorded: {roles:?}"
    );
    assert_eq!(pids.len(), 6, "{pids:?}");
    drop(lab);
    for r in roles {
        assert!(!r.exists(), "{} is left", r.display());
    }
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "process {pid} is still running:\n{status}"
        );
    }
    for n in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "namespace {n} is left"
        );
    }
}

/// Item 4 of the issue: a backup never destroys the master's connections. A LAN
/// connection (route_via ["isp1", "isp2"]) runs through the master via ISP1; on the
/// backup only, ISP1's link goes down: its daemon (told `backup`/`fault` by keepalived's
/// notify) leaves conntrackd's copy alone, the connection keeps working, and when the
/// master dies later it goes on through the backup. The copy is what it needs: a second
/// connection whose copy is deleted by hand on the backup (what a flush there did) dies
/// in the same failover. When the master comes back, the first connection still works
/// (the dying master held its own flush back too).
#[test]
fn a_backup_never_flushes_the_masters_connections() {
    let lab = Lab::start();
    let a = Daemon::start(lab.fw(0), CONFIG);
    let b = Daemon::start(lab.fw(1), CONFIG);
    // keepalived reported the roles before the daemons started; they read them.
    a.wait_log("HA role as keepalived last reported it: master", CONNECT);
    b.wait_log("HA role as keepalived last reported it: backup", CONNECT);

    let kept = lab.open(&lab.pair.lan, HaPair::client_addr());
    assert!(
        kept.greeting.starts_with("hello 203.0.113.2 "),
        "via ISP1, SNAT'd to its virtual address: {}",
        kept.greeting
    );
    lab.wait_copied(1, HaPair::CLIENT_PORT);

    // The backup's own ISP1 link goes down (and back): no flush there.
    lab.fw(1).ip("link set up1 down").expect("up1 down on fw-b");
    b.wait_log(
        "gateway isp1 down: its route_via connections are not flushed",
        CONNECT,
    );
    assert!(
        !b.log().contains("down: flushed"),
        "the backup flushed:\n{}",
        b.log()
    );
    let t = Instant::now();
    assert!(
        answered(&kept, t, Duration::from_secs(2)).is_some(),
        "the master's connection stopped: {:?}",
        kept.failed()
    );
    lab.fw(1).ip("link set up1 up").expect("up1 up on fw-b");
    b.wait_log("gateway isp1 is up", CONNECT);
    b.wait_log("HA role: fault -> backup", CONNECT);

    // A second connection whose copy on the backup goes, as a flush there deleted it.
    let lost = lab.open(&lab.pair.lan, HaPair::client_addr());
    // The port the client saw is the connection's reply destination (after SNAT).
    let sport = lost
        .greeting
        .split_whitespace()
        .nth(2)
        .expect("the greeting names the port")
        .to_string();
    lab.wait_entry(1, &["dport=7 ".into(), format!("dport={sport} ")]);
    let deleted = lab
        .fw(1)
        .exec(&[
            "conntrack",
            "-D",
            "-p",
            "tcp",
            "--orig-dst",
            "192.0.2.10",
            "--dport",
            "7",
            "--reply-port-dst",
            &sport,
        ])
        .expect("delete the second connection's copy on fw-b");
    eprintln!("deleted on fw-b: {deleted}");

    let (died, vips) = lab.kill(0);
    let after = answered(&kept, died, SURVIVES_WITHIN).unwrap_or_else(|| {
        panic!(
            "the connection whose copy the backup kept did not survive: {:?}\n{}\n--- fw-b:\n{}",
            kept.failed(),
            lab.logs(),
            b.log()
        )
    });
    eprintln!("master died: VIPs on fw-b after {vips:?}; the kept LAN connection answered again after {after:?}");
    // Counted from when the backup held the addresses: an answer already on its way
    // when the master died may still arrive (seen 4 ms after, under load).
    assert_eq!(
        answered(&lost, died + vips, Duration::from_secs(4)),
        None,
        "the connection without its copy must die in the failover"
    );
    // The dying master held its flush back (keepalived said `fault` within the grace).
    a.wait_log("HA role: master -> fault", CONNECT);
    assert!(
        !a.log().contains("down: flushed"),
        "the dying master flushed:\n{}",
        a.log()
    );

    lab.revive(0);
    let t = Instant::now();
    assert!(
        answered(&kept, t, SURVIVES_WITHIN).is_some(),
        "the kept connection did not survive the master's return: {:?}\n{}",
        kept.failed(),
        lab.logs()
    );
    drop((kept, lost, a, b));
}

/// keepalived stopping (a restart, an upgrade) gives the addresses up: its notify_stop
/// script tells symroute this box is no longer the master, so it stops flushing as one.
#[test]
fn keepalived_stopping_makes_the_master_a_backup() {
    let mut lab = Lab::start();
    let role = |lab: &Lab| support::status_json(lab.fw(0), Some(CONFIG))["ha"]["role"].clone();
    assert_eq!(role(&lab), "master", "{}", lab.logs());
    lab.ha.as_mut().expect("daemons").keepalived[0].stop();
    let t = Instant::now();
    while role(&lab) != "backup" {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still {} after keepalived stopped\n{}",
            role(&lab),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("backup {:?} after keepalived was told to stop", t.elapsed());
}

/// keepalived forks a notify script per state change and does not wait for it: a slow
/// `symroute ha backup` started before a quick `symroute ha master` must not have the
/// last word. (The slow one is a shell that sleeps, then execs symroute: exec keeps the
/// fork's start time, as keepalived's scripts do.)
#[test]
fn a_notification_started_earlier_never_overrides_a_later_one() {
    const FIREWALL: &str = include_str!("../../examples/two-isps-firewall.toml");
    let lab = support::lab();
    // `remove` forgets the role, even when an assertion fails.
    let _remove = support::RemoveOnDrop(&lab.fw);
    let ns = lab.fw.name();
    let bin = env!("CARGO_BIN_EXE_symroute");
    let slow = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("sleep 0.6; exec {bin} ha backup --netns {ns}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("slow notification");
    std::thread::sleep(Duration::from_millis(150));
    let quick = support::symroute(&["ha", "master", "--netns", ns]).ok();
    assert!(quick.stdout.contains("master"), "{}", quick.stdout);
    let out = slow.wait_with_output().expect("slow notification");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(
            "backup not taken: keepalived said master in a notification started after this one"
        ),
        "{said}"
    );
    let st = support::status_json(&lab.fw, Some(FIREWALL));
    assert_eq!(st["ha"]["role"], "master", "{:#}", st["ha"]);
    // In order, the later word wins as always.
    support::symroute(&["ha", "backup", "--netns", ns]).ok();
    let st = support::status_json(&lab.fw, Some(FIREWALL));
    assert_eq!(st["ha"]["role"], "backup", "{:#}", st["ha"]);
}
