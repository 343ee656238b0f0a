//! Reading `symroute.toml`: parse with spans (`raw`), then check meaning and build the
//! typed `Model`. Every problem is reported as `FILE:LINE:COL: what, and what is expected`.

pub mod diag;
pub mod raw;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use diag::Locator;
pub use diag::{ConfigError, Diagnostic};
use raw::{RawConfig, RawItems, RawMatch, RawRouteVia, Sp};

use crate::model::{
    Action, CgroupPath, Divert, Gateway, GatewayId, GatewayIdx, IdFrom, IfName, MacAddr, MarkMask,
    Model, Name, PortRange, Prefixes, Priority, Protocol, Route, RouteMode, Selector, Settings,
    TableId, Weight,
};
use crate::plan::alloc;

/// What only the host can tell about the names a config uses: which uid a user name
/// stands for. The binary asks the system's user database (`symroute::config_file`);
/// this crate does no I/O, so it is handed in.
pub trait Names {
    fn uid(&self, user: &str) -> Option<u32>;
}

/// No user database to ask: every user name is unknown (numeric uids still work).
pub struct NoNames;

impl Names for NoNames {
    fn uid(&self, _: &str) -> Option<u32> {
        None
    }
}

/// A fixed table of user names (tests, and configs checked for another host).
impl Names for std::collections::BTreeMap<String, u32> {
    fn uid(&self, user: &str) -> Option<u32> {
        self.get(user).copied()
    }
}

/// Where symroute looks when neither `-c` nor `SYMROUTE_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/symroute/symroute.toml";

/// The most of a config file symroute reads: far above any real one (10,000 selectors
/// take about 300 KiB). The reading itself, with this bound, is the binary's
/// (`symroute::config_file`): this crate does no I/O.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A config file's bytes as text: UTF-8, or the first byte that is not, located as
/// FILE:LINE:COL.
pub fn decode(bytes: Vec<u8>, origin: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let good = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
        // The first bad byte sits just after the valid text before it.
        let (line, col) = diag::line_col(good, good.len());
        ConfigError::Invalid(vec![Diagnostic {
            file: origin.to_string(),
            line,
            col,
            message: format!(
                "not UTF-8 text: byte 0x{:02x} cannot start or continue a character here (a config is a UTF-8 TOML file; is this the right file?)",
                bytes[at]
            ),
        }])
    })
}

/// Validate config text; `origin` names the file in messages. User names are unknown
/// (see [`parse_str_with`]).
pub fn parse_str(text: &str, origin: &str) -> Result<Model, ConfigError> {
    parse_str_with(text, origin, &NoNames)
}

/// [`parse_str`], resolving user names (`match.user`) with `names`: an unknown one is an
/// error at its place in the file.
pub fn parse_str_with(text: &str, origin: &str, names: &dyn Names) -> Result<Model, ConfigError> {
    let mut loc = Locator::new(origin, text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().replace('\n', " ");
            loc.error(span, explain_serde(&msg));
            return Err(ConfigError::Invalid(loc.diags));
        }
    };
    let mut model = validate(raw, &mut loc, names);
    if loc.diags.is_empty() {
        model.source = text.to_string();
        Ok(model)
    } else {
        Err(ConfigError::Invalid(loc.diags))
    }
}

/// serde's wording names Rust types; say it in the config's terms instead.
fn explain_serde(msg: &str) -> String {
    let msg = msg
        .replace(
            "invalid type: integer",
            "expected a string here, found an integer",
        )
        .replace("invalid type: string", "found a string")
        .replace("expected i64", "expected a whole number");
    if msg.starts_with("unknown field") {
        format!("{msg} (see examples/ and the README for the keys symroute knows)")
    } else {
        msg
    }
}

