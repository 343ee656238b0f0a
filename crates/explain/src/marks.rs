//! Who uses which mark bits: the one reading of a host's firewall and `ip rule`s that
//! both `symroute apply` (its conflict refusal, through `symroute-kernel`) and `symroute
//! doctor` go by, so the two cannot disagree about the same host.
//!
//! It works on the netfilter IR (nft and iptables rules alike, see [`crate::netfilter`])
//! and asks, per rule, what it does to each mark bit ([`Write`]). A foreign object *uses*
//! a bit when it can turn it on of its own accord, or tests it under a partial mask:
//! - a constant it stores, and the bits an `xor` or a mix of registers may flip;
//! - copying the packet mark into the conntrack mark (`ct mark set meta mark`, CONNMARK
//!   `--save-mark`) overwrites stored decisions with every bit the masks let through,
//!   unless an exact test earlier in the rule pins the value (wg-quick's
//!   `meta mark 0xca6c ct mark set meta mark` stores just 0xca6c);
//! - copying the conntrack mark into the packet mark (`meta mark set ct mark`, CONNMARK
//!   `--restore-mark`, wg-quick's premangle) only carries values someone stored, ours
//!   included, and sets none of its own;
//! - `meta mark and M == V` with a partial M, `-m mark --mark V/M`, `ip rule fwmark V/M`:
//!   the bits of M. An exact test of all 32 bits (`fwmark 0xca6c`) only recognises its
//!   own packets and uses nothing;
//! - a mark assignment the readers could not model: every bit.

use symroute_core::model::Family;
use symroute_core::plan::diff::MarkUser;

use crate::netfilter::{MarkExpr, MarkKey, MarkSource, Match, NfFamily, Op, Rule, Ruleset, Stmt};

/// One mark assignment, bit by bit: every bit of the result is either the old value of the
/// same mark (`preserved`), a constant (`const_bits`, value in `const_val`), a copy of the
/// other mark's bit (`copy_bits`: CONNMARK save/restore, `ct mark set meta mark`), or a
/// mix of these (`fuzzy`: xor and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub key: MarkKey,
    pub preserved: u32,
    pub const_bits: u32,
    pub const_val: u32,
    pub copy_bits: u32,
    pub fuzzy: u32,
}

impl Write {
    pub fn of(key: MarkKey, e: &MarkExpr) -> Write {
        let (mut meta, mut ct) = (0u32, 0u32);
        // ((src & and) | or) ^ xor: the source's bit survives where and=1, or=0.
        let keep = e.and_mask & !e.or_bits;
        match e.source {
            MarkSource::Const => {}
            MarkSource::Meta => meta = keep,
            MarkSource::Ct => ct = keep,
        }
        let k = e.or_bits ^ e.xor_bits;
        if let Some(m) = e.mix {
            match m.key {
                MarkKey::Meta => meta ^= m.mask,
                MarkKey::Ct => ct ^= m.mask,
            }
        }
        let (own, other) = match key {
            MarkKey::Meta => (meta, ct),
            MarkKey::Ct => (ct, meta),
        };
        let preserved = own & !other & !k;
        let const_bits = !own & !other;
        let copy_bits = other & !own & !k;
        Write {
            key,
            preserved,
            const_bits,
            const_val: k & const_bits,
            copy_bits,
            fuzzy: !(preserved | const_bits | copy_bits),
        }
    }

    /// Bits the assignment may change.
    pub fn written(&self) -> u32 {
        !self.preserved
    }

    /// Only constants (no copy, no xor).
    pub fn pure_const(&self) -> bool {
        self.copy_bits == 0 && self.fuzzy == 0 && self.const_bits != 0
    }

    /// Bits it can turn on of its own (module docs): `pinned_meta` is the packet mark an
    /// exact test before it fixed, if any.
    pub fn sets(&self, pinned_meta: Option<u32>) -> u32 {
        let copied = match self.key {
            MarkKey::Meta => 0,
            MarkKey::Ct => pinned_meta.map_or(self.copy_bits, |v| v & self.copy_bits),
        };
        self.const_val | self.fuzzy | copied
    }
}

/// The rule's mark assignments, in order.
pub fn writes(rule: &Rule) -> Vec<Write> {
    rule.stmts
        .iter()
        .filter_map(|s| match s {
            Stmt::SetMark { key, value } => Some(Write::of(*key, value)),
            _ => None,
        })
        .collect()
}

/// A statement that assigns a mark in a way the readers could not model (`meta mark set
/// numgen …`, a MARK target with options it does not know): any bit may change.
pub fn opaque(s: &Stmt) -> bool {
    matches!(s, Stmt::Unknown(t) if t.to_ascii_lowercase().contains("mark"))
}

/// The mark bits a firewall rule uses (module docs); 0 for none.
pub fn rule_bits(rule: &Rule) -> u32 {
    let mut pinned_meta = None;
    let mut bits = 0;
    for m in &rule.matches {
        if let Match::Mark {
            key,
            mask,
            op,
            values,
        } = m
        {
            match (*mask, values.as_slice()) {
                (u32::MAX, [(a, b)]) if *op == Op::Eq && a == b && *key == MarkKey::Meta => {
                    pinned_meta = Some(*a);
                }
                (u32::MAX, _) => {}
                (partial, _) => bits |= partial,
            }
        }
    }
    for s in &rule.stmts {
        match s {
            Stmt::SetMark { key, value } => bits |= Write::of(*key, value).sets(pinned_meta),
            s if opaque(s) => bits = u32::MAX,
            _ => {}
        }
    }
    bits
}

/// The mark bits an `ip rule fwmark V/M` uses: M when partial (module docs).
pub fn ip_rule_bits(fwmark: Option<(u32, u32)>) -> u32 {
    match fwmark {
        Some((_, mask)) if mask != u32::MAX => mask,
        _ => 0,
    }
}

/// An `ip rule` as far as marks go.
#[derive(Debug, Clone)]
pub struct IpRuleMark<'a> {
    pub fwmark: Option<(u32, u32)>,
    /// The rule as `ip rule` prints it.
    pub text: &'a str,
    /// Where the caller says it lives (`ip -4 rule`, `ip rule (line 3)`).
    pub place: String,
}

impl<'a> IpRuleMark<'a> {
    /// `ip -4 rule` / `ip -6 rule` as the place.
    pub fn new(family: Family, fwmark: Option<(u32, u32)>, text: &'a str) -> Self {
        IpRuleMark {
            fwmark,
            text,
            place: format!("ip {} rule", family.ip_flag()),
        }
    }
}

/// Every object in `firewall` and `ip_rules` that uses mark bits, except symroute's own
/// `inet symroute` table (the caller leaves out symroute's `ip rule`s, which it knows by
/// their protocol): `ip rule`s first, then the firewall rules in listing order.
pub fn mark_users<'a>(
    firewall: &Ruleset,
    ip_rules: impl IntoIterator<Item = IpRuleMark<'a>>,
) -> Vec<MarkUser> {
    let mut out: Vec<MarkUser> = ip_rules
        .into_iter()
        .filter_map(|r| {
            let bits = ip_rule_bits(r.fwmark);
            (bits != 0).then(|| MarkUser {
                place: r.place,
                text: r.text.to_string(),
                bits,
            })
        })
        .collect();
    for chain in &firewall.chains {
        if chain.family == NfFamily::Inet && chain.table == symroute_core::plan::nft::TABLE {
            continue;
        }
        for rule in &chain.rules {
            let bits = rule_bits(rule);
            if bits != 0 {
                out.push(MarkUser {
                    place: rule.origin.to_string(),
                    text: rule.text.clone(),
                    bits,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
