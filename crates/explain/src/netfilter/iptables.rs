//! `iptables-save` / `ip6tables-save` output (nft-based or legacy) → IR.
//!
//! Built-in chains hook in at iptables' fixed priorities: raw −300, mangle −150 (OUTPUT
//! is a re-routing chain), nat −100 for PREROUTING/OUTPUT (DNAT) and 100 for
//! INPUT/POSTROUTING (SNAT), filter 0, security 50. The save output already normalises
//! most options (`--set-mark 0` is printed as `--set-xmark 0x0/0xffffffff`,
//! `--restore-mark` gets its masks), but the short forms are accepted too.

use std::collections::HashMap;
use std::net::IpAddr;

use super::ir::{
    parse_addr_item, parse_u32, AddrItem, Base, Chain, ChainKind, CtDirection, CtState, Hook, Lin,
    MarkKey, Match, NatTo, NfFamily, Op, Origin, Policy, Rule, Ruleset, Stmt, Verdict,
};
use super::{ParseError, SourceKind};
use symroute_core::model::{Family, IpProto};

/// Reads one family's save output (`Family::Inet4`: iptables-save, `Inet6`: ip6tables-save).
pub fn from_iptables_save(text: &str, family: Family) -> Result<Ruleset, ParseError> {
    let (kind, tool) = match family {
        Family::Inet4 => (SourceKind::IptablesSave, "iptables-save"),
        Family::Inet6 => (SourceKind::Ip6tablesSave, "ip6tables-save"),
    };
    let nf = NfFamily::of(family);
    let err = |line: usize, msg: String| ParseError::new(kind, format!("line {line}"), msg);
    let mut rs = Ruleset::default();
    // The table being read: its name, and its chains' indexes in rs.chains by name.
    let mut table: Option<(String, HashMap<String, usize>)> = None;
    let mut skipping: Option<String> = None;

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim();
            if c.starts_with("Table") && c.contains("incompatible") {
                rs.notes.push(format!("{tool}: {c}"));
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim().to_string();
            if !TABLES.contains(&name.as_str()) {
                rs.notes.push(format!(
                    "{tool} line {n}: table {name} is not modelled, skipped"
                ));
                skipping = Some(name);
                table = None;
                continue;
            }
            skipping = None;
            table = Some((name, HashMap::new()));
            continue;
        }
        if line == "COMMIT" {
            table = None;
            skipping = None;
            continue;
        }
        if skipping.is_some() {
            continue;
        }
        let Some((tname, chains)) = table.as_mut() else {
            return Err(err(
                n,
                format!("`{line}` outside a table (expected `*mangle` first)"),
            ));
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (Some(name), Some(policy)) = (w.next(), w.next()) else {
                return Err(err(n, "chain declaration needs a name and a policy".into()));
            };
            let base = builtin(tname, name).map(|(hook, priority, kind)| Base {
                hook,
                priority,
                kind,
                policy: if policy == "DROP" {
                    Policy::Drop
                } else {
                    Policy::Accept
                },
            });
            if chains.contains_key(name) {
                continue;
            }
            rs.chains.push(Chain {
                family: nf,
                table: tname.clone(),
                name: name.to_string(),
                base,
                rules: Vec::new(),
            });
            chains.insert(name.to_string(), rs.chains.len() - 1);
            continue;
        }
        let words = split(line).map_err(|m| err(n, m))?;
        if words.first().map(String::as_str) != Some("-A") {
            return Err(err(
                n,
                format!("expected `-A CHAIN …`, a chain declaration or COMMIT, got `{line}`"),
            ));
        }
        let Some(chain) = words.get(1) else {
            return Err(err(n, "`-A` without a chain name".into()));
        };
        let Some(&ci) = chains.get(chain.as_str()) else {
            return Err(err(
                n,
                format!("chain {chain} is not declared in table {tname}"),
            ));
        };
        let user_chains: Vec<&str> = chains
            .keys()
            .filter(|c| builtin(tname, c).is_none())
            .map(String::as_str)
            .collect();
        let (matches, stmts, verdict) = rule(&words[2..], family, tname, &user_chains);
        let origin = Origin::Iptables {
            tool: tool.to_string(),
            table: tname.clone(),
            chain: chain.clone(),
            line: n,
        };
        rs.chains[ci].rules.push(Rule {
            matches,
            stmts,
            verdict,
            origin,
            text: line.to_string(),
        });
    }
    Ok(rs)
}

