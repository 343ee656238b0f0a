//! The plan each example config produces, on a made-up host, compared with a reviewed
//! snapshot in tests/snapshots/. No root needed. After an intended change, regenerate with
//! `UPDATE_SNAPSHOTS=1 cargo test --test integration plan_snapshots::` and review the diff.

use std::collections::BTreeMap;

use symroute::model::CgroupPath;
use symroute::plan::{self, diff, Cgroups, HostView, Link};

/// A host where every interface the examples name is up, on networks covering their next hops.
fn host() -> HostView {
    let link = |addrs: &[&str]| Link {
        up: true,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        peers: Vec::new(),
    };
    let mut h = HostView::default();
    h.links
        .insert("lo".into(), link(&["127.0.0.1/8", "::1/128"]));
    h.links.insert(
        "lan0".into(),
        link(&["10.77.0.1/24", "fd77::1/64", "fe80::1/64"]),
    );
    h.links
        .insert("up1".into(), link(&["203.0.113.2/24", "2001:db8:1::2/64"]));
    h.links
        .insert("up2".into(), link(&["198.51.100.2/24", "2001:db8:2::2/64"]));
    h.links.insert(
        "eth0".into(),
        link(&["198.51.100.20/24", "2001:db8:5::20/64"]),
    );
    h.links.insert("eth1".into(), link(&["198.51.100.2/24"]));
    h.links
        .insert("eth2".into(), link(&["203.0.113.2/24", "2001:db8:1::2/64"]));
    for i in ["all", "lan0", "up1", "up2", "eth0", "eth1", "eth2"] {
        h.sysctls.insert(
            format!("net.ipv4.conf.{i}.rp_filter"),
            if i == "all" { "1" } else { "0" }.into(),
        );
    }
    h.sysctls
        .insert("net.ipv4.icmp_errors_use_inbound_ifaddr".into(), "0".into());
    h
}

/// [`host`] on a hybrid cgroup host where the full example's backup service runs, and a
/// command `symroute exec --gateway isp1` started runs (isp2's exec cgroup is empty).
fn host_with_cgroups() -> HostView {
    let path = |p: &str| CgroupPath::new(p).unwrap();
    let (exec1, exec2) = (
        path("symroute.exec/netns-1/isp1"),
        path("symroute.exec/netns-1/isp2"),
    );
    let mut h = host();
    h.cgroups = Some(Cgroups {
        nft_root: "unified/".into(),
        ids: [
            (path("system.slice/backup.service"), 4242),
            (exec1.clone(), 4343),
            (exec2.clone(), 4344),
        ]
        .into(),
        populated: [exec1.clone()].into(),
        exec: [("isp1".to_string(), exec1), ("isp2".to_string(), exec2)].into(),
    });
    h
}

