//! What each of this box's mark values means: the map `symroute status --json` publishes
//! (`marks`) and `symroute doctor --peer` compares between the two boxes of an HA pair.
//! conntrackd copies a connection's mark to the peer; it keeps its path there only if the
//! value means the same gateway on both boxes.

use serde::{Deserialize, Serialize};

use super::{GatewayPlan, Plan};
use crate::model::{IdFrom, Model};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMap {
    /// `settings.mark_mask`, e.g. `0xff000000`.
    pub mask: String,
    /// Every gateway, by id.
    pub gateways: Vec<MarkMapGateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divert: Option<MarkMapDivert>,
    /// FNV-1a of [`MarkMap::canonical`]: two boxes with the same digest give every mark
    /// value the same meaning (gateway, reply or route, table).
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMapGateway {
    pub name: String,
    pub id: u32,
    /// `config` (`id = N`) or `name` (derived from the name).
    pub id_from: IdFrom,
    pub table: u32,
    /// The reply_via decision's value, when a policy answers via this gateway.
    pub reply_mark: Option<String>,
    /// The route_via decision's value, when a policy routes via this gateway.
    pub route_mark: Option<String>,
    /// Where its decisions send packets: interface and next hop (as the plan knows it:
    /// `via = "auto"` once learned). Not in the digest: the same path may have other
    /// interface names on two boxes.
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMapDivert {
    pub mark: String,
    pub table: u32,
}

impl MarkMap {
    pub fn of(model: &Model, plan: &Plan) -> MarkMap {
        let mut gateways: Vec<MarkMapGateway> = model
            .gateways
            .iter()
            .zip(&plan.gateways)
            .map(|(g, p): (_, &GatewayPlan)| MarkMapGateway {
                name: g.name.to_string(),
                id: g.id.get(),
                id_from: g.id_from,
                table: p.table.id(),
                reply_mark: p.reply_mark.map(|m| m.to_string()),
                route_mark: p.route_mark.map(|m| m.to_string()),
                interface: g.interface.to_string(),
                via: p.via.map(|v| v.to_string()),
            })
            .collect();
        gateways.sort_by_key(|g| g.id);
        let mut map = MarkMap {
            mask: plan.mark_mask.to_string(),
            gateways,
            divert: plan.divert.map(|(mark, table)| MarkMapDivert {
                mark: mark.to_string(),
                table: table.id(),
            }),
            digest: String::new(),
        };
        map.digest = super::nft::fingerprint(&map.canonical());
        map
    }

    /// The text the digest is taken of: mask, then per gateway (by id) its name, id,
    /// table and marks in use, then the divert.
    pub fn canonical(&self) -> String {
        let mut s = format!("mask {}\n", self.mask);
        for g in &self.gateways {
            s += &format!(
                "gateway {} id {} table {} reply {} route {}\n",
                g.name,
                g.id,
                g.table,
                g.reply_mark.as_deref().unwrap_or("-"),
                g.route_mark.as_deref().unwrap_or("-")
            );
        }
        if let Some(d) = &self.divert {
            s += &format!("divert {} table {}\n", d.mark, d.table);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::plan::{build, HostView};

    const A: &str = "[[gateway]]\nname=\"isp1\"\ninterface=\"up1\"\nvia=\"192.0.2.1\"\n";
    const B: &str = "[[gateway]]\nname=\"isp2\"\ninterface=\"up2\"\nvia=\"198.51.100.1\"\n";
    const P: &str =
        "[[policy]]\nname=\"r\"\nreply_via=\"isp1\"\n[policy.match]\nin_interface=\"up1\"\n";

    fn map(text: &str) -> MarkMap {
        let m = parse_str(text, "t.toml").unwrap();
        MarkMap::of(&m, &build(&m, &HostView::default()))
    }

    #[test]
    fn the_digest_follows_meanings_not_the_file_order() {
        let one = map(&format!("{A}{B}{P}"));
        assert_eq!(map(&format!("{B}{P}{A}")), one);
        assert_eq!(
            one.canonical(),
            "mask 0xff000000\n\
             gateway isp1 id 26 table 42025 reply 0x33000000 route -\n\
             gateway isp2 id 123 table 42122 reply - route -\n"
        );
        // Another interface name for the same gateway: same meanings, same digest.
        let renamed = map(&format!("{}{B}{P}", A.replace("up1", "eth1")));
        assert_eq!(renamed.digest, one.digest);
        // Another id, or a mark used on one box only: another digest.
        assert_ne!(map(&format!("{A}id = 3\n{B}{P}")).digest, one.digest);
        assert_ne!(map(&format!("{A}{B}")).digest, one.digest);
        assert_eq!(one.gateways[0].id_from, IdFrom::Name);
        assert_eq!(one.gateways[0].via.as_deref(), Some("192.0.2.1"));
    }
}
