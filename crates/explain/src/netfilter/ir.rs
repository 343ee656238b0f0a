//! The netfilter IR: what a firewall does to a packet's mark, its connection's mark and
//! its addresses, whatever the rules were written in (nft, iptables-nft, iptables-legacy,
//! symroute's own rendering). Only what matters before (and right after) routing is
//! modelled; everything else is kept as `Unknown` text so nothing is silently lost.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::inert::inert;
use symroute_core::model::{Family, IpProto};

/// A netfilter table family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NfFamily {
    Ip,
    Ip6,
    Inet,
    Arp,
    Bridge,
    Netdev,
}

impl NfFamily {
    pub fn parse(s: &str) -> Option<NfFamily> {
        Some(match s {
            "ip" => NfFamily::Ip,
            "ip6" => NfFamily::Ip6,
            "inet" => NfFamily::Inet,
            "arp" => NfFamily::Arp,
            "bridge" => NfFamily::Bridge,
            "netdev" => NfFamily::Netdev,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NfFamily::Ip => "ip",
            NfFamily::Ip6 => "ip6",
            NfFamily::Inet => "inet",
            NfFamily::Arp => "arp",
            NfFamily::Bridge => "bridge",
            NfFamily::Netdev => "netdev",
        }
    }

    /// Whether chains of this family see IP packets of `family` (at the IP hooks).
    pub fn covers(self, family: Family) -> bool {
        matches!(
            (self, family),
            (NfFamily::Inet, _) | (NfFamily::Ip, Family::Inet4) | (NfFamily::Ip6, Family::Inet6)
        )
    }

    /// The table family of one IP family (what iptables / ip6tables use).
    pub fn of(family: Family) -> NfFamily {
        match family {
            Family::Inet4 => NfFamily::Ip,
            Family::Inet6 => NfFamily::Ip6,
        }
    }
}

impl fmt::Display for NfFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Netfilter hooks. `Ingress`/`Egress` exist only so netdev chains can be represented;
/// the evaluator is asked about the five IP hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Egress,
}

