//! The netlink layer against a real kernel, inside private namespaces: requests come back
//! from the kernel's dumps as the same specs, batches bigger than one datagram and
//! multi-part dumps work, errors name the `ip` command and the errno, and foreign rules
//! and routes read exactly like `ip rule` / `ip route` print them. Needs root and `ip`.

use crate::support;

use std::collections::BTreeSet;

use symroute::kernel::netlink::{convert, Netlink, Request};
use symroute::lab::{in_netns, veth, Netns};
use symroute::model::{Family, Priority, TableId};
use symroute::plan::{RouteKind, RouteSpec, RuleAction, RuleSpec};

fn host() -> (Netns, Netns) {
    support::require_root();
    let ns = Netns::new("nl").expect("netns");
    let peer = Netns::new("nlpeer").expect("netns");
    veth(&ns, "up1", &peer, "p1").expect("veth");
    ns.ip("addr add 203.0.113.2/24 dev up1").expect("addr");
    ns.ip("-6 addr add 2001:db8:1::2/64 dev up1").expect("addr");
    (ns, peer)
}

fn rule(family: Family, prio: u32, fwmark: Option<(u32, u32)>, action: RuleAction) -> RuleSpec {
    RuleSpec {
        priority: Priority::from_kernel(prio),
        family,
        from: None,
        iif_lo: false,
        fwmark,
        action,
        suppress_prefixlength: None,
    }
}

fn route(table: u32, kind: RouteKind, dst: &str, via: Option<&str>, dev: &str) -> RouteSpec {
    let dst: ipnet::IpNet = dst.parse().expect("prefix");
    RouteSpec {
        table: TableId::from_kernel(table),
        family: Family::of(&dst.addr()),
        kind,
        dst,
        via: via.map(|v| v.parse().expect("address")),
        dev: dev.into(),
    }
}

fn ours(nl: &mut Netlink) -> (BTreeSet<RuleSpec>, BTreeSet<RouteSpec>) {
    let (links, _) = nl.dump_links_addrs().expect("link dump");
    let names = convert::link_names(&links);
    let mut rules = BTreeSet::new();
    let mut routes = BTreeSet::new();
    for family in [Family::Inet4, Family::Inet6] {
        rules.extend(
            nl.dump_rules(family)
                .expect("rule dump")
                .iter()
                .filter_map(convert::rule_spec),
        );
        routes.extend(
            nl.dump_routes(family)
                .expect("route dump")
                .iter()
                .filter_map(|r| convert::route_spec(r, &names)),
        );
    }
    (rules, routes)
}

