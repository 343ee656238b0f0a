//! Checks on marks: who sets them, where, whether the connection remembers them, and
//! whether the `ip rule`s that test them can ever match; rp_filter; shared mark bits.

use std::collections::{BTreeMap, BTreeSet};

use super::facts::{hex, ip_rule_cmd, rule_place, value_mask, Ctx, FwRule, Tool, Write, WG_MARK};
use super::{Finding, Severity};
use crate::marks::IpRuleMark;
use crate::netfilter::{ChainKind, Hook, MarkKey, Match, Op, Origin, Stmt};
use crate::routing::{RuleAction, RuleEntry, TABLE_MAIN};
use symroute_core::model::Family;
use symroute_core::plan::diff::MarkUser;

pub fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for fam in [Family::Inet4, Family::Inet6] {
        rule_value_outside_mask(ctx, fam, out);
        let rules = ctx.mark_rules(fam);
        if rules.is_empty() {
            continue;
        }
        let prod = ctx.producible(fam);
        let unsatisfied: Vec<&RuleEntry> = rules
            .iter()
            .copied()
            .filter(|r| needed(r) & !prod != 0)
            .collect();
        never_set(ctx, fam, &unsatisfied, prod, out);
        mark_zero(ctx, fam, &rules, &unsatisfied, out);
        setter_outside_mask(ctx, fam, &unsatisfied, out);
        after_routing(ctx, fam, &rules, out);
        not_saved(ctx, fam, &rules, out);
        not_restored(ctx, fam, &rules, out);
        no_output_restore(ctx, fam, &rules, out);
    }
    rp_filter(ctx, out);
    bits_shared(ctx, out);
}

fn fw_finding(
    severity: Severity,
    code: &'static str,
    r: &FwRule,
    why: String,
    fix: String,
) -> Finding {
    Finding::new(severity, code, &r.rule.text, r.place(), why, fix)
}

/// (value & mask, mask) of an fwmark rule.
fn vm(r: &RuleEntry) -> (u32, u32) {
    r.fwmark.map(|(v, m)| (v & m, m)).unwrap_or((0, 0))
}

fn needed(r: &RuleEntry) -> u32 {
    let (v, _) = vm(r);
    v
}

fn mask(r: &RuleEntry) -> u32 {
    vm(r).1
}

fn short(r: &RuleEntry) -> String {
    r.text.replace('\t', " ")
}

/// The value setting the bits `r` tests to what it expects, as iptables / nft write it.
fn ipt_set(r: &RuleEntry) -> String {
    let (v, m) = vm(r);
    if m == u32::MAX {
        format!("-j MARK --set-mark {}", hex(v))
    } else {
        format!("-j MARK --set-xmark {}/{}", hex(v), hex(m))
    }
}

fn nft_set(r: &RuleEntry) -> String {
    let (v, m) = vm(r);
    if m == u32::MAX {
        format!("meta mark set {}", hex(v))
    } else {
        format!("meta mark set meta mark and {:#010x} or {:#010x}", !m, v)
    }
}

fn connmark_masks(m: u32) -> String {
    if m == u32::MAX {
        String::new()
    } else {
        format!(" --nfmask {m:#x} --ctmask {m:#x}")
    }
}

fn nft_and(m: u32, what: &str) -> String {
    if m == u32::MAX {
        what.to_string()
    } else {
        format!("{what} and {m:#010x}")
    }
}

/// Replace this rule with `new_tail` (the statement part) kept on its selector.
fn replace_cmd(s: &FwRule, ipt_tail: &str, nft_tail: &str) -> String {
    let sel = s.selector();
    let sp = if sel.is_empty() { "" } else { " " };
    match &s.rule.origin {
        Origin::Iptables { chain, .. } => {
            format!(
                "`{} -R {chain} {}{sp}{sel} {ipt_tail}`",
                s.table_words(),
                s.pos
            )
        }
        Origin::Nft {
            family,
            table,
            chain,
            handle,
            ..
        } => match handle {
            Some(h) => format!(
                "`nft replace rule {family} {table} {chain} handle {h} {sel}{sp}{nft_tail}`"
            ),
            None => format!("`{sel}{sp}{nft_tail}` in {family} {table} {chain}"),
        },
    }
}

