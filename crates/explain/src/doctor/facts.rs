//! What the checks read: every firewall rule with the hooks (and the jumps) that reach
//! it, what it does to the packet and connection marks bit by bit, which known tool owns
//! it; the same ownership for `ip rule`s.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::host::HostState;
pub use crate::marks::Write;
use crate::netfilter::{
    Chain, ChainKind, CtState, Hook, MarkKey, Match, NfFamily, Op, Origin, Rule, Verdict,
};
use crate::routing::{
    RouteEntry, RouteKind, RuleAction, RuleEntry, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN,
};
use symroute_core::model::Family;

/// Programs whose rules, chains, tables, marks and priorities doctor recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    Symroute,
    WgQuick,
    Tailscale,
    KubeProxy,
    Calico,
    Docker,
    Firewalld,
}

impl Tool {
    pub const ALL: [Tool; 7] = [
        Tool::Symroute,
        Tool::WgQuick,
        Tool::Tailscale,
        Tool::KubeProxy,
        Tool::Calico,
        Tool::Docker,
        Tool::Firewalld,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Symroute => "symroute",
            Tool::WgQuick => "wg-quick",
            Tool::Tailscale => "Tailscale",
            Tool::KubeProxy => "kube-proxy",
            Tool::Calico => "Calico",
            Tool::Docker => "Docker",
            Tool::Firewalld => "firewalld",
        }
    }

    /// Mark bits the tool uses by default, whether or not it runs here (wg-quick's is a
    /// whole value, 0xca6c, handled apart).
    pub fn reserved_bits(self) -> u32 {
        match self {
            Tool::Symroute => 0xff00_0000,
            Tool::Tailscale => 0x00ff_0000,
            Tool::KubeProxy => 0x0000_c000,
            Tool::Calico => 0xffff_0000,
            Tool::WgQuick | Tool::Docker | Tool::Firewalld => 0,
        }
    }

    /// How the tool uses its bits, for messages.
    pub fn bits_note(self) -> &'static str {
        match self {
            Tool::Symroute => "symroute's default mark_mask 0xff000000",
            Tool::WgQuick => "wg-quick's fwmark 0xca6c (51820) on its own encrypted packets",
            Tool::Tailscale => {
                "Tailscale's bits 0x00ff0000 (0x40000 bypass, 0x80000 subnet-routed)"
            }
            Tool::KubeProxy => "kube-proxy's 0x4000 (masquerade) and 0x8000 (drop)",
            Tool::Calico => "Calico's default mark mask 0xffff0000",
            Tool::Docker => "Docker's marks",
            Tool::Firewalld => "firewalld's mark rules",
        }
    }
}

/// wg-quick's mark (and table): 51820.
pub const WG_MARK: u32 = 0xca6c;
pub const WG_TABLE: u32 = 51820;
pub const TS_TABLE: u32 = 52;
pub const TS_PRIORITIES: std::ops::RangeInclusive<u32> = 5210..=5270;

/// One way a rule is reached: from a base chain on `hook` (of type `kind`), through jumps
/// whose conditions are `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub hook: Hook,
    pub kind: ChainKind,
    pub path: Vec<Match>,
}

impl Reach {
    /// The packet's route is still to be chosen (prerouting, ingress, or an output chain
    /// that re-routes when the mark changes: iptables' mangle OUTPUT, nft `type route`).
    pub fn before_routing(&self) -> bool {
        match self.hook {
            Hook::Prerouting | Hook::Ingress => true,
            Hook::Output => self.kind == ChainKind::Route,
            _ => false,
        }
    }
}

/// A firewall rule in context.
#[derive(Debug)]
pub struct FwRule<'a> {
    pub chain: &'a Chain,
    /// 1-based position in its chain (iptables' rule number).
    pub pos: usize,
    pub rule: &'a Rule,
    /// Every way it is reached (empty: its chain is never jumped to).
    pub reach: Vec<Reach>,
    pub tool: Option<Tool>,
    pub writes: Vec<Write>,
    /// An assignment to a mark the model could not read (all bits may change).
    pub opaque_mark: bool,
}

