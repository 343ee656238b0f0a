//! Running one hook's base chains for one packet.
//!
//! Base chains of the hook run in priority order (ties: listing order); `accept` ends the
//! base chain (the next one still runs), `drop`/`reject` end everything; `jump`, `goto`,
//! `return` and verdict maps behave as in the kernel (a base chain's policy applies when
//! it runs out of rules or returns). Nat chains see only a connection's first packet, and
//! only until one of them has set up the translation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Serialize, Serializer};

use super::ir::{
    ChainKind, CtDirection, CtState, Hook, MarkKey, Match, NatTo, NfFamily, Origin, Policy, Rule,
    Ruleset, Stmt, Verdict,
};
use symroute_core::model::{Family, IpProto};

/// The kernel's jump stack depth (NFT_JUMP_STACK_SIZE).
const MAX_DEPTH: usize = 16;
/// Rules looked at per hook before giving up (loops cannot load in a kernel, but the IR
/// may come from anywhere).
const MAX_RULES: usize = 100_000;

fn hex<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#010x}"))
}

/// What a local socket lookup for the packet finds (`-m socket`, `socket transparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LocalSocket {
    #[default]
    None,
    Plain,
    /// A socket with IP_TRANSPARENT (HAProxy's `usesrc clientip`, TPROXY listeners).
    Transparent,
}

/// The packet's connection as conntrack sees it at this hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CtCtx {
    pub state: CtState,
    pub direction: CtDirection,
    #[serde(serialize_with = "hex")]
    pub mark: u32,
}

/// One packet at one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketCtx {
    pub family: Family,
    /// None for locally generated packets.
    pub iif: Option<String>,
    /// None before routing.
    pub oif: Option<String>,
    /// Lower-case `02:03:04:05:06:07`; None for locally generated packets.
    pub src_mac: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    #[serde(serialize_with = "hex")]
    pub mark: u32,
    pub ct: CtCtx,
    pub socket: LocalSocket,
    /// The owner of the socket that sent the packet; `None` when no local socket sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The sending socket's cgroup and its ancestors, as nft names them (relative to
    /// /sys/fs/cgroup), by level: `[0]` is level 1. `None` when no local socket sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Vec<String>>,
}

impl PacketCtx {
    /// A connection's first packet: `ct state new`, original direction, marks zero, no
    /// interfaces (set `iif`/`oif`/`src_mac` as the hook needs).
    pub fn new(l4proto: u8, src: SocketAddr, dst: SocketAddr) -> PacketCtx {
        let ports = IpProto(l4proto).has_ports();
        PacketCtx {
            family: Family::of(&src.ip()),
            iif: None,
            oif: None,
            src_mac: None,
            src: src.ip(),
            dst: dst.ip(),
            l4proto,
            sport: ports.then_some(src.port()),
            dport: ports.then_some(dst.port()),
            mark: 0,
            ct: CtCtx {
                state: CtState::New,
                direction: CtDirection::Original,
                mark: 0,
            },
            socket: LocalSocket::None,
            uid: None,
            cgroup: None,
        }
    }

    /// The answer to this packet (addresses and ports swapped, reply direction,
    /// established, packet mark zero, same conntrack mark, no interfaces). NAT is not
    /// undone here: give the translated addresses if the connection was translated.
    pub fn reply(&self) -> PacketCtx {
        PacketCtx {
            family: self.family,
            iif: None,
            oif: None,
            src_mac: None,
            src: self.dst,
            dst: self.src,
            l4proto: self.l4proto,
            sport: self.dport,
            dport: self.sport,
            mark: 0,
            ct: CtCtx {
                state: CtState::Established,
                direction: match self.ct.direction {
                    CtDirection::Original => CtDirection::Reply,
                    CtDirection::Reply => CtDirection::Original,
                },
                mark: self.ct.mark,
            },
            socket: LocalSocket::None,
            uid: None,
            cgroup: None,
        }
    }