/// A command adding a rule with `sel` that sets what `r` expects, before routing.
fn mark_before_routing_cmd(s: Option<&FwRule>, r: &RuleEntry) -> String {
    let sel = s.map(|s| s.selector()).unwrap_or_default();
    let (sel, had_oif) = strip_oif(&sel);
    let sp = if sel.is_empty() { "" } else { " " };
    let tool = if r.family == Family::Inet6 {
        "ip6tables"
    } else {
        "iptables"
    };
    let mut cmd = match s.map(|s| &s.rule.origin) {
        Some(Origin::Nft { family, table, .. }) => format!(
            "`nft add chain {family} {table} pre '{{ type filter hook prerouting priority mangle; }}'` and `nft add rule {family} {table} pre {sel}{sp}{}`",
            nft_set(r)
        ),
        _ => format!("`{tool} -t mangle -A PREROUTING {sel}{sp}{}`", ipt_set(r)),
    };
    if sel.is_empty() {
        cmd = cmd
            .replace("PREROUTING -j", "PREROUTING <which packets> -j")
            .replace("pre meta", "pre <which packets> meta");
    }
    if had_oif {
        cmd.push_str(
            " (the output interface is not known before routing: select by destination instead)",
        );
    }
    cmd
}

fn strip_oif(sel: &str) -> (String, bool) {
    let words: Vec<&str> = sel.split_whitespace().collect();
    let mut out = Vec::new();
    let mut had = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if matches!(w, "-o" | "--out-interface" | "oifname") {
            had = true;
            if out.last() == Some(&"!") {
                out.pop();
            }
            i += 2;
            continue;
        }
        out.push(w);
        i += 1;
    }
    (out.join(" "), had)
}

/// `ip rule fwmark V/M` with bits of V outside M: the kernel tests `(mark ^ V) & M`.
fn rule_value_outside_mask(ctx: &Ctx, fam: Family, out: &mut Vec<Finding>) {
    for r in ctx.host.routing.rules_of(fam) {
        let Some((v, m)) = r.fwmark else { continue };
        if v & !m == 0 || super::facts::rule_tool(r).is_some() {
            continue;
        }
        let eff = v & m;
        let action = match r.action {
            RuleAction::Lookup(t) => format!("table {}", crate::routing::table_name(t)),
            a => format!("{a:?}").to_lowercase(),
        };
        let mut why = format!(
            "the kernel compares only the bits in the mask ((mark ^ {}) & {} == 0): the bits {} of the value are ignored, so this rule matches every packet whose mark & {} is {}",
            hex(v),
            hex(m),
            hex(v & !m),
            hex(m),
            hex(eff)
        );
        if eff == 0 {
            if r.not {
                why.push_str(
                    " — including every unmarked packet, which therefore skips this `not` rule",
                );
            } else {
                why.push_str(&format!(
                    " — including every unmarked packet: all traffic without a mark is sent to {action}"
                ));
            }
        }
        let shifted = (m != 0)
            .then(|| v.checked_shl(m.trailing_zeros()))
            .flatten()
            .filter(|s| s & !m == 0 && *s != 0 && s >> m.trailing_zeros() == v);
        let old = format!("fwmark {}", value_mask(v, m));
        let mut fix = format!("`{}`, then ", ip_rule_cmd(r, "del"));
        if let Some(s) = shifted {
            fix.push_str(&format!(
                "`{}` (the value moved into the mask), or ",
                ip_rule_cmd(r, "add").replace(&old, &format!("fwmark {}", value_mask(s, m)))
            ));
        }
        fix.push_str(&format!(
            "`{}` (the mask widened to cover the value); the firewall must set the same bits",
            ip_rule_cmd(r, "add").replace(&old, &format!("fwmark {}", value_mask(v, m | v)))
        ));
        out.push(Finding::new(
            Severity::Error,
            "mark-outside-mask",
            &r.text,
            rule_place(r),
            why,
            fix,
        ));
    }
}

/// Hand-made meta-mark writes of `fam` that touch bits of `r`'s mask.
fn touching<'c, 'a>(ctx: &'c Ctx<'a>, fam: Family, r: &RuleEntry) -> Vec<(&'c FwRule<'a>, Write)> {
    let m = mask(r);
    ctx.fw_of(fam)
        .filter(|s| s.hand())
        .flat_map(|s| {
            s.meta_writes()
                .filter(|w| w.written() & m != 0)
                .map(move |w| (s, *w))
        })
        .collect()
}

fn never_set(
    ctx: &Ctx,
    fam: Family,
    unsatisfied: &[&RuleEntry],
    prod: u32,
    out: &mut Vec<Finding>,
) {
    for r in unsatisfied {
        let (v, m) = vm(r);
        let missing = v & !prod;
        let touch = touching(ctx, fam, r);
        let mut why = format!(
            "no firewall rule can set mark bit(s) {} that this rule needs (mark & {} == {}): it matches nothing, unless a program marks its own sockets (SO_MARK)",
            hex(missing),
            hex(m),
            hex(v)
        );
        if !touch.is_empty() {
            let quoted: Vec<String> = touch
                .iter()
                .take(2)
                .map(|(s, _)| format!("`{}`", s.rule.text))
                .collect();
            why.push_str(&format!(
                "; the rule(s) that write these bits set other values: {}",
                quoted.join(", ")
            ));
        }
        let example = touch
            .iter()
            .map(|(s, _)| *s)
            .find(|s| s.selective())
            .or(touch.first().map(|(s, _)| *s));
        let fix = format!(
            "mark the packets before routing: {} (and the host's own connections in an output chain that re-routes: iptables mangle OUTPUT, nft `type route`), or delete the rule: `{}`",
            mark_before_routing_cmd(example, r),
            ip_rule_cmd(r, "del")
        );
        out.push(Finding::new(
            Severity::Error,
            "fwmark-never-set",
            &r.text,
            rule_place(r),
            why,
            fix,
        ));
    }
}