impl<'a> FwRule<'a> {
    pub fn covers(&self, fam: Family) -> bool {
        self.chain.family.covers(fam) || self.chain.family == NfFamily::Netdev
    }

    pub fn hand(&self) -> bool {
        self.tool.is_none()
    }

    pub fn place(&self) -> String {
        self.rule.origin.to_string()
    }

    pub fn meta_writes(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter().filter(|w| w.key == MarkKey::Meta)
    }

    pub fn ct_writes(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter().filter(|w| w.key == MarkKey::Ct)
    }

    /// All conditions on one path: the jumps' and the rule's own.
    pub fn conditions<'b>(&'b self, r: &'b Reach) -> impl Iterator<Item = &'b Match> {
        r.path.iter().chain(self.rule.matches.iter())
    }

    /// Every reaching path has a condition satisfying `f`.
    pub fn always<F: Fn(&Match) -> bool>(&self, f: F) -> bool {
        !self.reach.is_empty() && self.reach.iter().all(|r| self.conditions(r).any(&f))
    }

    /// Some reaching path has a condition satisfying `f`.
    pub fn sometimes<F: Fn(&Match) -> bool>(&self, f: F) -> bool {
        self.reach.iter().any(|r| self.conditions(r).any(&f))
    }

    /// Selects particular packets (has any condition at all).
    pub fn selective(&self) -> bool {
        self.reach
            .iter()
            .any(|r| self.conditions(r).next().is_some())
    }

    /// Exact (`==`) input interface names on any path (no wildcards).
    pub fn in_interfaces(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in &self.reach {
            for m in self.conditions(r) {
                if let Match::Iifname { op: Op::Eq, names } = m {
                    out.extend(names.iter().filter(|n| !n.ends_with('*')).cloned());
                }
            }
        }
        out
    }

    /// Only a connection's first packet can match (`ct state new`, `--syn`).
    pub fn first_packet_only(&self) -> bool {
        self.always(|m| match m {
            Match::CtState { op: Op::Eq, states } => states.iter().all(|s| *s == CtState::New),
            Match::Unknown(s) => s.contains("--syn") || s.contains("--tcp-flags"),
            _ => false,
        })
    }

    /// Every path runs after the routing decision.
    pub fn late(&self) -> bool {
        !self.reach.is_empty() && self.reach.iter().all(|r| !r.before_routing())
    }

    pub fn is_iptables(&self) -> bool {
        matches!(self.rule.origin, Origin::Iptables { .. })
    }

    /// `iptables` / `ip6tables` for a rule read from a save output.
    pub fn iptables_tool(&self) -> &'static str {
        match &self.rule.origin {
            Origin::Iptables { tool, .. } if tool.starts_with("ip6") => "ip6tables",
            _ => "iptables",
        }
    }

    /// The rule's conditions as written (iptables: the words between `-A CHAIN` and
    /// `-j`; nft: the rendered matches). Empty when it has none.
    pub fn selector(&self) -> String {
        if self.is_iptables() {
            let t = self.rule.text.trim();
            let rest = t
                .strip_prefix("-A ")
                .and_then(|r| r.split_once(' ').map(|(_, rest)| rest))
                .unwrap_or("");
            let cut = [" -j ", " -g ", " --jump ", " --goto "]
                .iter()
                .filter_map(|p| rest.find(p))
                .min();
            let sel = if rest.starts_with("-j ") || rest.starts_with("-g ") {
                ""
            } else {
                match cut {
                    Some(i) => &rest[..i],
                    None => rest,
                }
            };
            sel.trim().to_string()
        } else {
            Rule::render(&self.rule.matches, &[], &Verdict::Continue)
        }
    }

    /// `iptables -t mangle` / `nft … table` prefix and chain for commands.
    pub fn table_words(&self) -> String {
        match &self.rule.origin {
            Origin::Iptables { table, .. } => format!("{} -t {table}", self.iptables_tool()),
            Origin::Nft { family, table, .. } => format!("{family} {table}"),
        }
    }
}

/// The state with the firewall laid out for the checks.
pub struct Ctx<'a> {
    pub host: &'a HostState,
    pub fw: Vec<FwRule<'a>>,
    /// Tools that run here (their chains, rules or interfaces exist).
    pub present: BTreeSet<Tool>,
}

