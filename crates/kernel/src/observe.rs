//! Reading the kernel into an `Observed`: links and addresses, the sysctls the plan may
//! touch, our tagged rules and routes, our nft table's fingerprint, and the foreign
//! objects that would conflict with us.

use std::collections::BTreeMap;

use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use serde_json::Value;

use super::netlink::{convert, Netlink};
use super::{cmd, marks, KernelError};
use symroute_core::model::Family;
use symroute_core::plan::diff::{ForeignRule, Observed};
use symroute_core::plan::{HostView, RT_PROTO};

pub fn observe() -> Result<Observed, KernelError> {
    halves()?.complete()
}

/// Both halves of a full observation. The nft child process runs while this thread reads
/// netlink: it is most of the time a no-op apply takes. Threads started after
/// `netns::enter` live in the same namespace, and so do their children.
pub fn halves() -> Result<Halves, KernelError> {
    // Read first: every commit after it is in what follows, or moves the generation.
    let generation = super::nft_rules::generation().ok();
    std::thread::scope(|scope| {
        let nft = scope.spawn(nft_listing);
        let netlink = observe_netlink()?;
        Ok(Halves {
            netlink,
            ruleset: joined(nft),
            ours: OurTable::InListing,
            generation,
        })
    })
}

/// The two halves of a full observation, read at the same time: netlink's view
/// (`observe_netlink`) and the ruleset (`nft_listing`, or a kept one's foreign tables).
pub struct Halves {
    pub netlink: Observed,
    pub ruleset: Result<Value, KernelError>,
    pub ours: OurTable,
    /// The ruleset's generation, read before both halves (`None` if unreadable): an
    /// apply that changes the kernel from this observation records its no-op proof only
    /// if nobody else committed since (`noop::remember`).
    pub generation: Option<u32>,
}

/// Where our table's fingerprint comes from.
pub enum OurTable {
    /// The listing's tables and chains (`nft_listing`).
    InListing,
    /// Read apart, with `our_table`: the ruleset is a kept listing's foreign tables
    /// (`listing::ListingMemo`), which hold no trace of ours.
    Read(Option<String>),
}

impl Halves {
    /// The full observation. iptables-save runs only if nft shows a mangle table it would
    /// read (or a legacy one exists), so it waits for nft. The generation is not in it.
    pub fn complete(self) -> Result<Observed, KernelError> {
        let (mut obs, ruleset) = (self.netlink, self.ruleset?);
        let iptables = marks::iptables_texts(&marks::nft_tables(&ruleset));
        obs.nft_fingerprint = match self.ours {
            OurTable::InListing => our_fingerprint(&ruleset),
            OurTable::Read(fp) => fp,
        };
        // Unreadable is not fatal here (`remove` and `status` observe too): the plan's
        // conflict check refuses to apply beside a firewall it cannot read.
        match marks::foreign_mark_users(&ruleset, &obs.foreign_rules, &iptables) {
            Ok(users) => obs.mark_users = users,
            Err(e) => obs.mark_users_unread = Some(e.to_string()),
        }
        Ok(obs)
    }
}

/// The listing a thread of `std::thread::scope` read (`nft_listing`).
pub fn joined(
    thread: std::thread::ScopedJoinHandle<'_, Result<Value, KernelError>>,
) -> Result<Value, KernelError> {
    thread
        .join()
        .map_err(|_| KernelError::Other("nft reader thread panicked".into()))?
}

/// What netlink and /proc tell (links, addresses, sysctls, rules, routes) without nft
/// or iptables: all a rollback needs, and fewer ways to fail.
pub fn observe_netlink() -> Result<Observed, KernelError> {
    let mut nl = Netlink::open()?;
    let (links, addrs) = nl.dump_links_addrs()?;
    let mut obs = Observed {
        host: host_view_of(&links, &addrs),
        ..Observed::default()
    };
    let names = convert::link_names(&links);
    let mut defaults = Vec::new();
    for family in [Family::Inet4, Family::Inet6] {
        read_rules(&mut nl, family, &mut obs)?;
        read_routes(&mut nl, family, &names, &mut obs, &mut defaults)?;
    }
    obs.host.learn_default_routes(defaults);
    Ok(obs)
}

