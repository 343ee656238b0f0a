//! The firewall side: every rule as reached from a hook, with the conditions on the way,
//! and what it does to marks.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Visit<'a> {
    pub(super) rule: &'a Rule,
    pub(super) chain: &'a Chain,
    pub(super) hook: Hook,
    /// Rank of the base chain among the hook's base chains (priority, listing order).
    pub(super) base: usize,
    pub(super) seq: usize,
    /// Jump/goto rules (and vmap keys) leading here.
    pub(super) via: Vec<&'a Rule>,
    pub(super) ctx: Vec<Match>,
    /// Earlier rules on the way that end the chain for the packets they match.
    pub(super) excl: Vec<&'a Rule>,
    /// The rule is in the base chain itself.
    pub(super) in_base: bool,
}

pub(super) fn rid(r: &Rule) -> usize {
    r as *const Rule as usize
}

pub(super) fn terminal_verdict(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Accept | Verdict::Drop | Verdict::Return | Verdict::Goto(_)
    )
}

/// The foreign tool a chain belongs to, by the names those tools use.
pub(super) fn tool_of(c: &Chain) -> Option<&'static str> {
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

pub(super) fn is_symroute_chain(c: &Chain) -> bool {
    c.family == NfFamily::Inet && c.table == symroute_core::plan::nft::TABLE
}

pub(super) fn families_of(f: NfFamily) -> BTreeSet<Family> {
    match f {
        NfFamily::Ip => [Family::Inet4].into(),
        NfFamily::Ip6 => [Family::Inet6].into(),
        _ => [Family::Inet4, Family::Inet6].into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyKind {
    /// packet mark ← conntrack mark
    Restore,
    /// conntrack mark ← packet mark
    Save,
}

pub(super) fn copy_kind(s: &Stmt) -> Option<CopyKind> {
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
pub(super) fn const_set(s: &Stmt) -> Option<(MarkKey, u32)> {
    match s {
        Stmt::SetMark { key, value } if !value.reads(other(*key)) => Some((*key, value.eval(0, 0))),
        _ => None,
    }
}

pub(super) fn other(k: MarkKey) -> MarkKey {
    match k {
        MarkKey::Meta => MarkKey::Ct,
        MarkKey::Ct => MarkKey::Meta,
    }
}

/// Does the rule set or test marks (or otherwise touch them)?
pub(super) fn touches_marks(r: &Rule) -> bool {
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
pub(super) fn bits_used(r: &Rule) -> u32 {
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

/// Packet-mark bits a rule sets to a constant 0 (a masked reset like
/// `--set-xmark 0x0/0xff`, or a whole `--set-mark 0`).
pub(super) fn cleared_bits(r: &Rule) -> u32 {
    let mut bits = 0;
    for s in &r.stmts {
        if let Stmt::SetMark {
            key: MarkKey::Meta,
            value,
        } = s
        {
            let l = value.lin();
            bits |= !(l.meta | l.ct) & !l.k;
        }
    }
    bits
}

pub(super) fn is_skip_marked(r: &Rule) -> bool {
    matches!(r.verdict, Verdict::Return | Verdict::Accept)
        && r.stmts.iter().all(|s| matches!(s, Stmt::Counter | Stmt::Log))
        && !r.matches.is_empty()
        && r.matches.iter().all(|m| {
            matches!(m, Match::Mark { op: Op::Ne, values, .. } if values.as_slice() == [(0, 0)])
        })
}

/// Walks one chain for one hook, recording every rule with the conditions on the way.
#[allow(clippy::too_many_arguments)]
pub(super) fn walk<'a>(
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