fn mark_zero(
    ctx: &Ctx,
    fam: Family,
    rules: &[&RuleEntry],
    unsatisfied: &[&RuleEntry],
    out: &mut Vec<Finding>,
) {
    for s in ctx.fw_of(fam).filter(|s| s.hand()) {
        for w in s.meta_writes() {
            if !w.pure_const() || w.const_val != 0 {
                continue;
            }
            let Some(r) = rules.iter().find(|r| {
                w.const_bits & needed(r) != 0 && unsatisfied.iter().any(|u| u.text == r.text)
            }) else {
                continue;
            };
            let (v, _) = vm(r);
            let why = format!(
                "mark 0 is no mark at all: this rule clears the bits {} instead of setting {}, so `{}` never matches these packets (mark values are plain numbers: to match `fwmark {}` the firewall must set {}, not 0)",
                hex(w.const_bits & mask(r)),
                hex(v),
                short(r),
                value_mask(v, mask(r)),
                hex(v)
            );
            let fix = format!(
                "set the value the ip rule expects: {}",
                replace_cmd(s, &ipt_set(r), &nft_set(r))
            );
            out.push(fw_finding(Severity::Error, "mark-zero", s, why, fix));
            break;
        }
    }
}

/// A constant that is the expected value not shifted into the mask (`0x1` for
/// `fwmark 0x1000000/0xff000000`).
fn setter_outside_mask(ctx: &Ctx, fam: Family, unsatisfied: &[&RuleEntry], out: &mut Vec<Finding>) {
    let all = ctx.all_fwmark_rules(fam);
    for r in unsatisfied {
        let (v, m) = vm(r);
        let tz = m.trailing_zeros();
        if tz == 0 || tz >= 32 {
            continue;
        }
        for s in ctx.fw_of(fam).filter(|s| s.hand()) {
            for w in s.meta_writes() {
                let val = w.const_val;
                if !w.pure_const() || val == 0 || val & m != 0 || val.checked_shl(tz) != Some(v) {
                    continue;
                }
                let satisfies_some = all.iter().any(|o| {
                    let (ov, om) = o.fwmark.unwrap_or((0, 0));
                    om != 0 && w.const_bits & om == om && val & om == ov & om
                });
                if satisfies_some {
                    continue;
                }
                let why = format!(
                    "sets {}, but `{}` tests only the bits {}: {} & {} = 0, so the rule never matches; the value it expects is {} ({} shifted into the mask)",
                    hex(val),
                    short(r),
                    hex(m),
                    hex(val),
                    hex(m),
                    hex(v),
                    hex(val)
                );
                let fix = format!(
                    "set the value inside the mask: {}",
                    replace_cmd(s, &ipt_set(r), &nft_set(r))
                );
                out.push(fw_finding(
                    Severity::Error,
                    "mark-outside-mask",
                    s,
                    why,
                    fix,
                ));
            }
        }
    }
}

fn later_hooks(h: Hook, kind: ChainKind) -> &'static [Hook] {
    match h {
        Hook::Forward => &[Hook::Forward, Hook::Postrouting],
        Hook::Postrouting => &[Hook::Postrouting],
        Hook::Input => &[Hook::Input],
        Hook::Output if kind != ChainKind::Route => &[Hook::Output, Hook::Postrouting],
        _ => &[],
    }
}

/// Saves (`ct mark set meta mark`, CONNMARK --save-mark) of any of `bits`, optionally only
/// those reached on one of `hooks`.
fn saves<'c, 'a>(
    ctx: &'c Ctx<'a>,
    fam: Family,
    bits: u32,
    hooks: Option<&[Hook]>,
) -> Vec<&'c FwRule<'a>> {
    ctx.fw_of(fam)
        .filter(|c| c.ct_writes().any(|w| w.copy_bits & bits != 0) || c.opaque_mark)
        .filter(|c| hooks.is_none_or(|hs| c.reach.iter().any(|r| hs.contains(&r.hook))))
        .collect()
}

/// Restores (`meta mark set ct mark`, CONNMARK --restore-mark) of any of `bits`.
fn restores<'c, 'a>(ctx: &'c Ctx<'a>, fam: Family, bits: u32) -> Vec<&'c FwRule<'a>> {
    ctx.fw_of(fam)
        .filter(|c| c.meta_writes().any(|w| w.copy_bits & bits != 0) || c.opaque_mark)
        .collect()
}

