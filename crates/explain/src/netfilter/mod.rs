//! `symroute explain`, the netfilter part: what the firewall does to a packet's mark, its
//! connection's mark and its addresses, hook by hook.
//!
//! Three readers produce one IR ([`Ruleset`]):
//! - [`from_nft_json`] reads `nft -j list ruleset` (nft 1.0.2–1.0.6). Rules added with
//!   iptables-nft are opaque `xt` expressions there, so whole iptables-nft tables are left
//!   to [`from_iptables_save`] (see [`combine`], which does both and splices the result).
//! - [`from_iptables_save`] reads `iptables-save` / `ip6tables-save` (nft or legacy).
//! - [`from_symroute_nft_text`] reads exactly what `plan::nft::render` writes, so a plan
//!   can be explained without a kernel (`explain -c FILE`).
//!
//! [`evaluate`] runs one hook's base chains for one packet and reports every rule it
//! looked at ([`Step`]), the packet after the hook, NAT it set up, and whether anything
//! was beyond the model (an `Unknown` match makes its rule "maybe": assumed not to
//! match, and said so).

mod eval;
mod iptables;
mod ir;
mod nft_json;
mod nft_text;

#[cfg(test)]
pub(crate) mod tests;

use serde::Serialize;

pub use eval::{
    evaluate, CtCtx, HookResult, LocalSocket, Matched, NatEvent, NatKind, PacketCtx, Step,
};
pub use iptables::from_iptables_save;
pub use ir::{
    normalize_mac, AddrItem, Base, Chain, ChainKind, CtDirection, CtState, Hook, MarkExpr, MarkKey,
    MarkMix, MarkSource, Match, NatTo, NfFamily, Op, Origin, Policy, Rule, Ruleset, Stmt, Verdict,
    Vmap, VmapEntry,
};
pub use nft_json::{from_nft_json, from_nft_json_keep_xtables};
pub use nft_text::from_symroute_nft_text;

use symroute_core::model::Family;

/// Which reader failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `nft -j list ruleset`
    NftJson,
    IptablesSave,
    Ip6tablesSave,
    /// symroute's rendered `inet symroute` table
    NftText,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::NftJson => "nft -j list ruleset",
            SourceKind::IptablesSave => "iptables-save",
            SourceKind::Ip6tablesSave => "ip6tables-save",
            SourceKind::NftText => "nft ruleset text",
        })
    }
}

/// A ruleset that could not be read: the kind of input, where (`line 12`, `handle 7`),
/// and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{kind}, {place}: {message}")]
pub struct ParseError {
    pub kind: SourceKind,
    pub place: String,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(
        kind: SourceKind,
        place: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ParseError {
            kind,
            place: place.into(),
            message: message.into(),
        }
    }
}

/// The host's whole firewall from what the tools print: native nft tables from the JSON,
/// iptables(-nft or -legacy) tables from the save outputs. An iptables-nft table that
/// the save output covers replaces its opaque JSON version in place (keeping the listing
/// order that breaks priority ties); one it does not cover stays, with its `xt`
/// expressions as `Unknown`. Tables only in the save output (iptables-legacy) go last.
pub fn combine(
    nft_json: Option<&serde_json::Value>,
    iptables_save: Option<&str>,
    ip6tables_save: Option<&str>,
) -> Result<Ruleset, ParseError> {
    let mut from_save = Ruleset::default();
    for (text, family) in [
        (iptables_save, Family::Inet4),
        (ip6tables_save, Family::Inet6),
    ] {
        if let Some(t) = text {
            from_save.extend(from_iptables_save(t, family)?);
        }
    }
    let Some(json) = nft_json else {
        return Ok(from_save);
    };
    let (mut rs, xt_tables) = nft_json::parse(json, true)?;
    let covered = |fam: NfFamily, table: &str| {
        from_save
            .chains
            .iter()
            .any(|c| c.family == fam && c.table == table)
    };
    let mut out = Ruleset {
        chains: Vec::new(),
        notes: std::mem::take(&mut rs.notes),
    };
    let in_json: Vec<(NfFamily, String)> = rs
        .chains
        .iter()
        .map(|c| (c.family, c.table.clone()))
        .collect();
    let mut spliced: Vec<(NfFamily, String)> = Vec::new();
    let mut opaque: Vec<(NfFamily, String)> = Vec::new();
    for c in rs.chains {
        let key = (c.family, c.table.clone());
        if xt_tables.contains(&key) && covered(c.family, &c.table) {
            if !spliced.contains(&key) {
                out.chains.extend(
                    from_save
                        .chains
                        .iter()
                        .filter(|s| s.family == key.0 && s.table == key.1)
                        .cloned(),
                );
                out.notes.push(format!(
                    "table {} {}: iptables-nft rules, read from {}",
                    key.0,
                    key.1,
                    if key.0 == NfFamily::Ip6 {
                        "ip6tables-save"
                    } else {
                        "iptables-save"
                    }
                ));
                spliced.push(key);
            }
            continue;
        }
        if xt_tables.contains(&key) && !opaque.contains(&key) {
            out.notes.push(format!(
                "table {} {}: iptables-nft rules without their save output: `xt` parts are not modelled",
                key.0, key.1
            ));
            opaque.push(key);
        }
        out.chains.push(c);
    }
    // Save-output tables the JSON also lists natively stay as the JSON has them; the
    // rest (iptables-legacy) are appended: their order against nft chains of the same
    // priority is not known.
    let mut appended: Vec<(NfFamily, String)> = Vec::new();
    for c in from_save.chains {
        let key = (c.family, c.table.clone());
        if spliced.contains(&key) || in_json.contains(&key) {
            continue;
        }
        if !appended.contains(&key) {
            out.notes.push(format!(
                "table {} {}: only in the save output (iptables-legacy?), evaluated after nft chains of the same priority",
                key.0, key.1
            ));
            appended.push(key);
        }
        out.chains.push(c);
    }
    out.notes.extend(from_save.notes);
    Ok(out)
}
