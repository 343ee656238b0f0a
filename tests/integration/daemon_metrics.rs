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

const METRICS: &str = "127.0.0.1:9469";
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
    metrics::get(&lab.fw, METRICS, path)
}

fn scrape(lab: &TwoIsps) -> String {
    metrics::scrape(&lab.fw, METRICS)
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

    // Nothing but GET /metrics.
    assert_eq!(get(lab, "/").0, "HTTP/1.0 404 Not Found");
    assert_eq!(get(lab, "/metrics/../x").0, "HTTP/1.0 404 Not Found");
}

#[test]
fn check_refuses_a_remote_metrics_address_without_the_opt_in() {
    let dir = std::env::temp_dir().join(format!("symroute-metrics-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("symroute.toml");
    let remote = config().replace(METRICS, "0.0.0.0:9469");
    std::fs::write(&path, &remote).expect("write");
    let p = path.display().to_string();
    let refused = support::symroute(&["check", "-c", &p]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "{p}:2:11: settings.metrics: 0.0.0.0:9469 is not a loopback address"
        )) && refused.stderr.contains("metrics_allow_remote = true"),
        "{}",
        refused.stderr
    );
    let opted_in = remote.replacen(
        "[settings]\n",
        "[settings]\nmetrics_allow_remote = true\n",
        1,
    );
    std::fs::write(&path, opted_in).expect("write");
    let accepted = support::symroute(&["check", "-c", &p]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
}
