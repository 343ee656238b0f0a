//! The routing state the engine works on: `ip rule` entries, routes, links and the
//! sysctls that change routing decisions. Plain values, built by the parsers in
//! [`super::parse`] or by hand in tests.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use symroute_core::model::Family;

// The reserved tables' numbers live with the names that spell them.
pub use super::names::{TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN};

/// A line that could not be understood. `line` is 1-based within the text given to the
/// parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A parse error in one of the inputs of [`RoutingState::from_texts`], naming the input
/// (e.g. `ip -6 route show table all`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateError {
    pub input: String,
    pub error: ParseError,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.input, self.error)
    }
}

impl std::error::Error for StateError {}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// `lookup TABLE`: a miss (or `throw`) continues with the next rule.
    Lookup(u32),
    /// `goto PRIORITY`: continue at the first rule with exactly that priority.
    Goto(u32),
    Blackhole,
    Unreachable,
    Prohibit,
    Nop,
    /// `lookup [l3mdev-table]` (VRF): the table comes from the VRF device. Not modelled:
    /// such rules match only flows bound to a VRF, which the engine never produces.
    L3mdevTable,
}

/// One line of `ip rule` / `ip -6 rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleEntry {
    pub family: Family,
    pub priority: u32,
    /// `not`: the selectors' result is inverted (the whole match, iif/oif/fwmark included).
    pub not: bool,
    /// `from PREFIX`; `from all` is `None`.
    pub from: Option<IpNet>,
    /// `to PREFIX`; absent is `None`.
    pub to: Option<IpNet>,
    pub iif: Option<String>,
    /// `iif NAME [detached]`: no such interface exists, the rule never matches (until one
    /// with that name appears).
    pub iif_detached: bool,
    pub oif: Option<String>,
    pub oif_detached: bool,
    /// `fwmark VALUE[/MASK]` as (value, mask); a missing mask is 0xffffffff.
    pub fwmark: Option<(u32, u32)>,
    pub ipproto: Option<u8>,
    /// Inclusive port ranges.
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    /// `tos`/`dsfield` value as printed (IPv4 compares it with the packet's TOS & 0x1c).
    pub tos: Option<u8>,
    pub action: RuleAction,
    /// `goto N [unresolved]`: no rule with priority N exists, the rule is skipped.
    pub unresolved: bool,
    pub suppress_prefixlength: Option<u8>,
    pub suppress_ifgroup: Option<u32>,
    /// `proto X` (who made the rule); informational.
    pub protocol: Option<String>,
    /// Selectors present on the rule that the engine does not model (`uidrange`,
    /// `tun_id`, `l3mdev`, port masks, `dscp`, `flowlabel`, …). A rule with any of them is
    /// assumed not to match, and the step says so.
    pub unmodeled: Vec<String>,
    /// 1-based line in the parsed text (0 when built by hand).
    pub line: usize,
    /// The line as printed, for quoting.
    pub text: String,
}

impl RuleEntry {
    /// `from all lookup TABLE` at `priority`: handy for tests and hand-built states.
    pub fn lookup(family: Family, priority: u32, table: u32) -> Self {
        RuleEntry {
            family,
            priority,
            not: false,
            from: None,
            to: None,
            iif: None,
            iif_detached: false,
            oif: None,
            oif_detached: false,
            fwmark: None,
            ipproto: None,
            sport: None,
            dport: None,
            tos: None,
            action: RuleAction::Lookup(table),
            unresolved: false,
            suppress_prefixlength: None,
            suppress_ifgroup: None,
            protocol: None,
            unmodeled: Vec::new(),
            line: 0,
            text: format!("{priority}:\tfrom all lookup {}", table_name(table)),
        }
    }

    /// True for the three rules every namespace starts with (`0: lookup local`,
    /// `32766: lookup main`, `32767: lookup default`), with no selectors.
    pub fn is_default(&self) -> bool {
        self.selects_all()
            && matches!(
                (self.priority, self.action),
                (0, RuleAction::Lookup(TABLE_LOCAL))
                    | (32766, RuleAction::Lookup(TABLE_MAIN))
                    | (32767, RuleAction::Lookup(TABLE_DEFAULT))
            )
    }

    /// No selector at all (`from all`, no `suppress_*`): every packet reaching it matches.
    pub fn selects_all(&self) -> bool {
        !self.not
            && self.from.is_none()
            && self.to.is_none()
            && self.iif.is_none()
            && self.oif.is_none()
            && self.fwmark.is_none()
            && self.ipproto.is_none()
            && self.sport.is_none()
            && self.dport.is_none()
            && self.tos.is_none()
            && self.suppress_prefixlength.is_none()
            && self.suppress_ifgroup.is_none()
            && self.unmodeled.is_empty()
    }
}

