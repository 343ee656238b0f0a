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

use crate::model::{Action, Mark, MarkMask, Model};

use super::host::Cgroups;
use super::nft_expr::{l4proto, set_mark};
use super::{GatewayPlan, PolicyGateway, PolicyPlan};

pub const TABLE: &str = "symroute";

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

/// FNV-1a, 64 bit. Written here because it is 6 lines and only needs to be stable across
/// builds (std's `DefaultHasher` is not guaranteed to be); it is not a security boundary.
pub fn fingerprint(text: &str) -> String {
    let mut f = Fingerprinter::default();
    f.add(text.as_bytes());
    f.finish()
}

/// [`fingerprint`] of everything written to it, in order: what a large text's would be,
/// without building the text (a serializer can write into it).
pub struct Fingerprinter(u64);

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprinter {
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl std::io::Write for Fingerprinter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.add(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
