//! `symroute import`: a `symroute.toml` for a host whose policy routing was made by hand,
//! as far as symroute can express it, with everything it cannot express quoted as written
//! and explained.
//!
//! What is recognised (from [`HostState`]: `ip rule`s, routes, and the firewall IR):
//! - **gateways**: a table looked up by `ip rule fwmark V[/M] lookup T` whose default
//!   route is `via X dev D` (or `dev D` on a point-to-point link) becomes a `[[gateway]]`
//!   named after the table (`rt_tables` name, or `table-T`); the IPv6 rule with the same
//!   fwmark gives `via6`.
//! - **the CONNMARK pattern** (restore the connection's mark, skip marked packets, set a
//!   mark under conditions, save it, restore it in OUTPUT too), in iptables or nft form:
//!   conditions that tie a connection to the gateway's side (its interface, a source MAC)
//!   become a `reply_via` policy; other conditions, and marks set in OUTPUT, a `route_via`
//!   policy. Marks set without saving them become `route_via` with a note (the original
//!   steered only the packets it marked).
//! - **divert** (`-m socket` / `socket transparent 1` setting a mark whose `ip rule`
//!   table holds `local default dev lo`) becomes `[[divert]]`.
//!
//! Everything else that sets or tests marks or selects routes (rules with other
//! selectors, foreign tools' objects, marks set after routing or to 0, conditions with no
//! match key) is listed in [`Imported::unexpressed`], and as comments at the top of the
//! file. symroute's own objects (`proto 157`, table `inet symroute`) are ignored.
//! `[settings]` stays at its defaults unless what the host keeps uses symroute's mark
//! bits, rule priorities or tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use super::host::HostState;
use super::netfilter::{
    AddrItem, Chain, CtDirection, CtState, Hook, MarkKey, Match, NfFamily, Op, Origin, Rule, Stmt,
    Verdict,
};
use super::routing::{RouteEntry, RouteKind, RuleAction, RuleEntry, TABLE_MAIN};
use crate::model::Family;
use crate::plan::RT_PROTO;

/// symroute's default mark mask (README: coexistence defaults).
const DEFAULT_MASK: u32 = 0xff00_0000;
const DEFAULT_FIRST_TABLE: u32 = 42000;
const DEFAULT_FIRST_PRIORITY: u32 = 3000;
/// Bits other tools are known to use (Tailscale, kube-proxy, wg-quick): avoided when the
/// default mask has to move.
const WELL_KNOWN_BITS: u32 = 0x00ff_0000 | 0x0000_c000 | 0x0000_ca6c;

/// The result: the config text, and what it could not express.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// A `symroute.toml`; the unexpressed items are `# ` comments at its top.
    pub toml: String,
    pub unexpressed: Vec<Unexpressed>,
}

/// One object the config does not express.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unexpressed {
    /// The rule or route, quoted as the tool printed it, prefixed with where it is
    /// (`iptables-save -t mangle: -A FORWARD …`, `ip rule: 32765: from all …`).
    pub what: String,
    pub why: String,
}

impl Imported {
    /// The unexpressed items as lines for stderr (`cannot express: WHAT` + `  why: WHY`).
    pub fn report(&self) -> String {
        let mut s = String::new();
        for u in &self.unexpressed {
            let _ = writeln!(s, "cannot express: {}\n  why: {}", u.what, u.why);
        }
        s
    }
}

/// Reads the host's hand-made policy routing and writes it as a symroute config.
pub fn import(host: &HostState) -> Imported {
    let mut cx = Cx::new(host);
    cx.routing();
    cx.firewall();
    cx.leftover_rules();
    cx.render()
}

// ---------------------------------------------------------------------------------------
// What the config will hold

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ActionKind {
    Reply,
    Route,
}

/// A policy's match, as the config spells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Sel {
    in_interface: Vec<String>,
    source_mac: Vec<String>,
    source: Vec<IpNet>,
    not_source: Vec<IpNet>,
    destination: Vec<IpNet>,
    not_destination: Vec<IpNet>,
    protocol: Vec<String>,
    source_port: Vec<(u16, u16)>,
    destination_port: Vec<(u16, u16)>,
}

impl Sel {
    fn is_empty(&self) -> bool {
        *self == Sel::default()
    }
}

#[derive(Debug, Clone)]
struct GatewayOut {
    name: String,
    interface: String,
    via: Option<Ipv4Addr>,
    via6: Option<Ipv6Addr>,
    /// Indexes into `routing.rules` of the fwmark rules that look up its tables.
    rules: Vec<usize>,
    /// Tables (family, id) it stands for.
    tables: Vec<(Family, u32)>,
    notes: Vec<String>,
}

#[derive(Debug, Clone)]
struct PolicyOut {
    action: ActionKind,
    gateway: usize,
    sel: Sel,
    families: BTreeSet<Family>,
    hooks: BTreeSet<Hook>,
    notes: Vec<String>,
    /// The set rule ended its chain (first match wins among such rules).
    terminal: bool,
    seq: usize,
}

#[derive(Debug, Clone, Default)]
struct DivertOut {
    /// Some rule had no protocol condition: every protocol (the config's default).
    any_protocol: bool,
    protocols: BTreeSet<String>,
    notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Routing side

#[derive(Debug, Clone)]
enum TableKind {
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
enum Target {
    Gateway(usize),
    Divert,
    Other(String),
}

#[derive(Debug, Clone)]
struct MarkRule {
    idx: usize,
    family: Family,
    value: u32,
    mask: u32,
    table: u32,
    target: Target,
}

// ---------------------------------------------------------------------------------------
// Firewall side: every rule as reached from a hook, with the conditions on the way.

#[derive(Debug, Clone)]
struct Visit<'a> {
    rule: &'a Rule,
    chain: &'a Chain,
    hook: Hook,
    /// Rank of the base chain among the hook's base chains (priority, listing order).
    base: usize,
    seq: usize,
    /// Jump/goto rules (and vmap keys) leading here.
    via: Vec<&'a Rule>,
    ctx: Vec<Match>,
    /// Earlier rules on the way that end the chain for the packets they match.
    excl: Vec<&'a Rule>,
    /// The rule is in the base chain itself.
    in_base: bool,
}

fn rid(r: &Rule) -> usize {
    r as *const Rule as usize
}

fn terminal_verdict(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Accept | Verdict::Drop | Verdict::Return | Verdict::Goto(_)
    )
}

/// The foreign tool a chain belongs to, by the names those tools use.
fn tool_of(c: &Chain) -> Option<&'static str> {
    let t = c.table.as_str();
    let n = c.name.as_str();
    if t.starts_with("wg-quick") {
        Some("wg-quick")
    } else if n.starts_with("KUBE-") || t.starts_with("kube-proxy") {
        Some("kube-proxy")
    } else if n.starts_with("DOCKER") {
        Some("Docker")
    } else if n.starts_with("ts-") || t == "tailscale" {
        Some("Tailscale")
    } else if n.starts_with("cali-") {
        Some("Calico")
    } else if n.starts_with("CILIUM") || t == "cilium" {
        Some("Cilium")
    } else {
        None
    }
}

fn is_symroute_chain(c: &Chain) -> bool {
    c.family == NfFamily::Inet && c.table == crate::plan::nft::TABLE
}

fn families_of(f: NfFamily) -> BTreeSet<Family> {
    match f {
        NfFamily::Ip => [Family::Inet4].into(),
        NfFamily::Ip6 => [Family::Inet6].into(),
        _ => [Family::Inet4, Family::Inet6].into(),
    }
}

/// Where a rule is, for quoting.
fn fw_what(r: &Rule) -> String {
    match &r.origin {
        Origin::Iptables { tool, table, .. } => format!("{tool} -t {table}: {}", r.text),
        Origin::Nft {
            family,
            table,
            chain,
            ..
        } => {
            if chain.is_empty() {
                format!("nft table {family} {table}: {}", r.text)
            } else {
                format!("nft table {family} {table} chain {chain}: {}", r.text)
            }
        }
    }
}

fn fw_what_in(r: &Rule, c: &Chain) -> String {
    match &r.origin {
        Origin::Nft { .. } => format!(
            "nft table {} {} chain {}: {}",
            c.family, c.table, c.name, r.text
        ),
        _ => fw_what(r),
    }
}

fn rule_what(r: &RuleEntry) -> String {
    let cmd = match r.family {
        Family::Inet4 => "ip rule",
        Family::Inet6 => "ip -6 rule",
    };
    format!("{cmd}: {}", r.text.replace('\t', " ").trim_end())
}

fn route_what(r: &RouteEntry) -> String {
    let cmd = match r.family {
        Family::Inet4 => "ip route",
        Family::Inet6 => "ip -6 route",
    };
    format!("{cmd}: {}", r.text.replace('\t', " ").trim_end())
}

fn hex(v: u32) -> String {
    format!("{v:#x}")
}

/// `fwmark V` or `fwmark V/M` as `ip rule` prints it.
fn fwmark_str(v: u32, m: u32) -> String {
    if m == u32::MAX {
        format!("fwmark {}", hex(v))
    } else {
        format!("fwmark {}/{}", hex(v), hex(m))
    }
}

fn proto_name(p: u8) -> Option<&'static str> {
    Some(match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        33 => "dccp",
        136 => "udplite",
        1 => "icmp",
        58 => "icmpv6",
        _ => return None,
    })
}

const PORT_PROTOCOLS: [&str; 5] = ["tcp", "udp", "sctp", "dccp", "udplite"];

// ---------------------------------------------------------------------------------------
// Conditions → a policy match

/// The conditions a packet met to reach a rule, as far as the config can say them.
#[derive(Debug, Clone, Default)]
struct Conds {
    sel: Sel,
    new_only: bool,
    /// `Some(t)`: a socket match (`t`: transparent only).
    socket: Option<Option<bool>>,
    /// Families the conditions allow (None: both).
    families: Option<BTreeSet<Family>>,
    /// Conditions with no config key, described.
    problems: Vec<String>,
}