fn after_routing(ctx: &Ctx, fam: Family, rules: &[&RuleEntry], out: &mut Vec<Finding>) {
    let early = ctx.producible_before_routing(fam);
    for s in ctx.fw_of(fam).filter(|s| s.hand() && s.late()) {
        for w in s.meta_writes() {
            let touched: Vec<&RuleEntry> = rules
                .iter()
                .copied()
                .filter(|r| w.const_bits & mask(r) != 0)
                .collect();
            let Some(&first) = touched.first() else {
                continue;
            };
            // The value a rule tests, written here: what that rule is meant to see.
            let sets_tested = touched.iter().copied().find(|r| {
                let m = mask(r);
                w.const_bits & m == m && w.const_val & m == needed(r)
            });
            // Otherwise a reset (or another value) after routing is harmless when every
            // rule it touches gets its value before routing anyway (Shorewall's
            // `-A FORWARD -j MARK --set-xmark 0x0/0xff` beside its CONNMARK restores in
            // PREROUTING and OUTPUT). Seed 000's `--set-mark 0` is no such reset: nothing
            // before routing sets the mark its rule tests, so this is the mark meant for it.
            let later: BTreeSet<Hook> = s
                .reach
                .iter()
                .flat_map(|x| later_hooks(x.hook, x.kind).iter().copied())
                .collect();
            let later: Vec<Hook> = later.into_iter().collect();
            let r = sets_tested.unwrap_or(first);
            let bits = w.const_bits & mask(r);
            if !saves(ctx, fam, bits, Some(&later)).is_empty() {
                // Marks the connection for its later packets (restored before routing):
                // a design, not a mistake.
                continue;
            }
            if sets_tested.is_none() && touched.iter().all(|r| needed(r) & !early == 0) {
                out.push(fw_finding(
                    Severity::Info,
                    "mark-reset-after-routing",
                    s,
                    format!(
                        "changes the mark bits {} after the routing decision; {} {} value before routing (set in PREROUTING or restored from the connection), so routing has already used it, and the connection's mark is not touched: replies and later packets are routed by it as before",
                        hex(touched.iter().fold(0, |a, r| a | mask(r)) & w.const_bits),
                        touched.iter().map(|r| format!("`{}`", short(r))).collect::<Vec<_>>().join(", "),
                        if touched.len() == 1 { "gets its" } else { "get their" }
                    ),
                    "nothing to do for routing; the mark only matters to what runs after it (POSTROUTING rules, tc)".into(),
                ));
                continue;
            }
            let hook = s.reach[0].hook;
            let why = match hook {
                Hook::Forward => format!(
                    "FORWARD runs after the routing decision: this mark cannot change the route of the packet it is set on, and `{}` never sees it; connections to this host's own addresses (a server on the firewall itself) never pass FORWARD at all",
                    short(r)
                ),
                Hook::Postrouting => format!(
                    "POSTROUTING runs after the routing decision: the route is chosen before this mark exists, so `{}` never sees it",
                    short(r)
                ),
                Hook::Input => format!(
                    "INPUT runs after the routing decision, for packets delivered to this host; the mark is not saved in the connection, so neither this packet's route nor its replies' can follow `{}`",
                    short(r)
                ),
                _ => format!(
                    "this chain hooks output but does not re-route (nft `type filter`, or iptables' raw/nat tables): the locally generated packet is already routed when the mark is set, so `{}` never applies to it",
                    short(r)
                ),
            };
            let fix = if hook == Hook::Output {
                match &s.rule.origin {
                    Origin::Nft { family, table, .. } => format!(
                        "set it in a re-routing chain: `nft add chain {family} {table} out_route '{{ type route hook output priority mangle; }}'` and move the rule there: `nft add rule {family} {table} out_route {} {}`",
                        s.selector(),
                        nft_set(r)
                    ),
                    _ => format!("set it in mangle OUTPUT: `iptables -t mangle -A OUTPUT {} {}`", s.selector(), ipt_set(r)),
                }
            } else {
                format!(
                    "mark before routing: {} for packets arriving from outside (forwarded or to this host), plus the same in mangle OUTPUT for connections the host makes; then save and restore it with CONNMARK (see mark-not-saved)",
                    mark_before_routing_cmd(Some(s), r)
                )
            };
            out.push(fw_finding(
                Severity::Error,
                "mark-after-routing",
                s,
                why,
                fix,
            ));
            break;
        }
    }
}