const TABLES: &[&str] = &["raw", "mangle", "nat", "filter", "security"];

fn builtin(table: &str, chain: &str) -> Option<(Hook, i32, ChainKind)> {
    let hook = Hook::parse(chain).filter(|_| chain.chars().all(|c| c.is_ascii_uppercase()))?;
    let (prio, kind) = match (table, hook) {
        ("raw", Hook::Prerouting | Hook::Output) => (-300, ChainKind::Filter),
        ("mangle", Hook::Output) => (-150, ChainKind::Route),
        ("mangle", Hook::Ingress | Hook::Egress) => return None,
        ("mangle", _) => (-150, ChainKind::Filter),
        ("nat", Hook::Prerouting | Hook::Output) => (-100, ChainKind::Nat),
        ("nat", Hook::Input | Hook::Postrouting) => (100, ChainKind::Nat),
        ("filter", Hook::Input | Hook::Forward | Hook::Output) => (0, ChainKind::Filter),
        ("security", Hook::Input | Hook::Forward | Hook::Output) => (50, ChainKind::Filter),
        _ => return None,
    };
    Some((hook, prio, kind))
}

/// Shell-like words: iptables-save quotes arguments with spaces (`--comment "a b"`) and
/// escapes `"` and `\` inside them.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted string".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("unterminated quoted string".into()),
                        },
                        Some(o) => cur.push(o),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `V` or `V/M` (M defaults to all ones).
fn value_mask(s: &str) -> Option<(u32, u32)> {
    match s.split_once('/') {
        Some((v, m)) => Some((parse_u32(v)?, parse_u32(m)?)),
        None => Some((parse_u32(s)?, u32::MAX)),
    }
}

/// `25`, `1:1024`, `1024:` (to 65535), `:1024`; multiport lists are comma separated.
fn port_ranges(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => {
                let a = if a.is_empty() { 0 } else { a.parse().ok()? };
                let b = if b.is_empty() {
                    u16::MAX
                } else {
                    b.parse().ok()?
                };
                Some((a, b))
            }
            None => {
                let v: u16 = p.parse().ok()?;
                Some((v, v))
            }
        })
        .collect()
}

fn iface(s: &str) -> String {
    match s.strip_suffix('+') {
        Some(p) => format!("{p}*"),
        None => s.to_string(),
    }
}

/// How many arguments an option takes; None: not known, it takes every following word
/// up to the next option.
fn arity(opt: &str) -> Option<usize> {
    Some(match opt {
        "--transparent" | "--nowildcard" | "--restore-skmark" | "--syn" | "--save-mark"
        | "--restore-mark" | "--random" | "--random-fully" | "--persistent" | "--log-uid"
        | "--log-tcp-sequence" | "--log-tcp-options" | "--log-ip-options" | "--notrack" => 0,
        "--tcp-flags" | "--match-set" => 2,
        "--dport"
        | "--sport"
        | "--dports"
        | "--sports"
        | "--ports"
        | "--destination-port"
        | "--source-port"
        | "--destination-ports"
        | "--source-ports"
        | "--mac-source"
        | "--mark"
        | "--ctstate"
        | "--state"
        | "--ctdir"
        | "--comment"
        | "--src-range"
        | "--dst-range"
        | "--to-destination"
        | "--to-source"
        | "--to-ports"
        | "--on-port"
        | "--on-ip"
        | "--tproxy-mark"
        | "--set-xmark"
        | "--set-mark"
        | "--and-mark"
        | "--or-mark"
        | "--xor-mark"
        | "--nfmask"
        | "--ctmask"
        | "--mask"
        | "--log-prefix"
        | "--log-level"
        | "--reject-with"
        | "--src-type"
        | "--dst-type"
        | "--uid-owner"
        | "--gid-owner"
        | "--physdev-in"
        | "--physdev-out" => 1,
        _ => return None,
    })
}

/// The number of arguments `words[i]` (an option) takes.
fn args_of(words: &[String], i: usize) -> usize {
    match arity(&words[i]) {
        Some(n) => n.min(words.len() - i - 1),
        None => words[i + 1..]
            .iter()
            .take_while(|w| !w.starts_with('-') && w.as_str() != "!")
            .count(),
    }
}

