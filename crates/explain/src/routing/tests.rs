//! Unit tests: parsers on real and hand-written outputs, the engine on small scenarios
//! (each one a kernel behaviour the differential test confirmed), and a mutation fuzz
//! test that nothing panics.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use symroute_core::model::Family;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Real `ip rule` output (iproute2 6.1, kernel 6.18), with every selector the parser
/// knows.
const RULES: &str = "0:\tfrom all lookup local
1001:\tnot from 192.0.2.0/24 lookup main
1005:\tfrom all to 10.0.0.0/8 fwmark 0/0xff blackhole
1006:\tfrom all goto 3005 [unresolved]
1010:\tfrom all fwmark 0x1/0x1 lookup 100
1012:\tfrom all lookup local suppress_ifgroup 7
1020:\tfrom all iif nonexist0 [detached] lookup 102
1025:\tfrom all to 10.1.0.0/24 oif ve0 tos 0x08 unreachable
1030:\tfrom all tos 0x10 ipproto tcp dport 25 prohibit
1040:\tfrom all to 1.2.3.0/24 sport 1000-2000 unreachable
1045:\tfrom all oif lo [detached] blackhole
1050:\tfrom all nop
3000:\tfrom all fwmark 0x1000000/0xff000000 lookup 42000 proto 157
32764:\tfrom all lookup main suppress_prefixlength 0
32766:\tfrom all lookup main
32767:\tfrom all lookup default
";

#[test]
fn parses_every_rule_form() {
    let rules = parse_ip_rules(RULES, Family::Inet4).unwrap();
    assert_eq!(rules.len(), 16);
    let by = |p: u32| rules.iter().find(|r| r.priority == p).unwrap();
    assert_eq!(by(0).action, RuleAction::Lookup(TABLE_LOCAL));
    assert!(by(0).is_default());
    assert!(by(1001).not);
    assert_eq!(by(1001).from, Some("192.0.2.0/24".parse().unwrap()));
    assert_eq!(by(1005).fwmark, Some((0, 0xff)));
    assert_eq!(by(1005).to, Some("10.0.0.0/8".parse().unwrap()));
    assert_eq!(by(1005).action, RuleAction::Blackhole);
    assert_eq!(by(1006).action, RuleAction::Goto(3005));
    assert!(by(1006).unresolved);
    assert_eq!(by(1012).suppress_ifgroup, Some(7));
    assert_eq!(by(1020).iif.as_deref(), Some("nonexist0"));
    assert!(by(1020).iif_detached);
    assert_eq!(by(1025).oif.as_deref(), Some("ve0"));
    assert_eq!(by(1025).tos, Some(0x08));
    assert_eq!(by(1030).ipproto, Some(6));
    assert_eq!(by(1030).dport, Some((25, 25)));
    assert_eq!(by(1030).action, RuleAction::Prohibit);
    assert_eq!(by(1040).sport, Some((1000, 2000)));
    assert!(by(1045).oif_detached);
    assert_eq!(by(1050).action, RuleAction::Nop);
    assert_eq!(by(3000).fwmark, Some((0x0100_0000, 0xff00_0000)));
    assert_eq!(by(3000).protocol.as_deref(), Some("157"));
    assert_eq!(by(32764).suppress_prefixlength, Some(0));
    assert_eq!(by(32767).action, RuleAction::Lookup(TABLE_DEFAULT));
    assert_eq!(
        by(3000).text,
        "3000:\tfrom all fwmark 0x1000000/0xff000000 lookup 42000 proto 157"
    );
    assert_eq!(by(3000).line, 13);
}

#[test]
fn rule_parser_accepts_hand_written_spacing_and_ipv6() {
    let r = parse_ip_rules(
        "100: not from all fwmark 0xca6c lookup 51820\n",
        Family::Inet4,
    )
    .unwrap();
    assert!(r[0].not);
    assert_eq!(r[0].fwmark, Some((0xca6c, u32::MAX)));
    assert_eq!(r[0].action, RuleAction::Lookup(51820));
    let r = parse_ip_rules(
        "1001:\tnot from 2001:db8:f2::/48 lookup main\n101:\tnot from all to 2001:db8::/32 fwmark 0x3/0xff lookup 100\n",
        Family::Inet6,
    )
    .unwrap();
    assert_eq!(r[0].priority, 101, "sorted by priority");
    assert_eq!(r[1].from, Some("2001:db8:f2::/48".parse().unwrap()));
}