/// Rules that are part of a divert (transparent proxy): the mark only has to route the
/// packets it is set on.
fn divert(ctx: &Ctx, fam: Family, s: &FwRule, r: &RuleEntry) -> bool {
    s.sometimes(|m| matches!(m, Match::Socket { .. }))
        || s.rule.stmts.iter().any(|x| matches!(x, Stmt::Tproxy(_)))
        || matches!(r.action, RuleAction::Lookup(t) if ctx.table_is_local(fam, t))
}

fn not_saved(ctx: &Ctx, fam: Family, rules: &[&RuleEntry], out: &mut Vec<Finding>) {
    for s in ctx.fw_of(fam).filter(|s| s.hand()) {
        for w in s.meta_writes() {
            if !w.pure_const() {
                continue;
            }
            let Some(r) = rules.iter().find(|r| w.const_bits & needed(r) != 0) else {
                continue;
            };
            let m = mask(r);
            if !saves(ctx, fam, w.const_bits & m, None).is_empty() || divert(ctx, fam, s, r) {
                continue;
            }
            let table_devs = match r.action {
                RuleAction::Lookup(t) => ctx.table_default_devs(fam, t),
                _ => BTreeSet::new(),
            };
            let back: Vec<String> = s
                .in_interfaces()
                .intersection(&table_devs)
                .cloned()
                .collect();
            let why = if s.first_packet_only() {
                format!(
                    "this rule marks only a connection's first packet, and nothing saves the mark in the connection (CONNMARK --save-mark / `ct mark set meta mark`): every later packet is routed without it, by the main table instead of `{}`",
                    short(r)
                )
            } else if let Some(i) = back.first() {
                format!(
                    "the mark is on the packets arriving on {i} and is not saved in the connection (CONNMARK --save-mark / `ct mark set meta mark`): the replies, which are what must go back out {i}, carry no mark and take the main table's route"
                )
            } else if s.late() {
                "the mark is set after routing and not saved in the connection (CONNMARK --save-mark / `ct mark set meta mark`): no packet of the connection, in either direction, is routed with it".to_string()
            } else {
                continue;
            };
            let masks = connmark_masks(m);
            let fix = if s.is_iptables() {
                let t = s.iptables_tool();
                format!(
                    "remember it in the connection and restore it on every packet: `{t} -t mangle -A PREROUTING -j CONNMARK --save-mark{masks}` after the MARK rule, `{t} -t mangle -I PREROUTING 1 -j CONNMARK --restore-mark{masks}` and `{t} -t mangle -I OUTPUT 1 -j CONNMARK --restore-mark{masks}` (only connections not yet marked need classifying: `-m connmark --mark 0{}`)",
                    if m == u32::MAX { String::new() } else { format!("/{m:#x}") }
                )
            } else {
                format!(
                    "remember it in the connection: `ct mark set {}` after this rule, and restore it first thing in prerouting and in a `type route` output chain: `meta mark set {}`",
                    nft_and(m, "meta mark"),
                    nft_and(m, "ct mark")
                )
            };
            out.push(fw_finding(Severity::Warning, "mark-not-saved", s, why, fix));
            break;
        }
    }
}

fn not_restored(ctx: &Ctx, fam: Family, rules: &[&RuleEntry], out: &mut Vec<Finding>) {
    for c in ctx.fw_of(fam).filter(|c| c.hand()) {
        for w in c.ct_writes() {
            let Some(r) = rules.iter().find(|r| w.copy_bits & mask(r) != 0) else {
                continue;
            };
            let bits = w.copy_bits & mask(r);
            if !restores(ctx, fam, bits).is_empty() {
                continue;
            }
            let why = format!(
                "the mark is saved in the connection, but nothing copies it back into packet marks (CONNMARK --restore-mark / `meta mark set ct mark`): `{}` only sees the packets marked directly, never the connection's later packets or its replies",
                short(r)
            );
            let m = mask(r);
            let fix = if c.is_iptables() {
                let t = c.iptables_tool();
                let masks = connmark_masks(m);
                format!(
                    "restore it before routing: `{t} -t mangle -I PREROUTING 1 -j CONNMARK --restore-mark{masks}` and `{t} -t mangle -I OUTPUT 1 -j CONNMARK --restore-mark{masks}`"
                )
            } else {
                format!(
                    "restore it first thing in prerouting and in a `type route` output chain: `meta mark set {}`",
                    nft_and(m, "ct mark")
                )
            };
            out.push(fw_finding(
                Severity::Warning,
                "mark-not-restored",
                c,
                why,
                fix,
            ));
            break;
        }
    }
}