/// Matches, statements and verdict of the words after `-A CHAIN`.
fn rule(
    words: &[String],
    family: Family,
    table: &str,
    user_chains: &[&str],
) -> (Vec<Match>, Vec<Stmt>, Verdict) {
    let mut matches: Vec<Match> = Vec::new();
    let mut stmts: Vec<Stmt> = Vec::new();
    let mut verdict = Verdict::Continue;
    let mut neg = false;
    let mut module = String::new();
    let mut i = 0;
    let arg = |i: usize| words.get(i + 1).map(String::as_str);
    let unknown = |s: String| Match::Unknown(s);
    while i < words.len() {
        let w = words[i].as_str();
        if w == "!" {
            neg = true;
            i += 1;
            continue;
        }
        let op = Op::from_negate(neg);
        let bang = if neg { "! " } else { "" };
        neg = false;
        match w {
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let Some(a) = arg(i) else {
                    matches.push(unknown(format!("{bang}{w}")));
                    break;
                };
                let names = vec![iface(a)];
                matches.push(if w.starts_with("-i") || w == "--in-interface" {
                    Match::Iifname { op, names }
                } else {
                    Match::Oifname { op, names }
                });
                i += 2;
            }
            "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
                let a = arg(i).unwrap_or("");
                let addrs: Option<Vec<AddrItem>> = a.split(',').map(parse_addr_item).collect();
                let src = matches!(w, "-s" | "--source" | "--src");
                match addrs.filter(|v| v.iter().all(|x| x.family() == family)) {
                    Some(addrs) if src => matches.push(Match::Saddr { family, op, addrs }),
                    Some(addrs) => matches.push(Match::Daddr { family, op, addrs }),
                    None => matches.push(unknown(format!("{bang}{w} {a}"))),
                }
                i += 2;
            }
            "-p" | "--protocol" => {
                let a = arg(i).unwrap_or("");
                match (a, IpProto::parse(a).map(|p| p.0)) {
                    ("all" | "0", _) if op == Op::Eq => {}
                    (_, Some(p)) => matches.push(Match::L4proto {
                        op,
                        protos: vec![p],
                    }),
                    _ => matches.push(unknown(format!("{bang}-p {a}"))),
                }
                i += 2;
            }
            "-m" | "--match" => {
                module = arg(i).unwrap_or("").to_string();
                if module == "socket" {
                    matches.push(Match::Socket { transparent: None });
                } else if !KNOWN_MODULES.contains(&module.as_str())
                    && IpProto::with_ports_named(&module).is_none()
                {
                    // Options follow; with none, the module itself is the condition.
                    let opts_follow = words
                        .get(i + 2)
                        .is_some_and(|x| x.starts_with("--") || x == "!");
                    if !opts_follow {
                        matches.push(unknown(format!("-m {module}")));
                    }
                }
                i += 2;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                let target = arg(i).unwrap_or("");
                let goto = matches!(w, "-g" | "--goto");
                let targs = &words[(i + 2).min(words.len())..];
                target_of(
                    target,
                    goto,
                    targs,
                    family,
                    user_chains,
                    &mut stmts,
                    &mut verdict,
                );
                break;
            }
            "-c" | "--set-counters" => i += 2,
            // `-A FORWARD -t mangle …` as people write it in scripts: the table is the
            // section's; a different one cannot be honoured here.
            "-t" | "--table" => {
                let t = arg(i).unwrap_or("");
                if t != table {
                    matches.push(unknown(format!("-t {t} (inside table {table})")));
                }
                i += 2;
            }
            "-4" | "-6" | "--ipv4" | "--ipv6" => i += 1,
            "-f" | "--fragment" => {
                matches.push(unknown(format!("{bang}-f")));
                i += 1;
            }
            o if o.starts_with("--") => {
                let n = args_of(words, i);
                let args: Vec<&str> = words[i + 1..=i + n].iter().map(String::as_str).collect();
                i += 1 + args.len();
                let a = args.first().copied().unwrap_or("");
                let whole = format!("-m {module} {bang}{o} {}", args.join(" "))
                    .trim_end()
                    .to_string();
                let m = module_option(&module, o, a, op, family);
                match m {
                    Some(Some(m)) => matches.push(m),
                    Some(None) => {}
                    None if o == "--restore-skmark" => stmts.push(Stmt::Unknown(whole)),
                    None => matches.push(unknown(whole)),
                }
            }
            other => {
                matches.push(unknown(format!("{bang}{other}")));
                i += 1;
            }
        }
    }
    (matches, stmts, verdict)
}