/// A digest of our table's rules as the kernel holds them (each rule's chain and
/// handle, `nft_rules`): the fingerprint chain names the table symroute wrote, this
/// tells whether anyone altered it since (a rule added, deleted or replaced, a chain
/// flushed). One nfnetlink dump, no `nft` process. A missing table has no rules; its
/// fingerprint already says it is missing.
pub fn table_digest() -> Result<Option<String>, KernelError> {
    Ok(
        super::nft_rules::rule_handles(symroute_core::plan::nft::TABLE)?.map(|rules| {
            let text: String = rules.iter().map(|(c, h)| format!("{c} {h}\n")).collect();
            symroute_core::plan::nft::fingerprint(&text)
        }),
    )
}

/// Links, their addresses, and the sysctls symroute may change.
pub fn host_view() -> Result<HostView, KernelError> {
    let (links, addrs) = Netlink::open()?.dump_links_addrs()?;
    Ok(host_view_of(&links, &addrs))
}

fn host_view_of(links: &[LinkMessage], addrs: &[AddressMessage]) -> HostView {
    let mut host = HostView {
        links: convert::host_links(links, addrs),
        ..HostView::default()
    };
    let mut keys = vec![
        "net.ipv4.icmp_errors_use_inbound_ifaddr".to_string(),
        "net.ipv4.conf.all.rp_filter".to_string(),
    ];
    keys.extend(
        host.links
            .keys()
            .map(|l| format!("net.ipv4.conf.{l}.rp_filter")),
    );
    for key in keys {
        if let Ok(v) = std::fs::read_to_string(sysctl_path(&key)) {
            host.sysctls.insert(key, v.trim().to_string());
        }
    }
    host
}