/// The connection can end on this host (a classifier not limited to foreign destinations).
fn reaches_local(ctx: &Ctx, k: &FwRule) -> bool {
    let locals: Vec<std::net::IpAddr> = ctx.local_addrs().iter().map(|(_, n)| n.addr()).collect();
    k.reach.iter().any(|x| {
        if x.hook == Hook::Input {
            return true;
        }
        if !matches!(x.hook, Hook::Prerouting | Hook::Ingress) {
            return false;
        }
        let forward_only = k.conditions(x).any(|m| match m {
            Match::Daddr {
                op: Op::Eq, addrs, ..
            } => !addrs.iter().any(|a| locals.iter().any(|l| a.contains(l))),
            Match::Unknown(u) => u.contains("! --dst-type LOCAL"),
            _ => false,
        });
        !forward_only
    })
}

fn no_output_restore(ctx: &Ctx, fam: Family, rules: &[&RuleEntry], out: &mut Vec<Finding>) {
    for p in ctx
        .fw_of(fam)
        .filter(|p| p.hand() && p.reach.iter().any(|x| x.hook == Hook::Prerouting))
    {
        for w in p.meta_writes() {
            let Some(r) = rules.iter().find(|r| w.copy_bits & mask(r) != 0) else {
                continue;
            };
            let bits = w.copy_bits & mask(r);
            let outs: Vec<&FwRule> = ctx
                .fw_of(fam)
                .filter(|o| o.meta_writes().any(|ow| ow.copy_bits & bits != 0))
                .filter(|o| o.reach.iter().any(|x| x.hook == Hook::Output))
                .collect();
            if outs.iter().any(|o| {
                o.reach
                    .iter()
                    .any(|x| x.hook == Hook::Output && x.kind == ChainKind::Route)
            }) {
                continue;
            }
            // Something decides connections into these bits, and some of them can end here.
            let local = ctx.fw_of(fam).filter(|k| k.hand()).any(|k| {
                k.writes.iter().any(|kw| kw.const_val & bits != 0) && reaches_local(ctx, k)
            });
            if !local {
                continue;
            }
            let mut why = format!(
                "connections are marked and the mark is restored in PREROUTING, but not in OUTPUT: the replies of this host's own servers are generated locally, never pass PREROUTING, and are routed by the main table instead of `{}`",
                short(r)
            );
            if let Some(o) = outs.first() {
                why.push_str(&format!(
                    " (the output restore `{}` is in a chain that does not re-route the packet: nft `type filter`)",
                    o.rule.text
                ));
            }
            let m = mask(r);
            let fix = if p.is_iptables() {
                format!(
                    "`{} -t mangle -A OUTPUT -j CONNMARK --restore-mark{}` (mangle OUTPUT re-routes a packet whose mark changed)",
                    p.iptables_tool(),
                    connmark_masks(m)
                )
            } else {
                let (f, t) = match &p.rule.origin {
                    Origin::Nft { family, table, .. } => (family.to_string(), table.clone()),
                    _ => ("inet".into(), "mangle".into()),
                };
                format!(
                    "`nft add chain {f} {t} out '{{ type route hook output priority mangle; }}'` and `nft add rule {f} {t} out meta mark set {}` (only `type route` chains re-route a packet whose mark changed)",
                    nft_and(m, "ct mark")
                )
            };
            out.push(fw_finding(
                Severity::Warning,
                "no-output-restore",
                p,
                why,
                fix,
            ));
            break;
        }
    }
}