/// The match modules besides the port protocols' own (`-m tcp`, `-m udp`, …).
const KNOWN_MODULES: &[&str] = &[
    "multiport",
    "mac",
    "mark",
    "connmark",
    "conntrack",
    "state",
    "socket",
    "comment",
    "iprange",
];

/// `-p tcp --dport 25` (no `-m`) or `-m tcp` … `-m udplite`: a protocol with ports.
fn port_module(module: &str) -> bool {
    module.is_empty() || IpProto::with_ports_named(module).is_some()
}

/// A match-module option: `Some(Some(m))` a condition, `Some(None)` no condition
/// (comments, `--nowildcard`), `None` not modelled.
fn module_option(
    module: &str,
    opt: &str,
    a: &str,
    op: Op,
    family: Family,
) -> Option<Option<Match>> {
    let ports = |a: &str| port_ranges(a);
    Some(Some(match (module, opt) {
        (m, "--dport" | "--destination-port") if port_module(m) => Match::Dport {
            op,
            ports: ports(a)?,
        },
        (m, "--sport" | "--source-port") if port_module(m) => Match::Sport {
            op,
            ports: ports(a)?,
        },
        ("multiport", "--dports" | "--destination-ports") => Match::Dport {
            op,
            ports: ports(a)?,
        },
        ("multiport", "--sports" | "--source-ports") => Match::Sport {
            op,
            ports: ports(a)?,
        },
        ("mac", "--mac-source") => Match::EtherSaddr {
            op,
            macs: vec![super::ir::normalize_mac(a)?],
        },
        ("mark" | "connmark", "--mark") => {
            let (v, m) = value_mask(a)?;
            Match::Mark {
                key: if module == "mark" {
                    MarkKey::Meta
                } else {
                    MarkKey::Ct
                },
                mask: m,
                op,
                values: vec![(v, v)],
            }
        }
        ("conntrack", "--ctstate") | ("state", "--state") => Match::CtState {
            op,
            states: a
                .split(',')
                .map(CtState::parse)
                .collect::<Option<Vec<_>>>()?,
        },
        ("conntrack", "--ctdir") => Match::CtDirection {
            op,
            direction: CtDirection::parse(a)?,
        },
        ("socket", "--transparent") => Match::Socket {
            transparent: Some(true),
        },
        ("socket", "--nowildcard") | ("comment", "--comment") => return Some(None),
        ("iprange", "--src-range" | "--dst-range") => {
            let item = parse_addr_item(a)?;
            if item.family() != family {
                return None;
            }
            if opt == "--src-range" {
                Match::Saddr {
                    family,
                    op,
                    addrs: vec![item],
                }
            } else {
                Match::Daddr {
                    family,
                    op,
                    addrs: vec![item],
                }
            }
        }
        _ => return None,
    }))
}