fn validate(raw: RawConfig, loc: &mut Locator, users: &dyn Names) -> Model {
    let settings = raw
        .settings
        .as_ref()
        .map(|s| validate_settings(s, loc))
        .unwrap_or_default();

    let mut names = BTreeSet::new();
    let mut gateways = Vec::new();
    let mut ids = Ids::new(&raw.gateway, settings.mark_mask);
    for g in &raw.gateway {
        let g = g.get_ref();
        let name = checked_name(&g.name, "gateway", &mut names, loc);
        let id = name
            .as_ref()
            .and_then(|n| ids.take(n, g, settings.mark_mask, loc));
        let interface = match IfName::new(g.interface.get_ref()) {
            Ok(i) => Some(i),
            Err(e) => {
                loc.error(g.interface.span(), format!("gateway.interface: {e}"));
                None
            }
        };
        let via = g.via.as_ref().and_then(|v| {
            next_hop::<Ipv4Addr>(v, "gateway.via", "an IPv4 address like 203.0.113.1", loc)
        });
        let via6 = g.via6.as_ref().and_then(|v| {
            next_hop::<Ipv6Addr>(v, "gateway.via6", "an IPv6 address like 2001:db8:1::1", loc)
        });
        let check = g.check.as_ref().map(|c| validate_check(c.get_ref(), loc));
        if let (Some(name), Some(interface), Some((id, id_from))) = (name, interface, id) {
            gateways.push(Gateway {
                name,
                id,
                id_from,
                interface,
                via,
                via6,
                check,
            });
        }
    }
    // Names refer by index: only resolve references if every gateway was valid.
    let gateways_ok = gateways.len() == raw.gateway.len();

    let mut policy_names = BTreeSet::new();
    let mut policies = Vec::new();
    for p in &raw.policy {
        let span = p.span();
        let p = p.get_ref();
        let name = checked_name(&p.name, "policy", &mut policy_names, loc);
        let resolve = |name: &str, span: std::ops::Range<usize>, key: &str, loc: &mut Locator| {
            let found = gateways.iter().position(|g| g.name.as_str() == name);
            if found.is_none() && gateways_ok {
                let known: Vec<&str> = gateways.iter().map(|g| g.name.as_str()).collect();
                loc.error(
                    span,
                    format!(
                        "policy.{key}: no gateway named \"{name}\" (defined gateways: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            found.map(GatewayIdx)
        };
        let action = match (&p.reply_via, &p.route_via) {
            (Some(r), None) => {
                if let Some(s) = &p.sticky {
                    loc.error(s.span(), "policy.sticky: only route_via policies choose a gateway; reply_via always answers by the path a connection arrived on");
                }
                resolve(r.get_ref(), r.span(), "reply_via", loc).map(Action::ReplyVia)
            }
            (None, Some(r)) => {
                validate_route(r, p.sticky.as_ref(), loc, resolve).map(Action::RouteVia)
            }
            (Some(_), Some(r)) => {
                loc.error(
                    r.span(),
                    "a policy has exactly one of reply_via / route_via, this one has both",
                );
                None
            }
            (None, None) => {
                loc.error(span.clone(), "a policy needs reply_via = \"GATEWAY\" (answer arriving connections) or route_via = \"GATEWAY\" (send new connections)");
                None
            }
        };
        let selector = match &p.matches {
            Some(m) => validate_match(m.get_ref(), loc, users),
            None => Selector::default(),
        };
        // User and cgroup are the sending socket's: only the host's own new connections
        // have them, and only route_via decides those (replies follow their connection).
        if let Some((key, span)) = socket_key(p.matches.as_ref()) {
            if matches!(action, Some(Action::ReplyVia(_))) {
                loc.error(
                    span,
                    format!("match.{key}: a reply_via policy answers connections that arrive, which have no sending user or cgroup; use route_via to send this host's own new connections via a gateway"),
                );
            }
        }
        // An empty selector on reply_via would claim every arriving connection, the
        // LAN's own included: almost surely a mistake, so refuse it.
        if matches!(action, Some(Action::ReplyVia(_))) && selector == Selector::default() {
            loc.error(
                span.clone(),
                "a reply_via policy needs a [policy.match] that says which arriving connections it answers (e.g. in_interface = \"eth2\" or source_mac = [...])",
            );
        }
        if let (Some(name), Some(action)) = (name, action) {
            policies.push(crate::model::Policy {
                name,
                action,
                selector,
            });
        }
    }

    let mut divert_names = BTreeSet::new();
    let mut diverts = Vec::new();
    for d in &raw.divert {
        let d = d.get_ref();
        let name = checked_name(&d.name, "divert", &mut divert_names, loc);
        let protocol = match &d.protocol {
            Some(v) => list_of(v, "divert.protocol", "tcp or udp", loc, Protocol::parse),
            None => vec![Protocol::Tcp, Protocol::Udp],
        };
        for p in &protocol {
            if !matches!(p, Protocol::Tcp | Protocol::Udp) {
                if let Some(v) = &d.protocol {
                    loc.error(v.span(), format!("divert.protocol: transparent sockets exist only for tcp and udp, not {p}"));
                }
            }
        }
        if let Some(name) = name {
            diverts.push(Divert { name, protocol });
        }
    }

    check_table_range(&settings, &raw, loc);
    Model {
        settings,
        gateways,
        policies,
        diverts,
        source: String::new(),
    }
}

/// The ids given so far: id → (gateway name, where it was written or named, from where);
/// and every id the file asks for, so a suggested free id is free in the whole file.
struct Ids {
    seen: std::collections::BTreeMap<u32, (String, usize, IdFrom)>,
    wanted: BTreeSet<u32>,
}

impl Ids {
    fn new(gateways: &[Sp<raw::RawGateway>], mask: MarkMask) -> Self {
        let wanted = gateways
            .iter()
            .filter_map(|g| {
                let g = g.get_ref();
                match &g.id {
                    Some(n) => u32::try_from(*n.get_ref()).ok(),
                    None => Name::new(g.name.get_ref())
                        .ok()
                        .and_then(|n| alloc::default_id(&n, mask))
                        .map(GatewayId::get),
                }
            })
            .collect();
        Ids {
            seen: Default::default(),
            wanted,
        }
    }

    /// The gateway's id (`id = N`, or derived from its name), checked against the mask's
    /// range and the ids taken by the gateways before it.
    fn take(
        &mut self,
        name: &Name,
        g: &raw::RawGateway,
        mask: MarkMask,
        loc: &mut Locator,
    ) -> Option<(GatewayId, IdFrom)> {
        let max = alloc::id_max(mask);
        let (id, from, span) = match &g.id {
            Some(n) => {
                let id = u32::try_from(*n.get_ref())
                    .ok()
                    .and_then(|v| GatewayId::new(v, max));
                let Some(id) = id else {
                    loc.error(
                        n.span(),
                        if max == 0 {
                            format!("gateway.id: mark_mask {mask} holds no gateway (each needs two values, and the top one is the divert's); widen the mask")
                        } else {
                            format!(
                                "gateway.id: {} is not a gateway id mark_mask {mask} holds; expected 1 to {max}",
                                n.get_ref()
                            )
                        },
                    );
                    return None;
                };
                (id, IdFrom::Config, n.span())
            }
            None => {
                let Some(id) = alloc::default_id(name, mask) else {
                    loc.error(
                        g.name.span(),
                        format!("gateway \"{name}\": mark_mask {mask} holds no gateway (each needs two values, and the top one is the divert's); widen the mask"),
                    );
                    return None;
                };
                (id, IdFrom::Name, g.name.span())
            }
        };
        if let Some((other, at, other_from)) = self.seen.get(&id.get()) {
            let line = loc.line(*at);
            let free = self.free(id.get(), max);
            let msg = match (from, *other_from) {
                (IdFrom::Name, IdFrom::Name) => format!(
                    "gateway.name: \"{name}\" and \"{other}\" (line {line}) both take id {id} from their names; give one of them an id of its own, e.g. `id = {free}` on \"{name}\" (ids not taken: {}). A gateway keeps its marks and table when it is given the id it has now (`id = {id}` on \"{other}\")",
                    self.free_list(id.get(), max)
                ),
                (IdFrom::Name, IdFrom::Config) => format!(
                    "gateway.name: \"{name}\" takes id {id} from its name, but \"{other}\" (line {line}) has `id = {id}`; give \"{name}\" an id of its own, e.g. `id = {free}` (ids not taken: {})",
                    self.free_list(id.get(), max)
                ),
                (IdFrom::Config, IdFrom::Name) => format!(
                    "gateway.id: {id} is the id \"{other}\" (line {line}) takes from its name; pick another, e.g. {free} (ids not taken: {}), or give \"{other}\" `id = {id}` and this gateway another",
                    self.free_list(id.get(), max)
                ),
                (IdFrom::Config, IdFrom::Config) => format!(
                    "gateway.id: {id} is already the id of \"{other}\" (line {line}); ids are unique, e.g. {free} is not taken (ids not taken: {})",
                    self.free_list(id.get(), max)
                ),
            };
            loc.error(span, msg);
            return None;
        }
        self.seen
            .insert(id.get(), (name.to_string(), span.start, from));
        Some((id, from))
    }

    /// The first id after `near` (wrapping) that nobody has taken so far.
    fn free(&self, near: u32, max: u32) -> u32 {
        self.free_ids(near, max).next().unwrap_or(near)
    }

    fn free_ids(&self, near: u32, max: u32) -> impl Iterator<Item = u32> + '_ {
        (1..max)
            .map(move |d| (near - 1 + d) % max + 1)
            .filter(|i| !self.wanted.contains(i))
    }

    fn free_list(&self, near: u32, max: u32) -> String {
        let few: Vec<String> = self
            .free_ids(near, max)
            .take(3)
            .map(|i| i.to_string())
            .collect();
        if few.is_empty() {
            "none; widen the mask".into()
        } else {
            format!("{}…", few.join(", "))
        }
    }
}

/// Every table the settings may allocate (`first_table ..= first_table + id_max`) must be
/// clear of the kernel's 253-255 and below 2^32.
fn check_table_range(settings: &Settings, raw: &RawConfig, loc: &mut Locator) {
    let span = raw
        .settings
        .as_ref()
        .and_then(|s| {
            let s = s.get_ref();
            s.first_table
                .as_ref()
                .map(|t| t.span())
                .or_else(|| s.mark_mask.as_ref().map(|m| m.span()))
        })
        .unwrap_or(0..0);
    let first = settings.first_table.id();
    let max = alloc::id_max(settings.mark_mask);
    match alloc::last_table(settings.first_table, settings.mark_mask) {
        None => loc.error(
            span,
            format!("settings.first_table: with mark_mask {}, gateway ids run to {max}, so tables run to {first} + {max}, past 2^32; pick a smaller first_table (default 42000)", settings.mark_mask),
        ),
        Some(last) if first <= 255 && last >= 253 => loc.error(
            span,
            format!("settings.first_table: the tables symroute allocates from here ({first} to {last}) would cross the kernel's tables 253-255; pick a number above 255 (default 42000)"),
        ),
        Some(_) => {}
    }
}

/// `route_via` (one name, a failover list or a table of weights) and `sticky`.
fn validate_route(
    r: &Sp<RawRouteVia>,
    sticky: Option<&Sp<String>>,
    loc: &mut Locator,
    resolve: impl Fn(&str, std::ops::Range<usize>, &str, &mut Locator) -> Option<GatewayIdx>,
) -> Option<Route> {
    const KEY: &str = "route_via";
    let mut ok = true;
    let mut seen = BTreeSet::new();
    let mut once = |name: &str, span: std::ops::Range<usize>, what: &str, loc: &mut Locator| {
        if !seen.insert(name.to_string()) {
            loc.error(
                span.clone(),
                format!(
                    "policy.route_via: gateway \"{name}\" is {what} twice; name each gateway once"
                ),
            );
            return None;
        }
        resolve(name, span, KEY, loc)
    };
    let mode = match r.get_ref() {
        RawRouteVia::One(name) => RouteMode::Failover(vec![resolve(name, r.span(), KEY, loc)?]),
        RawRouteVia::List(items) => {
            if items.is_empty() {
                loc.error(r.span(), "policy.route_via: the list is empty; name at least one gateway (the first usable one is taken)");
                return None;
            }
            let mut list = Vec::new();
            for item in items {
                match item.get_ref() {
                    toml::Value::String(name) => match once(name, item.span(), "listed", loc) {
                        Some(g) => list.push(g),
                        None => ok = false,
                    },
                    other => {
                        loc.error(
                            item.span(),
                            format!(
                                "policy.route_via: expected a gateway name, found {}",
                                other.type_str()
                            ),
                        );
                        ok = false;
                    }
                }
            }
            RouteMode::Failover(list)
        }
        RawRouteVia::Weights(items) => {
            if items.is_empty() {
                loc.error(r.span(), "policy.route_via: the table is empty; give each gateway a weight, e.g. { isp1 = 3, isp2 = 1 }");
                return None;
            }
            let mut list = Vec::new();
            for (name, w) in items {
                let g = once(name.get_ref(), name.span(), "weighted", loc);
                let weight = match w.get_ref() {
                    toml::Value::Integer(i) => Weight::new(*i),
                    _ => None,
                };
                if weight.is_none() {
                    loc.error(w.span(), format!("policy.route_via: the weight of \"{}\" must be a whole number from 1 to {}", name.get_ref(), Weight::MAX));
                }
                match (g, weight) {
                    (Some(g), Some(w)) => list.push((g, w)),
                    _ => ok = false,
                }
            }
            let total: u32 = list.iter().map(|(_, w)| w.get()).sum();
            if total > 10_000 {
                loc.error(r.span(), format!("policy.route_via: the weights add up to {total}; keep the sum at most 10000"));
                ok = false;
            }
            RouteMode::Share(list)
        }
        RawRouteVia::Other(found) => {
            loc.error(r.span(), format!("policy.route_via: expected a gateway name, a failover list like [\"isp1\", \"isp2\"] or weights like {{ isp1 = 3, isp2 = 1 }}, found {found}"));
            return None;
        }
    };
    let several = match &mode {
        RouteMode::Failover(l) => l.len() > 1,
        RouteMode::Share(l) => l.len() > 1,
    };
    let sticky = match sticky {
        None => None,
        Some(s) => match parse_duration(s.get_ref(), 24 * 3600) {
            Some(d) if !d.is_zero() && !several => {
                loc.error(s.span(), "policy.sticky: route_via names one gateway, so there is nothing to stick to; list several (a failover list or weights)");
                None
            }
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                loc.error(s.span(), format!("policy.sticky: \"{}\" is not a duration up to 24h (expected e.g. \"30s\", \"10m\" or \"1h\")", s.get_ref()));
                None
            }
        },
    };
    ok.then_some(Route { mode, sticky })
}

fn validate_settings(s: &Sp<raw::RawSettings>, loc: &mut Locator) -> Settings {
    let s = s.get_ref();
    let mut out = Settings::default();
    if let Some(m) = &s.mark_mask {
        let bits = match m.get_ref() {
            toml::Value::String(t) => parse_u32(t),
            toml::Value::Integer(i) => u32::try_from(*i).ok(),
            _ => None,
        };
        match bits.map(MarkMask::new) {
            Some(Ok(mask)) => out.mark_mask = mask,
            Some(Err(e)) => loc.error(m.span(), format!("settings.mark_mask: {e}")),
            None => loc.error(
                m.span(),
                "settings.mark_mask: expected a 32-bit mask like \"0xff000000\"",
            ),
        }
    }
    if let Some(t) = &s.first_table {
        // The range it starts is checked with the mask (`check_table_range`).
        match u32::try_from(*t.get_ref())
            .map_err(|_| "out of range".to_string())
            .and_then(TableId::new)
        {
            Ok(id) => out.first_table = id,
            Err(e) => loc.error(t.span(), format!("settings.first_table: {e}")),
        }
    }
    if let Some(p) = &s.first_priority {
        match u32::try_from(*p.get_ref()).map_err(|_| "out of range".to_string()).and_then(Priority::new) {
            Ok(pr) if pr.get() + 600 >= 32766 => loc.error(
                p.span(),
                "settings.first_priority: leave room for symroute's rules before main (32766); use at most 32000",
            ),
            Ok(pr) => out.first_priority = pr,
            Err(e) => loc.error(p.span(), format!("settings.first_priority: {e}")),
        }
    }
    if let Some(p) = &s.fallback_priority {
        match u32::try_from(*p.get_ref())
            .map_err(|_| "out of range".to_string())
            .and_then(Priority::after_main)
        {
            Ok(pr) => out.fallback_priority = pr,
            Err(e) => loc.error(p.span(), format!("settings.fallback_priority: {e}")),
        }
    }
    if let Some(v) = &s.on_change {
        out.on_change = validate_on_change(v, loc);
    }
    out.metrics = validate_metrics(s, loc);
    out.ha_pair = s.ha_pair.as_ref().is_some_and(|h| *h.get_ref());
    out
}

/// `on_change = "CMD"` or `["CMD", …]`: non-empty shell commands.
fn validate_on_change(v: &Sp<toml::Value>, loc: &mut Locator) -> Vec<String> {
    let items: Vec<&toml::Value> = match v.get_ref() {
        toml::Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            toml::Value::String(c) if !c.trim().is_empty() => out.push(c.clone()),
            toml::Value::String(_) => loc.error(
                v.span(),
                "settings.on_change: an empty command; expected a shell command like \"logger -t symroute $SYMROUTE_GATEWAY $SYMROUTE_NEW_STATE\" (or remove the key)",
            ),
            other => loc.error(
                v.span(),
                format!(
                    "settings.on_change: expected a shell command (a string) or a list of them, found {}",
                    other.type_str()
                ),
            ),
        }
    }
    out
}