fn intersect_names(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

fn intersect_nets(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.push(*y);
            } else if y.contains(x) {
                out.push(*x);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn intersect_ports(a: &[(u16, u16)], b: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let lo = x.0.max(y.0);
            let hi = x.1.min(y.1);
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Ports 1-65535 not in `ports`.
fn complement_ports(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut sorted = ports.to_vec();
    sorted.sort();
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for (a, b) in sorted {
        if u32::from(a) > next {
            out.push((next as u16, a - 1));
        }
        next = next.max(u32::from(b) + 1);
    }
    if next <= 65535 {
        out.push((next as u16, 65535));
    }
    out
}

/// Exact prefixes for one address item (a range becomes the prefixes that cover it).
fn nets_of(items: &[AddrItem]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for i in items {
        match *i {
            AddrItem::Net(n) => out.push(n),
            AddrItem::Range(IpAddr::V4(a), IpAddr::V4(b)) => {
                out.extend(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4))
            }
            AddrItem::Range(IpAddr::V6(a), IpAddr::V6(b)) => {
                out.extend(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6))
            }
            AddrItem::Range(..) => {}
        }
    }
    out
}

impl Conds {
    fn restrict_family(&mut self, f: Family) {
        let mut s = self
            .families
            .clone()
            .unwrap_or_else(|| [Family::Inet4, Family::Inet6].into());
        s.retain(|x| *x == f);
        self.families = Some(s);
    }

    fn positive<T: Clone + PartialEq>(
        field: &mut Vec<T>,
        vals: Vec<T>,
        meet: impl Fn(&[T], &[T]) -> Vec<T>,
        problems: &mut Vec<String>,
        what: &str,
    ) {
        if field.is_empty() {
            *field = vals;
        } else {
            let m = meet(field, &vals);
            if m.is_empty() {
                problems.push(format!("its conditions on {what} can never hold together"));
            }
            *field = m;
        }
    }

    fn add(&mut self, m: &Match) {
        match m {
            Match::Iifname { op: Op::Eq, names } => {
                if let Some(w) = names.iter().find(|n| n.ends_with('*')) {
                    self.problems.push(format!(
                        "`{m}`: `{w}` is an interface wildcard, and in_interface takes exact names"
                    ));
                    return;
                }
                Self::positive(
                    &mut self.sel.in_interface,
                    names.clone(),
                    intersect_names,
                    &mut self.problems,
                    "the input interface",
                );
            }
            Match::Iifname { op: Op::Ne, .. } => self.problems.push(format!(
                "`{m}`: symroute has no \"not this input interface\" key"
            )),
            Match::EtherSaddr { op: Op::Eq, macs } => Self::positive(
                &mut self.sel.source_mac,
                macs.clone(),
                intersect_names,
                &mut self.problems,
                "the source MAC",
            ),
            Match::EtherSaddr { op: Op::Ne, .. } => self.problems.push(format!(
                "`{m}`: symroute has no \"not this source MAC\" key"
            )),
            Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
                self.restrict_family(*family);
                let nets = nets_of(addrs);
                if nets.is_empty() && !addrs.is_empty() {
                    self.problems
                        .push(format!("`{m}`: an address range it cannot split"));
                    return;
                }
                let src = matches!(m, Match::Saddr { .. });
                match (src, op) {
                    (true, Op::Eq) => Self::positive(
                        &mut self.sel.source,
                        nets,
                        intersect_nets,
                        &mut self.problems,
                        "the source address",
                    ),
                    (false, Op::Eq) => Self::positive(
                        &mut self.sel.destination,
                        nets,
                        intersect_nets,
                        &mut self.problems,
                        "the destination address",
                    ),
                    (true, Op::Ne) => extend_unique(&mut self.sel.not_source, nets),
                    (false, Op::Ne) => extend_unique(&mut self.sel.not_destination, nets),
                }
            }
            Match::L4proto { op, protos } => {
                let names: Option<Vec<String>> = protos
                    .iter()
                    .map(|p| proto_name(*p).map(str::to_string))
                    .collect();
                match (op, names) {
                    (Op::Eq, Some(n)) => Self::positive(
                        &mut self.sel.protocol,
                        n,
                        intersect_names,
                        &mut self.problems,
                        "the protocol",
                    ),
                    (Op::Eq, None) => self.problems.push(format!(
                        "`{m}`: a protocol symroute's match does not know (tcp, udp, sctp, dccp, udplite, icmp, icmpv6)"
                    )),
                    (Op::Ne, _) => self
                        .problems
                        .push(format!("`{m}`: symroute has no \"not this protocol\" key")),
                }
            }
            Match::Sport { op, ports } | Match::Dport { op, ports } => {
                let vals = match op {
                    Op::Eq => ports.clone(),
                    Op::Ne => complement_ports(ports),
                };
                let (field, what) = if matches!(m, Match::Sport { .. }) {
                    (&mut self.sel.source_port, "the source port")
                } else {
                    (&mut self.sel.destination_port, "the destination port")
                };
                Self::positive(field, vals, intersect_ports, &mut self.problems, what);
            }
            // Only unmarked packets / undecided connections: symroute classifies exactly those.
            Match::Mark {
                op: Op::Eq, values, ..
            } if values.as_slice() == [(0, 0)] => {}
            Match::Mark { .. } => self.problems.push(format!(
                "`{m}`: a test of mark bits, which symroute's match cannot make"
            )),
            Match::CtState { op, states } => {
                let has_new = states.contains(&CtState::New);
                match (op, has_new) {
                    (Op::Eq, true) | (Op::Ne, false) => self.new_only = true,
                    _ => self.problems.push(format!(
                        "`{m}`: symroute classifies only a connection's first packet"
                    )),
                }
            }
            Match::CtDirection {
                op: Op::Eq,
                direction: CtDirection::Original,
            }
            | Match::CtDirection {
                op: Op::Ne,
                direction: CtDirection::Reply,
            } => {}
            Match::CtDirection { .. } => self.problems.push(format!(
                "`{m}`: symroute classifies only a connection's first packet"
            )),
            Match::Socket { transparent } => self.socket = Some(*transparent),
            Match::Nfproto { family } => self.restrict_family(*family),
            Match::Oifname { .. } => self.problems.push(format!(
                "`{m}`: the output interface is not known when symroute classifies"
            )),
            Match::Unknown(s) => self
                .problems
                .push(format!("`{s}` has no symroute match key")),
        }
    }

    /// The packets an earlier rule took away (it ended the chain for them).
    fn exclude(&mut self, r: &Rule) {
        if r.matches.is_empty() {
            self.problems.push(format!(
                "it is never reached: `{}` before it ends the chain for every packet",
                r.text
            ));
            return;
        }
        // Part of the marking pattern itself, or packets symroute does not classify anyway.
        let absorbed = r.matches.iter().any(|m| match m {
            Match::Mark {
                op: Op::Ne, values, ..
            } => values.as_slice() == [(0, 0)],
            Match::Mark {
                op: Op::Eq, values, ..
            } => values.iter().all(|v| v.0 > 0),
            Match::Socket { .. } => true,
            Match::CtState { op: Op::Eq, states } => !states.contains(&CtState::New),
            Match::CtState { op: Op::Ne, states } => states.contains(&CtState::New),
            _ => false,
        });
        if absorbed {
            return;
        }
        if let [m] = r.matches.as_slice() {
            match m {
                Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
                    let nets = nets_of(addrs);
                    let src = matches!(m, Match::Saddr { .. });
                    // `ip saddr != X return` exempts only that family's packets: as a
                    // positive `source = X` it would also drop the other family.
                    let pinned = self
                        .families
                        .as_ref()
                        .is_some_and(|f| f.len() == 1 && f.contains(family));
                    if *op == Op::Ne && !pinned {
                        self.problems.push(format!(
                            "an earlier rule, `{}`, exempts {} packets outside {}, and symroute cannot say that for one family only",
                            r.text,
                            fam_word(*family),
                            nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ));
                        return;
                    }
                    match (src, op) {
                        (true, Op::Eq) => {
                            extend_unique(&mut self.sel.not_source, nets);
                            return;
                        }
                        (false, Op::Eq) => {
                            extend_unique(&mut self.sel.not_destination, nets);
                            return;
                        }
                        (true, Op::Ne) => {
                            Self::positive(
                                &mut self.sel.source,
                                nets,
                                intersect_nets,
                                &mut self.problems,
                                "the source address",
                            );
                            return;
                        }
                        (false, Op::Ne) => {
                            Self::positive(
                                &mut self.sel.destination,
                                nets,
                                intersect_nets,
                                &mut self.problems,
                                "the destination address",
                            );
                            return;
                        }
                    }
                }
                Match::Nfproto { family } => {
                    let other = match family {
                        Family::Inet4 => Family::Inet6,
                        Family::Inet6 => Family::Inet4,
                    };
                    self.restrict_family(other);
                    return;
                }
                _ => {}
            }
        }
        self.problems.push(format!(
            "an earlier rule, `{}`, exempts some packets from it, and symroute cannot say which",
            r.text
        ));
    }

    fn of(v: &Visit) -> Conds {
        let mut c = Conds::default();
        if v.chain.family != NfFamily::Inet {
            c.families = Some(families_of(v.chain.family));
        }
        for m in v.ctx.iter().chain(v.rule.matches.iter()) {
            c.add(m);
        }
        for e in &v.excl {
            c.exclude(e);
        }
        c.finish();
        c
    }

    fn finish(&mut self) {
        if (!self.sel.source_port.is_empty() || !self.sel.destination_port.is_empty())
            && self.sel.protocol.is_empty()
        {
            self.sel.protocol = PORT_PROTOCOLS.iter().map(|s| s.to_string()).collect();
        }
        if let Some(f) = &self.families {
            if f.is_empty() {
                self.problems
                    .push("its conditions allow neither IPv4 nor IPv6".to_string());
            }
        }
    }
}

