//! First match wins, whatever the rendering: random configs (mixed keys, overlapping
//! selectors, secondary conditions, negations, reply and route policies, failover lists,
//! shares, match-all policies, masks small enough to need several blocks) × random
//! packets. The reference is `Model::first_match` over the validated model; the rendered
//! `inet symroute` table is read back by explain's netfilter reader and run by its
//! evaluator (prerouting for packets that arrive, output for the host's own). The same
//! generator feeds `tests/integration/classify_kernel.rs`, which sends real packets.

use crate::support;

use support::classify::{
    disjoint_pools, random_config, random_packet, wide_pools, winner_by_nft, Pools,
};
use symroute::config::parse_str;
use symroute::fuzz::Rng;
use symroute::plan::build;

#[test]
fn rendered_classification_is_first_match() {
    let (_, _, interval) = check(Pools::default(), 0x15c1_a55f_0000_0001, 400);
    assert!(interval > 40, "{interval}");
}

/// Address keys with hundreds of prefixes: named maps, per-length hashed lookups.
#[test]
fn large_prefix_keys_are_first_match_too() {
    let (named, _, interval) = check(wide_pools(), 0x15c1_a55f_0000_0002, 150);
    assert!(named > 10 && interval > 10, "{named} {interval}");
    let (named, per_len, _) = check(disjoint_pools(), 0x15c1_a55f_0000_0003, 150);
    assert!(named > 10 && per_len > 10, "{named} {per_len}");
}

/// Mostly the host's own connections: user and cgroup keys as primaries (one lookup per
/// uid and per cgroup level) and as secondary conditions, cgroups that do not exist yet.
#[test]
fn socket_keys_are_first_match_too() {
    let pools = Pools {
        arrive: vec![None, None, None, Some("lan0")],
        socket_odds: 2,
        ..Pools::default()
    };
    check(pools, 0x15c1_a55f_0000_0004, 200);
}

/// Returns how many configs had named maps, per-length lookups and interval maps.
fn check(pools: Pools, seed: u64, n: usize) -> (usize, usize, usize) {
    let mut rng = Rng::new(seed);
    let (mut configs, mut packets, mut matched, mut blocks) = (0, 0, 0, 0);
    // Packets the host sends that a user or cgroup policy took.
    let mut by_socket = 0;
    // Configs whose table has: named maps, per-prefix-length lookups, interval maps.
    let (mut named, mut per_len, mut interval) = (0, 0, 0);
    // Configs with a lookup skipped when it cannot beat the best candidate so far, and
    // with a candidate that wins outright (nothing looked up after it comes first).
    let (mut guarded, mut decides) = (0, 0);
    // Configs whose table looks users / cgroups up in a map (not only rule by rule).
    let (mut uid_maps, mut cgroup_maps) = (0, 0);
    while configs < n {
        let text = random_config(&mut rng, &pools);
        let Ok(model) = parse_str(&text, "random.toml") else {
            continue;
        };
        configs += 1;
        let plan = build(&model, &pools.host());
        if model.policies.len() > plan.mark_mask.capacity() as usize {
            blocks += 1;
        }
        named += usize::from(plan.nft.contains("\tmap classify"));
        uid_maps += usize::from(plan.nft.contains("meta skuid vmap"));
        cgroup_maps += usize::from(
            plan.nft
                .lines()
                .any(|l| l.contains("socket cgroupv2 level") && l.contains("vmap")),
        );
        per_len += usize::from(plan.nft.contains("addr and "));
        decides += usize::from(plan.nft.lines().any(|l| {
            let l = l.trim();
            l.starts_with("ct mark and ") && l.contains(" < ") && l.contains(" goto set_p")
        }));
        guarded += usize::from(plan.nft.lines().any(|l| {
            let l = l.trim();
            l.starts_with("ct mark and ")
                && l.contains(" < ")
                && (l.contains(" vmap ") || l.contains("jump classify"))
        }));
        interval += usize::from(
            plan.nft.contains("flags interval")
                || plan
                    .nft
                    .lines()
                    .any(|l| l.contains("addr vmap {") && l.contains('/')),
        );
        let rs = symroute::explain::netfilter::from_symroute_nft_text(&plan.nft)
            .unwrap_or_else(|e| panic!("{e}\n{text}\n{}", plan.nft));
        for _ in 0..60 {
            let p = random_packet(&mut rng, &pools);
            let want = model.first_match(&p);
            let (got, ct_bits, packet_bits) =
                winner_by_nft(&rs, &p, plan.mark_mask.bits(), pools.nft_root);
            assert_eq!(
                got, want,
                "packet {p:?}\nconfig:\n{text}\ntable:\n{}",
                plan.nft
            );
            // Our conntrack bits end as the winner's decision, or zero: no scratch value
            // is left behind.
            let decision = want.map_or(0, |i| plan.policies[i].mark.bits());
            assert_eq!(ct_bits, decision, "packet {p:?}\n{text}\n{}", plan.nft);
            // The packet itself leaves marked exactly when the decision is for its
            // direction (a route_via decision: it is the connection's first packet, an
            // original-direction one), with the value stored for the connection.
            let routed = want.is_some_and(|i| {
                matches!(
                    model.policies[i].action,
                    symroute::model::Action::RouteVia(_)
                )
            });
            let packet = if routed { ct_bits } else { 0 };
            assert_eq!(packet_bits, packet, "packet {p:?}\n{text}\n{}", plan.nft);
            packets += 1;
            matched += usize::from(want.is_some());
            by_socket +=
                usize::from(want.is_some_and(|i| model.policies[i].selector.needs_socket()));
        }
    }
    println!(
        "{configs} configs ({blocks} needing more than one block; {named} with named maps, {per_len} with per-prefix-length lookups, {interval} with interval maps, {guarded} with a guarded lookup, {decides} with candidates deciding outright), {packets} packets, {matched} matched a policy, {by_socket} of them by user or cgroup"
    );
    println!("{uid_maps} configs look uids up in a map, {cgroup_maps} cgroups");
    assert!(guarded > n / 20, "{guarded}");
    assert!(decides > n / 4, "{decides}");
    if !pools.uids.is_empty() {
        assert!(by_socket > packets / 100, "{by_socket}/{packets}");
        assert!(
            uid_maps > n / 25 && cgroup_maps > n / 25,
            "{uid_maps} {cgroup_maps}"
        );
    }
    assert!(
        matched > packets / 5 && matched < packets * 9 / 10,
        "{matched}/{packets}"
    );
    assert!(blocks > n / 20, "{blocks}");
    (named, per_len, interval)
}
