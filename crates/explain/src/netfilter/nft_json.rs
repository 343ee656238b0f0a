//! `nft -j list ruleset` (libnftables JSON schema 1, nft 1.0.2–1.0.6) → IR.
//!
//! Shapes seen in real output and handled here: `ct state` as `in` with a string or a
//! plain array; `ct mark and 0xff000000 == 0` as `ct mark == prefix 0/8`; `tcp dport`
//! with its `meta l4proto tcp` dependency folded away; anonymous `set`s, `@name`
//! references to named sets and verdict maps (elements possibly wrapped in `elem` with a
//! comment); mark assignments as trees of `&`, `|`, `^`; iptables-nft rules as opaque
//! `xt` expressions (`{"xt": {"type", "name"}}`, or `{"xt": null}` in older versions).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::ir::{
    parse_addr_item, parse_u32, AddrItem, Base, Chain, ChainKind, CtDirection, CtState, Hook, Lin,
    MarkKey, Match, NatTo, NfFamily, Op, Origin, Policy, Rule, Ruleset, Stmt, Verdict, Vmap,
    VmapEntry,
};
use super::{ParseError, SourceKind};
use symroute_core::model::{Family, IpProto};

/// Reads the ruleset, leaving out tables that iptables-nft manages (read those with
/// [`super::from_iptables_save`], or use [`super::combine`]).
pub fn from_nft_json(v: &Value) -> Result<Ruleset, ParseError> {
    parse(v, false).map(|(rs, _)| rs)
}

/// Reads every table; iptables-nft rules keep their `xt` parts as `Unknown`.
pub fn from_nft_json_keep_xtables(v: &Value) -> Result<Ruleset, ParseError> {
    parse(v, true).map(|(rs, _)| rs)
}

const XT_TABLES: &[&str] = &["filter", "mangle", "nat", "raw", "security"];
const XT_CHAINS: &[(&str, Hook)] = &[
    ("PREROUTING", Hook::Prerouting),
    ("INPUT", Hook::Input),
    ("FORWARD", Hook::Forward),
    ("OUTPUT", Hook::Output),
    ("POSTROUTING", Hook::Postrouting),
];

fn err(place: impl Into<String>, msg: impl Into<String>) -> ParseError {
    ParseError::new(SourceKind::NftJson, place, msg)
}

type SetKey = (NfFamily, String, String);

/// The ruleset, and the (family, table)s that look like iptables-nft's.
pub(super) fn parse(
    v: &Value,
    keep_xt: bool,
) -> Result<(Ruleset, Vec<(NfFamily, String)>), ParseError> {
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| err("top level", "expected an object with an \"nftables\" array"))?;
    let mut rs = Ruleset::default();
    let mut sets: HashMap<SetKey, Vec<Value>> = HashMap::new();
    let mut tables: Vec<(NfFamily, String)> = Vec::new();
    let mut xt_rules: Vec<(NfFamily, String)> = Vec::new();

    for (i, item) in items.iter().enumerate() {
        if let Some(t) = item.get("table") {
            let (Some(fam), Some(name)) = (t["family"].as_str(), t["name"].as_str()) else {
                return Err(err(format!("item {i}"), "table without family or name"));
            };
            match NfFamily::parse(fam) {
                Some(f) => tables.push((f, name.to_string())),
                None => rs
                    .notes
                    .push(format!("table {fam} {name}: unknown family, skipped")),
            }
        } else if let Some(c) = item.get("chain") {
            let (f, table, name) = ids(c, "name", i)?;
            let Some(family) = NfFamily::parse(f) else {
                continue;
            };
            let base = match c.get("hook").and_then(Value::as_str) {
                None => None,
                Some(h) => match Hook::parse(h) {
                    None => {
                        rs.notes.push(format!(
                            "chain {f} {table} {name}: unknown hook {h}, treated as a regular chain"
                        ));
                        None
                    }
                    Some(hook) => {
                        let kind = c["type"]
                            .as_str()
                            .and_then(ChainKind::parse)
                            .unwrap_or(ChainKind::Filter);
                        let priority = priority_of(&c["prio"], family, hook).unwrap_or(0);
                        let policy = if c["policy"].as_str() == Some("drop") {
                            Policy::Drop
                        } else {
                            Policy::Accept
                        };
                        Some(Base {
                            hook,
                            priority,
                            kind,
                            policy,
                        })
                    }
                },
            };
            rs.chains.push(Chain {
                family,
                table: table.to_string(),
                name: name.to_string(),
                base,
                rules: Vec::new(),
            });
        } else if let Some(s) = item.get("set").or_else(|| item.get("map")) {
            let (f, table, name) = ids(s, "name", i)?;
            if let Some(family) = NfFamily::parse(f) {
                let elems = s["elem"].as_array().cloned().unwrap_or_default();
                sets.insert((family, table.to_string(), name.to_string()), elems);
            }
        }
    }

    let mut index: HashMap<SetKey, usize> = HashMap::new();
    for (i, c) in rs.chains.iter().enumerate() {
        index.insert((c.family, c.table.clone(), c.name.clone()), i);
    }
    for (i, item) in items.iter().enumerate() {
        let Some(r) = item.get("rule") else {
            continue;
        };
        let handle = r["handle"].as_u64();
        let place = match handle {
            Some(h) => format!("rule handle {h}"),
            None => format!("item {i}"),
        };
        let (Some(f), Some(table), Some(chain)) = (
            r["family"].as_str(),
            r["table"].as_str(),
            r["chain"].as_str(),
        ) else {
            return Err(err(place, "rule without family, table or chain"));
        };
        let Some(family) = NfFamily::parse(f) else {
            continue;
        };
        let exprs: &[Value] = match r.get("expr") {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => return Err(err(place, "\"expr\" is not an array")),
        };
        let ctx = Ctx {
            family,
            table,
            sets: &sets,
        };
        let mut rule = ctx.rule(exprs);
        rule.origin = Origin::Nft {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            handle,
            line: None,
        };
        if exprs.iter().any(|e| e.get("xt").is_some()) {
            xt_rules.push((family, table.to_string()));
        }
        let key = (family, table.to_string(), chain.to_string());
        let ci = match index.get(&key) {
            Some(&ci) => ci,
            None => {
                rs.chains.push(Chain {
                    family,
                    table: table.to_string(),
                    name: chain.to_string(),
                    base: None,
                    rules: Vec::new(),
                });
                index.insert(key, rs.chains.len() - 1);
                rs.chains.len() - 1
            }
        };
        rs.chains[ci].rules.push(rule);
    }

    // iptables-nft tables: an xtables name, and every base chain a built-in one on its hook.
    let mut xt_tables = Vec::new();
    let mut seen: Vec<(NfFamily, String)> = tables;
    for c in &rs.chains {
        let k = (c.family, c.table.clone());
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    for (family, table) in seen {
        if !matches!(family, NfFamily::Ip | NfFamily::Ip6) || !XT_TABLES.contains(&table.as_str()) {
            continue;
        }
        let chains: Vec<&Chain> = rs
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
            .collect();
        let builtin = chains.iter().all(|c| match &c.base {
            None => true,
            Some(b) => XT_CHAINS.iter().any(|(n, h)| *n == c.name && *h == b.hook),
        });
        if builtin && chains.iter().any(|c| c.base.is_some()) {
            xt_tables.push((family, table));
        }
    }
    for (family, table) in &xt_rules {
        if !xt_tables.contains(&(*family, table.clone())) && !keep_xt {
            rs.notes.push(format!(
                "table {family} {table}: has iptables-nft (xt) expressions but does not look like an iptables table; kept, with those rules \"maybe\""
            ));
        }
    }
    if !keep_xt {
        rs.chains
            .retain(|c| !xt_tables.contains(&(c.family, c.table.clone())));
        for (family, table) in &xt_tables {
            rs.notes.push(format!(
                "table {family} {table}: managed by iptables-nft; read it from {} instead",
                if *family == NfFamily::Ip6 {
                    "ip6tables-save"
                } else {
                    "iptables-save"
                }
            ));
        }
    }
    rs.notes.dedup();
    Ok((rs, xt_tables))
}

