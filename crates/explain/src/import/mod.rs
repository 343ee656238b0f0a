//! `symroute import`: a `symroute.toml` for a host whose policy routing was made by hand,
//! as far as symroute can express it, with everything it cannot express quoted as written
//! and explained.
//!
//! What is recognised (from [`HostState`]: `ip rule`s, routes, and the firewall IR):
//! - **gateways**: a table looked up by `ip rule fwmark V[/M] lookup T` whose default
//!   route is `via X dev D` (or `dev D` on a point-to-point link) becomes a `[[gateway]]`
//!   named after the table (`rt_tables` name, or `table-T`); the IPv6 rule with the same
//!   fwmark gives `via6`.
//! - **the CONNMARK pattern** (restore the connection's mark, skip marked packets, set a
//!   mark under conditions, save it, restore it in OUTPUT too), in iptables or nft form:
//!   conditions that tie a connection to the gateway's side (its interface, a source MAC)
//!   become a `reply_via` policy; other conditions, and marks set in OUTPUT, a `route_via`
//!   policy. Marks set without saving them become `route_via` with a note (the original
//!   steered only the packets it marked).
//! - **divert** (`-m socket` / `socket transparent 1` setting a mark whose `ip rule`
//!   table holds `local default dev lo`) becomes `[[divert]]`.
//!
//! Everything else that sets or tests marks or selects routes (rules with other
//! selectors, foreign tools' objects, marks set after routing or to 0, conditions with no
//! match key) is listed in [`Imported::unexpressed`], and as comments at the top of the
//! file. symroute's own objects (`proto 157`, table `inet symroute`) are ignored.
//! `[settings]` stays at its defaults unless what the host keeps uses symroute's mark
//! bits, rule priorities or tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use super::host::HostState;
use super::netfilter::{
    AddrItem, Chain, CtDirection, CtState, Hook, MarkKey, Match, NfFamily, Op, Origin, Rule, Stmt,
    Verdict,
};
use super::routing::{
    RouteEntry, RouteKind, RuleAction, RuleEntry, TABLE_DEFAULT, TABLE_LOCAL, TABLE_MAIN,
};
use symroute_core::model::{Family, IpProto, Protocol};
use symroute_core::plan::RT_PROTO;

// The passes (routing, firewall, leftovers, render) are `impl Cx` blocks in the files
// below; the globs let each file use the others' helpers as freely as when this was one
// file, and keep all of it private to `import`.
mod balance;
mod conds;
mod cx;
mod divert;
mod firewall;
mod gateways;
mod policies;
mod quote;
mod render;
mod settings;
#[cfg(test)]
mod tests;
mod types;
mod unexpressed;

use self::balance::*;
use self::conds::*;
use self::cx::*;
use self::firewall::*;
use self::policies::*;
use self::quote::*;
use self::render::*;
use self::settings::*;
use self::types::*;

/// The result: the config text, and what it could not express.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// A `symroute.toml`; the unexpressed items are `# ` comments at its top.
    pub toml: String,
    pub unexpressed: Vec<Unexpressed>,
}

/// One object the config does not express.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unexpressed {
    /// The rule or route, quoted as the tool printed it, prefixed with where it is
    /// (`iptables-save -t mangle: -A FORWARD …`, `ip rule: 32765: from all …`).
    pub what: String,
    pub why: String,
}

impl Imported {
    /// The unexpressed items as lines for stderr (`cannot express: WHAT` + `  why: WHY`).
    /// Both may quote host text (a rule, a chain's name): control characters in it are
    /// spelled as escapes, so it can neither break the lines nor drive the terminal.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for u in &self.unexpressed {
            let (what, why) = (quote::inert(&u.what), quote::inert(&u.why));
            let _ = writeln!(s, "cannot express: {what}\n  why: {why}");
        }
        s
    }
}

/// Reads the host's hand-made policy routing and writes it as a symroute config.
pub fn import(host: &HostState) -> Imported {
    let mut cx = Cx::new(host);
    cx.routing();
    cx.firewall();
    cx.balance();
    cx.leftover_rules();
    cx.render()
}
