//! Rendering the plan's nftables table `inet symroute` as `nft -f` input. Pure text.
//!
//! Shape: a connection's first packet (`ct state new`, our ct-mark bits still zero) jumps
//! to `classify`, whose rules (or verdict maps, for runs of single-key policies) `goto`
//! the matching policy's `set_pN` chain: count it, store the decision in the conntrack
//! mark. Every packet then restores the decision through a verdict map keyed on
//! `ct mark & MASK`, in the direction the decision is for (`reply_via`: replies,
//! `route_via`: originals). nft 1.0.x cannot OR one register into another, so each
//! decision value has a one-line `mark_V` chain that sets exactly our bits.

use std::fmt::Write as _;

use crate::model::{Action, Family, Mark, MarkMask, Model, Prefixes, Selector};

use super::{GatewayPlan, PolicyGateway, PolicyPlan};

pub const TABLE: &str = "symroute";

/// Lists longer than this go into a named set (kept out of the rule text, same lookup cost).
const INLINE_MAX: usize = 16;

/// The atomic replace: `add` makes sure the table exists so `delete` cannot fail, and the
/// whole input is one transaction (nft 1.0.6 has no `destroy`).
pub fn replace_script(table_text: &str) -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n{table_text}")
}

pub fn delete_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// `add element` lines that put the sources remembered in the sticky sets of `old` (the
/// table being replaced, as `nft list table` prints it) back into the sets of the same
/// name in `new`, with the time they had left: the atomic replace would otherwise make
/// every source draw its gateway again at each failover or reload. Sets of a gateway no
/// longer active in the policy are not in `new`, so their sources do draw again.
pub fn carry_sticky_sources(old: &str, new: &str) -> String {
    let mut out = String::new();
    for (name, timeout, elements) in sticky_sets(old) {
        if elements.is_empty() || !new.contains(&format!("\tset {name} {{\n")) {
            continue;
        }
        // An element without its own timeout had the old set's: keep it explicit, so
        // its `expires` never exceeds its timeout if the set's timeout changed.
        let items: Vec<String> = elements
            .iter()
            .map(
                |e| match (e.contains(" timeout "), e.split_once(" expires ")) {
                    (false, Some((addr, left))) if !timeout.is_empty() => {
                        format!("{addr} timeout {timeout} expires {left}")
                    }
                    _ => e.clone(),
                },
            )
            .collect();
        let _ = writeln!(
            out,
            "add element inet {TABLE} {name} {{ {} }}",
            items.join(", ")
        );
    }
    out
}

/// The sticky sets of a listed table: (name, set timeout, elements as printed).
fn sticky_sets(listing: &str) -> Vec<(String, String, Vec<String>)> {
    let mut sets = Vec::new();
    let mut lines = listing.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("set sticky_")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            continue;
        };
        let (mut timeout, mut elements, mut in_elements) = (String::new(), String::new(), false);
        for l in lines.by_ref() {
            if in_elements {
                elements.push(' ');
                elements.push_str(l);
                in_elements = !l.contains('}');
            } else if let Some(rest) = l.strip_prefix("elements = {") {
                elements.push_str(rest);
                in_elements = !rest.contains('}');
            } else if let Some(t) = l.strip_prefix("timeout ") {
                timeout = t.to_string();
            } else if l == "}" {
                break;
            }
        }
        let list = elements.split('}').next().unwrap_or("");
        let items = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        sets.push((format!("sticky_{name}"), timeout, items));
    }
    sets
}

/// nft identifiers can't hold '-' or '.'; prefix with the position to keep them unique.
pub fn counter_name(index: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("p{index}_{clean}")
}

fn divert_counter_name(index: usize, name: &str) -> String {
    format!("d{}", &counter_name(index, name)[1..])
}

