//! Operating a running `symroute run` on the two-ISP firewall lab, over its control
//! socket: `status` shows each gateway's live health (state, since, loss, rtt_ms) and
//! `on_change` hooks run with the event in their environment when isp1's upstream dies
//! and comes back; `apply` while the daemon runs switches its config without dropping a
//! forwarded TCP connection (and a bad config exits 2 and changes nothing);
//! `apply --confirm` goes back to the previous config unless `confirm` comes in time, also
//! across a daemon restart (killed and started again: it resumes the pending confirm and
//! goes back on time; down past the deadline: it starts with the previous config);
//! a reload keeps a gateway that its checks took down down. Timings are printed.
//! Needs root, `nft`, `ip` and `conntrack`.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::daemon::{with_config, Daemon};
use support::lab;
use support::symroute;
use support::{gateway, status_json};
use symroute::lab::{in_netns, Netns, TwoIsps};

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");
const LIMIT: Duration = Duration::from_secs(5);

/// The example with a fast health check on isp1 (its target is the client, beyond isp1)
/// and `settings` in front.
fn checked_config(settings: &str) -> String {
    let checked = CONFIG.replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\ninterval = \"100ms\"\ntimeout = \"200ms\"\n",
        1,
    );
    format!("[settings]\n{settings}\n{checked}")
}

