//! `explain`'s netfilter model against a real kernel (root; private namespaces only):
//!
//! 1. symroute's rendered tables and hand-written rulesets are loaded with `nft -f`, read
//!    back with `nft -j list ruleset`, and the IR from the JSON must equal (and evaluate
//!    exactly like) the IR from the text;
//! 2. rules added with `iptables -t mangle -A …` (iptables-nft) are read from
//!    `iptables-save` and must evaluate like their native nft equivalents;
//! 3. real connections through the namespaces: the conntrack mark the evaluator predicts
//!    for each connection's first packet is the one `conntrack -L` shows (and a predicted
//!    DNAT is the kernel's reply tuple).
//!
//! Run with `cargo test --test integration explain_netfilter_kernel:: -- --test-threads=2`.

use crate::support;
use support::conntrack::{self, Ct};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::lab;
use support::{require_root, symroute_in};
use symroute::explain::netfilter::*;
use symroute::lab::{tcp_probe, udp_probe, veth_mac, Netns, TcpServer, TwoIsps};
use symroute::model::Family;
use symroute::plan::{self, HostView, Link};

const PROXY_MAC: &str = "02:03:04:05:06:07";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

// ---------------------------------------------------------------------------------------
// Reading back

/// Through `nsenter --net`, which keeps the cgroup tree in view: nft names cgroups by
/// their paths there (under `ip netns exec`, with a fresh /sys, they would be bare ids).
fn json_of(ns: &Netns) -> serde_json::Value {
    let text = ns
        .nsenter(&["nft", "-j", "list", "ruleset"])
        .expect("nft -j list ruleset");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("nft JSON ({e}):\n{text}"))
}

/// Loads `text` into a fresh namespace and returns the IR read back from the kernel.
fn load_and_read(role: &str, text: &str) -> (Ruleset, serde_json::Value) {
    let ns = Netns::new(role).expect("netns");
    let file = support::TempDir::new(&format!("nft-{}", ns.name()));
    let path = file.file("table.nft", text.as_bytes(), 0o600);
    ns.nsenter(&["nft", "-f", &path.display().to_string()])
        .unwrap_or_else(|e| panic!("nft -f failed: {e:#}\n{text}"));
    let json = json_of(&ns);
    let rs = from_nft_json(&json).unwrap_or_else(|e| panic!("{e}\n{json:#}"));
    (rs, json)
}