fn ids<'v>(
    o: &'v Value,
    name_key: &str,
    i: usize,
) -> Result<(&'v str, &'v str, &'v str), ParseError> {
    match (
        o["family"].as_str(),
        o["table"].as_str(),
        o[name_key].as_str(),
    ) {
        (Some(f), Some(t), Some(n)) => Ok((f, t, n)),
        _ => Err(err(
            match o["handle"].as_u64() {
                Some(h) => format!("handle {h}"),
                None => format!("item {i}"),
            },
            "object without family, table or name",
        )),
    }
}

/// Standard priority names (nft may print them in some versions; JSON input accepts them).
fn priority_of(v: &Value, family: NfFamily, hook: Hook) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return i32::try_from(n).ok();
    }
    let s = v.as_str()?.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let (name, offset) = match s.split_once(['+', '-']) {
        Some((n, o)) => {
            let o: i32 = o.trim().parse().ok()?;
            (n.trim(), if s.contains('-') { o.checked_neg()? } else { o })
        }
        None => (s, 0),
    };
    let base: i32 = match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => {
            if family == NfFamily::Bridge {
                -300
            } else {
                -100
            }
        }
        "filter" => {
            if family == NfFamily::Bridge {
                -200
            } else {
                0
            }
        }
        "security" => 50,
        "srcnat" => {
            if family == NfFamily::Bridge {
                300
            } else {
                100
            }
        }
        "out" => 100,
        n => n.parse().ok()?,
    };
    let _ = hook;
    base.checked_add(offset)
}

struct Ctx<'a> {
    family: NfFamily,
    table: &'a str,
    sets: &'a HashMap<SetKey, Vec<Value>>,
}

/// The only key of a one-key object.
fn single(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn mark_key(v: &Value) -> Option<MarkKey> {
    if v.get("meta")
        .and_then(|m| m.get("key"))
        .and_then(Value::as_str)
        == Some("mark")
    {
        return Some(MarkKey::Meta);
    }
    let ct = v.get("ct")?;
    (ct.get("key").and_then(Value::as_str) == Some("mark") && ct.get("dir").is_none())
        .then_some(MarkKey::Ct)
}

fn num_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => parse_u32(s),
        _ => None,
    }
}