/// Render the table and its fingerprint (FNV-1a of the text, stored as the table comment).
pub fn render(
    model: &Model,
    gateways: &[GatewayPlan],
    policies: &[PolicyPlan],
    divert: Option<Mark>,
) -> (String, String) {
    let mask = model.settings.mark_mask;
    let mut sets = String::new();
    let mut counters = String::new();
    let mut pre = Vec::new();
    let mut out = Vec::new();

    for (i, d) in model.diverts.iter().enumerate() {
        let mark = divert.expect("divert mark allocated when diverts exist");
        let c = divert_counter_name(i, d.name.as_str());
        let _ = writeln!(counters, "\tcounter {c} {{ }}");
        pre.push(format!(
            "{} socket transparent 1 counter name \"{c}\" {} accept",
            l4proto(&d.protocol.iter().map(|p| p.nft()).collect::<Vec<_>>()),
            set_mark("meta", mask, mark)
        ));
    }

    // Each policy's decision lives in its own chain (count, then store the decision);
    // classification chains reach it by `goto`, so the first match ends classification.
    let mut chains = String::new();
    let mut ct_marks = std::collections::BTreeSet::new();
    for (i, (p, pp)) in model.policies.iter().zip(policies).enumerate() {
        let _ = writeln!(counters, "\tcounter {} {{ }}", pp.counter);
        decision_chains(i, p, pp, mask, &mut sets, &mut chains, &mut ct_marks);
    }
    for m in ct_marks {
        let _ = writeln!(
            chains,
            "\tchain ctmark_{:x} {{\n\t\t{};\n\t}}",
            m.bits(),
            set_mark("ct", mask, m)
        );
    }
    // A policy's own rules (and named sets) are rendered only if some chain needs them.
    let mut own_rules: Vec<Option<Vec<String>>> = vec![None; model.policies.len()];
    // Local connections never match interface or MAC selectors, and only route_via
    // decisions matter for connections the host opens itself.
    let all: Vec<usize> = (0..model.policies.len()).collect();
    let local: Vec<usize> = model
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.action, Action::RouteVia(_)) && !p.selector.needs_ingress())
        .map(|(i, _)| i)
        .collect();
    let is_new = format!("ct state new ct mark and {mask} == 0");
    // Both classification chains may dispatch to the same `chk_pN`: write each once.
    let mut checks = CheckChains::default();
    for (chain, hook_rules, members) in [
        ("classify", &mut pre, &all),
        ("classify_out", &mut out, &local),
    ] {
        let rules = classify_rules(
            model,
            members,
            &mut own_rules,
            chain,
            mask,
            &mut checks,
            &mut sets,
        );
        if rules.is_empty() {
            continue;
        }
        let _ = writeln!(chains, "\tchain {chain} {{");
        for r in &rules {
            let _ = writeln!(chains, "\t\t{r}");
        }
        chains += "\t}\n";
        hook_rules.push(format!("{is_new} jump {chain}"));
    }
    chains += &checks.text;

    let mut reply_map = Vec::new();
    let mut orig_map = Vec::new();
    let mut marks: Vec<Mark> = Vec::new();
    for g in gateways {
        if let Some(m) = g.reply_mark {
            reply_map.push(format!("{m} : jump mark_{:x}", m.bits()));
            marks.push(m);
        }
        if let Some(m) = g.route_mark {
            orig_map.push(format!("{m} : jump mark_{:x}", m.bits()));
            marks.push(m);
        }
    }
    for m in &marks {
        let _ = writeln!(
            chains,
            "\tchain mark_{:x} {{\n\t\t{};\n\t}}",
            m.bits(),
            set_mark("meta", mask, *m)
        );
    }
    for (dir, map) in [("reply", &reply_map), ("original", &orig_map)] {
        if !map.is_empty() {
            let line = format!(
                "ct direction {dir} ct mark and {mask} vmap {{ {} }}",
                map.join(", ")
            );
            pre.push(line.clone());
            out.push(line);
        }
    }

    let mut body = String::new();
    body += &counters;
    body += &sets;
    body += &chains;
    let _ = writeln!(
        body,
        "\tchain pre {{\n\t\ttype filter hook prerouting priority mangle; policy accept;"
    );
    for l in &pre {
        let _ = writeln!(body, "\t\t{l}");
    }
    body += "\t}\n";
    // `type route` re-routes locally generated packets whose mark changed.
    let _ = writeln!(
        body,
        "\tchain out {{\n\t\ttype route hook output priority mangle; policy accept;"
    );
    for l in &out {
        let _ = writeln!(body, "\t\t{l}");
    }
    body += "\t}\n";

    // Connections the host opens itself chose their source address from the main table,
    // before the route_via mark re-routed them: give them the gateway interface's address,
    // or the answers would come back by the other path. Forwarded traffic is left alone
    // (its source is not local); the user's own NAT, if any, applies to it.
    let snat: Vec<String> = gateways
        .iter()
        .filter_map(|g| {
            g.route_mark.map(|m| {
                format!(
                    "ct direction original ct mark and {mask} == {m} oifname \"{}\" fib saddr type local fib saddr . oif type != local masquerade",
                    g.interface
                )
            })
        })
        .collect();
    if !snat.is_empty() {
        let _ = writeln!(
            body,
            "\tchain post {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for l in &snat {
            let _ = writeln!(body, "\t\t{l}");
        }
        body += "\t}\n";
    }

    let fp = fingerprint(&body);
    // nft's JSON drops table comments, so the fingerprint also names an empty chain.
    let text = format!(
        "table inet {TABLE} {{\n\tcomment \"symroute {fp}\"\n\tchain fingerprint_{fp} {{\n\t}}\n{body}}}\n"
    );
    (text, fp)
}

