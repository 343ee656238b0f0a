//! The classification chains of table `inet symroute` (`classify` in prerouting,
//! `classify_out` in output): which policy a connection's first packet matches first.
//! Pure text, like the rest of `plan::nft`.
//!
//! A new connection costs one lookup per key type the policies use, however many
//! policies there are and in whatever order they are written:
//! - Each policy is looked up by one key, its *primary* (the first it has of: source MAC,
//!   source, destination, destination port, source port, interface, protocol,
//!   not_source, not_destination). Per key type, one verdict map sends a key value to
//!   the chain of its *candidates*: the policies whose primary holds that value, in file
//!   order, cut after the first one that tests nothing else (it matches for sure). Prefix
//!   keys are split into disjoint intervals, each carrying every policy whose prefixes
//!   cover it; `not_source` / `not_destination` as a primary is its complement.
//! - The best candidate so far lives in our bits of the conntrack mark (zero on entry: the
//!   chain is reached only by connections without a decision), encoded so that an
//!   earlier policy is a larger value: `ct mark and MASK < E` says "policy E can still
//!   win", and a candidate's other conditions are tested only then. Each accepted
//!   candidate overwrites the bits with its constant (nft 1.0.x cannot copy one register
//!   into another, and needs none of it here).
//! - One verdict map on the winner's value then `goto`s its `set_pN` chain, which counts
//!   it and overwrites the bits with the decision. With no winner the bits are still zero.
//!   A candidate no later lookup can beat (every one of the last lookup's) `goto`s its
//!   `set_pN` at once instead; a block where all do needs no winner map.
//! - A lookup that can't beat what the lookups before it mostly leave as the best so far
//!   is guarded by one comparison, so it is skipped when it can't win.
//! - A policy that tests nothing at all matches every packet: the candidates start at it
//!   (or the chain is a plain `goto` when it is the first), and later policies are left
//!   out. A policy whose only key is an interface wildcard (`eth*`) is tested on its own
//!   rule, after the lookups (nft 1.0.x maps take no wildcards).
//! - Up to 4 policies are plain rules in file order instead, each `goto`ing its decision
//!   (as cheap for so few, and what a reader of `symroute plan` expects).
//! - The mask encodes `capacity` values (255 for 0xff000000), so policies are taken in
//!   blocks of that many: block after block, each a full round of lookups and a winner
//!   map, the next reached only when the previous found no winner. Up to 255 policies
//!   cost one round; each further 255 one more.
//!
//! We use the conntrack mark, not the packet mark, for the scratch value: the packet mark
//! of a locally generated packet may legitimately carry our bits already (the daemon's
//! health probes set them with SO_MARK to leave through their gateway), and a connection
//! without a decision is known to have zero there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::{Family, Mark, MarkMask, Model, Prefixes, Selector};

use super::host::Cgroups;
use super::nft_expr::{always_named, selector_variants, set_mark, INLINE_MAX};

/// A lookup: one verdict map per key type (and family) a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dim {
    Mac,
    Src(Family),
    Dst(Family),
    Dport,
    Sport,
    /// The sending socket's cgroup at one level below the root.
    Cgroup(u32),
    Uid,
    Iif,
    Proto,
}

