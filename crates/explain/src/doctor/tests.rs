//! Unit tests on hand-written states: the corner cases the captured fixtures in
//! tests/fixtures do not cover (near misses that must stay quiet, inputs a live kernel
//! would not produce).

use std::collections::BTreeMap;

use super::facts::Write;
use super::*;
use crate::netfilter::{from_iptables_save, MarkKey, Stmt};
use symroute_core::model::Family;

/// A firewall with eth0 (LAN 10.77.0.1/24), eth1 (ISP2 198.51.100.2/24, the default
/// route) and eth2 (ISP1 203.0.113.2/24), plus `extra` files.
fn state(rules: &str, routes: &str, ipt: &str, sysctl: &str) -> HostState {
    HostState::from_files(&files(rules, routes, ipt, sysctl), Vec::new(), "test").expect("state")
}

/// The snapshot files behind [`state`].
fn files(rules: &str, routes: &str, ipt: &str, sysctl: &str) -> BTreeMap<String, String> {
    let addr = r#"[
 {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
 {"ifindex":2,"ifname":"eth0","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":24}]},
 {"ifindex":3,"ifname":"eth1","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"198.51.100.2","prefixlen":24}]},
 {"ifindex":4,"ifname":"eth2","flags":["BROADCAST","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"203.0.113.2","prefixlen":24}]}
]"#;
    let link = r#"[
 {"ifindex":1,"ifname":"lo","address":"00:00:00:00:00:00"},
 {"ifindex":2,"ifname":"eth0","address":"02:00:00:00:00:10"},
 {"ifindex":3,"ifname":"eth1","address":"02:00:00:00:00:11"},
 {"ifindex":4,"ifname":"eth2","address":"02:00:00:00:00:12"}
]"#;
    let base_rules = "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n";
    let mut all_rules: Vec<&str> = base_rules.lines().collect();
    all_rules.extend(rules.lines());
    all_rules.sort_by_key(|l| l.split(':').next().unwrap().trim().parse::<u32>().unwrap());
    let main = "default via 198.51.100.1 dev eth1\n10.77.0.0/24 dev eth0 proto kernel scope link src 10.77.0.1\n198.51.100.0/24 dev eth1 proto kernel scope link src 198.51.100.2\n203.0.113.0/24 dev eth2 proto kernel scope link src 203.0.113.2\n";
    let mut files = BTreeMap::new();
    files.insert("ip-rule.txt".to_string(), all_rules.join("\n") + "\n");
    files.insert("ip-route.txt".to_string(), format!("{main}{routes}"));
    files.insert("ip6-route.txt".to_string(), String::new());
    files.insert("ip-addr.json".to_string(), addr.to_string());
    files.insert("ip-link.json".to_string(), link.to_string());
    files.insert("iptables-save.txt".to_string(), ipt.to_string());
    files.insert("sysctl.txt".to_string(), sysctl.to_string());
    files
}

fn mangle(lines: &str) -> String {
    format!("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{lines}\nCOMMIT\n")
}

fn codes(f: &[Finding]) -> Vec<&'static str> {
    f.iter().map(|x| x.code).collect()
}

const STRICT: &str = "net.ipv4.conf.all.rp_filter = 1\nnet.ipv4.conf.eth0.rp_filter = 1\nnet.ipv4.conf.eth1.rp_filter = 1\nnet.ipv4.conf.eth2.rp_filter = 1\n";

/// The classic recipe: restore, classify by arrival interface, save; restore in OUTPUT.
const LARTC: &str =
    "-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A PREROUTING -m mark ! --mark 0x0 -j RETURN
-A PREROUTING -i eth2 -j MARK --set-xmark 0x1/0xffffffff
-A PREROUTING -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff";
const TABLE1: &str =
    "default via 203.0.113.1 dev eth2 table 1\n10.77.0.0/24 dev eth0 table 1 scope link\n";

