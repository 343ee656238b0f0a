use super::*;

fn state(files: &[(&str, &str)]) -> HostState {
    let map = files
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HostState::from_files(&map, Vec::new(), "test").expect("parses")
}

const GW_RULES: &str = "0:\tfrom all lookup local\n100:\tfrom all fwmark 0x1 lookup 201\n32766:\tfrom all lookup main\n";
const GW_ROUTES: &str =
    "default via 203.0.113.1 dev up1 table 201 \ndefault via 198.51.100.1 dev up2 \n";

/// One gateway (table 201 via up1, looked up by fwmark 0x1) and `firewall`: a saved ruleset.
fn gateway_and(firewall: (&str, &str)) -> HostState {
    state(&[
        ("ip-rule.txt", GW_RULES),
        ("ip-route.txt", GW_ROUTES),
        firewall,
    ])
}

#[test]
fn masks_avoid_used_bits() {
    assert_eq!(choose_mask(0, 3), Some(0xff00_0000));
    assert_eq!(choose_mask(0x1000_0000, 3), Some(0x0f00_0000));
    // 20 values need 5 bits: none free in 0xff000000 or away from other tools' bits,
    // so the last resort is any free run.
    assert_eq!(choose_mask(0x1000_0000, 20), Some(0x0ff0_0000));
    assert_eq!(choose_mask(u32::MAX, 1), None);
    assert_eq!(complement_ports(&[(25, 25)]), vec![(1, 24), (26, 65535)]);
}

#[test]
fn a_one_family_exemption_in_an_inet_chain_is_not_widened() {
    // `ip saddr != 10.0.0.0/8 return` exempts IPv4 packets only; `source = 10/8` would
    // also drop every IPv6 connection.
    let nft = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "t", "name": "out", "handle": 2, "type": "route", "hook": "output", "prio": -150, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 3, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 4, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"return": null}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "up1"}}, {"mangle": {"key": {"ct": {"key": "mark"}}, "value": 1}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 6, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}}]}"#;
    let out = import(&gateway_and(("nft.json", nft)));
    let u = out
        .unexpressed
        .iter()
        .find(|u| u.what.contains("ct mark set"))
        .unwrap_or_else(|| panic!("{}", out.toml));
    assert!(u.why.contains("for one family only"), "{}", u.why);
    assert!(!out.toml.contains("\n[[policy]]"), "{}", out.toml);
    // The mark rule it needs stays.
    assert!(out
        .report()
        .contains("ip rule: 100: from all fwmark 0x1 lookup 201"));
}

#[test]
fn an_exemption_of_one_family_is_fine_in_that_family() {
    // The same exemption in iptables (IPv4 only) is exact: source = 10/8 there.
    let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A PREROUTING -j CONNMARK --restore-mark\n\
        -A PREROUTING ! -s 10.0.0.0/8 -j RETURN\n\
        -A PREROUTING -i up1 -j CONNMARK --set-mark 1\n\
        -A OUTPUT -j CONNMARK --restore-mark\nCOMMIT\n";
    let out = import(&gateway_and(("iptables-save.txt", ipt)));
    assert!(out.unexpressed.is_empty(), "{}", out.report());
    assert!(
        out.toml
            .contains("[policy.match]\nin_interface = \"up1\"\nsource = [\"10.0.0.0/8\"]\n"),
        "{}",
        out.toml
    );
}

#[test]
fn tproxy_is_not_a_divert() {
    let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n\
        -A PREROUTING -p tcp -m tcp --dport 80 -j TPROXY --on-port 3129 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1\nCOMMIT\n";
    let out = import(&state(&[
        (
            "ip-rule.txt",
            "0:\tfrom all lookup local\n100:\tfrom all fwmark 0x1/0x1 lookup 100\n32766:\tfrom all lookup main\n",
        ),
        ("ip-route.txt", "local default dev lo table 100 scope host \n"),
        ("iptables-save.txt", ipt),
    ]));
    assert_eq!(out.unexpressed.len(), 2, "{}", out.report());
    assert!(out.unexpressed[0].why.starts_with("TPROXY redirects"));
    assert!(
        out.unexpressed[1].why.starts_with("kept for"),
        "{}",
        out.report()
    );
    assert!(!out.toml.contains("[[divert]]"));
}