/// Policy `i`'s `set_pI` chain: count the connection, then store the decision in the
/// conntrack mark. One active gateway: its mark, in one rule. Several (a share):
/// `numgen random mod TOTAL` picks one by weight through a verdict map whose ranges are
/// the weights, each entry a `goto ctmark_V` (shared one-line chains that set the ct
/// mark bits). Sticky per source puts, before the pick, one lookup per active gateway
/// and family in a dynamic set of sources remembered for it (`update` refreshes the
/// timeout); a fresh pick goes through `pick_pI_gJ`, which remembers the source.
fn decision_chains(
    i: usize,
    p: &crate::model::Policy,
    pp: &PolicyPlan,
    mask: MarkMask,
    sets: &mut String,
    chains: &mut String,
    ct_marks: &mut std::collections::BTreeSet<Mark>,
) {
    let c = &pp.counter;
    let active: Vec<&PolicyGateway> = pp.gateways.iter().filter(|g| g.active).collect();
    if let [one] = active.as_slice() {
        let _ = writeln!(
            chains,
            "\tchain set_p{i} {{\n\t\tcounter name \"{c}\" {};\n\t}}",
            set_mark("ct", mask, one.mark)
        );
        return;
    }
    let sticky = match &p.action {
        Action::RouteVia(r) => r.sticky,
        Action::ReplyVia(_) => None,
    };
    let set_name = |g: &PolicyGateway, fam: &str| format!("sticky_p{i}_{:x}_{fam}", g.mark.bits());
    let mut rules = vec![format!("counter name \"{c}\"")];
    let mut picks = String::new();
    for g in &active {
        ct_marks.insert(g.mark);
        let Some(timeout) = sticky else { continue };
        let mut remember = Vec::new();
        for (fam, ip, ty) in [("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr")] {
            let set = set_name(g, fam);
            let _ = writeln!(
                sets,
                "\tset {set} {{\n\t\ttype {ty}\n\t\tflags dynamic,timeout\n\t\ttimeout {}\n\t}}",
                nft_duration(timeout)
            );
            let update = format!("update @{set} {{ {ip} saddr }}");
            rules.push(format!(
                "{ip} saddr @{set} {update} goto ctmark_{:x}",
                g.mark.bits()
            ));
            let nfproto = if fam == "4" { "ipv4" } else { "ipv6" };
            remember.push(format!("meta nfproto {nfproto} {update}"));
        }
        let _ = writeln!(
            picks,
            "\tchain pick_p{i}_{:x} {{\n\t\t{}\n\t\tgoto ctmark_{:x}\n\t}}",
            g.mark.bits(),
            remember.join("\n\t\t"),
            g.mark.bits()
        );
    }
    let target = |g: &PolicyGateway| match sticky {
        Some(_) => format!("goto pick_p{i}_{:x}", g.mark.bits()),
        None => format!("goto ctmark_{:x}", g.mark.bits()),
    };
    // Failover never has more than one active gateway; every active share has a weight.
    let total: u32 = active.iter().map(|g| g.weight.unwrap_or(1)).sum();
    let mut from = 0;
    let mut entries = Vec::new();
    for g in &active {
        let to = from + g.weight.unwrap_or(1) - 1;
        let key = if from == to {
            from.to_string()
        } else {
            format!("{from}-{to}")
        };
        entries.push(format!("{key} : {}", target(g)));
        from = to + 1;
    }
    rules.push(format!(
        "numgen random mod {total} vmap {{ {} }}",
        entries.join(", ")
    ));
    let _ = writeln!(chains, "\tchain set_p{i} {{");
    for r in &rules {
        let _ = writeln!(chains, "\t\t{r}");
    }
    *chains += "\t}\n";
    *chains += &picks;
}

/// nft time: whole seconds as `Ns`, anything finer as `Nms`.
fn nft_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The selector kinds that can share one verdict map across consecutive policies: a
/// policy whose only key is one of these costs one map lookup for the whole run, however
/// many policies and items the run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKey {
    Mac,
    Iif,
    Src(Family),
    Dst(Family),
}

impl GroupKey {
    /// The key a policy is dispatched on: the first hashable key it has.
    fn primary(s: &Selector) -> Option<GroupKey> {
        let single = |p: &Prefixes| match (p.v4.is_empty(), p.v6.is_empty()) {
            (false, true) => Some(Family::Inet4),
            (true, false) => Some(Family::Inet6),
            _ => None,
        };
        if !s.source_mac.is_empty() {
            Some(GroupKey::Mac)
        } else if !s.in_interface.is_empty() {
            Some(GroupKey::Iif)
        } else if !s.source.is_empty() {
            single(&s.source).map(GroupKey::Src)
        } else if !s.destination.is_empty() {
            single(&s.destination).map(GroupKey::Dst)
        } else {
            None
        }
    }