/// The metrics port when `metrics` names only an address. Prometheus keeps a list of
/// exporters' default ports (its wiki's "Default port allocations"); its exporter range,
/// 9100-9999, is fully allocated (9469, symroute's first choice, is script_exporter's),
/// and its guidance for anything else is a port outside that range. 19469 is outside it,
/// below Linux's ephemeral ports (32768-60999), and not in /etc/services.
pub const DEFAULT_METRICS_PORT: u16 = 19469;

/// `metrics = "ADDR:PORT"` or `"ADDR"` (port `DEFAULT_METRICS_PORT`): loopback only,
/// unless `metrics_allow_remote = true` says that serving gateway names, policies and
/// traffic counts beyond this host is intended.
fn validate_metrics(s: &raw::RawSettings, loc: &mut Locator) -> Option<std::net::SocketAddr> {
    let m = s.metrics.as_ref()?;
    let text = m.get_ref().trim();
    let addr = text.parse::<std::net::SocketAddr>().ok().or_else(|| {
        let ip = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
        let ip: std::net::IpAddr = ip.unwrap_or(text).parse().ok()?;
        Some(std::net::SocketAddr::new(ip, DEFAULT_METRICS_PORT))
    });
    let Some(addr) = addr else {
        loc.error(
            m.span(),
            format!(
                "settings.metrics: \"{}\" is not an address (and port) to listen on (expected e.g. \"127.0.0.1\" for port {DEFAULT_METRICS_PORT}, \"127.0.0.1:{DEFAULT_METRICS_PORT}\" or \"[::1]:{DEFAULT_METRICS_PORT}\")",
                m.get_ref()
            ),
        );
        return None;
    };
    let remote_ok = s
        .metrics_allow_remote
        .as_ref()
        .is_some_and(|r| *r.get_ref());
    if !addr.ip().is_loopback() && !remote_ok {
        loc.error(
            m.span(),
            format!(
                "settings.metrics: {addr} is not a loopback address, so anyone who can reach it could read the gateways, policies and traffic counts; use \"127.0.0.1:{}\", or add metrics_allow_remote = true to serve beyond this host on purpose",
                addr.port()
            ),
        );
        return None;
    }
    Some(addr)
}