#[test]
fn table_names_read_as_iproute2_does() {
    // rt_tables, then a rt_tables.d file that renames table 2, concatenated as the
    // snapshot stores them; comments, hex ids, junk after the name, junk lines.
    let names = TableNames::parse(
        "# /etc/iproute2/rt_tables\n255\tlocal\n254\tmain\n  1 SMTP # the seed's\n\
         0x2 isp2\nnot-a-number foo\n-5 negative\n3000000000 toolarge\n7 a#b\n\
         # /etc/iproute2/rt_tables.d/x.conf\n2 isp2b\n9 twice\n10 twice\n",
    );
    assert_eq!(names.id("SMTP"), Some(1));
    assert_eq!(
        names.id("isp2b"),
        Some(2),
        "the later name is the one ip prints"
    );
    assert_eq!(names.name(2), Some("isp2b"));
    assert_eq!(
        names.id("isp2"),
        Some(2),
        "an older name still means its table"
    );
    assert_eq!(names.id("a#b"), Some(7), "# inside a name is not a comment");
    assert_eq!(names.id("foo"), None);
    assert_eq!(names.id("negative"), None);
    assert_eq!(names.id("toolarge"), None);
    assert_eq!(names.id("main"), Some(254));
    assert_eq!(names.id("12"), Some(12));
    assert_eq!(names.id("twice"), None);
    assert_eq!(names.ambiguous("twice").map(|s| s.len()), Some(2));
    let e = parse_ip_rules_with("5:\tfrom all lookup twice\n", Family::Inet4, &names).unwrap_err();
    assert!(e.message.contains("9 and 10"), "{e}");
    // Bounded: a huge file keeps at most MAX_NAMES names, and over-long names are dropped.
    let mut big = String::new();
    for i in 0..(TableNames::MAX_NAMES + 10) {
        big += &format!("{i} t{i}\n");
    }
    big += &format!("5 {}\n", "x".repeat(TableNames::MAX_NAME_LEN + 1));
    let names = TableNames::parse(&big);
    assert_eq!(
        names.id(&format!("t{}", TableNames::MAX_NAMES - 1)),
        Some(65535)
    );
    assert_eq!(names.id(&format!("t{}", TableNames::MAX_NAMES)), None);
    // A control character in a name is data: the error quotes it escaped.
    let names = TableNames::parse("1 a\x1bb\n");
    assert_eq!(names.id("a\x1bb"), Some(1));
    let e = parse_ip_rules("5:\tfrom all lookup a\x1bb\n", Family::Inet4).unwrap_err();
    assert!(e.message.contains("a\\u{1b}b"), "{e}");
}

#[test]
fn rule_parser_errors_name_the_line() {
    let e = parse_ip_rules(
        "0:\tfrom all lookup local\n200:\tfrom all lookup isp1\n",
        Family::Inet4,
    )
    .unwrap_err();
    assert_eq!(e.line, 2);
    assert!(
        e.message.contains("isp1") && e.message.contains("rt_tables"),
        "{e}"
    );
    let names = TableNames::parse("# comment\n42000 isp1\n");
    let r = parse_ip_rules_with("200:\tfrom all lookup isp1\n", Family::Inet4, &names).unwrap();
    assert_eq!(r[0].action, RuleAction::Lookup(42000));

    let e = parse_ip_rules("from all lookup main\n", Family::Inet4).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("PRIORITY"), "{e}");
    let e = parse_ip_rules("\n\n5:\tfrom 2001:db8::/32 lookup main\n", Family::Inet4).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.message.contains("IPv6"), "{e}");
    let e = parse_ip_rules("5:\tfrom all fwmark\n", Family::Inet4).unwrap_err();
    assert!(e.message.contains("fwmark"), "{e}");
    let e = parse_ip_rules("5:\tfrom all\n", Family::Inet4).unwrap_err();
    assert!(e.message.contains("no action"), "{e}");
}

#[test]
fn rule_selectors_we_do_not_model_are_kept_and_never_match() {
    let r = parse_ip_rules(
        "10:\tfrom all uidrange 1000-2000 lookup 7\n11:\tfrom all lookup [l3mdev-table]\n",
        Family::Inet4,
    )
    .unwrap();
    assert_eq!(r[0].unmodeled, vec!["uidrange 1000-2000".to_string()]);
    assert_eq!(r[1].action, RuleAction::L3mdevTable);
    let mut st = state_with(&r, "default dev eth0\n");
    st.rules.extend(defaults(Family::Inet4));
    st.sort_rules();
    let l = lookup(&st, &Query::output(ip("192.0.2.1")));
    let step = l.steps.iter().find(|s| s.priority == Some(10)).unwrap();
    assert!(
        !step.matched && step.note.contains("does not model"),
        "{step:?}"
    );
}

/// Real `ip route show table all` output: IPv4 *and* IPv6 (iproute2 prints both
/// families for `table all`), multipath, reject types, flags.
const ROUTES: &str = "default via 203.0.113.1 dev up1 table 42000 proto 157 
unreachable 10.9.0.0/16 table 100 
blackhole 10.8.0.0/16 table 100 metric 5 
prohibit 10.5.0.0/16 table 100 
throw 10.4.0.0/16 table 100 
10.7.0.0/16 table 100 
\tnexthop via 10.77.0.3 dev lan0 weight 1 
\tnexthop via 203.0.113.4 dev up1 weight 3 linkdown 
203.0.113.0/24 via 192.0.2.9 dev up1 table 100 metric 10 onlink 
172.16.1.0/24 tos 0x08 via 10.77.0.20 dev lan0 table 100 metric 100 
default proto static metric 10 
\tnexthop via 10.0.0.1 dev a weight 1 
\tnexthop via 10.0.1.1 dev b weight 2 dead linkdown 
10.77.0.0/24 dev lan0 proto kernel scope link src 10.77.0.1 
203.0.113.0/24 dev up1 proto kernel scope link src 203.0.113.2 mtu lock 1400 advmss 1360 rt_offload 
local 10.77.0.1 dev lan0 table local proto kernel scope host src 10.77.0.1 
broadcast 10.77.0.255 dev lan0 table local proto kernel scope link src 10.77.0.1 
local 203.0.113.2 dev up1 table local proto kernel scope host src 203.0.113.2 
local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1 
2001:db8:1::/64 dev up1 proto kernel metric 256 pref medium
default via fe80::1 dev up1 proto ra metric 1024 expires 1797sec hoplimit 64 pref medium
blackhole default dev lo table 42000 metric 1024 pref medium
fe80::/64 dev eth0 proto kernel metric 256 pref medium
local 2001:db8:1::2 dev up1 table local proto kernel metric 0 pref medium
anycast fe80:: dev eth0 table local proto kernel metric 0 pref medium
multicast ff00::/8 dev eth0 table local proto kernel metric 256 pref medium
";