    /// Whether this key is all the selector tests (a hit in the map decides the policy).
    fn is_only_key(self, s: &Selector) -> bool {
        let others = [
            !s.in_interface.is_empty() && self != GroupKey::Iif,
            !s.source_mac.is_empty() && self != GroupKey::Mac,
            !s.source.is_empty() && !matches!(self, GroupKey::Src(_)),
            !s.destination.is_empty() && !matches!(self, GroupKey::Dst(_)),
            !s.not_source.is_empty(),
            !s.not_destination.is_empty(),
            !s.protocol.is_empty(),
            !s.source_port.is_empty(),
            !s.destination_port.is_empty(),
        ];
        !others.iter().any(|o| *o)
    }

    /// The selector without this key: what is left to check after the dispatch.
    fn rest(self, s: &Selector) -> Selector {
        let mut r = s.clone();
        match self {
            GroupKey::Mac => r.source_mac.clear(),
            GroupKey::Iif => r.in_interface.clear(),
            GroupKey::Src(_) => r.source = Prefixes::default(),
            GroupKey::Dst(_) => r.destination = Prefixes::default(),
        }
        r
    }

    /// (left-hand side, map key type, interval flag needed)
    fn lhs(self) -> (&'static str, &'static str) {
        match self {
            GroupKey::Mac => ("ether saddr", "ether_addr"),
            GroupKey::Iif => ("iifname", "ifname"),
            GroupKey::Src(Family::Inet4) => ("ip saddr", "ipv4_addr"),
            GroupKey::Src(Family::Inet6) => ("ip6 saddr", "ipv6_addr"),
            GroupKey::Dst(Family::Inet4) => ("ip daddr", "ipv4_addr"),
            GroupKey::Dst(Family::Inet6) => ("ip6 daddr", "ipv6_addr"),
        }
    }

    /// The policy's items as map keys, as prefixes too when they are addresses.
    fn items(self, s: &Selector) -> Vec<(String, Option<ipnet::IpNet>)> {
        let nets = |p: &Prefixes, f: Family| -> Vec<ipnet::IpNet> {
            match f {
                Family::Inet4 => p.v4.iter().map(|n| ipnet::IpNet::V4(*n)).collect(),
                Family::Inet6 => p.v6.iter().map(|n| ipnet::IpNet::V6(*n)).collect(),
            }
        };
        let show = |n: &ipnet::IpNet| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        };
        match self {
            GroupKey::Mac => s.source_mac.iter().map(|m| (m.to_string(), None)).collect(),
            GroupKey::Iif => s
                .in_interface
                .iter()
                .map(|i| (format!("\"{i}\""), None))
                .collect(),
            GroupKey::Src(f) => nets(&s.source, f)
                .iter()
                .map(|n| (show(n), Some(*n)))
                .collect(),
            GroupKey::Dst(f) => nets(&s.destination, f)
                .iter()
                .map(|n| (show(n), Some(*n)))
                .collect(),
        }
    }
}

/// The `chk_pN` chains written so far.
#[derive(Default)]
struct CheckChains {
    text: String,
    done: std::collections::BTreeSet<usize>,
}

/// Disjoint prefixes with their owning policy, answering "does this prefix overlap one
/// already taken?" in O(log n): a run can hold thousands of prefixes.
#[derive(Default)]
struct Taken {
    /// first address → (last address, owner); IPv4 is mapped into ::ffff:0:0/96, which
    /// keeps the families apart.
    ranges: std::collections::BTreeMap<u128, (u128, usize)>,
}

impl Taken {
    fn bounds(n: &ipnet::IpNet) -> (u128, u128) {
        let as_u128 = |a: std::net::IpAddr| match a {
            std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            std::net::IpAddr::V6(v6) => u128::from(v6),
        };
        (as_u128(n.network()), as_u128(n.broadcast()))
    }

    fn overlap(&self, n: &ipnet::IpNet) -> Option<usize> {
        let (lo, hi) = Self::bounds(n);
        if let Some((_, (end, owner))) = self.ranges.range(..=lo).next_back() {
            if *end >= lo {
                return Some(*owner);
            }
        }
        self.ranges
            .range(lo..=hi)
            .next()
            .map(|(_, (_, owner))| *owner)
    }

    fn insert(&mut self, n: &ipnet::IpNet, owner: usize) {
        let (lo, hi) = Self::bounds(n);
        self.ranges.insert(lo, (hi, owner));
    }

