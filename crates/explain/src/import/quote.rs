//! Objects quoted as their tools print them, and notes as sentences.

use super::*;

/// Host text made inert for a `#` comment line (and for stderr): a chain named
/// "c\n[[gateway]]\n…" stays one comment line instead of becoming config, and TOML
/// (which refuses control characters in comments) still parses the file.
pub(super) use crate::inert::inert;

/// Where a rule is, for quoting.
fn fw_what(r: &Rule) -> String {
    inert(&match &r.origin {
        Origin::Iptables { tool, table, .. } => format!("{tool} -t {table}: {}", r.text),
        Origin::Nft {
            family,
            table,
            chain,
            ..
        } => {
            if chain.is_empty() {
                format!("nft table {family} {table}: {}", r.text)
            } else {
                format!("nft table {family} {table} chain {chain}: {}", r.text)
            }
        }
    })
}

pub(super) fn fw_what_in(r: &Rule, c: &Chain) -> String {
    match &r.origin {
        Origin::Nft { .. } => inert(&format!(
            "nft table {} {} chain {}: {}",
            c.family, c.table, c.name, r.text
        )),
        _ => fw_what(r),
    }
}

pub(super) fn rule_what(r: &RuleEntry) -> String {
    let cmd = match r.family {
        Family::Inet4 => "ip rule",
        Family::Inet6 => "ip -6 rule",
    };
    format!("{cmd}: {}", one_line(&r.text))
}

pub(super) fn route_what(r: &RouteEntry) -> String {
    let cmd = match r.family {
        Family::Inet4 => "ip route",
        Family::Inet6 => "ip -6 route",
    };
    // A multipath route prints its next hops on lines of their own: one line here.
    let text: Vec<&str> = r.text.split_whitespace().collect();
    format!("{cmd}: {}", inert(&text.join(" ")))
}

pub(super) fn hex(v: u32) -> String {
    format!("{v:#x}")
}

/// `fwmark V` or `fwmark V/M` as `ip rule` prints it.
pub(super) fn fwmark_str(v: u32, m: u32) -> String {
    if m == u32::MAX {
        format!("fwmark {}", hex(v))
    } else {
        format!("fwmark {}/{}", hex(v), hex(m))
    }
}

/// A note as a sentence: capital first letter, final period.
pub(super) fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => return String::new(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

pub(super) fn fam_word(f: Family) -> &'static str {
    match f {
        Family::Inet4 => "IPv4",
        Family::Inet6 => "IPv6",
    }
}

pub(super) fn one_line(s: &str) -> String {
    inert(s.replace('\t', " ").trim_end())
}

/// The mark statement of a rule, as written (`-j MARK --set-xmark 0x0/0xffffffff`,
/// `meta mark set 0x00000000`).
pub(super) fn mark_stmt_text(r: &Rule) -> String {
    if let Some(p) = r.text.find("-j ") {
        return r.text[p..].to_string();
    }
    for s in &r.stmts {
        if let Stmt::SetMark { .. } = s {
            return s.to_string();
        }
    }
    r.text.clone()
}

pub(super) fn describe_service(s: &Sel) -> String {
    let mut parts = Vec::new();
    if !s.protocol.is_empty() {
        parts.push(s.protocol.join("/"));
    }
    if !s.destination_port.is_empty() {
        parts.push(format!(
            "destination port {}",
            s.destination_port
                .iter()
                .map(|(a, b)| if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    parts.join(" ")
}