/// Polls `status --json` until `ok` holds for it; returns it and how long it took.
fn wait_status(
    d: &Daemon,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    loop {
        let st = status_json(d.ns, None);
        if ok(&st) {
            return (st, t0.elapsed());
        }
        assert!(
            t0.elapsed() < LIMIT,
            "{what}: not within {LIMIT:?}; status:\n{st:#}\nlog:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn isp1_is(state: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |st| gateway(st, "isp1")["state"] == state
}

fn expect_env(env: &[String], wants: &[&str]) {
    for want in wants {
        assert!(env.iter().any(|l| l == want), "{want} not in {env:?}");
    }
}

fn read_env(path: &std::path::Path) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text.lines().map(str::to_string).collect();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the hook wrote no {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_shows_live_health_and_hooks_run_on_down_and_up() {
    let lab = lab();
    let hooks = Daemon::dir_for(&lab.client); // any unique directory
    let config = checked_config(&format!(
        "on_change = [\"env | grep ^SYMROUTE_ | sort > {0}/hook-$SYMROUTE_NEW_STATE.env\", \"echo $SYMROUTE_GATEWAY >> {0}/calls\"]",
        hooks.display()
    ));
    let d = Daemon::start(&lab.fw, &config);

    // At startup the hooks learn each gateway's initial state (old state "none").
    d.wait_log_count("on_change `echo", 2, LIMIT);
    let mut calls: Vec<String> = std::fs::read_to_string(hooks.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    calls.sort();
    assert_eq!(calls, ["isp1", "isp2"], "one startup hook per gateway");
    let env = read_env(&hooks.join("hook-up.env"));
    expect_env(&env, &["SYMROUTE_OLD_STATE=none", "SYMROUTE_NEW_STATE=up"]);
    std::fs::remove_file(hooks.join("calls")).expect("remove calls");
    std::fs::remove_file(hooks.join("hook-up.env")).expect("remove hook-up.env");

    // Up, with a full window of good probes.
    let (st, t) = wait_status(&d, "isp1 up with a round trip", |st| {
        let g = gateway(st, "isp1");
        g["state"] == "up" && g["rtt_ms"].is_number()
    });
    eprintln!("status: isp1 up with rtt_ms after {t:?}");
    std::thread::sleep(Duration::from_millis(800));
    let st0 = status_json(&lab.fw, None);
    let g = gateway(&st0, "isp1");
    assert_eq!(st0["daemon"]["pid"], d.child.id(), "{st0:#}");
    assert_eq!(
        st0["daemon"]["config"],
        d.config_path().display().to_string()
    );
    assert!(st0["daemon"]["started"].as_str().unwrap().ends_with('Z'));
    assert_eq!(g["loss"], 0.0, "{st0:#}");
    let rtt = g["rtt_ms"].as_f64().expect("rtt_ms");
    assert!(rtt > 0.0 && rtt < 200.0, "rtt_ms {rtt}");
    assert_eq!(g["failovers"], 0);
    let isp2 = gateway(&st0, "isp2");
    assert_eq!(isp2["state"], "up");
    assert!(
        isp2["loss"].is_null() && isp2["rtt_ms"].is_null(),
        "{st0:#}"
    );
    assert!(isp2["since"].is_string());
    let since_up = g["since"].as_str().unwrap().to_string();
    drop(st);

    // Cut isp1's upstream: down by its checks, a later since, loss > 0, a failover.
    lab.isp1.ip("link set cl0 down").expect("cl0 down");
    let (st, t) = wait_status(&d, "isp1 down after its upstream died", isp1_is("down"));
    eprintln!(
        "status: isp1 down {:.0} ms after its upstream was cut",
        t.as_secs_f64() * 1e3
    );
    let g = gateway(&st, "isp1");
    assert!(g["since"].as_str().unwrap() > since_up.as_str(), "{st:#}");
    assert!(g["loss"].as_f64().unwrap() >= 0.6, "{st:#}");
    assert_eq!(g["failovers"], 1);
    assert!(
        g["reason"].as_str().unwrap().contains("health check"),
        "{st:#}"
    );
    let text = symroute(&["status", "--netns", lab.fw.name()]).ok().stdout;
    eprintln!("symroute status:\n{text}");
    assert!(
        text.contains(&format!("daemon: pid {}", d.child.id())),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("isp1 "))
        .unwrap();
    assert!(
        line.contains(" down since ") && line.contains("loss "),
        "{line}"
    );

    let env = read_env(&hooks.join("hook-down.env"));
    expect_env(
        &env,
        &[
            "SYMROUTE_EVENT=gateway",
            "SYMROUTE_GATEWAY=isp1",
            "SYMROUTE_INTERFACE=up1",
            "SYMROUTE_OLD_STATE=up",
            "SYMROUTE_NEW_STATE=down",
            &format!("SYMROUTE_NETNS={}", lab.fw.name()),
        ],
    );
    assert!(
        env.iter()
            .any(|l| l.starts_with("SYMROUTE_REASON=health check: ")),
        "{env:?}"
    );

    // Back up.
    lab.isp1.ip("link set cl0 up").expect("cl0 up");
    let (_, t) = wait_status(&d, "isp1 up again", isp1_is("up"));
    eprintln!(
        "status: isp1 up {:.0} ms after its upstream came back",
        t.as_secs_f64() * 1e3
    );
    let env = read_env(&hooks.join("hook-up.env"));
    expect_env(
        &env,
        &[
            "SYMROUTE_OLD_STATE=down",
            "SYMROUTE_NEW_STATE=up",
            "SYMROUTE_GATEWAY=isp1",
        ],
    );
    d.wait_log_count("on_change `echo", 4, LIMIT);
    let calls = std::fs::read_to_string(hooks.join("calls")).unwrap_or_default();
    assert_eq!(calls, "isp1\nisp1\n", "both hooks ran once per change");

    // A link going down is a change too (isp2 has no checks).
    std::fs::remove_file(hooks.join("hook-down.env")).expect("remove hook-down.env");
    lab.fw.ip("link set up2 down").expect("up2 down");
    let (st, t) = wait_status(&d, "isp2 down with its link", |st| {
        gateway(st, "isp2")["state"] == "down"
    });
    eprintln!(
        "status: isp2 down {:.0} ms after its link went down",
        t.as_secs_f64() * 1e3
    );
    assert!(gateway(&st, "isp2")["loss"].is_null(), "{st:#}");
    let env = read_env(&hooks.join("hook-down.env"));
    expect_env(
        &env,
        &[
            "SYMROUTE_GATEWAY=isp2",
            "SYMROUTE_INTERFACE=up2",
            "SYMROUTE_NEW_STATE=down",
        ],
    );
    assert!(
        env.iter()
            .any(|l| l.starts_with("SYMROUTE_REASON=") && l.len() > "SYMROUTE_REASON=".len()),
        "{env:?}"
    );
    lab.fw.ip("link set up2 up").expect("up2 up");
    wait_status(&d, "isp2 up with its link", |st| {
        gateway(st, "isp2")["state"] == "up"
    });
    assert!(d.log().contains("exit 0 in"), "{}", d.log());
    let _ = std::fs::remove_dir_all(&hooks);
}

/// A line echo server on the LAN host's :25 (the DNAT target of the firewall's :2525).
fn echo_server(lan: &Netns) {
    let addr: SocketAddr = SocketAddr::new(TwoIsps::LAN_V4.into(), TwoIsps::SMTP_PORT);
    let l = in_netns(lan.name(), move || TcpListener::bind(addr))
        .expect("in lan")
        .expect("bind echo");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().expect("clone");
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn echo(conn: &mut (TcpStream, BufReader<TcpStream>), msg: &str) {
    writeln!(conn.0, "{msg}").unwrap_or_else(|e| panic!("send {msg:?}: {e}"));
    let mut line = String::new();
    conn.1
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("echo of {msg:?}: {e}"));
    assert_eq!(
        line.trim(),
        msg,
        "the connection through the firewall broke"
    );
}

#[test]
fn apply_while_running_reloads_the_daemon_without_dropping_connections() {
    let lab = lab();
    echo_server(&lab.lan);
    let d = Daemon::start(&lab.fw, CONFIG);

    // A forwarded connection: client -> fw:2525 (DNAT) -> lan:25, answered via isp1.
    let dst = SocketAddr::new(TwoIsps::FW_UP1_V4.into(), TwoIsps::DNAT_PORT);
    let s = in_netns(lab.client.name(), move || {
        TcpStream::connect_timeout(&dst, LIMIT)
    })
    .expect("in client")
    .expect("connect through the firewall");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut conn = (s.try_clone().expect("clone"), BufReader::new(s));
    echo(&mut conn, "before the reload");

    let new = format!(
        "{CONFIG}\n[[policy]]\nname = \"smtp-out\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 587\n"
    );
    let path = d.file("new.toml", &new);
    let t0 = Instant::now();
    let r = with_config(&["apply"], &path, &lab.fw).ok();
    eprintln!(
        "apply through the daemon took {:?}:\n{}",
        t0.elapsed(),
        r.stdout
    );
    assert!(
        r.stdout.contains("symroute run is running here"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("change(s)"), "{}", r.stdout);
    let nft = lab
        .fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("nft");
    assert!(nft.contains("p2_smtp_out") && nft.contains("587"), "{nft}");
    let st = status_json(&lab.fw, None);
    assert_eq!(st["daemon"]["config"], path.display().to_string());
    echo(&mut conn, "after the reload");
    // The daemon enforces the new config: plan with it finds nothing to do.
    let plan = with_config(&["plan"], &path, &lab.fw).ok();
    assert!(plan.stdout.contains("no changes"), "{}", plan.stdout);

    // A bad config: exit 2 with FILE:LINE:COL, nothing sent, the daemon keeps the new one.
    let bad = d.file("bad.toml", "[[gateway]]\nname = 3\n");
    let r = with_config(&["apply"], &bad, &lab.fw);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("{}:2:8:", bad.display())),
        "{}",
        r.stderr
    );
    let mut d = d;
    assert!(d.running());
    let st = status_json(&lab.fw, None);
    assert_eq!(st["daemon"]["config"], path.display().to_string());
    let nft = lab
        .fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("nft");
    assert!(nft.contains("p2_smtp_out"), "{nft}");
    echo(&mut conn, "after the bad config");

    // `remove` while the daemon runs would be undone at once: refused, nothing removed.
    let r = symroute(&["remove", "--netns", lab.fw.name()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("symroute run (pid {})", d.child.id()))
            && r.stderr.contains("stop it first"),
        "{}",
        r.stderr
    );
    assert!(lab
        .fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .is_ok());
    echo(&mut conn, "after the refused remove");
}

fn ip_rules(ns: &Netns) -> String {
    ns.exec(&["ip", "rule", "show"]).expect("ip rule")
}

#[test]
fn apply_confirm_through_the_daemon_goes_back_unless_confirmed() {
    let lab = lab();
    let d = Daemon::start(&lab.fw, CONFIG);
    assert!(ip_rules(&lab.fw).contains("lookup 42122"));
    let without_isp2 = without_isp2();
    let path = d.file("new.toml", without_isp2);

    // Not confirmed: back to the previous config at the deadline.
    let t0 = Instant::now();
    let r = with_config(&["apply", "--confirm", "2"], &path, &lab.fw).ok();
    assert!(
        r.stdout.contains("run `symroute confirm` within 2 s"),
        "{}",
        r.stdout
    );
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"));
    let st = status_json(&lab.fw, None);
    assert_eq!(st["daemon"]["config"], path.display().to_string(), "{st:#}");
    // A second --confirm while one is pending is refused.
    let again = with_config(&["apply", "--confirm", "2"], &path, &lab.fw);
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert!(again.stderr.contains("still pending"), "{}", again.stderr);
    while !ip_rules(&lab.fw).contains("lookup 42122") {
        assert!(
            t0.elapsed() < Duration::from_secs(2) + LIMIT,
            "not rolled back:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = t0.elapsed();
    eprintln!("unconfirmed apply --confirm 2: back to the previous config after {t:?}");
    assert!(t >= Duration::from_millis(1900), "rolled back early: {t:?}");
    d.wait_log("was not confirmed in time", LIMIT);
    let st = status_json(&lab.fw, None);
    assert_eq!(
        st["daemon"]["config"],
        d.config_path().display().to_string()
    );

    // Confirmed: kept.
    with_config(&["apply", "--confirm", "2"], &path, &lab.fw).ok();
    let st = status_json(&lab.fw, None);
    assert!(st["daemon"].is_object());
    let c = symroute(&["confirm", "--netns", lab.fw.name()]).ok();
    assert!(c.stdout.contains("confirmed"), "{}", c.stdout);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"), "{}", d.log());
    let st = status_json(&lab.fw, None);
    assert_eq!(st["daemon"]["config"], path.display().to_string());
    let c = symroute(&["confirm", "--netns", lab.fw.name()]);
    assert_eq!(c.code, 1, "nothing left to confirm: {}", c.stdout);
}

#[test]
fn a_pending_confirm_survives_a_daemon_restart() {
    const SECS: u64 = 4;
    let lab = lab();
    let d1 = Daemon::start(&lab.fw, CONFIG);
    assert!(ip_rules(&lab.fw).contains("lookup 42122"));
    // The new config lives apart from the daemon's directory (a restart remakes that).
    let dir = std::env::temp_dir().join(format!("symroute-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let path = dir.join("new.toml");
    let without_isp2 = without_isp2();
    std::fs::write(&path, without_isp2).expect("write new config");

    // Applied through the daemon, then the daemon dies (SIGKILL) and is started again.
    let t0 = Instant::now();
    with_config(&["apply", "--confirm", &SECS.to_string()], &path, &lab.fw).ok();
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"));
    let mut d1 = d1;
    d1.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = d1.child.wait();
    let d2 = Daemon::start(&lab.fw, CONFIG);
    d2.wait_log(
        "resuming a previous daemon's pending `apply --confirm`",
        LIMIT,
    );
    let restarted = t0.elapsed();
    assert!(
        !ip_rules(&lab.fw).contains("lookup 42122"),
        "the restarted daemon should run the unconfirmed config until the deadline"
    );
    let st = status_json(&lab.fw, None);
    assert_eq!(st["daemon"]["config"], path.display().to_string(), "{st:#}");
    while !ip_rules(&lab.fw).contains("lookup 42122") {
        assert!(
            t0.elapsed() < Duration::from_secs(SECS + 1),
            "not back to the previous config by the deadline + 1 s:\n{}",
            d2.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let back = t0.elapsed();
    eprintln!(
        "apply --confirm {SECS} through the daemon, daemon restarted at {restarted:?}: back to the previous config at {back:?}"
    );
    assert!(
        back >= Duration::from_secs(SECS) - Duration::from_millis(100),
        "went back early: {back:?}"
    );
    d2.wait_log("was not confirmed in time", LIMIT);
    let c = symroute(&["confirm", "--netns", lab.fw.name()]);
    assert_eq!(c.code, 1, "nothing left to confirm: {}", c.stdout);

    // Down across the deadline: the next daemon starts with the previous config.
    with_config(&["apply", "--confirm", "1"], &path, &lab.fw).ok();
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"));
    let mut d2 = d2;
    d2.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = d2.child.wait();
    std::thread::sleep(Duration::from_millis(1200));
    let d3 = Daemon::start(&lab.fw, CONFIG);
    d3.wait_log("ran out while no daemon ran", LIMIT);
    assert!(ip_rules(&lab.fw).contains("lookup 42122"), "{}", d3.log());
    let st = status_json(&lab.fw, None);
    assert!(st["daemon"]["pending_confirm"].is_null(), "{st:#}");
}

/// The usual edit is in place: the file the daemon runs is changed, then applied with
/// --confirm. A restarted daemon must go back to the config it ran before, not to what
/// that file says now (the unconfirmed change).
#[test]
fn a_pending_confirm_of_an_in_place_edit_goes_back_after_a_restart() {
    const SECS: u64 = 3;
    let lab = lab();
    let mut d1 = Daemon::start(&lab.fw, CONFIG);
    // The daemon runs a file of the admin's (the harness remakes its own directory when
    // the next daemon starts).
    let dir = support::TempDir::new("in-place");
    let path = dir.0.join("symroute.toml");
    std::fs::write(&path, CONFIG).expect("write config");
    with_config(&["apply"], &path, &lab.fw).ok();
    assert!(ip_rules(&lab.fw).contains("lookup 42122"));
    let without_isp2 = without_isp2();
    std::fs::write(&path, without_isp2).expect("edit the config in place");
    let t0 = Instant::now();
    with_config(&["apply", "--confirm", &SECS.to_string()], &path, &lab.fw).ok();
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"));
    d1.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = d1.child.wait();
    let d2 = Daemon::start(&lab.fw, CONFIG);
    d2.wait_log(
        "resuming a previous daemon's pending `apply --confirm`",
        LIMIT,
    );
    assert!(!ip_rules(&lab.fw).contains("lookup 42122"));
    while !ip_rules(&lab.fw).contains("lookup 42122") {
        assert!(
            t0.elapsed() < Duration::from_secs(SECS) + LIMIT,
            "not back to the config the first daemon ran:\n{}",
            d2.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("back to the pre-edit config after {:?}", t0.elapsed());
    d2.wait_log("was not confirmed in time", LIMIT);
}

#[test]
fn reload_keeps_a_gateway_down_by_its_checks_down() {
    let lab = lab();
    let d = Daemon::start(&lab.fw, &checked_config(""));
    wait_status(&d, "isp1 up", |st| {
        let g = gateway(st, "isp1");
        g["state"] == "up" && g["rtt_ms"].is_number()
    });
    std::thread::sleep(Duration::from_millis(800));
    lab.isp1.ip("link set cl0 down").expect("cl0 down");
    let (st, _) = wait_status(&d, "isp1 down", isp1_is("down"));
    let since = gateway(&st, "isp1")["since"].clone();

    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reconciled after reloading the config", LIMIT);
    let st = status_json(&lab.fw, None);
    let g = gateway(&st, "isp1");
    assert_eq!(g["state"], "down", "{st:#}\n{}", d.log());
    assert_eq!(g["since"], since, "the reload reset isp1's state");
    assert_eq!(g["failovers"], 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.log().matches("gateway isp1 down: ").count(),
        1,
        "isp1 was detected down again after the reload:\n{}",
        d.log()
    );
    assert!(!d.log().contains("gateway isp1 is up"), "{}", d.log());
}

/// The example config without its ISP2 policy (so table 42122 is no longer looked up).
fn without_isp2() -> &'static str {
    CONFIG
        .split("# The same for ISP2")
        .next()
        .expect("example has the isp2 policy")
}
