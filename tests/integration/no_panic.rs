//! No input may panic: mutated example configs go through parse → plan → render → diff.
//! `symroute::fuzz` keeps this dependency-free and reproducible; a failure prints the
//! case and the input.

use std::collections::BTreeMap;

use symroute::config::parse_str_with;
use symroute::fuzz::{mutate, Rng};
use symroute::plan::{self, diff, HostView, Link};

const PIECES: &[&str] = &[
    "\"",
    "[",
    "]",
    "=",
    "\n",
    ",",
    "0x",
    "-",
    "/",
    ":",
    "::",
    "255",
    "4294967296",
    "-1",
    "\"\"",
    "[[policy]]",
    "[policy.match]",
    "in_interface",
    "source",
    "not_source",
    "destination_port = [1, \"2-3\"]",
    "protocol = [\"tcp\", \"icmp\"]",
    "é",
    "\u{0}",
    "reply_via",
    "route_via",
    "\"isp1\"",
    "mark_mask = \"0xffffffff\"",
    "first_table = 4294967295",
    "first_priority = 32765",
    "[[gateway]]\nname=\"g\"\ninterface=\"lo\"\n",
    "[[divert]]\nname=\"d\"\n",
    "10.0.0.0/8",
    "::/0",
    "[\"isp1\", \"isp2\"]",
    "{ isp1 = 3, isp2 = 1 }",
    "{ isp1 = 0 }",
    "sticky = \"10m\"",
    "\"auto\"",
    "via = \"auto\"",
    "[gateway.check]\ntargets = [\"192.0.2.1\", \"tcp:[::1]:80\"]\n",
    "down = \"7/10\"",
    "interval = \"0ms\"",
    "on_change = [\"true\"]",
    "metrics = \"0.0.0.0:1\"",
    "metrics_allow_remote = true",
    "fe80::1",
    "02:03:04:05:06:07",
    "user = [\"backup\", 1001]",
    "user = \"nobody-here\"",
    "4294967295",
    "cgroup = [\"system.slice/backup.service\", \"a/../b\"]",
    "cgroup = \"/\"",
    "system.slice/x.service",
    "id = 127",
    "id = 0",
    "id = 26",
    "id = 4294967295",
    "mark_mask = \"0x80000000\"",
    "mark_mask = \"0x00f00000\"",
    "ha_pair = true",
];

fn host() -> HostView {
    let mut h = HostView::default();
    for (name, addr) in [
        ("eth0", "198.51.100.20/24"),
        ("eth2", "203.0.113.2/24"),
        ("up1", "2001:db8:1::2/64"),
    ] {
        h.links.insert(
            name.into(),
            Link {
                up: true,
                addrs: vec![addr.parse().unwrap()],
                peers: Vec::new(),
            },
        );
        h.sysctls
            .insert(format!("net.ipv4.conf.{name}.rp_filter"), "1".into());
    }
    // Cgroups: a service's, and exec's for gateways of the examples' names.
    let path = |p: &str| symroute::model::CgroupPath::new(p).unwrap();
    let mut c = plan::Cgroups {
        nft_root: "unified/".into(),
        ..Default::default()
    };
    c.ids.insert(path("system.slice/backup.service"), 7);
    for g in ["isp1", "isp2", "g"] {
        let p = path(&format!("symroute.exec/netns-c1/{g}"));
        c.ids.insert(p.clone(), 8);
        c.populated.insert(p.clone());
        c.exec.insert(g.into(), p);
    }
    h.cgroups = Some(c);
    // What `via = "auto"` learns (one interface with both families, one with IPv4 only).
    h.learn_default_routes(vec![
        ("eth2".into(), "203.0.113.1".parse().unwrap(), 100),
        ("eth2".into(), "fe80::1".parse().unwrap(), 1024),
        ("up1".into(), "2001:db8:1::1".parse().unwrap(), 0),
    ]);
    h
}

#[test]
fn mutated_configs_never_panic() {
    let seeds: Vec<&str> = vec![
        include_str!("../../examples/full.toml"),
        include_str!("../../examples/two-isps-firewall.toml"),
        include_str!("../../examples/proxy-relay.toml"),
        include_str!("../../examples/haproxy-divert.toml"),
        include_str!("../../examples/failover.toml"),
        include_str!("../../examples/failover-health.toml"),
        include_str!("../../examples/ha-pair.toml"),
    ];
    let host = host();
    let users: BTreeMap<String, u32> = [("backup".to_string(), 34)].into_iter().collect();
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for case in 0..6000 {
        let text = mutate(&mut rng, seeds[case % seeds.len()], PIECES, 4, 8);
        let result = std::panic::catch_unwind(|| {
            if let Ok(model) = parse_str_with(&text, "fuzz.toml", &users) {
                let p = plan::build(&model, &host);
                let c = diff::diff(&p, &diff::Observed::default(), &BTreeMap::new());
                let _ = c.script();
                true
            } else {
                false
            }
        });
        match result {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panic!("case {case} panicked on input:\n{text}"),
        }
    }
    // The mutations must exercise both paths, or this test proves nothing.
    assert!(accepted > 100, "only {accepted} mutated configs were valid");
}
