//! The kernel objects a plan asks for, as plain values: `ip rule`s and routes. Each knows
//! its `ip` spelling, so `plan --script`, `apply` and the tests share one rendering.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{Family, Mark, MarkMask, Priority, TableId};

/// The `protocol` tag on every rule and route symroute owns (iproute2 shows the number;
/// it is unclaimed in iproute2's rt_protos list). Nothing without it is ever touched.
pub const RT_PROTO: u8 = 157;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Lookup(TableId),
    /// Jump to the rule at this priority (skips the rules in between).
    Goto(Priority),
    /// Nothing: the end of symroute's rules, for a `goto` to land on after all of them
    /// (and before any foreign rule that follows).
    Nop,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleSpec {
    pub priority: Priority,
    pub family: Family,
    /// `from PREFIX`: packets with a source inside (a gateway's own addresses, as /32 or
    /// /128). `None` matches every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IpNet>,
    /// `iif lo`: only packets this host generates (their route lookups, and the reverse
    /// lookup of rp_filter for local delivery, carry iif lo); forwarded ones skip it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iif_lo: bool,
    /// `fwmark VALUE/MASK`; `None` matches every packet.
    pub fwmark: Option<(u32, u32)>,
    pub action: RuleAction,
    /// `suppress_prefixlength N`: ignore routes this short (0: the default route).
    pub suppress_prefixlength: Option<u8>,
}

impl RuleSpec {
    pub fn fwmark(
        priority: Priority,
        family: Family,
        mark: Mark,
        mask: MarkMask,
        table: TableId,
    ) -> Self {
        Self {
            priority,
            family,
            from: None,
            iif_lo: false,
            fwmark: Some((mark.bits(), mask.bits())),
            action: RuleAction::Lookup(table),
            suppress_prefixlength: None,
        }
    }

    /// `from ADDRESS lookup TABLE`: what this host sends from `addr` uses `table`.
    pub fn from_addr(priority: Priority, addr: std::net::IpAddr, table: TableId) -> Self {
        Self {
            priority,
            family: Family::of(&addr),
            from: Some(IpNet::from(addr)),
            iif_lo: false,
            fwmark: None,
            action: RuleAction::Lookup(table),
            suppress_prefixlength: None,
        }
    }

    /// `ip` arguments after `ip -4 rule add|del`.
    pub fn ip_args(&self) -> String {
        let from = self.from.map(|n| format!(" from {n}")).unwrap_or_default();
        format!(
            "pref {}{from} {} protocol {RT_PROTO}",
            self.priority,
            self.selectors_and_action()
        )
    }

    /// The rule as `ip rule show` prints it: `PRIO:<tab>from … lookup … proto 157`.
    pub fn show_text(&self) -> String {
        let from = match self.from {
            Some(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
            Some(n) => n.to_string(),
            None => "all".into(),
        };
        format!(
            "{}:\tfrom {from} {} proto {RT_PROTO}",
            self.priority,
            self.selectors_and_action()
        )
    }

    /// Everything after `from`, in the order `ip` prints it.
    fn selectors_and_action(&self) -> String {
        let mut parts = Vec::new();
        if let Some((v, m)) = self.fwmark {
            parts.push(format!("fwmark {v:#x}/{m:#x}"));
        }
        if self.iif_lo {
            parts.push("iif lo".into());
        }
        match self.action {
            RuleAction::Lookup(t) => parts.push(format!("lookup {t}")),
            RuleAction::Goto(p) => parts.push(format!("goto {p}")),
            RuleAction::Nop => parts.push("nop".into()),
        }
        if let Some(n) = self.suppress_prefixlength {
            parts.push(format!("suppress_prefixlength {n}"));
        }
        parts.join(" ")
    }

    /// The same, one word per argument (a rule holds only numbers and keywords).
    pub fn ip_words(&self) -> Vec<String> {
        self.ip_args().split(' ').map(str::to_string).collect()
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip {} rule {}", self.family.ip_flag(), self.ip_args())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Unicast,
    /// Deliver locally (the divert table's `local default dev lo`).
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub table: TableId,
    pub family: Family,
    pub kind: RouteKind,
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: String,
}

impl RouteSpec {
    /// `ip` arguments after `ip -4 route add|del`.
    pub fn ip_args(&self) -> String {
        self.ip_words().join(" ")
    }

    /// The same, one word per argument: `dev` may be a name read from the host, which
    /// `plan --script` must quote (see `diff::Changes::script`).
    pub fn ip_words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.kind == RouteKind::Local {
            w.push("local".to_string());
        }
        w.push(self.dst.to_string());
        if let Some(v) = self.via {
            w.extend(["via".to_string(), v.to_string()]);
        }
        w.extend(["dev".to_string(), self.dev.clone()]);
        w.extend(["table".to_string(), self.table.id().to_string()]);
        w.extend(["proto".to_string(), RT_PROTO.to_string()]);
        w
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip {} route {}", self.family.ip_flag(), self.ip_args())
    }
}
