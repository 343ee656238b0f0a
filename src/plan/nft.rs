//! Rendering the plan's nftables table `inet symroute` as `nft -f` input. Pure text.
//!
//! Shape (see docs/design.md): classification runs once per connection (`ct state new`,
//! our ct-mark bits still zero) and stores the decision in the conntrack mark; every later
//! packet restores it through a verdict map keyed on `ct mark & MASK`, in the direction
//! the decision is for. nft 1.0.x cannot OR a register into another register's value, so
//! each decision value gets a one-line chain that sets exactly our bits.

use std::fmt::Write as _;

use crate::model::{Action, Family, Mark, MarkMask, Model, Prefixes, Selector};

use super::GatewayPlan;

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
pub fn render(model: &Model, gateways: &[GatewayPlan], divert: Option<Mark>) -> (String, String) {
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

    let is_new = format!("ct state new ct mark and {mask} == 0");
    for (i, p) in model.policies.iter().enumerate() {
        let c = counter_name(i, p.name.as_str());
        let _ = writeln!(counters, "\tcounter {c} {{ }}");
        let mark = match p.action {
            Action::ReplyVia(g) => super::alloc::reply_mark(model, g),
            Action::RouteVia(g) => super::alloc::route_mark(model, g),
        };
        for conds in selector_variants(&p.selector, &format!("p{i}"), &mut sets) {
            let line = format!(
                "{is_new}{conds} counter name \"{c}\" {}",
                set_mark("ct", mask, mark)
            );
            // Local connections never match interface or MAC selectors, and only
            // route_via decisions matter for connections the host opens itself.
            if matches!(p.action, Action::RouteVia(_)) && !p.selector.needs_ingress() {
                out.push(line.clone());
            }
            pre.push(line);
        }
    }

    let mut chains = String::new();
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
