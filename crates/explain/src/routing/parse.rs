//! Parsers for what the usual commands print: `ip rule`, `ip -6 rule`,
//! `ip route show table all`, `ip -6 route show table all` (iproute2 5.x/6.x text
//! output), `ip -j addr` and `sysctl -a`-style `key = value` lines.
//!
//! They never panic. Flags and attributes that do not change a routing decision
//! (`proto`, `expires`, `mtu`, `rt_offload`, `encap …`, unknown words) are skipped; a
//! line the engine would misread (no priority, an address of the wrong family, an
//! unknown table name, a keyword without its value) is an error naming the line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;

use super::names::{self, TableNames};
use super::types::{
    LinkState, NextHop, ParseError, RouteEntry, RouteKind, RoutingState, RuleAction, RuleEntry,
    StateError, TABLE_MAIN,
};
use symroute_core::model::{Family, IpProto};

/// The words of one line (or of a multipath route's lines), each with its line number.
struct Cursor<'a> {
    toks: Vec<(usize, &'a str)>,
    pos: usize,
    /// The line reported when the tokens run out.
    last_line: usize,
}

impl<'a> Cursor<'a> {
    fn new(lines: &[(usize, &'a str)]) -> Self {
        let toks = lines
            .iter()
            .flat_map(|(n, l)| l.split_whitespace().map(move |w| (*n, w)))
            .collect();
        Cursor {
            toks,
            pos: 0,
            last_line: lines.last().map_or(0, |(n, _)| *n),
        }
    }
    fn next(&mut self) -> Option<&'a str> {
        let t = self.toks.get(self.pos).map(|(_, w)| *w);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.pos).map(|(_, w)| *w)
    }
    /// Line of the word just read.
    fn line(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|p| self.toks.get(p))
            .map_or(self.last_line, |(n, _)| *n)
    }
    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line(),
            message: message.into(),
        }
    }
    /// The value after keyword `kw`.
    fn value(&mut self, kw: &str) -> Result<&'a str, ParseError> {
        match self.next() {
            Some(v) => Ok(v),
            None => Err(self.err(format!("\"{kw}\" is missing its value"))),
        }
    }
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::Inet4 => "IPv4",
        Family::Inet6 => "IPv6",
    }
}