fn rp_filter(ctx: &Ctx, out: &mut Vec<Finding>) {
    let fam = Family::Inet4;
    let rules = ctx.mark_rules(fam);
    if rules.is_empty() {
        return;
    }
    let mut ifaces: BTreeSet<String> = BTreeSet::new();
    for s in ctx.fw_of(fam).filter(|s| s.hand()) {
        let marks = s.writes.iter().any(|w| {
            rules
                .iter()
                .any(|r| w.written() & mask(r) != 0 && (w.const_bits | w.fuzzy) & mask(r) != 0)
        });
        if !marks {
            continue;
        }
        ifaces.extend(s.in_interfaces());
        for x in &s.reach {
            for m in s.conditions(x) {
                if let Match::Daddr {
                    op: Op::Eq, addrs, ..
                } = m
                {
                    // Host addresses only (`-d 203.0.113.2`): the interface they are on.
                    for a in addrs {
                        if let Some(i) = a.to_string().parse().ok().and_then(|ip| ctx.iface_of(ip))
                        {
                            ifaces.insert(i.to_string());
                        }
                    }
                }
            }
        }
    }
    let sys = &ctx.host.routing;
    let all = sys.sysctl_int("net.ipv4.conf.all.rp_filter").unwrap_or(0);
    let defaults: Vec<_> = sys
        .routes_of(fam, TABLE_MAIN)
        .filter(|r| r.dst.prefix_len() == 0 && !r.kind.is_reject())
        .collect();
    let default_devs: BTreeSet<String> = defaults
        .iter()
        .flat_map(|r| r.nexthops.iter().filter_map(|n| n.dev.clone()))
        .collect();
    for x in ifaces {
        if !sys.links.contains_key(&x) || defaults.is_empty() || default_devs.contains(&x) {
            continue;
        }
        // Traffic from beyond a gateway arrives here (a LAN's sources are on its own
        // network, and their route back is the connected one).
        let uplink = sys.routes.iter().any(|r| {
            r.family == fam
                && r.nexthops
                    .iter()
                    .any(|n| n.via.is_some() && n.dev.as_deref() == Some(x.as_str()))
        });
        if !uplink {
            continue;
        }
        let key = format!("net.ipv4.conf.{x}.rp_filter");
        let own = sys.sysctl_int(&key).unwrap_or(0);
        if all.max(own) != 1 {
            continue;
        }
        // Packets marked on arrival, before routing, with a value an ip rule routes back
        // out of this interface: with src_valid_mark the reverse-path lookup uses the mark.
        let marked_on_arrival = ctx.fw_of(fam).filter(|s| s.hand() && !s.late() && s.in_interfaces().contains(&x)).any(|s| {
            s.meta_writes().any(|w| {
                rules.iter().any(|r| {
                    let (v, m) = vm(r);
                    w.const_bits & m == m
                        && w.const_val & m == v
                        && matches!(r.action, RuleAction::Lookup(t) if ctx.table_devs(fam, t).contains(&x))
                })
            })
        });
        let svm = |k: &str| {
            sys.sysctl_int(&format!("net.ipv4.conf.{k}.src_valid_mark"))
                .unwrap_or(0)
                == 1
        };
        if marked_on_arrival && (svm("all") || svm(&x)) {
            continue;
        }
        let (qkey, qval) = if own == 1 {
            (
                key.clone(),
                sys.sysctls.get(&key).cloned().unwrap_or_else(|| "1".into()),
            )
        } else {
            (
                "net.ipv4.conf.all.rp_filter".to_string(),
                sys.sysctls
                    .get("net.ipv4.conf.all.rp_filter")
                    .cloned()
                    .unwrap_or_else(|| "1".into()),
            )
        };
        let devs: Vec<&str> = default_devs.iter().map(String::as_str).collect();
        let why = format!(
            "strict reverse-path filtering (effective max(all, {x}) = 1) drops a packet arriving on {x} unless the route back to its source leaves through {x}; the main table's default route leaves through {}. A connection's first packet carries no mark yet, so it is dropped before any mark rule or `ip rule fwmark` can help",
            devs.join(", ")
        );
        let mut fix = format!(
            "loose mode on {x}: `sysctl -w {key}=2`, and keep it across reboots: `echo '{key} = 2' > /etc/sysctl.d/90-rp-filter-{x}.conf` (the effective value is the larger of `all` and the interface's)"
        );
        if marked_on_arrival {
            fix.push_str(&format!(
                "; or, since the arriving packets are marked before routing, let the check use the mark: `sysctl -w net.ipv4.conf.{x}.src_valid_mark=1`"
            ));
        }
        out.push(Finding::new(
            Severity::Error,
            "rp-filter-strict",
            &format!("{qkey} = {qval}"),
            "sysctl".to_string(),
            why,
            fix,
        ));
    }
}

/// Bits a present tool uses: its defaults, what its own rules write, what its ip rules test.
fn tool_bits(ctx: &Ctx, t: Tool) -> u32 {
    let mut b = t.reserved_bits();
    for r in ctx.fw.iter().filter(|r| r.tool == Some(t)) {
        for w in &r.writes {
            b |= w.written();
        }
    }
    for r in ctx
        .host
        .routing
        .rules
        .iter()
        .filter(|r| super::facts::rule_tool(r) == Some(t))
    {
        if let Some((v, m)) = r.fwmark {
            if t != Tool::WgQuick {
                b |= if m == u32::MAX { v } else { m };
            }
        }
    }
    b
}

/// Every object but symroute's own that uses mark bits, read by the analysis `symroute
/// apply`'s conflict check reads (`crate::marks`), named as doctor names them.
pub fn mark_users(ctx: &Ctx) -> Vec<MarkUser> {
    let rules = ctx
        .host
        .routing
        .rules
        .iter()
        .filter(|r| super::facts::rule_tool(r) != Some(Tool::Symroute))
        .map(|r| IpRuleMark {
            fwmark: r.fwmark,
            text: &r.text,
            place: rule_place(r),
        });
    crate::marks::mark_users(&ctx.host.firewall, rules)
}