impl Dim {
    fn lhs(self) -> String {
        if let Dim::Cgroup(level) = self {
            return format!("socket cgroupv2 level {level}");
        }
        match self {
            Dim::Mac => "ether saddr",
            Dim::Src(Family::Inet4) => "ip saddr",
            Dim::Src(Family::Inet6) => "ip6 saddr",
            Dim::Dst(Family::Inet4) => "ip daddr",
            Dim::Dst(Family::Inet6) => "ip6 daddr",
            Dim::Dport => "th dport",
            Dim::Sport => "th sport",
            Dim::Uid => "meta skuid",
            Dim::Iif => "iifname",
            Dim::Proto => "meta l4proto",
            Dim::Cgroup(_) => unreachable!("written above"),
        }
        .to_string()
    }
    fn key_type(self) -> &'static str {
        match self {
            Dim::Mac => "ether_addr",
            Dim::Src(Family::Inet4) | Dim::Dst(Family::Inet4) => "ipv4_addr",
            Dim::Src(Family::Inet6) | Dim::Dst(Family::Inet6) => "ipv6_addr",
            Dim::Dport | Dim::Sport => "inet_service",
            Dim::Cgroup(_) => "cgroupsv2",
            Dim::Uid => "uid",
            Dim::Iif => "ifname",
            Dim::Proto => "inet_proto",
        }
    }
    fn tag(self) -> String {
        if let Dim::Cgroup(level) = self {
            return format!("cg{level}");
        }
        match self {
            Dim::Mac => "mac",
            Dim::Src(Family::Inet4) => "src4",
            Dim::Src(Family::Inet6) => "src6",
            Dim::Dst(Family::Inet4) => "dst4",
            Dim::Dst(Family::Inet6) => "dst6",
            Dim::Dport => "dport",
            Dim::Sport => "sport",
            Dim::Uid => "uid",
            Dim::Iif => "iif",
            Dim::Proto => "proto",
            Dim::Cgroup(_) => unreachable!("written above"),
        }
        .to_string()
    }
    /// The largest value of an interval key's domain.
    fn max(self) -> u128 {
        match self {
            Dim::Src(Family::Inet4) | Dim::Dst(Family::Inet4) => u128::from(u32::MAX),
            Dim::Src(Family::Inet6) | Dim::Dst(Family::Inet6) => u128::MAX,
            _ => u128::from(u16::MAX),
        }
    }
    /// How a value of an interval key is written.
    fn show(self, v: u128) -> String {
        match self {
            Dim::Src(Family::Inet4) | Dim::Dst(Family::Inet4) => {
                Ipv4Addr::from(v as u32).to_string()
            }
            Dim::Src(Family::Inet6) | Dim::Dst(Family::Inet6) => Ipv6Addr::from(v).to_string(),
            _ => v.to_string(),
        }
    }
    fn is_addr(self) -> bool {
        matches!(self, Dim::Src(_) | Dim::Dst(_))
    }
    /// Whether one packet can be looked up by both (an IPv4 packet never is by an IPv6
    /// key).
    fn same_packet(self, other: Dim) -> bool {
        let family = |d: Dim| match d {
            Dim::Src(f) | Dim::Dst(f) => Some(f),
            _ => None,
        };
        match (family(self), family(other)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// Which key a policy is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primary {
    Mac,
    Src,
    Dst,
    Dport,
    Sport,
    Cgroup,
    User,
    Iif,
    Proto,
    NotSrc,
    NotDst,
    /// Only interface wildcards: tested on its own rule.
    Walk,
    /// Tests nothing: matches every packet.
    All,
}

fn has_wildcard(s: &Selector) -> bool {
    s.in_interface.iter().any(|i| i.as_str().contains('*'))
}

impl Primary {
    fn of(s: &Selector) -> Primary {
        if !s.source_mac.is_empty() {
            Primary::Mac
        } else if !s.source.is_empty() {
            Primary::Src
        } else if !s.destination.is_empty() {
            Primary::Dst
        } else if !s.destination_port.is_empty() {
            Primary::Dport
        } else if !s.source_port.is_empty() {
            Primary::Sport
        } else if !s.cgroup.is_empty() {
            Primary::Cgroup
        } else if !s.user.is_empty() {
            Primary::User
        } else if !s.in_interface.is_empty() && !has_wildcard(s) {
            Primary::Iif
        } else if !s.protocol.is_empty() {
            Primary::Proto
        } else if !s.not_source.is_empty() {
            Primary::NotSrc
        } else if !s.not_destination.is_empty() {
            Primary::NotDst
        } else if *s == Selector::default() {
            Primary::All
        } else {
            Primary::Walk
        }
    }

    /// The selector without its primary key: what a candidate still has to pass.
    fn rest(self, s: &Selector) -> Selector {
        let mut r = s.clone();
        match self {
            Primary::Mac => r.source_mac.clear(),
            Primary::Src => r.source = Prefixes::default(),
            Primary::Dst => r.destination = Prefixes::default(),
            Primary::Dport => r.destination_port.clear(),
            Primary::Sport => r.source_port.clear(),
            Primary::Cgroup => r.cgroup.clear(),
            Primary::User => r.user.clear(),
            Primary::Iif => r.in_interface.clear(),
            Primary::Proto => r.protocol.clear(),
            Primary::NotSrc => r.not_source = Prefixes::default(),
            Primary::NotDst => r.not_destination = Prefixes::default(),
            Primary::Walk | Primary::All => {}
        }
        r
    }
}

/// A key value: an exact one (MAC, interface, protocol) or an inclusive interval
/// (addresses as numbers, ports).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Exact(String),
    Range(u128, u128),
}

fn v4_bounds(n: &ipnet::Ipv4Net) -> (u128, u128) {
    (
        u128::from(u32::from(n.network())),
        u128::from(u32::from(n.broadcast())),
    )
}

fn v6_bounds(n: &ipnet::Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

fn bounds(p: &Prefixes, fam: Family) -> Vec<(u128, u128)> {
    let mut v: Vec<(u128, u128)> = match fam {
        Family::Inet4 => p.v4.iter().map(v4_bounds).collect(),
        Family::Inet6 => p.v6.iter().map(v6_bounds).collect(),
    };
    v.sort();
    v
}

/// The intervals of the family's address space not covered by `p`.
fn complement(p: &Prefixes, fam: Family, max: u128) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut next = Some(0u128);
    for (lo, hi) in bounds(p, fam) {
        if let Some(n) = next {
            if lo > n {
                out.push((n, lo - 1));
            }
        }
        next = match next {
            Some(n) if hi < n => Some(n),
            _ => hi.checked_add(1),
        };
    }
    if let Some(n) = next {
        out.push((n, max));
    }
    out
}

