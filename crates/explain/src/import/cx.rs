//! The import's working state, shared by the passes in the sibling files.

use super::*;

pub(super) struct Cx<'h> {
    pub(super) host: &'h HostState,
    pub(super) gateways: Vec<GatewayOut>,
    /// (family, table) → what it is.
    pub(super) tables: BTreeMap<(Family, u32), TableKind>,
    pub(super) mark_rules: Vec<MarkRule>,
    pub(super) policies: Vec<PolicyOut>,
    /// Shares of new connections (from a multipath default), after the policies.
    pub(super) shares: Vec<ShareOut>,
    pub(super) divert: Option<DivertOut>,
    /// Per ip rule index: consumed by the config.
    pub(super) rules_done: BTreeSet<usize>,
    /// Per ip rule index: why it is not expressed.
    pub(super) rules_why: BTreeMap<usize, String>,
    pub(super) routes_done: BTreeSet<usize>,
    pub(super) routes_why: BTreeMap<usize, String>,
    /// Firewall rules (by address) consumed, and not expressed.
    pub(super) fw_done: BTreeSet<usize>,
    pub(super) fw_why: BTreeMap<usize, (String, Option<String>)>,
    /// Bits of what stays on the host, and who uses them.
    pub(super) kept_bits: u32,
    pub(super) kept_bits_from: Vec<(String, u32)>,
    /// Mark assignments that could not be expressed: (value, families, quoted rule).
    pub(super) kept_sets: Vec<(u32, BTreeSet<Family>, String)>,
    /// The mask the file ends up with.
    pub(super) mask: u32,
    /// Whole-mark copies that stay (restore/save), for the mask warning.
    pub(super) kept_copies: Vec<usize>,
    pub(super) ours_seen: bool,
    pub(super) notes: Vec<String>,
    /// Marks the expressed policies and divert replaced (value, mask of ip rule).
    pub(super) marks_replaced: BTreeSet<u32>,
    /// Gateways get `id = 1, 2, …` in file order: when their names' default ids collide,
    /// or the mask moves (ids from names would depend on the new mask's width).
    pub(super) explicit_ids: bool,
}

impl<'h> Cx<'h> {
    pub(super) fn new(host: &'h HostState) -> Self {
        Cx {
            host,
            gateways: Vec::new(),
            tables: BTreeMap::new(),
            mark_rules: Vec::new(),
            policies: Vec::new(),
            shares: Vec::new(),
            divert: None,
            rules_done: BTreeSet::new(),
            rules_why: BTreeMap::new(),
            routes_done: BTreeSet::new(),
            routes_why: BTreeMap::new(),
            fw_done: BTreeSet::new(),
            fw_why: BTreeMap::new(),
            kept_bits: 0,
            kept_bits_from: Vec::new(),
            kept_sets: Vec::new(),
            mask: DEFAULT_MASK,
            kept_copies: Vec::new(),
            ours_seen: false,
            notes: Vec::new(),
            marks_replaced: BTreeSet::new(),
            explicit_ids: false,
        }
    }

    pub(super) fn ours(protocol: &Option<String>) -> bool {
        protocol.as_deref() == Some(RT_PROTO.to_string().as_str())
    }

    /// `ip rule`s the config does not replace, which stay on the host beside it.
    pub(super) fn rules_left(&self) -> impl Iterator<Item = &'h RuleEntry> + '_ {
        let rules = self.host.routing.rules.iter().enumerate();
        rules
            .filter(|(i, _)| !self.rules_done.contains(i))
            .map(|(_, r)| r)
    }

    /// Routes the config does not replace, which stay on the host beside it.
    pub(super) fn routes_left(&self) -> impl Iterator<Item = &'h RouteEntry> + '_ {
        let routes = self.host.routing.routes.iter().enumerate();
        routes
            .filter(|(i, _)| !self.routes_done.contains(i))
            .map(|(_, r)| r)
    }
}
