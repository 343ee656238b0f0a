//! The routing decision for one packet: policy rules, table lookups, the input checks
//! (forwarding, martians, rp_filter), following the kernel's `fib_rules_lookup`,
//! `fib_table_lookup` / `fib6_table_lookup`, `ip_route_output_key_hash_rcu`,
//! `ip_route_input_slow` and `fib_validate_source`. See the module documentation of
//! [`super`] for the behaviours that are easy to get wrong.
//!
//! One file per concern: [`query`] and [`verdict`] are the questions and answers;
//! [`rules`] walks the policy rules, [`table`] looks one table up; [`output4`],
//! [`input4`] (with [`rp_filter`]) and [`ipv6`] are the paths a packet takes; [`host`]
//! reads the sysctls, interfaces and next hops they depend on; [`addr`] classifies
//! addresses.

mod addr;
mod host;
mod input4;
mod ipv6;
mod output4;
mod query;
mod rp_filter;
mod rules;
mod table;
mod verdict;

use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::types::{
    table_name, NextHop, RouteEntry, RouteKind, RoutingState, RuleAction, RuleEntry, TABLE_DEFAULT,
    TABLE_LOCAL, TABLE_MAIN,
};
use symroute_core::model::{Family, IpProto};

use addr::*;
pub use query::{describe_query, Query};
use verdict::route_error_kind;
pub use verdict::{Lookup, RouteError, Stage, Step, Verdict, VerdictKind};

/// Routes one packet through `state`. Pure: no I/O, never panics.
pub fn lookup(state: &RoutingState, q: &Query) -> Lookup {
    let mut e = Engine {
        st: state,
        steps: Vec::new(),
        stage: Stage::Route,
        branches: 0,
    };
    let verdict = e.route(q);
    Lookup {
        verdict,
        steps: e.steps,
    }
}

/// The flow key of one FIB lookup (`struct flowi4`/`flowi6`).
#[derive(Debug, Clone)]
struct Flow<'a> {
    family: Family,
    /// `None`: no source address (0.0.0.0 / ::).
    src: Option<IpAddr>,
    dst: IpAddr,
    /// `lo` for locally generated packets.
    iif: &'a str,
    oif: Option<&'a str>,
    mark: u32,
    proto: u8,
    sport: u16,
    dport: u16,
    tos: u8,
}

impl Flow<'_> {
    /// The kernel's own IPv4 lookup of `dst` (is it local, how is a gateway reached):
    /// from `lo`, no source, mark, protocol, ports or TOS.
    fn kernel4(dst: IpAddr) -> Self {
        Flow {
            family: Family::Inet4,
            src: None,
            dst,
            iif: "lo",
            oif: None,
            mark: 0,
            proto: 0,
            sport: 0,
            dport: 0,
            tos: 0,
        }
    }
}

/// Table lookup options.
#[derive(Debug, Clone, Copy)]
struct Opts<'a> {
    /// IPv4: only next hops on this device qualify. IPv6: preferred device (score), and
    /// with `strict` required.
    oif: Option<&'a str>,
    /// IPv6 RT6_LOOKUP_F_IFACE.
    strict: bool,
    /// FIB_LOOKUP_IGNORE_LINKSTATE.
    ignore_linkstate: bool,
    /// IPv4 `flowi4_scope`: routes of a narrower scope are skipped (gateway resolution
    /// uses link scope, everything else universe = 0).
    min_scope: u8,
}

enum TableResult<'s> {
    Miss,
    Reject(&'s RouteEntry),
    Found(&'s RouteEntry, Vec<&'s NextHop>),
}

/// A successful FIB lookup.
struct Hit<'s> {
    route: &'s RouteEntry,
    rule: Option<u32>,
    /// Next hops the kernel may use (more than one: multipath, picked by hash).
    hops: Vec<&'s NextHop>,
    /// Found in the local table through the merged local+main trie: the kernel reports
    /// table main.
    merged: bool,
    /// IPv6 multipath + `suppress_ifgroup`: where the walk goes when the hash picks a
    /// suppressed sibling (then `hops` are the unsuppressed ones).
    alt: Option<Box<Result<Hit<'s>, Failure>>>,
}

impl Hit<'_> {
    /// The table the kernel reports for this result.
    fn table(&self) -> u32 {
        if self.merged {
            TABLE_MAIN
        } else {
            self.route.table
        }
    }
}

/// A failed FIB lookup.
struct Failure {
    error: RouteError,
    kind: VerdictKind,
    table: Option<u32>,
    rule: Option<u32>,
    route: Option<String>,
    reason: String,
}

struct Engine<'s> {
    st: &'s RoutingState,
    steps: Vec<Step>,
    stage: Stage,
    /// Hash-dependent branches followed so far (bounded: each one walks the rest of
    /// the rules again).
    branches: u32,
}

/// At most this many hash-dependent branches per lookup.
const MAX_BRANCHES: u32 = 8;

impl<'s> Engine<'s> {
    fn step(&mut self, rule: Option<&RuleEntry>, matched: bool, note: impl Into<String>) {
        self.steps.push(Step {
            stage: self.stage,
            priority: rule.map(|r| r.priority),
            rule: rule.map(|r| r.text.clone()),
            matched,
            table: None,
            route: None,
            note: note.into(),
        });
    }

    fn table_step(
        &mut self,
        rule: Option<&RuleEntry>,
        table: u32,
        route: Option<&RouteEntry>,
        note: impl Into<String>,
    ) {
        self.steps.push(Step {
            stage: self.stage,
            priority: rule.map(|r| r.priority),
            rule: rule.map(|r| r.text.clone()),
            matched: true,
            table: Some(table),
            route: route.map(|r| r.text.clone()),
            note: note.into(),
        });
    }

    fn check(&mut self, note: impl Into<String>) {
        let stage = self.stage;
        self.stage = Stage::Check;
        self.step(None, true, note);
        self.stage = stage;
    }

    fn route(&mut self, q: &Query) -> Verdict {
        let family = Family::of(&q.dst);
        if family != q.family {
            return self.dropped(
                RouteError::InvalidArgument,
                format!("destination {} is not an {} address", q.dst, q.family),
            );
        }
        if let Some(src) = q.src.filter(|s| Family::of(s) != family) {
            return self.dropped(
                RouteError::InvalidArgument,
                format!("source {src} and destination {} differ in family", q.dst),
            );
        }
        match (&q.iif, family) {
            (Some(iif), Family::Inet4) => self.input4(q, iif),
            (Some(iif), Family::Inet6) => self.input6(q, iif),
            (None, Family::Inet4) => self.output4(q),
            (None, Family::Inet6) => self.output6(q),
        }
    }

    fn flow<'q>(&self, q: &'q Query, iif: &'q str, oif: Option<&'q str>) -> Flow<'q> {
        Flow {
            family: q.family,
            src: q.src.filter(|s| !s.is_unspecified()),
            dst: q.dst,
            iif,
            oif,
            mark: q.mark,
            proto: q.ipproto.unwrap_or(0),
            sport: q.sport.unwrap_or(0),
            dport: q.dport.unwrap_or(0),
            tos: q.tos,
        }
    }
}