fn render(name: &str) -> String {
    let path = format!("{}/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let model = symroute::config_file::load(std::path::Path::new(&path)).expect("example is valid");
    let host = if name == "full" {
        host_with_cgroups()
    } else {
        host()
    };
    let p = plan::build(&model, &host);
    let mut s = String::new();
    for g in &p.gateways {
        s += &format!(
            "gateway {} table {} reply_mark {:?} route_mark {:?} {:?}\n",
            g.name,
            g.table,
            g.reply_mark.map(|m| m.to_string()),
            g.route_mark.map(|m| m.to_string()),
            g.state
        );
    }
    for p in &p.policies {
        let list: Vec<String> = p
            .gateways
            .iter()
            .map(|g| {
                let w = g.weight.map(|w| format!("={w}")).unwrap_or_default();
                let on = if g.active { "" } else { " (inactive)" };
                format!("{}{w}{on}", g.name)
            })
            .collect();
        s += &format!(
            "policy {} {} {} mark {} [{}]{}{}\n",
            p.name,
            p.kind,
            p.gateway,
            p.mark,
            list.join(", "),
            p.mode.map(|m| format!(" {m}")).unwrap_or_default(),
            p.sticky_secs
                .map(|t| format!(" sticky {t}s"))
                .unwrap_or_default()
        );
        for w in &p.waiting {
            s += &format!("  waiting for cgroup {}: {}\n", w.cgroup, w.why);
        }
    }
    s += "## nft\n";
    s += &p.nft;
    s += "## rules\n";
    for r in &p.rules {
        s += &format!("{r}\n");
    }
    s += "## routes\n";
    for r in &p.routes {
        s += &format!("{r}\n");
    }
    s += "## sysctl changes on this host\n";
    let changes = diff::diff(
        &p,
        &diff::Observed {
            host,
            ..Default::default()
        },
        &BTreeMap::new(),
    );
    for c in &changes.sysctls {
        s += &format!("{} {} -> {}\n", c.key, c.from, c.to);
    }
    s
}

fn check(name: &str) {
    let got = render(name);
    let file = format!("{}/tests/snapshots/{name}.plan", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&file, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|_| panic!("missing snapshot {file}; run with UPDATE_SNAPSHOTS=1"));
    assert_eq!(got, want, "plan of examples/{name}.toml changed; if intended, regenerate with UPDATE_SNAPSHOTS=1 and review");
}

#[test]
fn two_isps_firewall() {
    check("two-isps-firewall");
}

#[test]
fn proxy_relay() {
    check("proxy-relay");
}

#[test]
fn haproxy_divert() {
    check("haproxy-divert");
}

#[test]
fn full() {
    check("full");
}

#[test]
fn failover() {
    check("failover");
}

#[test]
fn failover_health() {
    check("failover-health");
}

#[test]
fn ha_pair() {
    check("ha-pair");
}

/// Property: a plan compared with a kernel that holds exactly that plan needs no change.
#[test]
fn diff_of_applied_plan_is_empty() {
    for name in [
        "two-isps-firewall",
        "proxy-relay",
        "haproxy-divert",
        "full",
        "failover",
        "failover-health",
        "ha-pair",
    ] {
        let path = format!("{}/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let model = symroute::config_file::load(std::path::Path::new(&path)).unwrap();
        let mut host = host();
        let p = plan::build(&model, &host);
        // The kernel after apply: our objects, our table, sysctls fixed.
        for (k, want) in &p.sysctls {
            let cur = host.sysctls.get(k).cloned().unwrap_or_default();
            if let Some(v) = want.fix(&cur, &host) {
                host.sysctls.insert(k.clone(), v);
            }
        }
        let observed = diff::Observed {
            host,
            rules: p.rules.clone(),
            routes: p.routes.clone(),
            nft_fingerprint: Some(p.nft_fingerprint.clone()),
            ..Default::default()
        };
        let c = diff::diff(&p, &observed, &BTreeMap::new());
        assert!(c.is_empty(), "{name}: {:?}", c.summary());
        assert!(diff::conflicts(&p, &observed).is_empty());
    }
}

/// Stable marks: the same gateways and policies listed in another order, or with another
/// gateway inserted first, keep every gateway's marks, table, rule and route.
#[test]
fn reordering_or_adding_gateways_keeps_marks_tables_and_rules() {
    let text = std::fs::read_to_string(format!(
        "{}/examples/failover-health.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let plan_of = |text: &str| {
        plan::build(
            &symroute::config::parse_str(text, "t.toml").unwrap(),
            &host(),
        )
    };
    let base = plan_of(&text);
    // Blocks: [[gateway]] isp1 (with its check), [[gateway]] isp2, then the policies.
    let at = |key: &str, from: usize| from + text[from..].find(key).unwrap();
    let g1 = at("[[gateway]]", 0);
    let g2 = at("[[gateway]]", g1 + 1);
    let p1 = at("# New connections", g2);
    let p2 = at("# Connections that arrive", p1);
    let reordered = format!(
        "{}{}{}{}",
        &text[g2..p1],
        &text[p2..],
        &text[g1..g2],
        &text[p1..p2]
    );
    let extra = "[[gateway]]\nname = \"lte\"\ninterface = \"wwan0\"\n\
        [[policy]]\nname = \"lte-first\"\nroute_via = \"lte\"\n[policy.match]\nprotocol = \"udp\"\n";
    for (what, other) in [
        ("reordered", plan_of(&reordered)),
        (
            "a gateway and policy added first",
            plan_of(&format!("{extra}{text}")),
        ),
    ] {
        for g in &base.gateways {
            let o = other.gateways.iter().find(|o| o.name == g.name).unwrap();
            assert_eq!(
                (o.table, o.reply_mark, o.route_mark),
                (g.table, g.reply_mark, g.route_mark),
                "{what}: {}",
                g.name
            );
        }
        let missing: Vec<_> = base.rules.difference(&other.rules).collect();
        assert!(missing.is_empty(), "{what}: rules changed: {missing:?}");
        let missing: Vec<_> = base.routes.difference(&other.routes).collect();
        assert!(missing.is_empty(), "{what}: routes changed: {missing:?}");
    }
}