#[test]
fn parses_every_route_form() {
    let v4 = parse_ip_routes(ROUTES, Family::Inet4).unwrap();
    assert_eq!(
        v4.len(),
        15,
        "IPv6 entries of `table all` output are skipped"
    );
    let find = |t: &str| v4.iter().find(|r| r.text.starts_with(t)).unwrap();
    let d = find("default via 203.0.113.1");
    assert_eq!((d.table, d.kind), (42000, RouteKind::Unicast));
    assert_eq!(d.dst, "0.0.0.0/0".parse().unwrap());
    assert_eq!(d.nexthops[0].via, Some(ip("203.0.113.1")));
    assert_eq!(d.nexthops[0].dev.as_deref(), Some("up1"));
    assert_eq!(d.protocol.as_deref(), Some("157"));
    assert_eq!(find("unreachable").kind, RouteKind::Unreachable);
    assert!(find("unreachable").nexthops.is_empty());
    assert_eq!(find("blackhole").metric, 5);
    assert_eq!(find("prohibit").kind, RouteKind::Prohibit);
    assert_eq!(find("throw").kind, RouteKind::Throw);
    let mp = find("10.7.0.0/16");
    assert_eq!(mp.nexthops.len(), 2);
    assert_eq!(mp.nexthops[1].weight, 3);
    assert!(mp.nexthops[1].linkdown && !mp.nexthops[1].dead);
    assert_eq!(mp.text.lines().count(), 3);
    assert!(find("203.0.113.0/24 via").nexthops[0].onlink);
    assert_eq!(find("172.16.1.0/24").tos, 0x08);
    let main_mp = find("default proto static");
    assert_eq!((main_mp.table, main_mp.metric), (TABLE_MAIN, 10));
    assert!(main_mp.nexthops[1].dead);
    let conn = find("10.77.0.0/24");
    assert_eq!(conn.scope.as_deref(), Some("link"));
    assert_eq!(conn.prefsrc, Some(ip("10.77.0.1")));
    assert_eq!(conn.metric, 0);
    assert_eq!(
        find("203.0.113.0/24 dev up1").nexthops[0].dev.as_deref(),
        Some("up1")
    );
    let local = find("local 10.77.0.1");
    assert_eq!((local.kind, local.table), (RouteKind::Local, TABLE_LOCAL));
    assert_eq!(local.dst, "10.77.0.1/32".parse().unwrap());
    assert_eq!(find("broadcast").kind, RouteKind::Broadcast);

    let v6 = parse_ip_routes(ROUTES, Family::Inet6).unwrap();
    assert_eq!(v6.len(), 7);
    let find6 = |t: &str| v6.iter().find(|r| r.text.starts_with(t)).unwrap();
    assert_eq!(find6("fe80::/64").metric, 256);
    assert_eq!(find6("default via fe80::1").metric, 1024);
    assert_eq!(find6("default via fe80::1").pref.as_deref(), Some("medium"));
    assert_eq!(
        find6("blackhole default").nexthops[0].dev.as_deref(),
        Some("lo")
    );
    assert_eq!(find6("anycast").kind, RouteKind::Anycast);
    assert_eq!(find6("anycast").dst, "fe80::/128".parse().unwrap());
    assert_eq!(find6("multicast").kind, RouteKind::Multicast);
}

#[test]
fn ipv6_defaults_and_duplicate_dumps() {
    // `ip -6 route show table all` prints the whole dump twice on kernel 6.x.
    let once = "2001:db8::/64 dev eth0 metric 1024 pref medium\nunreachable 2001:db8:6::/48 dev lo table 100 metric 1024 pref medium\n";
    let twice = format!("{once}{once}");
    let r = parse_ip_routes(&twice, Family::Inet6).unwrap();
    assert_eq!(r.len(), 2);
    let r = parse_ip_routes("2001:db8::/64 dev eth0\n", Family::Inet6).unwrap();
    assert_eq!(r[0].metric, 1024, "IPv6 routes default to metric 1024");
}

