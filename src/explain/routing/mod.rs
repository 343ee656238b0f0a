//! The routing engine behind `symroute explain`: a pure model (no I/O) of Linux policy
//! routing — `ip rule`, routing tables, and the input-path checks (forwarding, martian
//! addresses, rp_filter) — plus parsers for the text `ip rule` / `ip route show table all`
//! print, so it runs on a live host or on a snapshot taken elsewhere.
//!
//! ```no_run
//! use symroute::explain::routing::{lookup, Query, RoutingState, StateTexts};
//! # let (rules, routes, addrs) = ("", "", "[]");
//! let state = RoutingState::from_texts(&StateTexts {
//!     ip_rule: rules,
//!     ip_route: routes,
//!     ip_addr_json: addrs,
//!     ..StateTexts::default()
//! })?;
//! let mut q = Query::input("192.0.2.10".parse()?, "203.0.113.2".parse()?, "up1");
//! q.mark = 0x0100_0000;
//! let result = lookup(&state, &q);
//! println!("{:?}: {}", result.verdict.kind, result.verdict.reason);
//! for step in &result.steps {
//!     println!("  {:?} {}", step.rule, step.note);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The model is checked against the kernel by `tests/explain_routing_kernel.rs` (random
//! setups in namespaces, every verdict compared with `ip route get`). What it showed,
//! and what is easy to get wrong (kernel 6.18, iproute2 6.1):
//!
//! **Rules**
//! - Rules are tried in priority order; `not` inverts the whole match (iif, oif and
//!   fwmark included). `goto N` continues at the first rule with exactly priority N;
//!   `[unresolved]` gotos are skipped. A table with no route for the destination, or a
//!   `throw` route, continues with the next rule; `unreachable`/`prohibit`/`blackhole`
//!   routes end the walk with an error, and `suppress_prefixlength` /
//!   `suppress_ifgroup` never suppress them (only successful lookups are suppressed).
//! - `iif` matches the arrival interface; locally generated packets have iif `lo`, so
//!   `iif lo` selects them. `oif` only matches when the packet has an output interface
//!   (a bound socket, `ip route get … oif`). `iif X [detached]` never matches.
//! - IPv6 `from PREFIX` rules never match a locally generated packet whose source is not
//!   chosen yet; IPv4 compares 0.0.0.0 against the prefix.
//! - With only the three default IPv4 rules the kernel skips the rule list and looks up
//!   local and main as one table (longest prefix across both), then default.
//! - Errors: an `unreachable` *rule* says "Network is unreachable", an `unreachable`
//!   *route* "No route to host" (IPv6 too), `prohibit` "Permission denied", `blackhole`
//!   "Invalid argument"; nothing found anywhere: "Network is unreachable".
//!
//! **Tables**
//! - IPv4: longest prefix; a `dead` next hop is never used, a `linkdown` one only when
//!   `ignore_routes_with_linkdown` is 0 (the default) on `all` and the device; a
//!   prefix whose routes are all unusable falls back to shorter prefixes. Reject routes
//!   answer before any next-hop check.
//! - IPv6: the lowest metric of the longest prefix wins if usable; reject routes hang off
//!   `lo` and compete like any other. Multipath routes are printed as one route with
//!   `nexthop` lines; the kernel hashes each flow over the usable next hops, so
//!   [`Verdict::candidates`] lists them all.
//!
//! **Locally generated packets (output)**
//! - IPv4 with a source address that is not this host's: "Network is unreachable"
//!   (IPv6 does not check).
//! - IPv4 with an output interface: only routes through that interface qualify — even a
//!   local address of another interface is then *not* local — and if nothing qualifies,
//!   or the rules end in blackhole/prohibit/unreachable, the kernel assumes the
//!   destination is on-link on that interface and sends it there.
//! - IPv6 with an output interface and no source: only routes through it qualify, and
//!   nothing else: "Network is unreachable". With a source, the interface is only a
//!   preference among routes of equal metric.
//!
//! **Received packets (input)**
//! - IPv4: a destination that is not local needs `forwarding` on the arrival interface,
//!   otherwise the kernel answers "No route to host" (also when no route exists at all).
//!   Local and broadcast destinations are delivered regardless.
//! - rp_filter (IPv4 only, effective value max(all, iif)): the kernel looks up the source
//!   address with iif = *the forward route's output device* (`lo` for local delivery),
//!   no oif, and the packet's mark only if `src_valid_mark`. Strict (1): the route found
//!   must have a next hop on the arrival interface. Loose (2): any route will do — but an
//!   arrival interface without IPv4 addresses fails both modes unless the route back uses
//!   it. A reverse route of type blackhole/unreachable/prohibit counts as no route; one of
//!   type local is a martian unless `accept_local`. With rp_filter 0 but custom rules
//!   present, the reverse lookup still runs and still rejects local/broadcast sources.
//! - Since kernel 6.13 every input drop (rp_filter included) reaches `ip route get` as
//!   "Invalid argument"; older kernels said "Invalid cross-device link" for rp_filter.
//! - IPv6 has no rp_filter; `ip -6 route get … iif` returns the forward route even when
//!   forwarding is off — the packet is dropped later, in `ip6_forward`
//!   ([`VerdictKind::Drop`] without [`Verdict::error`]).
//!
//! Not modelled (documented, never guessed): uid ranges, l3mdev/VRF, tunnel ids, IPv6
//! source-specific routing beyond prefix matching, `fib_multipath_use_neigh`, default
//! router selection among equal-metric IPv4 default routes (`ip route append`),
//! multicast input, nexthop objects beyond their printed via/dev.

mod lookup;
mod names;
mod parse;
mod types;

pub use lookup::{
    describe_query, lookup, Lookup, Query, RouteError, Stage, Step, Verdict, VerdictKind,
};
pub use names::TableNames;
pub use parse::{
    parse_ip_addr_json, parse_ip_routes, parse_ip_routes_with, parse_ip_rules, parse_ip_rules_with,
    parse_sysctls, StateTexts,
};
pub use types::{
    table_name, LinkState, NextHop, ParseError, RouteEntry, RouteKind, RoutingState, RuleAction,
    RuleEntry, StateError, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN,
};

#[cfg(test)]
mod tests;
