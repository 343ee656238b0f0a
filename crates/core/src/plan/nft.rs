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

use super::host::Cgroups;
use super::{GatewayPlan, PolicyGateway, PolicyPlan};

pub const TABLE: &str = "symroute";

/// Lists longer than this go into a named set (kept out of the rule text, same lookup cost).
pub(super) const INLINE_MAX: usize = 16;

/// Whether a list of this nft type must be a named set or map, however short: nft prints
/// a cgroup (`cgroupsv2`) by walking /sys/fs/cgroup for the directory with its id, which
/// takes ~60 ms per value on a tree of 600 cgroups, and `nft -t list` (what observe
/// runs on every pass) leaves out the elements of named sets only.
pub(super) fn always_named(nft_type: &str) -> bool {
    nft_type == "cgroupsv2"
}

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

/// `script` (a replace of our table, [`replace_script`]) with each named counter that
/// `counts` (those of the table being replaced: name → packets, bytes) has counted
/// something in starting from that count: a failover, a cgroup appearing or going, or a
/// reload that keeps a policy's name and place replaces the table, and counters that
/// fell to zero each time would lose what was counted since the last scrape (and the
/// status of a service's cgroup policy once the service stopped). A counter of the
/// same name not in the new table is left behind; a new one starts at zero.
pub fn carry_counters(
    script: &str,
    counts: &std::collections::BTreeMap<String, (u64, u64)>,
) -> String {
    let mut out = script.to_string();
    for (name, (packets, bytes)) in counts {
        // The names come from the host's listing: only a plain one (all ours are) can be
        // the same as one in our own text, which is all this replaces.
        if (*packets, *bytes) == (0, 0)
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        out = out.replacen(
            &format!("\tcounter {name} {{ }}\n"),
            &format!("\tcounter {name} {{ packets {packets} bytes {bytes} }}\n"),
            1,
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

/// The counter of the connections `symroute exec --gateway` sent via gateway `index`.
pub fn exec_counter_name(index: usize, name: &str) -> String {
    format!("x{}", &counter_name(index, name)[1..])
}

/// The exec cgroups that exist, by level: (gateway index, the path as nft takes it).
fn exec_cgroups(
    model: &Model,
    cgroups: Option<&Cgroups>,
) -> std::collections::BTreeMap<u32, Vec<(usize, String)>> {
    let mut out: std::collections::BTreeMap<u32, Vec<(usize, String)>> = Default::default();
    let Some(c) = cgroups else {
        return out;
    };
    for (i, g) in model.gateways.iter().enumerate() {
        if let Some(path) = c.exec.get(g.name.as_str()) {
            if let Some(text) = c.nft_path(path) {
                out.entry(path.level()).or_default().push((i, text));
            }
        }
    }
    out
}

/// Render the table and its fingerprint (FNV-1a of the text, stored as the table comment).
pub fn render(
    model: &Model,
    gateways: &[GatewayPlan],
    policies: &[PolicyPlan],
    divert: Option<Mark>,
    local_addrs: &[std::net::IpAddr],
    cgroups: Option<&Cgroups>,
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
    let mut ct_marks = std::collections::BTreeMap::new();
    for (i, (p, pp)) in model.policies.iter().zip(policies).enumerate() {
        let _ = writeln!(counters, "\tcounter {} {{ }}", pp.counter);
        decision_chains(i, p, pp, mask, &mut sets, &mut chains, &mut ct_marks);
    }
    for (m, route) in ct_marks {
        let _ = writeln!(
            chains,
            "\tchain ctmark_{:x} {{\n\t\t{};\n\t}}",
            m.bits(),
            decided(mask, m, route)
        );
    }
    // Local connections never match interface or MAC selectors, only route_via
    // decisions matter for connections the host opens itself, and their source is one of
    // the host's addresses: a policy for other sources can't take them. Arriving ones
    // have no sending user or cgroup (and `socket cgroupv2` in prerouting would look up
    // the local socket a packet is for: not the sender).
    let all: Vec<usize> = model
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.selector.needs_socket())
        .map(|(i, _)| i)
        .collect();
    let local: Vec<usize> = model
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            matches!(p.action, Action::RouteVia(_))
                && !p.selector.needs_ingress()
                && p.selector.may_have_source(local_addrs)
        })
        .map(|(i, _)| i)
        .collect();
    // `symroute exec --gateway G` runs a command in G's exec cgroup: its new connections
    // take G's route decision before any policy is looked at (it was asked for by name).
    let exec = exec_cgroups(model, cgroups);
    let mut exec_rules = Vec::new();
    for (level, entries) in &exec {
        let items: Vec<String> = entries
            .iter()
            .map(|(i, path)| format!("{path} : goto xset_g{i}"))
            .collect();
        // A named map, as every cgroup list (see `always_named`).
        let _ = writeln!(
            sets,
            "\tmap exec_cg{level} {{\n\t\ttype cgroupsv2 : verdict\n\t\telements = {{ {} }}\n\t}}",
            items.join(", ")
        );
        exec_rules.push(format!(
            "socket cgroupv2 level {level} vmap @exec_cg{level}"
        ));
    }
    for &(i, _) in exec.values().flatten() {
        let g = &gateways[i];
        let c = exec_counter_name(i, &g.name);
        let mark = g
            .route_mark
            .expect("a gateway with an exec cgroup takes route decisions");
        let _ = writeln!(counters, "\tcounter {c} {{ }}");
        let _ = writeln!(
            chains,
            "\tchain xset_g{i} {{\n\t\tcounter name \"{c}\" {};\n\t}}",
            set_mark("ct", mask, mark)
        );
    }
    let is_new = format!("ct state new ct mark and {mask} == 0");
    let mut classifier = super::classify::Classifier::new(model, cgroups);
    for (chain, hook_rules, members, first) in [
        ("classify", &mut pre, &all, Vec::new()),
        ("classify_out", &mut out, &local, exec_rules),
    ] {
        let mut rules = first;
        rules.extend(classifier.chain_rules(chain, members, &mut sets));
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
    chains += &classifier.into_chains();

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
    let snat: Vec<(Mark, String)> = gateways
        .iter()
        .filter_map(|g| {
            g.route_mark.map(|m| {
                (
                    m,
                    format!(
                        "oifname \"{}\" fib saddr type local fib saddr . oif type != local masquerade",
                        g.interface
                    ),
                )
            })
        })
        .collect();
    // Only connections the host opens need it: without local route_via policies, and
    // with no process in an exec cgroup, no nat chain at all (its mere presence costs
    // every new connection a NAT binding).
    let exec_running = cgroups.is_some_and(|c| {
        c.exec
            .values()
            .any(|p| c.populated.contains(p) && c.ids.contains_key(p))
    });
    if !snat.is_empty() && (!local.is_empty() || exec_running) {
        // Every new connection passes this chain: beyond a few gateways, one map lookup on
        // the decision instead of one rule per gateway.
        let lines: Vec<String> = if snat.len() <= 4 {
            snat.iter()
                .map(|(m, rest)| format!("ct direction original ct mark and {mask} == {m} {rest}"))
                .collect()
        } else {
            let mut entries = Vec::new();
            for (m, rest) in &snat {
                let _ = writeln!(body, "\tchain snat_{:x} {{\n\t\t{rest}\n\t}}", m.bits());
                entries.push(format!("{m} : jump snat_{:x}", m.bits()));
            }
            vec![format!(
                "ct direction original ct mark and {mask} vmap {{ {} }}",
                entries.join(", ")
            )]
        };
        let _ = writeln!(
            body,
            "\tchain post {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
        );
        for l in &lines {
            let _ = writeln!(body, "\t\t{l}");
        }
        body += "\t}\n";
    }

    // The cgroups rendered are paths nft resolves to ids when it loads the table: the
    // ids are part of what was loaded, so a cgroup made again (same path, new id) makes
    // a new fingerprint, and the table is loaded again.
    let mut identity = body.clone();
    if let Some(c) = cgroups {
        for (path, id) in &c.ids {
            if body.contains(&format!("{}{path}\"", c.nft_root)) {
                let _ = writeln!(identity, "# cgroup {path} {id}");
            }
        }
    }
    let fp = fingerprint(&identity);
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
    ct_marks: &mut std::collections::BTreeMap<Mark, bool>,
) {
    let c = &pp.counter;
    let route = matches!(p.action, Action::RouteVia(_));
    let active: Vec<&PolicyGateway> = pp.gateways.iter().filter(|g| g.active).collect();
    if let [one] = active.as_slice() {
        let _ = writeln!(
            chains,
            "\tchain set_p{i} {{\n\t\tcounter name \"{c}\" {};\n\t}}",
            decided(mask, one.mark, route)
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
        ct_marks.insert(g.mark, route);
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

/// The end of a new connection's decision: store it in the conntrack mark, mark the
/// packet itself when the decision is for its direction (a `route_via` decision: the
/// connection's first packet is an original-direction one), and `accept`, which ends the
/// base chain. The restore rules behind classification would do the marking, at the cost
/// of two more rules and a map lookup for every new connection; a `reply_via` decision
/// has nothing to restore on the first packet, and neither has a connection no policy
/// took (`Classifier` ends `classify` with `accept` too).
fn decided(mask: MarkMask, mark: Mark, route: bool) -> String {
    let packet = if route {
        format!(" {}", set_mark("meta", mask, mark))
    } else {
        String::new()
    };
    format!("{}{packet} accept", set_mark("ct", mask, mark))
}

/// `KEY mark set KEY mark and ~MASK or VALUE`: our bits become VALUE, foreign bits stay.
pub(super) fn set_mark(key: &str, mask: MarkMask, mark: Mark) -> String {
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
        [one] if !always_named(set_type) => one.clone(),
        _ if items.len() <= INLINE_MAX && !always_named(set_type) => {
            format!("{{ {} }}", items.join(", "))
        }
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
/// test only one family's addresses) and per cgroup level (one `socket cgroupv2 level N`
/// each). Each entry starts with a space. None when it names only cgroups that do not
/// exist (yet): it can match nothing.
pub(super) fn selector_variants(
    s: &Selector,
    id: &str,
    sets: &mut String,
    cg: Option<&Cgroups>,
) -> Vec<String> {
    let mut common = String::new();
    if !s.user.is_empty() {
        let uids: Vec<String> = s.user.iter().map(|u| u.to_string()).collect();
        common += &format!(
            " meta skuid {}",
            list(&uids, &format!("{id}_uid"), "uid", false, sets)
        );
    }
    // One variant per level: a rule reads the socket's cgroup at one level.
    let mut levels: Vec<String> = Vec::new();
    if !s.cgroup.is_empty() {
        let mut by_level: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for p in &s.cgroup {
            if let Some(text) = cg.and_then(|c| c.nft_path(p)) {
                by_level.entry(p.level()).or_default().push(text);
            }
        }
        if by_level.is_empty() {
            return Vec::new();
        }
        for (level, paths) in by_level {
            levels.push(format!(
                " socket cgroupv2 level {level} {}",
                list(&paths, &format!("{id}_cg{level}"), "cgroupsv2", false, sets)
            ));
        }
    }
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
    let variants: Vec<String> = variants.into_iter().map(|v| v + &l4).collect();
    if levels.is_empty() {
        return variants;
    }
    variants
        .iter()
        .flat_map(|v| levels.iter().map(move |l| format!("{v}{l}")))
        .collect()
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

    #[test]
    fn counts_carry_to_counters_of_the_same_name() {
        let script = replace_script(
            "table inet symroute {\n\tcounter p0_backup { }\n\tcounter p1_mail { }\n\tcounter x0_isp1 { }\n}\n",
        );
        let counts: std::collections::BTreeMap<String, (u64, u64)> = [
            ("p0_backup", (3, 180)),
            ("p1_mail", (0, 0)),
            ("p2_gone", (9, 9)),
            ("x0_isp1 { } counter evil", (1, 1)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
        assert_eq!(
            carry_counters(&script, &counts),
            replace_script(
                "table inet symroute {\n\tcounter p0_backup { packets 3 bytes 180 }\n\tcounter p1_mail { }\n\tcounter x0_isp1 { }\n}\n"
            )
        );
    }
}