#[test]
fn route_parser_errors() {
    let e = parse_ip_routes("\tnexthop via 10.0.0.1 dev a\n", Family::Inet4).unwrap_err();
    assert_eq!(e.line, 1);
    let e =
        parse_ip_routes("10.0.0.0/8 dev eth0\n10.1.0.0/33 dev eth0\n", Family::Inet4).unwrap_err();
    assert_eq!(e.line, 2);
    let e = parse_ip_routes("10.0.0.0/8 dev\n", Family::Inet4).unwrap_err();
    assert!(e.message.contains("dev"), "{e}");
    let e = parse_ip_routes("10.0.0.0/8 dev x table isp\n", Family::Inet4).unwrap_err();
    assert!(e.message.contains("isp"), "{e}");
    // Unknown words are skipped.
    let r = parse_ip_routes(
        "10.0.0.0/8 dev x frobnicate pervasive offload\n",
        Family::Inet4,
    )
    .unwrap();
    assert_eq!(r[0].nexthops[0].dev.as_deref(), Some("x"));
    let r = parse_ip_routes(
        "10.0.0.0/8 encap mpls 100/200 via 10.1.0.1 dev x\n",
        Family::Inet4,
    )
    .unwrap();
    assert_eq!(r[0].nexthops[0].via, Some(ip("10.1.0.1")));
}

#[test]
fn addr_json_and_sysctls() {
    let links = parse_ip_addr_json(
        r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"group":"default","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":3,"link":"va2","ifname":"va","flags":["BROADCAST","UP"],"group":"7","addr_info":[{"family":"inet","local":"10.1.0.1","prefixlen":24},{"family":"inet6","local":"2001:db8:1::1","prefixlen":64}]}]"#,
    )
    .unwrap();
    assert!(links["lo"].up && links["lo"].carrier);
    let va = &links["va"];
    assert_eq!((va.index, va.up, va.carrier, va.group), (3, true, false, 7));
    assert_eq!(va.addrs.len(), 2);
    assert!(parse_ip_addr_json("[{").is_err());

    let s = parse_sysctls(
        "net.ipv4.conf.all.rp_filter = 2\nnet.ipv4.conf.eth0/100.rp_filter=1\ngarbage\n",
    );
    assert_eq!(s["net.ipv4.conf.all.rp_filter"], "2");
    assert_eq!(s["net.ipv4.conf.eth0.100.rp_filter"], "1");
    assert_eq!(s.len(), 2);
}

#[test]
fn state_from_texts_names_the_failing_input() {
    let e = RoutingState::from_texts(&StateTexts {
        ip_rule: "0:\tfrom all lookup local\n",
        ip6_route: "2001:db8::/64 dev eth0 table bogus\n",
        ..StateTexts::default()
    })
    .unwrap_err();
    assert_eq!(e.input, "ip -6 route show table all");
    assert_eq!(e.error.line, 1);
    // IPv6 routes come from `ip route show table all` when the -6 output is missing.
    let st = RoutingState::from_texts(&StateTexts {
        ip_route: ROUTES,
        ..StateTexts::default()
    })
    .unwrap();
    assert_eq!(st.routes.len(), 22);
}

// ---- the engine ----------------------------------------------------------------------

fn defaults(family: Family) -> Vec<RuleEntry> {
    let mut v = vec![
        RuleEntry::lookup(family, 0, TABLE_LOCAL),
        RuleEntry::lookup(family, 32766, TABLE_MAIN),
    ];
    if family == Family::Inet4 {
        v.push(RuleEntry::lookup(family, 32767, TABLE_DEFAULT));
    }
    v
}

/// Rules as given, IPv4 `routes` text, links of the seed-1 firewall.
fn state_with(rules: &[RuleEntry], routes: &str) -> RoutingState {
    let mut links = BTreeMap::new();
    links.insert(
        "lo".to_string(),
        LinkState::up(1, &["127.0.0.1/8", "::1/128"]),
    );
    links.insert(
        "up1".to_string(),
        LinkState::up(2, &["203.0.113.2/24", "2001:db8:1::2/64"]),
    );
    links.insert("up2".to_string(), LinkState::up(3, &["198.51.100.2/24"]));
    links.insert("lan0".to_string(), LinkState::up(4, &["10.77.0.1/24"]));
    links.insert("eth0".to_string(), LinkState::up(5, &[]));
    RoutingState {
        rules: rules.to_vec(),
        routes: parse_ip_routes(routes, Family::Inet4).unwrap(),
        links,
        sysctls: BTreeMap::new(),
        table_names: TableNames::default(),
    }
}

/// The seed-1 firewall after `symroute apply`: replies marked 0x1000000 use ISP1.
fn firewall() -> RoutingState {
    let rules = parse_ip_rules(
        "0:\tfrom all lookup local
3000:\tfrom all fwmark 0/0xff000000 goto 3002
3001:\tfrom all fwmark 0x1000000/0xff000000 lookup 42000 proto 157
32766:\tfrom all lookup main
32767:\tfrom all lookup default
",
        Family::Inet4,
    )
    .unwrap();
    let mut st = state_with(
        &rules,
        "default via 198.51.100.1 dev up2
10.77.0.0/24 dev lan0 proto kernel scope link src 10.77.0.1
198.51.100.0/24 dev up2 proto kernel scope link src 198.51.100.2
203.0.113.0/24 dev up1 proto kernel scope link src 203.0.113.2
default via 203.0.113.1 dev up1 table 42000 proto 157
10.77.0.0/24 dev lan0 table 42000 proto 157 scope link
local 10.77.0.1 dev lan0 table local proto kernel scope host src 10.77.0.1
broadcast 10.77.0.255 dev lan0 table local proto kernel scope link src 10.77.0.1
local 203.0.113.2 dev up1 table local proto kernel scope host src 203.0.113.2
local 198.51.100.2 dev up2 table local proto kernel scope host src 198.51.100.2
",
    );
    st.sysctls
        .insert("net.ipv4.conf.all.forwarding".into(), "1".into());
    st
}

