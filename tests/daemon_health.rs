//! `symroute run` with `[gateway.check]` on the two-ISP firewall lab: isp1's upstream (its
//! link to the client, the check target) dies while the firewall's own link stays up; the
//! health checks declare isp1 down, its table loses its default route (reply_via isp1
//! falls back to the main table), and after the upstream is restored the routes come
//! back. Detection and recovery times are printed; assertions allow a generous 5 s.
//! Needs root, `nft` and `ip`.

mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::require_root;
use symroute::kernel::netlink::{convert, Netlink};
use symroute::lab::{in_netns, Netns, TwoIsps};
use symroute::model::Family;
use symroute::plan::RT_PROTO;

const ISP1_TABLE: u32 = 42000;
const LIMIT: Duration = Duration::from_secs(5);

/// Whether table 42000 holds our IPv4 default route.
fn has_default(ns: &Netns) -> bool {
    in_netns(ns.name(), || {
        let mut nl = Netlink::open().expect("netlink");
        let names = convert::link_names(&nl.dump_links().expect("dump links"));
        nl.dump_routes(Family::Inet4)
            .expect("dump routes")
            .iter()
            .filter(|r| u8::from(r.header.protocol) == RT_PROTO)
            .filter_map(|r| convert::route_spec(r, &names))
            .any(|r| r.table.id() == ISP1_TABLE && r.dst.prefix_len() == 0)
    })
    .expect("in netns")
}

/// Polls until `has_default` equals `want`; the time it took.
fn wait_default(d: &Daemon, want: bool, what: &str) -> Duration {
    let t0 = Instant::now();
    while has_default(d.ns) != want {
        assert!(
            t0.elapsed() < LIMIT,
            "{what}: table {ISP1_TABLE} default route present={} after {LIMIT:?}; log:\n{}",
            !want,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

#[test]
fn a_dead_upstream_takes_the_gateway_down_and_back() {
    require_root();
    let lab = TwoIsps::build().expect("build TwoIsps");
    let config = include_str!("../examples/two-isps-firewall.toml").replacen(
        "via6 = \"2001:db8:1::1\"\n",
        "via6 = \"2001:db8:1::1\"\n[gateway.check]\ntargets = [\"192.0.2.10\"]\ninterval = \"100ms\"\ntimeout = \"200ms\"\n",
        1,
    );
    assert!(config.contains("[gateway.check]"));
    let d = Daemon::start(&lab.fw, &config);
    let t = wait_default(&d, true, "start");
    eprintln!("table {ISP1_TABLE} has its default route {t:?} after start");
    // Let the probes fill their window with good results first.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        has_default(&lab.fw),
        "isp1 went down with its upstream intact; log:\n{}",
        d.log()
    );

    lab.isp1.ip("link set cl0 down").expect("cl0 down");
    let down = wait_default(&d, false, "after isp1's upstream died");
    eprintln!(
        "isp1 upstream down: detected, table {ISP1_TABLE} lost its default route after {:.0} ms",
        down.as_secs_f64() * 1e3
    );
    assert!(d.log().contains("gateway isp1 down: "), "log:\n{}", d.log());
    let fw_up1 = lab.fw.ip("-o link show up1").expect("ip link");
    assert!(
        !fw_up1.contains("state DOWN"),
        "the firewall's link must stay up: {fw_up1}"
    );

    lab.isp1.ip("link set cl0 up").expect("cl0 up");
    let up = wait_default(&d, true, "after isp1's upstream came back");
    eprintln!(
        "isp1 upstream restored: table {ISP1_TABLE} has its default route again after {:.0} ms",
        up.as_secs_f64() * 1e3
    );
}