const MAX_DEPTH: usize = 16;
const MAX_PATHS: usize = 32;

fn chain_tool(c: &Chain) -> Option<Tool> {
    let t = c.table.as_str();
    let n = c.name.as_str();
    if c.family == NfFamily::Inet && t == symroute_core::plan::nft::TABLE {
        return Some(Tool::Symroute);
    }
    if t == "firewalld" || t.starts_with("firewalld") {
        return Some(Tool::Firewalld);
    }
    let pre = |p: &str| n.starts_with(p) || t.starts_with(p);
    if pre("KUBE-") || pre("kube-proxy") {
        Some(Tool::KubeProxy)
    } else if pre("cali-") || pre("calico") {
        Some(Tool::Calico)
    } else if pre("ts-") || pre("tailscale") {
        Some(Tool::Tailscale)
    } else if pre("DOCKER") {
        Some(Tool::Docker)
    } else {
        None
    }
}

/// The tool an `ip rule` belongs to, recognised by its values.
pub fn rule_tool(r: &RuleEntry) -> Option<Tool> {
    if r.protocol.as_deref() == Some(&symroute_core::plan::RT_PROTO.to_string()) {
        return Some(Tool::Symroute);
    }
    if r.fwmark == Some((WG_MARK, u32::MAX)) || (r.not && r.action == RuleAction::Lookup(WG_TABLE))
    {
        return Some(Tool::WgQuick);
    }
    if TS_PRIORITIES.contains(&r.priority)
        && (r.action == RuleAction::Lookup(TS_TABLE) || r.fwmark == Some((0x80000, 0xff0000)))
    {
        return Some(Tool::Tailscale);
    }
    None
}