fn bits_shared(ctx: &Ctx, out: &mut Vec<Finding>) {
    // One finding per hand-made object, listing every tool it collides with.
    let mut hits: BTreeMap<(String, String), (Severity, Vec<String>)> = BTreeMap::new();
    let mut push = |sev: Severity, rule: &str, place: String, why: String| {
        let e = hits
            .entry((rule.to_string(), place))
            .or_insert((Severity::Info, Vec::new()));
        e.0 = e.0.min(sev);
        if !e.1.contains(&why) {
            e.1.push(why);
        }
    };
    let here = |t: Tool| ctx.present.contains(&t);
    let tail = |t: Tool| {
        if here(t) {
            format!("{} — and {} runs here", t.bits_note(), t.name())
        } else {
            format!(
                "{} (not running here: a conflict the day it is)",
                t.bits_note()
            )
        }
    };
    let sev = |t: Tool| {
        if here(t) {
            Severity::Warning
        } else {
            Severity::Info
        }
    };
    // With symroute running here, its bits are judged exactly as `symroute apply` judges
    // them (below), not by the other tools' rules.
    let judged_here = |t: Tool| t == Tool::Symroute && here(t);
    for s in ctx.fw.iter().filter(|s| s.hand() && !s.reach.is_empty()) {
        for w in &s.writes {
            for t in Tool::ALL.into_iter().filter(|t| !judged_here(*t)) {
                if t == Tool::WgQuick {
                    let exact =
                        w.pure_const() && w.const_bits == u32::MAX && w.const_val == WG_MARK;
                    let in_output = here(t)
                        && w.key == MarkKey::Meta
                        && w.written() & WG_MARK != 0
                        && s.reach.iter().any(|x| x.hook == Hook::Output);
                    if exact {
                        push(
                            sev(t),
                            &s.rule.text,
                            s.place(),
                            format!("sets the mark to 0xca6c, {}", tail(t)),
                        );
                    } else if in_output {
                        push(
                            sev(t),
                            &s.rule.text,
                            s.place(),
                            format!(
                                "rewrites mark bits {} of locally generated packets, {}: its encrypted packets lose their mark and are routed back into the tunnel",
                                hex(w.written() & WG_MARK),
                                tail(t)
                            ),
                        );
                    }
                    continue;
                }
                let bits = if here(t) {
                    tool_bits(ctx, t) & w.written()
                } else {
                    t.reserved_bits() & w.const_val
                };
                if bits == 0 {
                    continue;
                }
                let verb = if w.const_val & bits == bits {
                    "sets"
                } else if w.const_val & bits == 0 && w.pure_const() {
                    "clears"
                } else {
                    "overwrites"
                };
                let what = match w.key {
                    MarkKey::Meta => "mark",
                    MarkKey::Ct => "conntrack mark",
                };
                push(
                    sev(t),
                    &s.rule.text,
                    s.place(),
                    format!("{verb} {what} bits {}, {}", hex(bits), tail(t)),
                );
            }
        }
    }
    for r in ctx
        .host
        .routing
        .rules
        .iter()
        .filter(|r| super::facts::rule_tool(r).is_none())
    {
        let Some((v, m)) = r.fwmark else { continue };
        for t in Tool::ALL.into_iter().filter(|t| !judged_here(*t)) {
            if t == Tool::WgQuick {
                if v == WG_MARK && m == u32::MAX {
                    push(
                        sev(t),
                        &r.text,
                        rule_place(r),
                        format!("tests the value 0xca6c, {}", tail(t)),
                    );
                }
                continue;
            }
            let bits = if here(t) {
                tool_bits(ctx, t) & m
            } else {
                t.reserved_bits() & (v & m)
            };
            if bits == 0 {
                continue;
            }
            let why = if here(t) && m == u32::MAX {
                format!(
                    "tests all 32 mark bits for exactly {}, so packets that also carry bits {} never match it; {}",
                    hex(v),
                    hex(bits),
                    tail(t)
                )
            } else {
                format!("tests mark bits {}, {}", hex(bits), tail(t))
            };
            push(sev(t), &r.text, rule_place(r), why);
        }
    }
    if here(Tool::Symroute) {
        let ours = tool_bits(ctx, Tool::Symroute);
        for u in mark_users(ctx) {
            let bits = u.bits & ours;
            if bits != 0 {
                push(
                    sev(Tool::Symroute),
                    &u.text,
                    u.place,
                    format!(
                        "uses mark bits {} (`symroute apply` refuses to run beside it), {}",
                        hex(bits),
                        tail(Tool::Symroute)
                    ),
                );
            }
        }
    }
    let hint = "use bits no one else does and touch only them (iptables `--set-xmark V/M`, `CONNMARK --save-mark/--restore-mark --nfmask M --ctmask M`; nft `meta mark set meta mark and ~M or V`; `ip rule … fwmark V/M`): kube-proxy uses 0xc000, Tailscale 0x00ff0000, Calico 0xffff0000, symroute 0xff000000 by default, wg-quick the value 0xca6c";
    for ((rule, place), (sev, whys)) in hits {
        out.push(Finding::new(
            sev,
            "mark-bits-shared",
            &rule,
            place,
            whys.join("; "),
            hint.to_string(),
        ));
    }
}