#[test]
fn writes_bit_by_bit() {
    let rs = from_iptables_save(
        &mangle(
            "-A PREROUTING -j MARK --set-xmark 0x0/0xffffffff
-A PREROUTING -j MARK --set-xmark 0x40/0xf0
-A PREROUTING -j CONNMARK --save-mark --nfmask 0xf0 --ctmask 0xf0
-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A PREROUTING -j MARK --or-mark 0x4000",
        ),
        Family::Inet4,
    )
    .unwrap();
    let w: Vec<Write> = rs.chains[0]
        .rules
        .iter()
        .map(|r| match &r.stmts[0] {
            Stmt::SetMark { key, value } => Write::of(*key, value),
            s => panic!("{s:?}"),
        })
        .collect();
    // --set-mark 0: every bit the constant 0
    assert_eq!(
        (w[0].const_bits, w[0].const_val, w[0].preserved),
        (u32::MAX, 0, 0)
    );
    assert!(w[0].pure_const());
    // --set-xmark 0x40/0xf0: bits 0xf0 constant 0x40, the rest kept
    assert_eq!(
        (w[1].const_bits, w[1].const_val, w[1].preserved),
        (0xf0, 0x40, !0xf0)
    );
    // save 0xf0: ct bits 0xf0 copied from the packet mark
    assert_eq!(
        (w[2].key, w[2].copy_bits, w[2].preserved),
        (MarkKey::Ct, 0xf0, !0xf0)
    );
    // restore everything
    assert_eq!(
        (w[3].key, w[3].copy_bits, w[3].written()),
        (MarkKey::Meta, u32::MAX, u32::MAX)
    );
    // --or-mark
    assert_eq!(
        (w[4].const_bits, w[4].const_val, w[4].written()),
        (0x4000, 0x4000, 0x4000)
    );
}

#[test]
fn lartc_recipe_with_loose_rp_filter_is_clean() {
    let h = state(
        "32765:\tfrom all fwmark 0x1 lookup 1",
        TABLE1,
        &mangle(LARTC),
        "net.ipv4.conf.eth2.rp_filter = 2\n",
    );
    assert!(doctor(&h).is_empty(), "{}", render(&doctor(&h)));
}

#[test]
fn strict_rp_filter_is_fine_when_the_arrival_mark_is_honoured() {
    let rules = "32765:\tfrom all fwmark 0x1 lookup 1";
    // Strict, and the reverse-path check ignores marks: the first packet is dropped.
    let f = doctor(&state(rules, TABLE1, &mangle(LARTC), STRICT));
    assert_eq!(codes(&f), vec!["rp-filter-strict"], "{}", render(&f));
    assert_eq!(f[0].rule, "net.ipv4.conf.eth2.rp_filter = 1");
    assert!(f[0].fix.contains("src_valid_mark=1"), "{}", f[0].fix);
    // src_valid_mark: the arriving packet is marked in PREROUTING, the check uses the mark.
    let f = doctor(&state(
        rules,
        TABLE1,
        &mangle(LARTC),
        &format!("{STRICT}net.ipv4.conf.all.src_valid_mark = 1\n"),
    ));
    assert!(f.is_empty(), "{}", render(&f));
    // `all` strict, the interface 0: max(all, eth2) is still strict, and `all` is quoted.
    let f = doctor(&state(
        rules,
        TABLE1,
        &mangle(LARTC),
        "net.ipv4.conf.all.rp_filter = 1\nnet.ipv4.conf.eth2.rp_filter = 0\n",
    ));
    assert_eq!(
        f[0].rule,
        "net.ipv4.conf.all.rp_filter = 1",
        "{}",
        render(&f)
    );
}

/// The same strict rp_filter finding on an interface whose name is shell syntax: the
/// advice stays, the commands that would carry the name are not shown.
#[test]
fn commands_never_carry_a_hostile_name() {
    let rules = "32765:\tfrom all fwmark 0x1 lookup 1";
    let hostile = "x;true>pwned";
    let files: BTreeMap<String, String> = files(rules, TABLE1, &mangle(LARTC), STRICT)
        .into_iter()
        .map(|(k, v)| (k, v.replace("eth2", hostile)))
        .collect();
    let f = doctor(&HostState::from_files(&files, Vec::new(), "test").expect("state"));
    assert_eq!(codes(&f), vec!["rp-filter-strict"], "{}", render(&f));
    assert!(f[0].why.contains(hostile), "{}", f[0].why);
    assert!(
        !f[0].fix.contains(hostile) || !f[0].fix.contains('`'),
        "a command carries the name: {}",
        f[0].fix
    );
    assert!(f[0].fix.starts_with("loose mode on"), "{}", f[0].fix);
    assert!(f[0].fix.contains("<command not shown>"), "{}", f[0].fix);
}