/// The option values of a target: `--name value` pairs and flags.
fn opts(targs: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < targs.len() {
        let n = args_of(targs, i);
        let v = (n > 0).then(|| targs[i + 1..=i + n].join(" "));
        out.push((targs[i].clone(), v));
        i += 1 + n;
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn target_of(
    target: &str,
    goto: bool,
    targs: &[String],
    family: Family,
    user_chains: &[&str],
    stmts: &mut Vec<Stmt>,
    verdict: &mut Verdict,
) {
    let whole = format!("-j {target} {}", targs.join(" "))
        .trim_end()
        .to_string();
    let o = opts(targs);
    let get = |k: &str| {
        o.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.as_deref())
    };
    match target {
        "ACCEPT" => *verdict = Verdict::Accept,
        "DROP" | "REJECT" => *verdict = Verdict::Drop,
        "RETURN" => *verdict = Verdict::Return,
        "MARK" | "CONNMARK" => match mark_target(target, &o) {
            Some((key, l)) => stmts.push(Stmt::SetMark {
                key,
                value: l.to_expr(key),
            }),
            None => stmts.push(Stmt::Unknown(whole)),
        },
        "LOG" | "NFLOG" | "ULOG" => stmts.push(Stmt::Log),
        "DNAT" | "SNAT" => {
            let key = if target == "DNAT" {
                "--to-destination"
            } else {
                "--to-source"
            };
            match get(key).map(|s| nat_spec(s, family)) {
                Some(Some(to)) => {
                    stmts.push(if target == "DNAT" {
                        Stmt::Dnat(to)
                    } else {
                        Stmt::Snat(to)
                    });
                    *verdict = Verdict::Accept;
                }
                _ => stmts.push(Stmt::Unknown(whole)),
            }
        }
        "MASQUERADE" | "REDIRECT" => {
            let mut to = NatTo::default();
            if let Some(p) = get("--to-ports") {
                match port_range_dash(p) {
                    Some((a, b)) => {
                        to.port = Some(a);
                        to.port_last = (a != b).then_some(b);
                    }
                    None => {
                        stmts.push(Stmt::Unknown(whole));
                        return;
                    }
                }
            }
            stmts.push(if target == "MASQUERADE" {
                Stmt::Masquerade(to)
            } else {
                Stmt::Redirect(to)
            });
            *verdict = Verdict::Accept;
        }
        "TPROXY" => {
            let mut to = NatTo::default();
            let port = get("--on-port").and_then(|p| p.parse().ok());
            let addr = get("--on-ip").map(|a| a.trim_matches(['[', ']']).parse::<IpAddr>());
            to.port = port;
            match addr {
                Some(Ok(a)) => to.addr = Some(a),
                Some(Err(_)) => {
                    stmts.push(Stmt::Unknown(whole));
                    return;
                }
                None => {}
            }
            if let Some(m) = get("--tproxy-mark") {
                match value_mask(m) {
                    Some((v, mask)) => stmts.push(Stmt::SetMark {
                        key: MarkKey::Meta,
                        value: Lin::key(MarkKey::Meta)
                            .and(!mask)
                            .xor(Lin::konst(v))
                            .to_expr(MarkKey::Meta),
                    }),
                    None => {
                        stmts.push(Stmt::Unknown(whole));
                        return;
                    }
                }
            }
            stmts.push(Stmt::Tproxy(to));
            *verdict = Verdict::Accept;
        }
        t if user_chains.contains(&t) => {
            *verdict = if goto {
                Verdict::Goto(t.to_string())
            } else {
                Verdict::Jump(t.to_string())
            };
        }
        _ => stmts.push(Stmt::Unknown(whole)),
    }
}

/// MARK / CONNMARK options as an assignment to the packet or conntrack mark.
fn mark_target(target: &str, o: &[(String, Option<String>)]) -> Option<(MarkKey, Lin)> {
    let own = if target == "MARK" {
        MarkKey::Meta
    } else {
        MarkKey::Ct
    };
    let mut nfmask = u32::MAX;
    let mut ctmask = u32::MAX;
    let mut action: Option<(&str, Option<&str>)> = None;
    for (k, v) in o {
        match k.as_str() {
            "--nfmask" => nfmask = parse_u32(v.as_deref()?)?,
            "--ctmask" => ctmask = parse_u32(v.as_deref()?)?,
            "--mask" => {
                let m = parse_u32(v.as_deref()?)?;
                nfmask = m;
                ctmask = m;
            }
            "--set-xmark" | "--set-mark" | "--and-mark" | "--or-mark" | "--xor-mark"
            | "--save-mark" | "--restore-mark" => {
                if action.is_some() {
                    return None;
                }
                action = Some((k.as_str(), v.as_deref()));
            }
            _ => return None,
        }
    }
    let (act, val) = action?;
    let me = Lin::key(own);
    Some(match act {
        "--set-xmark" => {
            let (v, m) = value_mask(val?)?;
            (own, me.and(!m).xor(Lin::konst(v)))
        }
        "--set-mark" => {
            let (v, m) = value_mask(val?)?;
            (own, me.and(!(m | v)).xor(Lin::konst(v)))
        }
        "--and-mark" => (own, me.and(parse_u32(val?)?)),
        "--or-mark" => (own, me.or_const(parse_u32(val?)?)),
        "--xor-mark" => (own, me.xor(Lin::konst(parse_u32(val?)?))),
        // ct = (ct & ~ctmask) ^ (mark & nfmask)
        "--save-mark" if target == "CONNMARK" => (
            MarkKey::Ct,
            Lin {
                meta: nfmask,
                ct: !ctmask,
                k: 0,
            },
        ),
        // mark = (mark & ~nfmask) ^ (ct & ctmask)
        "--restore-mark" if target == "CONNMARK" => (
            MarkKey::Meta,
            Lin {
                meta: !nfmask,
                ct: ctmask,
                k: 0,
            },
        ),
        _ => return None,
    })
}

fn port_range_dash(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

/// `a[-b][:p[-q]]`, IPv6 as `[a][-[b]][:p[-q]]` or a bare address.
fn nat_spec(s: &str, family: Family) -> Option<NatTo> {
    let mut to = NatTo::default();
    let (addrs, ports) = if s.starts_with('[') {
        match s.rfind(']') {
            Some(end) => {
                let rest = &s[end + 1..];
                (&s[..=end], rest.strip_prefix(':'))
            }
            None => return None,
        }
    } else if family == Family::Inet6 {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        }
    };
    if !addrs.is_empty() {
        let clean = |x: &str| x.trim_matches(['[', ']']).parse::<IpAddr>().ok();
        match addrs.split_once("-") {
            Some((a, b)) if family != Family::Inet6 || addrs.starts_with('[') => {
                to.addr = Some(clean(a)?);
                to.addr_last = Some(clean(b)?);
            }
            _ => to.addr = Some(clean(addrs)?),
        }
        if to.addr.is_some_and(|a| Family::of(&a) != family) {
            return None;
        }
    }
    if let Some(p) = ports {
        let (a, b) = port_range_dash(p)?;
        to.port = Some(a);
        to.port_last = (a != b).then_some(b);
    }
    Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_ports() {
        assert_eq!(
            split(r#"-A P -m comment --comment "a \"b\" c" -j LOG --log-prefix "x y""#).unwrap(),
            vec![
                "-A",
                "P",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "LOG",
                "--log-prefix",
                "x y"
            ]
        );
        assert!(split("-A P --comment \"open").is_err());
        assert_eq!(
            port_ranges("53,1000:2000,1024:"),
            Some(vec![(53, 53), (1000, 2000), (1024, 65535)])
        );
        assert_eq!(
            nat_spec("10.77.0.10:25", Family::Inet4),
            Some(NatTo {
                addr: Some("10.77.0.10".parse().unwrap()),
                port: Some(25),
                ..Default::default()
            })
        );
        let six = nat_spec("[fd77::10]:25", Family::Inet6).unwrap();
        assert_eq!(six.addr, Some("fd77::10".parse().unwrap()));
        assert_eq!(six.port, Some(25));
        let range = nat_spec("10.0.0.1-10.0.0.5:80-90", Family::Inet4).unwrap();
        assert_eq!(range.addr_last, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(range.port_last, Some(90));
        assert_eq!(
            nat_spec("fd77::10", Family::Inet6).unwrap().addr,
            Some("fd77::10".parse().unwrap())
        );
    }

    #[test]
    fn unknown_options_keep_their_arguments() {
        let words =
            split("-m set --match-set blocked src,dst -m addrtype ! --dst-type LOCAL -j ACCEPT")
                .unwrap();
        let (m, _, v) = rule(&words, Family::Inet4, "mangle", &[]);
        assert_eq!(
            m,
            vec![
                Match::Unknown("-m set --match-set blocked src,dst".into()),
                Match::Unknown("-m addrtype ! --dst-type LOCAL".into())
            ]
        );
        assert_eq!(v, Verdict::Accept);
        let words = split("-p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment \"x y\" -j TCPMSS --clamp-mss-to-pmtu").unwrap();
        let (m, s, _) = rule(&words, Family::Inet4, "mangle", &[]);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            s,
            vec![Stmt::Unknown("-j TCPMSS --clamp-mss-to-pmtu".into())]
        );
    }

    #[test]
    fn connmark_masks() {
        let o = |s: &str| opts(&split(s).unwrap());
        let (k, l) = mark_target(
            "CONNMARK",
            &o("--restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        )
        .unwrap();
        assert_eq!((k, l.eval(5, 7)), (MarkKey::Meta, 7));
        let (k, l) =
            mark_target("CONNMARK", &o("--save-mark --nfmask 0xff --ctmask 0xff00")).unwrap();
        assert_eq!(k, MarkKey::Ct);
        // ct = (ct & ~0xff00) ^ (mark & 0xff)
        assert_eq!(l.eval(0x12, 0xabcd), 0xcd ^ 0x12);
        let (_, l) = mark_target("MARK", &o("--set-mark 0")).unwrap();
        assert_eq!(l.eval(0x55, 0), 0);
        let (_, l) = mark_target("MARK", &o("--set-xmark 0x4/0xf")).unwrap();
        assert_eq!(l.eval(0xf3, 0), 0xf4);
        assert!(mark_target("CONNMARK", &o("--save-mark --left-shift-mark 8")).is_none());
    }
}
