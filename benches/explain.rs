//! explain on the 10,000-selector plan (64 gateways): time to lay the plan over a host's
//! state and to trace one connection (first packet and reply) through it. Pure: the host
//! state is generated in memory, no root needed. Prints figures; target < 50 ms per
//! explain. Run: `cargo bench --bench explain`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use common::{big_config, median_f64, BIG_GATEWAYS};
use symroute::explain::host::HostState;
use symroute::explain::trace::{explain, PacketSpec};

/// Snapshot files of a host with the 64 gateway interfaces up (as `ip`/`sysctl` print them).
fn files() -> BTreeMap<String, String> {
    let mut addr = String::from("[{\"ifindex\":1,\"ifname\":\"lo\",\"flags\":[\"LOOPBACK\",\"UP\",\"LOWER_UP\"],\"operstate\":\"UNKNOWN\",\"addr_info\":[{\"family\":\"inet\",\"local\":\"127.0.0.1\",\"prefixlen\":8}]}");
    let mut routes = String::new();
    let mut local = String::new();
    let mut sysctl =
        String::from("net.ipv4.conf.all.rp_filter = 0\nnet.ipv4.conf.all.forwarding = 1\n");
    for i in 0..BIG_GATEWAYS {
        let _ = write!(addr, ",{{\"ifindex\":{},\"ifname\":\"gw{i}\",\"flags\":[\"BROADCAST\",\"UP\",\"LOWER_UP\"],\"operstate\":\"UP\",\"address\":\"02:00:00:00:00:{i:02x}\",\"addr_info\":[{{\"family\":\"inet\",\"local\":\"10.{i}.0.2\",\"prefixlen\":24}}]}}", i + 2);
        let _ = writeln!(
            routes,
            "10.{i}.0.0/24 dev gw{i} proto kernel scope link src 10.{i}.0.2"
        );
        let _ = writeln!(
            local,
            "local 10.{i}.0.2 dev gw{i} table local proto kernel scope host src 10.{i}.0.2"
        );
        let _ = writeln!(
            sysctl,
            "net.ipv4.conf.gw{i}.rp_filter = 0\nnet.ipv4.conf.gw{i}.forwarding = 1"
        );
    }
    addr.push(']');
    let routes = format!("default via 10.0.0.1 dev gw0\n{routes}{local}");
    let mut f = BTreeMap::new();
    f.insert("ip-rule.txt".into(), "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n".into());
    f.insert(
        "ip6-rule.txt".into(),
        "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n".into(),
    );
    f.insert("ip-route.txt".into(), routes);
    f.insert("ip-addr.json".into(), addr);
    f.insert("sysctl.txt".into(), sysctl);
    f
}

fn main() {
    let model =
        symroute::config::parse_str(&big_config(), "big.toml").expect("generated config is valid");
    let base =
        HostState::from_files(&files(), Vec::new(), "generated").expect("generated state parses");
    let mut overlay_ms = Vec::new();
    let mut explain_ms = Vec::new();
    let mut last = None;
    for run in 0..10 {
        let t = Instant::now();
        let mut host = base.clone();
        let plan = symroute::plan::build(&model, &host.host_view());
        host.overlay(&plan).expect("overlay");
        overlay_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // A proxied connection from policy 37's MACs and addresses: classification has to
        // get through the map, the check chain and the reply's restore.
        let gw = 37 + run % 3;
        let p = PacketSpec {
            in_interface: Some(format!("gw{gw}")),
            source_mac: Some(format!("02:5a:{gw:02x}:00:00:05")),
            source: Some(format!("100.{}.0.3", 64 + gw).parse::<IpAddr>().unwrap()),
            destination: "10.0.0.2".parse().unwrap(),
            protocol: 6,
            source_port: Some(40000),
            destination_port: Some(25),
            mark: 0,
            uid: None,
            cgroup: None,
        };
        let t = Instant::now();
        let e = explain(&host, &p);
        explain_ms.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some((gw, e));
    }
    let (gw, e) = last.expect("ran");
    println!("explain on the 10,000-selector plan ({BIG_GATEWAYS} gateways), median / max of 10");
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "  build plan + overlay on host state  {:8.2} / {:8.2} ms",
        median_f64(&overlay_ms),
        max(&overlay_ms)
    );
    println!(
        "  explain one connection (both legs)  {:8.2} / {:8.2} ms   target < 50 ms: {}",
        median_f64(&explain_ms),
        max(&explain_ms),
        if median_f64(&explain_ms) < 50.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let reply = e
        .reply
        .as_ref()
        .map(|r| (r.verdict.interface.clone(), r.verdict.mark.clone()));
    println!("  last trace: first packet {} ct mark {}; reply {:?} (expected out gw{gw}, mark of gateway {gw})", e.verdict.kind, e.verdict.ct_mark, reply);
}
