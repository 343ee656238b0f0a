//! `conntrack -L` read back: each entry's original and reply tuples and its mark.

use std::net::IpAddr;

use symroute::lab::Netns;

/// One conntrack entry with ports (TCP, UDP, …): its original direction's tuple, the
/// reply direction's source, and the mark.
#[derive(Debug, Clone)]
pub struct Ct {
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
    pub mark: u32,
    /// The line as conntrack printed it.
    pub line: String,
}

impl Ct {
    /// One line of `conntrack -L`; `None` for entries without ports (ICMP).
    pub fn parse(line: &str) -> Option<Ct> {
        let words: Vec<&str> = line.split_whitespace().collect();
        // The original tuple's key=value first, then the reply tuple's.
        let all = |k: &str| -> Vec<&str> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .collect()
        };
        let (src, dst, sport, dport) = (all("src"), all("dst"), all("sport"), all("dport"));
        Some(Ct {
            proto: words.first()?.to_string(),
            src: src.first()?.parse().ok()?,
            dst: dst.first()?.parse().ok()?,
            sport: sport.first()?.parse().ok()?,
            dport: dport.first()?.parse().ok()?,
            reply_src: src.get(1)?.parse().ok()?,
            reply_sport: sport.get(1)?.parse().ok()?,
            mark: field(line, "mark")?.parse().ok()?,
            line: line.to_string(),
        })
    }
}

/// `conntrack -L ARGS` inside `ns`, parsed.
pub fn list(ns: &Netns, args: &[&str]) -> Vec<Ct> {
    let mut all = vec!["conntrack", "-L"];
    all.extend(args);
    let text = ns.exec(&all).expect("conntrack -L");
    text.lines().filter_map(Ct::parse).collect()
}

/// The value of `key=` (`mark`, `id`) in a line of `conntrack -L`.
pub fn field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The entries, one per line, for an assertion's message.
pub fn dump(entries: &[Ct]) -> String {
    entries.iter().map(|c| format!("  {}\n", c.line)).collect()
}