impl Hook {
    pub fn parse(s: &str) -> Option<Hook> {
        Some(match s.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            "ingress" => Hook::Ingress,
            "egress" => Hook::Egress,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    /// Whether the routing decision for a packet at this hook is already made.
    pub fn after_routing(self) -> bool {
        matches!(self, Hook::Input | Hook::Forward | Hook::Postrouting)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    Filter,
    /// `type route` (and iptables' mangle OUTPUT): a changed mark or address re-routes.
    Route,
    /// Only a connection's first packet traverses it.
    Nat,
}

impl ChainKind {
    pub fn parse(s: &str) -> Option<ChainKind> {
        Some(match s {
            "filter" => ChainKind::Filter,
            "route" => ChainKind::Route,
            "nat" => ChainKind::Nat,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Route => "route",
            ChainKind::Nat => "nat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: where it hooks in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Base {
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainKind,
    /// What happens to a packet that reaches the end of the base chain (or returns from it).
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub family: NfFamily,
    pub table: String,
    pub name: String,
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// `ip mangle PREROUTING`, `inet symroute pre`.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }
}

/// Every chain of every table that was read, in listing order (which breaks priority ties).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    /// What the converter left out or could not read, one sentence each (e.g. an
    /// iptables-nft table left to the iptables-save converter).
    pub notes: Vec<String>,
}

impl Ruleset {
    /// Appends `other`'s chains (and notes) after this ruleset's.
    pub fn extend(&mut self, other: Ruleset) {
        self.chains.extend(other.chains);
        self.notes.extend(other.notes);
    }

    pub fn chain(&self, family: NfFamily, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// All must match (an `Unknown` one makes the rule "maybe").
    pub matches: Vec<Match>,
    /// Run in order when the rule matches.
    pub stmts: Vec<Stmt>,
    pub verdict: Verdict,
    pub origin: Origin,
    /// The rule as its author wrote it (iptables-save line verbatim; for nft JSON an
    /// nft-like rendering of the expressions; for symroute's text the line).
    pub text: String,
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Origin {
    Nft {
        family: NfFamily,
        table: String,
        chain: String,
        /// From `nft -j list ruleset`.
        handle: Option<u64>,
        /// From nft text (symroute's rendering).
        line: Option<usize>,
    },
    Iptables {
        /// `iptables-save` or `ip6tables-save`.
        tool: String,
        table: String,
        chain: String,
        /// 1-based line in the save output.
        line: usize,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Nft {
                family,
                table,
                chain,
                handle,
                line,
            } => {
                // Names are host text: spelled inert, so a message naming the chain stays
                // on its line and sends the terminal nothing.
                let (table, chain) = (inert(table), inert(chain));
                write!(f, "nft table {family} {table} chain {chain}")?;
                if let Some(h) = handle {
                    write!(f, " handle {h}")?;
                }
                if let Some(l) = line {
                    write!(f, " (line {l})")?;
                }
                Ok(())
            }
            Origin::Iptables {
                tool,
                table,
                chain,
                line,
            } => write!(
                f,
                "{tool} -t {} chain {} (line {line})",
                inert(table),
                inert(chain)
            ),
        }
    }
}

/// `==` or `!=`. For lists and sets, `==` means "is one of".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    pub fn negated(self) -> bool {
        self == Op::Ne
    }
    pub fn from_negate(negate: bool) -> Op {
        if negate {
            Op::Ne
        } else {
            Op::Eq
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    pub fn parse(s: &str) -> Option<CtState> {
        Some(match s.to_ascii_lowercase().as_str() {
            "new" => CtState::New,
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            "untracked" => CtState::Untracked,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
            CtState::Untracked => "untracked",
        }
    }
    /// Whether a conntrack entry (with a mark and a direction) exists in this state.
    pub fn has_entry(self) -> bool {
        !matches!(self, CtState::Invalid | CtState::Untracked)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CtDirection {
    Original,
    Reply,
}

impl CtDirection {
    pub fn parse(s: &str) -> Option<CtDirection> {
        Some(match s.to_ascii_lowercase().as_str() {
            "original" => CtDirection::Original,
            "reply" => CtDirection::Reply,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            CtDirection::Original => "original",
            CtDirection::Reply => "reply",
        }
    }
}

/// One address item of a match or set: a prefix (a host is a full-length prefix) or an
/// inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrItem {
    Net(IpNet),
    Range(IpAddr, IpAddr),
}

impl AddrItem {
    pub fn contains(&self, a: &IpAddr) -> bool {
        match self {
            AddrItem::Net(n) => n.contains(a),
            AddrItem::Range(lo, hi) => match (lo, hi, a) {
                (IpAddr::V4(l), IpAddr::V4(h), IpAddr::V4(x)) => l <= x && x <= h,
                (IpAddr::V6(l), IpAddr::V6(h), IpAddr::V6(x)) => l <= x && x <= h,
                _ => false,
            },
        }
    }
    pub fn family(&self) -> Family {
        match self {
            AddrItem::Net(n) => Family::of(&n.addr()),
            AddrItem::Range(a, _) => Family::of(a),
        }
    }
}

impl fmt::Display for AddrItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrItem::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            AddrItem::Net(n) => write!(f, "{n}"),
            AddrItem::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

impl Serialize for AddrItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which mark: the packet's (`meta mark`, `skb->mark`) or its connection's (`ct mark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKey {
    Meta,
    Ct,
}

impl MarkKey {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKey::Meta => "meta mark",
            MarkKey::Ct => "ct mark",
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "match", rename_all = "snake_case")]
pub enum Match {
    /// Interface names; a trailing `*` is a prefix wildcard (iptables' `+`).
    Iifname {
        op: Op,
        names: Vec<String>,
    },
    Oifname {
        op: Op,
        names: Vec<String>,
    },
    /// Lower-case `02:03:04:05:06:07`.
    EtherSaddr {
        op: Op,
        macs: Vec<String>,
    },
    /// `ip saddr` / `ip6 saddr`: never matches a packet of the other family (not even `!=`).
    Saddr {
        family: Family,
        op: Op,
        addrs: Vec<AddrItem>,
    },
    Daddr {
        family: Family,
        op: Op,
        addrs: Vec<AddrItem>,
    },
    /// IP protocol numbers (6 tcp, 17 udp, …).
    L4proto {
        op: Op,
        protos: Vec<u8>,
    },
    /// Inclusive ranges; never matches a packet without ports.
    Sport {
        op: Op,
        ports: Vec<(u16, u16)>,
    },
    Dport {
        op: Op,
        ports: Vec<(u16, u16)>,
    },
    /// `(mark & mask)` is (`==`) or is not (`!=`) in one of the inclusive ranges.
    Mark {
        key: MarkKey,
        mask: u32,
        op: Op,
        values: Vec<(u32, u32)>,
    },
    CtState {
        op: Op,
        states: Vec<CtState>,
    },
    CtDirection {
        op: Op,
        direction: CtDirection,
    },
    /// A local socket matches the packet; `Some(true)`: a transparent one
    /// (`socket transparent 1`, `-m socket --transparent`), `None`: any (`-m socket`).
    Socket {
        transparent: Option<bool>,
    },
    Nfproto {
        family: Family,
    },
    /// `meta skuid`: the sending socket's owner is in one of the inclusive ranges. Never
    /// matches a packet without a local socket (one that arrived).
    Skuid {
        op: Op,
        uids: Vec<(u32, u32)>,
    },
    /// `socket cgroupv2 level N VALUE`: the sending socket's cgroup, at level N below the
    /// cgroup2 root, is one of `paths`, written as nft writes them: relative to
    /// /sys/fs/cgroup (`unified/system.slice/backup.service` on a hybrid host), or a bare
    /// id when nft found no cgroup with it. `level` is `None` when read from nft's JSON,
    /// which leaves it out; a path's depth below the root is its level anyway.
    Cgroupv2 {
        op: Op,
        level: Option<u32>,
        paths: Vec<String>,
    },
    /// `numgen random mod MODULUS` is in one of the inclusive ranges: a random share.
    /// Evaluated as if the number drawn were 0 (the first branch of a share's map).
    Numgen {
        modulus: u32,
        values: Vec<(u32, u32)>,
    },
    /// Anything else, as text. Makes the rule "maybe": assumed not to match.
    Unknown(String),
}

/// The operand of a mark assignment other than a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkSource {
    Const,
    Meta,
    Ct,
}

/// A second source mixed in: `^ (key & mask)`. Only CONNMARK `--save-mark` /
/// `--restore-mark` with partial masks need it (nft 1.0.x cannot combine two registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct MarkMix {
    pub key: MarkKey,
    pub mask: u32,
}

/// `((source & and_mask) | or_bits) ^ xor_bits [^ (mix.key & mix.mask)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct MarkExpr {
    pub source: MarkSource,
    pub and_mask: u32,
    pub or_bits: u32,
    pub xor_bits: u32,
    pub mix: Option<MarkMix>,
}

/// Any mark expression over `&`, `|`, `^` and constants is, bit by bit, linear:
/// `(meta & m) ^ (ct & c) ^ k`. Used to compose and normalise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lin {
    pub meta: u32,
    pub ct: u32,
    pub k: u32,
}

impl Lin {
    pub fn konst(k: u32) -> Lin {
        Lin { meta: 0, ct: 0, k }
    }
    pub fn key(key: MarkKey) -> Lin {
        match key {
            MarkKey::Meta => Lin {
                meta: u32::MAX,
                ct: 0,
                k: 0,
            },
            MarkKey::Ct => Lin {
                meta: 0,
                ct: u32::MAX,
                k: 0,
            },
        }
    }
    pub fn is_const(self) -> bool {
        self.meta == 0 && self.ct == 0
    }
    pub fn and(self, c: u32) -> Lin {
        Lin {
            meta: self.meta & c,
            ct: self.ct & c,
            k: self.k & c,
        }
    }
    pub fn xor(self, o: Lin) -> Lin {
        Lin {
            meta: self.meta ^ o.meta,
            ct: self.ct ^ o.ct,
            k: self.k ^ o.k,
        }
    }
    pub fn or_const(self, c: u32) -> Lin {
        Lin {
            meta: self.meta & !c,
            ct: self.ct & !c,
            k: self.k | c,
        }
    }
    /// `a | b`: linear only if the two never set the same bit.
    pub fn or(self, o: Lin) -> Option<Lin> {
        if o.is_const() {
            return Some(self.or_const(o.k));
        }
        if self.is_const() {
            return Some(o.or_const(self.k));
        }
        let support = |l: Lin| l.meta | l.ct | l.k;
        (support(self) & support(o) == 0).then(|| self.xor(o))
    }
    /// `a & b`: linear only if one side is a constant.
    pub fn and_lin(self, o: Lin) -> Option<Lin> {
        if o.is_const() {
            Some(self.and(o.k))
        } else if self.is_const() {
            Some(o.and(self.k))
        } else {
            None
        }
    }
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn eval(self, meta: u32, ct: u32) -> u32 {
        (meta & self.meta) ^ (ct & self.ct) ^ self.k
    }

    /// The readable form; `target` is the mark being assigned (preferred as the main
    /// source when both marks are involved).
    pub fn to_expr(self, target: MarkKey) -> MarkExpr {
        let (source, and_mask, mix) = match (self.meta != 0, self.ct != 0) {
            (false, false) => (MarkSource::Const, 0, None),
            (true, false) => (MarkSource::Meta, self.meta, None),
            (false, true) => (MarkSource::Ct, self.ct, None),
            (true, true) => match target {
                MarkKey::Meta => (
                    MarkSource::Meta,
                    self.meta,
                    Some(MarkMix {
                        key: MarkKey::Ct,
                        mask: self.ct,
                    }),
                ),
                MarkKey::Ct => (
                    MarkSource::Ct,
                    self.ct,
                    Some(MarkMix {
                        key: MarkKey::Meta,
                        mask: self.meta,
                    }),
                ),
            },
        };
        let used = and_mask | mix.map_or(0, |m| m.mask);
        let (or_bits, xor_bits) = if source == MarkSource::Const || self.k & used == 0 {
            (self.k, 0)
        } else {
            (0, self.k)
        };
        MarkExpr {
            source,
            and_mask,
            or_bits,
            xor_bits,
            mix,
        }
    }
}

impl MarkExpr {
    pub fn constant(v: u32) -> MarkExpr {
        Lin::konst(v).to_expr(MarkKey::Meta)
    }

    pub(crate) fn lin(&self) -> Lin {
        let base = match self.source {
            MarkSource::Const => Lin::konst(0),
            MarkSource::Meta => Lin::key(MarkKey::Meta),
            MarkSource::Ct => Lin::key(MarkKey::Ct),
        };
        let mut l = base.and(self.and_mask).or_const(self.or_bits);
        l = l.xor(Lin::konst(self.xor_bits));
        if let Some(m) = self.mix {
            l = l.xor(Lin::key(m.key).and(m.mask));
        }
        l
    }

    /// The value assigned, given the packet's and the connection's marks.
    pub fn eval(&self, meta: u32, ct: u32) -> u32 {
        let src = match self.source {
            MarkSource::Const => 0,
            MarkSource::Meta => meta,
            MarkSource::Ct => ct,
        };
        let mut v = ((src & self.and_mask) | self.or_bits) ^ self.xor_bits;
        if let Some(m) = self.mix {
            let o = match m.key {
                MarkKey::Meta => meta,
                MarkKey::Ct => ct,
            };
            v ^= o & m.mask;
        }
        v
    }

    pub fn reads(&self, key: MarkKey) -> bool {
        let l = self.lin();
        match key {
            MarkKey::Meta => l.meta != 0,
            MarkKey::Ct => l.ct != 0,
        }
    }
}

impl fmt::Display for MarkExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = match self.source {
            MarkSource::Const => return write!(f, "{:#010x}", self.or_bits ^ self.xor_bits),
            MarkSource::Meta => "meta mark",
            MarkSource::Ct => "ct mark",
        };
        let mut s = src.to_string();
        if self.and_mask != u32::MAX {
            s += &format!(" and {:#010x}", self.and_mask);
        }
        if self.or_bits != 0 {
            s += &format!(" or {:#010x}", self.or_bits);
        }
        if self.xor_bits != 0 {
            s += &format!(" xor {:#010x}", self.xor_bits);
        }
        if let Some(m) = self.mix {
            s = format!("({s}) xor ({} and {:#010x})", m.key.as_str(), m.mask);
        }
        f.write_str(&s)
    }
}

/// A NAT target: an address (or range) and/or a port (or range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NatTo {
    pub addr: Option<IpAddr>,
    pub addr_last: Option<IpAddr>,
    pub port: Option<u16>,
    pub port_last: Option<u16>,
}

impl fmt::Display for NatTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = |a: IpAddr| match a {
            IpAddr::V6(_) if self.port.is_some() => format!("[{a}]"),
            _ => a.to_string(),
        };
        if let Some(a) = self.addr {
            f.write_str(&addr(a))?;
            if let Some(b) = self.addr_last {
                write!(f, "-{}", addr(b))?;
            }
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
            if let Some(q) = self.port_last {
                write!(f, "-{q}")?;
            }
        }
        Ok(())
    }
}

/// What a matching rule does besides its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stmt", rename_all = "snake_case")]
pub enum Stmt {
    SetMark {
        key: MarkKey,
        value: MarkExpr,
    },
    /// Changes the destination of a connection's first packet (nat prerouting/output).
    Dnat(NatTo),
    /// DNAT to the incoming interface's primary address (or 127.0.0.1 locally).
    Redirect(NatTo),
    Snat(NatTo),
    Masquerade(NatTo),
    /// Hands the packet to a local (transparent) socket: local delivery.
    Tproxy(NatTo),
    Counter,
    Log,
    /// `update @SET { KEY }`: adds the packet's KEY to a dynamic set (or refreshes its
    /// timeout). Changes nothing about this packet.
    SetUpdate {
        set: String,
        key: String,
    },
    Unknown(String),
}

/// How a rule ends when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "target", rename_all = "snake_case")]
pub enum Verdict {
    Continue,
    Accept,
    /// Also `reject`: the packet is gone.
    Drop,
    Return,
    Jump(String),
    Goto(String),
    Vmap(Vmap),
}

/// `KEY vmap { k1 : v1, … }` ≡ the rules `KEY k1 v1`, … for a single lookup: each entry's
/// key is the match it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vmap {
    /// The key as written (`ct mark and 0xff000000`, `iifname`).
    pub key: String,
    /// The named map, when the rule used `@name` (entries are resolved).
    pub map: Option<String>,
    pub entries: Vec<VmapEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmapEntry {
    pub key: Match,
    /// Never `Vmap`.
    pub verdict: Verdict,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Continue => f.write_str("continue"),
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Vmap(v) => match &v.map {
                Some(m) => write!(f, "{} vmap @{m}", v.key),
                None => write!(f, "{} vmap {{ … }}", v.key),
            },
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        many => format!(
            "{{ {} }}",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn op_str(op: Op) -> &'static str {
    match op {
        Op::Eq => "",
        Op::Ne => "!= ",
    }
}

fn range_str<T>(r: &(T, T), hex: bool) -> String
where
    T: fmt::Display + fmt::LowerHex + PartialEq,
{
    let one = |v: &T| {
        if hex {
            format!("{v:#010x}")
        } else {
            v.to_string()
        }
    };
    if r.0 == r.1 {
        one(&r.0)
    } else {
        format!("{}-{}", one(&r.0), one(&r.1))
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |n: &Vec<String>| n.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>();
        match self {
            Match::Iifname { op, names } => {
                write!(f, "iifname {}{}", op_str(*op), list(&quoted(names)))
            }
            Match::Oifname { op, names } => {
                write!(f, "oifname {}{}", op_str(*op), list(&quoted(names)))
            }
            Match::EtherSaddr { op, macs } => {
                write!(f, "ether saddr {}{}", op_str(*op), list(macs))
            }
            Match::Saddr { family, op, addrs } | Match::Daddr { family, op, addrs } => {
                let p = if *family == Family::Inet4 {
                    "ip"
                } else {
                    "ip6"
                };
                let which = if matches!(self, Match::Saddr { .. }) {
                    "saddr"
                } else {
                    "daddr"
                };
                write!(f, "{p} {which} {}{}", op_str(*op), list(addrs))
            }
            Match::L4proto { op, protos } => {
                let names: Vec<String> = protos.iter().map(|p| IpProto(*p).to_string()).collect();
                write!(f, "meta l4proto {}{}", op_str(*op), list(&names))
            }
            Match::Sport { op, ports } | Match::Dport { op, ports } => {
                let which = if matches!(self, Match::Sport { .. }) {
                    "sport"
                } else {
                    "dport"
                };
                let items: Vec<String> = ports.iter().map(|r| range_str(r, false)).collect();
                write!(f, "th {which} {}{}", op_str(*op), list(&items))
            }
            Match::Mark {
                key,
                mask,
                op,
                values,
            } => {
                let items: Vec<String> = values.iter().map(|r| range_str(r, true)).collect();
                let op = match op {
                    Op::Eq => "==",
                    Op::Ne => "!=",
                };
                if *mask == u32::MAX {
                    write!(f, "{} {op} {}", key.as_str(), list(&items))
                } else {
                    write!(f, "{} and {mask:#010x} {op} {}", key.as_str(), list(&items))
                }
            }
            Match::CtState { op, states } => {
                let s: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
                write!(f, "ct state {}{}", op_str(*op), s.join(","))
            }
            Match::CtDirection { op, direction } => {
                write!(f, "ct direction {}{}", op_str(*op), direction.as_str())
            }
            Match::Socket { transparent } => match transparent {
                Some(t) => write!(f, "socket transparent {}", u8::from(*t)),
                None => f.write_str("socket exists"),
            },
            Match::Nfproto { family } => write!(f, "meta nfproto {family}"),
            Match::Numgen { modulus, values } => {
                let items: Vec<String> = values.iter().map(|r| range_str(r, false)).collect();
                write!(f, "numgen random mod {modulus} {}", list(&items))
            }
            Match::Skuid { op, uids } => {
                let items: Vec<String> = uids.iter().map(|r| range_str(r, false)).collect();
                write!(f, "meta skuid {}{}", op_str(*op), list(&items))
            }
            Match::Cgroupv2 { op, level, paths } => {
                let items: Vec<String> = paths
                    .iter()
                    .map(|p| {
                        if p.bytes().all(|b| b.is_ascii_digit()) {
                            p.clone()
                        } else {
                            format!("\"{p}\"")
                        }
                    })
                    .collect();
                match level {
                    Some(l) => write!(
                        f,
                        "socket cgroupv2 level {l} {}{}",
                        op_str(*op),
                        list(&items)
                    ),
                    None => write!(f, "socket cgroupv2 {}{}", op_str(*op), list(&items)),
                }
            }
            Match::Unknown(s) => f.write_str(s),
        }
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::SetMark { key, value } => write!(f, "{} set {value}", key.as_str()),
            Stmt::Dnat(t) => write!(f, "dnat to {t}"),
            Stmt::Redirect(t) => write!(f, "redirect to {t}"),
            Stmt::Snat(t) => write!(f, "snat to {t}"),
            Stmt::Masquerade(t) if t.port.is_some() => write!(f, "masquerade to {t}"),
            Stmt::Masquerade(_) => f.write_str("masquerade"),
            Stmt::Tproxy(t) => write!(f, "tproxy to {t}"),
            Stmt::Counter => f.write_str("counter"),
            Stmt::Log => f.write_str("log"),
            Stmt::SetUpdate { set, key } => write!(f, "update @{set} {{ {key} }}"),
            Stmt::Unknown(s) => f.write_str(s),
        }
    }
}

impl Rule {
    /// The IR rendered back as one nft-like line (for rules built in code).
    pub fn render(matches: &[Match], stmts: &[Stmt], verdict: &Verdict) -> String {
        let mut parts: Vec<String> = matches.iter().map(ToString::to_string).collect();
        parts.extend(stmts.iter().map(ToString::to_string));
        if *verdict != Verdict::Continue {
            parts.push(verdict.to_string());
        }
        parts.join(" ")
    }
}

/// Lower-case, colon-separated MAC, or None.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = Vec::with_capacity(6);
    for p in parts {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        out.push(format!("{:02x}", u8::from_str_radix(p, 16).ok()?));
    }
    Some(out.join(":"))
}

/// `0x1f`, `31`: a 32-bit number.
pub fn parse_u32(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `10.0.0.0/8`, `1.2.3.4`, `2001:db8::/32`, `1.2.3.4-1.2.3.9`.
pub fn parse_addr_item(s: &str) -> Option<AddrItem> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(AddrItem::Net(n.trunc()));
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(AddrItem::Net(IpNet::from(a)));
    }
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.parse::<IpAddr>().ok()?, b.parse::<IpAddr>().ok()?);
    (Family::of(&a) == Family::of(&b)).then_some(AddrItem::Range(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_forms_round_trip() {
        // symroute's rendering: ct mark set ct mark and 0x00ffffff or 0x01000000
        let l = Lin::key(MarkKey::Ct).and(0x00ff_ffff).or_const(0x0100_0000);
        let e = l.to_expr(MarkKey::Ct);
        assert_eq!(e.to_string(), "ct mark and 0x00ffffff or 0x01000000");
        // nft's JSON of the same: (ct mark & 0x01ffffff) | 0x01000000
        let j = Lin::key(MarkKey::Ct).and(0x01ff_ffff).or_const(0x0100_0000);
        assert_eq!(j, l);
        for (m, c) in [(0, 0), (0xdead_beef, 0x1234_5678), (u32::MAX, u32::MAX)] {
            assert_eq!(e.eval(m, c), l.eval(m, c));
            assert_eq!(e.lin().eval(m, c), l.eval(m, c));
        }
        // CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff
        let r = Lin {
            meta: !0xff,
            ct: 0xff,
            k: 0,
        }
        .to_expr(MarkKey::Meta);
        assert_eq!(r.eval(0x1234_5600, 0xab), 0x1234_56ab);
        assert_eq!(r.eval(0x1234_56ff, 0x00), 0x1234_5600);
        assert!(r.to_string().contains("ct mark and 0x000000ff"), "{r}");
    }

    #[test]
    fn helpers_parse() {
        assert_eq!(
            normalize_mac("0A:09:08:07:06:05").as_deref(),
            Some("0a:09:08:07:06:05")
        );
        assert_eq!(normalize_mac("0A:09:08:07:06"), None);
        assert_eq!(parse_u32("0xff000000"), Some(0xff00_0000));
        assert_eq!(parse_u32("254"), Some(254));
        assert_eq!(parse_u32("0x1ffffffff"), None);
        assert!(parse_addr_item("10.1.2.3/8")
            .unwrap()
            .contains(&"10.9.9.9".parse().unwrap()));
        assert!(parse_addr_item("1.2.3.4-1.2.3.9")
            .unwrap()
            .contains(&"1.2.3.5".parse().unwrap()));
        assert!(parse_addr_item("1.2.3.4-::1").is_none());
    }
}