/// Sorted, overlapping or adjacent ranges merged: nft's interval sets come back from the
/// kernel merged (`10.0.0.0/16, 10.1.0.0/16` as `10.0.0.0-10.1.255.255`).
fn merged(mut r: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    r.sort();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn addr_range(a: &AddrItem) -> (u128, u128) {
    let n = |ip: &IpAddr| match ip {
        IpAddr::V4(v) => u128::from(u32::from(*v)),
        IpAddr::V6(v) => u128::from(*v),
    };
    match a {
        AddrItem::Net(net) => (n(&net.network()), n(&net.broadcast())),
        AddrItem::Range(lo, hi) => (n(lo), n(hi)),
    }
}

/// A match with its lists in a canonical form (set elements come back in the kernel's
/// order, interval sets merged); address lists become `a-b` ranges of numbers.
fn norm_match(m: &Match) -> String {
    let ranges = |r: Vec<(u128, u128)>| -> String {
        merged(r)
            .iter()
            .map(|(a, b)| format!("{a:x}-{b:x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let which = if matches!(m, Match::Saddr { .. }) {
        "saddr"
    } else {
        "daddr"
    };
    let mut m = m.clone();
    match &mut m {
        Match::Iifname { names, .. } | Match::Oifname { names, .. } => names.sort(),
        Match::EtherSaddr { macs, .. } => macs.sort(),
        Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
            return format!(
                "{which} {family:?} {op:?} {}",
                ranges(addrs.iter().map(addr_range).collect())
            );
        }
        Match::L4proto { protos, .. } => protos.sort(),
        Match::Sport { op, ports } | Match::Dport { op, ports } => {
            return format!(
                "port {op:?} {}",
                ranges(
                    ports
                        .iter()
                        .map(|(a, b)| (u128::from(*a), u128::from(*b)))
                        .collect()
                )
            )
        }
        Match::Mark {
            key,
            mask,
            op,
            values,
        } => {
            return format!(
                "mark {key:?} {mask:#x} {op:?} {}",
                ranges(
                    values
                        .iter()
                        .map(|(a, b)| (u128::from(*a), u128::from(*b)))
                        .collect()
                )
            )
        }
        Match::CtState { states, .. } => states.sort_by_key(|s| s.as_str()),
        Match::Skuid { op, uids } => {
            return format!(
                "skuid {op:?} {}",
                ranges(
                    uids.iter()
                        .map(|(a, b)| (u128::from(*a), u128::from(*b)))
                        .collect()
                )
            )
        }
        // nft's JSON has no level (a path's depth is its level).
        Match::Cgroupv2 { op, paths, .. } => {
            paths.sort();
            return format!("cgroupv2 {op:?} {paths:?}");
        }
        _ => {}
    }
    format!("{m:?}")
}

fn norm_verdict(v: &Verdict) -> String {
    match v {
        Verdict::Vmap(vm) => {
            let mut entries: Vec<String> = vm
                .entries
                .iter()
                .map(|e| format!("{} : {:?}", norm_match(&e.key), e.verdict))
                .collect();
            entries.sort();
            format!("vmap {:?} {entries:?}", vm.map)
        }
        v => format!("{v:?}"),
    }
}

/// The IR without texts and origins, lists sorted: what must be equal whatever it was read from.
fn shape(rs: &Ruleset) -> Vec<String> {
    rs.chains
        .iter()
        .map(|c| {
            let rules: Vec<String> = c
                .rules
                .iter()
                .map(|r| {
                    let ms: Vec<String> = r.matches.iter().map(norm_match).collect();
                    format!("{ms:?} {:?} {}", r.stmts, norm_verdict(&r.verdict))
                })
                .collect();
            format!("{} {:?}\n  {}", c.label(), c.base, rules.join("\n  "))
        })
        .collect()
}

fn assert_same_shape(what: &str, a: &Ruleset, b: &Ruleset) {
    let (sa, sb) = (shape(a), shape(b));
    if sa != sb {
        let diff: Vec<String> = sa
            .iter()
            .zip(&sb)
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("from JSON:\n{x}\nfrom text:\n{y}"))
            .collect();
        panic!(
            "{what}: IR differs ({} vs {} chains)\n{}",
            sa.len(),
            sb.len(),
            diff.join("\n---\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Packets

/// Everything an evaluation decided, without rule texts and origins.
fn outcome(r: &HookResult) -> String {
    let steps: Vec<String> = r
        .steps
        .iter()
        .map(|s| {
            format!(
                "{:?} {:?} {:#x}->{:#x} {:#x}->{:#x}",
                s.matched, s.verdict, s.mark_before, s.mark_after, s.ctmark_before, s.ctmark_after
            )
        })
        .collect();
    let nat: Vec<String> = r
        .nat
        .iter()
        .map(|n| format!("{:?} {:?}:{:?}", n.kind, n.after_addr, n.after_port))
        .collect();
    format!(
        "{:?} dropped={} reroute={} local={} uncertain={} nat={nat:?}\n    {}",
        r.ctx_after,
        r.dropped,
        r.reroute,
        r.local_delivery,
        r.uncertain,
        steps.join("\n    ")
    )
}

/// A spread of packets over the keys the rulesets test.
fn packets() -> Vec<PacketCtx> {
    let pairs = [
        ("192.0.2.10:40000", "203.0.113.2:25"),
        ("10.77.0.10:40001", "8.8.8.8:465"),
        ("10.1.1.1:40002", "192.168.1.1:25"),
        ("[2001:db8:c::10]:40003", "[2001:db8:1::2]:25"),
        ("[fd77::10]:40004", "[fd00::1]:587"),
        ("192.0.2.10:40005", "203.0.113.2:2525"),
    ];
    let cts = [
        (CtState::New, CtDirection::Original, 0),
        (CtState::New, CtDirection::Original, 0x4000),
        (CtState::Established, CtDirection::Reply, 0x0100_0000),
        (CtState::Established, CtDirection::Original, 0x0200_0000),
        (CtState::Established, CtDirection::Reply, 0x0300_0000),
        (CtState::Established, CtDirection::Reply, 254),
        (CtState::Related, CtDirection::Original, 0x1),
        (CtState::Untracked, CtDirection::Original, 0),
    ];
    let ifaces = [
        Some("up1"),
        Some("up2"),
        Some("eth0"),
        Some("eth2"),
        Some("lan0"),
        None,
    ];
    let mut out = Vec::new();
    let mut n = 0usize;
    for (src, dst) in pairs {
        for proto in [6u8, 17, 1] {
            for (state, direction, ctmark) in cts {
                for iif in ifaces {
                    for (mac, socket) in [
                        (Some(PROXY_MAC), LocalSocket::None),
                        (Some("02:00:00:00:00:99"), LocalSocket::Transparent),
                        (None, LocalSocket::Plain),
                    ] {
                        n += 1;
                        let mut p = PacketCtx::new(proto, sa(src), sa(dst));
                        p.iif = iif.map(str::to_string);
                        p.oif = Some(if n.is_multiple_of(2) { "eth2" } else { "up2" }.to_string());
                        p.src_mac = mac.map(str::to_string);
                        p.socket = socket;
                        p.mark = if n.is_multiple_of(3) { 0xaa } else { 0 };
                        p.ct = CtCtx {
                            state,
                            direction,
                            mark: ctmark,
                        };
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

const HOOKS: [Hook; 5] = [
    Hook::Prerouting,
    Hook::Input,
    Hook::Forward,
    Hook::Output,
    Hook::Postrouting,
];

/// Every packet at every hook evaluates identically under both IRs; returns how many
/// evaluations changed a mark (so a test can tell it exercised something).
fn assert_same_behaviour(what: &str, a: &Ruleset, b: &Ruleset) -> usize {
    let mut changed = 0;
    for p in packets() {
        for h in HOOKS {
            let (x, y) = (evaluate(a, h, &p), evaluate(b, h, &p));
            let (ox, oy) = (outcome(&x), outcome(&y));
            assert_eq!(ox, oy, "{what}: {h:?} {p:?}");
            if x.ctx_after.mark != p.mark || x.ctx_after.ct.mark != p.ct.mark {
                changed += 1;
            }
        }
    }
    changed
}

// ---------------------------------------------------------------------------------------
// 1. symroute's own tables

fn host() -> HostView {
    let link = |addrs: &[&str]| Link {
        up: true,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        peers: Vec::new(),
    };
    let mut h = HostView::default();
    for (name, addrs) in [
        ("lo", &["127.0.0.1/8", "::1/128"][..]),
        ("lan0", &["10.77.0.1/24", "fd77::1/64"]),
        ("up1", &["203.0.113.2/24", "2001:db8:1::2/64"]),
        ("up2", &["198.51.100.2/24", "2001:db8:2::2/64"]),
        ("eth0", &["198.51.100.20/24", "2001:db8:5::20/64"]),
        ("eth1", &["198.51.100.2/24"]),
        ("eth2", &["203.0.113.2/24", "2001:db8:1::2/64"]),
    ] {
        h.links.insert(name.into(), link(addrs));
    }
    h
}

fn render(config: &str) -> String {
    render_on(config, &host())
}

fn render_on(config: &str, host: &HostView) -> String {
    // examples/full.toml names the user `backup`.
    let users: BTreeMap<String, u32> = [("backup".to_string(), 34)].into_iter().collect();
    let model =
        symroute::config::parse_str_with(config, "test.toml", &users).expect("valid config");
    plan::build(&model, host).nft
}

/// Long lists become named sets; several single-key policies in a row become verdict maps.
fn big_config() -> String {
    let macs: Vec<String> = (0..20)
        .map(|i| format!("\"02:00:00:00:01:{i:02x}\""))
        .collect();
    let ports: Vec<String> = (0..18)
        .map(|i| (1000 + 10 * i).to_string())
        .chain(["\"2000-2100\"".into()])
        .collect();
    let nets: Vec<String> = (0..18)
        .map(|i| format!("\"10.{i}.0.0/16\""))
        .chain((0..18).map(|i| format!("\"fd{i:02x}::/16\"")))
        .collect();
    format!(
        r#"
[[gateway]]
name = "a"
interface = "up1"
via = "203.0.113.1"
via6 = "2001:db8:1::1"
[[gateway]]
name = "b"
interface = "up2"
via = "198.51.100.1"
via6 = "2001:db8:2::1"
[[policy]]
name = "macs"
reply_via = "a"
[policy.match]
source_mac = [{}]
[[policy]]
name = "ports"
route_via = "b"
[policy.match]
protocol = ["tcp", "udp"]
destination_port = [{}]
[[policy]]
name = "nets"
reply_via = "b"
[policy.match]
source = [{}]
in_interface = ["eth0", "eth2", "lan0"]
[[policy]]
name = "src-a"
route_via = "a"
[policy.match]
source = ["192.0.2.0/24", "198.18.0.0/15"]
[[policy]]
name = "src-b"
route_via = "b"
[policy.match]
source = ["203.0.113.0/24"]
[[policy]]
name = "nodst"
reply_via = "a"
[policy.match]
not_destination = ["192.168.0.0/16"]
protocol = "tcp"
source_port = "1-1023"
[[divert]]
name = "tp"
protocol = ["tcp", "udp"]
"#,
        macs.join(", "),
        ports.join(", "),
        nets.join(", ")
    )
}

#[test]
fn symroute_tables_read_back_identically() {
    require_root();
    let mut configs: Vec<(String, String)> =
        ["full", "two-isps-firewall", "proxy-relay", "haproxy-divert"]
            .iter()
            .map(|e| {
                let path = format!("{}/examples/{e}.toml", env!("CARGO_MANIFEST_DIR"));
                (
                    e.to_string(),
                    std::fs::read_to_string(path).expect("example"),
                )
            })
            .collect();
    configs.push(("big".into(), big_config()));
    for (name, config) in configs {
        let text = render(&config);
        let from_text =
            from_symroute_nft_text(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        let (from_json, _) = load_and_read("nfx", &text);
        assert_same_shape(&name, &from_json, &from_text);
        let changed = assert_same_behaviour(&name, &from_json, &from_text);
        eprintln!(
            "{name}: {} chains, {changed} evaluations changed a mark",
            from_json.chains.len()
        );
        assert!(
            changed > 0,
            "{name}: no packet was marked, the comparison proves nothing"
        );
    }
}

/// Users and cgroups (real ones, below a test parent: nft resolves them when it loads the
/// table): read back from nft's JSON (paths, no level) and from the text (with levels),
/// the host's own packets from every mix of user and cgroup evaluate alike, and as the
/// model says.
#[test]
fn socket_keys_read_back_identically() {
    require_root();
    let mut cg = support::cgroups::TestCgroups::new();
    let (svc, a, ab) = (cg.make("svc"), cg.make("a"), cg.make("a/b"));
    let missing = cg.path("not-yet");
    let mut config = "[[gateway]]\nname = \"a\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\nvia6 = \"2001:db8:1::1\"\n[[gateway]]\nname = \"b\"\ninterface = \"up2\"\nvia = \"198.51.100.1\"\n".to_string();
    for (name, via, keys) in [
        ("u", "a", "user = [34, 1001]".to_string()),
        ("svc", "b", format!("cgroup = [\"{svc}\", \"{missing}\"]")),
        (
            "ab-tcp",
            "a",
            format!("cgroup = [\"{ab}\"]\nprotocol = \"tcp\""),
        ),
        ("a-root", "b", format!("cgroup = \"{a}\"\nuser = 0")),
        ("a", "a", format!("cgroup = \"{a}\"")),
        (
            "smtp",
            "b",
            "protocol = \"tcp\"\ndestination_port = 25".to_string(),
        ),
    ] {
        config += &format!(
            "[[policy]]\nname = \"{name}\"\nroute_via = \"{via}\"\n[policy.match]\n{keys}\n"
        );
    }
    let mut host = host();
    let mut c = plan::Cgroups {
        nft_root: cg.hierarchy.nft_root.clone(),
        ..Default::default()
    };
    for rel in ["svc", "a", "a/b"] {
        c.ids.insert(
            symroute::model::CgroupPath::new(&cg.path(rel)).unwrap(),
            cg.id(rel),
        );
    }
    host.cgroups = Some(c);
    let text = render_on(&config, &host);
    assert!(text.contains("socket cgroupv2 level 2 vmap"), "{text}");
    let from_text = from_symroute_nft_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (from_json, _) = load_and_read("nfs", &text);
    assert_same_shape("socket keys", &from_json, &from_text);
    let model = symroute::config::parse_str(&config, "t.toml").unwrap();
    let mut checked = 0;
    for uid in [0, 34, 1001, 1002] {
        for cgroup in ["", &svc, &a, &ab, &format!("{ab}/c"), &cg.path("other")] {
            for (proto, port) in [(6u8, 25u16), (17, 25), (6, 80)] {
                let p = PacketCtx::new(
                    proto,
                    sa("198.51.100.2:40000"),
                    sa(&format!("8.8.8.8:{port}")),
                )
                .with_sender(Some(uid), Some(cgroup), &cg.hierarchy.nft_root);
                let (x, y) = (
                    evaluate(&from_json, Hook::Output, &p),
                    evaluate(&from_text, Hook::Output, &p),
                );
                assert_eq!(outcome(&x), outcome(&y), "uid {uid} in {cgroup:?}");
                let want = model.first_match(&symroute::model::PacketKeys {
                    in_interface: None,
                    source_mac: None,
                    source: p.src,
                    destination: p.dst,
                    protocol: proto,
                    source_port: p.sport,
                    destination_port: p.dport,
                    uid: Some(uid),
                    cgroup: Some(cgroup.to_string()),
                });
                let got = x.steps.iter().find_map(|s| {
                    let chain = s.verdict.as_deref()?.strip_prefix("goto set_p")?;
                    chain.parse::<usize>().ok()
                });
                assert_eq!(got, want, "uid {uid} in {cgroup:?}, {proto}/{port}");
                checked += 1;
            }
        }
    }
    eprintln!("{checked} local packets evaluated alike from nft's JSON and from the text");
}

// ---------------------------------------------------------------------------------------
// 2. Hand-written rulesets (within the nft text subset the text reader understands)

/// Seed 2's accepted answer, natively (what tests in src/lab do on the relay).
const SEED2_ANSWER_NFT: &str = "table ip relay {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		meta mark set ct mark
		meta mark != 0 return
		ip saddr != 10.0.0.0/8 ether saddr 02:03:04:05:06:07 meta mark set 254
		ct mark set meta mark
	}
	chain out {
		type route hook output priority mangle; policy accept;
		meta mark set ct mark
	}
}
";

/// The HAProxy host's DIVERT chain, natively.
const SEED2_DIVERT_NFT: &str = "table ip divert {
	chain divert {
		meta mark set 1
		accept
	}
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp socket transparent 1 jump divert
	}
}
";

/// kube-proxy's masquerade marking, and a verdict map on the conntrack mark.
const KUBE_LIKE_NFT: &str = "table ip kube {
	map by_iif {
		type ifname : verdict
		elements = { \"up1\" : jump mark_svc, \"lan0\" : goto mark_masq }
	}
	chain mark_masq {
		meta mark set meta mark or 0x4000
	}
	chain mark_svc {
		meta mark set meta mark or 0x8000
		return
		meta mark set 0x1
	}
	chain pre {
		type filter hook prerouting priority -160; policy accept;
		iifname vmap @by_iif
		ct mark and 0xff vmap { 0x01 : jump mark_masq, 0xfe : drop }
		meta mark and 0x4000 == 0x4000 ct mark set ct mark or 0x4000
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark and 0x4000 == 0x4000 masquerade
	}
	chain forward_f {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		meta mark and 0x8000 != 0 accept
	}
}
table ip6 six {
	chain pre {
		type filter hook prerouting priority -140; policy accept;
		ip6 saddr 2001:db8:c::/48 th dport { 25, 587 } ct mark set ct mark xor 0x10
		ct direction reply ct mark and 0x10 == 0x10 meta mark set ct mark and 0xff
	}
}
";

#[test]
fn hand_written_rulesets_read_back_identically() {
    require_root();
    for (name, text) in [
        ("seed 2 answer", SEED2_ANSWER_NFT),
        ("seed 2 divert", SEED2_DIVERT_NFT),
        ("kube-like", KUBE_LIKE_NFT),
    ] {
        let from_text = from_symroute_nft_text(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (from_json, _) = load_and_read("nfh", text);
        assert_same_shape(name, &from_json, &from_text);
        let changed = assert_same_behaviour(name, &from_json, &from_text);
        eprintln!("{name}: {changed} evaluations changed a mark");
        assert!(changed > 0, "{name}");
    }
    // A few exact expectations on the kube-like table.
    let rs = from_symroute_nft_text(KUBE_LIKE_NFT).unwrap();
    let p = PacketCtx::new(6, sa("192.0.2.10:1"), sa("203.0.113.2:80")).with_iif("lan0");
    let r = evaluate(&rs, Hook::Prerouting, &p);
    // `goto` from the base chain: when mark_masq ends, so does `pre` (the ct mark rule
    // after the map never runs for this packet).
    assert_eq!((r.ctx_after.mark, r.ctx_after.ct.mark), (0x4000, 0));
    let mut premarked = p.clone().with_iif("eth0");
    premarked.mark = 0x4000;
    let r2 = evaluate(&rs, Hook::Prerouting, &premarked);
    assert_eq!((r2.ctx_after.mark, r2.ctx_after.ct.mark), (0x4000, 0x4000));
    let r = evaluate(&rs, Hook::Prerouting, &p.clone().with_iif("up1"));
    assert_eq!(r.ctx_after.mark, 0x8000);
    let mut bad = p.clone().with_iif("eth0");
    bad.ct.mark = 0x12fe;
    assert!(evaluate(&rs, Hook::Prerouting, &bad).dropped);
    let post = evaluate(&rs, Hook::Postrouting, &r.ctx_after.clone().with_oif("up2"));
    assert!(post.nat.is_empty(), "mark 0x8000 is not masqueraded");
    let fwd = evaluate(&rs, Hook::Forward, &p);
    assert!(fwd.dropped, "new, unmarked: forward policy drop");
}

// ---------------------------------------------------------------------------------------
// 3. iptables-nft rules

const SEED2_IPTABLES: &[&str] = &[
    "-t mangle -A PREROUTING -j CONNMARK --restore-mark",
    "-t mangle -A PREROUTING -m mark ! --mark 0 -j RETURN",
    "-t mangle -A PREROUTING ! -s 10.0.0.0/8 -m mac --mac-source 02:03:04:05:06:07 -j MARK --set-mark 254",
    "-t mangle -A PREROUTING -j CONNMARK --save-mark",
    "-t mangle -A OUTPUT -j CONNMARK --restore-mark",
];

fn iptables(ns: &Netns, tool: &str, rule: &str) {
    let mut args = vec![tool];
    args.extend(rule.split_whitespace());
    ns.exec(&args)
        .unwrap_or_else(|e| panic!("{tool} {rule}: {e:#}"));
}

/// The namespace's whole firewall, as `explain` would read it.
fn read_all(ns: &Netns) -> Ruleset {
    let json = json_of(ns);
    let v4 = ns.exec(&["iptables-save"]).expect("iptables-save");
    let v6 = ns.exec(&["ip6tables-save"]).expect("ip6tables-save");
    combine(Some(&json), Some(&v4), Some(&v6)).unwrap_or_else(|e| panic!("{e}\n{v4}\n{v6}"))
}

#[test]
fn iptables_nft_rules_come_from_iptables_save() {
    require_root();
    let ns = Netns::new("nfi").expect("netns");
    for r in SEED2_IPTABLES {
        iptables(&ns, "iptables", r);
    }
    iptables(&ns, "iptables", "-t mangle -N DIVERT");
    iptables(&ns, "iptables", "-t mangle -A DIVERT -j MARK --set-mark 1");
    iptables(&ns, "iptables", "-t mangle -A DIVERT -j ACCEPT");
    iptables(
        &ns,
        "iptables",
        "-t mangle -I PREROUTING 1 -p tcp -m socket -j DIVERT",
    );
    iptables(
        &ns,
        "iptables",
        "-t mangle -A FORWARD -i eth2 -p tcp --dport 25 -j MARK --set-mark 0",
    );
    iptables(
        &ns,
        "iptables",
        "-t nat -A PREROUTING -i up1 -p tcp --dport 2525 -j DNAT --to-destination 10.77.0.10:25",
    );
    iptables(
        &ns,
        "ip6tables",
        "-t mangle -A PREROUTING -s 2001:db8:c::/48 -j CONNMARK --set-xmark 0x10/0xff",
    );

    // The JSON alone: those tables are iptables-nft's, left out with a note.
    let json = json_of(&ns);
    let only_json = from_nft_json(&json).expect("json");
    assert!(only_json.chains.is_empty(), "{:#?}", only_json.chains);
    assert!(
        only_json
            .notes
            .iter()
            .any(|n| n.contains("ip mangle") && n.contains("iptables-save")),
        "{:?}",
        only_json.notes
    );
    // Kept, they are opaque.
    let opaque = from_nft_json_keep_xtables(&json).expect("json");
    assert!(opaque
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .any(|r| r.text.contains("xt target \"CONNMARK\"")));

    let rs = read_all(&ns);
    assert!(rs.chains.iter().all(|c| c
        .rules
        .iter()
        .all(|r| matches!(r.origin, Origin::Iptables { .. }))));
    let native = {
        let mut n = from_symroute_nft_text(SEED2_ANSWER_NFT).unwrap();
        n.extend(from_symroute_nft_text(SEED2_DIVERT_NFT).unwrap());
        n
    };
    // Same marks as the native nft version, for every packet at prerouting and output.
    let mut compared = 0;
    for p in packets().into_iter().filter(|p| p.family == Family::Inet4) {
        for h in [Hook::Prerouting, Hook::Output] {
            let (a, b) = (evaluate(&rs, h, &p), evaluate(&native, h, &p));
            let tag = |r: &HookResult| (r.ctx_after.mark, r.ctx_after.ct.mark, r.dropped);
            let expect = if h == Hook::Prerouting && p.l4proto == 6 && p.socket != LocalSocket::None
            {
                // DIVERT runs first in the iptables version (inserted at 1): mark 1, accept.
                (1, p.ct.mark, false)
            } else {
                tag(&b)
            };
            assert_eq!(tag(&a), expect, "{h:?} {p:?}\n{}", outcome(&a));
            assert!(!a.uncertain, "{}", outcome(&a));
            compared += 1;
        }
    }
    assert!(compared > 100);
    // The exact seed texts survive, with their lines.
    let fwd = rs
        .chain(NfFamily::Ip, "mangle", "FORWARD")
        .expect("FORWARD");
    assert_eq!(
        fwd.rules[0].text,
        "-A FORWARD -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x0/0xffffffff"
    );
    // DNAT from the nat table, IPv6 CONNMARK from ip6tables-save.
    let syn = PacketCtx::new(6, sa("192.0.2.10:40000"), sa("203.0.113.2:2525")).with_iif("up1");
    let r = evaluate(&rs, Hook::Prerouting, &syn);
    assert_eq!(r.ctx_after.dst, "10.77.0.10".parse::<IpAddr>().unwrap());
    let syn6 =
        PacketCtx::new(6, sa("[2001:db8:c::10]:40000"), sa("[2001:db8:1::2]:25")).with_iif("up1");
    assert_eq!(
        evaluate(&rs, Hook::Prerouting, &syn6).ctx_after.ct.mark,
        0x10
    );
}

// ---------------------------------------------------------------------------------------
// 4. Real packets: predicted conntrack marks against `conntrack -L`

/// `hello <ip> <port>` / `echo <ip> <port>` → the port the server saw.
fn peer_port(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"))
}

/// Connects from seed 1's client to each (protocol, destination); every one must answer.
/// Returns (protocol, the client's address as the server saw it, destination).
fn from_client(
    c: &Netns,
    targets: &[(u8, SocketAddr)],
    ok: Duration,
) -> Vec<(u8, SocketAddr, SocketAddr)> {
    targets
        .iter()
        .map(|&(proto, dst)| {
            let answer = if proto == 6 {
                tcp_probe(c, dst, ok)
            } else {
                udp_probe(c, dst, ok)
            }
            .unwrap_or_else(|e| panic!("{dst}: {e:#}"));
            let src_ip: IpAddr = if dst.is_ipv4() {
                TwoIsps::CLIENT_V4.into()
            } else {
                TwoIsps::CLIENT_V6.into()
            };
            (proto, SocketAddr::new(src_ip, peer_port(&answer)), dst)
        })
        .collect()
}

/// Predicts the connection's first packet at the firewall's prerouting, and compares the
/// conntrack mark (and DNAT) with the kernel's entry.
fn check_entry(
    rs: &Ruleset,
    entries: &[Ct],
    proto: u8,
    iif: &str,
    mac: Option<&str>,
    src: SocketAddr,
    dst: SocketAddr,
) -> u32 {
    let name = if proto == 6 { "tcp" } else { "udp" };
    let e = entries
        .iter()
        .find(|c| {
            c.proto == name
                && c.src == src.ip()
                && c.sport == src.port()
                && c.dst == dst.ip()
                && c.dport == dst.port()
        })
        .unwrap_or_else(|| {
            panic!(
                "no conntrack entry {name} {src} -> {dst}:\n{}",
                entries
                    .iter()
                    .map(|c| c.line.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    let mut p = PacketCtx::new(proto, src, dst).with_iif(iif);
    if let Some(m) = mac {
        p = p.with_src_mac(m);
    }
    let r = evaluate(rs, Hook::Prerouting, &p);
    assert!(!r.uncertain, "{}", outcome(&r));
    assert_eq!(
        r.ctx_after.ct.mark,
        e.mark,
        "{name} {src} -> {dst}: predicted ct mark {:#x}, conntrack says {}\n{}",
        r.ctx_after.ct.mark,
        e.line,
        outcome(&r)
    );
    // A predicted DNAT is the kernel's reply source.
    assert_eq!(
        (r.ctx_after.dst, r.ctx_after.dport),
        (e.reply_src, Some(e.reply_sport)),
        "{}\n{}",
        e.line,
        outcome(&r)
    );
    eprintln!(
        "  {name} {src} -> {dst}: ct mark {:#x} predicted and seen",
        e.mark
    );
    e.mark
}

/// `symroute apply` in `ns`, removed again on drop.
struct Applied<'a>(&'a Netns);

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.0, "remove", None, &[]);
    }
}

#[test]
fn predicted_conntrack_marks_two_isps() {
    let t = lab();
    let _svc = t.start_services().expect("services");
    let config = include_str!("../../examples/two-isps-firewall.toml");
    let run = symroute_in(&t.fw, "apply", Some(config), &[]).ok();
    eprintln!("{}", run.stdout);
    let _applied = Applied(&t.fw);

    let ok = Duration::from_secs(3);
    let c = &t.client;
    let fw = |port| {
        [
            SocketAddr::new(TwoIsps::FW_UP1_V4.into(), port),
            SocketAddr::new(TwoIsps::FW_UP1_V6.into(), port),
        ]
    };
    let mut targets: Vec<(u8, SocketAddr)> = Vec::new();
    targets.extend(fw(25).map(|a| (6, a)));
    targets.extend(fw(TwoIsps::DNAT_PORT).map(|a| (6, a)));
    targets.extend(fw(TwoIsps::UDP_PORT).map(|a| (17, a)));
    let mut seen: Vec<(u8, &str, SocketAddr, SocketAddr)> = from_client(c, &targets, ok)
        .into_iter()
        .map(|(proto, src, dst)| (proto, "up1", src, dst))
        .collect();
    // A LAN host's own connection to the firewall: no decision.
    let answer =
        tcp_probe(&t.lan, SocketAddr::new(TwoIsps::FW_LAN_V4.into(), 25), ok).expect("lan probe");
    seen.push((
        6,
        "lan0",
        SocketAddr::new(TwoIsps::LAN_V4.into(), peer_port(&answer)),
        SocketAddr::new(TwoIsps::FW_LAN_V4.into(), 25),
    ));

    let rs = read_all(&t.fw);
    let entries = conntrack::list(&t.fw, &[]);
    let mut marks = BTreeMap::new();
    for (proto, iif, src, dst) in seen {
        let m = check_entry(&rs, &entries, proto, iif, None, src, dst);
        *marks.entry(m).or_insert(0) += 1;
    }
    assert_eq!(marks.get(&0x3300_0000), Some(&6), "{marks:?}");
    assert_eq!(marks.get(&0), Some(&1), "{marks:?}");

    // The replies the kernel routed via isp1 (the probes worked) are predicted marked.
    let mut synack = PacketCtx::new(
        6,
        SocketAddr::new(TwoIsps::FW_UP1_V4.into(), 25),
        sa("192.0.2.10:40000"),
    );
    synack.ct = CtCtx {
        state: CtState::Established,
        direction: CtDirection::Reply,
        mark: 0x3300_0000,
    };
    let out = evaluate(&rs, Hook::Output, &synack);
    assert_eq!(out.ctx_after.mark, 0x3300_0000);
    assert!(out.reroute);

    // No way back in main (up2 down): the firewall's own services still answer (symroute's
    // `from` rules route the replies' first lookup), and each new connection's conntrack
    // mark is still the predicted one.
    t.fw.ip("link set up2 down").expect("up2 down");
    let mut local: Vec<(u8, SocketAddr)> = fw(25).map(|a| (6, a)).to_vec();
    local.extend(fw(TwoIsps::UDP_PORT).map(|a| (17, a)));
    let again = from_client(c, &local, ok);
    let entries = conntrack::list(&t.fw, &[]);
    for (proto, src, dst) in again {
        let m = check_entry(&rs, &entries, proto, "up1", None, src, dst);
        assert_eq!(m, 0x3300_0000, "isp1's reply mark (id 26 from its name)");
    }
}

#[test]
fn predicted_conntrack_marks_seed2_iptables_and_nft() {
    require_root();
    // A relay with two neighbours: the proxy (its MAC) and a direct client.
    let relay = Netns::new("nfrel").expect("netns");
    let proxy = Netns::new("nfprx").expect("netns");
    let direct = Netns::new("nfdir").expect("netns");
    veth_mac(&relay, "eth0", None, &proxy, "eth0", Some(PROXY_MAC)).expect("veth");
    veth_mac(
        &relay,
        "eth1",
        None,
        &direct,
        "eth0",
        Some("02:00:00:00:00:99"),
    )
    .expect("veth");
    for (ns, dev, addr) in [
        (&relay, "eth0", "192.0.2.20/24"),
        (&relay, "eth1", "198.51.100.20/24"),
        (&proxy, "eth0", "192.0.2.10/24"),
        (&direct, "eth0", "198.51.100.10/24"),
    ] {
        ns.ip(&format!("addr add {addr} dev {dev}")).expect("addr");
    }
    let _servers = [
        TcpServer::start(&relay, sa("192.0.2.20:25")).expect("server"),
        TcpServer::start(&relay, sa("198.51.100.20:25")).expect("server"),
    ];
    let ok = Duration::from_secs(3);
    let probe = |from: &Netns, dst: &str| -> SocketAddr {
        let answer = tcp_probe(from, sa(dst), ok).unwrap_or_else(|e| panic!("{dst}: {e:#}"));
        let ip: IpAddr = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        SocketAddr::new(ip, peer_port(&answer))
    };
    for variant in ["iptables-nft", "nft"] {
        relay.exec(&["nft", "flush", "ruleset"]).expect("flush");
        let _ = relay.exec(&["conntrack", "-F"]);
        match variant {
            "nft" => relay.nft(SEED2_ANSWER_NFT).expect("nft"),
            _ => {
                for r in SEED2_IPTABLES {
                    iptables(&relay, "iptables", r);
                }
            }
        }
        eprintln!("{variant}:");
        let via_proxy = probe(&proxy, "192.0.2.20:25");
        let direct_src = probe(&direct, "198.51.100.20:25");
        let rs = read_all(&relay);
        let entries = conntrack::list(&relay, &[]);
        assert_eq!(
            check_entry(
                &rs,
                &entries,
                6,
                "eth0",
                Some(PROXY_MAC),
                via_proxy,
                sa("192.0.2.20:25")
            ),
            254
        );
        assert_eq!(
            check_entry(
                &rs,
                &entries,
                6,
                "eth1",
                Some("02:00:00:00:00:99"),
                direct_src,
                sa("198.51.100.20:25")
            ),
            0
        );
    }
}