/// A route's type (the first word `ip route` prints; none means unicast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    /// Ends the lookup in this table as if nothing matched: the next rule is tried.
    Throw,
    /// `nat`, `xresolve`, `unspec`: obsolete or internal types, kept for quoting. They
    /// never match a lookup in this model.
    Other,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unicast => "unicast",
            Self::Local => "local",
            Self::Broadcast => "broadcast",
            Self::Anycast => "anycast",
            Self::Multicast => "multicast",
            Self::Blackhole => "blackhole",
            Self::Unreachable => "unreachable",
            Self::Prohibit => "prohibit",
            Self::Throw => "throw",
            Self::Other => "other",
        }
    }
    /// Types whose lookup result is an error rather than a next hop.
    pub fn is_reject(self) -> bool {
        matches!(
            self,
            Self::Blackhole | Self::Unreachable | Self::Prohibit | Self::Throw
        )
    }
}

/// One next hop of a route (a single-path route has exactly one, reject routes none on
/// IPv4 and `dev lo` on IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextHop {
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    /// Multipath weight (1 when not printed).
    pub weight: u32,
    /// `dead`: the device is down; the kernel never uses this next hop.
    pub dead: bool,
    /// `linkdown`: the device has no carrier. Still used unless
    /// `ignore_routes_with_linkdown` is set (IPv4: on `all` or the device; IPv6: the device).
    pub linkdown: bool,
    pub onlink: bool,
}

impl NextHop {
    pub fn dev(dev: &str) -> Self {
        NextHop {
            via: None,
            dev: Some(dev.to_string()),
            weight: 1,
            dead: false,
            linkdown: false,
            onlink: false,
        }
    }
}

/// One route of `ip route show table all` / `ip -6 route show table all` (a multipath
/// route with its `nexthop` lines is one entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteEntry {
    pub family: Family,
    pub table: u32,
    pub kind: RouteKind,
    /// Destination prefix; `default` is 0.0.0.0/0 or ::/0.
    pub dst: IpNet,
    /// IPv6 source-specific routes (`from PREFIX`); matched against the packet's source.
    pub src: Option<IpNet>,
    /// `tos` (0 = any).
    pub tos: u8,
    /// `metric` (IPv4 default 0, IPv6 default 1024).
    pub metric: u32,
    pub nexthops: Vec<NextHop>,
    /// `src ADDR`: the source address locally generated packets get.
    pub prefsrc: Option<IpAddr>,
    pub scope: Option<String>,
    pub protocol: Option<String>,
    /// IPv6 router preference (`pref low|medium|high`); only RA routes differ.
    pub pref: Option<String>,
    /// `nhid N`: the route uses a nexthop object; the printed via/dev are used.
    pub nhid: Option<u32>,
    pub line: usize,
    pub text: String,
}

/// An interface as `ip -j addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub index: u32,
    /// Administratively up (`UP` flag). Routes through a down interface are gone or
    /// `dead`.
    pub up: bool,
    /// Carrier (`LOWER_UP`): without it routes are `linkdown`.
    pub carrier: bool,
    /// Interface group (`suppress_ifgroup`); `default` is 0.
    pub group: u32,
    /// Configured addresses (`local/prefixlen`), both families.
    pub addrs: Vec<IpNet>,
}

impl LinkState {
    /// An up interface with carrier and these addresses.
    pub fn up(index: u32, addrs: &[&str]) -> Self {
        LinkState {
            index,
            up: true,
            carrier: true,
            group: 0,
            addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
        }
    }
}

/// Everything the routing decision depends on.
///
/// `sysctls` holds dotted keys (`net.ipv4.conf.eth0.rp_filter`, `net.ipv6.conf.all.forwarding`;
/// an interface named `eth0.100` keeps its dot). A missing key means the kernel default
/// of a fresh namespace: 0 everywhere except `send_redirects` (1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutingState {
    /// IPv4 rules, then IPv6 rules, each in priority order (ties keep the printed order,
    /// which is the kernel's).
    pub rules: Vec<RuleEntry>,
    /// Routes of both families, in printed order.
    pub routes: Vec<RouteEntry>,
    pub links: BTreeMap<String, LinkState>,
    pub sysctls: BTreeMap<String, String>,
    /// The host's routing table names (its `rt_tables` files), for output and for naming
    /// what import makes; the rules and routes above hold numbers.
    pub table_names: super::names::TableNames,
}

impl RoutingState {
    pub fn rules_of(&self, family: Family) -> impl Iterator<Item = &RuleEntry> {
        self.rules.iter().filter(move |r| r.family == family)
    }

    pub fn routes_of(&self, family: Family, table: u32) -> impl Iterator<Item = &RouteEntry> {
        self.routes
            .iter()
            .filter(move |r| r.family == family && r.table == table)
    }

    /// A sysctl as an integer (`None` when absent or not a number).
    pub fn sysctl_int(&self, key: &str) -> Option<i64> {
        self.sysctls.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// Puts rules in the order the kernel keeps them: family, then priority (stable).
    pub fn sort_rules(&mut self) {
        self.rules.sort_by_key(|r| (r.family, r.priority));
    }
}

/// `main`, `local`, `default` or the number.
pub fn table_name(id: u32) -> String {
    match id {
        TABLE_MAIN => "main".into(),
        TABLE_LOCAL => "local".into(),
        TABLE_DEFAULT => "default".into(),
        n => n.to_string(),
    }
}