fn zero(family: Family) -> IpAddr {
    match family {
        Family::Inet4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// An address of `family`.
fn parse_addr(word: &str, family: Family) -> Result<IpAddr, String> {
    let addr: IpAddr = word
        .parse()
        .map_err(|_| format!("\"{word}\" is not an {} address", family_word(family)))?;
    if Family::of(&addr) != family {
        return Err(format!(
            "\"{word}\" is an {} address in {} output",
            family_word(Family::of(&addr)),
            family_word(family)
        ));
    }
    Ok(addr)
}

/// `default`/`all`, `0/N` (iproute2's spelling of a zero prefix), `ADDR` or `ADDR/LEN`,
/// normalised (host bits cleared).
fn parse_prefix(word: &str, family: Family) -> Result<IpNet, String> {
    let max = match family {
        Family::Inet4 => 32,
        Family::Inet6 => 128,
    };
    let bad_len = |l: &str| format!("\"{word}\": prefix length {l} is not 0..{max}");
    if word == "default" || word == "all" {
        return Ok(IpNet::new(zero(family), 0).unwrap_or_else(|_| host(zero(family))));
    }
    let (addr, len) = match word.split_once('/') {
        Some((a, l)) => {
            let len: u8 = l.parse().map_err(|_| bad_len(l))?;
            if len > max {
                return Err(bad_len(l));
            }
            let addr = if a == "0" {
                zero(family)
            } else {
                parse_addr(a, family)?
            };
            (addr, len)
        }
        None => (parse_addr(word, family)?, max),
    };
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .map_err(|_| bad_len(&len.to_string()))
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// `A` or `A-B`.
fn parse_port_range(word: &str) -> Option<(u16, u16)> {
    match word.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
        None => word.parse().ok().map(|p| (p, p)),
    }
}

/// `VALUE[/MASK]`, hex or decimal.
fn parse_fwmark(word: &str) -> Option<(u32, u32)> {
    match word.split_once('/') {
        Some((v, m)) => Some((names::parse_u32(v)?, names::parse_u32(m)?)),
        None => Some((names::parse_u32(word)?, u32::MAX)),
    }
}

fn table_id(cur: &Cursor, word: &str, tables: &TableNames) -> Result<u32, ParseError> {
    tables.id(word).ok_or_else(|| {
        let ambiguous = tables.ambiguous(word);
        let word = word.escape_debug();
        cur.err(match ambiguous {
            Some(ids) => format!(
                "routing table name \"{word}\" is given to tables {} in the host's rt_tables \
                 files, so its output does not say which one is meant: give each table its own \
                 name (or print numbers with `ip -N`)",
                ids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            None => format!(
                "unknown routing table name \"{word}\": it comes from this host's \
                 /etc/iproute2/rt_tables or rt_tables.d/*.conf (`symroute snapshot` saves them \
                 as rt_tables; for a snapshot made without them, copy them into rt_tables)"
            ),
        })
    })
}

/// Parses `ip rule` (family `Inet4`) or `ip -6 rule` (`Inet6`) output. Table names other
/// than main/local/default/unspec are errors; use [`parse_ip_rules_with`] with the host's
/// `rt_tables` to accept them.
pub fn parse_ip_rules(text: &str, family: Family) -> Result<Vec<RuleEntry>, ParseError> {
    parse_ip_rules_with(text, family, &TableNames::default())
}

/// [`parse_ip_rules`] with extra table names.
pub fn parse_ip_rules_with(
    text: &str,
    family: Family,
    tables: &TableNames,
) -> Result<Vec<RuleEntry>, ParseError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        rules.push(parse_rule_line(t, i + 1, family, tables)?);
    }
    // The kernel keeps rules sorted by priority; ties stay in printed order.
    rules.sort_by_key(|r| r.priority);
    Ok(rules)
}

fn parse_rule_line(
    t: &str,
    line: usize,
    family: Family,
    tables: &TableNames,
) -> Result<RuleEntry, ParseError> {
    let err = |message: String| ParseError { line, message };
    let Some((prio, rest)) = t.split_once(':') else {
        return Err(err(format!(
            "expected \"PRIORITY:\" at the start of the rule (as `ip rule` prints it), found \"{t}\""
        )));
    };
    let priority: u32 = prio.trim().parse().map_err(|_| {
        err(format!(
            "\"{}\" is not a rule priority (expected \"PRIORITY:\" at the start, as `ip rule` prints it)",
            prio.trim()
        ))
    })?;
    let lines = [(line, rest)];
    let mut cur = Cursor::new(&lines);
    // Start from the plain rule and let the words fill in the rest; the action is
    // decided after the loop.
    let mut rule = RuleEntry {
        action: RuleAction::Nop,
        line,
        text: t.to_string(),
        ..RuleEntry::lookup(family, priority, 0)
    };
    let mut action = None;
    while let Some(w) = cur.next() {
        match w {
            "not" => rule.not = true,
            "from" | "to" => {
                let v = cur.value(w)?;
                let net = if v == "all" {
                    None
                } else {
                    Some(parse_prefix(v, family).map_err(|m| cur.err(m))?)
                };
                if w == "from" {
                    rule.from = net;
                } else {
                    rule.to = net;
                }
            }
            "tos" | "dsfield" => {
                let v = cur.value(w)?;
                rule.tos = Some(
                    names::dsfield(v)
                        .ok_or_else(|| cur.err(format!("\"{v}\" is not a TOS value")))?,
                );
            }
            "fwmark" => {
                let v = cur.value(w)?;
                rule.fwmark = Some(
                    parse_fwmark(v)
                        .ok_or_else(|| cur.err(format!("\"{v}\" is not a fwmark[/mask]")))?,
                );
            }
            "iif" | "dev" | "oif" => {
                let v = cur.value(w)?.to_string();
                let detached = cur.peek() == Some("[detached]");
                if detached {
                    cur.next();
                }
                if w == "oif" {
                    rule.oif = Some(v);
                    rule.oif_detached = detached;
                } else {
                    rule.iif = Some(v);
                    rule.iif_detached = detached;
                }
            }
            "lookup" | "table" => {
                let v = cur.value(w)?;
                action = Some(if v == "[l3mdev-table]" {
                    rule.unmodeled.push("l3mdev".into());
                    RuleAction::L3mdevTable
                } else {
                    RuleAction::Lookup(table_id(&cur, v, tables)?)
                });
            }
            "suppress_prefixlength" => {
                let v = cur.value(w)?;
                let n: i64 = v.parse().map_err(|_| {
                    cur.err(format!("\"{v}\" is not a suppress_prefixlength value"))
                })?;
                rule.suppress_prefixlength = match n {
                    -1 => None,
                    0..=128 => u8::try_from(n).ok(),
                    _ => {
                        return Err(cur.err(format!("suppress_prefixlength {n} is outside -1..128")))
                    }
                };
            }
            "suppress_ifgroup" => {
                let v = cur.value(w)?;
                rule.suppress_ifgroup = Some(
                    names::group(v)
                        .ok_or_else(|| cur.err(format!("\"{v}\" is not an interface group")))?,
                );
            }
            "goto" => {
                let v = cur.value(w)?;
                if v == "none" {
                    action = Some(RuleAction::Goto(0));
                    rule.unresolved = true;
                } else {
                    let n = names::parse_u32(v)
                        .ok_or_else(|| cur.err(format!("\"{v}\" is not a goto priority")))?;
                    action = Some(RuleAction::Goto(n));
                }
            }
            "[unresolved]" => rule.unresolved = true,
            "[detached]" => {}
            "nop" => action = Some(RuleAction::Nop),
            "blackhole" => action = Some(RuleAction::Blackhole),
            "unreachable" => action = Some(RuleAction::Unreachable),
            "prohibit" => action = Some(RuleAction::Prohibit),
            "proto" | "protocol" => rule.protocol = Some(cur.value(w)?.to_string()),
            "ipproto" => {
                let v = cur.value(w)?;
                rule.ipproto = Some(
                    IpProto::parse(v)
                        .map(|p| p.0)
                        .ok_or_else(|| cur.err(format!("\"{v}\" is not an IP protocol")))?,
                );
            }
            "sport" | "dport" => {
                let v = cur.value(w)?;
                match parse_port_range(v) {
                    Some(r) if w == "sport" => rule.sport = Some(r),
                    Some(r) => rule.dport = Some(r),
                    // Newer kernels print port masks (`sport 0x100/0xff00`).
                    None => rule.unmodeled.push(format!("{w} {v}")),
                }
            }
            "uidrange" | "tun_id" | "dscp" | "flowlabel" | "map-to" => {
                let v = cur.value(w)?;
                rule.unmodeled.push(format!("{w} {v}"));
            }
            "l3mdev" => rule.unmodeled.push("l3mdev".into()),
            // Realms tag routes for accounting; they never change the decision.
            "realms" | "realm" => {
                cur.value(w)?;
            }
            "nat" | "unicast" | "local" | "broadcast" | "anycast" | "multicast" | "throw" => {
                // Obsolete/unused rule types: the kernel's rule code treats them as errors.
                rule.unmodeled.push(format!("action {w}"));
            }
            _ => {} // unknown flag: skipped
        }
    }
    rule.action = match action {
        Some(a) => a,
        None if !rule.unmodeled.is_empty() => RuleAction::Nop,
        None => {
            return Err(err(format!(
            "rule has no action (lookup, goto, nop, blackhole, unreachable or prohibit): \"{t}\""
        )))
        }
    };
    Ok(rule)
}

const ROUTE_TYPES: &[(&str, RouteKind)] = &[
    ("unicast", RouteKind::Unicast),
    ("local", RouteKind::Local),
    ("broadcast", RouteKind::Broadcast),
    ("anycast", RouteKind::Anycast),
    ("multicast", RouteKind::Multicast),
    ("blackhole", RouteKind::Blackhole),
    ("unreachable", RouteKind::Unreachable),
    ("prohibit", RouteKind::Prohibit),
    ("throw", RouteKind::Throw),
    ("nat", RouteKind::Other),
    ("xresolve", RouteKind::Other),
    ("unspec", RouteKind::Other),
];

/// Route attributes that take one value and do not change a decision.
const ONE_VALUE: &[&str] = &[
    "expires",
    "error",
    "mark",
    "realm",
    "realms",
    "uid",
    "iif",
    "ttl-propagate",
    "oif",
    "users",
    "age",
    "used",
    "ipid",
];

/// Route metrics (`mtu [lock] N` …).
const METRICS: &[&str] = &[
    "mtu",
    "advmss",
    "rtt",
    "rttvar",
    "window",
    "cwnd",
    "ssthresh",
    "reordering",
    "hoplimit",
    "initcwnd",
    "initrwnd",
    "congctl",
    "rto_min",
    "quickack",
    "features",
    "fastopen_no_cookie",
    "tcp_usec_ts",
];

/// Words that start a new attribute: where an `encap …` description ends.
fn is_route_keyword(w: &str) -> bool {
    matches!(
        w,
        "via"
            | "dev"
            | "table"
            | "proto"
            | "scope"
            | "src"
            | "metric"
            | "pref"
            | "nexthop"
            | "weight"
            | "nhid"
            | "dead"
            | "linkdown"
            | "onlink"
    ) || ONE_VALUE.contains(&w)
        || METRICS.contains(&w)
}

/// Parses the routes of `family` in `ip route show table all` or `ip -6 route show
/// table all` output. Routes without `table` are in main. Multipath routes (a line
/// followed by `nexthop …` lines) are one entry.
///
/// Two iproute2 quirks make this lenient: `ip route show table all` without `-4` prints
/// *both* families (with `table all` iproute2 leaves the family unspecified), so entries
/// of the other family are skipped; and `ip -6 route show table all` (iproute2 6.1 on
/// kernel 6.x) prints the whole dump twice, so repeated identical entries are dropped.
pub fn parse_ip_routes(text: &str, family: Family) -> Result<Vec<RouteEntry>, ParseError> {
    parse_ip_routes_with(text, family, &TableNames::default())
}

/// [`parse_ip_routes`] with extra table names.
pub fn parse_ip_routes_with(
    text: &str,
    family: Family,
    tables: &TableNames,
) -> Result<Vec<RouteEntry>, ParseError> {
    let mut groups: Vec<Vec<(usize, &str)>> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() {
            continue;
        }
        let first = t.split_whitespace().next().unwrap_or("");
        if first == "nexthop" {
            match groups.last_mut() {
                Some(g) => g.push((i + 1, t)),
                None => {
                    return Err(ParseError {
                        line: i + 1,
                        message: "a \"nexthop\" line must follow its route's line".into(),
                    })
                }
            }
        } else {
            groups.push(vec![(i + 1, t)]);
        }
    }
    let mut seen = BTreeSet::new();
    let mut routes = Vec::new();
    for g in groups {
        if entry_family(&g).is_some_and(|f| f != family) {
            continue;
        }
        let route = parse_route(&g, family, tables)?;
        if seen.insert(route.text.clone()) {
            routes.push(route);
        }
    }
    Ok(routes)
}