    /// Sent by a local socket of user `uid` in cgroup `cgroup` (relative to the cgroup2
    /// root, which nft names `nft_root`: `unified/` on a hybrid host).
    pub fn with_sender(mut self, uid: Option<u32>, cgroup: Option<&str>, nft_root: &str) -> Self {
        self.uid = uid;
        if let Some(c) = cgroup {
            let mut path = String::new();
            let mut levels = Vec::new();
            for part in c.split('/').filter(|p| !p.is_empty()) {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(part);
                levels.push(format!("{nft_root}{path}"));
            }
            self.cgroup = Some(levels);
        }
        self
    }

    pub fn with_iif(mut self, iif: &str) -> Self {
        self.iif = Some(iif.to_string());
        self
    }
    pub fn with_oif(mut self, oif: &str) -> Self {
        self.oif = Some(oif.to_string());
        self
    }
    pub fn with_src_mac(mut self, mac: &str) -> Self {
        self.src_mac = Some(super::ir::normalize_mac(mac).unwrap_or_else(|| mac.to_string()));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matched {
    Yes,
    No,
    /// Some condition is not modelled: the rule was assumed not to match.
    Maybe,
}

/// One rule the packet was tested against (or a base chain's policy applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `inet symroute pre`, `ip mangle PREROUTING`.
    pub chain: String,
    /// The rule's text (`policy drop` for a base chain's policy).
    pub rule: String,
    pub origin: Origin,
    pub matched: Matched,
    /// The verdict taken (`accept`, `jump classify`, `goto set_p0` from a map, …), when matched.
    pub verdict: Option<String>,
    #[serde(serialize_with = "hex")]
    pub mark_before: u32,
    #[serde(serialize_with = "hex")]
    pub mark_after: u32,
    #[serde(serialize_with = "hex")]
    pub ctmark_before: u32,
    #[serde(serialize_with = "hex")]
    pub ctmark_after: u32,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    Dnat,
    Redirect,
    Snat,
    Masquerade,
}

/// An address translation set up for the connection (first packet only). Replies carry
/// the translated addresses until conntrack reverses them: `before` is what the other
/// side of the translation sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatEvent {
    pub kind: NatKind,
    /// The destination (DNAT, redirect) or source (SNAT, masquerade) before.
    pub before_addr: IpAddr,
    pub before_port: Option<u16>,
    /// After; None when the kernel picks it (masquerade, redirect: an interface address).
    pub after_addr: Option<IpAddr>,
    pub after_port: Option<u16>,
    pub rule: String,
    pub origin: Origin,
}

/// Everything one hook did to one packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookResult {
    pub hook: Hook,
    pub ctx_after: PacketCtx,
    pub dropped: bool,
    pub steps: Vec<Step>,
    pub nat: Vec<NatEvent>,
    /// A TPROXY rule handed the packet to a local socket.
    pub local_delivery: bool,
    /// Output hook: a `type route` chain (or iptables' mangle/nat OUTPUT) changed the
    /// mark or an address, so the kernel routes the packet again.
    pub reroute: bool,
    /// Some rule or statement was beyond the model (see the steps' notes).
    pub uncertain: bool,
    /// Hook-level remarks (nat chains skipped, unknown jump targets, …).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::Yes
    } else {
        Tri::No
    }
}