/// `via`/`via6`: an address, or `"auto"` (learned from the main table's default route).
fn next_hop<A: std::str::FromStr>(
    v: &Sp<String>,
    key: &str,
    what: &str,
    loc: &mut Locator,
) -> Option<crate::model::NextHop<A>> {
    if v.get_ref().trim() == "auto" {
        return Some(crate::model::NextHop::Auto);
    }
    parse_addr::<A>(
        v,
        key,
        &format!("{what}, or \"auto\" to use the default route a DHCP client or router advertisement installs on the interface"),
        loc,
    )
    .map(crate::model::NextHop::Fixed)
}

fn validate_check(c: &raw::RawCheck, loc: &mut Locator) -> crate::model::Check {
    use crate::model::ProbeTarget;
    let mut targets = Vec::new();
    if c.targets.get_ref().is_empty() {
        loc.error(
            c.targets.span(),
            "gateway.check.targets: the list is empty; list at least one address to ping or tcp:ADDR:PORT to connect to",
        );
    }
    for t in c.targets.get_ref() {
        let text = t.get_ref();
        let parsed = match text.strip_prefix("tcp:") {
            Some(rest) => rest
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(ProbeTarget::Tcp),
            None => text.parse::<IpAddr>().ok().map(ProbeTarget::Icmp),
        };
        match parsed {
            Some(p) => targets.push(p),
            None => loc.error(
                t.span(),
                format!("gateway.check.targets: \"{text}\" is not an address to ping (192.0.2.53, 2001:db8::53) or tcp:ADDR:PORT (tcp:198.51.100.80:443, tcp:[2001:db8::80]:443)"),
            ),
        }
    }
    use crate::model::Check;
    let duration = |v: &Option<Sp<String>>, key: &str, default, loc: &mut Locator| {
        let Some(v) = v else {
            return default;
        };
        match parse_duration(v.get_ref(), 3600) {
            Some(d) if !d.is_zero() => d,
            _ => {
                loc.error(
                    v.span(),
                    format!("gateway.check.{key}: \"{}\" is not a duration (expected e.g. \"250ms\" or \"2s\")", v.get_ref()),
                );
                default
            }
        }
    };
    let interval = duration(&c.interval, "interval", Check::DEFAULT_INTERVAL, loc);
    let timeout = duration(&c.timeout, "timeout", Check::DEFAULT_TIMEOUT, loc);
    // Bounds: every target is probed every interval, on a thread per gateway, and each
    // probe in flight holds a socket until its timeout.
    if c.targets.get_ref().len() > Check::MAX_TARGETS {
        loc.error(
            c.targets.span(),
            format!(
                "gateway.check.targets: {} targets; at most {} (each is probed every interval)",
                c.targets.get_ref().len(),
                Check::MAX_TARGETS
            ),
        );
    }
    if interval < Check::MIN_INTERVAL {
        if let Some(v) = &c.interval {
            loc.error(
                v.span(),
                format!(
                    "gateway.check.interval: \"{}\" is shorter than {} ms; probes more often than that are load, not information",
                    v.get_ref(),
                    Check::MIN_INTERVAL.as_millis()
                ),
            );
        }
    } else if let Some(t) = c
        .timeout
        .as_ref()
        .filter(|_| timeout > interval * Check::MAX_TIMEOUT_INTERVALS)
    {
        // (The default timeout is within bounds of any allowed interval.)
        loc.error(
            t.span(),
            format!(
                "gateway.check.timeout: \"{}\" is more than {} intervals ({} ms); a probe is lost long before that (or make the interval longer)",
                t.get_ref(),
                Check::MAX_TIMEOUT_INTERVALS,
                (interval * Check::MAX_TIMEOUT_INTERVALS).as_millis()
            ),
        );
    }
    let (mut down_lost, mut down_window) = Check::DEFAULT_DOWN;
    if let Some(d) = &c.down {
        let parsed = d.get_ref().split_once('/').and_then(|(a, b)| {
            Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
        });
        match parsed {
            Some((a, b)) if a >= 1 && a <= b && b <= 64 => (down_lost, down_window) = (a, b),
            _ => loc.error(
                d.span(),
                format!("gateway.check.down: \"{}\" is not LOST/WINDOW with 1 <= LOST <= WINDOW <= 64 (e.g. \"3/5\": down after 3 of the last 5 probes are lost)", d.get_ref()),
            ),
        }
    }
    let mut up = Check::DEFAULT_UP;
    if let Some(u) = &c.up {
        match u32::try_from(*u.get_ref()) {
            Ok(n) if (1..=1000).contains(&n) => up = n,
            _ => loc.error(
                u.span(),
                "gateway.check.up: expected the number of good probes in a row that bring a gateway back, 1 to 1000",
            ),
        }
    }
    Check {
        targets,
        interval,
        timeout,
        down_lost,
        down_window,
        up,
    }
}

