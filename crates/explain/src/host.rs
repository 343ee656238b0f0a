//! The state explain, doctor and import reason about: routing (rules, routes, links,
//! sysctls) and the firewall (nft and iptables, as one IR), read from a snapshot's files
//! or captured live, optionally with a symroute plan laid over it ("after apply").

use std::collections::BTreeMap;

use serde::Serialize;

use super::netfilter::{self, NfFamily, Ruleset};
use super::routing::{RouteEntry, RoutingState, RuleEntry, StateTexts};
use symroute_core::model::Family;
use symroute_core::plan::{Plan, RT_PROTO};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{origin}/{file}: {message}")]
    Parse {
        origin: String,
        file: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct HostState {
    pub routing: RoutingState,
    pub firewall: Ruleset,
    /// Interface name → MAC address (from `ip -j link`), for messages.
    pub macs: BTreeMap<String, String>,
    /// Where the state came from (a directory, or "live").
    pub origin: String,
    /// Expected files that were absent (their part of the state is empty).
    pub missing: Vec<String>,
    /// How nft names the cgroup2 root on this host (`unified/` on a hybrid one), when
    /// known (a live host): cgroups in its rules are written with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<String>,
    /// systemd-networkd's configuration text (snapshot file `networkd.conf`: networkd.conf
    /// and its drop-ins after `# PATH` lines), where networkd is configured.
    pub networkd: Option<String>,
}

impl HostState {
    /// Build from snapshot files (`kernel::snapshot` names); `origin` prefixes errors.
    pub fn from_files(
        files: &BTreeMap<String, String>,
        missing: Vec<String>,
        origin: &str,
    ) -> Result<HostState, HostError> {
        let get = |f: &str| files.get(f).map(String::as_str).unwrap_or("");
        let texts = StateTexts {
            ip_rule: get("ip-rule.txt"),
            ip6_rule: get("ip6-rule.txt"),
            ip_route: get("ip-route.txt"),
            ip6_route: get("ip6-route.txt"),
            ip_addr_json: if get("ip-addr.json").trim().is_empty() {
                "[]"
            } else {
                get("ip-addr.json")
            },
            sysctl: get("sysctl.txt"),
            rt_tables: files.get("rt_tables").map(String::as_str).unwrap_or(""),
        };
        let routing = RoutingState::from_texts(&texts).map_err(|e| HostError::Parse {
            origin: origin.into(),
            file: file_of(&e.input).into(),
            message: format!("line {}: {}", e.error.line, e.error.message),
        })?;
        let nft_json = match files.get("nft.json").filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(serde_json::from_str::<serde_json::Value>(t).map_err(|e| {
                HostError::Parse {
                    origin: origin.into(),
                    file: "nft.json".into(),
                    message: format!("line {}: {e}", e.line()),
                }
            })?),
            None => None,
        };
        let firewall = netfilter::combine(
            nft_json.as_ref(),
            files.get("iptables-save.txt").map(String::as_str),
            files.get("ip6tables-save.txt").map(String::as_str),
        )
        .map_err(|e| HostError::Parse {
            origin: origin.into(),
            file: match e.kind {
                netfilter::SourceKind::NftJson => "nft.json",
                netfilter::SourceKind::IptablesSave => "iptables-save.txt",
                netfilter::SourceKind::Ip6tablesSave => "ip6tables-save.txt",
                netfilter::SourceKind::NftText => "plan",
            }
            .into(),
            message: format!("{}: {}", e.place, e.message),
        })?;
        let mut macs = BTreeMap::new();
        if let Ok(serde_json::Value::Array(links)) = serde_json::from_str(get("ip-link.json")) {
            for l in links {
                if let (Some(n), Some(a)) = (l["ifname"].as_str(), l["address"].as_str()) {
                    macs.insert(n.to_string(), a.to_string());
                }
            }
        }
        Ok(HostState {
            routing,
            firewall,
            macs,
            origin: origin.to_string(),
            missing,
            cgroup_root: None,
            networkd: files.get("networkd.conf").cloned(),
        })
    }

    /// Lay a symroute plan over the state: what the host would look like after `apply`.
    /// symroute's own objects already there (tag 157, table `inet symroute`) are replaced.
    pub fn overlay(&mut self, plan: &Plan) -> Result<(), HostError> {
        let err = |message: String| HostError::Parse {
            origin: "plan".into(),
            file: "plan".into(),
            message,
        };
        let ours = RT_PROTO.to_string();
        self.routing
            .rules
            .retain(|r| r.protocol.as_deref() != Some(ours.as_str()));
        self.routing
            .routes
            .retain(|r| r.protocol.as_deref() != Some(ours.as_str()));
        // The plan's values as the engine's entries (not their `ip` rendering read back),
        // IPv4 then IPv6 as the kernel lists them.
        for family in [Family::Inet4, Family::Inet6] {
            let rules = plan.rules.iter().filter(|r| r.family == family);
            self.routing.rules.extend(rules.map(RuleEntry::planned));
            let routes = plan.routes.iter().filter(|r| r.family == family);
            self.routing.routes.extend(routes.map(RouteEntry::planned));
        }
        self.routing.sort_rules();
        self.firewall.chains.retain(|c| {
            !(c.family == NfFamily::Inet && c.table == symroute_core::plan::nft::TABLE)
        });
        let ours = netfilter::from_symroute_nft_text(&plan.nft).map_err(|e| err(e.to_string()))?;
        self.firewall.chains.extend(ours.chains);
        let host = symroute_core::plan::HostView {
            sysctls: self.routing.sysctls.clone(),
            ..Default::default()
        };
        for (key, want) in &plan.sysctls {
            let cur = self.routing.sysctls.get(key).cloned().unwrap_or_default();
            if let Some(v) = want.fix(&cur, &host) {
                self.routing.sysctls.insert(key.clone(), v);
            }
        }
        Ok(())
    }

    /// The plan's view of this host (links up/down and addresses), to build a plan offline.
    pub fn host_view(&self) -> symroute_core::plan::HostView {
        let mut h = symroute_core::plan::HostView {
            sysctls: self.routing.sysctls.clone(),
            ..Default::default()
        };
        for (name, l) in &self.routing.links {
            h.links.insert(
                name.clone(),
                symroute_core::plan::Link {
                    up: l.up && l.carrier,
                    addrs: l.addrs.clone(),
                    peers: Vec::new(),
                },
            );
        }
        // What `via = "auto"` learns: the main table's default routes with a next hop.
        let defaults = self
            .routing
            .routes
            .iter()
            .filter(|r| {
                r.table == 254
                    && r.dst.prefix_len() == 0
                    && r.kind == crate::routing::RouteKind::Unicast
            })
            .flat_map(|r| {
                r.nexthops
                    .iter()
                    .filter_map(move |n| Some((n.dev.clone()?, n.via?, r.metric)))
            })
            .collect();
        h.learn_default_routes(defaults);
        h
    }
}

fn file_of(input: &str) -> &'static str {
    match input {
        "ip rule" => "ip-rule.txt",
        "ip -6 rule" => "ip6-rule.txt",
        "ip route show table all" => "ip-route.txt",
        "ip -6 route show table all" => "ip6-route.txt",
        "ip -j addr" => "ip-addr.json",
        _ => "sysctl.txt",
    }
}