#[test]
fn per_packet_marks_in_output_become_route_via_with_notes() {
    let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        -A OUTPUT -p udp -m udp --dport 53 -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n";
    let out = import(&gateway_and(("iptables-save.txt", ipt)));
    assert!(out.unexpressed.is_empty(), "{}", out.report());
    assert!(
        out.toml.contains("route_via = \"table-201\""),
        "{}",
        out.toml
    );
    assert!(
        out.toml.contains("marked matching packets one by one"),
        "{}",
        out.toml
    );
    assert!(
        out.toml.contains("connections this host opens (OUTPUT)"),
        "{}",
        out.toml
    );
    symroute_core::config::parse_str(&out.toml, "t").expect("valid");
}

#[test]
fn a_multipath_default_over_the_gateways_is_a_share_or_says_why_not() {
    let rules = |main_prio: u32| {
        format!(
            "0:\tfrom all lookup local\n{main_prio}:\tfrom all lookup main\n100:\tfrom all fwmark 0x1 lookup 201\n101:\tfrom all fwmark 0x2 lookup 202\n32765:\tfrom all lookup 250\n"
        )
    };
    let routes = |main_default: &str, hop2: &str| {
        format!(
            "default via 203.0.113.1 dev up1 table 201 \ndefault via 198.51.100.1 dev up2 table 202 \n\
             default table 250 \n\tnexthop via 203.0.113.1 dev up1 weight 3 \n\tnexthop via {hop2} weight 1 \n{main_default}"
        )
    };
    let fw = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
              -A PREROUTING -j CONNMARK --restore-mark\n\
              -A PREROUTING -m mark ! --mark 0x0 -j RETURN\n\
              -A PREROUTING -i up1 -j MARK --set-mark 0x1\n\
              -A PREROUTING -i up2 -j MARK --set-mark 0x2\n\
              -A PREROUTING -j CONNMARK --save-mark\n\
              -A OUTPUT -j CONNMARK --restore-mark\nCOMMIT\n";
    let run = |main_default: &str, hop2: &str| {
        import(&state(&[
            ("ip-rule.txt", &rules(99)),
            ("ip-route.txt", &routes(main_default, hop2)),
            ("iptables-save.txt", fw),
        ]))
    };
    let why_250 = |out: &Imported| {
        out.unexpressed
            .iter()
            .find(|u| u.what.contains("lookup 250"))
            .map(|u| u.why.clone())
            .unwrap_or_else(|| panic!("{}", out.toml))
    };
    // Main (looked up first) has no default: the table is the host's default, shared 3:1.
    let out = run("", "198.51.100.1 dev up2");
    assert!(
        out.toml
            .contains("route_via = { \"table-201\" = 3, \"table-202\" = 1 }"),
        "{}",
        out.toml
    );
    assert!(
        out.toml.contains("put the host's default route back"),
        "{}",
        out.toml
    );
    // Main, looked up first, has a default route: the table is never used.
    let out = run(
        "default via 198.51.100.1 dev up2 \n",
        "198.51.100.1 dev up2",
    );
    assert!(why_250(&out).contains("never used"), "{}", out.toml);
    assert!(!out.toml.contains("route_via"), "{}", out.toml);
    // A next hop that is no gateway: said so, nothing shared.
    let out = run("", "198.51.100.9 dev up2");
    assert!(
        why_250(&out).contains("`via 198.51.100.9 dev up2` is none of the gateways"),
        "{}",
        out.toml
    );
}

#[test]
fn the_report_spells_control_characters_in_host_text() {
    let imported = Imported {
        toml: String::new(),
        unexpressed: vec![Unexpressed {
            what: "nft table ip m chain c\n[[gateway]]: meta mark set 0x10".into(),
            why: "kept for `meta mark set 0x10 comment \"\u{1b}[31m\"`\nadd table ip x".into(),
        }],
    };
    let report = imported.report();
    assert_eq!(
        report,
        "cannot express: nft table ip m chain c\\n[[gateway]]: meta mark set 0x10\n  why: kept for `meta mark set 0x10 comment \"\\u{1b}[31m\"`\\nadd table ip x\n"
    );
}