/// `250ms`, `2s`, `1.5s`, `10m`, `1h`, at most `max_secs`.
fn parse_duration(t: &str, max_secs: u64) -> Option<std::time::Duration> {
    let t = t.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= max_secs * 1000)
            .map(std::time::Duration::from_millis);
    }
    let (num, unit) = [("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .into_iter()
        .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n, unit)))?;
    let s = num.trim().parse::<f64>().ok()? * unit;
    (s.is_finite() && (0.0..=max_secs as f64).contains(&s))
        .then(|| std::time::Duration::from_secs_f64(s))
}

fn parse_u32(t: &str) -> Option<u32> {
    let t = t.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

fn checked_name(
    n: &Sp<String>,
    what: &str,
    seen: &mut BTreeSet<String>,
    loc: &mut Locator,
) -> Option<Name> {
    match Name::new(n.get_ref()) {
        Ok(name) => {
            if !seen.insert(n.get_ref().clone()) {
                loc.error(
                    n.span(),
                    format!(
                        "{what}.name: \"{}\" is used by another {what}; names must be unique",
                        n.get_ref()
                    ),
                );
                return None;
            }
            Some(name)
        }
        Err(e) => {
            loc.error(n.span(), format!("{what}.name: {e}"));
            None
        }
    }
}

fn parse_addr<T: std::str::FromStr>(
    v: &Sp<String>,
    key: &str,
    expected: &str,
    loc: &mut Locator,
) -> Option<T> {
    match v.get_ref().parse::<T>() {
        Ok(a) => Some(a),
        Err(_) => {
            loc.error(
                v.span(),
                format!("{key}: \"{}\" is not {expected}", v.get_ref()),
            );
            None
        }
    }
}

/// One value or a list of values, each converted by `parse`; errors name the key.
fn list_of<T>(
    v: &Sp<toml::Value>,
    key: &str,
    expected: &str,
    loc: &mut Locator,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let items: Vec<&toml::Value> = match v.get_ref() {
        toml::Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        loc.error(
            v.span(),
            format!("{key}: the list is empty; remove the key or list at least one {expected}"),
        );
    }
    let mut out = Vec::new();
    for item in items {
        let text = match item {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            other => {
                loc.error(
                    v.span(),
                    format!("{key}: expected {expected}, found {}", other.type_str()),
                );
                continue;
            }
        };
        match parse(&text) {
            Ok(x) => out.push(x),
            Err(e) => loc.error(v.span(), format!("{key}: {e}")),
        }
    }
    out
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "\"{s}\" is not an IPv4 or IPv6 address or prefix (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"
                ))
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "\"{s}\" has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The first socket key (`user`, `cgroup`) a match has, with its span.
fn socket_key(m: Option<&Sp<RawMatch>>) -> Option<(&'static str, std::ops::Range<usize>)> {
    let m = m?.get_ref();
    m.user
        .as_ref()
        .map(|u| ("user", u.span()))
        .or_else(|| m.cgroup.as_ref().map(|c| ("cgroup", c.span())))
}