/// The family of one route entry, from its destination, or for `default` from its
/// gateway/source addresses or the IPv6-only `pref` attribute. `None`: undecidable (then
/// it is taken to be of the requested family).
fn entry_family(lines: &[(usize, &str)]) -> Option<Family> {
    let words: Vec<&str> = lines
        .iter()
        .flat_map(|(_, l)| l.split_whitespace())
        .collect();
    let mut i = 0;
    if words
        .first()
        .is_some_and(|w| ROUTE_TYPES.iter().any(|(n, _)| n == w))
    {
        i = 1;
    }
    let addr_family = |w: &str| {
        w.split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .map(|a| Family::of(&a))
    };
    if let Some(f) = words.get(i).and_then(|w| addr_family(w)) {
        return Some(f);
    }
    if words.contains(&"pref") {
        return Some(Family::Inet6);
    }
    words
        .windows(2)
        .filter(|w| matches!(w[0], "via" | "src" | "from"))
        .find_map(|w| addr_family(w[1]))
}

fn parse_route(
    lines: &[(usize, &str)],
    family: Family,
    tables: &TableNames,
) -> Result<RouteEntry, ParseError> {
    let mut cur = Cursor::new(lines);
    let text = lines
        .iter()
        .enumerate()
        .map(|(i, (_, l))| {
            if i == 0 {
                l.to_string()
            } else {
                format!("\t{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut kind = RouteKind::Unicast;
    let mut first = cur.value("route")?;
    if let Some((_, k)) = ROUTE_TYPES.iter().find(|(n, _)| *n == first) {
        kind = *k;
        first = cur.value(first)?;
    }
    let dst = parse_prefix(first, family).map_err(|m| cur.err(m))?;
    let mut route = RouteEntry {
        family,
        table: TABLE_MAIN,
        kind,
        dst,
        src: None,
        tos: 0,
        metric: 0,
        nexthops: Vec::new(),
        prefsrc: None,
        scope: None,
        protocol: None,
        pref: None,
        nhid: None,
        line: lines.first().map_or(0, |(n, _)| *n),
        text,
    };
    let mut metric = None;
    // The route line's own next hop, and the `nexthop` ones of a multipath route.
    let mut single = NextHop {
        via: None,
        dev: None,
        weight: 1,
        dead: false,
        linkdown: false,
        onlink: false,
    };
    let mut multi: Vec<NextHop> = Vec::new();
    while let Some(w) = cur.next() {
        let nh = multi.last_mut().unwrap_or(&mut single);
        match w {
            "nexthop" => multi.push(NextHop {
                via: None,
                dev: None,
                weight: 1,
                dead: false,
                linkdown: false,
                onlink: false,
            }),
            "via" => {
                let mut v = cur.value(w)?;
                // `via inet6 fe80::1` (IPv4 route over an IPv6 next hop).
                if v == "inet" || v == "inet6" {
                    v = cur.value(w)?;
                }
                let addr: IpAddr = v
                    .parse()
                    .map_err(|_| cur.err(format!("\"{v}\" is not a gateway address")))?;
                nh.via = Some(addr);
            }
            "dev" => nh.dev = Some(cur.value(w)?.to_string()),
            "weight" => {
                let v = cur.value(w)?;
                nh.weight = v
                    .parse()
                    .map_err(|_| cur.err(format!("\"{v}\" is not a weight")))?;
            }
            "dead" => nh.dead = true,
            "linkdown" => nh.linkdown = true,
            "onlink" => nh.onlink = true,
            "from" => {
                let v = cur.value(w)?;
                route.src = Some(parse_prefix(v, family).map_err(|m| cur.err(m))?);
            }
            "tos" | "dsfield" => {
                let v = cur.value(w)?;
                route.tos = names::dsfield(v)
                    .ok_or_else(|| cur.err(format!("\"{v}\" is not a TOS value")))?;
            }
            "table" => {
                let v = cur.value(w)?;
                route.table = table_id(&cur, v, tables)?;
            }
            "proto" | "protocol" => route.protocol = Some(cur.value(w)?.to_string()),
            "scope" => route.scope = Some(cur.value(w)?.to_string()),
            "src" => {
                let v = cur.value(w)?;
                route.prefsrc = Some(
                    v.parse()
                        .map_err(|_| cur.err(format!("\"{v}\" is not a source address")))?,
                );
            }
            "metric" | "priority" | "preference" => {
                let v = cur.value(w)?;
                metric = Some(
                    v.parse()
                        .map_err(|_| cur.err(format!("\"{v}\" is not a metric")))?,
                );
            }
            "pref" => route.pref = Some(cur.value(w)?.to_string()),
            "nhid" => {
                let v = cur.value(w)?;
                route.nhid = names::parse_u32(v);
            }
            "encap" => {
                while cur.peek().is_some_and(|p| !is_route_keyword(p)) {
                    cur.next();
                }
            }
            "as" => {
                if cur.peek() == Some("to") {
                    cur.next();
                }
                cur.value(w)?;
            }
            m if METRICS.contains(&m) => {
                if cur.peek() == Some("lock") {
                    cur.next();
                }
                cur.value(m)?;
            }
            o if ONE_VALUE.contains(&o) => {
                cur.value(o)?;
            }
            _ => {} // flags such as pervasive, offload, rt_offload, rt_trap: skipped
        }
    }
    route.metric = metric.unwrap_or(match family {
        Family::Inet4 => 0,
        Family::Inet6 => 1024,
    });
    route.nexthops = if !multi.is_empty() {
        multi
    } else if single.via.is_some() || single.dev.is_some() {
        vec![single]
    } else {
        Vec::new()
    };
    Ok(route)
}

/// Parses `ip -j addr` (also several JSON arrays in a row) into links by name.
pub fn parse_ip_addr_json(text: &str) -> Result<BTreeMap<String, LinkState>, ParseError> {
    let mut links = BTreeMap::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for value in stream {
        let value = value.map_err(|e| ParseError {
            line: e.line().max(1),
            message: format!("`ip -j addr` output is not JSON: {e}"),
        })?;
        let items: Vec<&Value> = match &value {
            Value::Array(a) => a.iter().collect(),
            v @ Value::Object(_) => vec![v],
            _ => Vec::new(),
        };
        for l in items {
            let Some(name) = l.get("ifname").and_then(Value::as_str) else {
                continue;
            };
            let flags: Vec<&str> = l
                .get("flags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let group = match l.get("group") {
                Some(Value::String(s)) => names::group(s).unwrap_or(0),
                Some(Value::Number(n)) => {
                    n.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
                }
                _ => 0,
            };
            let mut addrs = Vec::new();
            for a in l
                .get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let local = a.get("local").and_then(Value::as_str);
                let len = a.get("prefixlen").and_then(Value::as_u64);
                if let (Some(local), Some(len)) = (local, len) {
                    let net = local
                        .parse::<IpAddr>()
                        .ok()
                        .and_then(|ip| IpNet::new(ip, u8::try_from(len).ok()?).ok());
                    if let Some(net) = net {
                        addrs.push(net);
                    }
                }
            }
            links.insert(
                name.to_string(),
                LinkState {
                    index: l
                        .get("ifindex")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    up: flags.contains(&"UP"),
                    carrier: flags.contains(&"LOWER_UP"),
                    group,
                    addrs,
                },
            );
        }
    }
    Ok(links)
}

/// Reads `key = value` (or `key=value`) lines as `sysctl -a` prints them. Interface
/// names with dots are printed with `/` by sysctl (`net.ipv4.conf.eth0/100.rp_filter`);
/// keys are stored with the real name (`net.ipv4.conf.eth0.100.rp_filter`).
pub fn parse_sysctls(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let k = k.trim();
            (!k.is_empty() && !k.starts_with('#'))
                .then(|| (k.replace('/', "."), v.trim().to_string()))
        })
        .collect()
}

/// The plain outputs a [`RoutingState`] is built from (any may be empty), e.g. the files
/// of `symroute snapshot DIR`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateTexts<'a> {
    /// `ip rule`
    pub ip_rule: &'a str,
    /// `ip -6 rule`
    pub ip6_rule: &'a str,
    /// `ip route show table all`
    pub ip_route: &'a str,
    /// `ip -6 route show table all`
    pub ip6_route: &'a str,
    /// `ip -j addr`
    pub ip_addr_json: &'a str,
    /// `sysctl -a` lines (at least the `net.ipv4.conf.*`, `net.ipv6.conf.*` keys)
    pub sysctl: &'a str,
    /// `/etc/iproute2/rt_tables` (only needed when the outputs use custom table names)
    pub rt_tables: &'a str,
}