#[test]
fn requests_round_trip_through_the_kernel() {
    let (ns, _peer) = host();
    in_netns(ns.name(), || {
        let mut nl = Netlink::open().expect("open");
        let mask = 0xff00_0000;
        let t = TableId::from_kernel;
        let mut rules = vec![
            rule(Family::Inet4, 3000, Some((0, mask)), RuleAction::Goto(Priority::from_kernel(3003))),
            rule(Family::Inet4, 3001, Some((0x0100_0000, mask)), RuleAction::Lookup(t(42000))),
            rule(Family::Inet6, 3001, Some((0x0100_0000, mask)), RuleAction::Lookup(t(42000))),
            rule(Family::Inet4, 3003, Some((0x0300_0000, mask)), RuleAction::Lookup(t(100))),
        ];
        for family in [Family::Inet4, Family::Inet6] {
            let mut main = rule(family, 3002, None, RuleAction::Lookup(TableId::MAIN));
            main.suppress_prefixlength = Some(0);
            rules.push(main.clone());
            // The local-only twin and the source rules of local replies.
            main.priority = Priority::from_kernel(3004);
            main.iif_lo = true;
            rules.push(main);
        }
        for addr in ["203.0.113.2", "203.0.113.3", "2001:db8:1::2"] {
            let a = addr.parse().expect("address");
            rules.push(RuleSpec::from_addr(Priority::from_kernel(3005), a, t(42000)));
        }
        let mut routes = vec![
            route(42000, RouteKind::Unicast, "0.0.0.0/0", Some("203.0.113.1"), "up1"),
            route(42000, RouteKind::Unicast, "203.0.113.0/24", None, "up1"),
            route(42000, RouteKind::Unicast, "::/0", Some("2001:db8:1::1"), "up1"),
            route(42000, RouteKind::Unicast, "2001:db8:1::/64", None, "up1"),
            route(100, RouteKind::Local, "0.0.0.0/0", None, "lo"),
            route(100, RouteKind::Local, "::/0", None, "lo"),
        ];
        // More than one datagram of requests, and a dump in several parts.
        routes.extend((0..300).map(|i| {
            let dst = format!("10.{}.{}.0/24", i / 256, i % 256);
            route(42001, RouteKind::Unicast, &dst, Some("203.0.113.9"), "up1")
        }));
        let add = |v: &[RouteSpec]| v.iter().cloned().map(Request::AddRoute).collect::<Vec<_>>();
        nl.apply(&add(&routes), false).expect("add routes");
        let rule_adds: Vec<Request> = rules.iter().cloned().map(Request::AddRule).collect();
        nl.apply(&rule_adds, false).expect("add rules");
        let (seen_rules, seen_routes) = ours(&mut nl);
        assert_eq!(seen_rules, rules.iter().cloned().collect());
        assert_eq!(seen_routes, routes.iter().cloned().collect());

        // A duplicate: the error names the request as `ip` spells it, and the errno.
        let err = nl
            .apply(&rule_adds[1..2], false)
            .expect_err("duplicate rule")
            .to_string();
        assert!(
            err.contains("`ip -4 rule add pref 3001 fwmark 0x1000000/0xff000000 lookup 42000 protocol 157` failed: File exists"),
            "{err}"
        );
        // A route on a missing interface never reaches the kernel.
        let missing = route(42000, RouteKind::Unicast, "192.0.2.0/24", None, "nosuch0");
        let err = nl
            .apply(&[Request::AddRoute(missing.clone())], false)
            .expect_err("missing interface")
            .to_string();
        assert!(
            err.contains("ip -4 route add 192.0.2.0/24 dev nosuch0 table 42000") && err.contains("\"nosuch0\""),
            "{err}"
        );
        // Best effort reports every failure, and still does what it can.
        let extra = route(42000, RouteKind::Unicast, "198.51.100.0/24", Some("203.0.113.1"), "up1");
        let mixed = [
            rule_adds[1].clone(),
            Request::AddRoute(missing),
            Request::AddRoute(routes[0].clone()),
            Request::AddRoute(extra.clone()),
        ];
        let err = nl.apply(&mixed, true).expect_err("failures").to_string();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.contains("ip -4 route add 0.0.0.0/0 via 203.0.113.1"), "{err}");
        routes.push(extra);
        assert_eq!(ours(&mut nl).1, routes.iter().cloned().collect());

        // Deleting what the dumps show removes all of it.
        let del_routes: Vec<Request> = routes.iter().cloned().map(Request::DelRoute).collect();
        let del_rules: Vec<Request> = rules.iter().cloned().map(Request::DelRule).collect();
        nl.apply(&del_routes, false).expect("delete routes");
        nl.apply(&del_rules, false).expect("delete rules");
        let (r, t) = ours(&mut nl);
        assert!(r.is_empty() && t.is_empty(), "left behind: {r:?} {t:?}");
        // Deleting again fails, naming the object.
        let err = nl.apply(&del_rules[..1], false).expect_err("gone").to_string();
        assert!(err.contains("ip -4 rule del pref 3000"), "{err}");
    })
    .expect("in netns");
}

#[test]
fn foreign_objects_read_like_ip_prints_them() {
    let (ns, _peer) = host();
    for r in [
        "rule add pref 3000 lookup main",
        "rule add fwmark 0x01000000/0x0f000000 lookup 100",
        "rule add not fwmark 0xca6c lookup 51820 pref 32764",
        "rule add from 10.1.0.0/16 iif up1 lookup 200 pref 4000",
        "rule add from 10.1.2.3 to 10.2.0.0/16 tos 0x10 lookup 200 pref 4000",
        "rule add from 10.3.0.0/16 pref 4002 blackhole",
        "rule add pref 4003 goto 4005",
        "rule add pref 4004 fwmark 0/0xff nop",
        "rule add pref 4005 lookup 40000 protocol bgp",
        "-6 rule add to fd00::/8 oif up1 ipproto tcp dport 25 lookup 300 pref 4001",
        "-6 rule add sport 1000-2000 uidrange 100-200 lookup main suppress_prefixlength 0 pref 4006",
        "route add 10.99.0.0/24 dev up1 table 42000",
        "route add blackhole 10.9.0.0/16 table 77",
        "route add 10.7.7.7 via 203.0.113.1 dev up1 table 78 proto static",
        "-6 route add fd99::/64 via 2001:db8:1::5 dev up1 table 300",
    ] {
        ns.ip(r).unwrap_or_else(|e| panic!("ip {r}: {e:#}"));
    }
    let mut ip_rules = Vec::new();
    let mut ip_routes = Vec::new();
    for fam in ["-4", "-6"] {
        let text = ns.ip(&format!("{fam} rule show")).expect("ip rule");
        ip_rules.extend(
            text.lines()
                .map(|l| l.replace('\t', " ").trim().to_string()),
        );
        let text = ns
            .ip(&format!("{fam} route show table all"))
            .expect("ip route");
        ip_routes.extend(
            text.lines()
                .filter(|l| l.contains(" table ") && !l.contains(" table local"))
                .map(|l| l.trim().to_string()),
        );
    }
    let (rules, routes) = in_netns(ns.name(), || {
        let mut nl = Netlink::open().expect("open");
        let (links, _) = nl.dump_links_addrs().expect("links");
        let names = convert::link_names(&links);
        let mut rules = Vec::new();
        let mut routes = Vec::new();
        for family in [Family::Inet4, Family::Inet6] {
            rules.extend(
                nl.dump_rules(family)
                    .expect("rules")
                    .iter()
                    .map(convert::rule_text),
            );
            routes.extend(
                nl.dump_routes(family)
                    .expect("routes")
                    .iter()
                    .filter(|r| ![254, 255].contains(&convert::route_table(r).id()))
                    .map(|r| convert::route_text(r, &names)),
            );
        }
        (rules, routes)
    })
    .expect("in netns");
    assert_eq!(rules, ip_rules);
    // `ip route` adds scope, metric and preference after what the messages show.
    assert_eq!(routes.len(), ip_routes.len(), "{routes:#?}\n{ip_routes:#?}");
    for (ours, ip) in routes.iter().zip(&ip_routes) {
        assert!(ip.starts_with(ours.as_str()), "{ours:?} vs ip's {ip:?}");
    }
}