/// `user = "backup"`, `1001`, or a list of both: uids, sorted, each named once.
fn validate_users(v: &Sp<RawItems>, loc: &mut Locator, names: &dyn Names) -> Vec<u32> {
    let items = v.get_ref().items(v.span());
    if items.is_empty() {
        loc.error(
            v.span(),
            "match.user: the list is empty; remove the key or list at least one user name or uid",
        );
    }
    let mut out = Vec::new();
    for (item, span) in items {
        let uid = match item {
            // (uid_t)-1 means "no uid" to the kernel's calls; nothing owns a socket as it.
            toml::Value::Integer(n) => u32::try_from(*n).ok().filter(|u| *u != u32::MAX).ok_or_else(|| {
                format!("match.user: {n} is not a uid (expected 0 to 4294967294, or a user name)")
            }),
            toml::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u32>()
                .ok()
                .filter(|u| *u != u32::MAX)
                .ok_or_else(|| format!("match.user: \"{s}\" is not a uid (expected 0 to 4294967294, or a user name)")),
            toml::Value::String(s) => names.uid(s).ok_or_else(|| {
                format!("match.user: no user named \"{s}\" on this host (expected a user name from the system's user database, as `id {s}` would find it, or a numeric uid)")
            }),
            other => Err(format!(
                "match.user: expected a user name or a numeric uid, found {}",
                other.type_str()
            )),
        };
        match uid {
            Ok(u) => out.push(u),
            Err(msg) => loc.error(span, msg),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `cgroup = "system.slice/backup.service"` or a list: paths below the cgroup2 root.
fn validate_cgroups(v: &Sp<RawItems>, loc: &mut Locator) -> Vec<CgroupPath> {
    let items = v.get_ref().items(v.span());
    if items.is_empty() {
        loc.error(v.span(), "match.cgroup: the list is empty; remove the key or list at least one cgroup path like \"system.slice/backup.service\"");
    }
    let mut out = Vec::new();
    for (item, span) in items {
        match item {
            toml::Value::String(s) => match CgroupPath::new(s) {
                Ok(p) => out.push(p),
                Err(e) => loc.error(span, format!("match.cgroup: {e}")),
            },
            other => loc.error(
                span,
                format!(
                    "match.cgroup: expected a cgroup path like \"system.slice/backup.service\", found {}",
                    other.type_str()
                ),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn validate_match(m: &RawMatch, loc: &mut Locator, names: &dyn Names) -> Selector {
    let prefixes = |v: &Option<Sp<toml::Value>>, key: &str, loc: &mut Locator| match v {
        Some(v) => Prefixes::from_nets(list_of(v, key, "prefix", loc, parse_prefix)),
        None => Prefixes::default(),
    };
    let mut s = Selector {
        in_interface: m
            .in_interface
            .as_ref()
            .map(|v| list_of(v, "match.in_interface", "interface name", loc, IfName::new))
            .unwrap_or_default(),
        source_mac: m
            .source_mac
            .as_ref()
            .map(|v| list_of(v, "match.source_mac", "MAC address", loc, MacAddr::parse))
            .unwrap_or_default(),
        source: prefixes(&m.source, "match.source", loc),
        not_source: prefixes(&m.not_source, "match.not_source", loc),
        destination: prefixes(&m.destination, "match.destination", loc),
        not_destination: prefixes(&m.not_destination, "match.not_destination", loc),
        protocol: m
            .protocol
            .as_ref()
            .map(|v| list_of(v, "match.protocol", "protocol", loc, Protocol::parse))
            .unwrap_or_default(),
        source_port: m
            .source_port
            .as_ref()
            .map(|v| list_of(v, "match.source_port", "port", loc, PortRange::parse))
            .unwrap_or_default(),
        destination_port: m
            .destination_port
            .as_ref()
            .map(|v| list_of(v, "match.destination_port", "port", loc, PortRange::parse))
            .unwrap_or_default(),
        user: m
            .user
            .as_ref()
            .map(|v| validate_users(v, loc, names))
            .unwrap_or_default(),
        cgroup: m
            .cgroup
            .as_ref()
            .map(|v| validate_cgroups(v, loc))
            .unwrap_or_default(),
    };
    // The sending user and cgroup belong to connections the host opens; interface and
    // MAC to connections that arrive. No connection has both.
    if let (Some(socket), Some(ingress)) = (
        m.user
            .as_ref()
            .map(|u| ("user", u.span()))
            .or_else(|| m.cgroup.as_ref().map(|c| ("cgroup", c.span()))),
        m.in_interface
            .as_ref()
            .map(|_| "in_interface")
            .or_else(|| m.source_mac.as_ref().map(|_| "source_mac")),
    ) {
        loc.error(
            socket.1,
            format!(
                "match.{}: selects connections this host opens, which have no {ingress} (only arriving ones do), so this policy could never match; split it into two policies",
                socket.0
            ),
        );
    }
    for (ports, raw, key) in [
        (&s.source_port, &m.source_port, "source_port"),
        (&s.destination_port, &m.destination_port, "destination_port"),
    ] {
        if ports.is_empty() {
            continue;
        }
        let span = raw.as_ref().map(|r| r.span()).unwrap_or(0..0);
        if s.protocol.is_empty() {
            loc.error(span, format!("match.{key}: ports need a protocol; add protocol = \"tcp\" (or \"udp\", or [\"tcp\", \"udp\"])"));
        } else if let Some(p) = s.protocol.iter().find(|p| !p.has_ports()) {
            loc.error(span, format!("match.{key}: protocol {p} has no ports; list only tcp, udp, sctp, dccp or udplite with ports"));
        }
    }
    // A family named only in a negative key can't contradict a positive key; but a
    // positive key in one family and another positive key only in the other can never match.
    let fam_ok = |f| {
        [&s.source, &s.destination]
            .iter()
            .all(|p| p.is_empty() || p.has(f))
    };
    if !s.source.is_empty()
        && !s.destination.is_empty()
        && !fam_ok(crate::model::Family::Inet4)
        && !fam_ok(crate::model::Family::Inet6)
    {
        let span = m.destination.as_ref().map(|r| r.span()).unwrap_or(0..0);
        loc.error(span, "match.destination: source and destination share no address family, so nothing can match");
    }
    s.in_interface.dedup();
    s
}