/// A mark assignment's value as a linear form, if it is one.
fn lin(v: &Value) -> Option<Lin> {
    if let Some(n) = num_u32(v) {
        return Some(Lin::konst(n));
    }
    if let Some(k) = mark_key(v) {
        return Some(Lin::key(k));
    }
    let (op, args) = single(v)?;
    let args = args.as_array()?;
    let mut it = args.iter();
    let mut acc = lin(it.next()?)?;
    let mut n = 0;
    for a in it {
        n += 1;
        let b = lin(a)?;
        acc = match op {
            "&" => acc.and_lin(b)?,
            "|" => acc.or(b)?,
            "^" => acc.xor(b),
            _ => return None,
        };
    }
    (n > 0).then_some(acc)
}

fn unwrap_elem(v: &Value) -> &Value {
    match v.get("elem").and_then(|e| e.get("val")) {
        Some(inner) => inner,
        None => v,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

fn cmp_of(op: Option<&str>) -> Option<Cmp> {
    Some(match op.unwrap_or("==") {
        "==" | "in" | "eq" => Cmp::Eq,
        "!=" | "ne" => Cmp::Ne,
        "<" | "lt" => Cmp::Lt,
        ">" | "gt" => Cmp::Gt,
        "<=" | "le" => Cmp::Le,
        ">=" | "ge" => Cmp::Ge,
        _ => return None,
    })
}

impl<'a> Ctx<'a> {
    /// The elements a right-hand side stands for: a set reference, an anonymous set, a
    /// plain array (`ct state` lists) or one value.
    fn items(&self, right: &'a Value) -> Option<Vec<&'a Value>> {
        if let Some(name) = right.as_str().and_then(|s| s.strip_prefix('@')) {
            let elems = self
                .sets
                .get(&(self.family, self.table.to_string(), name.to_string()))?;
            return Some(elems.iter().map(unwrap_elem).collect());
        }
        if let Some(set) = right.get("set") {
            return Some(match set {
                Value::Array(a) => a.iter().map(unwrap_elem).collect(),
                other => vec![unwrap_elem(other)],
            });
        }
        if let Value::Array(a) = right {
            return Some(a.iter().map(unwrap_elem).collect());
        }
        Some(vec![unwrap_elem(right)])
    }

    fn rule(&self, exprs: &[Value]) -> Rule {
        let mut matches = Vec::new();
        let mut stmts: Vec<Stmt> = Vec::new();
        let mut verdict = Verdict::Continue;
        let mut nat = false;
        let mut text = Vec::new();
        for e in exprs {
            text.push(render_stmt(e));
            let Some((k, v)) = single(e) else {
                matches.push(Match::Unknown(render_stmt(e)));
                continue;
            };
            let side_effects = stmts
                .iter()
                .any(|s| !matches!(s, Stmt::Counter | Stmt::Log));
            match k {
                "match" => {
                    let ms = self.matches(&v["left"], v["op"].as_str(), &v["right"], e);
                    if side_effects {
                        matches.push(Match::Unknown(format!(
                            "{} (after a statement: order not modelled)",
                            render_stmt(e)
                        )));
                    } else {
                        matches.extend(ms);
                    }
                }
                "mangle" => match (mark_key(&v["key"]), lin(&v["value"])) {
                    (Some(key), Some(l)) => stmts.push(Stmt::SetMark {
                        key,
                        value: l.to_expr(key),
                    }),
                    _ => stmts.push(Stmt::Unknown(render_stmt(e))),
                },
                "counter" => stmts.push(Stmt::Counter),
                "log" => stmts.push(Stmt::Log),
                "set" if matches!(v["op"].as_str(), Some("update" | "add")) => {
                    match v["set"].as_str().and_then(|n| n.strip_prefix('@')) {
                        Some(set) => stmts.push(Stmt::SetUpdate {
                            set: set.to_string(),
                            key: render(&v["elem"], Ctxt::of(&v["elem"])),
                        }),
                        None => stmts.push(Stmt::Unknown(render_stmt(e))),
                    }
                }
                "accept" => verdict = Verdict::Accept,
                "drop" | "reject" => verdict = Verdict::Drop,
                "return" => verdict = Verdict::Return,
                "continue" => verdict = Verdict::Continue,
                "jump" | "goto" => match v["target"].as_str() {
                    Some(t) if k == "jump" => verdict = Verdict::Jump(t.to_string()),
                    Some(t) => verdict = Verdict::Goto(t.to_string()),
                    None => stmts.push(Stmt::Unknown(render_stmt(e))),
                },
                "vmap" => match self.vmap(&v["key"], &v["data"]) {
                    Some((pre, vm)) => {
                        matches.extend(pre);
                        verdict = Verdict::Vmap(vm);
                    }
                    None => matches.push(Match::Unknown(render_stmt(e))),
                },
                "dnat" | "snat" | "masquerade" | "redirect" | "tproxy" => {
                    match nat_to(v) {
                        Some(to) => stmts.push(match k {
                            "dnat" => Stmt::Dnat(to),
                            "snat" => Stmt::Snat(to),
                            "masquerade" => Stmt::Masquerade(to),
                            "redirect" => Stmt::Redirect(to),
                            _ => Stmt::Tproxy(to),
                        }),
                        None => stmts.push(Stmt::Unknown(render_stmt(e))),
                    }
                    nat |= k != "tproxy";
                }
                "xt" => {
                    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
                    let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
                    let what = format!(
                        "xt {kind} {name} (iptables-nft: its options are only in iptables-save)"
                    )
                    .replace("xt  ", "xt ");
                    if kind == "match" {
                        matches.push(Match::Unknown(what));
                    } else {
                        stmts.push(Stmt::Unknown(what));
                    }
                }
                // Conditions whose outcome depends on state we do not have.
                "limit" | "quota" | "connlimit" | "meter" => {
                    matches.push(Match::Unknown(render_stmt(e)))
                }
                _ => stmts.push(Stmt::Unknown(render_stmt(e))),
            }
        }
        if nat && verdict == Verdict::Continue {
            // NAT statements are terminal (they accept).
            verdict = Verdict::Accept;
        }
        Rule {
            matches,
            stmts,
            verdict,
            origin: Origin::Nft {
                family: self.family,
                table: self.table.to_string(),
                chain: String::new(),
                handle: None,
                line: None,
            },
            text: text.join(" "),
        }
    }

    fn vmap(&self, key: &'a Value, data: &'a Value) -> Option<(Vec<Match>, Vmap)> {
        let map = data
            .as_str()
            .and_then(|s| s.strip_prefix('@'))
            .map(str::to_string);
        let elems: Vec<&Value> = match &map {
            Some(name) => self
                .sets
                .get(&(self.family, self.table.to_string(), name.clone()))?
                .iter()
                .collect(),
            None => data.get("set")?.as_array()?.iter().collect(),
        };
        let mut pre: Option<Vec<Match>> = None;
        let mut entries = Vec::new();
        for el in elems {
            let pair = el.as_array()?;
            let (k, v) = (unwrap_elem(pair.first()?), pair.get(1)?);
            let mut ms = self.matches(key, Some("=="), k, key);
            let last = ms.pop()?;
            if matches!(last, Match::Unknown(_)) {
                return None;
            }
            match &pre {
                None => pre = Some(ms),
                Some(p) if *p == ms => {}
                Some(_) => return None,
            }
            let verdict = match single(v)? {
                ("accept", _) => Verdict::Accept,
                ("drop", _) | ("reject", _) => Verdict::Drop,
                ("return", _) => Verdict::Return,
                ("continue", _) => Verdict::Continue,
                ("jump", t) => Verdict::Jump(t["target"].as_str()?.to_string()),
                ("goto", t) => Verdict::Goto(t["target"].as_str()?.to_string()),
                _ => return None,
            };
            entries.push(VmapEntry { key: last, verdict });
        }
        Some((
            pre.unwrap_or_default(),
            Vmap {
                key: render(key, Ctxt::of(key)),
                map,
                entries,
            },
        ))
    }

    /// One `match` expression → conditions (a port match also yields its protocol).
    fn matches(
        &self,
        left: &'a Value,
        op: Option<&str>,
        right: &'a Value,
        whole: &Value,
    ) -> Vec<Match> {
        self.try_matches(left, op, right)
            .unwrap_or_else(|| vec![Match::Unknown(render_stmt(whole))])
    }

    fn try_matches(
        &self,
        left: &'a Value,
        op: Option<&str>,
        right: &'a Value,
    ) -> Option<Vec<Match>> {
        let cmp = cmp_of(op)?;
        let eq_ne = || match cmp {
            Cmp::Eq => Some(Op::Eq),
            Cmp::Ne => Some(Op::Ne),
            _ => None,
        };
        let items = || self.items(right);
        let strings = || -> Option<Vec<String>> {
            items()?
                .into_iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        // Marks: meta mark / ct mark, possibly masked.
        let masked = |v: &Value| -> Option<(MarkKey, u32)> {
            if let Some(k) = mark_key(v) {
                return Some((k, u32::MAX));
            }
            let args = v.get("&")?.as_array()?;
            match args.as_slice() {
                [a, m] => Some((mark_key(a)?, num_u32(m)?)),
                _ => None,
            }
        };
        if let Some((key, mask)) = masked(left) {
            return Some(vec![self.mark_match(key, mask, cmp, right)?]);
        }
        let (lk, lv) = single(left)?;
        match lk {
            "meta" => {
                let key = lv.get("key")?.as_str()?;
                match key {
                    "iifname" | "iif" => Some(vec![Match::Iifname {
                        op: eq_ne()?,
                        names: strings()?,
                    }]),
                    "oifname" | "oif" => Some(vec![Match::Oifname {
                        op: eq_ne()?,
                        names: strings()?,
                    }]),
                    "l4proto" => Some(vec![Match::L4proto {
                        op: eq_ne()?,
                        protos: protos(&items()?)?,
                    }]),
                    // Numbers (nft prints names only with -u).
                    "skuid" => Some(vec![Match::Skuid {
                        op: eq_ne()?,
                        uids: items()?
                            .into_iter()
                            .map(|v| match v.get("range") {
                                Some(r) => Some((num_u32(&r[0])?, num_u32(&r[1])?)),
                                None => num_u32(v).map(|n| (n, n)),
                            })
                            .collect::<Option<_>>()?,
                    }]),
                    "nfproto" | "protocol" => {
                        let fams: Vec<Family> = items()?
                            .into_iter()
                            .map(|v| match v.as_str()? {
                                "ipv4" | "ip" => Some(Family::Inet4),
                                "ipv6" | "ip6" => Some(Family::Inet6),
                                _ => None,
                            })
                            .collect::<Option<_>>()?;
                        let ne = eq_ne()? == Op::Ne;
                        let fams: Vec<Family> = [Family::Inet4, Family::Inet6]
                            .into_iter()
                            .filter(|f| fams.contains(f) != ne)
                            .collect();
                        match fams.as_slice() {
                            [one] => Some(vec![Match::Nfproto { family: *one }]),
                            // Both (or neither): say so rather than guess.
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            "ct" => {
                if lv.get("dir").is_some() {
                    return None;
                }
                match lv.get("key")?.as_str()? {
                    "state" => Some(vec![Match::CtState {
                        op: eq_ne()?,
                        states: items()?
                            .into_iter()
                            .map(|v| CtState::parse(v.as_str()?))
                            .collect::<Option<_>>()?,
                    }]),
                    "direction" => {
                        let d = items()?;
                        let [one] = d.as_slice() else {
                            return None;
                        };
                        Some(vec![Match::CtDirection {
                            op: eq_ne()?,
                            direction: CtDirection::parse(one.as_str()?)?,
                        }])
                    }
                    _ => None,
                }
            }
            "payload" => {
                if let (Some(proto), Some(field)) = (
                    lv.get("protocol").and_then(Value::as_str),
                    lv.get("field").and_then(Value::as_str),
                ) {
                    return self.payload_match(proto, field, eq_ne()?, right, cmp);
                }
                // Raw transport header: @th,0,16 is the source port, @th,16,16 the destination.
                let base = lv.get("base")?.as_str()?;
                let (off, len) = (lv.get("offset")?.as_u64()?, lv.get("len")?.as_u64()?);
                match (base, off, len) {
                    ("th", 0, 16) => self.payload_match("th", "sport", eq_ne()?, right, cmp),
                    ("th", 16, 16) => self.payload_match("th", "dport", eq_ne()?, right, cmp),
                    _ => None,
                }
            }
            "numgen" => {
                let offset = lv.get("offset").and_then(Value::as_u64).unwrap_or(0);
                if lv.get("mode")?.as_str()? != "random" || offset != 0 || eq_ne()? != Op::Eq {
                    return None;
                }
                let modulus = u32::try_from(lv.get("mod")?.as_u64()?).ok()?;
                let values = items()?
                    .into_iter()
                    .map(|v| match v.get("range") {
                        Some(r) => Some((num_u32(&r[0])?, num_u32(&r[1])?)),
                        None => num_u32(v).map(|n| (n, n)),
                    })
                    .collect::<Option<_>>()?;
                Some(vec![Match::Numgen { modulus, values }])
            }
            "socket" if lv.get("key")?.as_str()? == "cgroupv2" => {
                // nft 1.0.x's JSON leaves the level out; a path's depth is its level.
                let level = lv
                    .get("level")
                    .and_then(Value::as_u64)
                    .and_then(|l| u32::try_from(l).ok());
                let paths = items()?
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                Some(vec![Match::Cgroupv2 {
                    op: eq_ne()?,
                    level,
                    paths,
                }])
            }
            "socket" => {
                if lv.get("key")?.as_str()? != "transparent" {
                    return None;
                }
                let v = num_u32(right)?;
                Some(vec![Match::Socket {
                    transparent: Some((v == 1) != (eq_ne()? == Op::Ne)),
                }])
            }
            _ => None,
        }
    }

    fn payload_match(
        &self,
        proto: &str,
        field: &str,
        op: Op,
        right: &'a Value,
        cmp: Cmp,
    ) -> Option<Vec<Match>> {
        let items = self.items(right)?;
        match (proto, field) {
            ("ip", "saddr") | ("ip", "daddr") | ("ip6", "saddr") | ("ip6", "daddr") => {
                let family = if proto == "ip" {
                    Family::Inet4
                } else {
                    Family::Inet6
                };
                let addrs: Vec<AddrItem> =
                    items.into_iter().map(addr_item).collect::<Option<_>>()?;
                if addrs.iter().any(|a| a.family() != family) {
                    return None;
                }
                Some(vec![if field == "saddr" {
                    Match::Saddr { family, op, addrs }
                } else {
                    Match::Daddr { family, op, addrs }
                }])
            }
            ("ip", "protocol") | ("ip6", "nexthdr") => {
                let family = if proto == "ip" {
                    Family::Inet4
                } else {
                    Family::Inet6
                };
                Some(vec![
                    Match::Nfproto { family },
                    Match::L4proto {
                        op,
                        protos: protos(&items)?,
                    },
                ])
            }
            ("ether", "saddr") => Some(vec![Match::EtherSaddr {
                op,
                macs: items
                    .into_iter()
                    .map(|v| super::ir::normalize_mac(v.as_str()?))
                    .collect::<Option<_>>()?,
            }]),
            (p, "sport") | (p, "dport") => {
                let ports = ports(&items, cmp)?;
                let op = if matches!(cmp, Cmp::Eq | Cmp::Ne) {
                    op
                } else {
                    Op::Eq
                };
                let m = if field == "sport" {
                    Match::Sport { op, ports }
                } else {
                    Match::Dport { op, ports }
                };
                if p == "th" {
                    return Some(vec![m]);
                }
                // `tcp dport`, `sctp dport`, …: the payload protocol's name, one with ports.
                let proto = IpProto::with_ports_named(p)?;
                Some(vec![
                    Match::L4proto {
                        op: Op::Eq,
                        protos: vec![proto.0],
                    },
                    m,
                ])
            }
            _ => None,
        }
    }

    fn mark_match(&self, key: MarkKey, mask: u32, cmp: Cmp, right: &'a Value) -> Option<Match> {
        let items = self.items(right)?;
        // A single prefix is nft's way of printing `mark and M == V` for leading-ones M.
        if let [one] = items.as_slice() {
            if let Some(p) = one.get("prefix") {
                let addr = num_u32(p.get("addr")?)?;
                let len = p.get("len")?.as_u64()?;
                let pmask = prefix_mask(len)?;
                let op = match cmp {
                    Cmp::Eq => Op::Eq,
                    Cmp::Ne => Op::Ne,
                    _ => return None,
                };
                return Some(Match::Mark {
                    key,
                    mask: mask & pmask,
                    op,
                    values: vec![(addr & pmask, addr & pmask)],
                });
            }
        }
        let mut values = Vec::new();
        for v in items {
            values.push(if let Some(n) = num_u32(v) {
                (n, n)
            } else if let Some(r) = v.get("range").and_then(Value::as_array) {
                match r.as_slice() {
                    [a, b] => (num_u32(a)?, num_u32(b)?),
                    _ => return None,
                }
            } else if let Some(p) = v.get("prefix") {
                let addr = num_u32(p.get("addr")?)?;
                let pmask = prefix_mask(p.get("len")?.as_u64()?)?;
                (addr & pmask, (addr & pmask) | !pmask)
            } else {
                return None;
            });
        }
        let (op, values) = match (cmp, values.as_slice()) {
            (Cmp::Eq, _) => (Op::Eq, values),
            (Cmp::Ne, _) => (Op::Ne, values),
            (Cmp::Lt, [(v, _)]) => (Op::Eq, vec![(0, v.checked_sub(1)?)]),
            (Cmp::Le, [(v, _)]) => (Op::Eq, vec![(0, *v)]),
            (Cmp::Gt, [(v, _)]) => (Op::Eq, vec![(v.checked_add(1)?, u32::MAX)]),
            (Cmp::Ge, [(v, _)]) => (Op::Eq, vec![(*v, u32::MAX)]),
            _ => return None,
        };
        Some(Match::Mark {
            key,
            mask,
            op,
            values,
        })
    }
}

fn prefix_mask(len: u64) -> Option<u32> {
    match len {
        0 => Some(0),
        1..=32 => Some(u32::MAX << (32 - len)),
        _ => None,
    }
}

fn protos(items: &[&Value]) -> Option<Vec<u8>> {
    items
        .iter()
        .map(|v| match v {
            Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
            Value::String(s) => IpProto::parse(s).map(|p| p.0),
            _ => None,
        })
        .collect()
}

fn service_port(s: &str) -> Option<u16> {
    Some(match s {
        "ssh" => 22,
        "smtp" => 25,
        "domain" => 53,
        "http" => 80,
        "https" => 443,
        "submission" => 587,
        "submissions" => 465,
        "ntp" => 123,
        n => n.parse().ok()?,
    })
}

fn port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => service_port(s),
        _ => None,
    }
}

fn ports(items: &[&Value], cmp: Cmp) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for v in items {
        out.push(if let Some(p) = port(v) {
            (p, p)
        } else if let Some(r) = v.get("range").and_then(Value::as_array) {
            match r.as_slice() {
                [a, b] => (port(a)?, port(b)?),
                _ => return None,
            }
        } else {
            return None;
        });
    }
    Some(match (cmp, out.as_slice()) {
        (Cmp::Eq | Cmp::Ne, _) => out,
        (Cmp::Lt, [(p, _)]) => vec![(0, p.checked_sub(1)?)],
        (Cmp::Le, [(p, _)]) => vec![(0, *p)],
        (Cmp::Gt, [(p, _)]) => vec![(p.checked_add(1)?, u16::MAX)],
        (Cmp::Ge, [(p, _)]) => vec![(*p, u16::MAX)],
        _ => return None,
    })
}

fn addr_item(v: &Value) -> Option<AddrItem> {
    if let Some(s) = v.as_str() {
        return parse_addr_item(s);
    }
    if let Some(p) = v.get("prefix") {
        let a: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return IpNet::new(a, len).ok().map(|n| AddrItem::Net(n.trunc()));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        if let [a, b] = r.as_slice() {
            let (a, b): (IpAddr, IpAddr) = (a.as_str()?.parse().ok()?, b.as_str()?.parse().ok()?);
            return (Family::of(&a) == Family::of(&b)).then_some(AddrItem::Range(a, b));
        }
    }
    None
}

/// A NAT statement's target; None when it uses expressions (maps, concatenations).
fn nat_to(v: &Value) -> Option<NatTo> {
    let mut to = NatTo::default();
    if v.is_null() {
        return Some(to);
    }
    match v.get("addr") {
        None => {}
        Some(Value::String(s)) => to.addr = Some(s.parse().ok()?),
        Some(a) => {
            if let Some([x, y]) = a.get("range").and_then(Value::as_array).map(Vec::as_slice) {
                to.addr = Some(x.as_str()?.parse().ok()?);
                to.addr_last = Some(y.as_str()?.parse().ok()?);
            } else if let Some(p) = a.get("prefix") {
                let first: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                let net = IpNet::new(first, len).ok()?;
                to.addr = Some(net.network());
                to.addr_last = Some(net.broadcast());
            } else {
                return None;
            }
        }
    }
    match v.get("port") {
        None => {}
        Some(Value::Number(_)) => to.port = Some(port(&v["port"])?),
        Some(p) => {
            let [a, b] = p.get("range")?.as_array()?.as_slice() else {
                return None;
            };
            to.port = Some(port(a)?);
            to.port_last = Some(port(b)?);
        }
    }
    Some(to)
}

/// How to print literals next to a left-hand side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctxt {
    Plain,
    /// Interface names are quoted.
    Ifname,
    /// Marks in hex.
    Mark,
}

impl Ctxt {
    fn of(left: &Value) -> Ctxt {
        if mark_key(left).is_some()
            || left
                .get("&")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .is_some_and(|a| mark_key(a).is_some())
        {
            return Ctxt::Mark;
        }
        match left
            .get("meta")
            .and_then(|m| m.get("key"))
            .and_then(Value::as_str)
        {
            Some("iifname" | "oifname" | "iif" | "oif") => Ctxt::Ifname,
            _ => Ctxt::Plain,
        }
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// An expression as nft would print it (close enough to recognise the rule).
fn render(v: &Value, cx: Ctxt) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (cx, n.as_u64()) {
            (Ctxt::Mark, Some(x)) => format!("{x:#010x}"),
            _ => n.to_string(),
        },
        Value::String(s) if cx == Ctxt::Ifname && !s.starts_with('@') => format!("\"{s}\""),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| render(x, cx))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => {
            let Some((k, x)) = single(v) else {
                return compact(v);
            };
            let bin = |op: &str| match x.as_array().map(Vec::as_slice) {
                Some([a, b]) => {
                    let l = render(a, Ctxt::of(a));
                    let inner = if Ctxt::of(a) == Ctxt::Mark || cx == Ctxt::Mark {
                        Ctxt::Mark
                    } else {
                        Ctxt::Plain
                    };
                    let inner = if matches!(op, "<<" | ">>") {
                        Ctxt::Plain
                    } else {
                        inner
                    };
                    format!("{l} {op} {}", render(b, inner))
                }
                _ => compact(v),
            };
            match k {
                "meta" => match x["key"].as_str() {
                    Some(key @ ("iifname" | "oifname" | "iif" | "oif")) => key.to_string(),
                    Some(key) => format!("meta {key}"),
                    None => compact(v),
                },
                "ct" => match (x["dir"].as_str(), x["key"].as_str()) {
                    (Some(d), Some(key)) => format!("ct {d} {key}"),
                    (None, Some(key)) => format!("ct {key}"),
                    _ => compact(v),
                },
                "payload" => match (x["protocol"].as_str(), x["field"].as_str()) {
                    (Some(p), Some(f)) => format!("{p} {f}"),
                    _ => format!(
                        "@{},{},{}",
                        x["base"].as_str().unwrap_or("?"),
                        x["offset"],
                        x["len"]
                    ),
                },
                "&" => bin("&"),
                "|" => bin("|"),
                "^" => bin("^"),
                "<<" => bin("<<"),
                ">>" => bin(">>"),
                "set" => match x {
                    Value::Array(a) => format!(
                        "{{ {} }}",
                        a.iter()
                            .map(|e| render(e, cx))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    other => render(other, cx),
                },
                "prefix" => format!("{}/{}", render(&x["addr"], cx), x["len"]),
                "range" => match x.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{}-{}", render(a, cx), render(b, cx)),
                    _ => compact(v),
                },
                "elem" => render(&x["val"], cx),
                "socket" => format!("socket {}", x["key"].as_str().unwrap_or("?")),
                "fib" => {
                    let flags: Vec<&str> = x["flags"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .or_else(|| x["flags"].as_str().map(|s| vec![s]))
                        .unwrap_or_default();
                    format!(
                        "fib {} {}",
                        flags.join(" . "),
                        x["result"].as_str().unwrap_or("?")
                    )
                }
                "concat" => x
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| render(e, Ctxt::of(e)))
                            .collect::<Vec<_>>()
                            .join(" . ")
                    })
                    .unwrap_or_else(|| compact(v)),
                "accept" | "drop" | "continue" | "return" | "jump" | "goto" => render_stmt(v),
                _ => compact(v),
            }
        }
    }
}

/// One element of a rule's `expr` list as nft would print it.
fn render_stmt(e: &Value) -> String {
    let Some((k, v)) = single(e) else {
        return compact(e);
    };
    match k {
        "match" => {
            let left = &v["left"];
            let cx = Ctxt::of(left);
            let l = render(left, cx);
            let op = v["op"].as_str().unwrap_or("==");
            if let (Ctxt::Mark, Some(p)) = (cx, v["right"].get("prefix")) {
                if let (Some(a), Some(m)) =
                    (num_u32(&p["addr"]), p["len"].as_u64().and_then(prefix_mask))
                {
                    return format!("{l} and {m:#010x} {op} {a:#010x}");
                }
            }
            let r = render(&v["right"], cx);
            let binop =
                single(left).is_some_and(|(k, _)| matches!(k, "&" | "|" | "^" | "<<" | ">>"));
            match op {
                "==" if binop => format!("{l} == {r}"),
                "==" | "in" => format!("{l} {r}"),
                o => format!("{l} {o} {r}"),
            }
        }
        "mangle" => {
            let key = &v["key"];
            let cx = if mark_key(key).is_some() {
                Ctxt::Mark
            } else {
                Ctxt::Plain
            };
            format!(
                "{} set {}",
                render(key, Ctxt::of(key)),
                render(&v["value"], cx)
            )
        }
        "counter" => match v.as_str() {
            Some(name) => format!("counter name \"{name}\""),
            None => "counter".into(),
        },
        "accept" | "drop" | "continue" | "return" => k.to_string(),
        "jump" | "goto" => format!("{k} {}", v["target"].as_str().unwrap_or("?")),
        "reject" => "reject".into(),
        "vmap" => {
            let key = &v["key"];
            let cx = Ctxt::of(key);
            let data = match v["data"].get("set").and_then(Value::as_array) {
                Some(items) => format!(
                    "{{ {} }}",
                    items
                        .iter()
                        .map(|p| match p.as_array().map(Vec::as_slice) {
                            Some([a, b]) => format!("{} : {}", render(a, cx), render_stmt(b)),
                            _ => compact(p),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => render(&v["data"], cx),
            };
            format!("{} vmap {data}", render(key, cx))
        }
        "dnat" | "snat" | "tproxy" | "masquerade" | "redirect" => {
            let mut s = k.to_string();
            if let Some(f) = v.get("family").and_then(Value::as_str) {
                s += &format!(" {f}");
            }
            if let Some(to) = nat_to(v).filter(|t| *t != NatTo::default()) {
                s += &format!(" to {to}");
            } else if !v.is_null() {
                s += &format!(" {}", compact(v));
            }
            s
        }
        "log" => match v.get("prefix").and_then(Value::as_str) {
            Some(p) => format!("log prefix \"{p}\""),
            None => "log".into(),
        },
        "xt" => format!(
            "xt {} \"{}\"",
            v.get("type").and_then(Value::as_str).unwrap_or(""),
            v.get("name").and_then(Value::as_str).unwrap_or("?")
        ),
        _ => format!("{k} {}", compact(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(json: &str) -> Ruleset {
        from_nft_json(&serde_json::from_str(json).expect("json")).expect("parse")
    }

    #[test]
    fn masked_mark_as_prefix_and_state_as_in() {
        let r = rs(
            r#"{"nftables":[{"chain":{"family":"inet","table":"t","name":"pre","handle":1,"type":"filter","hook":"prerouting","prio":-150,"policy":"accept"}},
          {"rule":{"family":"inet","table":"t","chain":"pre","handle":2,"expr":[{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":"new"}},{"match":{"op":"==","left":{"ct":{"key":"mark"}},"right":{"prefix":{"addr":0,"len":8}}}},{"jump":{"target":"c"}}]}}]}"#,
        );
        let rule = &r.chains[0].rules[0];
        assert_eq!(
            rule.matches,
            vec![
                Match::CtState {
                    op: Op::Eq,
                    states: vec![CtState::New]
                },
                Match::Mark {
                    key: MarkKey::Ct,
                    mask: 0xff00_0000,
                    op: Op::Eq,
                    values: vec![(0, 0)]
                }
            ]
        );
        assert_eq!(rule.verdict, Verdict::Jump("c".into()));
        assert_eq!(
            rule.text,
            "ct state new ct mark and 0xff000000 == 0x00000000 jump c"
        );
    }

    #[test]
    fn tcp_dport_implies_protocol_and_xt_is_unknown() {
        let r = from_nft_json_keep_xtables(&serde_json::from_str(r#"{"nftables":[
          {"chain":{"family":"ip","table":"mangle","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":-150,"policy":"accept"}},
          {"rule":{"family":"ip","table":"mangle","chain":"FORWARD","handle":2,"expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"eth2"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":25}},{"counter":{"packets":0,"bytes":0}},{"xt":{"type":"target","name":"MARK"}}]}}]}"#).unwrap()).unwrap();
        let rule = &r.chains[0].rules[0];
        assert_eq!(rule.matches.len(), 3, "{:?}", rule.matches);
        assert!(matches!(&rule.stmts[1], Stmt::Unknown(s) if s.starts_with("xt target MARK")));
        assert_eq!(
            rule.text,
            "iifname \"eth2\" tcp dport 25 counter xt target \"MARK\""
        );
        // Without keep: the iptables-nft table is left out, with a note.
        let skipped = from_nft_json(&serde_json::from_str(r#"{"nftables":[
          {"chain":{"family":"ip","table":"mangle","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":-150,"policy":"accept"}}]}"#).unwrap()).unwrap();
        assert!(skipped.chains.is_empty());
        assert!(
            skipped.notes[0].contains("iptables-nft"),
            "{:?}",
            skipped.notes
        );
    }

    #[test]
    fn structural_errors_name_the_place() {
        let e = from_nft_json(&serde_json::json!({"x": 1})).unwrap_err();
        assert_eq!(e.kind, SourceKind::NftJson);
        let e =
            from_nft_json(&serde_json::json!({"nftables": [{"rule": {"handle": 7, "expr": []}}]}))
                .unwrap_err();
        assert!(e.to_string().contains("handle 7"), "{e}");
    }
}