#[test]
fn route_via_by_port_from_the_lan_is_clean() {
    // Each LAN packet to port 25 matches by itself; the replies come back on ISP1 anyway.
    let ipt = mangle(
        "-A PREROUTING -i eth0 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x2/0xffffffff
-A OUTPUT -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x2/0xffffffff",
    );
    let routes =
        "default via 203.0.113.1 dev eth2 table 2\n10.77.0.0/24 dev eth0 table 2 scope link\n";
    let f = doctor(&state(
        "32765:\tfrom all fwmark 0x2 lookup 2",
        routes,
        &ipt,
        STRICT,
    ));
    assert!(f.is_empty(), "{}", render(&f));
}

#[test]
fn resetting_marks_before_classifying_is_not_mark_zero() {
    let ipt = mangle(
        "-A PREROUTING -i eth2 -j MARK --set-xmark 0x0/0xffffffff
-A PREROUTING -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x1/0xffffffff
-A PREROUTING -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    );
    let f = doctor(&state(
        "32765:\tfrom all fwmark 0x1 lookup 1",
        TABLE1,
        &ipt,
        "",
    ));
    assert!(!codes(&f).contains(&"mark-zero"), "{}", render(&f));
    assert!(!codes(&f).contains(&"fwmark-never-set"), "{}", render(&f));
}

#[test]
fn tproxy_divert_needs_no_connmark() {
    let ipt = mangle("-A PREROUTING -p tcp -m tcp --dport 80 -j TPROXY --on-port 3129 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1");
    let f = doctor(&state(
        "32765:\tfrom all fwmark 0x1/0x1 lookup 100",
        "local default dev lo table 100 scope host\n",
        &ipt,
        "",
    ));
    assert!(f.is_empty(), "{}", render(&f));
}

#[test]
fn lookup_zero_is_reserved() {
    // A live kernel turns IPv4 `table 0` into a fresh empty table; a hand-written or
    // foreign snapshot may still say 0.
    let f = doctor(&state("32765:\tfrom all iif eth2 lookup 0", "", "", ""));
    assert_eq!(codes(&f), vec!["table-reserved"], "{}", render(&f));
    assert_eq!(f[0].severity, Severity::Error);
}

#[test]
fn duplicate_rules_are_reported_once_each() {
    let rules = "32764:\tfrom all fwmark 0x1 lookup 1\n32765:\tfrom all fwmark 0x1 lookup 1";
    let f = doctor(&state(rules, TABLE1, &mangle(LARTC), ""));
    assert_eq!(codes(&f), vec!["rule-shadowed"], "{}", render(&f));
    assert!(f[0].rule.starts_with("32765:"), "the later copy");
    assert!(f[0].why.contains("duplicate"), "{}", f[0].why);
}

#[test]
fn ipv6_rules_need_ipv6_marks() {
    // iptables marks IPv4 only: the IPv6 rule can never match.
    let mut h = state(
        "32765:\tfrom all fwmark 0x1 lookup 1",
        TABLE1,
        &mangle(LARTC),
        "",
    );
    h.routing.rules.extend(
        crate::routing::parse_ip_rules("0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x1 lookup 1\n32766:\tfrom all lookup main\n", Family::Inet6).unwrap(),
    );
    h.routing.routes.extend(
        crate::routing::parse_ip_routes(
            "default via fe80::1 dev eth2 table 1 metric 1024\n",
            Family::Inet6,
        )
        .unwrap(),
    );
    let f = doctor(&h);
    assert_eq!(codes(&f), vec!["fwmark-never-set"], "{}", render(&f));
    assert!(f[0].place.starts_with("ip -6 rule"), "{}", f[0].place);
    assert!(
        f[0].fix.contains("ip6tables -t mangle -A PREROUTING"),
        "{}",
        f[0].fix
    );
}