impl<'a> Ctx<'a> {
    pub fn new(host: &'a HostState) -> Ctx<'a> {
        let chains = &host.firewall.chains;
        let index: HashMap<(NfFamily, &str, &str), usize> = chains
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.family, c.table.as_str(), c.name.as_str()), i))
            .collect();
        let mut reach: Vec<Vec<Reach>> = vec![Vec::new(); chains.len()];
        fn walk(
            chains: &[Chain],
            index: &HashMap<(NfFamily, &str, &str), usize>,
            reach: &mut Vec<Vec<Reach>>,
            ci: usize,
            r: Reach,
            depth: usize,
        ) {
            if depth > MAX_DEPTH || reach[ci].len() >= MAX_PATHS || reach[ci].contains(&r) {
                return;
            }
            reach[ci].push(r.clone());
            let c = &chains[ci];
            for rule in &c.rules {
                let mut targets: Vec<(&str, Option<&Match>)> = Vec::new();
                match &rule.verdict {
                    Verdict::Jump(t) | Verdict::Goto(t) => targets.push((t, None)),
                    Verdict::Vmap(v) => {
                        for e in &v.entries {
                            if let Verdict::Jump(t) | Verdict::Goto(t) = &e.verdict {
                                targets.push((t, Some(&e.key)));
                            }
                        }
                    }
                    _ => {}
                }
                for (t, key) in targets {
                    if let Some(&ti) = index.get(&(c.family, c.table.as_str(), t)) {
                        let mut path = r.path.clone();
                        path.extend(rule.matches.iter().cloned());
                        path.extend(key.cloned());
                        walk(
                            chains,
                            index,
                            reach,
                            ti,
                            Reach {
                                hook: r.hook,
                                kind: r.kind,
                                path,
                            },
                            depth + 1,
                        );
                    }
                }
            }
        }
        for (ci, c) in chains.iter().enumerate() {
            if matches!(c.family, NfFamily::Arp | NfFamily::Bridge) {
                continue;
            }
            if let Some(b) = &c.base {
                walk(
                    chains,
                    &index,
                    &mut reach,
                    ci,
                    Reach {
                        hook: b.hook,
                        kind: b.kind,
                        path: Vec::new(),
                    },
                    0,
                );
            }
        }

        let mut fw = Vec::new();
        for (ci, c) in chains.iter().enumerate() {
            let ctool = chain_tool(c);
            for (i, rule) in c.rules.iter().enumerate() {
                let jumps_to_tool = match &rule.verdict {
                    Verdict::Jump(t) | Verdict::Goto(t) => chains
                        .iter()
                        .find(|x| x.family == c.family && x.table == c.table && &x.name == t)
                        .and_then(chain_tool),
                    _ => None,
                };
                let writes = crate::marks::writes(rule);
                fw.push(FwRule {
                    chain: c,
                    pos: i + 1,
                    rule,
                    reach: reach[ci].clone(),
                    tool: ctool.or(jumps_to_tool),
                    writes,
                    opaque_mark: rule.stmts.iter().any(crate::marks::opaque),
                });
            }
        }

        let mut present: BTreeSet<Tool> = BTreeSet::new();
        present.extend(chains.iter().filter_map(chain_tool));
        present.extend(host.routing.rules.iter().filter_map(rule_tool));
        for name in host.routing.links.keys().chain(host.macs.keys()) {
            if name.starts_with("tailscale") {
                present.insert(Tool::Tailscale);
            } else if name == "docker0" {
                present.insert(Tool::Docker);
            } else if name == "kube-ipvs0" {
                present.insert(Tool::KubeProxy);
            } else if name.starts_with("cali") && name.len() > 4 {
                present.insert(Tool::Calico);
            }
        }
        Ctx { host, fw, present }
    }

    /// Hand-made `ip rule`s of `fam` that need mark bits set to match:
    /// `fwmark V/M` with V & M ≠ 0, not inverted.
    pub fn mark_rules(&self, fam: Family) -> Vec<&'a RuleEntry> {
        self.host
            .routing
            .rules_of(fam)
            .filter(|r| !r.not && rule_tool(r).is_none())
            .filter(|r| matches!(r.fwmark, Some((v, m)) if v & m != 0))
            .collect()
    }

    /// Every `ip rule` of `fam` with an fwmark selector (tools' included).
    pub fn all_fwmark_rules(&self, fam: Family) -> Vec<&'a RuleEntry> {
        self.host
            .routing
            .rules_of(fam)
            .filter(|r| r.fwmark.is_some())
            .collect()
    }

    /// Firewall rules that run for packets of `fam`.
    pub fn fw_of(&self, fam: Family) -> impl Iterator<Item = &FwRule<'a>> {
        self.fw
            .iter()
            .filter(move |r| r.covers(fam) && !r.reach.is_empty())
    }

    /// Packet-mark bits that can be 1 when routing sees a packet of `fam`: constants
    /// assigned to either mark, carried over by save/restore, or anything an unreadable
    /// assignment may do.
    pub fn producible(&self, fam: Family) -> u32 {
        let (mut meta, mut ct, mut restores, mut saves) = (0u32, 0u32, 0u32, 0u32);
        for r in self.fw_of(fam) {
            if r.opaque_mark {
                meta = u32::MAX;
                ct = u32::MAX;
            }
            for w in &r.writes {
                match w.key {
                    MarkKey::Meta => {
                        meta |= w.const_val | w.fuzzy;
                        restores |= w.copy_bits;
                    }
                    MarkKey::Ct => {
                        ct |= w.const_val | w.fuzzy;
                        saves |= w.copy_bits;
                    }
                }
            }
        }
        loop {
            let m = meta | (restores & ct);
            let c = ct | (saves & m);
            if m == meta && c == ct {
                return meta;
            }
            meta = m;
            ct = c;
        }
    }

    /// Packet-mark bits that can be 1 when routing sees a packet of `fam` because of what
    /// runs before routing: constants set (and connection marks restored) in prerouting or
    /// a re-routing output chain. The connection's mark may be saved anywhere: it is there
    /// for the next packet's restore.
    pub fn producible_before_routing(&self, fam: Family) -> u32 {
        let (mut early, mut restores, mut ct, mut saves) = (0u32, 0u32, 0u32, 0u32);
        for r in self.fw_of(fam) {
            let before = r.reach.iter().any(|x| x.before_routing());
            if r.opaque_mark {
                ct = u32::MAX;
                if before {
                    early = u32::MAX;
                }
            }
            for w in &r.writes {
                match w.key {
                    MarkKey::Meta if before => {
                        early |= w.const_val | w.fuzzy;
                        restores |= w.copy_bits;
                    }
                    MarkKey::Meta => {}
                    MarkKey::Ct => {
                        ct |= w.const_val | w.fuzzy;
                        saves |= w.copy_bits;
                    }
                }
            }
        }
        early | (restores & (ct | (saves & self.producible(fam))))
    }

    /// Routes of table `t` (`fam`).
    pub fn table(&self, fam: Family, t: u32) -> Vec<&'a RouteEntry> {
        self.host.routing.routes_of(fam, t).collect()
    }

    /// The devices a table's routes leave through (reject routes have none).
    pub fn table_devs(&self, fam: Family, t: u32) -> BTreeSet<String> {
        self.table(fam, t)
            .iter()
            .filter(|r| !r.kind.is_reject())
            .flat_map(|r| r.nexthops.iter().filter_map(|n| n.dev.clone()))
            .collect()
    }

    /// The devices a table's default routes leave through (where its gateway is).
    pub fn table_default_devs(&self, fam: Family, t: u32) -> BTreeSet<String> {
        self.table(fam, t)
            .iter()
            .filter(|r| !r.kind.is_reject() && r.dst.prefix_len() == 0)
            .flat_map(|r| r.nexthops.iter().filter_map(|n| n.dev.clone()))
            .collect()
    }

    /// A table whose routes only deliver locally (`local default dev lo`): a divert.
    pub fn table_is_local(&self, fam: Family, t: u32) -> bool {
        let routes = self.table(fam, t);
        !routes.is_empty() && routes.iter().all(|r| r.kind == RouteKind::Local)
    }

    /// The interface whose address `a` is, if any.
    pub fn iface_of(&self, a: IpAddr) -> Option<&'a str> {
        self.host
            .routing
            .links
            .iter()
            .find(|(_, l)| l.addrs.iter().any(|n| n.addr() == a))
            .map(|(n, _)| n.as_str())
    }

    /// Every local address with its interface.
    pub fn local_addrs(&self) -> Vec<(&'a str, IpNet)> {
        self.host
            .routing
            .links
            .iter()
            .flat_map(|(n, l)| l.addrs.iter().map(move |a| (n.as_str(), *a)))
            .collect()
    }

    pub fn is_plain_table(t: u32) -> bool {
        !matches!(t, TABLE_MAIN | TABLE_LOCAL | TABLE_DEFAULT | 0)
    }
}