    fn any_interval(&self) -> bool {
        self.ranges.iter().any(|(lo, (hi, _))| lo != hi)
    }
}

/// The rules of one classification chain over `members` (policy indexes, in file order).
///
/// Runs of consecutive policies with the same primary key (MAC, interface, or a
/// one-family prefix list) share one verdict map, so a new connection costs one lookup
/// per run however many policies and items it holds. A policy whose primary key is its
/// only key maps straight to its decision; one with more keys maps to a `chk_pN` chain
/// that tests the rest, after which classification goes on with the next rule if the
/// rest did not match. Items are kept disjoint within a run, so no policy can hide a
/// later one that might still match: an item already claimed by a one-key policy is
/// unreachable for later policies (dropped, as rule order would), anything else shared
/// ends the run.
fn classify_rules(
    model: &Model,
    members: &[usize],
    own: &mut [Option<Vec<String>>],
    chain: &str,
    mask: MarkMask,
    checks: &mut CheckChains,
    sets: &mut String,
) -> Vec<String> {
    let mut own_of = |i: usize, sets: &mut String| -> Vec<String> {
        own[i]
            .get_or_insert_with(|| {
                goto_rules(&model.policies[i].selector, &format!("p{i}"), i, sets)
            })
            .clone()
    };
    let mut rules = Vec::new();
    let mut k = 0;
    while k < members.len() {
        let first = members[k];
        let Some(key) = GroupKey::primary(&model.policies[first].selector) else {
            rules.extend(own_of(first, sets));
            k += 1;
            continue;
        };
        // (map key text, policy index)
        let mut elements: Vec<(String, usize)> = Vec::new();
        let mut owner: std::collections::BTreeMap<String, (usize, bool)> = Default::default();
        let mut nets = Taken::default();
        let mut end = k;
        'run: while end < members.len() {
            let i = members[end];
            let sel = &model.policies[i].selector;
            if GroupKey::primary(sel) != Some(key) {
                break;
            }
            let total = key.is_only_key(sel);
            let items = key.items(sel);
            let mut keep = Vec::new();
            for (text, net) in items {
                let clash_net = net.and_then(|n| nets.overlap(&n));
                let clash = owner.get(&text).map(|(o, _)| *o).or(clash_net);
                match clash {
                    None => keep.push((text, net)),
                    // Same item claimed by an earlier one-key policy: this one can never
                    // see it; leave it out exactly as the rule order would.
                    Some(o)
                        if owner.get(&text).is_some_and(|(_, t)| *t)
                            && clash_net.is_none_or(|c| c == o) => {}
                    Some(_) => break 'run,
                }
            }
            for (text, net) in keep {
                if let Some(n) = net {
                    nets.insert(&n, i);
                }
                owner.insert(text.clone(), (i, total));
                elements.push((text, i));
            }
            end += 1;
        }
        if end == k {
            // The first policy alone clashes with nothing; this can't happen, but never loop.
            rules.extend(own_of(first, sets));
            k += 1;
            continue;
        }
        let group: Vec<usize> = members[k..end].to_vec();
        let all_total = group
            .iter()
            .all(|&i| key.is_only_key(&model.policies[i].selector));
        if group.len() == 1 && (all_total || elements.len() <= INLINE_MAX) {
            rules.extend(own_of(first, sets));
            k = end;
            continue;
        }
        let name = format!("{chain}_{k}");
        let (lhs, ty) = key.lhs();
        let interval = nets.any_interval();
        let flags = if interval { "\t\tflags interval\n" } else { "" };
        let mut elems = Vec::new();
        for (t, i) in &elements {
            if key.is_only_key(&model.policies[*i].selector) {
                elems.push(format!("{t} : goto set_p{i}"));
            } else {
                elems.push(format!("{t} : jump chk_p{i}"));
            }
        }
        for &i in &group {
            let rest = key.rest(&model.policies[i].selector);
            if rest != Selector::default() && checks.done.insert(i) {
                let _ = writeln!(checks.text, "\tchain chk_p{i} {{");
                for r in goto_rules(&rest, &format!("p{i}r"), i, sets) {
                    let _ = writeln!(checks.text, "\t\t{r}");
                }
                checks.text += "\t}\n";
            }
        }
        let _ = writeln!(
            sets,
            "\tmap {name} {{\n\t\ttype {ty} : verdict\n{flags}\t\telements = {{ {} }}\n\t}}",
            elems.join(", ")
        );
        rules.push(format!("{lhs} vmap @{name}"));
        if !all_total {
            // A `chk_pN` chain that decided returns here: stop classifying.
            rules.push(format!("ct mark and {mask} != 0 return"));
        }
        k = end;
    }
    rules
}