#[test]
fn tailscale_rules_are_its_own() {
    let rules = "5210:\tfrom all fwmark 0x80000/0xff0000 lookup main\n5230:\tfrom all fwmark 0x80000/0xff0000 lookup default\n5250:\tfrom all fwmark 0x80000/0xff0000 unreachable\n5270:\tfrom all lookup 52";
    let f = doctor(&state(rules, "", "", ""));
    assert!(f.is_empty(), "{}", render(&f));
    // A hand rule among them, and hand marks in its bits, while it runs.
    let f = doctor(&state(
        &format!("{rules}\n5240:\tfrom all fwmark 0x10000/0xff0000 lookup 1"),
        TABLE1,
        &mangle("-A PREROUTING -i eth2 -j MARK --set-xmark 0x10000/0xff0000\n-A PREROUTING -j CONNMARK --save-mark --nfmask 0xff0000 --ctmask 0xff0000\n-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xff0000 --ctmask 0xff0000"),
        "",
    ));
    let got: Vec<(Severity, &str)> = f.iter().map(|x| (x.severity, x.code)).collect();
    assert!(
        got.contains(&(Severity::Warning, "priority-collision")),
        "{}",
        render(&f)
    );
    assert!(
        got.contains(&(Severity::Warning, "mark-bits-shared")),
        "{}",
        render(&f)
    );
}

#[test]
fn value_outside_mask_suggests_the_shifted_value() {
    let f = doctor(&state(
        "32765:\tfrom all fwmark 0x1/0xff000000 lookup 1",
        TABLE1,
        "",
        "",
    ));
    let x = f
        .iter()
        .find(|x| x.code == "mark-outside-mask")
        .expect("fires");
    assert!(x.why.contains("every unmarked packet"), "{}", x.why);
    assert!(x.fix.contains("fwmark 0x1000000/0xff000000"), "{}", x.fix);
}

/// With symroute running here, doctor reports exactly the objects `symroute apply`
/// refuses to run beside (the mark users within its bits), and no others: a restore of
/// every bit carries stored values only, so apply goes ahead and doctor stays quiet.
#[test]
fn beside_a_running_symroute_doctor_reports_what_apply_refuses() {
    let ours = "3000:\tfrom all fwmark 0x1000000/0xff000000 lookup 42000 proto 157";
    let host = state(
        &format!("{ours}\n100:\tfrom all fwmark 0x1000000/0xf000000 lookup 1\n101:\tfrom all fwmark 0x4000/0xc000 lookup 1"),
        TABLE1,
        &mangle("-A PREROUTING -j MARK --set-xmark 0x2000000/0xff000000\n-A PREROUTING -m mark --mark 0x4000/0x4000 -j RETURN\n-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        "",
    );
    let f = doctor(&host);
    // Findings naming symroute (others name kube-proxy's or Calico's bits).
    let ours_named = |x: &&Finding| x.code == "mark-bits-shared" && x.why.contains("symroute");
    let mut reported: Vec<&str> = f
        .iter()
        .filter(ours_named)
        .map(|x| x.rule.as_str())
        .collect();
    // What `plan::diff::conflicts` refuses on under symroute's default mask.
    let users = mark_users(&host);
    let mut refused: Vec<&str> = users
        .iter()
        .filter(|u| u.bits & 0xff00_0000 != 0)
        .map(|u| u.text.as_str())
        .collect();
    reported.sort();
    refused.sort();
    assert_eq!(reported, refused, "{}", render(&f));
    assert_eq!(
        refused,
        [
            "-A PREROUTING -j MARK --set-xmark 0x2000000/0xff000000",
            "100:\tfrom all fwmark 0x1000000/0xf000000 lookup 1"
        ]
    );
    assert!(f
        .iter()
        .filter(ours_named)
        .all(|x| x.why.contains("refuses to run beside it") && x.severity == Severity::Warning));
}