/// Our table's fingerprint read over nfnetlink (what a daemon's repair from a kept
/// listing uses, `observe::our_table`) is the one a full observe reads from the listing:
/// none without the table, empty for a table without a fingerprint chain (a chain of that
/// name in another table does not count), and the chain's suffix once there is one.
#[test]
fn our_table_reads_over_nfnetlink_as_from_the_listing() {
    use symroute::kernel::observe;
    let (ns, _peer) = host();
    let nft = |script: &str| ns.nft(script).expect("nft");
    let both = || {
        in_netns(ns.name(), || {
            (
                observe::our_table().expect("nfnetlink"),
                observe::observe().expect("observe").nft_fingerprint,
            )
        })
        .expect("in the namespace")
    };
    assert_eq!(both(), (None, None));
    nft("add table inet other\nadd chain inet other fingerprint_theirs\nadd table ip symroute\nadd chain ip symroute fingerprint_ip\n");
    assert_eq!(both(), (None, None));
    nft("add table inet symroute\nadd chain inet symroute pre\n");
    assert_eq!(both(), (Some(String::new()), Some(String::new())));
    nft("add chain inet symroute fingerprint_0123abcd\n");
    let fp = Some("0123abcd".to_string());
    assert_eq!(both(), (fp.clone(), fp));
    // Two: not a table symroute wrote, whichever is read first.
    nft("add chain inet symroute fingerprint_00000000\n");
    assert_eq!(both(), (Some(String::new()), Some(String::new())));
}

/// Our table's named counters read over nfnetlink (`nft_rules::counters`, what status,
/// metrics and every table replace use) are what `nft -j list counters` shows: counters
/// of other tables (one of the same name) and other object kinds are not ours, and
/// there are none without the table.
#[test]
fn counters_read_over_nfnetlink_as_nft_lists_them() {
    use symroute::kernel::nft_rules::counters;
    let (ns, _peer) = host();
    let read = || {
        in_netns(ns.name(), || counters("symroute").expect("nfnetlink")).expect("in the namespace")
    };
    assert_eq!(read(), None);
    ns.nft("add table inet symroute\nadd counter inet symroute p0_web { packets 5 bytes 300 }\nadd counter inet symroute p1_mail { packets 1099511627776 bytes 7 }\nadd counter inet symroute empty\nadd quota inet symroute q { 100 bytes }\nadd table inet other\nadd counter inet other p0_web { packets 9 bytes 9 }\nadd table ip symroute\nadd counter ip symroute p0_web { packets 1 bytes 1 }\n")
        .expect("nft");
    let ours = read().expect("the table exists");
    let listed = ns
        .exec(&["nft", "-j", "list", "counters", "table", "inet", "symroute"])
        .expect("nft list counters");
    let by_nft =
        symroute::kernel::status::counters_in(&serde_json::from_str(&listed).expect("json"));
    assert_eq!(ours, by_nft);
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_eq!(ours["p0_web"], (5, 300));
    assert_eq!(ours["p1_mail"], (1 << 40, 7));
    assert_eq!(ours["empty"], (0, 0));
}
