//! Reading the kernel into an `Observed`: links and addresses, the sysctls the plan may
//! touch, our tagged rules and routes, our nft table's fingerprint, and the foreign
//! objects that would conflict with us.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::{cmd, marks, KernelError};
use crate::model::{Family, Priority, TableId};
use crate::plan::diff::{ForeignRule, Observed};
use crate::plan::{HostView, Link, RouteKind, RouteSpec, RuleAction, RuleSpec, RT_PROTO};

pub fn observe() -> Result<Observed, KernelError> {
    let host = host_view()?;
    let mut obs = Observed {
        host,
        ..Observed::default()
    };
    for family in [Family::Inet4, Family::Inet6] {
        read_rules(family, &mut obs)?;
        read_routes(family, &mut obs)?;
    }
    let ruleset = nft_ruleset()?;
    obs.nft_fingerprint = our_fingerprint(&ruleset);
    obs.mark_users = marks::foreign_mark_users(&ruleset, &obs.foreign_rules);
    Ok(obs)
}

/// Links, their addresses, and the sysctls symroute may change.
pub fn host_view() -> Result<HostView, KernelError> {
    let mut host = HostView::default();
    let links = cmd::ip_json(&["addr", "show"])?;
    for l in links.as_array().into_iter().flatten() {
        let Some(name) = l["ifname"].as_str() else {
            continue;
        };
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let up = flags.contains(&"UP") && (flags.contains(&"LOWER_UP") || name == "lo");
        let mut addrs = Vec::new();
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            if let Ok(net) = format!("{local}/{len}").parse::<IpNet>() {
                addrs.push(net);
            }
            // Point-to-point links (`local A peer B/len`): the peer's network is on-link.
            if let Some(peer) = a["address"].as_str().filter(|p| *p != local) {
                if let Ok(net) = format!("{peer}/{len}").parse::<IpNet>() {
                    addrs.push(net);
                }
            }
        }
        host.links.insert(name.to_string(), Link { up, addrs });
    }
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
    Ok(host)
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