#[test]
fn marked_reply_leaves_via_isp1_and_unmarked_via_default() {
    let st = firewall();
    let mut q = Query::output(ip("192.0.2.10"));
    q.src = Some(ip("203.0.113.2"));
    let l = lookup(&st, &q);
    assert_eq!(
        l.verdict.interface.as_deref(),
        Some("up2"),
        "{:?}",
        l.verdict
    );
    assert!(l
        .steps
        .iter()
        .any(|s| s.priority == Some(3000) && s.matched));
    q.mark = 0x0100_0000;
    let l = lookup(&st, &q);
    assert_eq!(l.verdict.kind, VerdictKind::Unicast);
    assert_eq!(l.verdict.interface.as_deref(), Some("up1"));
    assert_eq!(l.verdict.via, Some(ip("203.0.113.1")));
    assert_eq!(l.verdict.table, Some(42000));
    assert_eq!(l.verdict.rule, Some(3001));
    // Deterministic, serialisable.
    let a = serde_json::to_string(&l).unwrap();
    let b = serde_json::to_string(&lookup(&st, &q)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn strict_rp_filter_drops_the_syn_from_isp1_and_loose_accepts_it() {
    let mut st = firewall();
    let q = Query::input(ip("192.0.2.10"), ip("203.0.113.2"), "up1");
    st.sysctls
        .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
    let l = lookup(&st, &q);
    assert_eq!(l.verdict.kind, VerdictKind::Drop);
    assert_eq!(l.verdict.error, Some(RouteError::InvalidArgument));
    assert!(
        l.verdict.reason.contains("rp_filter"),
        "{}",
        l.verdict.reason
    );
    assert!(l.steps.iter().any(|s| s.stage == Stage::RpFilter));
    // Effective value is max(all, iif): loosening only up1 is enough.
    st.sysctls
        .insert("net.ipv4.conf.all.rp_filter".into(), "0".into());
    st.sysctls
        .insert("net.ipv4.conf.up1.rp_filter".into(), "2".into());
    assert_eq!(lookup(&st, &q).verdict.kind, VerdictKind::Local);
    // all=1, up1=2: max is 2, still loose. (all=2, up1=1 would be loose too.)
    st.sysctls
        .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
    assert_eq!(lookup(&st, &q).verdict.kind, VerdictKind::Local);
}

#[test]
fn rp_filter_uses_the_mark_only_with_src_valid_mark() {
    let mut st = firewall();
    st.sysctls
        .insert("net.ipv4.conf.up1.rp_filter".into(), "1".into());
    let mut q = Query::input(ip("192.0.2.10"), ip("10.77.0.5"), "up1");
    q.mark = 0x0100_0000;
    assert_eq!(lookup(&st, &q).verdict.kind, VerdictKind::Drop);
    st.sysctls
        .insert("net.ipv4.conf.up1.src_valid_mark".into(), "1".into());
    let v = lookup(&st, &q).verdict;
    assert_eq!(v.kind, VerdictKind::Unicast, "{v:?}");
    assert_eq!(v.interface.as_deref(), Some("lan0"));
}

#[test]
fn loose_rp_filter_fails_on_an_interface_without_ipv4_address() {
    let mut st = firewall();
    st.routes
        .extend(parse_ip_routes("10.99.0.0/16 dev eth0 table 42000\n", Family::Inet4).unwrap());
    st.sysctls
        .insert("net.ipv4.conf.eth0.rp_filter".into(), "2".into());
    let q = Query::input(ip("192.0.2.10"), ip("10.77.0.5"), "eth0");
    let v = lookup(&st, &q).verdict;
    assert_eq!(v.kind, VerdictKind::Drop);
    assert!(v.reason.contains("no IPv4 address"), "{}", v.reason);
}

#[test]
fn forwarding_off_answers_host_unreachable() {
    let mut st = firewall();
    st.sysctls
        .insert("net.ipv4.conf.up1.forwarding".into(), "0".into());
    let v = lookup(&st, &Query::input(ip("192.0.2.10"), ip("10.77.0.5"), "up1")).verdict;
    assert_eq!(
        (v.kind, v.error),
        (VerdictKind::Unreachable, Some(RouteError::HostUnreachable))
    );
    // Local delivery does not need forwarding.
    let v = lookup(&st, &Query::input(ip("192.0.2.10"), ip("10.77.0.1"), "up1")).verdict;
    assert_eq!(v.kind, VerdictKind::Local);
}

#[test]
fn goto_nop_throw_and_suppress() {
    let rules = parse_ip_rules(
        "0:\tfrom all lookup local
10:\tfrom all goto 30
20:\tfrom all blackhole
30:\tfrom all nop
40:\tfrom all lookup 100
50:\tfrom all lookup main suppress_prefixlength 0
60:\tfrom all lookup 200
32766:\tfrom all lookup main
",
        Family::Inet4,
    )
    .unwrap();
    let st = state_with(
        &rules,
        "throw 192.0.2.0/24 table 100
10.0.0.0/8 dev lan0 table 100
default via 198.51.100.1 dev up2
203.0.113.0/24 dev up1 scope link
default via 203.0.113.1 dev up1 table 200
",
    );
    let v = lookup(&st, &Query::output(ip("192.0.2.7"))).verdict;
    assert_eq!(
        v.table,
        Some(200),
        "throw → next rule; /0 suppressed → next; {v:?}"
    );
    assert_eq!(v.interface.as_deref(), Some("up1"));
    let v = lookup(&st, &Query::output(ip("203.0.113.9"))).verdict;
    assert_eq!(
        (v.table, v.rule),
        (Some(TABLE_MAIN), Some(50)),
        "a /24 is not suppressed"
    );
    let v = lookup(&st, &Query::output(ip("10.1.2.3"))).verdict;
    assert_eq!(v.table, Some(100));
}

#[test]
fn rule_and_route_errors_differ() {
    let rules = parse_ip_rules(
        "0:\tfrom all lookup local\n5:\tfrom all to 192.0.2.0/24 unreachable\n10:\tfrom all lookup main\n",
        Family::Inet4,
    )
    .unwrap();
    let st = state_with(
        &rules,
        "unreachable 198.51.100.0/24\nprohibit 203.0.113.0/24\nblackhole 10.0.0.0/8\n",
    );
    let e = |d: &str| lookup(&st, &Query::output(ip(d))).verdict;
    assert_eq!(e("192.0.2.1").error, Some(RouteError::NetworkUnreachable));
    assert_eq!(e("198.51.100.1").error, Some(RouteError::HostUnreachable));
    assert_eq!(e("203.0.113.1").kind, VerdictKind::Prohibit);
    assert_eq!(e("10.1.1.1").kind, VerdictKind::Blackhole);
    assert_eq!(e("10.1.1.1").error, Some(RouteError::InvalidArgument));
    assert_eq!(e("172.16.0.1").error, Some(RouteError::NetworkUnreachable));
}

#[test]
fn oif_restricts_ipv4_routes_and_falls_back_to_on_link() {
    let st = firewall();
    let mut q = Query::output(ip("10.77.0.1"));
    q.oif = Some("up1".into());
    let v = lookup(&st, &q).verdict;
    assert_eq!(
        v.kind,
        VerdictKind::Unicast,
        "a local address of lan0 is not local via up1"
    );
    assert_eq!((v.interface.as_deref(), v.via), (Some("up1"), None));
    q.dst = ip("192.0.2.1");
    q.oif = Some("lan0".into());
    let v = lookup(&st, &q).verdict;
    assert_eq!(
        v.interface.as_deref(),
        Some("lan0"),
        "default is via up2: on-link on lan0 instead"
    );
    q.oif = Some("nope".into());
    assert_eq!(
        lookup(&st, &q).verdict.error,
        Some(RouteError::NoSuchDevice)
    );
}

#[test]
fn non_local_source_on_output_is_refused() {
    let st = firewall();
    let mut q = Query::output(ip("192.0.2.1"));
    q.src = Some(ip("192.0.2.99"));
    assert_eq!(
        lookup(&st, &q).verdict.error,
        Some(RouteError::NetworkUnreachable)
    );
}

#[test]
fn ipv6_from_rule_needs_a_source_and_forwarding_drop_keeps_the_route() {
    let mut rules = parse_ip_rules(
        "0:\tfrom all lookup local\n100:\tfrom 2001:db8::/32 lookup 100\n32766:\tfrom all lookup main\n",
        Family::Inet6,
    )
    .unwrap();
    rules.extend(defaults(Family::Inet4));
    let mut st = state_with(&rules, "");
    st.routes = parse_ip_routes(
        "2001:db8:1::/64 dev up1 proto kernel metric 256 pref medium
default via 2001:db8:1::1 dev up1 metric 1024 pref medium
default via fe80::2 dev eth0 table 100 metric 1024 pref medium
local 2001:db8:1::2 dev up1 table local proto kernel metric 0 pref medium
",
        Family::Inet6,
    )
    .unwrap();
    let mut q = Query::output(ip("2001:db8:99::1"));
    assert_eq!(lookup(&st, &q).verdict.table, Some(TABLE_MAIN));
    q.src = Some(ip("2001:db8:1::2"));
    assert_eq!(lookup(&st, &q).verdict.table, Some(100));
    let v = lookup(
        &st,
        &Query::input(ip("2001:db8:1::9"), ip("2001:db8:1::2"), "up1"),
    )
    .verdict;
    assert_eq!(
        (v.kind, v.interface.as_deref()),
        (VerdictKind::Local, Some("lo"))
    );
    let v = lookup(
        &st,
        &Query::input(ip("2001:db8:1::9"), ip("2001:db8:77::1"), "up1"),
    )
    .verdict;
    assert_eq!(v.kind, VerdictKind::Drop, "all.forwarding=0");
    assert_eq!(v.error, None, "`ip route get` still prints the route");
    assert_eq!(v.interface.as_deref(), Some("eth0"));
    st.sysctls
        .insert("net.ipv6.conf.all.forwarding".into(), "1".into());
    let v = lookup(
        &st,
        &Query::input(ip("2001:db8:1::9"), ip("2001:db8:77::1"), "up1"),
    )
    .verdict;
    assert_eq!(v.kind, VerdictKind::Unicast);
}

#[test]
fn multipath_lists_live_candidates_only() {
    let mut st = state_with(&defaults(Family::Inet4), "");
    st.routes = parse_ip_routes(ROUTES, Family::Inet4).unwrap();
    let v = lookup(&st, &Query::output(ip("192.0.2.1"))).verdict;
    assert_eq!(
        v.candidates,
        vec![("a".to_string(), Some(ip("10.0.0.1")))],
        "the dead next hop is out"
    );
    let mut q = Query::output(ip("10.7.1.1"));
    q.mark = 0;
    let l = lookup(
        &RoutingState {
            rules: {
                let mut r = defaults(Family::Inet4);
                r.push(RuleEntry::lookup(Family::Inet4, 5, 100));
                r.sort_by_key(|r| r.priority);
                r
            },
            ..st.clone()
        },
        &q,
    );
    assert_eq!(
        l.verdict.candidates.len(),
        2,
        "linkdown is used by default: {:?}",
        l.verdict
    );
    assert_eq!(
        l.verdict.interface, None,
        "candidates on different interfaces"
    );
}

#[test]
fn no_custom_rules_report_local_hits_as_table_main() {
    let st = firewall_without_rules();
    let v = lookup(&st, &Query::output(ip("10.77.0.1"))).verdict;
    assert_eq!((v.kind, v.table), (VerdictKind::Local, Some(TABLE_MAIN)));
}

fn firewall_without_rules() -> RoutingState {
    let mut st = firewall();
    st.rules = defaults(Family::Inet4);
    st
}

/// symroute's planned rules for three reply gateways (with local addresses, so `from`
/// rules exist) and a route_via policy, on the seed-1 firewall with main's default via
/// up2, as the engine sees them once applied.
fn planned_three_reply_gateways_and_a_route() -> RoutingState {
    let cfg = "[[gateway]]\nname=\"a\"\nid=1\ninterface=\"up1\"\nvia=\"203.0.113.1\"\n\
        [[gateway]]\nname=\"b\"\nid=2\ninterface=\"up2\"\nvia=\"198.51.100.1\"\n\
        [[gateway]]\nname=\"c\"\nid=3\ninterface=\"eth0\"\nvia=\"198.51.100.1\"\n\
        [[policy]]\nname=\"ra\"\nreply_via=\"a\"\n[policy.match]\nin_interface=\"up1\"\n\
        [[policy]]\nname=\"rb\"\nreply_via=\"b\"\n[policy.match]\nin_interface=\"up2\"\n\
        [[policy]]\nname=\"rc\"\nreply_via=\"c\"\n[policy.match]\nin_interface=\"eth0\"\n\
        [[policy]]\nname=\"mail\"\nroute_via=\"a\"\n[policy.match]\nprotocol=\"tcp\"\ndestination_port=25\n";
    let model = symroute_core::config::parse_str(cfg, "t.toml").expect("valid");
    let plan = symroute_core::plan::build(&model, &crate::netfilter::tests::host());
    let mut rules = defaults(Family::Inet4);
    rules.extend(
        plan.rules
            .iter()
            .filter(|r| r.family == Family::Inet4)
            .map(RuleEntry::planned),
    );
    rules.sort_by_key(|r| r.priority);
    let mut st = firewall();
    st.rules = rules;
    st
}

/// An undecided forwarded packet (and the source check of one) walks at most the skip
/// rule of ours before main (`alloc`'s slots: Skip before Divert/RouteSkip, Reply,
/// MainWithoutDefault and Route): a route decisions' skip (`fwmark 0/LOWEST_BIT`)
/// matches an unmarked packet too, so one in front of it would send such packets through
/// main without its default and every route rule first.
#[test]
fn undecided_packets_skip_every_rule_of_ours_before_main() {
    let st = planned_three_reply_gateways_and_a_route();
    let ours = |l: &Lookup, stage: Stage| {
        l.steps
            .iter()
            .filter(|s| s.stage == stage)
            .filter(|s| s.priority.is_some_and(|p| (3000..32766).contains(&p)))
            .count()
    };
    let fwd = lookup(
        &st,
        &Query::input(ip("10.77.0.5"), ip("192.0.2.10"), "lan0"),
    );
    assert_eq!(fwd.verdict.interface.as_deref(), Some("up2"), "{fwd:#?}");
    assert!(ours(&fwd, Stage::Route) <= 3, "{fwd:#?}");
    // Arriving from beyond the default: its source check looks the source up the same way.
    let mut st_rpf = st.clone();
    st_rpf
        .sysctls
        .insert("net.ipv4.conf.all.rp_filter".into(), "2".into());
    let inbound = lookup(
        &st_rpf,
        &Query::input(ip("192.0.2.10"), ip("10.77.0.5"), "up2"),
    );
    assert_eq!(
        inbound.verdict.interface.as_deref(),
        Some("lan0"),
        "{inbound:#?}"
    );
    assert!(ours(&inbound, Stage::RpFilter) <= 3, "{inbound:#?}");
    // Decided packets still reach their own rules.
    let mut q = Query::input(ip("10.77.0.5"), ip("192.0.2.10"), "lan0");
    q.mark = 0x0200_0000; // route decision via a
    let routed = lookup(&st, &q);
    assert_eq!(
        routed.verdict.interface.as_deref(),
        Some("up1"),
        "{routed:#?}"
    );
    q.mark = 0x0300_0000; // reply decision via b
    assert_eq!(lookup(&st, &q).verdict.interface.as_deref(), Some("up2"));
}

#[test]
fn gateway_on_the_same_interface_is_ignored() {
    let st = state_with(
        &defaults(Family::Inet4),
        "10.77.0.0/24 dev lan0 proto kernel scope link src 10.77.0.1
192.0.2.0/24 via 10.77.0.1 dev lan0
local 10.77.0.1 dev lan0 table local proto kernel scope host src 10.77.0.1
",
    );
    let v = lookup(&st, &Query::output(ip("192.0.2.5"))).verdict;
    assert_eq!((v.interface.as_deref(), v.via), (Some("lan0"), None));
}

// ---- nothing panics ----------------------------------------------------------------

use symroute_core::fuzz::Rng;

const PIECES: &[&str] = &[
    " ",
    "\n",
    "\t",
    ":",
    "/",
    "0x",
    "-",
    "[detached]",
    "[unresolved]",
    "not",
    "from",
    "to",
    "all",
    "lookup",
    "goto",
    "nop",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "local",
    "broadcast",
    "anycast",
    "multicast",
    "fwmark",
    "iif",
    "oif",
    "tos",
    "ipproto",
    "sport",
    "dport",
    "suppress_prefixlength",
    "suppress_ifgroup",
    "-1",
    "129",
    "4294967296",
    "via",
    "dev",
    "table",
    "metric",
    "nexthop",
    "\tnexthop via",
    "weight",
    "dead",
    "linkdown",
    "onlink",
    "encap",
    "mtu lock",
    "default",
    "0/0",
    "::",
    "fe80::1",
    "10.0.0.0/8",
    "2001:db8::/129",
    "255.255.255.255",
    "é",
    "\u{0}",
    "main",
    "9999",
    "ipproto-300",
    "uidrange",
    "from inet6",
    "via inet6",
    "pref",
    "scope",
    "src",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    symroute_core::fuzz::mutate(rng, seed, PIECES, 5, 12)
}

#[test]
fn mutated_outputs_never_panic() {
    let rule_seeds = [RULES, "0:\tfrom all lookup local\n100:\tfrom 2001:db8::/32 lookup 100\n32766:\tfrom all lookup main\n"];
    let route_seeds = [ROUTES];
    let mut rng = Rng::new(0x5eed_0007_0bad_cafe);
    let mut parsed = 0;
    let queries = [
        Query::output(ip("10.77.0.9")),
        Query::output(ip("2001:db8:1::9")),
        Query::input(ip("192.0.2.1"), ip("10.7.0.1"), "up1"),
        Query::input(ip("2001:db8::1"), ip("2001:db8:9::1"), "eth0"),
        {
            let mut q = Query::output(ip("192.0.2.1"));
            q.oif = Some("lan0".into());
            q.mark = 0x0100_0000;
            q.src = Some(ip("127.0.0.1"));
            q
        },
    ];
    for case in 0..3000 {
        let rules4 = mutate(&mut rng, rule_seeds[case % 2]);
        let routes = mutate(&mut rng, route_seeds[0]);
        let sysctl = mutate(
            &mut rng,
            "net.ipv4.conf.all.rp_filter = 1\nnet.ipv4.conf.up1.forwarding=1\n",
        );
        let result = std::panic::catch_unwind(|| {
            let mut ok = 0;
            for family in [Family::Inet4, Family::Inet6] {
                ok += usize::from(parse_ip_rules(&rules4, family).is_ok());
                ok += usize::from(parse_ip_routes(&routes, family).is_ok());
            }
            let _ = parse_ip_addr_json(&mutate(
                &mut Rng::new(case as u64 + 1),
                r#"[{"ifname":"up1","ifindex":2,"flags":["UP"],"addr_info":[{"local":"10.0.0.1","prefixlen":24}]}]"#,
            ));
            let st = RoutingState::from_texts(&StateTexts {
                ip_rule: &rules4,
                ip6_rule: &rules4,
                ip_route: &routes,
                sysctl: &sysctl,
                ..StateTexts::default()
            });
            // Lookups on whatever parsed, plus on the firewall with the mutated rules.
            let mut fw = firewall();
            if let Ok(r) = parse_ip_rules(&rules4, Family::Inet4) {
                fw.rules = r;
            }
            if let Ok(r) = parse_ip_routes(&routes, Family::Inet4) {
                fw.routes.extend(r);
            }
            for q in &queries {
                let _ = lookup(&fw, q);
                if let Ok(st) = &st {
                    let _ = lookup(st, q);
                }
            }
            ok
        });
        match result {
            Ok(n) => parsed += n,
            Err(_) => panic!("case {case} panicked on\n--- rules\n{rules4}\n--- routes\n{routes}"),
        }
    }
    assert!(
        parsed > 3000,
        "mutations must leave many inputs parseable ({parsed})"
    );
}
