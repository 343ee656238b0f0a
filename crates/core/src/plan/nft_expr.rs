//! Pieces of nft syntax that both the table renderer (`nft`) and the classifier
//! (`classify`) write: mark updates, lists (inline or named sets) and a selector's
//! conditions. Apart from both, so neither imports the other's internals.

use std::fmt::Write as _;

use crate::model::{Family, Mark, MarkMask, Prefixes, Selector};

use super::host::Cgroups;

/// Lists longer than this go into a named set (kept out of the rule text, same lookup cost).
pub(super) const INLINE_MAX: usize = 16;

/// Whether a list of this nft type must be a named set or map, however short: nft prints
/// a cgroup (`cgroupsv2`) by walking /sys/fs/cgroup for the directory with its id, which
/// takes ~60 ms per value on a tree of 600 cgroups, and `nft -t list` (what observe
/// runs on every pass) leaves out the elements of named sets only.
pub(super) fn always_named(nft_type: &str) -> bool {
    nft_type == "cgroupsv2"
}

/// `KEY mark set KEY mark and ~MASK or VALUE`: our bits become VALUE, foreign bits stay.
pub(super) fn set_mark(key: &str, mask: MarkMask, mark: Mark) -> String {
    format!(
        "{key} mark set {key} mark and {:#010x} or {mark}",
        !mask.bits()
    )
}

pub(super) fn l4proto(protos: &[&str]) -> String {
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
