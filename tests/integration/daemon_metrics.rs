//! Conntrack flushing and Prometheus metrics of `symroute run`, in private namespaces.
//! Needs root, `nft`, `ip` and `conntrack`.

use crate::support;
use support::conntrack;
use support::metrics::{self, must, value};

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::daemon::Daemon;
use support::{lab, require_root, symroute};
use symroute::kernel::conntrack::Conntrack;
use symroute::lab::{in_netns, Netns, TwoIsps};

const MASK: u32 = 0xff00_0000;

/// `count` and `flush` select exactly the entries whose mark (inside the mask) matches;
/// bits outside the mask do not matter, and other marks are left alone.
#[test]
fn conntrack_count_and_flush_by_mark() {
    require_root();
    let ns = Netns::new("ct").expect("netns");
    for (i, mark) in [0x0100_0000u32, 0x0100_0042, 0x0200_0000, 0, 0x0100_0000]
        .into_iter()
        .enumerate()
    {
        let sport = (1000 + i).to_string();
        let mark = mark.to_string();
        ns.exec(&[
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            "192.0.2.1",
            "-d",
            "198.51.100.1",
            "--sport",
            &sport,
            "--dport",
            "80",
            "--state",
            "ESTABLISHED",
            "-u",
            "SEEN_REPLY",
            "-t",
            "300",
            "--mark",
            &mark,
        ])
        .expect("conntrack -I");
    }
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "2001:db8::1",
        "-d",
        "2001:db8::2",
        "--sport",
        "53",
        "--dport",
        "53",
        "-t",
        "300",
        "--mark",
        "16777216",
    ])
    .expect("conntrack -I (IPv6)");
    let (before, deleted, after, other, none) = in_netns(ns.name(), || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        let before = ct.count(0x0100_0000, MASK).expect("count");
        let deleted = ct.flush(0x0100_0000, MASK).expect("flush");
        let after = ct.count(0x0100_0000, MASK).expect("count");
        let other = ct.count(0x0200_0000, MASK).expect("count");
        let none = ct.flush(0x0300_0000, MASK).expect("flush nothing");
        (before, deleted, after, other, none)
    })
    .expect("in netns");
    assert_eq!((before, deleted, after, other, none), (4, 4, 0, 1, 0));
    let left = ns
        .exec(&["conntrack", "-L", "-f", "ipv4"])
        .expect("conntrack -L");
    assert_eq!(left.lines().count(), 2, "left:\n{left}");
    in_netns(ns.name(), || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        assert!(ct.flush(0, MASK).is_err(), "mark 0 must be refused");
        assert!(
            ct.flush(0x0100_0001, MASK).is_err(),
            "bits outside the mask"
        );
    })
    .expect("in netns");
}

// ---------------------------------------------------------------------------------------
// `symroute run` on the two-ISP firewall: LAN connections routed via isp1 and via isp2

/// The configured address: the default port (19469) applies.
const METRICS: &str = "127.0.0.1";
const SCRAPE: &str = "127.0.0.1:19469";
/// The echo server beyond isp1 (the client host, also isp1's check target)…
const VIA_ISP1: &str = "192.0.2.10:7001";
/// …and the one on isp2 itself (isp2 does not forward).
const VIA_ISP2: &str = "198.51.100.1:7002";
const LIMIT: Duration = Duration::from_secs(5);

fn config() -> String {
    format!(
        r#"[settings]
metrics = "{METRICS}"

[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
[gateway.check]
targets = ["192.0.2.10"]
interval = "100ms"
timeout = "200ms"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
[gateway.check]
targets = ["198.51.100.1"]
interval = "100ms"
timeout = "200ms"

[[policy]]
name = "lan-to-isp1"
route_via = "isp1"
[policy.match]
in_interface = "lan0"
destination = "192.0.2.0/24"

[[policy]]
name = "lan-to-isp2"
route_via = "isp2"
[policy.match]
in_interface = "lan0"
protocol = "tcp"
destination_port = 7002
"#
    )
}

/// The route marks the config gives isp1 and isp2.
fn route_marks() -> (u32, u32) {
    let model = symroute::config::parse_str(&config(), "t.toml").expect("config");
    let plan = symroute::plan::build(&model, &symroute::plan::HostView::default());
    let mark = |i: usize| plan.gateways[i].route_mark.expect("route mark").bits();
    (mark(0), mark(1))
}

/// A TCP echo server (line by line) in a namespace, for connections that stay open.
struct Echo {
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start(ns: &Netns, addr: &str) -> Echo {
        let addr: SocketAddr = addr.parse().expect("address");
        let listener = in_netns(ns.name(), move || TcpListener::bind(addr))
            .expect("in netns")
            .expect("bind echo server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let flag = flag.clone();
                std::thread::spawn(move || echo(stream, &flag));
            }
        });
        Echo { stop }
    }
}

