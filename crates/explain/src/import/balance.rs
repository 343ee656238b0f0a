//! A default route spread over the gateways, in a table of its own that an unconditional
//! rule looks up (Shorewall's `balance` providers: `from all lookup balance` and
//! `default nexthop via ISP1 … nexthop via ISP2 …`, the default route moved out of main):
//! new connections shared between those gateways, as a `route_via` with weights.

use super::*;

/// A share of new connections between gateways, from such a table.
#[derive(Debug, Clone)]
pub(super) struct ShareOut {
    /// The host's name for the table (or `balance`), for the policy's name.
    pub(super) base_name: String,
    /// (gateway, weight), in next-hop order.
    pub(super) weights: Vec<(usize, u32)>,
    pub(super) sel: Sel,
    pub(super) notes: Vec<String>,
}

impl<'h> Cx<'h> {
    pub(super) fn balance(&mut self) {
        let rules = &self.host.routing.rules;
        for (i, r) in rules.iter().enumerate() {
            let RuleAction::Lookup(t) = r.action else {
                continue;
            };
            if !r.selects_all()
                || r.is_default()
                || Self::ours(&r.protocol)
                || [0, TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL].contains(&t)
                || self.rules_done.contains(&i)
            {
                continue;
            }
            match self.share_of(r, t) {
                Ok((route, share)) => {
                    self.rules_why.remove(&i);
                    self.rules_done.insert(i);
                    self.routes_done.insert(route);
                    self.shares.push(share);
                }
                Err(Some(why)) => {
                    self.rules_why.insert(i, why);
                }
                Err(None) => {}
            }
        }
    }

    /// The share table `t` (looked up by `r`) stands for, with its route's index; `Err`
    /// with why when it is such a table but cannot be one, `Err(None)` when it is not.
    fn share_of(&self, r: &RuleEntry, t: u32) -> Result<(usize, ShareOut), Option<String>> {
        let fam = r.family;
        let routing = &self.host.routing;
        let routes: Vec<(usize, &RouteEntry)> = routing
            .routes
            .iter()
            .enumerate()
            .filter(|(_, x)| x.family == fam && x.table == t && !Self::ours(&x.protocol))
            .collect();
        let [(ri, d)] = routes.as_slice() else {
            return Err(None);
        };
        let multipath_default = d.dst.prefix_len() == 0
            && d.kind == RouteKind::Unicast
            && d.nexthops.len() > 1
            && d.src.is_none()
            && d.tos == 0;
        if !multipath_default {
            return Err(None);
        }
        let table = self
            .table_word(r, t)
            .map(|w| format!("{w} ({t})"))
            .unwrap_or_else(|| t.to_string());
        let mut weights: Vec<(usize, u32)> = Vec::new();
        for nh in &d.nexthops {
            let gw = self.gateways.iter().position(|g| {
                nh.dev.as_deref() == Some(g.interface.as_str())
                    && match (fam, nh.via) {
                        (Family::Inet4, Some(IpAddr::V4(a))) => g.via == Some(a),
                        (Family::Inet6, Some(IpAddr::V6(a))) => g.via6 == Some(a),
                        (Family::Inet4, None) => g.via.is_none(),
                        (Family::Inet6, None) => g.via6.is_none(),
                        _ => false,
                    }
            });
            let hop = format!(
                "{}dev {}",
                nh.via.map(|v| format!("via {v} ")).unwrap_or_default(),
                nh.dev.as_deref().unwrap_or("?")
            );
            match gw {
                Some(g) if !weights.iter().any(|(x, _)| *x == g) => {
                    weights.push((g, nh.weight.clamp(1, 1000)))
                }
                Some(_) => {
                    return Err(Some(format!(
                        "table {table} spreads the default route over the same gateway twice ({hop}): symroute shares between different gateways"
                    )))
                }
                None => {
                    return Err(Some(format!(
                        "table {table} spreads the default route over next hops, and `{hop}` is none of the gateways above (a table an `ip rule fwmark` looks up): symroute shares only between its gateways"
                    )))
                }
            }
        }
        let main_default = routing
            .routes_of(fam, TABLE_MAIN)
            .find(|x| x.dst.prefix_len() == 0 && !x.kind.is_reject());
        let main_first = routing.rules_of(fam).any(|m| {
            m.selects_all() && m.action == RuleAction::Lookup(TABLE_MAIN) && m.priority < r.priority
        });
        if let (Some(m), true) = (main_default, main_first) {
            return Err(Some(format!(
                "table {table} spreads the default route over gateways, but main is looked up first and has a default route of its own (`{}`), which decides every packet this table would: it is never used",
                one_line(&m.text)
            )));
        }
        let names: Vec<String> = weights
            .iter()
            .map(|(g, w)| format!("{} {w}", self.gateways[*g].name))
            .collect();
        let mut notes = vec![format!(
            "from `{}` and table {table}, `{}`: the host's default route spread over the gateways (weights: {}) by the kernel, per flow (a hash of the addresses); here new connections no policy above takes are shared by those weights, and each keeps its gateway for its whole life (add `sticky = \"10m\"` to keep a source on one gateway)",
            one_line(&r.text),
            d.text.split_whitespace().collect::<Vec<_>>().join(" "),
            names.join(", ")
        )];
        if main_default.is_none() {
            notes.push(format!(
                "main has no {} default route of its own (it was moved into table {table}): once the tool that moved it is removed, put the host's default route back in main (`ip {}route add default via GATEWAY dev INTERFACE`); the host's own connections need one to start (their first route lookup comes before any mark)",
                fam_word(fam),
                if fam == Family::Inet6 { "-6 " } else { "" }
            ));
        }
        // The original shared one family; the gateways may route the other one too.
        let mut sel = Sel::default();
        let other_too = weights.iter().any(|(g, _)| match fam {
            Family::Inet4 => self.gateways[*g].via6.is_some(),
            Family::Inet6 => self.gateways[*g].via.is_some(),
        });
        if other_too {
            sel.destination = vec![match fam {
                Family::Inet4 => "0.0.0.0/0".parse().expect("prefix"),
                Family::Inet6 => "::/0".parse().expect("prefix"),
            }];
        }
        let base_name = self
            .table_word(r, t)
            .and_then(|w| clean_name(&w))
            .unwrap_or_else(|| "balance".into());
        Ok((
            *ri,
            ShareOut {
                base_name,
                weights,
                sel,
                notes,
            },
        ))
    }
}

/// A host-given name as a config name (letters, digits, `-_.`; starts alphanumeric).
pub(super) fn clean_name(w: &str) -> Option<String> {
    let clean: String = w
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    clean
        .starts_with(|c: char| c.is_ascii_alphanumeric())
        .then_some(clean)
}