/// A selector's rules ending in `goto set_pN` (one per address family it needs).
fn goto_rules(s: &Selector, id: &str, i: usize, sets: &mut String) -> Vec<String> {
    selector_variants(s, id, sets)
        .into_iter()
        .map(|conds| {
            format!("{} goto set_p{i}", conds.trim_start())
                .trim_start()
                .to_string()
        })
        .collect()
}

/// `KEY mark set KEY mark and ~MASK or VALUE`: our bits become VALUE, foreign bits stay.
fn set_mark(key: &str, mask: MarkMask, mark: Mark) -> String {
    format!(
        "{key} mark set {key} mark and {:#010x} or {mark}",
        !mask.bits()
    )
}

fn l4proto(protos: &[&str]) -> String {
    match protos {
        [one] => format!("meta l4proto {one}"),
        many => format!("meta l4proto {{ {} }}", many.join(", ")),
    }
}

/// A list as an nft right-hand side: one item, an anonymous set, or a named set.
fn list(
    items: &[String],
    set_name: &str,
    set_type: &str,
    interval: bool,
    sets: &mut String,
) -> String {
    match items {
        [one] => one.clone(),
        _ if items.len() <= INLINE_MAX => format!("{{ {} }}", items.join(", ")),
        _ => {
            let flags = if interval { "\n\t\tflags interval" } else { "" };
            let _ = writeln!(
                sets,
                "\tset {set_name} {{\n\t\ttype {set_type}{flags}\n\t\telements = {{ {} }}\n\t}}",
                items.join(", ")
            );
            format!("@{set_name}")
        }
    }
}

/// The condition strings of one policy, one entry per address family it needs (a rule can
/// test only one family's addresses). Each entry starts with a space.
fn selector_variants(s: &Selector, id: &str, sets: &mut String) -> Vec<String> {
    let mut common = String::new();
    if !s.in_interface.is_empty() {
        let names: Vec<String> = s.in_interface.iter().map(|i| format!("\"{i}\"")).collect();
        common += &format!(
            " iifname {}",
            list(&names, &format!("{id}_iif"), "ifname", false, sets)
        );
    }
    if !s.source_mac.is_empty() {
        let macs: Vec<String> = s.source_mac.iter().map(|m| m.to_string()).collect();
        common += &format!(
            " ether saddr {}",
            list(&macs, &format!("{id}_mac"), "ether_addr", false, sets)
        );
    }

    let positives = [&s.source, &s.destination];
    let has_addr_keys = positives
        .iter()
        .chain([&&s.not_source, &&s.not_destination])
        .any(|p| !p.is_empty());
    let mut variants = Vec::new();
    if !has_addr_keys {
        variants.push(common.clone());
    } else {
        for fam in [Family::Inet4, Family::Inet6] {
            // Every positive key present must have entries of this family.
            if positives.iter().any(|p| !p.is_empty() && !p.has(fam)) {
                continue;
            }
            let mut v = common.clone();
            let any_positive = positives.iter().any(|p| !p.is_empty());
            let mut wrote_family = false;
            for (prefixes, field, neg, key) in [
                (&s.source, "saddr", false, "src"),
                (&s.destination, "daddr", false, "dst"),
                (&s.not_source, "saddr", true, "nsrc"),
                (&s.not_destination, "daddr", true, "ndst"),
            ] {
                if let Some(cond) =
                    addr_cond(prefixes, fam, field, neg, &format!("{id}_{key}"), sets)
                {
                    v += &cond;
                    wrote_family = true;
                }
            }
            if !any_positive && !wrote_family {
                v += match fam {
                    Family::Inet4 => " meta nfproto ipv4",
                    Family::Inet6 => " meta nfproto ipv6",
                };
            }
            variants.push(v);
        }
    }

    let mut l4 = String::new();
    if !s.protocol.is_empty() {
        let protos: Vec<&str> = s.protocol.iter().map(|p| p.nft()).collect();
        l4 += &format!(" {}", l4proto(&protos));
    }
    for (ports, dir) in [(&s.source_port, "sport"), (&s.destination_port, "dport")] {
        if !ports.is_empty() {
            let items: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            l4 += &format!(
                " th {dir} {}",
                list(&items, &format!("{id}_{dir}"), "inet_service", true, sets)
            );
        }
    }
    variants.into_iter().map(|v| v + &l4).collect()
}