/// Runs the base chains of `hook` (of the families that see `pkt`) for `pkt`.
pub fn evaluate(ruleset: &Ruleset, hook: Hook, pkt: &PacketCtx) -> HookResult {
    let mut index: HashMap<(NfFamily, &str, &str), usize> = HashMap::new();
    for (i, c) in ruleset.chains.iter().enumerate() {
        index
            .entry((c.family, c.table.as_str(), c.name.as_str()))
            .or_insert(i);
    }
    let mut bases: Vec<usize> = ruleset
        .chains
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.base.as_ref().is_some_and(|b| b.hook == hook) && c.family.covers(pkt.family)
        })
        .map(|(i, _)| i)
        .collect();
    bases.sort_by_key(|&i| ruleset.chains[i].base.as_ref().map_or(0, |b| b.priority));

    let mut ev = Eval {
        rs: ruleset,
        index,
        hook,
        ctx: pkt.clone(),
        steps: Vec::new(),
        nat: Vec::new(),
        local_delivery: false,
        uncertain: false,
        notes: Vec::new(),
        budget: MAX_RULES,
        nat_done: false,
        kind: ChainKind::Filter,
    };
    let mut dropped = false;
    let mut reroute = false;
    for ci in bases {
        let chain = &ruleset.chains[ci];
        let Some(base) = chain.base.as_ref() else {
            continue;
        };
        if base.kind == ChainKind::Nat {
            if !matches!(ev.ctx.ct.state, CtState::New | CtState::Related) {
                ev.notes.push(format!(
                    "nat chain {} not traversed: only a connection's first packet is (this one is ct state {})",
                    chain.label(),
                    ev.ctx.ct.state.as_str()
                ));
                continue;
            }
            if ev.nat_done {
                ev.notes.push(format!(
                    "nat chain {} not traversed: an earlier nat chain already set up the translation",
                    chain.label()
                ));
                continue;
            }
        }
        ev.kind = base.kind;
        let before = (ev.ctx.mark, ev.ctx.src, ev.ctx.dst, ev.ctx.dport);
        let end = ev.run_base(ci, base.policy);
        let changed = before != (ev.ctx.mark, ev.ctx.src, ev.ctx.dst, ev.ctx.dport);
        if hook == Hook::Output && changed {
            match base.kind {
                ChainKind::Route | ChainKind::Nat => reroute = true,
                ChainKind::Filter if before.0 != ev.ctx.mark => ev.notes.push(format!(
                    "chain {} is type filter: the packet mark changed but the packet is not routed again (a type route chain would re-route it)",
                    chain.label()
                )),
                ChainKind::Filter => {}
            }
        }
        if end == End::Drop {
            dropped = true;
            break;
        }
    }
    HookResult {
        hook,
        ctx_after: ev.ctx,
        dropped,
        steps: ev.steps,
        nat: ev.nat,
        local_delivery: ev.local_delivery,
        reroute,
        uncertain: ev.uncertain,
        notes: ev.notes,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Accept,
    Drop,
}

struct Eval<'a> {
    rs: &'a Ruleset,
    index: HashMap<(NfFamily, &'a str, &'a str), usize>,
    hook: Hook,
    ctx: PacketCtx,
    steps: Vec<Step>,
    nat: Vec<NatEvent>,
    local_delivery: bool,
    uncertain: bool,
    notes: Vec<String>,
    budget: usize,
    nat_done: bool,
    /// The kind of the base chain being run.
    kind: ChainKind,
}

impl<'a> Eval<'a> {
    fn policy(&mut self, ci: usize, policy: Policy) -> End {
        match policy {
            Policy::Accept => End::Accept,
            Policy::Drop => {
                let c = &self.rs.chains[ci];
                let origin = match c.rules.first().map(|r| &r.origin) {
                    Some(Origin::Iptables { tool, .. }) => Origin::Iptables {
                        tool: tool.clone(),
                        table: c.table.clone(),
                        chain: c.name.clone(),
                        line: 0,
                    },
                    _ => Origin::Nft {
                        family: c.family,
                        table: c.table.clone(),
                        chain: c.name.clone(),
                        handle: None,
                        line: None,
                    },
                };
                self.steps.push(Step {
                    chain: c.label(),
                    rule: "policy drop".into(),
                    origin,
                    matched: Matched::Yes,
                    verdict: Some("drop".into()),
                    mark_before: self.ctx.mark,
                    mark_after: self.ctx.mark,
                    ctmark_before: self.ctx.ct.mark,
                    ctmark_after: self.ctx.ct.mark,
                    note: Some("end of base chain: its policy drops the packet".into()),
                });
                End::Drop
            }
        }
    }