pub fn sysctl_path(key: &str) -> String {
    // Interface names may contain '.', which sysctl's dotted form writes as '/'; keys here
    // are built from known prefixes, so only the interface part can hold dots.
    let (prefix, rest) = match key.strip_prefix("net.ipv4.conf.") {
        Some(rest) => ("net/ipv4/conf/", rest),
        None => ("", key),
    };
    if prefix.is_empty() {
        format!("/proc/sys/{}", key.replace('.', "/"))
    } else {
        let (iface, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
        format!("/proc/sys/{prefix}{iface}/{leaf}")
    }
}

/// Our tagged rules, and everyone else's (with their text, for conflict messages).
fn read_rules(nl: &mut Netlink, family: Family, obs: &mut Observed) -> Result<(), KernelError> {
    for r in nl.dump_rules(family)? {
        if convert::rule_protocol(&r) == RT_PROTO {
            // A tagged rule of a shape symroute never makes is left alone, not guessed at.
            if let Some(spec) = convert::rule_spec(&r) {
                obs.rules.insert(spec);
            }
        } else {
            obs.foreign_rules.push(ForeignRule {
                family,
                priority: convert::rule_priority(&r),
                fwmark: convert::rule_fwmark(&r),
                text: convert::rule_text(&r),
            });
        }
    }
    Ok(())
}

/// Our tagged routes, the tables (other than main and local) holding anyone else's, and
/// the main table's default routes.
fn read_routes(
    nl: &mut Netlink,
    family: Family,
    names: &BTreeMap<u32, String>,
    obs: &mut Observed,
    defaults: &mut Vec<(String, std::net::IpAddr, u32)>,
) -> Result<(), KernelError> {
    for r in nl.dump_routes(family)? {
        defaults.extend(convert::main_default_route(&r, names));
        if u8::from(r.header.protocol) == RT_PROTO {
            // Kinds symroute never makes (blackhole, …) are left alone.
            if let Some(spec) = convert::route_spec(&r, names) {
                obs.routes.insert(spec);
            }
            continue;
        }
        let table = convert::route_table(&r);
        if table.id() != 254 && table.id() != 255 {
            obs.foreign_route_tables
                .entry(table)
                .or_insert_with(|| convert::route_text(&r, names));
        }
    }
    Ok(())
}

/// What observe needs from nftables: every table and chain (which tables exist, and our
/// fingerprint chain), plus the rules and sets of every foreign table (for mark users).
///
/// One dump of the whole ruleset, filtered here. Names read from the host are data: a
/// table named `x; add table ip pwned` listed by name (`nft list table ip NAME`) would
/// be parsed by nft as a second command, so nothing read from nft is ever passed back to
/// it. `-t` (terse) leaves set elements out, which keeps our own (possibly huge) sets
/// out of the dump; our table's rules are dropped here, after parsing.
pub fn nft_listing() -> Result<Value, KernelError> {
    const ARGS: [&str; 4] = ["-j", "-t", "list", "ruleset"];
    let text = cmd::run("nft", &ARGS, None)?;
    let dump: Value = serde_json::from_str(&text).map_err(|e| KernelError::Parse {
        cmd: format!("nft {}", ARGS.join(" ")),
        detail: e.to_string(),
    })?;
    Ok(foreign_view(dump))
}

/// The tables and chains of a ruleset dump, and the rules of every table but ours.
fn foreign_view(mut dump: Value) -> Value {
    let items = match dump["nftables"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let kept: Vec<Value> = items
        .into_iter()
        .filter(|i| {
            i.get("table").is_some()
                || i.get("chain").is_some()
                || i.get("rule").is_some_and(|r| !is_ours(r, "table"))
                // Foreign sets (without their elements: `-t`), so that a rule testing
                // marks against one still reads as a mark test.
                || i.get("set").or(i.get("map")).is_some_and(|x| !is_ours(x, "table"))
        })
        .collect();
    serde_json::json!({ "nftables": kept })
}

/// Whether a listed object is of table inet symroute: a table (`key` "name"), or what
/// sits in one (`key` "table").
fn is_ours(o: &Value, key: &str) -> bool {
    o["family"] == "inet" && o[key] == symroute_core::plan::nft::TABLE
}

/// nft's JSON omits table comments, so the fingerprint also names an empty chain.
pub const FINGERPRINT_CHAIN_PREFIX: &str = "fingerprint_";

/// Our table's fingerprint read over nfnetlink (`nft_rules::table_chains`), as
/// `our_fingerprint` reads it from a listing: `None` without the table, empty without
/// exactly one fingerprint chain. An error (a commit while it read, say) sends the
/// caller to the listing.
pub fn our_table() -> Result<Option<String>, KernelError> {
    let chains = super::nft_rules::table_chains(symroute_core::plan::nft::TABLE)?;
    Ok(chains.map(|names| fingerprint_of(names.iter().map(String::as_str))))
}

/// The fingerprint among a table's chain names: the suffix of its one fingerprint chain,
/// empty without one or with several (a table symroute wrote has exactly one).
fn fingerprint_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut found = names.filter_map(|n| n.strip_prefix(FINGERPRINT_CHAIN_PREFIX));
    match (found.next(), found.next()) {
        (Some(fp), None) => fp.to_string(),
        _ => String::new(),
    }
}

/// A listing (`nft_listing`) without our table and its chains: the part of it that a
/// commit on our table alone leaves true.
pub fn without_ours(listing: &Value) -> Value {
    let kept: Vec<Value> = listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            let own_table = i.get("table").is_some_and(|t| is_ours(t, "name"));
            !own_table
                && !["chain", "rule", "set", "map"]
                    .iter()
                    .any(|k| i.get(*k).is_some_and(|o| is_ours(o, "table")))
        })
        .cloned()
        .collect();
    serde_json::json!({ "nftables": kept })
}

fn our_fingerprint(ruleset: &Value) -> Option<String> {
    let items = ruleset["nftables"].as_array()?;
    let has_table = items.iter().any(|i| is_ours(&i["table"], "name"));
    if !has_table {
        return None;
    }
    Some(fingerprint_of(
        items
            .iter()
            .filter_map(|i| i.get("chain"))
            .filter(|c| is_ours(c, "table"))
            .filter_map(|c| c["name"].as_str()),
    ))
}