impl RoutingState {
    /// Parses all inputs; the error names the input and line. An empty rule output
    /// stands for the kernel's default rules.
    pub fn from_texts<'a>(t: &StateTexts<'a>) -> Result<RoutingState, StateError> {
        let tables = TableNames::parse(t.rt_tables);
        let named = |input: &str| {
            let input = input.to_string();
            move |error| StateError { input, error }
        };
        // A missing rule output means the kernel's defaults (no kernel prints nothing).
        let rule_text = |text: &'a str, family: Family| -> &'a str {
            match (text.trim().is_empty(), family) {
                (false, _) => text,
                (true, Family::Inet4) => {
                    "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n"
                }
                (true, Family::Inet6) => "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n",
            }
        };
        let mut rules =
            parse_ip_rules_with(rule_text(t.ip_rule, Family::Inet4), Family::Inet4, &tables)
                .map_err(named("ip rule"))?;
        rules.extend(
            parse_ip_rules_with(rule_text(t.ip6_rule, Family::Inet6), Family::Inet6, &tables)
                .map_err(named("ip -6 rule"))?,
        );
        let mut routes = parse_ip_routes_with(t.ip_route, Family::Inet4, &tables)
            .map_err(named("ip route show table all"))?;
        // `ip route show table all` also lists IPv6 routes: use them when `ip -6 …` is
        // missing.
        let (v6_text, v6_name) = if t.ip6_route.trim().is_empty() {
            (t.ip_route, "ip route show table all")
        } else {
            (t.ip6_route, "ip -6 route show table all")
        };
        routes
            .extend(parse_ip_routes_with(v6_text, Family::Inet6, &tables).map_err(named(v6_name))?);
        let links = parse_ip_addr_json(t.ip_addr_json).map_err(named("ip -j addr"))?;
        let mut state = RoutingState {
            rules,
            routes,
            links,
            sysctls: parse_sysctls(t.sysctl),
            table_names: tables,
        };
        state.sort_rules();
        Ok(state)
    }
}