    fn run_base(&mut self, base: usize, policy: Policy) -> End {
        let mut stack: Vec<(usize, usize)> = vec![(base, 0)];
        loop {
            let Some(&(ci, ri)) = stack.last() else {
                return self.policy(base, policy);
            };
            let chain = &self.rs.chains[ci];
            if ri >= chain.rules.len() {
                stack.pop();
                continue;
            }
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            if self.budget == 0 {
                self.uncertain = true;
                self.notes.push(format!(
                    "gave up after {MAX_RULES} rules (a loop?); the rest of {} was not evaluated",
                    self.rs.chains[base].label()
                ));
                return End::Accept;
            }
            self.budget -= 1;
            let Some(verdict) = self.run_rule(ci, ri) else {
                continue;
            };
            match verdict {
                Verdict::Continue | Verdict::Vmap(_) => {}
                Verdict::Accept => return End::Accept,
                Verdict::Drop => return End::Drop,
                Verdict::Return => {
                    stack.pop();
                }
                Verdict::Jump(t) => self.enter(&mut stack, ci, &t, false),
                Verdict::Goto(t) => self.enter(&mut stack, ci, &t, true),
            }
        }
    }

    fn enter(&mut self, stack: &mut Vec<(usize, usize)>, from: usize, target: &str, goto: bool) {
        let chain = &self.rs.chains[from];
        let key = (chain.family, chain.table.as_str(), target);
        let Some(&ti) = self.index.get(&key) else {
            self.uncertain = true;
            self.notes.push(format!(
                "{} jumps to chain {target}, which is not in table {} {}: ignored",
                chain.label(),
                chain.family,
                chain.table
            ));
            return;
        };
        if goto {
            stack.pop();
        }
        if stack.len() >= MAX_DEPTH {
            self.uncertain = true;
            self.notes.push(format!(
                "jump to {target} exceeds the kernel's {MAX_DEPTH} nested chains: not followed"
            ));
            return;
        }
        stack.push((ti, 0));
    }