fn echo(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut out = stream.try_clone().expect("clone stream");
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(_) => {} // timeout: look at the stop flag
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A connection opened from the LAN host.
fn connect(lab: &TwoIsps, dst: &str) -> TcpStream {
    let dst: SocketAddr = dst.parse().expect("address");
    let s = in_netns(lab.lan.name(), move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })
    .expect("in netns")
    .unwrap_or_else(|e| panic!("connect to {dst} from the LAN: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Sends a line and reads the echo.
fn round_trip(s: &TcpStream, text: &str) -> std::io::Result<String> {
    let mut w = s;
    w.write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// The firewall's conntrack entry of the TCP connection to `port` (`None`: there is none).
fn ct_entry(lab: &TwoIsps, port: u16) -> Option<String> {
    let out = lab
        .fw
        .exec(&[
            "conntrack",
            "-L",
            "-o",
            "id",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
        ])
        .expect("conntrack -L");
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().map(str::to_string);
    assert!(lines.next().is_none(), "one entry expected:\n{out}");
    first
}

/// A field (`mark`, `id`) of a `conntrack -L` line.
fn field<'a>(entry: &'a str, key: &str) -> &'a str {
    conntrack::field(entry, key).unwrap_or_else(|| panic!("no {key}= in {entry}"))
}

fn ct_count(lab: &TwoIsps, mark: u32) -> u64 {
    in_netns(lab.fw.name(), move || {
        Conntrack::open().expect("ctnetlink").count(mark, MASK)
    })
    .expect("in netns")
    .expect("count")
}

/// The lab with return routes to the LAN on both ISPs, echo servers, and the daemon
/// started (its probes have seen both gateways answer).
struct Setup {
    lab: TwoIsps,
    _echo: [Echo; 2],
}

fn setup() -> Setup {
    let lab = lab();
    lab.isp1
        .ip("route add 10.77.0.0/24 via 203.0.113.2")
        .expect("isp1 route to the LAN");
    lab.isp2
        .ip("route add 10.77.0.0/24 via 198.51.100.2")
        .expect("isp2 route to the LAN");
    let echo = [
        Echo::start(&lab.client, VIA_ISP1),
        Echo::start(&lab.isp2, VIA_ISP2),
    ];
    Setup { lab, _echo: echo }
}

fn start(lab: &TwoIsps) -> Daemon<'_> {
    let d = Daemon::start(&lab.fw, &config());
    // Let the probes fill their windows with good results first.
    std::thread::sleep(Duration::from_millis(800));
    d
}

#[test]
fn a_dead_gateways_connections_are_flushed_and_the_others_kept() {
    let s = setup();
    let lab = &s.lab;
    let d = start(lab);
    let (mark1, mark2) = route_marks();
    let c1 = connect(lab, VIA_ISP1);
    let c2 = connect(lab, VIA_ISP2);
    assert_eq!(round_trip(&c1, "one").expect("via isp1"), "one");
    assert_eq!(round_trip(&c2, "two").expect("via isp2"), "two");
    let e1 = ct_entry(lab, 7001).expect("entry via isp1");
    let e2 = ct_entry(lab, 7002).expect("entry via isp2");
    assert_eq!(
        field(&e1, "mark").parse::<u32>().unwrap() & MASK,
        mark1,
        "{e1}"
    );
    assert_eq!(
        field(&e2, "mark").parse::<u32>().unwrap() & MASK,
        mark2,
        "{e2}"
    );
    assert_eq!((ct_count(lab, mark1), ct_count(lab, mark2)), (1, 1));

    lab.isp1
        .ip("link set cl0 down")
        .expect("cut isp1's upstream");
    d.wait_log("gateway isp1 down: flushed", LIMIT);
    assert!(
        d.log()
            .contains("gateway isp1 down: flushed 1 conntrack entry of its route_via"),
        "{}",
        d.log()
    );
    assert_eq!(
        ct_entry(lab, 7001),
        None,
        "the isp1 connection's entry is gone"
    );
    assert_eq!(ct_count(lab, mark1), 0);
    assert!(
        !d.log().contains("gateway isp2 down"),
        "isp2 must stay up; log:\n{}",
        d.log()
    );

    // The isp2 connection goes on, both ways, on its very same conntrack entry.
    for i in 0..3 {
        let text = format!("still here {i}");
        assert_eq!(
            round_trip(&c2, &text).expect("via isp2 after isp1 died"),
            text
        );
    }
    let after = ct_entry(lab, 7002).expect("entry via isp2 after isp1 died");
    assert_eq!(
        field(&after, "id"),
        field(&e2, "id"),
        "same entry:\n{e2}\n{after}"
    );
    assert_eq!(field(&after, "mark"), field(&e2, "mark"));
    assert_eq!(ct_count(lab, mark2), 1);
}

/// One box of an HA pair (`ha_pair = true`): told `backup` (as keepalived's notify
/// does), its dead gateway's connections stay; told `master` while the gateway is still
/// down, it flushes them, a grace period (1 s) later.
#[test]
fn an_ha_backup_keeps_a_dead_gateways_connections_until_it_is_master() {
    let s = setup();
    let lab = &s.lab;
    let role = |r: &str| symroute(&["ha", r, "--netns", lab.fw.name()]).ok().stdout;
    let said = role("backup");
    assert!(said.contains("HA role: backup (recorded"), "{said}");
    let d = Daemon::start(
        &lab.fw,
        &config().replacen("[settings]\n", "[settings]\nha_pair = true\n", 1),
    );
    d.wait_log("HA role as keepalived last reported it: backup", LIMIT);
    std::thread::sleep(Duration::from_millis(800));
    let (mark1, _) = route_marks();
    let c1 = connect(lab, VIA_ISP1);
    assert_eq!(round_trip(&c1, "one").expect("via isp1"), "one");

    lab.isp1
        .ip("link set cl0 down")
        .expect("cut isp1's upstream");
    d.wait_log(
        "gateway isp1 down: its route_via connections are not flushed: this box is the backup",
        LIMIT,
    );
    assert!(
        ct_entry(lab, 7001).is_some(),
        "the backup flushed:\n{}",
        d.log()
    );
    assert_eq!(ct_count(lab, mark1), 1);

    let told = std::time::Instant::now();
    let said = role("master");
    assert!(said.contains("HA role: backup -> master"), "{said}");
    d.wait_log("gateway isp1 down: flushed 1 conntrack entry", LIMIT);
    let took = told.elapsed();
    eprintln!("told master: the held flush came {took:?} later");
    assert!(
        took >= Duration::from_millis(900),
        "flushed before the grace: {took:?}"
    );
    assert_eq!(ct_entry(lab, 7001), None);
    let st = symroute(&["status", "--json", "--netns", lab.fw.name()]).ok();
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    assert_eq!(v["ha"]["role"], "master", "{v:#}");
}

/// `GET path` from the daemon's metrics page in the firewall's namespace.
fn get(lab: &TwoIsps, path: &str) -> (String, String) {
    metrics::get(&lab.fw, SCRAPE, path)
}

fn scrape(lab: &TwoIsps) -> String {
    metrics::scrape(&lab.fw, SCRAPE)
}

#[test]
fn metrics_follow_traffic_and_a_failover() {
    let s = setup();
    let lab = &s.lab;
    let d = start(lab);
    let c1 = connect(lab, VIA_ISP1);
    let c2 = connect(lab, VIA_ISP2);
    assert_eq!(round_trip(&c1, "one").expect("via isp1"), "one");
    assert_eq!(round_trip(&c2, "two").expect("via isp2"), "two");

    let page = scrape(lab);
    for name in [
        "symroute_gateway_up",
        "symroute_probe_rtt_seconds",
        "symroute_probe_loss_ratio",
        "symroute_failovers_total",
        "symroute_connections",
        "symroute_policy_packets_total",
        "symroute_policy_bytes_total",
    ] {
        assert!(page.contains(&format!("# HELP {name} ")), "{name}:\n{page}");
    }
    assert!(page.contains("# TYPE symroute_reconcile_duration_seconds histogram\n"));
    for gw in ["isp1", "isp2"] {
        assert_eq!(
            must(&page, &format!("symroute_gateway_up{{gateway=\"{gw}\"}}")),
            1.0
        );
        assert_eq!(
            must(
                &page,
                &format!("symroute_failovers_total{{gateway=\"{gw}\"}}")
            ),
            0.0
        );
        assert_eq!(
            must(&page, &format!("symroute_connections{{gateway=\"{gw}\"}}")),
            1.0
        );
        // Both answer: at most a stray early loss (a probe sent before the first apply).
        let loss = must(
            &page,
            &format!("symroute_probe_loss_ratio{{gateway=\"{gw}\"}}"),
        );
        assert!(loss < 0.5, "{gw}: loss {loss}");
        // Round trips are reported once the probes measure them.
        if let Some(rtt) = value(
            &page,
            &format!("symroute_probe_rtt_seconds{{gateway=\"{gw}\"}}"),
        ) {
            assert!(rtt > 0.0 && rtt < 1.0, "{gw}: rtt {rtt}");
        }
    }
    for p in ["lan-to-isp1", "lan-to-isp2"] {
        let packets = must(
            &page,
            &format!("symroute_policy_packets_total{{policy=\"{p}\"}}"),
        );
        let bytes = must(
            &page,
            &format!("symroute_policy_bytes_total{{policy=\"{p}\"}}"),
        );
        // One new connection each: its SYN.
        assert_eq!(packets, 1.0, "{p}:\n{page}");
        assert!(bytes >= 40.0, "{p}: {bytes} bytes");
    }
    let count = must(&page, "symroute_reconcile_duration_seconds_count");
    assert!(count >= 1.0, "{page}");
    assert_eq!(
        must(
            &page,
            "symroute_reconcile_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        count
    );
    assert!(must(&page, "symroute_reconcile_duration_seconds_sum") > 0.0);

    lab.isp1
        .ip("link set cl0 down")
        .expect("cut isp1's upstream");
    d.wait_log("gateway isp1 down: flushed", LIMIT);
    let page = scrape(lab);
    assert_eq!(
        must(&page, "symroute_gateway_up{gateway=\"isp1\"}"),
        0.0,
        "{page}"
    );
    assert_eq!(must(&page, "symroute_gateway_up{gateway=\"isp2\"}"), 1.0);
    assert_eq!(
        must(&page, "symroute_failovers_total{gateway=\"isp1\"}"),
        1.0
    );
    assert_eq!(
        must(&page, "symroute_failovers_total{gateway=\"isp2\"}"),
        0.0
    );
    assert_eq!(must(&page, "symroute_connections{gateway=\"isp1\"}"), 0.0);
    assert_eq!(must(&page, "symroute_connections{gateway=\"isp2\"}"), 1.0);
    assert!(must(&page, "symroute_probe_loss_ratio{gateway=\"isp1\"}") >= 0.6);
    assert!(must(&page, "symroute_reconcile_duration_seconds_count") > count);

    // `/` links the metrics; nothing else is served.
    let (status, index) = get(lab, "/");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(index.contains("<a href=\"/metrics\">"), "{index}");
    assert_eq!(get(lab, "/metrics/../x").0, "HTTP/1.0 404 Not Found");
}

/// Every metric contrib/grafana/symroute.json and contrib/prometheus/symroute-alerts.yml
/// query has samples on the real page (once the probes have measured a round trip).
fn dashboard_and_alerts_query_what_the_page_has(lab: &TwoIsps) {
    let deadline = std::time::Instant::now() + LIMIT;
    let page = loop {
        let page = scrape(lab);
        if value(&page, "symroute_probe_rtt_seconds{gateway=\"isp1\"}").is_some() {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no round trip yet:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let samples: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("contrib/grafana/symroute.json").expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = vec![dashboard["templating"]["list"][1]["definition"].to_string()];
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            queries.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    let alerts = std::fs::read_to_string("contrib/prometheus/symroute-alerts.yml").expect("rules");
    queries.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(str::to_string),
    );
    let mut used = std::collections::BTreeSet::new();
    for q in &queries {
        for word in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("symroute_") || word.starts_with("process_") {
                used.insert(word.to_string());
            }
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for m in &used {
        assert!(
            samples.contains(m.as_str()),
            "{m} is queried but not on the page:\n{page}"
        );
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The process and build metrics every exporter has, and the reload and apply-error
/// figures following SIGHUP, `symroute apply` through the daemon and a conflict.
#[test]
fn metrics_have_process_build_reload_and_apply_errors() {
    let s = setup();
    let lab = &s.lab;
    let before_start = unix_now();
    let d = start(lab);
    let page = scrape(lab);

    // process_*: this daemon's own figures.
    let started = must(&page, "process_start_time_seconds");
    assert!(
        started > before_start - 2.0 && started <= unix_now(),
        "started {started}, test began {before_start}"
    );
    let (fds, max) = (
        must(&page, "process_open_fds"),
        must(&page, "process_max_fds"),
    );
    assert!(fds >= 3.0 && fds < max, "{fds} of {max}");
    assert!(must(&page, "process_resident_memory_bytes") > 1e6, "{page}");
    assert!(
        must(&page, "process_virtual_memory_bytes") >= must(&page, "process_resident_memory_bytes")
    );
    assert!(must(&page, "process_cpu_seconds_total") > 0.0);
    for name in [
        "process_cpu_seconds_total counter",
        "process_open_fds gauge",
        "symroute_apply_errors_total counter",
        "symroute_config_last_reload_successful gauge",
    ] {
        assert!(page.contains(&format!("# TYPE {name}\n")), "{name}");
    }

    // Build info: version and the commit of this checkout.
    let commit = env!("BUILT_FROM_COMMIT");
    assert_eq!(
        must(
            &page,
            &format!(
                "symroute_build_info{{version=\"{}\",commit=\"{commit}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "built in a git checkout, the commit is a hash: {commit}"
        );
    }

    dashboard_and_alerts_query_what_the_page_has(lab);

    // The config taken at startup.
    assert_eq!(must(&page, "symroute_config_last_reload_successful"), 1.0);
    let t0 = must(
        &page,
        "symroute_config_last_reload_success_timestamp_seconds",
    );
    assert!(t0 >= before_start - 2.0 && t0 <= unix_now(), "{t0}");
    assert_eq!(must(&page, "symroute_apply_errors_total"), 0.0);

    // SIGHUP with a broken file: refused (0), the timestamp stays.
    std::fs::write(d.config_path(), "[[gateway]]\nname = 1\n").expect("break config");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reload failed", LIMIT);
    let page = scrape(lab);
    assert_eq!(must(&page, "symroute_config_last_reload_successful"), 0.0);
    assert_eq!(
        must(
            &page,
            "symroute_config_last_reload_success_timestamp_seconds"
        ),
        t0
    );
    // Fixed: taken again, later.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(d.config_path(), config()).expect("fix config");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log("reconciled after reloading the config", LIMIT);
    let page = scrape(lab);
    assert_eq!(must(&page, "symroute_config_last_reload_successful"), 1.0);
    let t1 = must(
        &page,
        "symroute_config_last_reload_success_timestamp_seconds",
    );
    assert!(t1 > t0, "{t1} after {t0}");

    // `symroute apply` of a bad file never reaches the daemon: `apply` checks it first.
    let bad = d.file("bad.toml", "[[gateway]]\nname = 1\n");
    let run = support::daemon::with_config(&["apply"], &bad, &lab.fw);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        must(&scrape(lab), "symroute_config_last_reload_successful"),
        1.0
    );

    // A foreign rule at one of symroute's priorities: each reconcile meeting it fails…
    let (rule, _) = support::our_rule(&lab.fw, 42025);
    let pref = rule.split(':').next().expect("pref").trim().to_string();
    let foreign = format!("rule add pref {pref} from 192.0.2.98 lookup main");
    lab.fw.ip(&foreign).expect("conflicting rule");
    d.wait_log("not applying, a foreign object is in the way", LIMIT);
    let errors = must(&scrape(lab), "symroute_apply_errors_total");
    assert!(errors >= 1.0, "{errors}");
    // …and so does an `apply` through the daemon, which then goes back: refused.
    let good = d.file("good.toml", &config());
    let run = support::daemon::with_config(&["apply"], &good, &lab.fw);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let page = scrape(lab);
    assert_eq!(must(&page, "symroute_config_last_reload_successful"), 0.0);
    assert!(
        must(&page, "symroute_apply_errors_total") > errors,
        "{page}"
    );
    // Once the rule is gone, the same apply is taken.
    lab.fw
        .ip(&foreign.replace("rule add", "rule del"))
        .expect("delete the conflicting rule");
    support::daemon::with_config(&["apply"], &good, &lab.fw).ok();
    let page = scrape(lab);
    assert_eq!(must(&page, "symroute_config_last_reload_successful"), 1.0);
    assert!(
        must(
            &page,
            "symroute_config_last_reload_success_timestamp_seconds"
        ) > t1
    );
}
