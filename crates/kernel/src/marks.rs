//! Foreign users of mark bits, for apply's conflict check: this module only reads (the
//! iptables save outputs; the nft ruleset and the foreign `ip rule`s come from `observe`)
//! and hands the reading to `symroute_explain::marks`, the analysis doctor uses too, so
//! apply and doctor judge the same host alike.

use serde_json::Value;

use symroute_core::plan::diff::{ForeignRule, MarkUser};
use symroute_explain::marks::{self, IpRuleMark};
use symroute_explain::netfilter;

/// The iptables save outputs (every table) of each family, as a snapshot holds them.
#[derive(Debug, Clone, Default)]
pub struct IptablesTexts {
    pub v4: Option<String>,
    pub v6: Option<String>,
}

/// The tables iptables-nft makes (nft tables of family ip/ip6 with these names).
const XT_TABLES: [&str; 5] = ["filter", "mangle", "nat", "raw", "security"];

/// The save outputs, only where there is something to read: iptables-nft tables (an
/// nft table `ip`/`ip6` named like an iptables table, in `nft_tables`) are read by
/// `iptables-nft-save`, iptables-legacy ones (the kernel lists them in
/// `/proc/net/ip_tables_names`) by `iptables-legacy-save` (plain `iptables-save` where the
/// variant is not installed: it is whichever Debian's alternatives chose). Every table
/// is read: a rule may set or test mark bits in any of them (kube-proxy marks in `nat`).
/// Most hosts have none, and then no process runs: they were most of what a no-op apply
/// spent.
pub fn iptables_texts(nft_tables: &[(String, String)]) -> IptablesTexts {
    let installed = |tool: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists())
    };
    let mut out = IptablesTexts::default();
    for (family, legacy_names, nft_tool, legacy_tool, plain) in [
        (
            "ip",
            "/proc/net/ip_tables_names",
            "iptables-nft-save",
            "iptables-legacy-save",
            "iptables-save",
        ),
        (
            "ip6",
            "/proc/net/ip6_tables_names",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
            "ip6tables-save",
        ),
    ] {
        let pick = |tool: &'static str| if installed(tool) { tool } else { plain };
        let mut tools: Vec<&'static str> = Vec::new();
        if nft_tables
            .iter()
            .any(|(f, t)| f == family && XT_TABLES.contains(&t.as_str()))
        {
            tools.push(pick(nft_tool));
        }
        let legacy = std::fs::read_to_string(legacy_names)
            .is_ok_and(|t| t.lines().any(|l| !l.trim().is_empty()));
        if legacy && !tools.contains(&pick(legacy_tool)) {
            tools.push(pick(legacy_tool));
        }
        // Each output is whole `*table … COMMIT` blocks: one after the other still parse.
        let texts: Vec<String> = tools
            .into_iter()
            .filter_map(|tool| super::cmd::run(tool, &[], None).ok())
            .collect();
        let text = (!texts.is_empty()).then(|| texts.concat());
        match family {
            "ip" => out.v4 = text,
            _ => out.v6 = text,
        }
    }
    out
}

/// (family, name) of every table in an `nft -j` listing.
pub fn nft_tables(ruleset: &Value) -> Vec<(String, String)> {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let t = i.get("table")?;
            Some((
                t["family"].as_str()?.to_string(),
                t["name"].as_str()?.to_string(),
            ))
        })
        .collect()
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