    /// Tests the rule; when it matches, runs its statements and returns its verdict (a
    /// verdict map resolved to the chosen entry's verdict, or `Continue`).
    fn run_rule(&mut self, ci: usize, ri: usize) -> Option<Verdict> {
        let rs = self.rs;
        let chain = &rs.chains[ci];
        let rule = &chain.rules[ri];
        let (mark_before, ct_before) = (self.ctx.mark, self.ctx.ct.mark);
        let mut failed: Option<&Match> = None;
        let mut unknown: Vec<&Match> = Vec::new();
        for m in &rule.matches {
            match self.test(m) {
                Tri::Yes => {}
                Tri::No => {
                    failed = Some(m);
                    break;
                }
                Tri::Maybe => unknown.push(m),
            }
        }
        if let Some(m) = failed {
            self.push_step(
                chain,
                rule,
                Matched::No,
                None,
                mark_before,
                ct_before,
                vec![format!("`{m}` does not match")],
            );
            return None;
        }
        if !unknown.is_empty() {
            self.uncertain = true;
            let what: Vec<String> = unknown.iter().map(|m| format!("`{m}`")).collect();
            self.push_step(
                chain,
                rule,
                Matched::Maybe,
                None,
                mark_before,
                ct_before,
                vec![format!(
                    "not modelled: {}; assumed not to match, but the rule may apply",
                    what.join(", ")
                )],
            );
            return None;
        }
        let mut notes = Vec::new();
        for s in &rule.stmts {
            self.apply(s, rule, &mut notes);
        }
        let mut verdict = rule.verdict.clone();
        if let Verdict::Vmap(v) = &rule.verdict {
            if let Some(share) = share_note(v) {
                notes.push(share);
            }
            let mut chosen = None;
            for e in &v.entries {
                match self.test(&e.key) {
                    Tri::Yes => {
                        chosen = Some(e.verdict.clone());
                        break;
                    }
                    Tri::Maybe => {
                        self.uncertain = true;
                        notes.push(format!("map entry `{}` not modelled: skipped", e.key));
                    }
                    Tri::No => {}
                }
            }
            verdict = match chosen {
                Some(v) => v,
                None => {
                    notes.push(format!(
                        "`{}`: no map entry for this packet, continue",
                        v.key
                    ));
                    Verdict::Continue
                }
            };
        }
        let verdict_text = verdict.to_string();
        self.push_step(
            chain,
            rule,
            Matched::Yes,
            Some(verdict_text),
            mark_before,
            ct_before,
            notes,
        );
        Some(verdict)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_step(
        &mut self,
        chain: &super::ir::Chain,
        rule: &Rule,
        matched: Matched,
        verdict: Option<String>,
        mark_before: u32,
        ctmark_before: u32,
        notes: Vec<String>,
    ) {
        self.steps.push(Step {
            chain: chain.label(),
            rule: rule.text.clone(),
            origin: rule.origin.clone(),
            matched,
            verdict,
            mark_before,
            mark_after: self.ctx.mark,
            ctmark_before,
            ctmark_after: self.ctx.ct.mark,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        });
    }

    fn apply(&mut self, s: &Stmt, rule: &Rule, notes: &mut Vec<String>) {
        let has_ct = self.ctx.ct.state.has_entry();
        match s {
            Stmt::SetMark { key, value } => {
                if value.reads(MarkKey::Ct) && !has_ct {
                    notes.push(format!(
                        "`{s}` reads the conntrack mark, but the packet has no conntrack entry (ct state {}): nothing set",
                        self.ctx.ct.state.as_str()
                    ));
                    return;
                }
                let new = value.eval(self.ctx.mark, self.ctx.ct.mark);
                match key {
                    MarkKey::Meta => {
                        let old = self.ctx.mark;
                        self.ctx.mark = new;
                        if old == new {
                            notes.push(format!(
                                "sets the packet mark to {new:#010x}: no change (it already was {old:#010x})"
                            ));
                        }
                        if self.hook.after_routing() {
                            notes.push(format!(
                                "this chain hooks {}, after the routing decision: a packet mark set here cannot change this packet's route{}",
                                self.hook.as_str().to_uppercase(),
                                match self.hook {
                                    Hook::Forward => " (and packets to or from this host itself never pass FORWARD)",
                                    _ => "",
                                }
                            ));
                        }
                    }
                    MarkKey::Ct => {
                        if !has_ct {
                            notes.push(format!(
                                "no conntrack entry (ct state {}): the conntrack mark is not set",
                                self.ctx.ct.state.as_str()
                            ));
                            return;
                        }
                        let old = self.ctx.ct.mark;
                        self.ctx.ct.mark = new;
                        if old == new {
                            notes
                                .push(format!("sets the conntrack mark to {new:#010x}: no change"));
                        }
                    }
                }
            }
            Stmt::Dnat(to) | Stmt::Redirect(to) => {
                let kind = if matches!(s, Stmt::Dnat(_)) {
                    NatKind::Dnat
                } else {
                    NatKind::Redirect
                };
                if !self.nat_allowed(&[Hook::Prerouting, Hook::Output], s, notes) {
                    return;
                }
                let event = NatEvent {
                    kind,
                    before_addr: self.ctx.dst,
                    before_port: self.ctx.dport,
                    after_addr: if kind == NatKind::Dnat { to.addr } else { None },
                    after_port: to.port.or(self.ctx.dport),
                    rule: rule.text.clone(),
                    origin: rule.origin.clone(),
                };
                self.set_dst(to, kind, notes);
                self.nat.push(event);
                self.nat_done = true;
            }
            Stmt::Snat(to) | Stmt::Masquerade(to) => {
                let kind = if matches!(s, Stmt::Snat(_)) {
                    NatKind::Snat
                } else {
                    NatKind::Masquerade
                };
                if !self.nat_allowed(&[Hook::Postrouting, Hook::Input], s, notes) {
                    return;
                }
                let event = NatEvent {
                    kind,
                    before_addr: self.ctx.src,
                    before_port: self.ctx.sport,
                    after_addr: if kind == NatKind::Snat { to.addr } else { None },
                    after_port: to.port.or(self.ctx.sport),
                    rule: rule.text.clone(),
                    origin: rule.origin.clone(),
                };
                match (kind, to.addr) {
                    (NatKind::Snat, Some(a)) if Family::of(&a) == self.ctx.family => {
                        self.ctx.src = a;
                        if to.addr_last.is_some() {
                            notes.push("snat to a range: the first address is shown".into());
                        }
                    }
                    (NatKind::Masquerade, _) => notes.push(format!(
                        "masquerade: the source becomes an address of {} (picked by the kernel)",
                        self.ctx.oif.as_deref().unwrap_or("the outgoing interface")
                    )),
                    _ => {}
                }
                if let (Some(p), Some(_)) = (to.port, self.ctx.sport) {
                    self.ctx.sport = Some(p);
                }
                self.nat.push(event);
                self.nat_done = true;
            }
            Stmt::Tproxy(to) => {
                self.local_delivery = true;
                notes.push(format!(
                    "tproxy: the packet is delivered to the local socket listening on {} (if none exists, nft skips the rest of the rule and iptables drops the packet)",
                    if *to == NatTo::default() { "its destination".to_string() } else { to.to_string() }
                ));
            }
            Stmt::Counter | Stmt::Log => {}
            Stmt::SetUpdate { set, key } => {
                // `ip saddr` carries an implicit `meta nfproto ipv4` (and `ip6` likewise).
                let other = match self.ctx.family {
                    Family::Inet4 => "ip6 ",
                    Family::Inet6 => "ip ",
                };
                if !key.starts_with(other) {
                    notes.push(format!(
                        "remembers this packet's {key} in dynamic set @{set} (a later lookup there matches it until the set's timeout)"
                    ));
                }
            }
            Stmt::Unknown(t) => {
                self.uncertain = true;
                notes.push(format!("statement not modelled: `{t}`"));
            }
        }
    }

    fn nat_allowed(&mut self, hooks: &[Hook], s: &Stmt, notes: &mut Vec<String>) -> bool {
        if self.kind != ChainKind::Nat || !hooks.contains(&self.hook) {
            notes.push(format!(
                "`{s}` outside a nat chain at {}: ignored",
                hooks
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            ));
            self.uncertain = true;
            return false;
        }
        if self.ctx.ct.state != CtState::New {
            notes
                .push("translation for a related connection: approximated as for a new one".into());
        }
        true
    }

    fn set_dst(&mut self, to: &NatTo, kind: NatKind, notes: &mut Vec<String>) {
        match (kind, to.addr) {
            (NatKind::Dnat, Some(a)) if Family::of(&a) == self.ctx.family => {
                self.ctx.dst = a;
                if to.addr_last.is_some() {
                    notes.push("dnat to a range: the first address is shown".into());
                }
            }
            (NatKind::Dnat, Some(_)) => {
                notes.push("dnat to an address of the other family: ignored".into())
            }
            (NatKind::Redirect, _) => notes.push(
                "redirect: the destination becomes the incoming interface's primary address (127.0.0.1 / ::1 for local packets)"
                    .into(),
            ),
            _ => {}
        }
        if let (Some(p), Some(_)) = (to.port, self.ctx.dport) {
            self.ctx.dport = Some(p);
            if to.port_last.is_some() {
                notes.push("port range: the first port is shown".into());
            }
        }
    }

    fn test(&self, m: &Match) -> Tri {
        let c = &self.ctx;
        let has_ct = c.ct.state.has_entry();
        let x = |op: super::ir::Op, b: bool| tri(b != op.negated());
        match m {
            Match::Iifname { op, names } => {
                let n = c.iif.as_deref().unwrap_or("");
                x(*op, names.iter().any(|p| ifname_matches(p, n)))
            }
            Match::Oifname { op, names } => {
                let n = c.oif.as_deref().unwrap_or("");
                x(*op, names.iter().any(|p| ifname_matches(p, n)))
            }
            Match::EtherSaddr { op, macs } => match &c.src_mac {
                None => Tri::No,
                Some(mac) => x(*op, macs.iter().any(|m| m.eq_ignore_ascii_case(mac))),
            },
            Match::Saddr { family, op, addrs } => {
                if *family != c.family {
                    return Tri::No;
                }
                x(*op, addrs.iter().any(|a| a.contains(&c.src)))
            }
            Match::Daddr { family, op, addrs } => {
                if *family != c.family {
                    return Tri::No;
                }
                x(*op, addrs.iter().any(|a| a.contains(&c.dst)))
            }
            Match::L4proto { op, protos } => x(*op, protos.contains(&c.l4proto)),
            Match::Sport { op, ports } => match c.sport {
                None => Tri::No,
                Some(p) => x(*op, ports.iter().any(|(a, b)| *a <= p && p <= *b)),
            },
            Match::Dport { op, ports } => match c.dport {
                None => Tri::No,
                Some(p) => x(*op, ports.iter().any(|(a, b)| *a <= p && p <= *b)),
            },
            Match::Mark {
                key,
                mask,
                op,
                values,
            } => {
                let v = match key {
                    MarkKey::Meta => c.mark,
                    MarkKey::Ct if !has_ct => return Tri::No,
                    MarkKey::Ct => c.ct.mark,
                } & mask;
                x(*op, values.iter().any(|(a, b)| *a <= v && v <= *b))
            }
            Match::CtState { op, states } => x(*op, states.contains(&c.ct.state)),
            Match::CtDirection { op, direction } => {
                if !has_ct {
                    return Tri::No;
                }
                x(*op, c.ct.direction == *direction)
            }
            Match::Socket { transparent } => tri(match transparent {
                None => c.socket != LocalSocket::None,
                Some(true) => c.socket == LocalSocket::Transparent,
                Some(false) => c.socket == LocalSocket::Plain,
            }),
            Match::Nfproto { family } => tri(*family == c.family),
            // Without a sending socket the expression breaks: no match.
            Match::Skuid { op, uids } => match c.uid {
                None => Tri::No,
                Some(u) => x(*op, uids.iter().any(|(a, b)| *a <= u && u <= *b)),
            },
            Match::Cgroupv2 { op, level, paths } => match &c.cgroup {
                // An arriving packet: nft looks up the local socket it is for, which the
                // trace does not model.
                None if c.iif.is_some() => Tri::Maybe,
                None => Tri::No,
                Some(levels) => {
                    let hit = match level {
                        Some(l) => (*l as usize)
                            .checked_sub(1)
                            .and_then(|i| levels.get(i))
                            .is_some_and(|p| paths.contains(p)),
                        None => levels.iter().any(|p| paths.contains(p)),
                    };
                    x(*op, hit)
                }
            },
            // The first branch of a random share stands for all of them (see the note).
            Match::Numgen { values, .. } => tri(values.iter().any(|(a, _)| *a == 0)),
            Match::Unknown(_) => Tri::Maybe,
        }
    }
}

/// A verdict map on `numgen random`: each branch's share of the packets, and which one
/// the trace follows.
fn share_note(v: &super::ir::Vmap) -> Option<String> {
    let mut shares = Vec::new();
    for e in &v.entries {
        let Match::Numgen { modulus, values } = &e.key else {
            return None;
        };
        let n: u32 = values.iter().map(|(a, b)| b.saturating_sub(*a) + 1).sum();
        let pct = f64::from(n) * 100.0 / f64::from((*modulus).max(1));
        shares.push(format!("{pct:.0}% {}", e.verdict));
    }
    (!shares.is_empty()).then(|| {
        format!(
            "random share of new connections: {}; this trace follows the first",
            shares.join(", ")
        )
    })
}

/// nft `eth*` / iptables `eth+` (stored as `*`) are prefix wildcards; `\*` is a literal star.
fn ifname_matches(pattern: &str, name: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        if !prefix.ends_with('\\') {
            return name.starts_with(prefix);
        }
        return name == format!("{}*", &prefix[..prefix.len() - 1]);
    }
    pattern == name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(ifname_matches("eth*", "eth0"));
        assert!(ifname_matches("eth0", "eth0"));
        assert!(!ifname_matches("eth0", "eth00"));
        assert!(ifname_matches("up\\*", "up*"));
        assert!(!ifname_matches("up\\*", "up1"));
        assert!(ifname_matches("*", ""));
    }
}