fn addr_cond(
    p: &Prefixes,
    fam: Family,
    field: &str,
    neg: bool,
    set_name: &str,
    sets: &mut String,
) -> Option<String> {
    let (proto, ty, items, interval): (&str, &str, Vec<String>, bool) = match fam {
        Family::Inet4 => (
            "ip",
            "ipv4_addr",
            p.v4.iter()
                .map(|n| {
                    if n.prefix_len() == 32 {
                        n.addr().to_string()
                    } else {
                        n.to_string()
                    }
                })
                .collect(),
            p.v4.iter().any(|n| n.prefix_len() < 32),
        ),
        Family::Inet6 => (
            "ip6",
            "ipv6_addr",
            p.v6.iter()
                .map(|n| {
                    if n.prefix_len() == 128 {
                        n.addr().to_string()
                    } else {
                        n.to_string()
                    }
                })
                .collect(),
            p.v6.iter().any(|n| n.prefix_len() < 128),
        ),
    };
    if items.is_empty() {
        return None;
    }
    let op = if neg { " !=" } else { "" };
    let suffix = if fam == Family::Inet4 { "4" } else { "6" };
    let rhs = list(&items, &format!("{set_name}{suffix}"), ty, interval, sets);
    Some(format!(" {proto} {field}{op} {rhs}"))
}

/// FNV-1a, 64 bit. Written here because it is 6 lines and only needs to be stable across
/// builds (std's `DefaultHasher` is not guaranteed to be); it is not a security boundary.
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use crate::plan::{build, HostView};

    fn nft_of(cfg: &str) -> String {
        let model = parse_str(cfg, "t.toml").expect("valid");
        build(&model, &HostView::default()).nft
    }

    const GWS: &str = "[[gateway]]\nname=\"a\"\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n[[gateway]]\nname=\"b\"\ninterface=\"e1\"\nvia=\"192.0.2.2\"\n";

    #[test]
    fn consecutive_mac_policies_share_one_map_and_first_wins() {
        let cfg = format!(
            "{GWS}[[policy]]\nname=\"p\"\nreply_via=\"a\"\n[policy.match]\nsource_mac=[\"02:00:00:00:00:01\",\"02:00:00:00:00:02\"]\n\
             [[policy]]\nname=\"q\"\nreply_via=\"b\"\n[policy.match]\nsource_mac=[\"02:00:00:00:00:02\",\"02:00:00:00:00:03\"]\n"
        );
        let nft = nft_of(&cfg);
        assert!(nft.contains("elements = { 02:00:00:00:00:01 : goto set_p0, 02:00:00:00:00:02 : goto set_p0, 02:00:00:00:00:03 : goto set_p1 }"), "{nft}");
        assert!(nft.contains("ether saddr vmap @classify_0"), "{nft}");
        assert!(
            !nft.contains("ether saddr {"),
            "the grouped policies must not also get rules of their own:\n{nft}"
        );
    }

    #[test]
    fn overlapping_prefixes_keep_rule_order() {
        let cfg = format!(
            "{GWS}[[policy]]\nname=\"p\"\nreply_via=\"a\"\n[policy.match]\nsource=\"10.1.0.0/16\"\n\
             [[policy]]\nname=\"q\"\nreply_via=\"b\"\n[policy.match]\nsource=\"10.0.0.0/8\"\n"
        );
        let nft = nft_of(&cfg);
        assert!(!nft.contains("vmap @classify"), "{nft}");
        let p = nft
            .find("ip saddr 10.1.0.0/16 goto set_p0")
            .expect("policy p rule");
        let q = nft
            .find("ip saddr 10.0.0.0/8 goto set_p1")
            .expect("policy q rule");
        assert!(p < q, "{nft}");
    }

    #[test]
    fn local_chain_only_for_route_via_without_ingress_keys() {
        let cfg = format!(
            "{GWS}[[policy]]\nname=\"in\"\nreply_via=\"a\"\n[policy.match]\nin_interface=\"e0\"\n\
             [[policy]]\nname=\"out\"\nroute_via=\"b\"\n[policy.match]\nprotocol=\"tcp\"\ndestination_port=25\n"
        );
        let nft = nft_of(&cfg);
        let out = &nft[nft.find("chain classify_out").expect("classify_out")..];
        let out = &out[..out.find('}').unwrap()];
        assert!(
            out.contains("goto set_p1") && !out.contains("set_p0"),
            "{out}"
        );
    }
}

#[cfg(test)]
mod dispatch_tests {
    use crate::config::parse_str;
    use crate::plan::{build, HostView};

    const GWS: &str = "[[gateway]]\nname=\"a\"\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n[[gateway]]\nname=\"b\"\ninterface=\"e1\"\nvia=\"192.0.2.2\"\n";

    fn nft_of(cfg: &str) -> String {
        build(
            &parse_str(cfg, "t.toml").expect("valid"),
            &HostView::default(),
        )
        .nft
    }

