//! Foreign users of mark bits, for apply's conflict check: this module only reads (the
//! `iptables-save` outputs; the nft ruleset and the foreign `ip rule`s come from
//! `observe`) and hands the reading to `symroute_explain::marks`, the analysis doctor
//! uses too, so apply and doctor judge the same host alike.

use serde_json::Value;

use symroute_core::plan::diff::{ForeignRule, MarkUser};
use symroute_explain::marks::{self, IpRuleMark};
use symroute_explain::netfilter;

/// The outputs of `iptables-save` and `ip6tables-save`, every table, as a snapshot holds
/// them (an absent tool is simply not there).
#[derive(Debug, Clone, Default)]
pub struct IptablesTexts {
    pub v4: Option<String>,
    pub v6: Option<String>,
}

pub fn iptables_texts() -> IptablesTexts {
    let save = |tool| super::cmd::run(tool, &[], None).ok();
    IptablesTexts {
        v4: save("iptables-save"),
        v6: save("ip6tables-save"),
    }
}

/// The firewall as one IR (iptables-nft tables from the save outputs), then who uses
/// which mark bits in it and in the foreign `ip rule`s. An error names the output that
/// could not be read, and where.
pub fn foreign_mark_users(
    ruleset: &Value,
    rules: &[ForeignRule],
    iptables: &IptablesTexts,
) -> Result<Vec<MarkUser>, netfilter::ParseError> {
    let firewall = netfilter::combine(
        Some(ruleset),
        iptables.v4.as_deref(),
        iptables.v6.as_deref(),
    )?;
    let rules = rules
        .iter()
        .map(|r| IpRuleMark::new(r.family, r.fwmark, &r.text));
    Ok(marks::mark_users(&firewall, rules))
}