fn extend_unique(field: &mut Vec<IpNet>, nets: Vec<IpNet>) {
    for n in nets {
        if !field.contains(&n) {
            field.push(n);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The work

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyKind {
    /// packet mark ← conntrack mark
    Restore,
    /// conntrack mark ← packet mark
    Save,
}

fn copy_kind(s: &Stmt) -> Option<CopyKind> {
    match s {
        Stmt::SetMark {
            key: MarkKey::Meta,
            value,
        } if value.reads(MarkKey::Ct) => Some(CopyKind::Restore),
        Stmt::SetMark {
            key: MarkKey::Ct,
            value,
        } if value.reads(MarkKey::Meta) => Some(CopyKind::Save),
        _ => None,
    }
}

/// An assignment of a value (not a copy from the other mark): which mark, and the value
/// it leaves, assuming the mark was 0 before (as on a connection's first packet, or after
/// the pattern's "skip marked packets").
fn const_set(s: &Stmt) -> Option<(MarkKey, u32)> {
    match s {
        Stmt::SetMark { key, value } if !value.reads(other(*key)) => Some((*key, value.eval(0, 0))),
        _ => None,
    }
}

fn other(k: MarkKey) -> MarkKey {
    match k {
        MarkKey::Meta => MarkKey::Ct,
        MarkKey::Ct => MarkKey::Meta,
    }
}

/// Does the rule set or test marks (or otherwise touch them)?
fn touches_marks(r: &Rule) -> bool {
    let text_mark = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.contains("mark")
    };
    r.stmts.iter().any(|s| match s {
        Stmt::SetMark { .. } | Stmt::Tproxy(_) => true,
        Stmt::Unknown(t) => text_mark(t),
        _ => false,
    }) || r.matches.iter().any(|m| match m {
        Match::Mark { .. } => true,
        Match::Unknown(t) => text_mark(t),
        _ => false,
    }) || matches!(&r.verdict, Verdict::Vmap(v) if text_mark(&v.key))
}

/// Bits a rule uses for its own purposes: constants it sets, values and partial masks it
/// tests. Whole-mark copies carry other users' bits and claim none themselves.
fn bits_used(r: &Rule) -> u32 {
    let mut bits = 0;
    for s in &r.stmts {
        if let Stmt::SetMark { value, .. } = s {
            let l = value.lin();
            bits |= l.k;
            // Bits it forces to zero (a masked set) are claimed too; a full overwrite is not.
            let cleared = !(l.meta | l.ct) & !l.k;
            if cleared != !l.k && (l.meta | l.ct) != 0 {
                bits |= cleared;
            }
        }
    }
    for m in &r.matches {
        if let Match::Mark { mask, values, .. } = m {
            for (a, b) in values {
                bits |= (a | b) & mask;
            }
            if *mask != u32::MAX {
                bits |= mask;
            }
        }
    }
    bits
}

struct Cx<'h> {
    host: &'h HostState,
    gateways: Vec<GatewayOut>,
    /// (family, table) → what it is.
    tables: BTreeMap<(Family, u32), TableKind>,
    mark_rules: Vec<MarkRule>,
    policies: Vec<PolicyOut>,
    divert: Option<DivertOut>,
    /// Per ip rule index: consumed by the config.
    rules_done: BTreeSet<usize>,
    /// Per ip rule index: why it is not expressed.
    rules_why: BTreeMap<usize, String>,
    routes_done: BTreeSet<usize>,
    routes_why: BTreeMap<usize, String>,
    /// Firewall rules (by address) consumed, and not expressed.
    fw_done: BTreeSet<usize>,
    fw_why: BTreeMap<usize, (String, Option<String>)>,
    /// Bits of what stays on the host, and who uses them.
    kept_bits: u32,
    kept_bits_from: Vec<(String, u32)>,
    /// Mark assignments that could not be expressed: (value, families, quoted rule).
    kept_sets: Vec<(u32, BTreeSet<Family>, String)>,
    /// The mask the file ends up with.
    mask: u32,
    /// Whole-mark copies that stay (restore/save), for the mask warning.
    kept_copies: Vec<usize>,
    ours_seen: bool,
    notes: Vec<String>,
    /// Marks the expressed policies and divert replaced (value, mask of ip rule).
    marks_replaced: BTreeSet<u32>,
}

impl<'h> Cx<'h> {
    fn new(host: &'h HostState) -> Self {
        Cx {
            host,
            gateways: Vec::new(),
            tables: BTreeMap::new(),
            mark_rules: Vec::new(),
            policies: Vec::new(),
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
        }
    }

    fn ours(protocol: &Option<String>) -> bool {
        protocol.as_deref() == Some(RT_PROTO.to_string().as_str())
    }

    // ---- routing -------------------------------------------------------------------

    fn classify_table(&self, family: Family, table: u32) -> TableKind {
        let routes: Vec<(usize, &RouteEntry)> = self
            .host
            .routing
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.family == family && r.table == table && !Self::ours(&r.protocol))
            .collect();
        if routes.is_empty() {
            return TableKind::Other(format!("table {table} has no {} routes", fam_word(family)));
        }
        if table == TABLE_MAIN || table == 255 || table == 253 {
            return TableKind::Other(format!(
                "it looks up the kernel's own table {}",
                super::routing::table_name(table)
            ));
        }
        // Divert: `local default dev lo`.
        if let Some((i, _)) = routes.iter().find(|(_, r)| {
            r.kind == RouteKind::Local
                && r.dst.prefix_len() == 0
                && r.nexthops.iter().any(|n| n.dev.as_deref() == Some("lo"))
        }) {
            let extra = routes.iter().map(|(j, _)| *j).filter(|j| j != i).collect();
            return TableKind::Divert {
                routes: vec![*i],
                extra,
            };
        }
        let defaults: Vec<&(usize, &RouteEntry)> = routes
            .iter()
            .filter(|(_, r)| r.dst.prefix_len() == 0)
            .collect();
        let [(di, d)] = defaults.as_slice() else {
            return TableKind::Other(if defaults.is_empty() {
                format!("table {table} has no default route, so it is not one gateway")
            } else {
                format!("table {table} has several default routes")
            });
        };
        if d.kind != RouteKind::Unicast {
            return TableKind::Other(format!(
                "table {table}'s default route is of type {}, not a gateway",
                d.kind.name()
            ));
        }
        if d.src.is_some() || d.tos != 0 {
            return TableKind::Other(format!(
                "table {table}'s default route is source- or TOS-specific"
            ));
        }
        let [nh] = d.nexthops.as_slice() else {
            return TableKind::Other(format!(
                "table {table}'s default route has {} next hops (multipath); a gateway has one",
                d.nexthops.len()
            ));
        };
        let Some(dev) = nh.dev.clone() else {
            return TableKind::Other(format!("table {table}'s default route names no device"));
        };
        if let Some(v) = nh.via {
            if Family::of(&v) != family {
                return TableKind::Other(format!(
                    "table {table}'s default route goes via {v}, an address of the other family"
                ));
            }
        }
        let mut keep = vec![*di];
        let mut extra = Vec::new();
        for (j, r) in &routes {
            if j == di {
                continue;
            }
            let connected = r.kind == RouteKind::Unicast
                && r.nexthops.len() == 1
                && r.nexthops[0].via.is_none()
                && r.nexthops[0].dev.is_some()
                && (r.scope.as_deref() == Some("link") || family == Family::Inet6);
            if connected {
                keep.push(*j);
            } else {
                extra.push(*j);
            }
        }
        TableKind::Gateway {
            dev,
            via: nh.via,
            routes: keep,
            extra,
        }
    }

    /// The table name the rule printed (`lookup SMTP`), when it is a name.
    fn table_word(r: &RuleEntry) -> Option<String> {
        let words: Vec<&str> = r.text.split_whitespace().collect();
        let pos = words.iter().position(|w| *w == "lookup" || *w == "table")?;
        let w = words.get(pos + 1)?;
        (!w.chars().all(|c| c.is_ascii_digit()) && !w.starts_with("0x")).then(|| w.to_string())
    }

    fn gateway_name(&self, r: &RuleEntry, table: u32) -> String {
        let base = match Self::table_word(r) {
            Some(w) => {
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
                if clean.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                    clean
                } else {
                    format!("table-{table}")
                }
            }
            None => format!("table-{table}"),
        };
        let mut name = base.clone();
        let mut n = 2;
        while self.gateways.iter().any(|g| g.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    }

    /// Foreign tools' `ip rule`s, by their well-known numbers.
    fn rule_tool(r: &RuleEntry, all: &[RuleEntry]) -> Option<String> {
        let wg_like = |x: &RuleEntry| {
            x.not && matches!((x.fwmark, x.action), (Some((v, _)), RuleAction::Lookup(t)) if v == t)
        };
        if let RuleAction::Lookup(t) = r.action {
            if t == 51820 || r.fwmark.is_some_and(|(v, _)| v == 0xca6c) || wg_like(r) {
                return Some(format!(
                    "wg-quick's full-tunnel rule (packets without the tunnel's own fwmark {} use table {t}, which routes into the tunnel): a foreign tool's rule, left in place; symroute's rules come first (priority {}+) and only catch packets carrying its own marks",
                    r.fwmark.map(|(v, _)| hex(v)).unwrap_or_default(),
                    DEFAULT_FIRST_PRIORITY
                ));
            }
            if t == 52 || (5210..=5270).contains(&r.priority) {
                return Some(
                    "Tailscale's rule (table 52, priorities 5210-5270, mark bits 0x00ff0000): a foreign tool's rule, left in place".into(),
                );
            }
            if t == TABLE_MAIN
                && r.suppress_prefixlength == Some(0)
                && all
                    .iter()
                    .any(|x| x.family == r.family && wg_like(x) && x.priority >= r.priority)
            {
                return Some(
                    "wg-quick's companion rule (main's specific routes before the tunnel's default): a foreign tool's rule, left in place".into(),
                );
            }
        }
        None
    }

    fn why_rule(r: &RuleEntry) -> String {
        let mut sel = Vec::new();
        if let Some(f) = r.from {
            sel.push(format!("source address {f}"));
        }
        if let Some(t) = r.to {
            sel.push(format!("destination {t}"));
        }
        if let Some(i) = &r.iif {
            sel.push(format!("input interface {i}"));
        }
        if let Some(o) = &r.oif {
            sel.push(format!("output interface {o}"));
        }
        if let Some(t) = r.tos {
            sel.push(format!("TOS {t:#04x}"));
        }
        if r.ipproto.is_some() || r.sport.is_some() || r.dport.is_some() {
            sel.push("protocol/ports".into());
        }
        sel.extend(r.unmodeled.iter().cloned());
        let action = match r.action {
            RuleAction::Lookup(t) => format!("lookup {}", super::routing::table_name(t)),
            RuleAction::Goto(p) => format!("goto {p}"),
            RuleAction::Blackhole => "blackhole".into(),
            RuleAction::Unreachable => "unreachable".into(),
            RuleAction::Prohibit => "prohibit".into(),
            RuleAction::Nop => "nop".into(),
            RuleAction::L3mdevTable => "l3mdev".into(),
        };
        if r.suppress_prefixlength.is_some() || r.suppress_ifgroup.is_some() {
            return "a `suppress_prefixlength`/`suppress_ifgroup` rule: symroute adds its own `lookup main suppress_prefixlength 0` only for its route_via rules; this one stays as it is".into();
        }
        if r.not {
            return format!(
                "an inverted (`not`) rule ({action}): symroute's rules select only its own marks"
            );
        }
        if r.fwmark.is_none() && r.from.is_some() && sel.len() == 1 {
            return format!(
                "selects every packet by its source address alone ({action}), in both directions, whatever connection it belongs to; symroute decides per connection: reply_via with the arrival interface for answers, route_via with `source` for new connections"
            );
        }
        if r.fwmark.is_none() && r.to.is_some() && sel.len() == 1 {
            return format!(
                "selects every packet by its destination alone ({action}); symroute decides per connection (route_via with `destination` steers new connections only)"
            );
        }
        if sel.is_empty() {
            return format!("an unconditional `{action}` before main: symroute has no equivalent");
        }
        let fw = if r.fwmark.is_some() {
            "a mark test combined with "
        } else {
            ""
        };
        format!(
            "{fw}a {} selector ({action}): symroute's rules select only by its own marks",
            sel.join(", ")
        )
    }

    fn routing(&mut self) {
        let rules = &self.host.routing.rules;
        // Mark rules first, in priority order, so gateways are numbered as the host uses them.
        for (i, r) in rules.iter().enumerate() {
            if r.is_default() {
                continue;
            }
            if Self::ours(&r.protocol) {
                self.ours_seen = true;
                continue;
            }
            if let Some(why) = Self::rule_tool(r, rules) {
                self.rules_why.insert(i, why);
                continue;
            }
            let plain_mark = r.fwmark.is_some()
                && !r.not
                && r.from.is_none()
                && r.to.is_none()
                && r.iif.is_none()
                && r.oif.is_none()
                && r.ipproto.is_none()
                && r.sport.is_none()
                && r.dport.is_none()
                && r.tos.is_none()
                && r.suppress_prefixlength.is_none()
                && r.suppress_ifgroup.is_none()
                && r.unmodeled.is_empty();
            let (true, Some((value, mask)), RuleAction::Lookup(table)) =
                (plain_mark, r.fwmark, r.action)
            else {
                self.rules_why.insert(i, Self::why_rule(r));
                continue;
            };
            let kind = match self.tables.get(&(r.family, table)) {
                Some(k) => k.clone(),
                None => {
                    let k = self.classify_table(r.family, table);
                    self.tables.insert((r.family, table), k.clone());
                    k
                }
            };
            let target = match kind {
                TableKind::Gateway { dev, via, .. } => {
                    Target::Gateway(self.gateway_for(i, r, table, value, mask, &dev, via))
                }
                TableKind::Divert { .. } => Target::Divert,
                TableKind::Other(why) => Target::Other(why),
            };
            if let Target::Other(why) = &target {
                self.rules_why.insert(i, why.clone());
            }
            self.mark_rules.push(MarkRule {
                idx: i,
                family: r.family,
                value,
                mask,
                table,
                target,
            });
        }
    }

    /// Finds or makes the gateway for one fwmark rule's table.
    #[allow(clippy::too_many_arguments)]
    fn gateway_for(
        &mut self,
        idx: usize,
        r: &RuleEntry,
        table: u32,
        value: u32,
        mask: u32,
        dev: &str,
        via: Option<IpAddr>,
    ) -> usize {
        let fam = r.family;
        // The same table of this family: the same gateway.
        let same_table = self
            .gateways
            .iter()
            .position(|g| g.tables.contains(&(fam, table)));
        // The other family's gateway selected by the same fwmark, on the same interface.
        let same_mark = || {
            self.mark_rules.iter().find_map(|m| match m.target {
                Target::Gateway(g)
                    if m.family != fam
                        && m.value == value
                        && m.mask == mask
                        && self.gateways[g].interface == dev
                        && match fam {
                            Family::Inet4 => self.gateways[g].via.is_none(),
                            Family::Inet6 => self.gateways[g].via6.is_none(),
                        } =>
                {
                    Some(g)
                }
                _ => None,
            })
        };
        let g = match same_table.or_else(same_mark) {
            Some(g) => g,
            None => {
                let name = self.gateway_name(r, table);
                let mut notes = Vec::new();
                let links = &self.host.routing.links;
                if !links.is_empty() && !links.contains_key(dev) {
                    notes.push(format!(
                        "interface {dev} does not exist on this host now: symroute reports this gateway down (its rules fall through to the main table) until it does"
                    ));
                }
                self.gateways.push(GatewayOut {
                    name,
                    interface: dev.to_string(),
                    via: None,
                    via6: None,
                    rules: Vec::new(),
                    tables: Vec::new(),
                    notes,
                });
                self.gateways.len() - 1
            }
        };
        let gw = &mut self.gateways[g];
        gw.rules.push(idx);
        if !gw.tables.contains(&(fam, table)) {
            gw.tables.push((fam, table));

            match via {
                Some(IpAddr::V4(a)) => gw.via = Some(a),
                Some(IpAddr::V6(a)) => gw.via6 = Some(a),
                None => {}
            }
        }
        g
    }

    /// The mark rule a packet of `family` with mark `v` is routed by (first by priority).
    fn mark_rule_for(&self, family: Family, v: u32) -> Option<MarkRule> {
        if v == 0 {
            return None;
        }
        self.mark_rules
            .iter()
            .find(|m| m.family == family && v & m.mask == m.value)
            .cloned()
    }

    // ---- firewall ------------------------------------------------------------------

    fn visits(&self) -> Vec<Visit<'h>> {
        let rs = &self.host.firewall;
        let mut out = Vec::new();
        let mut seq = 0;
        for hook in [
            Hook::Prerouting,
            Hook::Output,
            Hook::Input,
            Hook::Forward,
            Hook::Postrouting,
        ] {
            let mut bases: Vec<(i32, usize, &Chain)> = rs
                .chains
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.base.as_ref().is_some_and(|b| b.hook == hook)
                        && matches!(c.family, NfFamily::Ip | NfFamily::Ip6 | NfFamily::Inet)
                })
                .map(|(i, c)| (c.base.as_ref().map_or(0, |b| b.priority), i, c))
                .collect();
            bases.sort_by_key(|(p, i, _)| (*p, *i));
            for (rank, (_, _, c)) in bases.into_iter().enumerate() {
                let mut stack = vec![c as *const Chain];
                walk(
                    self.host,
                    c,
                    hook,
                    rank,
                    &mut seq,
                    &[],
                    &[],
                    &[],
                    true,
                    &mut stack,
                    &mut out,
                );
            }
        }
        out
    }

    fn firewall(&mut self) {
        let visits = self.visits();
        let live = |v: &&Visit| !is_symroute_chain(v.chain) && tool_of(v.chain).is_none();

        let restores: Vec<&Visit> = visits
            .iter()
            .filter(live)
            .filter(|v| {
                v.rule
                    .stmts
                    .iter()
                    .any(|s| copy_kind(s) == Some(CopyKind::Restore))
            })
            .collect();
        let saves: Vec<&Visit> = visits
            .iter()
            .filter(live)
            .filter(|v| {
                v.rule
                    .stmts
                    .iter()
                    .any(|s| copy_kind(s) == Some(CopyKind::Save))
            })
            .collect();
        let restore_in = |h: Hook| restores.iter().any(|v| v.hook == h);

        // Every constant mark assignment, by visit.
        let mut set_visits: Vec<(&Visit, MarkKey, u32)> = Vec::new();
        for v in visits.iter().filter(live) {
            let sets: Vec<(MarkKey, u32)> = v.rule.stmts.iter().filter_map(const_set).collect();
            // A rule setting both marks to the same value is one decision, saved.
            if let Some(&(k, val)) = sets
                .iter()
                .find(|(k, _)| *k == MarkKey::Meta)
                .or_else(|| sets.first())
            {
                set_visits.push((v, k, val));
            }
        }

        // Per rule: Some(true) all visits expressed, Some(false) some not.
        let mut expressed: BTreeMap<usize, bool> = BTreeMap::new();
        let mut any_pattern_policy = false;
        for (v, key, val) in &set_visits {
            let ok = self.one_set(v, *key, *val, &saves, &restore_in, &mut any_pattern_policy);
            let e = expressed.entry(rid(v.rule)).or_insert(true);
            *e &= ok;
        }
        for (id, ok) in &expressed {
            if *ok {
                self.fw_done.insert(*id);
                self.fw_why.remove(id);
            } else {
                self.fw_done.remove(id);
            }
        }
        // The jump rules that led to expressed sets, and divert chains' other rules.
        for (v, _, _) in &set_visits {
            if expressed.get(&rid(v.rule)) == Some(&true) {
                for j in &v.via {
                    self.fw_done.insert(rid(j));
                }
                // Exemptions that became not_source/source/…: part of what is replaced.
                for e in &v.excl {
                    let control_only = e
                        .stmts
                        .iter()
                        .all(|s| matches!(s, Stmt::Counter | Stmt::Log));
                    let exemption = matches!(
                        e.matches.as_slice(),
                        [Match::Saddr { .. } | Match::Daddr { .. } | Match::Nfproto { .. }]
                    );
                    if control_only && exemption && e.verdict == Verdict::Return {
                        self.fw_done.insert(rid(e));
                    }
                }
                if !v.in_base
                    && v.via
                        .iter()
                        .any(|j| j.matches.iter().any(|m| matches!(m, Match::Socket { .. })))
                {
                    for r in &v.chain.rules {
                        if r.stmts
                            .iter()
                            .all(|s| matches!(s, Stmt::Counter | Stmt::Log))
                            && r.matches.is_empty()
                        {
                            self.fw_done.insert(rid(r));
                        }
                    }
                }
            }
        }

        // The pattern's copies and skip rules: replaced when every mark they carry was.
        // (Only marks some `ip rule` routes by: others are not part of the pattern.)
        let unexpressed_sets: Vec<&Visit> = set_visits
            .iter()
            .filter(|(v, _, val)| {
                expressed.get(&rid(v.rule)) == Some(&false)
                    && [Family::Inet4, Family::Inet6]
                        .iter()
                        .any(|f| self.mark_rule_for(*f, *val).is_some())
            })
            .map(|(v, _, _)| *v)
            .collect();
        let pattern_rules: Vec<&Visit> = visits
            .iter()
            .filter(live)
            .filter(|v| {
                v.rule.stmts.iter().any(|s| copy_kind(s).is_some()) || is_skip_marked(v.rule)
            })
            .collect();
        for v in &pattern_rules {
            let id = rid(v.rule);
            if self.fw_done.contains(&id) || self.fw_why.contains_key(&id) {
                continue;
            }
            if any_pattern_policy && unexpressed_sets.is_empty() {
                self.fw_done.insert(id);
                for j in &v.via {
                    self.fw_done.insert(rid(j));
                }
            } else {
                let what = if is_skip_marked(v.rule) {
                    "skips packets that already carry a mark"
                } else if v
                    .rule
                    .stmts
                    .iter()
                    .any(|s| copy_kind(s) == Some(CopyKind::Restore))
                {
                    "copies the connection's mark to the packet"
                } else {
                    "copies the packet's mark to the connection"
                };
                let why = if unexpressed_sets.is_empty() {
                    format!(
                        "{what}, but no rule here sets a mark that an `ip rule` looks up (a program may set it with SO_MARK): left as it is"
                    )
                } else {
                    let names: Vec<String> = unexpressed_sets
                        .iter()
                        .map(|u| format!("`{}`", u.rule.text))
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    format!(
                        "{what}; kept for {}, which could not be expressed",
                        names.join(", ")
                    )
                };
                if !is_skip_marked(v.rule) {
                    self.kept_copies.push(id);
                }
                self.fw_why.insert(id, (why, None));
            }
        }

        // Everything else that touches marks, anywhere (reached or not).
        let reached: BTreeSet<usize> = visits.iter().map(|v| rid(v.rule)).collect();
        for c in &self.host.firewall.chains {
            if is_symroute_chain(c) {
                if !c.rules.is_empty() || c.base.is_some() {
                    self.ours_seen = true;
                }
                continue;
            }
            for r in &c.rules {
                let id = rid(r);
                if self.fw_done.contains(&id) {
                    continue;
                }
                let tool = tool_of(c);
                if !touches_marks(r) {
                    continue;
                }
                if let Some(t) = tool {
                    let copy = r.stmts.iter().any(|s| copy_kind(s).is_some());
                    let what = if copy {
                        "copies marks between the packet and its connection".to_string()
                    } else if r.stmts.iter().any(|s| matches!(s, Stmt::SetMark { .. })) {
                        format!("sets mark bits {}", hex(bits_used(r)))
                    } else {
                        format!("tests mark bits {}", hex(bits_used(r)))
                    };
                    self.fw_why.insert(
                        id,
                        (
                            format!("{t}'s rule ({what}): a foreign tool's rule, left in place"),
                            None,
                        ),
                    );
                    if copy {
                        self.kept_copies.push(id);
                    }
                    self.keep_bits(r, c);
                    continue;
                }
                if self.fw_why.contains_key(&id) {
                    self.keep_bits(r, c);
                    continue;
                }
                let why = if !reached.contains(&id) {
                    "touches marks in a chain no hook reaches: left as it is".to_string()
                } else if r.stmts.iter().any(|s| matches!(s, Stmt::Tproxy(_))) {
                    "TPROXY redirects packets to a local socket: symroute's divert only delivers answers to transparent sockets locally, it does not redirect".to_string()
                } else if let Some(m) = r.matches.iter().find(|m| matches!(m, Match::Mark { .. })) {
                    let marks = self.replaced_marks_in(m);
                    if marks {
                        format!(
                            "tests `{m}`, a mark the hand-made rules this file replaces used to set: once they are removed it never matches"
                        )
                    } else {
                        format!(
                            "tests `{m}`, which symroute's policies cannot express: left as it is"
                        )
                    }
                } else if let Some(Stmt::Unknown(s)) =
                    r.stmts.iter().find(|s| matches!(s, Stmt::Unknown(_)))
                {
                    format!("`{s}` is beyond what symroute models: left as it is")
                } else {
                    "touches marks in a way symroute cannot express: left as it is".to_string()
                };
                self.fw_why.insert(id, (why, None));
                self.keep_bits(r, c);
            }
        }
        // Bits of the unexpressed sets (kept) count too.
        for c in &self.host.firewall.chains {
            for r in &c.rules {
                let id = rid(r);
                if self.fw_why.contains_key(&id) && !self.fw_done.contains(&id) {
                    self.keep_bits(r, c);
                }
            }
        }
        for n in &self.host.firewall.notes {
            if n.contains("not modelled") || n.contains("skipped") {
                self.notes.push(n.clone());
            }
        }
    }

    fn replaced_marks_in(&self, m: &Match) -> bool {
        let Match::Mark { mask, values, .. } = m else {
            return false;
        };
        self.marks_replaced.iter().any(|v| {
            values
                .iter()
                .any(|(a, b)| (v & mask) >= *a && (v & mask) <= *b && *v != 0)
        })
    }

    fn keep_bits(&mut self, r: &Rule, c: &Chain) {
        let b = bits_used(r);
        if b != 0 {
            let what = fw_what_in(r, c);
            if !self.kept_bits_from.iter().any(|(w, _)| *w == what) {
                self.kept_bits |= b;
                self.kept_bits_from.push((what, b));
            }
        }
    }

    /// One constant mark assignment; returns whether the config expresses it.
    fn one_set(
        &mut self,
        v: &Visit,
        key: MarkKey,
        val: u32,
        saves: &[&Visit],
        restore_in: &dyn Fn(Hook) -> bool,
        any_pattern_policy: &mut bool,
    ) -> bool {
        let id = rid(v.rule);
        if v.rule.stmts.iter().any(|s| matches!(s, Stmt::Tproxy(_))) {
            self.fw_why.insert(
                id,
                ("TPROXY redirects packets to a local socket: symroute's divert only delivers answers to transparent sockets locally, it does not redirect".into(), None),
            );
            self.kept_sets.push((
                val,
                families_of(v.chain.family),
                fw_what_in(v.rule, v.chain),
            ));
            return false;
        }
        let conds = Conds::of(v);
        let fams: BTreeSet<Family> = {
            let mut f = families_of(v.chain.family);
            if let Some(c) = &conds.families {
                f.retain(|x| c.contains(x));
            }
            f
        };

        // Divert: a socket match setting a mark whose table delivers locally.
        if conds.socket.is_some() {
            return self.one_divert(v, key, val, &conds, &fams);
        }

        let targets: Vec<(Family, Option<MarkRule>)> = fams
            .iter()
            .map(|f| (*f, self.mark_rule_for(*f, val)))
            .collect();
        let gws: BTreeSet<usize> = targets
            .iter()
            .filter_map(|(_, m)| match m.as_ref().map(|m| &m.target) {
                Some(Target::Gateway(g)) => Some(*g),
                _ => None,
            })
            .collect();
        let other_why: Option<String> = targets.iter().find_map(|(_, m)| match m.as_ref().map(|m| &m.target) {
            Some(Target::Other(w)) => Some(format!(
                "mark {} selects table {}, which is not a gateway symroute can express: {w}",
                hex(val),
                m.as_ref().map_or(0, |m| m.table)
            )),
            Some(Target::Divert) => Some(format!(
                "mark {} selects a `local default dev lo` table (a divert), but the rule has no socket match",
                hex(val)
            )),
            _ => None,
        });

        let saved_here = v.rule.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::SetMark {
                    key: MarkKey::Ct,
                    ..
                }
            )
        }) || key == MarkKey::Ct;
        let blocks = |s: &Visit| {
            let term = matches!(v.rule.verdict, Verdict::Accept | Verdict::Drop)
                || (v.in_base && terminal_verdict(&v.rule.verdict));
            term && s.base == v.base
        };
        let saved = saved_here
            || saves
                .iter()
                .any(|s| s.hook == v.hook && (s.base, s.seq) > (v.base, v.seq) && !blocks(s));

        let iface: Vec<&String> = conds.sel.in_interface.iter().collect();
        let gw_if = gws
            .iter()
            .next()
            .map(|g| self.gateways[*g].interface.clone());
        let reply_like = match &gw_if {
            Some(d) => {
                (!iface.is_empty() && iface.iter().all(|i| *i == d))
                    || (!conds.sel.source_mac.is_empty()
                        && (iface.is_empty() || iface.iter().all(|i| *i == d)))
            }
            None => !conds.sel.source_mac.is_empty() || !iface.is_empty(),
        };

        // Reasons it cannot be expressed as it is, in the order a reader needs them.
        let mut reasons: Vec<String> = Vec::new();
        if val == 0 {
            let looked: Vec<String> = self
                .mark_rules
                .iter()
                .filter(|m| fams.contains(&m.family))
                .map(|m| format!("`{}`", one_line(&self.host.routing.rules[m.idx].text)))
                .collect();
            let mut s = format!(
                "`{}` sets mark 0, which is no mark at all: it clears the packet's mark, and no `ip rule fwmark` can select it",
                mark_stmt_text(v.rule)
            );
            if !looked.is_empty() {
                s += &format!(" ({} never matches these packets)", looked.join(", "));
            }
            if self.mark_rules.iter().any(|m| m.value == 1) {
                s += "; marks are plain numbers, so 0 does not stand for 1";
            }
            reasons.push(s);
        } else if targets.iter().all(|(_, m)| m.is_none()) {
            reasons.push(format!(
                "no `ip rule fwmark` selects mark {} (tc filters or other programs may use it)",
                hex(val)
            ));
        } else if let Some(w) = &other_why {
            reasons.push(w.clone());
        } else if gws.len() > 1 {
            reasons.push(format!(
                "mark {} selects different gateways for IPv4 and IPv6",
                hex(val)
            ));
        }
        if v.hook.after_routing() {
            reasons.push(format!(
                "it is in {}, after the routing decision, where a mark cannot change the route{}",
                v.hook.as_str().to_ascii_uppercase(),
                if v.hook == Hook::Forward {
                    " (and the host's own connections never pass FORWARD)"
                } else {
                    ""
                }
            ));
        }
        if !saved && reply_like {
            reasons.push(
                "without CONNMARK (`--save-mark`, `ct mark set meta mark`) only the packets it marks carry the mark, never the answers".into(),
            );
        }
        reasons.extend(conds.problems.iter().cloned());

        // Which gateway a proposal would use: the one the mark selects, else the one on the
        // rule's input interface, else the only one.
        let proposal_gw = gws.iter().next().copied().or_else(|| {
            let by_if: Vec<usize> = (0..self.gateways.len())
                .filter(|g| iface.iter().any(|i| **i == self.gateways[*g].interface))
                .collect();
            match by_if.as_slice() {
                [g] => Some(*g),
                _ if self.gateways.len() == 1 => Some(0),
                _ => None,
            }
        });

        if !reasons.is_empty() {
            let proposal = (conds.problems.is_empty() || reply_like && !iface.is_empty())
                .then(|| self.proposal(&conds, reply_like, proposal_gw))
                .flatten();
            let mut why = reasons.join("; ");
            if proposal.is_some() {
                why += "; the policy it was meant to be is proposed, commented out, in the file";
            }
            self.fw_why.entry(id).or_insert((why, proposal));
            self.kept_sets
                .push((val, fams.clone(), fw_what_in(v.rule, v.chain)));
            return false;
        }

        let gw = *gws.iter().next().expect("a gateway when no reasons");
        let action = if reply_like && v.hook == Hook::Prerouting {
            ActionKind::Reply
        } else {
            ActionKind::Route
        };
        let mut notes = Vec::new();
        let restored_pre = restore_in(Hook::Prerouting);
        let restored_out = restore_in(Hook::Output);
        match action {
            ActionKind::Reply => {
                if conds.sel.is_empty() {
                    self.fw_why.insert(
                        id,
                        ("it marks every arriving connection, and a reply_via policy needs conditions that say which".into(), None),
                    );
                    return false;
                }
                if !restored_pre && !restored_out {
                    self.fw_why.insert(
                        id,
                        ("it saves the mark in the connection but nothing restores it (`--restore-mark`, `meta mark set ct mark`), so the answers are never marked".into(), self.proposal(&conds, true, Some(gw))),
                    );
                    return false;
                }
                if !restored_out {
                    notes.push("the original restored the mark only in PREROUTING, so this host's own answers ignored it; symroute steers them too".into());
                }
                if !restored_pre {
                    notes.push("the original restored the mark only in OUTPUT, so forwarded answers ignored it; symroute steers them too".into());
                }
                *any_pattern_policy = true;
            }
            ActionKind::Route => {
                let restored = match v.hook {
                    Hook::Output => restored_out,
                    _ => restored_pre,
                };
                if !saved || !restored {
                    if conds.new_only {
                        notes.push("the original marked only each connection's first packet (no CONNMARK), so the rest followed the main table; symroute remembers the decision and steers every packet the connection sends".into());
                    } else {
                        notes.push("the original marked matching packets one by one (no CONNMARK); symroute decides once per connection and steers every packet the connection sends".into());
                    }
                } else {
                    *any_pattern_policy = true;
                }
            }
        }

        self.marks_replaced.insert(val);
        for m in targets.iter().filter_map(|(_, m)| m.as_ref()) {
            self.rules_done.insert(m.idx);
        }
        let policy = PolicyOut {
            action,
            gateway: gw,
            sel: conds.sel.clone(),
            families: fams.clone(),
            hooks: [v.hook].into(),
            notes,
            terminal: terminal_verdict(&v.rule.verdict),
            seq: v.seq,
        };
        self.add_policy(policy);
        true
    }

    fn add_policy(&mut self, p: PolicyOut) {
        // The same decision reached again (another hook, another family): one policy.
        if let Some(q) = self
            .policies
            .iter_mut()
            .find(|q| q.action == p.action && q.gateway == p.gateway && q.sel == p.sel)
        {
            q.families.extend(p.families.iter().copied());
            q.hooks.extend(p.hooks.iter().copied());
            for n in p.notes {
                if !q.notes.contains(&n) {
                    q.notes.push(n);
                }
            }
            return;
        }
        self.policies.push(p);
    }

    fn one_divert(
        &mut self,
        v: &Visit,
        key: MarkKey,
        val: u32,
        conds: &Conds,
        fams: &BTreeSet<Family>,
    ) -> bool {
        let id = rid(v.rule);
        let targets: Vec<Option<MarkRule>> =
            fams.iter().map(|f| self.mark_rule_for(*f, val)).collect();
        let mut reasons = Vec::new();
        if key != MarkKey::Meta {
            reasons.push("it sets the connection's mark, not the packet's".to_string());
        }
        if !targets
            .iter()
            .flatten()
            .any(|m| matches!(m.target, Target::Divert))
        {
            reasons.push(format!(
                "mark {} does not select a table with `local default dev lo`",
                hex(val)
            ));
        }
        let extra: Vec<String> = {
            let mut s = conds.sel.clone();
            s.protocol.clear();
            let mut out = Vec::new();
            if !s.is_empty() {
                out.push("it has conditions besides the protocol, and symroute's divert covers every transparent socket".to_string());
            }
            out.extend(conds.problems.iter().cloned());
            out
        };
        reasons.extend(extra);
        if !conds.sel.protocol.iter().all(|p| p == "tcp" || p == "udp") {
            reasons.push("transparent sockets exist only for tcp and udp".into());
        }
        if conds.socket == Some(Some(false)) {
            reasons.push(
                "it matches sockets that are not transparent, and symroute's divert matches transparent ones".into(),
            );
        }
        if !reasons.is_empty() {
            self.fw_why.insert(id, (reasons.join("; "), None));
            self.kept_sets
                .push((val, fams.clone(), fw_what_in(v.rule, v.chain)));
            return false;
        }
        let d = self.divert.get_or_insert_with(DivertOut::default);
        if conds.sel.protocol.is_empty() {
            d.any_protocol = true;
        }
        d.protocols.extend(conds.sel.protocol.iter().cloned());
        if conds.socket == Some(None) {
            let n = "the original matched any local socket (`-m socket`); symroute's divert matches transparent ones (`socket transparent 1`), which is what a transparent proxy (HAProxy's `usesrc clientip`) uses".to_string();
            if !d.notes.contains(&n) {
                d.notes.push(n);
            }
        }
        if !fams.contains(&Family::Inet6) {
            let n = "the original diverted IPv4 only; symroute diverts IPv6 too".to_string();
            if !d.notes.contains(&n) {
                d.notes.push(n);
            }
        }
        self.marks_replaced.insert(val);
        for m in targets.into_iter().flatten() {
            if matches!(m.target, Target::Divert) {
                self.rules_done.insert(m.idx);
            }
        }
        true
    }

    /// A commented-out policy for what a rule that cannot be expressed was meant to do.
    fn proposal(&self, conds: &Conds, reply_like: bool, gw: Option<usize>) -> Option<String> {
        let gw = &self.gateways[gw?];
        let mut sel = Sel::default();
        let mut dropped = Vec::new();
        if reply_like {
            // Answer every connection that arrives that way, whatever its service: the
            // arrival path is what a reply depends on.
            sel.in_interface = conds.sel.in_interface.clone();
            sel.source_mac = conds.sel.source_mac.clone();
            sel.not_source = conds.sel.not_source.clone();
            if !conds.sel.protocol.is_empty() || !conds.sel.destination_port.is_empty() {
                dropped.push(describe_service(&conds.sel));
            }
        } else {
            sel = conds.sel.clone();
        }
        if sel.is_empty() && reply_like {
            return None;
        }
        let kind = if reply_like { "reply_via" } else { "route_via" };
        let name = format!("{}-{}", kind.replace('_', "-"), gw.name);
        let mut s = String::new();
        let _ = writeln!(s, "[[policy]]");
        let _ = writeln!(s, "name = {}", q(&name));
        let _ = writeln!(s, "{kind} = {}", q(&gw.name));
        s += &render_match(&sel);
        for d in dropped {
            let _ = writeln!(
                s,
                "# (the original also required {d}; add protocol/destination_port to keep that)"
            );
        }
        Some(s)
    }

    // ---- leftovers -----------------------------------------------------------------

    fn leftover_rules(&mut self) {
        // Mark rules a kept (unexpressed) assignment still needs stay, with their tables.
        for (val, fams, what) in self.kept_sets.clone() {
            for f in fams {
                if let Some(m) = self.mark_rule_for(f, val) {
                    if self.rules_done.remove(&m.idx) || !self.rules_why.contains_key(&m.idx) {
                        self.rules_why.insert(
                            m.idx,
                            format!(
                                "kept for `{what}`, which could not be expressed and still sets mark {}",
                                hex(val)
                            ),
                        );
                    }
                }
            }
        }
        // Mark rules the config did not replace.
        for m in self.mark_rules.clone() {
            if self.rules_done.contains(&m.idx) || self.rules_why.contains_key(&m.idx) {
                continue;
            }

            let why = match m.target {
                Target::Gateway(g) => format!(
                    "no firewall rule sets mark {} (a program could, with SO_MARK), so this rule never matches packets marked here and symroute has nothing to take over; its table is gateway \"{}\" above",
                    hex(m.value),
                    self.gateways[g].name
                ),
                Target::Divert => format!(
                    "no socket-matching firewall rule sets mark {}, so no [[divert]] replaces it",
                    hex(m.value)
                ),
                Target::Other(w) => w,
            };

            self.rules_why.insert(m.idx, why);
        }
        // Routes of the tables the config replaces, and what stays with them.
        for gw in &self.gateways {
            let used = gw.rules.iter().any(|i| self.rules_done.contains(i));
            for (fam, t) in &gw.tables {
                let kept_by: Vec<String> = self
                    .host
                    .routing
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| {
                        r.family == *fam
                            && r.action == RuleAction::Lookup(*t)
                            && !self.rules_done.contains(i)
                    })
                    .map(|(_, r)| format!("`{}`", one_line(&r.text)))
                    .collect();
                if let Some(TableKind::Gateway { routes, extra, .. }) = self.tables.get(&(*fam, *t))
                {
                    if used && kept_by.is_empty() {
                        self.routes_done.extend(routes.iter().copied());
                        for e in extra {
                            self.routes_why.insert(
                                *e,
                                format!(
                                    "table {t} holds more than a default route and connected networks; symroute's table for gateway \"{}\" holds only those",
                                    gw.name
                                ),
                            );
                        }
                    }
                }
            }
        }
        for (k, kind) in &self.tables {
            if let TableKind::Divert { routes, extra } = kind {
                let used = self
                    .mark_rules
                    .iter()
                    .any(|m| (m.family, m.table) == *k && self.rules_done.contains(&m.idx));
                if used {
                    self.routes_done.extend(routes.iter().copied());
                    for e in extra {
                        self.routes_why.insert(
                            *e,
                            format!(
                                "table {} holds more than `local default dev lo`; symroute's divert table holds only that",
                                k.1
                            ),
                        );
                    }
                }
            }
        }
        // Bits and places of the ip rules that stay.
        for (i, r) in self.host.routing.rules.iter().enumerate() {
            if !self.rules_why.contains_key(&i) {
                continue;
            }
            if let Some((v, m)) = r.fwmark {
                let b = v | if m == u32::MAX { 0 } else { m };
                if b != 0 {
                    self.kept_bits |= b;
                    self.kept_bits_from.push((rule_what(r), b));
                }
            }
        }
    }

    // ---- output --------------------------------------------------------------------

    fn unexpressed(&self) -> Vec<(Unexpressed, Option<String>)> {
        let mut out = Vec::new();
        for c in &self.host.firewall.chains {
            for r in &c.rules {
                if let Some((why, prop)) = self.fw_why.get(&rid(r)) {
                    if self.fw_done.contains(&rid(r)) {
                        continue;
                    }
                    let mut why = why.clone();
                    if self.kept_copies.contains(&rid(r)) {
                        let copied = r
                            .stmts
                            .iter()
                            .map(|s| match (s, copy_kind(s)) {
                                (Stmt::SetMark { value, .. }, Some(CopyKind::Restore)) => {
                                    value.lin().ct
                                }
                                (Stmt::SetMark { value, .. }, Some(CopyKind::Save)) => {
                                    value.lin().meta
                                }
                                _ => 0,
                            })
                            .fold(0, |a, b| a | b);
                        if copied & self.mask != 0 {
                            why += &format!(
                                "; it copies mark bits {copied:#010x}, symroute's mask {:#010x} included, so `symroute apply` reports it as a conflict",
                                self.mask
                            );
                            if tool_of(c).is_none() {
                                why += " until it copies only the bits it needs (iptables `--nfmask`/`--ctmask`, nft `and MASK`)";
                            }
                        }
                    }
                    out.push((
                        Unexpressed {
                            what: fw_what_in(r, c),
                            why,
                        },
                        prop.clone(),
                    ));
                }
            }
        }
        for (i, why) in &self.rules_why {
            out.push((
                Unexpressed {
                    what: rule_what(&self.host.routing.rules[*i]),
                    why: why.clone(),
                },
                None,
            ));
        }
        for (i, why) in &self.routes_why {
            out.push((
                Unexpressed {
                    what: route_what(&self.host.routing.routes[*i]),
                    why: why.clone(),
                },
                None,
            ));
        }
        out
    }

    fn render(mut self) -> Imported {
        // Policies in the order the original's marks decide: rules that end their chain
        // win in file order, the others are overridden by later ones.
        let mut order: Vec<usize> = (0..self.policies.len()).collect();
        order.sort_by_key(|i| {
            let p = &self.policies[*i];
            if p.terminal {
                (0, p.seq as i64)
            } else {
                (1, -(p.seq as i64))
            }
        });
        let policies: Vec<PolicyOut> = order.iter().map(|i| self.policies[*i].clone()).collect();
        let policies = merge_adjacent(policies);

        // Notes about families: a one-family original on a two-family gateway.
        let mut policy_notes: Vec<Vec<String>> = policies.iter().map(|p| p.notes.clone()).collect();
        for (p, notes) in policies.iter().zip(policy_notes.iter_mut()) {
            let gw = &self.gateways[p.gateway];
            let fam_specific = p
                .sel
                .source
                .iter()
                .chain(&p.sel.destination)
                .next()
                .is_some();
            if !fam_specific && p.families.len() == 1 {
                let only = *p.families.iter().next().expect("one");
                let other_via = match only {
                    Family::Inet4 => gw.via6.is_some(),
                    Family::Inet6 => gw.via.is_some(),
                };
                if other_via {
                    notes.push(format!(
                        "the original applied to {} only; this policy covers both families, and the gateway has a next hop for both",
                        fam_word(only)
                    ));
                }
            }
            if p.action == ActionKind::Route
                && p.hooks.len() == 1
                && p.sel.in_interface.is_empty()
                && p.sel.source_mac.is_empty()
            {
                if p.hooks.contains(&Hook::Output) {
                    notes.push("the original applied to connections this host opens (OUTPUT); this policy also covers forwarded ones".into());
                } else {
                    notes.push("the original applied to forwarded connections (PREROUTING); this policy also covers the ones this host opens".into());
                }
            }
        }

        let names = policy_names(&policies, &self.gateways);
        let body = self.render_body(&policies, &policy_notes, &names, None);
        let settings = self.settings(&body);
        let body = if settings.is_empty() {
            body
        } else {
            self.render_body(&policies, &policy_notes, &names, Some(&settings))
        };

        if let Err(e) = crate::config::parse_str(&body, "import") {
            // Never expected: the generator only writes what the config accepts.
            self.notes.push(format!(
                "the generated config does not validate, please report: {e}"
            ));
        }
        let unexpressed = self.unexpressed();
        let mut head = String::new();
        let _ = writeln!(
            head,
            "# symroute.toml made by `symroute import` from {}.",
            self.host.origin
        );
        if !self.host.missing.is_empty() {
            let _ = writeln!(
                head,
                "# Missing from the state (their part was not examined): {}.",
                self.host.missing.join(", ")
            );
        }
        head += "#\n";
        if unexpressed.is_empty() {
            head += "# Everything that steers traffic by marks or ip rules is expressed below.\n";
        } else {
            let _ = writeln!(
                head,
                "# Not expressed ({}): left as they are; symroute neither reads nor changes them.",
                unexpressed.len()
            );
            for (u, prop) in &unexpressed {
                head += "#\n";
                let _ = writeln!(head, "# - {}", u.what);
                head += &wrap(&u.why, "#   ");
                if let Some(p) = prop {
                    head += "#   Proposed instead (uncomment to use):\n";
                    for l in p.lines() {
                        if l.starts_with('#') {
                            let _ = writeln!(head, "#   {}", l.trim_start_matches("# "));
                        } else {
                            let _ = writeln!(head, "#   {l}");
                        }
                    }
                }
            }
        }
        let replaced = self.replaced();
        if !replaced.is_empty() {
            head += "#\n# Replaces these hand-made objects: remove them before `symroute apply`.\n";
            for r in &replaced {
                let _ = writeln!(head, "#   {r}");
            }
        }
        for n in &self.notes {
            head += "#\n";
            head += &wrap(&format!("Note: {n}"), "# ");
        }
        if self.ours_seen {
            head += "#\n# symroute's own objects (table inet symroute, rules and routes with proto 157) were ignored.\n";
        }
        if self.gateways.is_empty() && self.policies.is_empty() && self.divert.is_none() {
            head += "#\n# Nothing here could be expressed: this file configures nothing.\n";
        }
        let toml = format!("{head}{body}");
        Imported {
            toml,
            unexpressed: unexpressed.into_iter().map(|(u, _)| u).collect(),
        }
    }

    /// Hand-made objects the config replaces, quoted.
    fn replaced(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.host.firewall.chains {
            if is_symroute_chain(c) {
                continue;
            }
            for r in &c.rules {
                if self.fw_done.contains(&rid(r)) {
                    out.push(fw_what_in(r, c));
                }
            }
        }
        for i in &self.rules_done {
            out.push(rule_what(&self.host.routing.rules[*i]));
        }
        for i in &self.routes_done {
            out.push(route_what(&self.host.routing.routes[*i]));
        }
        out
    }

    fn render_body(
        &self,
        policies: &[PolicyOut],
        notes: &[Vec<String>],
        names: &[String],
        settings: Option<&str>,
    ) -> String {
        let mut s = String::new();
        if let Some(set) = settings {
            s += "\n";
            s += set;
        }
        for g in &self.gateways {
            s += "\n";
            // (table, fwmark) → families, in rule order.
            let mut from: Vec<(String, String, Vec<&str>)> = Vec::new();
            for i in &g.rules {
                let r = &self.host.routing.rules[*i];
                let (v, m) = r.fwmark.unwrap_or((0, u32::MAX));
                let t = match r.action {
                    RuleAction::Lookup(t) => t,
                    _ => 0,
                };
                let name = Self::table_word(r)
                    .map(|w| format!("{w} ({t})"))
                    .unwrap_or_else(|| t.to_string());
                let mark = fwmark_str(v, m);
                match from.iter_mut().find(|(n, k, _)| *n == name && *k == mark) {
                    Some((_, _, f)) => f.push(fam_word(r.family)),
                    None => from.push((name, mark, vec![fam_word(r.family)])),
                }
            }
            let from: Vec<String> = from
                .into_iter()
                .map(|(n, k, f)| format!("table {n}, looked up by `{k}` ({})", f.join(" and ")))
                .collect();
            s += &wrap(&format!("From {}.", from.join("; ")), "# ");
            for n in &g.notes {
                s += &wrap(&sentence(n), "# ");
            }
            s += "[[gateway]]\n";
            let _ = writeln!(s, "name = {}", q(&g.name));
            let _ = writeln!(s, "interface = {}", q(&g.interface));
            if let Some(v) = g.via {
                let _ = writeln!(s, "via = {}", q(&v.to_string()));
            }
            if let Some(v) = g.via6 {
                let _ = writeln!(s, "via6 = {}", q(&v.to_string()));
            }
        }
        for ((p, n), name) in policies.iter().zip(notes).zip(names) {
            s += "\n";
            for line in n {
                s += &wrap(&sentence(line), "# ");
            }
            s += "[[policy]]\n";
            let _ = writeln!(s, "name = {}", q(name));
            let key = match p.action {
                ActionKind::Reply => "reply_via",
                ActionKind::Route => "route_via",
            };
            let _ = writeln!(s, "{key} = {}", q(&self.gateways[p.gateway].name));
            s += &render_match(&p.sel);
        }
        if let Some(d) = &self.divert {
            s += "\n";
            for n in &d.notes {
                s += &wrap(&sentence(n), "# ");
            }
            s += "[[divert]]\n";
            s += "name = \"divert\"\n";
            if !d.any_protocol {
                let v: Vec<&String> = d.protocols.iter().collect();
                if let [one] = v.as_slice() {
                    let _ = writeln!(s, "protocol = {}", q(one));
                } else {
                    let _ = writeln!(
                        s,
                        "protocol = [{}]",
                        v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        s
    }

    /// `[settings]` text when the defaults collide with what stays on the host ("" if not).
    fn settings(&mut self, body: &str) -> String {
        let Ok(model) = crate::config::parse_str(body, "import") else {
            return String::new();
        };
        let needed = crate::plan::alloc::values_needed(&model).max(1) as u32;
        let mut lines = String::new();
        if self.kept_bits & DEFAULT_MASK != 0 {
            if let Some(mask) = choose_mask(self.kept_bits, needed) {
                let from: Vec<String> = self
                    .kept_bits_from
                    .iter()
                    .filter(|(_, b)| b & DEFAULT_MASK != 0)
                    .take(3)
                    .map(|(w, _)| w.clone())
                    .collect();
                lines += &wrap(
                    &format!(
                        "mark_mask: what stays on this host uses mark bits {:#010x}, inside symroute's default mask 0xff000000 (e.g. {}); {:#010x} is free and holds the {needed} value(s) this file needs.",
                        self.kept_bits & DEFAULT_MASK,
                        from.join("; "),
                        mask
                    ),
                    "# ",
                );
                let _ = writeln!(lines, "mark_mask = \"{mask:#010x}\"");
                self.mask = mask;
            } else {
                lines += &wrap(
                    &format!(
                        "mark_mask: what stays on this host uses mark bits {:#010x}, inside symroute's default mask, and no other run of free bits holds {needed} values; the default is kept and `symroute apply` will name the conflicting rules.",
                        self.kept_bits & DEFAULT_MASK
                    ),
                    "# ",
                );
            }
        }
        // Priorities and tables of what stays.
        let plan = crate::plan::build(&model, &self.host.host_view());
        let kept_prios: BTreeSet<u32> = self
            .host
            .routing
            .rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                !r.is_default() && !Self::ours(&r.protocol) && !self.rules_done.contains(i)
            })
            .map(|(_, r)| r.priority)
            .collect();
        let kept_tables: BTreeSet<u32> = self
            .host
            .routing
            .routes
            .iter()
            .enumerate()
            .filter(|(i, r)| !Self::ours(&r.protocol) && !self.routes_done.contains(i))
            .map(|(_, r)| r.table)
            .collect();
        let np = plan.priorities.len().max(1) as u32;
        let nt = plan.tables.len().max(1) as u32;
        if plan
            .priorities
            .iter()
            .any(|p| kept_prios.contains(&p.get()))
        {
            let free = (DEFAULT_FIRST_PRIORITY..32000 - 600)
                .step_by(100)
                .find(|p| (*p..p + np + 16).all(|x| !kept_prios.contains(&x)));
            if let Some(p) = free {
                lines += &wrap(
                    &format!("first_priority: rules that stay on this host use priorities in symroute's default range {DEFAULT_FIRST_PRIORITY}+; {p}+ is free."),
                    "# ",
                );
                let _ = writeln!(lines, "first_priority = {p}");
            }
        }
        if plan.tables.iter().any(|t| kept_tables.contains(&t.id())) {
            let free = (DEFAULT_FIRST_TABLE..u32::MAX - 1024)
                .step_by(1000)
                .find(|t| (*t..t + nt + 16).all(|x| !kept_tables.contains(&x)));
            if let Some(t) = free {
                lines += &wrap(
                    &format!("first_table: routes that stay on this host use tables in symroute's default range {DEFAULT_FIRST_TABLE}+; {t}+ is free."),
                    "# ",
                );
                let _ = writeln!(lines, "first_table = {t}");
            }
        }
        if lines.is_empty() {
            String::new()
        } else {
            format!("[settings]\n{lines}")
        }
    }
}

/// A note as a sentence: capital first letter, final period.
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => return String::new(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

fn fam_word(f: Family) -> &'static str {
    match f {
        Family::Inet4 => "IPv4",
        Family::Inet6 => "IPv6",
    }
}

fn one_line(s: &str) -> String {
    s.replace('\t', " ").trim_end().to_string()
}

fn is_skip_marked(r: &Rule) -> bool {
    matches!(r.verdict, Verdict::Return | Verdict::Accept)
        && r.stmts.iter().all(|s| matches!(s, Stmt::Counter | Stmt::Log))
        && !r.matches.is_empty()
        && r.matches.iter().all(|m| {
            matches!(m, Match::Mark { op: Op::Ne, values, .. } if values.as_slice() == [(0, 0)])
        })
}

/// The mark statement of a rule, as written (`-j MARK --set-xmark 0x0/0xffffffff`,
/// `meta mark set 0x00000000`).
fn mark_stmt_text(r: &Rule) -> String {
    if let Some(p) = r.text.find("-j ") {
        return r.text[p..].to_string();
    }
    for s in &r.stmts {
        if let Stmt::SetMark { .. } = s {
            return s.to_string();
        }
    }
    r.text.clone()
}

fn describe_service(s: &Sel) -> String {
    let mut parts = Vec::new();
    if !s.protocol.is_empty() {
        parts.push(s.protocol.join("/"));
    }
    if !s.destination_port.is_empty() {
        parts.push(format!(
            "destination port {}",
            s.destination_port
                .iter()
                .map(|(a, b)| if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    parts.join(" ")
}

/// Walks one chain for one hook, recording every rule with the conditions on the way.
#[allow(clippy::too_many_arguments)]
fn walk<'a>(
    host: &'a HostState,
    chain: &'a Chain,
    hook: Hook,
    base: usize,
    seq: &mut usize,
    via: &[&'a Rule],
    ctx: &[Match],
    excl: &[&'a Rule],
    in_base: bool,
    stack: &mut Vec<*const Chain>,
    out: &mut Vec<Visit<'a>>,
) {
    let mut local_excl: Vec<&'a Rule> = excl.to_vec();
    for rule in &chain.rules {
        *seq += 1;
        out.push(Visit {
            rule,
            chain,
            hook,
            base,
            seq: *seq,
            via: via.to_vec(),
            ctx: ctx.to_vec(),
            excl: local_excl.clone(),
            in_base,
        });
        let mut descend = |target: &str, extra: Option<&Match>, seq: &mut usize| {
            let Some(child) = host.firewall.chain(chain.family, &chain.table, target) else {
                return;
            };
            let p = child as *const Chain;
            if stack.len() >= 16 || stack.contains(&p) {
                return;
            }
            let mut via2 = via.to_vec();
            via2.push(rule);
            let mut ctx2 = ctx.to_vec();
            ctx2.extend(rule.matches.iter().cloned());
            if let Some(m) = extra {
                ctx2.push(m.clone());
            }
            stack.push(p);
            walk(
                host,
                child,
                hook,
                base,
                seq,
                &via2,
                &ctx2,
                &local_excl,
                false,
                stack,
                out,
            );
            stack.pop();
        };
        match &rule.verdict {
            Verdict::Jump(t) | Verdict::Goto(t) => descend(t, None, seq),
            Verdict::Vmap(vm) => {
                for e in &vm.entries {
                    if let Verdict::Jump(t) | Verdict::Goto(t) = &e.verdict {
                        descend(t, Some(&e.key), seq);
                    }
                }
            }
            _ => {}
        }
        let ends = match &rule.verdict {
            Verdict::Jump(t) => host
                .firewall
                .chain(chain.family, &chain.table, t)
                .is_some_and(|c| {
                    c.rules.iter().any(|r| {
                        r.matches.is_empty() && matches!(r.verdict, Verdict::Accept | Verdict::Drop)
                    })
                }),
            Verdict::Vmap(vm) => vm.entries.iter().any(|e| terminal_verdict(&e.verdict)),
            v => terminal_verdict(v),
        };
        if ends {
            local_excl.push(rule);
        }
    }
}

/// Policies next to each other that differ only in one positive list merge into one.
fn merge_adjacent(ps: Vec<PolicyOut>) -> Vec<PolicyOut> {
    let mut out: Vec<PolicyOut> = Vec::new();
    for p in ps {
        if let Some(last) = out.last_mut() {
            if last.action == p.action
                && last.gateway == p.gateway
                && last.hooks == p.hooks
                && last.notes == p.notes
            {
                if let Some(merged) = merge_sel(&last.sel, &p.sel) {
                    last.sel = merged;
                    last.families.extend(p.families.iter().copied());
                    continue;
                }
            }
        }
        out.push(p);
    }
    out
}

fn merge_sel(a: &Sel, b: &Sel) -> Option<Sel> {
    let mut m = a.clone();
    let diffs = [
        a.in_interface != b.in_interface,
        a.source_mac != b.source_mac,
        a.source != b.source,
        a.destination != b.destination,
        a.protocol != b.protocol,
        a.source_port != b.source_port,
        a.destination_port != b.destination_port,
    ];
    if a.not_source != b.not_source || a.not_destination != b.not_destination {
        return None;
    }
    if diffs.iter().filter(|d| **d).count() != 1 {
        return None;
    }
    fn union<T: Clone + PartialEq>(x: &mut Vec<T>, y: &[T]) -> bool {
        if x.is_empty() || y.is_empty() {
            return false;
        }
        for i in y {
            if !x.contains(i) {
                x.push(i.clone());
            }
        }
        true
    }
    let ok = if diffs[0] {
        union(&mut m.in_interface, &b.in_interface)
    } else if diffs[1] {
        union(&mut m.source_mac, &b.source_mac)
    } else if diffs[2] {
        union(&mut m.source, &b.source)
    } else if diffs[3] {
        union(&mut m.destination, &b.destination)
    } else if diffs[4] {
        // Ports belong to their protocol: only merge protocols without ports.
        a.source_port.is_empty()
            && a.destination_port.is_empty()
            && union(&mut m.protocol, &b.protocol)
    } else if diffs[5] {
        union(&mut m.source_port, &b.source_port)
    } else {
        union(&mut m.destination_port, &b.destination_port)
    };
    ok.then_some(m)
}

fn policy_names(ps: &[PolicyOut], gws: &[GatewayOut]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in ps {
        let base = format!(
            "{}-{}",
            match p.action {
                ActionKind::Reply => "reply-via",
                ActionKind::Route => "route-via",
            },
            gws[p.gateway].name
        );
        let base: String = base.chars().take(60).collect();
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn render_match(sel: &Sel) -> String {
    if sel.is_empty() {
        return String::new();
    }
    let mut s = String::from("[policy.match]\n");
    let strs = |v: &[String]| v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
    let nets = |v: &[IpNet]| {
        v.iter()
            .map(|n| q(&n.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ports = |v: &[(u16, u16)]| {
        v.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    q(&format!("{a}-{b}"))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let one_or_list = |v: &[String]| {
        if let [one] = v {
            q(one)
        } else {
            format!("[{}]", strs(v))
        }
    };
    if !sel.in_interface.is_empty() {
        let _ = writeln!(s, "in_interface = {}", one_or_list(&sel.in_interface));
    }
    if !sel.source_mac.is_empty() {
        let _ = writeln!(s, "source_mac = [{}]", strs(&sel.source_mac));
    }
    if !sel.source.is_empty() {
        let _ = writeln!(s, "source = [{}]", nets(&sel.source));
    }
    if !sel.not_source.is_empty() {
        let _ = writeln!(s, "not_source = [{}]", nets(&sel.not_source));
    }
    if !sel.destination.is_empty() {
        let _ = writeln!(s, "destination = [{}]", nets(&sel.destination));
    }
    if !sel.not_destination.is_empty() {
        let _ = writeln!(s, "not_destination = [{}]", nets(&sel.not_destination));
    }
    if !sel.protocol.is_empty() {
        let _ = writeln!(s, "protocol = {}", one_or_list(&sel.protocol));
    }
    if !sel.source_port.is_empty() {
        let _ = writeln!(s, "source_port = [{}]", ports(&sel.source_port));
    }
    if !sel.destination_port.is_empty() {
        let _ = writeln!(s, "destination_port = [{}]", ports(&sel.destination_port));
    }
    s
}

/// Words wrapped at 90 columns, each line starting with `prefix`.
fn wrap(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && prefix.len() + line.len() + 1 + w.len() > 90 {
            let _ = writeln!(out, "{prefix}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{prefix}{line}");
    }
    out
}

/// A contiguous mask avoiding `used`, holding `needed` values: within the default mask's
/// bits first (widest, then highest), then anywhere away from other tools' known bits,
/// then anywhere.
fn choose_mask(used: u32, needed: u32) -> Option<u32> {
    let min_w = (1..=32u32).find(|w| (1u64 << w) > u64::from(needed))?;
    for avoid in [used | !DEFAULT_MASK, used | WELL_KNOWN_BITS, used] {
        for w in (min_w..=8.max(min_w)).rev() {
            for low in (0..=(32 - w)).rev() {
                let mask = (((1u64 << w) - 1) << low) as u32;
                if mask & avoid == 0 {
                    return Some(mask);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(files: &[(&str, &str)]) -> HostState {
        let map = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HostState::from_files(&map, Vec::new(), "test").expect("parses")
    }

    const GW_RULES: &str = "0:\tfrom all lookup local\n100:\tfrom all fwmark 0x1 lookup 201\n32766:\tfrom all lookup main\n";
    const GW_ROUTES: &str =
        "default via 203.0.113.1 dev up1 table 201 \ndefault via 198.51.100.1 dev up2 \n";

    #[test]
    fn masks_avoid_used_bits() {
        assert_eq!(choose_mask(0, 3), Some(0xff00_0000));
        assert_eq!(choose_mask(0x1000_0000, 3), Some(0x0f00_0000));
        // 20 values need 5 bits: none free in 0xff000000 or away from other tools' bits,
        // so the last resort is any free run.
        assert_eq!(choose_mask(0x1000_0000, 20), Some(0x0ff0_0000));
        assert_eq!(choose_mask(u32::MAX, 1), None);
        assert_eq!(complement_ports(&[(25, 25)]), vec![(1, 24), (26, 65535)]);
    }

    #[test]
    fn a_one_family_exemption_in_an_inet_chain_is_not_widened() {
        // `ip saddr != 10.0.0.0/8 return` exempts IPv4 packets only; `source = 10/8` would
        // also drop every IPv6 connection.
        let nft = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
            {"chain": {"family": "inet", "table": "t", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "t", "name": "out", "handle": 2, "type": "route", "hook": "output", "prio": -150, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 3, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}},
            {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 4, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"return": null}]}},
            {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "up1"}}, {"mangle": {"key": {"ct": {"key": "mark"}}, "value": 1}}]}},
            {"rule": {"family": "inet", "table": "t", "chain": "out", "handle": 6, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}]}}]}"#;
        let out = import(&state(&[
            ("ip-rule.txt", GW_RULES),
            ("ip-route.txt", GW_ROUTES),
            ("nft.json", nft),
        ]));
        let u = out
            .unexpressed
            .iter()
            .find(|u| u.what.contains("ct mark set"))
            .unwrap_or_else(|| panic!("{}", out.toml));
        assert!(u.why.contains("for one family only"), "{}", u.why);
        assert!(!out.toml.contains("\n[[policy]]"), "{}", out.toml);
        // The mark rule it needs stays.
        assert!(out
            .report()
            .contains("ip rule: 100: from all fwmark 0x1 lookup 201"));
    }

    #[test]
    fn an_exemption_of_one_family_is_fine_in_that_family() {
        // The same exemption in iptables (IPv4 only) is exact: source = 10/8 there.
        let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            -A PREROUTING -j CONNMARK --restore-mark\n\
            -A PREROUTING ! -s 10.0.0.0/8 -j RETURN\n\
            -A PREROUTING -i up1 -j CONNMARK --set-mark 1\n\
            -A OUTPUT -j CONNMARK --restore-mark\nCOMMIT\n";
        let out = import(&state(&[
            ("ip-rule.txt", GW_RULES),
            ("ip-route.txt", GW_ROUTES),
            ("iptables-save.txt", ipt),
        ]));
        assert!(out.unexpressed.is_empty(), "{}", out.report());
        assert!(
            out.toml
                .contains("[policy.match]\nin_interface = \"up1\"\nsource = [\"10.0.0.0/8\"]\n"),
            "{}",
            out.toml
        );
    }

    #[test]
    fn tproxy_is_not_a_divert() {
        let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n\
            -A PREROUTING -p tcp -m tcp --dport 80 -j TPROXY --on-port 3129 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1\nCOMMIT\n";
        let out = import(&state(&[
            (
                "ip-rule.txt",
                "0:\tfrom all lookup local\n100:\tfrom all fwmark 0x1/0x1 lookup 100\n32766:\tfrom all lookup main\n",
            ),
            ("ip-route.txt", "local default dev lo table 100 scope host \n"),
            ("iptables-save.txt", ipt),
        ]));
        assert_eq!(out.unexpressed.len(), 2, "{}", out.report());
        assert!(out.unexpressed[0].why.starts_with("TPROXY redirects"));
        assert!(
            out.unexpressed[1].why.starts_with("kept for"),
            "{}",
            out.report()
        );
        assert!(!out.toml.contains("[[divert]]"));
    }

    #[test]
    fn per_packet_marks_in_output_become_route_via_with_notes() {
        let ipt = "*mangle\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            -A OUTPUT -p udp -m udp --dport 53 -j MARK --set-xmark 0x1/0xffffffff\nCOMMIT\n";
        let out = import(&state(&[
            ("ip-rule.txt", GW_RULES),
            ("ip-route.txt", GW_ROUTES),
            ("iptables-save.txt", ipt),
        ]));
        assert!(out.unexpressed.is_empty(), "{}", out.report());
        assert!(
            out.toml.contains("route_via = \"table-201\""),
            "{}",
            out.toml
        );
        assert!(
            out.toml.contains("marked matching packets one by one"),
            "{}",
            out.toml
        );
        assert!(
            out.toml.contains("connections this host opens (OUTPUT)"),
            "{}",
            out.toml
        );
        crate::config::parse_str(&out.toml, "t").expect("valid");
    }
}
