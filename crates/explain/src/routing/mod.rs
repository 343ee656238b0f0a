//! The routing engine behind `symroute explain`: a pure model (no I/O) of Linux policy
//! routing — `ip rule`, routing tables, and the input-path checks (forwarding, martian
//! addresses, rp_filter) — plus parsers for the text `ip rule` / `ip route show table all`
//! print, so it runs on a live host or on a snapshot taken elsewhere.
//!
//! ```no_run
//! use symroute_explain::routing::{lookup, Query, RoutingState, StateTexts};
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
//! The model is checked against the kernel by `tests/integration/explain_routing_kernel.rs` (random
//! setups in namespaces, every verdict compared with `ip route get`). What it showed —
//! kernel 6.18, iproute2 6.1 — and what is easy to get wrong:
//!
//! **Reading the state**
//! - `ip route show table all` without `-4` prints IPv6 routes too (with `table all`
//!   iproute2 leaves the family open); [`parse_ip_routes`] keeps the family asked for.
//! - `ip -6 route show table all` prints its whole dump twice; duplicates are dropped.
//! - Carrier loss reaches the routing tables asynchronously (linkwatch): a snapshot taken
//!   right after a cable is pulled may not show `linkdown` yet.
//! - The printed flags are the truth. An interface going down deletes its routes, except
//!   IPv4 `local` routes, which stay (its addresses still answer as local); multipath
//!   next hops become `dead`; `linkdown` next hops are printed `dead linkdown` when
//!   `ignore_routes_with_linkdown` applies; IPv6 `local` routes never get `linkdown`.
//!
//! **Rules**
//! - Rules are tried in priority order; `not` inverts the whole match (iif, oif and
//!   fwmark included). `goto N` continues at the first rule with exactly priority N;
//!   `[unresolved]` gotos are skipped. A table with no route for the destination, or a
//!   `throw` route, continues with the next rule; `unreachable`/`prohibit`/`blackhole`
//!   routes end the walk with an error, and `suppress_prefixlength` /
//!   `suppress_ifgroup` never suppress them (only successful lookups are suppressed).
//!   IPv4 `suppress_ifgroup` looks at the route's first next hop, IPv6 at the multipath
//!   sibling the hash picked (so the outcome can depend on the hash:
//!   [`Verdict::alternatives`]).
//! - `iif` matches the arrival interface; locally generated packets have iif `lo`, so
//!   `iif lo` selects them. `oif` only matches when the packet has an output interface
//!   (a bound socket, `ip route get … oif`). `iif X [detached]` never matches.
//! - IPv6 `from PREFIX` rules never match a locally generated packet whose source is not
//!   chosen yet; IPv4 compares 0.0.0.0 against the prefix.
//! - With only the three default IPv4 rules the kernel skips the rule list and looks up
//!   local and main as one trie (longest prefix across both; hits are reported as table
//!   main), then default — but only after a miss or `throw`, not after an error route.
//!   The "is this source one of ours" check then also sees `local` routes in main.
//! - Errors: an `unreachable` *rule* says "Network is unreachable", an `unreachable`
//!   *route* "No route to host" (IPv6 too), `prohibit` "Permission denied", `blackhole`
//!   "Invalid argument"; nothing found anywhere: "Network is unreachable".
//!
//! **Tables**
//! - IPv4: longest prefix; a `dead` next hop is never used, a `linkdown` one only when
//!   `ignore_routes_with_linkdown` is 0 (the default) on `all` and the device; a prefix
//!   whose routes are all unusable falls back to shorter prefixes; among routes of one
//!   prefix, TOS-specific ones first, then by metric, then in printed order. Reject
//!   routes answer before any next-hop check.
//! - IPv6: the lowest metric of the longest prefix wins if usable; reject routes hang off
//!   `lo` and compete like any other. Multipath routes are printed as one route with
//!   `nexthop` lines; the kernel hashes each flow over the usable next hops, so
//!   [`Verdict::candidates`] lists them all.
//! - IPv6 source-specific routes (`… from PREFIX`): a destination prefix that has any is
//!   skipped entirely — its plain routes included — when none of its source prefixes
//!   matches, except for `::/0`; the plain routes are only reached by backtracking.
//! - A gateway that is an address of the next hop's own device (not `onlink`) is
//!   accepted but ignored: the kernel sends directly to the destination. (It is decided
//!   once, when the route is added, against the tables of that moment.)
//!
//! **Locally generated packets (output)**
//! - IPv4 with a source address that is not this host's: "Network is unreachable"
//!   (IPv6 does not check). With a source of this host and no output interface, limited
//!   broadcast and multicast leave through the source's interface without a lookup.
//! - A socket's packet is routed once like this, with the socket's mark and bound source,
//!   *before* the output hook: when that lookup fails `sendto`/the SYN-ACK fails with its
//!   error and no output chain runs (`tests/integration/explain_routing_kernel.rs` checks it with real
//!   sockets; [`crate::explain::trace`] models the hook and the re-route after it).
//! - IPv4 with an output interface: only routes through that interface qualify — even a
//!   local address of another interface is then *not* local — and if nothing qualifies,
//!   or the rules end in blackhole/prohibit/unreachable, the kernel assumes the
//!   destination is on-link on that interface and sends it there. A 127.0.0.0/8 source
//!   may only leave through `lo` ("Invalid argument").
//! - IPv6 with an output interface and no source: only routes through it qualify
//!   ("Network is unreachable" otherwise). With a source, the interface is only a
//!   preference among routes of equal metric.
//!
//! **Received packets (input)**
//! - IPv4 without a source address (0.0.0.0) is a martian; every input drop reaches
//!   `ip route get` as "Invalid argument" since kernel 6.13 (older kernels said "Invalid
//!   cross-device link" for rp_filter).
//! - IPv4: a destination that is not local needs `forwarding` on the arrival interface,
//!   otherwise the kernel answers "No route to host" — also when no route exists at all.
//!   Local and broadcast destinations are delivered regardless.
//! - rp_filter (IPv4 only, effective value max(all, iif)): the kernel looks up the source
//!   address with iif = *the forward route's output device* (`lo` for local delivery),
//!   so `iif` rules see that device, no oif, and the packet's mark only with
//!   `src_valid_mark`. Strict (1): the route found must have a next hop on the arrival
//!   interface. Loose (2): any route will do — but an arrival interface without IPv4
//!   addresses fails both modes unless the route back uses it. A reverse route of type
//!   blackhole/unreachable/prohibit counts as none; one of type local is a martian
//!   unless `accept_local`. With rp_filter 0 but custom rules present the reverse lookup
//!   still runs and still rejects local and broadcast sources. Multipath: each next hop
//!   is checked on its own; the hash decides ([`Verdict::alternatives`]).
//! - IPv6 has no rp_filter; `ip -6 route get … iif` returns the forward route even when
//!   forwarding is off — the packet is dropped later, in `ip6_forward`
//!   ([`VerdictKind::Drop`] without [`Verdict::error`]). Among routes of equal metric the
//!   lookup prefers those through the arrival interface.
//!
//! Not modelled (documented, never guessed): uid ranges, l3mdev/VRF, tunnel ids, DSCP and
//! flow-label selectors, `fib_multipath_use_neigh`, default-router selection among
//! equal-metric IPv4 default routes (`ip route append`), multicast input, nexthop objects
//! beyond their printed via/dev, and kernel state no output shows (a gateway's scope
//! after the tables changed, the borrowed leaf of an IPv6 node whose plain routes were
//! deleted while it had a source subtree, custom rules added and removed again).

mod lookup;
mod names;
mod parse;
mod planned;
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