/// The lookups a policy takes part in, with its values in each (a cgroup only while it
/// exists: nft resolves it when the table is loaded).
fn items(s: &Selector, primary: Primary, cg: Option<&Cgroups>) -> Vec<(Dim, Vec<Item>)> {
    let exact = |v: Vec<String>| v.into_iter().map(Item::Exact).collect::<Vec<_>>();
    let ranges = |v: Vec<(u128, u128)>| {
        v.into_iter()
            .map(|(a, b)| Item::Range(a, b))
            .collect::<Vec<_>>()
    };
    let fams = [Family::Inet4, Family::Inet6];
    match primary {
        Primary::Mac => vec![(
            Dim::Mac,
            exact(s.source_mac.iter().map(|m| m.to_string()).collect()),
        )],
        Primary::Iif => vec![(
            Dim::Iif,
            exact(s.in_interface.iter().map(|i| format!("\"{i}\"")).collect()),
        )],
        Primary::Proto => vec![(
            Dim::Proto,
            exact(s.protocol.iter().map(|p| p.nft().to_string()).collect()),
        )],
        Primary::User => vec![(
            Dim::Uid,
            exact(s.user.iter().map(|u| u.to_string()).collect()),
        )],
        Primary::Cgroup => {
            let mut by_level: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
            for p in &s.cgroup {
                if let Some(text) = cg.and_then(|c| c.nft_path(p)) {
                    by_level
                        .entry(p.level())
                        .or_default()
                        .push(Item::Exact(text));
                }
            }
            by_level
                .into_iter()
                .map(|(level, v)| (Dim::Cgroup(level), v))
                .collect()
        }
        Primary::Dport | Primary::Sport => {
            let (dim, ports) = if primary == Primary::Dport {
                (Dim::Dport, &s.destination_port)
            } else {
                (Dim::Sport, &s.source_port)
            };
            vec![(
                dim,
                ranges(
                    ports
                        .iter()
                        .map(|p| (u128::from(p.first), u128::from(p.last)))
                        .collect(),
                ),
            )]
        }
        Primary::Src | Primary::Dst => fams
            .iter()
            .map(|&f| {
                let (dim, p) = if primary == Primary::Src {
                    (Dim::Src(f), &s.source)
                } else {
                    (Dim::Dst(f), &s.destination)
                };
                (dim, ranges(bounds(p, f)))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        Primary::NotSrc | Primary::NotDst => fams
            .iter()
            .map(|&f| {
                let (dim, p) = if primary == Primary::NotSrc {
                    (Dim::Src(f), &s.not_source)
                } else {
                    (Dim::Dst(f), &s.not_destination)
                };
                (dim, ranges(complement(p, f, dim.max())))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        Primary::Walk | Primary::All => Vec::new(),
    }
}

/// One verdict map: key text → candidate list.
struct Lookup {
    dim: Dim,
    interval: bool,
    /// An address key looked up by its first N bits (`ip daddr and 255.255.255.0`):
    /// one exact-match map per prefix length instead of an interval map.
    prefix_len: Option<u32>,
    elements: Vec<(String, Vec<usize>)>,
}

/// Lists this short are plain rules in file order: as cheap, and easier to read.
const LINEAR_MAX: usize = 4;

/// Interval maps are searched, exact maps hashed: a large address key whose intervals
/// are prefixes of at most this many lengths becomes that many hashed lookups (the
/// intervals are disjoint, so the first that hits is the only one).
const MAX_PREFIX_LENGTHS: usize = 3;

/// `[lo, hi]` as the fewest aligned prefixes: (first address, prefix length).
fn prefixes(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u32)> {
    let mut out = Vec::new();
    loop {
        // The largest block starting at lo (alignment) that ends by hi.
        let mut size_log = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        while size_log > 0 {
            let last = if size_log == 128 {
                u128::MAX
            } else {
                lo + ((1u128 << size_log) - 1)
            };
            if last <= hi && last >= lo {
                break;
            }
            size_log -= 1;
        }
        out.push((lo, bits - size_log));
        let last = if size_log == 128 {
            u128::MAX
        } else {
            lo + ((1u128 << size_log) - 1)
        };
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

/// An interval address lookup as per-length hashed lookups, when few lengths do.
fn by_prefix_length(dim: Dim, parts: &[(u128, u128, Vec<usize>)]) -> Option<Vec<Lookup>> {
    let bits = if dim.max() == u128::MAX { 128 } else { 32 };
    let mut by_len: BTreeMap<u32, Vec<(String, Vec<usize>)>> = BTreeMap::new();
    for (lo, hi, list) in parts {
        for (first, len) in prefixes(*lo, *hi, bits) {
            by_len
                .entry(len)
                .or_default()
                .push((dim.show(first), list.clone()));
            if by_len.len() > MAX_PREFIX_LENGTHS {
                return None;
            }
        }
    }
    Some(
        by_len
            .into_iter()
            .rev()
            .map(|(len, elements)| Lookup {
                dim,
                interval: false,
                prefix_len: (len < bits).then_some(len),
                elements,
            })
            .collect(),
    )
}

/// Cuts a candidate list after its first policy that tests nothing but this key.
fn cut(list: &[usize], total: &dyn Fn(usize) -> bool) -> Vec<usize> {
    match list.iter().position(|&i| total(i)) {
        Some(k) => list[..=k].to_vec(),
        None => list.to_vec(),
    }
}

/// Splits overlapping intervals (each owned by a policy) into disjoint ones, each with
/// every policy covering it, in file order; neighbours with the same list are merged.
fn split(
    dim: Dim,
    owned: &[(u128, u128, usize)],
    total: &dyn Fn(usize) -> bool,
) -> Vec<(u128, u128, Vec<usize>)> {
    // At each boundary: policies entering (+1) and leaving (-1).
    let mut events: BTreeMap<u128, Vec<(i32, usize)>> = BTreeMap::new();
    for &(lo, hi, i) in owned {
        events.entry(lo).or_default().push((1, i));
        if let Some(end) = hi.checked_add(1).filter(|e| *e <= dim.max()) {
            events.entry(end).or_default().push((-1, i));
        }
    }
    let mut active: BTreeMap<usize, i32> = BTreeMap::new();
    let mut out: Vec<(u128, u128, Vec<usize>)> = Vec::new();
    let points: Vec<u128> = events.keys().copied().collect();
    for (k, at) in points.iter().enumerate() {
        for (d, i) in &events[at] {
            let n = active.entry(*i).or_insert(0);
            *n += d;
            if *n == 0 {
                active.remove(i);
            }
        }
        if active.is_empty() {
            continue;
        }
        let hi = points.get(k + 1).map_or(dim.max(), |n| n - 1);
        let list = cut(&active.keys().copied().collect::<Vec<_>>(), total);
        match out.last_mut() {
            Some(last) if last.2 == list && last.1.checked_add(1) == Some(*at) => last.1 = hi,
            _ => out.push((*at, hi, list)),
        }
    }
    out
}

/// `lo-hi` as an nft element: one value, a prefix when it is one, else a range.
fn interval_text(dim: Dim, lo: u128, hi: u128) -> String {
    if lo == hi {
        return dim.show(lo);
    }
    if dim.is_addr() {
        let bits = if dim.max() == u128::MAX { 128 } else { 32 };
        let span = hi - lo;
        // A prefix: span + 1 is a power of two and lo is aligned to it.
        if span.checked_add(1).is_none_or(|s| s.is_power_of_two()) && lo & span == 0 {
            let len = bits - (128 - span.leading_zeros()) as u128;
            return format!("{}/{len}", dim.show(lo));
        }
    }
    format!("{}-{}", dim.show(lo), dim.show(hi))
}

/// The mask of the first `len` bits of an address key, as nft writes it.
fn net_mask(dim: Dim, len: u32) -> String {
    if dim.max() == u128::MAX {
        Ipv6Addr::from(u128::MAX.checked_shl(128 - len).unwrap_or(0)).to_string()
    } else {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0)).to_string()
    }
}

/// The lookups of one block: per dimension, value → candidates.
fn lookups(
    model: &Model,
    members: &[usize],
    primaries: &[Primary],
    cg: Option<&Cgroups>,
) -> Vec<Lookup> {
    let total = |i: usize| primaries[i].rest(&model.policies[i].selector) == Selector::default();
    let mut exact: BTreeMap<Dim, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
    let mut ranged: BTreeMap<Dim, Vec<(u128, u128, usize)>> = BTreeMap::new();
    for &i in members {
        for (dim, values) in items(&model.policies[i].selector, primaries[i], cg) {
            for v in values {
                match v {
                    Item::Exact(k) => {
                        let list = exact.entry(dim).or_default().entry(k).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                    Item::Range(lo, hi) => ranged.entry(dim).or_default().push((lo, hi, i)),
                }
            }
        }
    }
    let mut out: Vec<Lookup> = exact
        .into_iter()
        .map(|(dim, m)| Lookup {
            dim,
            interval: false,
            prefix_len: None,
            elements: m.into_iter().map(|(k, l)| (k, cut(&l, &total))).collect(),
        })
        .collect();
    for (dim, owned) in ranged {
        let parts = split(dim, &owned, &total);
        if dim.is_addr() && parts.len() > INLINE_MAX {
            if let Some(hashed) = by_prefix_length(dim, &parts) {
                out.extend(hashed);
                continue;
            }
        }
        out.push(Lookup {
            dim,
            interval: parts.iter().any(|(lo, hi, _)| lo != hi),
            prefix_len: None,
            elements: parts
                .into_iter()
                .map(|(lo, hi, l)| (interval_text(dim, lo, hi), l))
                .collect(),
        });
    }
    out.sort_by_key(|l| l.dim);
    out
}

/// What a candidate's rule does once it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// It wins: `goto` its decision.
    Decide,
    /// Best so far, and the rest of its list can't beat it: stop trying the list.
    Return,
    /// Best so far.
    Continue,
}

/// Builds `classify` / `classify_out`; candidate chains are shared between them.
pub(super) struct Classifier<'a> {
    model: &'a Model,
    cgroups: Option<&'a Cgroups>,
    mask: MarkMask,
    primaries: Vec<Primary>,
    /// Each policy's rest as condition strings (one per address family it needs).
    rest: Vec<Option<Vec<String>>>,
    /// Each policy's whole selector as condition strings (for short lists).
    own: Vec<Option<Vec<String>>>,
    /// (Candidate list, how many of its first candidates decide) → its chain's name.
    tries: BTreeMap<(Vec<usize>, usize), String>,
    /// Text of the candidate chains written so far.
    chains: String,
    /// Whether a candidate of the block being written can be left as the best so far
    /// (else every one decides, and the block needs no winner map).
    scratch_used: bool,
}

impl<'a> Classifier<'a> {
    pub(super) fn new(model: &'a Model, cgroups: Option<&'a Cgroups>) -> Self {
        Classifier {
            model,
            cgroups,
            mask: model.settings.mark_mask,
            primaries: model
                .policies
                .iter()
                .map(|p| Primary::of(&p.selector))
                .collect(),
            rest: vec![None; model.policies.len()],
            own: vec![None; model.policies.len()],
            tries: BTreeMap::new(),
            chains: String::new(),
            scratch_used: false,
        }
    }

    /// Policies per block: as many as the mask has values.
    fn block_size(&self) -> usize {
        self.mask.capacity() as usize
    }

    /// The scratch value of policy `i`: earlier policies (within its block) are larger.
    fn scratch(&self, i: usize) -> Mark {
        let c = self.block_size();
        self.mask
            .value((c - i % c) as u32)
            .expect("1..=capacity fits the mask")
    }

    fn rest_of(&mut self, i: usize, sets: &mut String) -> Vec<String> {
        let p = self.primaries[i];
        let (model, cg) = (self.model, self.cgroups);
        self.rest[i]
            .get_or_insert_with(|| {
                let rest = p.rest(&model.policies[i].selector);
                selector_variants(&rest, &format!("p{i}r"), sets, cg)
            })
            .clone()
    }

    /// Rules that make `i` the best candidate if it can still win and its rest matches.
    /// `Then::Decide`: nothing looked up after it can hold an earlier policy, so it is
    /// the winner and goes straight to its decision; `Then::Return`: the rest of its
    /// list can't beat it.
    fn candidate_rules(&mut self, i: usize, then: Then, sets: &mut String) -> Vec<String> {
        let e = self.scratch(i);
        let mask = self.mask;
        self.rest_of(i, sets)
            .into_iter()
            .map(|conds| {
                let act = match then {
                    Then::Decide => format!("goto set_p{i}"),
                    Then::Return => format!("{} return", set_mark("ct", mask, e)),
                    Then::Continue => set_mark("ct", mask, e),
                };
                format!("ct mark and {mask} < {e}{conds} {act}")
            })
            .collect()
    }

    /// The chain trying a candidate list in order (written once, shared). Candidates
    /// before `later` (the earliest policy a lookup after this one can hold) decide.
    fn try_chain(&mut self, list: &[usize], later: usize, sets: &mut String) -> String {
        let deciding = list.iter().take_while(|&&i| i < later).count();
        self.scratch_used |= deciding < list.len();
        let key = (list.to_vec(), deciding);
        if let Some(name) = self.tries.get(&key) {
            return name.clone();
        }
        let same_first = self.tries.keys().filter(|(l, _)| l[0] == list[0]).count();
        let name = match (list, same_first) {
            ([one], 0) => format!("try_p{one}"),
            _ => format!("try_p{}_{same_first}", list[0]),
        };
        let mut rules = Vec::new();
        for (k, &i) in list.iter().enumerate() {
            let then = if k < deciding {
                Then::Decide
            } else if k + 1 < list.len() {
                Then::Return
            } else {
                Then::Continue
            };
            rules.extend(self.candidate_rules(i, then, sets));
        }
        let _ = writeln!(self.chains, "\tchain {name} {{");
        for r in rules {
            let _ = writeln!(self.chains, "\t\t{r}");
        }
        self.chains += "\t}\n";
        self.tries.insert(key, name.clone());
        name
    }

    /// A map as an nft right-hand side: inline when short, else a named map in `sets`.
    fn map(
        name: &str,
        key_type: &str,
        interval: bool,
        elements: &[String],
        sets: &mut String,
    ) -> String {
        if elements.len() <= INLINE_MAX && !always_named(key_type) {
            return format!("{{ {} }}", elements.join(", "));
        }
        let flags = if interval { "\t\tflags interval\n" } else { "" };
        let _ = writeln!(
            sets,
            "\tmap {name} {{\n\t\ttype {key_type} : verdict\n{flags}\t\telements = {{ {} }}\n\t}}",
            elements.join(", ")
        );
        format!("@{name}")
    }

    /// The rules of chain `chain` classifying among `members` (policy indexes, file order).
    pub(super) fn chain_rules(
        &mut self,
        chain: &str,
        members: &[usize],
        sets: &mut String,
    ) -> Vec<String> {
        let mut rules = self.rules_among(chain, members, sets);
        // The restore rules behind the jump to this chain have nothing to do for a
        // connection no policy took (our bits are zero), nor for one a policy took (its
        // decision chain ends with `accept`): end here. A chain whose last rule is a
        // plain `goto` never gets this far.
        if !rules.is_empty() && !rules.last().is_some_and(|r| r.starts_with("goto ")) {
            rules.push("accept".to_string());
        }
        rules
    }

    fn rules_among(&mut self, chain: &str, members: &[usize], sets: &mut String) -> Vec<String> {
        if members.len() <= LINEAR_MAX {
            return self.linear_rules(members, sets);
        }
        let mut rules = Vec::new();
        let size = self.block_size();
        let mut start = 0;
        while start < members.len() {
            let block = members[start] / size;
            let end = members[start..]
                .iter()
                .position(|&i| i / size != block)
                .map_or(members.len(), |k| start + k);
            let (block_rules, decided) = self.block_rules(chain, block, &members[start..end], sets);
            rules.extend(block_rules);
            if decided {
                // A policy matching everything: nothing after it is ever reached.
                break;
            }
            start = end;
        }
        rules
    }

    /// A short list as plain rules in file order, each `goto`ing its policy's decision.
    fn linear_rules(&mut self, members: &[usize], sets: &mut String) -> Vec<String> {
        let mut rules = Vec::new();
        for &i in members {
            let (model, cg) = (self.model, self.cgroups);
            let own = self.own[i].get_or_insert_with(|| {
                selector_variants(&model.policies[i].selector, &format!("p{i}"), sets, cg)
            });
            for conds in own.iter() {
                rules.push(
                    format!("{} goto set_p{i}", conds.trim_start())
                        .trim_start()
                        .to_string(),
                );
            }
            if self.primaries[i] == Primary::All {
                break;
            }
        }
        rules
    }

    /// One block's rules; `true` when some policy in it matches every packet.
    fn block_rules(
        &mut self,
        chain: &str,
        block: usize,
        members: &[usize],
        sets: &mut String,
    ) -> (Vec<String>, bool) {
        // The first policy matching everything: the candidates start at it.
        let all = members
            .iter()
            .position(|&i| self.primaries[i] == Primary::All)
            .map(|k| (k, members[k]));
        if let Some((0, m)) = all {
            return (vec![format!("goto set_p{m}")], true);
        }
        let members = &members[..all.map_or(members.len(), |(k, _)| k)];
        let mut rules = Vec::new();
        let mask = self.mask;
        self.scratch_used = all.is_some();
        if let Some((_, m)) = all {
            rules.push(set_mark("ct", mask, self.scratch(m)));
        }
        let prefix = if block == 0 {
            chain.to_string()
        } else {
            format!("{chain}_{block}")
        };
        let primaries = self.primaries.clone();
        let all_lookups = lookups(self.model, members, &primaries, self.cgroups);
        // Policies tested on rules of their own, after the lookups.
        let first_walk = members
            .iter()
            .copied()
            .find(|&i| primaries[i] == Primary::Walk)
            .unwrap_or(usize::MAX);
        // The earliest policy a lookup of the same packet after the one at `k` can hold
        // (or a rule after the lookups): a candidate before it wins outright.
        let later = |k: usize| {
            let dim = all_lookups[k].dim;
            all_lookups[k..]
                .iter()
                .filter(|l| l.dim != dim && dim.same_packet(l.dim))
                .flat_map(|l| l.elements.iter().flat_map(|(_, list)| list.first()))
                .copied()
                .fold(first_walk, usize::min)
        };
        // The policies a lookup before this one can have left as the best candidate (the
        // match-all one's preset counts; a candidate that wins outright leaves nothing).
        let mut kept: std::collections::BTreeSet<usize> = all.map(|(_, m)| m).into_iter().collect();
        let mut k = 0;
        while k < all_lookups.len() {
            let dim = all_lookups[k].dim;
            let same = all_lookups[k..].iter().take_while(|l| l.dim == dim).count();
            let group = &all_lookups[k..k + same];
            let later = later(k);
            k += same;
            // A lookup none of whose candidates can beat the best so far is skipped by one
            // comparison in front of it. Worth it when most policies the lookups before
            // can leave as the best so far come before all of this one's; otherwise the
            // comparison would almost never skip anything.
            let here: std::collections::BTreeSet<usize> = group
                .iter()
                .flat_map(|l| l.elements.iter().flat_map(|(_, list)| list.iter().copied()))
                .collect();
            let guard = match here.first() {
                Some(&e) if 2 * kept.range(..e).count() > kept.len() => {
                    format!("ct mark and {mask} < {} ", self.scratch(e))
                }
                _ => String::new(),
            };
            kept.extend(here.range(later..));
            let base = format!("{prefix}_{}", dim.tag());
            // Several lookups for one key (one per prefix length): in a chain of their
            // own, whose map entries `goto` the candidates, so the first hit ends it.
            let verb = if group.len() > 1 { "goto" } else { "jump" };
            let mut lines = Vec::new();
            for l in group {
                let elements: Vec<String> = l
                    .elements
                    .iter()
                    .map(|(key, list)| {
                        format!("{key} : {verb} {}", self.try_chain(list, later, sets))
                    })
                    .collect();
                let (name, lhs) = match l.prefix_len {
                    Some(len) => (
                        format!("{base}_{len}"),
                        format!("{} and {}", dim.lhs(), net_mask(dim, len)),
                    ),
                    None if group.len() > 1 => (
                        format!("{base}_{}", if dim.max() == u128::MAX { 128 } else { 32 }),
                        dim.lhs(),
                    ),
                    None => (base.clone(), dim.lhs()),
                };
                let rhs = Self::map(&name, dim.key_type(), l.interval, &elements, sets);
                lines.push(format!("{lhs} vmap {rhs}"));
            }
            if group.len() == 1 {
                rules.extend(lines.into_iter().map(|l| format!("{guard}{l}")));
            } else {
                let _ = writeln!(self.chains, "\tchain {base} {{");
                for l in lines {
                    let _ = writeln!(self.chains, "\t\t{l}");
                }
                self.chains += "\t}\n";
                rules.push(format!("{guard}jump {base}"));
            }
        }
        let mut winners = Vec::new();
        for &i in members {
            if self.primaries[i] == Primary::Walk {
                // Nothing after it holds an earlier policy (walks go in file order).
                rules.extend(self.candidate_rules(i, Then::Decide, sets));
            }
            winners.push(format!("{} : goto set_p{i}", self.scratch(i)));
        }
        if let Some((_, m)) = all {
            winners.push(format!("{} : goto set_p{m}", self.scratch(m)));
        }
        if self.scratch_used {
            let rhs = Self::map(&format!("{prefix}_win"), "mark", false, &winners, sets);
            rules.push(format!("ct mark and {mask} vmap {rhs}"));
        }
        (rules, all.is_some())
    }

    /// The candidate chains, to be written with the table's other chains.
    pub(super) fn into_chains(self) -> String {
        self.chains
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use crate::plan::{build, HostView};

    const GWS: &str = "[[gateway]]\nname=\"a\"\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n[[gateway]]\nname=\"b\"\ninterface=\"e1\"\nvia=\"192.0.2.2\"\n";

    /// The table for `cfg` followed by 4 more policies (on ports 60000…): more than 4
    /// policies take the lookups (fewer are plain rules).
    fn nft_of(cfg: &str) -> String {
        let mut pad = String::new();
        for i in 0..4 {
            pad += &policy(
                &format!("pad{i}"),
                "route_via=\"a\"",
                &format!("protocol=\"tcp\"\ndestination_port={}", 60000 + i),
            );
        }
        build(
            &parse_str(&format!("{GWS}{cfg}{pad}"), "t.toml").expect("valid"),
            &HostView::default(),
        )
        .nft
    }

    fn chain<'a>(nft: &'a str, name: &str) -> &'a str {
        let start = nft
            .find(&format!("\tchain {name} {{\n"))
            .unwrap_or_else(|| panic!("no chain {name}:\n{nft}"));
        let body = &nft[start..];
        &body[..body.find("\n\t}\n").expect("chain end") + 4]
    }

    fn policy(name: &str, action: &str, keys: &str) -> String {
        format!("[[policy]]\nname=\"{name}\"\n{action}\n[policy.match]\n{keys}\n")
    }

    #[test]
    fn one_lookup_per_key_type_however_the_policies_alternate() {
        let mut cfg = String::new();
        for i in 0..40 {
            cfg += &policy(
                &format!("m{i}"),
                "reply_via=\"a\"",
                &format!("source_mac=\"02:00:00:00:00:{i:02x}\""),
            );
            cfg += &policy(
                &format!("s{i}"),
                "route_via=\"b\"",
                &format!("source=\"10.0.{i}.1\""),
            );
        }
        let nft = nft_of(&cfg);
        let classify = chain(&nft, "classify");
        assert_eq!(
            classify.lines().count(),
            2 + 5,
            "mac map, source map, port map (padding), winner map, accept:\n{classify}"
        );
        assert!(
            classify.contains("ether saddr vmap @classify_mac"),
            "{classify}"
        );
        assert!(
            classify.contains("ip saddr vmap @classify_src4"),
            "{classify}"
        );
        assert!(
            classify.contains("ct mark and 0xff000000 vmap @classify_win"),
            "{classify}"
        );
        // Hosts only: a hashed map, no interval flag.
        let map = &nft[nft.find("\tmap classify_src4 {").unwrap()..];
        assert!(
            !map[..map.find("\n\t}").unwrap()].contains("interval"),
            "{map}"
        );
        // Policy 0 (m0) is the first: scratch value 0xff000000. A MAC candidate is only
        // the best so far (a source policy looked up after it may come earlier)...
        assert!(
            chain(&nft, "try_p2").contains(
                "ct mark and 0xff000000 < 0xfd000000 ct mark set ct mark and 0x00ffffff or 0xfd000000\n"
            ),
            "{nft}"
        );
        // ...but nothing looked up after the sources (the padding's ports, policies
        // 80-83) comes before a source policy: one that passes wins outright.
        assert!(
            chain(&nft, "try_p1").contains("ct mark and 0xff000000 < 0xfe000000 goto set_p1\n"),
            "{nft}"
        );
        // Policy 0 wins outright from the MAC lookup: no source policy comes before it.
        assert!(
            chain(&nft, "try_p0").contains("ct mark and 0xff000000 < 0xff000000 goto set_p0\n"),
            "{nft}"
        );
    }

    #[test]
    fn overlapping_prefixes_carry_every_covering_policy_in_order() {
        let cfg = policy(
            "p",
            "reply_via=\"a\"",
            "source=\"10.1.0.0/16\"\nprotocol=\"tcp\"",
        ) + &policy("q", "reply_via=\"b\"", "source=\"10.0.0.0/8\"")
            + &policy("r", "reply_via=\"b\"", "source=\"10.1.2.0/24\"");
        let nft = nft_of(&cfg);
        let classify = chain(&nft, "classify");
        // Inside 10.1/16 p comes first but may fail (tcp only), then q matches for sure:
        // r, inside it, can never win and is cut.
        assert!(
            classify.contains(
                "ip saddr vmap { 10.0.0.0/16 : jump try_p1, 10.1.0.0/16 : jump try_p0_0, 10.2.0.0-10.255.255.255 : jump try_p1 }"
            ),
            "{classify}"
        );
        // Nothing looked up after the sources (the padding's ports) comes first: a
        // candidate that passes wins outright.
        let both = chain(&nft, "try_p0_0");
        assert!(
            both.contains("< 0xff000000 meta l4proto tcp goto set_p0\n"),
            "{both}"
        );
        assert!(both.contains("< 0xfe000000 goto set_p1\n"), "{both}");
        assert!(!nft.contains("try_p2"), "{nft}");
    }

    #[test]
    fn not_source_alone_is_looked_up_as_its_complement() {
        let nft = nft_of(&policy(
            "p",
            "route_via=\"a\"",
            "not_source=[\"10.0.0.0/8\", \"fd00::/8\"]",
        ));
        let classify = chain(&nft, "classify");
        assert!(
            classify.contains(
                "ip saddr vmap { 0.0.0.0-9.255.255.255 : jump try_p0, 11.0.0.0-255.255.255.255 : jump try_p0 }"
            ),
            "{classify}"
        );
        assert!(
            classify.contains("ip6 saddr vmap { ::-fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff : jump try_p0, fe00::/7 : jump try_p0 }"),
            "{classify}"
        );
    }

    #[test]
    fn a_match_all_policy_starts_the_candidates_and_ends_the_list() {
        let cfg = policy("p", "route_via=\"a\"", "protocol=\"udp\"")
            + &policy("all", "route_via=\"b\"", "")
            + &policy("never", "route_via=\"a\"", "protocol=\"tcp\"");
        let nft = nft_of(&cfg);
        let classify = chain(&nft, "classify");
        assert!(
            classify.starts_with(
                "\tchain classify {\n\t\tct mark set ct mark and 0x00ffffff or 0xfe000000\n"
            ),
            "{classify}"
        );
        assert!(
            classify.contains("meta l4proto vmap { udp : jump try_p0 }"),
            "{classify}"
        );
        assert!(!classify.contains("p2") && !nft.contains("try_p2"), "{nft}");
        // First in the list: a plain goto.
        let nft = nft_of(&policy("all", "route_via=\"b\"", ""));
        assert!(
            chain(&nft, "classify").contains("\t\tgoto set_p0\n"),
            "{nft}"
        );
        // A short list is plain rules in file order.
        let cfg = format!(
            "{GWS}{}",
            policy("p", "route_via=\"a\"", "protocol=\"udp\"")
                + &policy("all", "route_via=\"b\"", "")
        );
        let nft = build(&parse_str(&cfg, "t.toml").unwrap(), &HostView::default()).nft;
        assert!(
            chain(&nft, "classify")
                .contains("\t\tmeta l4proto udp goto set_p0\n\t\tgoto set_p1\n\t}"),
            "{nft}"
        );
    }

    #[test]
    fn local_chain_holds_only_route_via_without_ingress_keys() {
        let cfg = policy("in", "reply_via=\"a\"", "in_interface=\"e0\"")
            + &policy(
                "out",
                "route_via=\"b\"",
                "protocol=\"tcp\"\ndestination_port=25",
            );
        let nft = nft_of(&cfg);
        let out = chain(&nft, "classify_out");
        assert!(
            out.contains("th dport vmap { 25 : jump try_p1_1, "),
            "{out}"
        );
        assert!(!out.contains("p0"), "{out}");
        // Every candidate there decides: no best-so-far value, no winner map.
        assert!(!out.contains("ct mark and 0xff000000 vmap"), "{out}");
        // In `classify` the interface lookup after the ports holds an earlier policy, so
        // a port candidate is only the best so far; in `classify_out` nothing comes after
        // it, so it wins outright: two chains for the same candidate.
        assert!(
            chain(&nft, "try_p1").contains("< 0xfe000000 meta l4proto tcp ct mark set"),
            "{nft}"
        );
        assert!(
            chain(&nft, "try_p1_1").contains("< 0xfe000000 meta l4proto tcp goto set_p1\n"),
            "{nft}"
        );
    }

    #[test]
    fn more_policies_than_the_mask_holds_take_blocks() {
        // 0x03000000 holds 3 values: 7 policies take 3 blocks. Sources and interfaces
        // alternate, so in the first two a source candidate can be beaten by an
        // interface one and is kept as the best so far: a winner map each. The last block
        // holds one policy, which decides on its own.
        let mut cfg = String::from("[settings]\nmark_mask=\"0x03000000\"\n");
        cfg += "[[gateway]]\nname=\"a\"\ninterface=\"e0\"\nvia=\"192.0.2.1\"\n";
        for i in 0..7 {
            let key = if i % 2 == 0 {
                format!("source=\"10.0.0.{i}\"")
            } else {
                format!("in_interface=\"x{i}\"")
            };
            cfg += &policy(&format!("p{i}"), "reply_via=\"a\"", &key);
        }
        let nft = build(&parse_str(&cfg, "t.toml").unwrap(), &HostView::default()).nft;
        let classify = chain(&nft, "classify");
        assert_eq!(
            classify.matches("ct mark and 0x03000000 vmap").count(),
            2,
            "{classify}"
        );
        assert!(
            classify.contains(
                "0x03000000 : goto set_p3, 0x02000000 : goto set_p4, 0x01000000 : goto set_p5"
            ),
            "{classify}"
        );
        assert!(
            classify.contains("ip saddr vmap { 10.0.0.6 : jump try_p6 }"),
            "{classify}"
        );
        assert!(chain(&nft, "try_p6").contains("goto set_p6"), "{nft}");
    }

    #[test]
    fn a_lookup_behind_earlier_policies_is_skipped_when_it_cannot_win() {
        let mac = |i: usize| {
            policy(
                &format!("m{i}"),
                "reply_via=\"a\"",
                &format!("source_mac=\"02:00:00:00:00:{i:02x}\""),
            )
        };
        let src = |i: usize| {
            policy(
                &format!("s{i}"),
                "route_via=\"b\"",
                &format!("source=\"10.0.{i}.1\""),
            )
        };
        // An interface policy first, then all MAC policies, then all source ones: the
        // interface lookup comes last and holds the first policy, so a MAC candidate is
        // only the best so far; but it beats every source policy, whose lookup is then
        // skipped (policy 41 is the first source one: 0xff - 41 = 0xd6).
        let mut cfg = policy("if", "reply_via=\"a\"", "in_interface=\"e9\"");
        for i in 0..40 {
            cfg += &mac(i);
        }
        for i in 0..40 {
            cfg += &src(i);
        }
        let nft = nft_of(&cfg);
        let classify = chain(&nft, "classify");
        assert!(
            classify.contains("\t\tether saddr vmap @classify_mac\n\t\tct mark and 0xff000000 < 0xd6000000 ip saddr vmap @classify_src4\n"),
            "{classify}"
        );
        // Without the interface policy every candidate wins outright (nothing looked up
        // after the MACs comes first): no best-so-far value to compare, no winner map.
        let mut grouped = String::new();
        let mut alternating = String::new();
        for i in 0..40 {
            grouped = format!("{}{grouped}{}", mac(i), src(i));
            alternating += &(mac(i) + &src(i));
        }
        let grouped = nft_of(&grouped);
        let classify = chain(&grouped, "classify");
        assert!(
            classify.contains("\t\tip saddr vmap @classify_src4\n")
                && !classify.contains("ct mark and 0xff000000 vmap"),
            "{classify}"
        );
        // Alternating keys: an earlier MAC policy rarely beats every source one, so no
        // comparison that would almost never skip anything.
        let alternating = nft_of(&alternating);
        let classify = chain(&alternating, "classify");
        assert!(
            classify.contains("\t\tip saddr vmap @classify_src4\n"),
            "{classify}"
        );
    }

    #[test]
    fn disjoint_prefixes_of_one_length_are_one_hashed_lookup() {
        let nets: Vec<String> = (0..20).map(|i| format!("\"10.{i}.1.0/24\"")).collect();
        let hosts: Vec<String> = (0..20).map(|i| format!("\"10.{i}.2.7\"")).collect();
        let cfg = policy(
            "p",
            "route_via=\"a\"",
            &format!("destination=[{}]\nprotocol=\"udp\"", nets.join(", ")),
        ) + &policy(
            "q",
            "route_via=\"b\"",
            &format!("destination=[{}]", hosts.join(", ")),
        );
        let nft = nft_of(&cfg);
        assert!(
            chain(&nft, "classify").contains("\t\tjump classify_dst4\n"),
            "{nft}"
        );
        let dst = chain(&nft, "classify_dst4");
        assert_eq!(
            dst,
            "\tchain classify_dst4 {\n\t\tip daddr vmap @classify_dst4_32\n\t\tip daddr and 255.255.255.0 vmap @classify_dst4_24\n\t}\n"
        );
        assert!(nft.contains("10.3.1.0 : goto try_p0"), "{nft}");
        assert!(nft.contains("10.3.2.7 : goto try_p1"), "{nft}");
    }
}