fn num(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn table_of(v: &Value) -> Option<TableId> {
    match v.as_str() {
        Some("main") => Some(TableId::from_kernel(254)),
        Some("local") => Some(TableId::from_kernel(255)),
        Some("default") => Some(TableId::from_kernel(253)),
        _ => num(v).map(TableId::from_kernel),
    }
}

fn is_ours(v: &Value) -> bool {
    v["protocol"].as_str() == Some(&RT_PROTO.to_string())
        || v["protocol"].as_u64() == Some(u64::from(RT_PROTO))
}

fn read_rules(family: Family, obs: &mut Observed) -> Result<(), KernelError> {
    let rules = cmd::ip_json(&[family.ip_flag(), "-d", "rule", "show"])?;
    for r in rules.as_array().into_iter().flatten() {
        let Some(priority) = num(&r["priority"]).map(Priority::from_kernel) else {
            continue;
        };
        let fwmark = num(&r["fwmark"]).map(|v| (v, num(&r["fwmask"]).unwrap_or(u32::MAX)));
        if is_ours(r) {
            let action = match (num(&r["goto"]), table_of(&r["table"])) {
                (Some(target), _) => RuleAction::Goto(Priority::from_kernel(target)),
                (None, Some(table)) => RuleAction::Lookup(table),
                (None, None) => continue,
            };
            obs.rules.insert(RuleSpec {
                priority,
                family,
                fwmark,
                action,
                suppress_prefixlength: r["suppress_prefixlen"]
                    .as_u64()
                    .and_then(|n| u8::try_from(n).ok()),
            });
        } else {
            obs.foreign_rules.push(ForeignRule {
                family,
                priority,
                fwmark,
                text: rule_text(r),
            });
        }
    }
    Ok(())
}

/// Approximately how `ip rule` prints a rule, for messages.
fn rule_text(r: &Value) -> String {
    let mut s = format!("{}:", r["priority"]);
    if r["not"].as_bool() == Some(true) {
        s += " not";
    }
    s += &format!(" from {}", r["src"].as_str().unwrap_or("all"));
    if let Some(l) = r["srclen"].as_u64() {
        s += &format!("/{l}");
    }
    for (key, word) in [("dst", "to"), ("iifname", "iif"), ("oifname", "oif")] {
        if let Some(v) = r[key].as_str() {
            s += &format!(" {word} {v}");
        }
    }
    if let Some(m) = r["fwmark"].as_str() {
        s += &format!(" fwmark {m}");
        if let Some(mask) = r["fwmask"].as_str() {
            s += &format!("/{mask}");
        }
    }
    if let Some(t) = r["table"].as_str() {
        s += &format!(" lookup {t}");
    }
    if let Some(a) = r["action"].as_str() {
        s += &format!(" {a}");
    }
    s
}

fn read_routes(family: Family, obs: &mut Observed) -> Result<(), KernelError> {
    let routes = cmd::ip_json(&[family.ip_flag(), "route", "show", "table", "all"])?;
    for r in routes.as_array().into_iter().flatten() {
        let table = table_of(&r["table"]).unwrap_or(TableId::MAIN);
        if !is_ours(r) {
            if table.id() != 254 && table.id() != 255 {
                obs.foreign_route_tables
                    .entry(table)
                    .or_insert_with(|| route_text(r));
            }
            continue;
        }
        let kind = match r["type"].as_str() {
            Some("local") => RouteKind::Local,
            None | Some("unicast") => RouteKind::Unicast,
            Some(_) => continue, // not a kind symroute makes; leave it for `remove` below
        };
        let Some(dst) = parse_dst(r["dst"].as_str().unwrap_or("default"), family) else {
            continue;
        };
        obs.routes.insert(RouteSpec {
            table,
            family,
            kind,
            dst,
            via: r["gateway"].as_str().and_then(|g| g.parse::<IpAddr>().ok()),
            dev: r["dev"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(())
}

fn route_text(r: &Value) -> String {
    let mut s = r["dst"].as_str().unwrap_or("?").to_string();
    if let Some(g) = r["gateway"].as_str() {
        s += &format!(" via {g}");
    }
    if let Some(d) = r["dev"].as_str() {
        s += &format!(" dev {d}");
    }
    s += &format!(" table {}", r["table"].as_str().unwrap_or("main"));
    s
}

fn parse_dst(dst: &str, family: Family) -> Option<IpNet> {
    if dst == "default" {
        return Some(match family {
            Family::Inet4 => "0.0.0.0/0".parse().ok()?,
            Family::Inet6 => "::/0".parse().ok()?,
        });
    }
    dst.parse::<IpNet>()
        .ok()
        .or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The whole nft ruleset as JSON (our table and everyone else's).
pub fn nft_ruleset() -> Result<Value, KernelError> {
    let text = cmd::run("nft", &["-j", "list", "ruleset"], None)?;
    serde_json::from_str(&text).map_err(|e| KernelError::Parse {
        cmd: "nft -j list ruleset".into(),
        detail: e.to_string(),
    })
}

/// nft's JSON omits table comments, so the fingerprint also names an empty chain.
pub const FINGERPRINT_CHAIN_PREFIX: &str = "fingerprint_";

fn our_fingerprint(ruleset: &Value) -> Option<String> {
    let items = ruleset["nftables"].as_array()?;
    let ours = |o: &Value| o["family"] == "inet" && o["table"] == crate::plan::nft::TABLE;
    let has_table = items
        .iter()
        .any(|i| i["table"]["family"] == "inet" && i["table"]["name"] == crate::plan::nft::TABLE);
    if !has_table {
        return None;
    }
    let fp = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| ours(c))
        .find_map(|c| {
            c["name"]
                .as_str()?
                .strip_prefix(FINGERPRINT_CHAIN_PREFIX)
                .map(str::to_string)
        });
    Some(fp.unwrap_or_default())
}

/// Priorities of every rule in the kernel (ours and foreign), for messages and tests.
pub fn rule_priorities(obs: &Observed) -> BTreeSet<u32> {
    obs.rules
        .iter()
        .map(|r| r.priority.get())
        .chain(obs.foreign_rules.iter().map(|r| r.priority.get()))
        .collect()
}

/// Current values of the given sysctls (missing ones are skipped).
pub fn read_sysctls<'a>(keys: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, String> {
    keys.into_iter()
        .filter_map(|k| {
            std::fs::read_to_string(sysctl_path(k))
                .ok()
                .map(|v| (k.clone(), v.trim().to_string()))
        })
        .collect()
}