    #[test]
    fn multi_key_policies_dispatch_on_mac_then_check_the_rest() {
        let cfg = format!(
            "{GWS}[[policy]]\nname=\"p\"\nreply_via=\"a\"\n[policy.match]\nsource_mac=[\"02:00:00:00:00:01\"]\nsource=\"10.1.0.0/16\"\n\
             [[policy]]\nname=\"q\"\nreply_via=\"b\"\n[policy.match]\nsource_mac=[\"02:00:00:00:00:02\"]\nprotocol=\"tcp\"\n"
        );
        let nft = nft_of(&cfg);
        assert!(
            nft.contains(
                "elements = { 02:00:00:00:00:01 : jump chk_p0, 02:00:00:00:00:02 : jump chk_p1 }"
            ),
            "{nft}"
        );
        assert!(
            nft.contains("chain chk_p0 {\n\t\tip saddr 10.1.0.0/16 goto set_p0\n\t}"),
            "{nft}"
        );
        assert!(
            nft.contains("chain chk_p1 {\n\t\tmeta l4proto tcp goto set_p1\n\t}"),
            "{nft}"
        );
        assert!(
            nft.contains("ether saddr vmap @classify_0\n\t\tct mark and 0xff000000 != 0 return"),
            "{nft}"
        );
    }

    #[test]
    fn a_shared_mac_behind_a_partial_policy_ends_the_run() {
        // p takes MAC 01 only for tcp; q must still see non-tcp packets from MAC 01.
        let cfg = format!(
            "{GWS}[[policy]]\nname=\"p\"\nreply_via=\"a\"\n[policy.match]\nsource_mac=\"02:00:00:00:00:01\"\nprotocol=\"tcp\"\n\
             [[policy]]\nname=\"q\"\nreply_via=\"b\"\n[policy.match]\nsource_mac=\"02:00:00:00:00:01\"\n"
        );
        let nft = nft_of(&cfg);
        assert!(!nft.contains("vmap @classify"), "{nft}");
        let p = nft
            .find("ether saddr 02:00:00:00:00:01 meta l4proto tcp goto set_p0")
            .expect("p");
        let q = nft
            .find("ether saddr 02:00:00:00:00:01 goto set_p1")
            .expect("q");
        assert!(p < q);
    }
}

#[cfg(test)]
mod shared_chain_tests {
    use crate::config::parse_str;
    use crate::plan::{build, HostView};

    /// route_via policies dispatched on a prefix appear in both classification chains;
    /// their check chain must be defined once.
    #[test]
    fn check_chains_are_defined_once() {
        let mut cfg =
            String::from("[[gateway]]\nname=\"a\"\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n");
        for (i, net) in ["10.1.0.0/16", "10.2.0.0/16"].iter().enumerate() {
            cfg += &format!("[[policy]]\nname=\"p{i}\"\nroute_via=\"a\"\n[policy.match]\ndestination=\"{net}\"\nprotocol=\"tcp\"\n");
        }
        let nft = build(&parse_str(&cfg, "t.toml").unwrap(), &HostView::default()).nft;
        assert_eq!(nft.matches("chain chk_p0 {").count(), 1, "{nft}");
        assert!(nft.contains("chain classify_out {"), "{nft}");
    }
}

#[cfg(test)]
mod carry_tests {
    use super::*;

    const OLD: &str = "table inet symroute {\n\tset sticky_p1_1000000_4 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n\t\telements = { 10.77.0.10 expires 9m58s792ms, 10.77.0.11 timeout 5m expires 4m1s,\n\t\t\t     10.77.0.12 expires 1s }\n\t}\n\n\tset sticky_p1_2000000_4 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n\t\telements = { 10.77.0.20 expires 3m }\n\t}\n\tset sticky_p1_1000000_6 {\n\t\ttype ipv6_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10m\n\t}\n\tchain c {\n\t}\n}\n";

    #[test]
    fn remembered_sources_move_to_sets_still_in_the_new_table() {
        // The new table keeps isp 0x1000000's sets; 0x2000000 is no longer active.
        let new = "table inet symroute {\n\tset sticky_p1_1000000_4 {\n\t\ttype ipv4_addr\n\t}\n\tset sticky_p1_1000000_6 {\n\t\ttype ipv6_addr\n\t}\n}\n";
        assert_eq!(
            carry_sticky_sources(OLD, new),
            "add element inet symroute sticky_p1_1000000_4 { 10.77.0.10 timeout 10m expires 9m58s792ms, 10.77.0.11 timeout 5m expires 4m1s, 10.77.0.12 timeout 10m expires 1s }\n"
        );
        assert_eq!(carry_sticky_sources(OLD, "table inet symroute {\n}\n"), "");
        assert_eq!(carry_sticky_sources("", new), "");
    }
}
