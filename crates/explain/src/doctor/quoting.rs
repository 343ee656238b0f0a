//! Findings quote the host (interface, table and chain names, rule text) and offer
//! commands to paste. A name is data: one like `x;true>pwned` or `"; flush ruleset` pasted
//! into a shell or nft would run as syntax. So a command that would carry such a name is
//! not shown (the advice is kept in words), and control characters in every field are
//! spelled as escapes, so each field stays one line on a terminal.

use std::collections::BTreeSet;

use super::Finding;
use crate::host::HostState;
use crate::netfilter::{Match, Verdict};

/// Characters that mean something to a shell or to nft outside a quoted word.
const SYNTAX: &[char] = &[
    ';', '`', '$', '|', '&', '<', '>', '\\', '\'', '"', '(', ')', '*', '?', '~', '#', '{', '}',
    '[', ']', '!',
];

/// A name or word that reads the same to a shell and to nft wherever a command puts it.
fn plain(word: &str) -> bool {
    !word
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || SYNTAX.contains(&c))
}

/// A word made of operators and punctuation only (`>`, `!=`, `{`, `,`): nft and iptables
/// print these themselves between names; alone they name nothing from the host.
fn operator(word: &str) -> bool {
    word.chars().all(|c| "<>=!&|{}(),;".contains(c))
}

/// The host's names and rule words that are not plain: what a command must not carry.
fn unsafe_words(host: &HostState) -> BTreeSet<String> {
    let mut names: Vec<&str> = Vec::new();
    names.extend(host.routing.links.keys().map(String::as_str));
    names.extend(host.macs.keys().map(String::as_str));
    for r in &host.routing.rules {
        names.extend(r.iif.as_deref());
        names.extend(r.oif.as_deref());
    }
    let mut texts: Vec<&str> = Vec::new();
    texts.extend(host.routing.rules.iter().map(|r| r.text.as_str()));
    texts.extend(host.routing.routes.iter().map(|r| r.text.as_str()));
    for c in &host.firewall.chains {
        names.extend([c.table.as_str(), c.name.as_str()]);
        for r in &c.rules {
            texts.push(&r.text);
            for m in &r.matches {
                if let Match::Iifname { names: n, .. } | Match::Oifname { names: n, .. } = m {
                    // iptables' `eth+` is kept as `eth*`: a pattern, not a hostile name.
                    names.extend(n.iter().map(|s| s.strip_suffix('*').unwrap_or(s)));
                }
            }
            if let Verdict::Jump(t) | Verdict::Goto(t) = &r.verdict {
                names.push(t);
            }
        }
    }
    let mut out: BTreeSet<String> = names
        .into_iter()
        .filter(|n| !plain(n))
        .map(str::to_string)
        .collect();
    // Rule words with syntax in them, beyond the names above: comments, unknown
    // expressions. Quoted words are taken without their quotes.
    for t in texts {
        for w in t.split_whitespace() {
            let w = w.trim_matches('"');
            if !w.is_empty() && !plain(w) && !operator(w) {
                out.insert(w.to_string());
            }
        }
    }
    out
}

/// `text` with control characters spelled as escapes, tabs kept (rule text is tab-indented).
fn inert(text: &str) -> String {
    text.split('\t')
        .map(crate::inert::inert)
        .collect::<Vec<_>>()
        .join("\t")
}

/// `fix` with every backticked command replaced by a placeholder.
fn without_commands(fix: &str) -> String {
    let mut out = String::new();
    for (i, part) in fix.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("<command not shown>");
        }
    }
    out
}

/// Makes every finding safe to print and to paste from.
pub fn guard(host: &HostState, findings: &mut [Finding]) {
    let words = unsafe_words(host);
    for f in findings {
        if let Some(w) = words.iter().find(|w| f.fix.contains(w.as_str())) {
            f.fix = format!(
                "{} (the command is not shown: it would hold {:?}, which a shell or nft reads as syntax; rename it, or write the command by hand with the name quoted)",
                without_commands(&f.fix),
                w
            );
        }
        for field in [&mut f.rule, &mut f.place, &mut f.why, &mut f.fix] {
            *field = inert(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_syntax_are_not_plain() {
        for bad in [
            "x;true>pwned",
            "p$(id)",
            "a\"b",
            "a'b",
            "c\nd",
            "e\u{1b}[31m",
            "eth*",
        ] {
            assert!(!plain(bad), "{bad:?}");
        }
        for good in [
            "eth0",
            "br-lan.100",
            "PREROUTING",
            "wg-quick-wg0",
            "0x10/0xff",
        ] {
            assert!(plain(good), "{good:?}");
        }
        assert_eq!(
            without_commands("do `a b`, then `c`."),
            "do <command not shown>, then <command not shown>."
        );
    }
}
