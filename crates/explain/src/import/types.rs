//! What the config will hold, and what the routing side is found to be.

use super::*;

// ---------------------------------------------------------------------------------------
// What the config will hold

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ActionKind {
    Reply,
    Route,
}

/// A policy's match, as the config spells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Sel {
    pub(super) in_interface: Vec<String>,
    pub(super) source_mac: Vec<String>,
    pub(super) source: Vec<IpNet>,
    pub(super) not_source: Vec<IpNet>,
    pub(super) destination: Vec<IpNet>,
    pub(super) not_destination: Vec<IpNet>,
    pub(super) protocol: Vec<String>,
    pub(super) source_port: Vec<(u16, u16)>,
    pub(super) destination_port: Vec<(u16, u16)>,
}

impl Sel {
    pub(super) fn is_empty(&self) -> bool {
        *self == Sel::default()
    }
}

#[derive(Debug, Clone)]
pub(super) struct GatewayOut {
    pub(super) name: String,
    pub(super) interface: String,
    pub(super) via: Option<Ipv4Addr>,
    pub(super) via6: Option<Ipv6Addr>,
    /// Indexes into `routing.rules` of the fwmark rules that look up its tables.
    pub(super) rules: Vec<usize>,
    /// Tables (family, id) it stands for.
    pub(super) tables: Vec<(Family, u32)>,
    pub(super) notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct PolicyOut {
    pub(super) action: ActionKind,
    pub(super) gateway: usize,
    pub(super) sel: Sel,
    pub(super) families: BTreeSet<Family>,
    pub(super) hooks: BTreeSet<Hook>,
    pub(super) notes: Vec<String>,
    /// The set rule ended its chain (first match wins among such rules).
    pub(super) terminal: bool,
    pub(super) seq: usize,
}

#[derive(Debug, Clone, Default)]
pub(super) struct DivertOut {
    /// Some rule had no protocol condition: every protocol (the config's default).
    pub(super) any_protocol: bool,
    pub(super) protocols: BTreeSet<String>,
    pub(super) notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Routing side

#[derive(Debug, Clone)]
pub(super) enum TableKind {
    Gateway {
        dev: String,
        via: Option<IpAddr>,
        /// The default route and the connected ones (kept by symroute's gateway table).
        routes: Vec<usize>,
        /// Routes beyond those.
        extra: Vec<usize>,
    },
    Divert {
        routes: Vec<usize>,
        extra: Vec<usize>,
    },
    Other(String),
}

#[derive(Debug, Clone)]
pub(super) enum Target {
    Gateway(usize),
    Divert,
    Other(String),
}

#[derive(Debug, Clone)]
pub(super) struct MarkRule {
    pub(super) idx: usize,
    pub(super) family: Family,
    pub(super) value: u32,
    pub(super) mask: u32,
    pub(super) table: u32,
    pub(super) target: Target,
}