/// Where a rule is: `ip [-6] rule (line N)` (no line for rules built by hand or from a
/// plan).
pub fn rule_place(r: &RuleEntry) -> String {
    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
    if r.line > 0 {
        format!("ip {six}rule (line {})", r.line)
    } else {
        format!("ip {six}rule")
    }
}

/// `ip [-6] rule VERB pref N <selectors and action>` from a printed rule.
pub fn ip_rule_cmd(r: &RuleEntry, verb: &str) -> String {
    let rest = r
        .text
        .split_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or(&r.text)
        .replace(" [detached]", "")
        .replace(" [unresolved]", "");
    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
    format!("ip {six}rule {verb} pref {} {}", r.priority, rest.trim())
}

/// `ip [-6] route VERB <route>` (with `table N` kept as printed).
pub fn ip_route_cmd(r: &RouteEntry, verb: &str) -> String {
    let six = if r.family == Family::Inet6 { "-6 " } else { "" };
    let mut text = r.text.trim().to_string();
    if r.table != TABLE_MAIN && !text.contains(" table ") {
        text.push_str(&format!(" table {}", r.table));
    }
    format!("ip {six}route {verb} {text}")
}

pub fn hex(v: u32) -> String {
    format!("{v:#x}")
}

/// `V` or `V/M` the way `ip rule` prints it.
pub fn value_mask(v: u32, m: u32) -> String {
    if m == u32::MAX {
        hex(v)
    } else {
        format!("{v:#x}/{m:#x}")
    }
}
