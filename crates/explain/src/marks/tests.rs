//! The cases apply's conflict check (`symroute-kernel`'s former own reading of nft JSON
//! and iptables-save words) was tested on, with the same expectations, plus input that
//! only looks like a mark user to a reader of words.

use serde_json::Value;

use super::*;
use crate::netfilter::{from_iptables_save, from_nft_json};

fn bits(users: &[MarkUser]) -> Vec<u32> {
    users.iter().map(|u| u.bits).collect()
}

fn iptables(text: &str) -> Vec<MarkUser> {
    let rs = from_iptables_save(text, Family::Inet4).expect("iptables-save parses");
    mark_users(&rs, [])
}

fn nft(json: &str) -> Vec<MarkUser> {
    let v: Value = serde_json::from_str(json).expect("json");
    mark_users(&from_nft_json(&v).expect("nft json parses"), [])
}

const MANGLE: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n";

#[test]
fn iptables_lines_are_classified() {
    let text = format!("{MANGLE}-A PREROUTING -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x0/0xffffffff\n-A PREROUTING -m mark --mark 0x1/0xff -j RETURN\n-A PREROUTING -j MARK --set-xmark 0x1000000/0xffffffff\n-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A PREROUTING -m mark --mark 0xca6c -j RETURN\n-A POSTROUTING -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A POSTROUTING -m mark --mark 0xca6c -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A PREROUTING -m comment --comment \"not --set-xmark 0xff000000 --mark 0/0xff\" -j ACCEPT\nCOMMIT\n");
    let users = iptables(&text);
    // restore: carries stored values (none of its own); unguarded save: all bits;
    // save guarded by an exact mark: just that value.
    assert_eq!(bits(&users), vec![0xff, 0x0100_0000, u32::MAX, 0xca6c]);
    assert_eq!(
        users[1].place,
        "iptables-save -t mangle chain PREROUTING (line 9)"
    );
    assert_eq!(
        users[1].text,
        "-A PREROUTING -j MARK --set-xmark 0x1000000/0xffffffff"
    );
}

#[test]
fn nft_expressions_are_classified() {
    let users = nft(r#"{"nftables":[
      {"table":{"family":"ip","name":"mangle","handle":1}},
      {"chain":{"family":"ip","table":"mangle","name":"p","handle":1,"type":"filter","hook":"prerouting","prio":-150,"policy":"accept"}},
      {"table":{"family":"ip","name":"wg-quick-wg0","handle":2}},
      {"chain":{"family":"ip","table":"wg-quick-wg0","name":"premangle","handle":1,"type":"filter","hook":"prerouting","prio":-150,"policy":"accept"}},
      {"chain":{"family":"ip","table":"wg-quick-wg0","name":"postmangle","handle":2,"type":"filter","hook":"postrouting","prio":-150,"policy":"accept"}},
      {"table":{"family":"inet","name":"symroute","handle":3}},
      {"chain":{"family":"inet","table":"symroute","name":"p","handle":1,"type":"filter","hook":"prerouting","prio":-150,"policy":"accept"}},
      {"rule":{"family":"ip","table":"mangle","chain":"p","handle":2,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},16384]}}}]}},
      {"rule":{"family":"ip","table":"mangle","chain":"p","handle":3,"expr":[{"match":{"op":"==","left":{"&":[{"meta":{"key":"mark"}},251658240]},"right":16777216}}]}},
      {"rule":{"family":"ip","table":"mangle","chain":"p","handle":4,"expr":[{"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}}]}},
      {"rule":{"family":"ip","table":"mangle","chain":"p","handle":5,"expr":[{"mangle":{"key":{"ct":{"key":"mark"}},"value":{"meta":{"key":"mark"}}}}]}},
      {"rule":{"family":"ip","table":"wg-quick-wg0","chain":"premangle","handle":7,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"ct":{"key":"mark"}}}}]}},
      {"rule":{"family":"ip","table":"wg-quick-wg0","chain":"postmangle","handle":8,"expr":[{"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}},{"mangle":{"key":{"ct":{"key":"mark"}},"value":{"meta":{"key":"mark"}}}}]}},
      {"rule":{"family":"inet","table":"symroute","chain":"p","handle":6,"expr":[{"mangle":{"key":{"ct":{"key":"mark"}},"value":1}}]}}
    ]}"#);
    // wg-quick's premangle copy sets nothing; its guarded postmangle copy sets 0xca6c.
    assert_eq!(bits(&users), vec![0x4000, 0x0f00_0000, u32::MAX, 51820]);
    assert_eq!(users[0].place, "nft table ip mangle chain p handle 2");
}

#[test]
fn partial_ip_rules_use_their_mask() {
    let rules = [
        IpRuleMark::new(
            Family::Inet4,
            Some((0x0100_0000, 0x0f00_0000)),
            "100:\tfrom all fwmark 0x1000000/0xf000000 lookup 100",
        ),
        IpRuleMark::new(
            Family::Inet6,
            Some((0xca6c, u32::MAX)),
            "32764:\tnot from all fwmark 0xca6c lookup 51820",
        ),
        IpRuleMark::new(Family::Inet4, None, "32766:\tfrom all lookup main"),
    ];
    let users = mark_users(&Ruleset::default(), rules);
    assert_eq!(bits(&users), vec![0x0f00_0000]);
    assert_eq!(users[0].place, "ip -4 rule");
}

/// A comment, a log prefix or a chain name that spells a mark option is data, not an
/// option: reading words would have taken it for one.
#[test]
fn quoted_words_are_not_options() {
    let text = format!("{MANGLE}:x--set-xmark - [0:0]\n-A PREROUTING -m comment --comment \"-j MARK --set-xmark 0xff000000/0xffffffff\" -j ACCEPT\n-A PREROUTING -m comment --comment \"-m mark --mark 0x1/0xff000000\" -j LOG --log-prefix \"--save-mark \"\n-A PREROUTING -j x--set-xmark\nCOMMIT\n");
    assert_eq!(bits(&iptables(&text)), Vec::<u32>::new());
    let users = nft(r#"{"nftables":[
      {"table":{"family":"inet","name":"t","handle":1}},
      {"chain":{"family":"inet","table":"t","name":"c","handle":1,"type":"filter","hook":"prerouting","prio":0,"policy":"accept"}},
      {"rule":{"family":"inet","table":"t","chain":"c","handle":2,"comment":"meta mark set 0xff000000","expr":[{"counter":{"packets":0,"bytes":0}}]}}
    ]}"#);
    assert!(users.is_empty(), "{users:?}");
}

#[test]
fn unreadable_assignments_use_every_bit() {
    let users = nft(r#"{"nftables":[
      {"table":{"family":"inet","name":"t","handle":1}},
      {"chain":{"family":"inet","table":"t","name":"c","handle":1,"type":"filter","hook":"prerouting","prio":0,"policy":"accept"}},
      {"rule":{"family":"inet","table":"t","chain":"c","handle":2,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"numgen":{"mode":"random","mod":2,"offset":0}}}}]}}
    ]}"#);
    assert_eq!(bits(&users), vec![u32::MAX]);
}
