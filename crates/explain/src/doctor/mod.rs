//! `symroute doctor`: the mistakes in a hand-made policy-routing setup, read from a
//! [`HostState`] (a snapshot or the live kernel), each quoted as its author wrote it, with
//! why it breaks and what to do instead.
//!
//! The checks are static: they read the `ip rule`s, routes, sysctls and the firewall IR
//! (every nft/iptables rule, with the hooks that reach it) and never guess traffic. What
//! they look for is listed in [`CODES`]; the seeds' mistakes (`--set-mark 0`, marking in
//! FORWARD, no CONNMARK, strict rp_filter) are the first rows.
//!
//! Objects that belong to known tools (symroute's own `inet symroute` table and `proto
//! 157` rules, wg-quick, Tailscale, kube-proxy, Calico, Docker, firewalld) are recognised
//! by their names and values: they count as mark producers and users, but are never
//! reported as hand-made mistakes themselves.

mod facts;
mod marks;
mod networkd;
pub mod peer;
mod quoting;
mod routes;

use std::fmt::Write as _;

use serde::Serialize;

use super::host::HostState;

/// How bad a finding is. Sorts errors first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The setup cannot work as intended.
    Error,
    /// It works only partly, or breaks in a common situation.
    Warning,
    /// Worth knowing; nothing is broken yet.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable kebab-case name, one of [`CODES`].
    pub code: &'static str,
    /// The offending object exactly as the tools print it: an `iptables-save` line, an nft
    /// rule, an `ip rule` line, a route line, or `sysctl key = value`.
    pub rule: String,
    /// Where `rule` lives (`iptables-save -t mangle chain FORWARD (line 12)`, `ip rule`,
    /// `ip route show table all`, `sysctl`).
    pub place: String,
    /// Why it breaks.
    pub why: String,
    /// What to do instead (concrete commands where there is one answer).
    pub fix: String,
}

impl Finding {
    pub(crate) fn new(
        severity: Severity,
        code: &'static str,
        rule: &str,
        place: String,
        why: String,
        fix: String,
    ) -> Finding {
        Finding {
            severity,
            code,
            rule: rule.to_string(),
            place,
            why,
            fix,
        }
    }
}

/// Every code doctor can report, with a one-line meaning (for the README table).
pub const CODES: &[(&str, &str)] = &[
    ("mark-zero", "a rule sets the mark to 0 (no mark at all) where an `ip rule fwmark` expects a value"),
    ("mark-outside-mask", "a mark value lies outside the mask an `ip rule` tests (an `ip rule fwmark V/M` with bits of V outside M matches unmarked packets; a value set outside the mask never matches)"),
    ("fwmark-never-set", "an `ip rule fwmark` tests a value no firewall rule can set: nothing matches it"),
    ("mark-after-routing", "a mark an `ip rule` tests is set after the routing decision (FORWARD, INPUT, POSTROUTING, or an OUTPUT chain that does not re-route)"),
    ("mark-reset-after-routing", "a mark an `ip rule` tests is cleared or changed after the routing decision, while routing gets it before (set in PREROUTING or restored from the connection): harmless for routing (Shorewall's FORWARD reset)"),
    ("mark-not-saved", "a mark is set on packets but not saved in the connection (CONNMARK --save-mark / `ct mark set meta mark`): replies and later packets do not carry it"),
    ("mark-not-restored", "a mark is saved in the connection but never restored into packet marks: it routes nothing"),
    ("no-output-restore", "marks are restored in PREROUTING but not in OUTPUT (a re-routing chain) while the host itself answers marked connections: its replies use the main table"),
    ("rp-filter-strict", "strict rp_filter on an interface whose traffic is answered through another interface: the first packet is dropped before any mark exists"),
    ("table-empty", "an `ip rule` looks up a table that has no routes"),
    ("table-no-default", "an `ip rule` looks up a table without a default route: other destinations fall through to later rules"),
    ("table-reserved", "an `ip rule` looks up a reserved table (0, or 253 `default` outside its own rule)"),
    ("table-collision", "a table is used by a known tool for something else (51820 wg-quick, 52 Tailscale), or by two different setups"),
    ("priority-collision", "an `ip rule` sits among a known tool's priorities (Tailscale 5210-5270)"),
    ("rule-shadowed", "an `ip rule` is never reached: an earlier rule matches every packet it would and decides them"),
    ("mark-bits-shared", "mark bits are shared with a known tool (wg-quick 0xca6c, kube-proxy 0x4000/0x8000, Tailscale 0xff0000, Calico 0xffff0000, symroute, firewalld)"),
    ("nexthop-not-connected", "a route's gateway is on none of its device's networks (the kernel refuses it when re-added)"),
    ("nexthop-onlink", "a route's gateway is off the device's networks and forced with `onlink`"),
    ("route-no-gateway", "a default route out of an Ethernet interface has no gateway: every destination is resolved by ARP/ND on that link"),
    ("networkd-manages-foreign", "systemd-networkd may remove routing policy rules or routes it did not make (ManageForeignRoutingPolicyRules=/ManageForeignRoutes= yes, its default) when it starts or reconfigures"),
    ("peer-marks-differ", "`--peer`: a mark value (or the mask) means another path or decision on the other box of an HA pair: connections conntrackd copies lose their path after a failover"),
    ("peer-mark-missing", "`--peer`: one box has a rule for a mark value the other lacks (expected only while a change reaches one box first)"),
    ("peer-marks-agree", "`--peer`: every mark value means the same on both boxes"),
];

/// Everything doctor finds on `host`, sorted by severity, code, then the quoted rule.
pub fn doctor(host: &HostState) -> Vec<Finding> {
    doctor_with_peer(host, None)
}

/// [`doctor`], and with `peer` (the other box of an HA pair) whether both give every
/// symroute mark the same meaning ([`peer`]).
pub fn doctor_with_peer(host: &HostState, peer: Option<&peer::Side>) -> Vec<Finding> {
    let ctx = facts::Ctx::new(host);
    let mut out = Vec::new();
    marks::check(&ctx, &mut out);
    routes::check(&ctx, &mut out);
    networkd::check(host, &mut out);
    if let Some(p) = peer {
        out.extend(peer::compare(&peer::side_of_host(host), p));
    }
    debug_assert!(
        out.iter().all(|f| CODES.iter().any(|(c, _)| *c == f.code)),
        "every code is listed in CODES"
    );
    out.sort_by(|a, b| {
        (a.severity, a.code, &a.rule, &a.place, &a.why)
            .cmp(&(b.severity, b.code, &b.rule, &b.place, &b.why))
    });
    out.dedup_by(|a, b| {
        a.severity == b.severity && a.code == b.code && a.rule == b.rule && a.place == b.place
    });
    quoting::guard(host, &mut out);
    out
}

/// Every object but symroute's own that uses mark bits, from the analysis `symroute
/// apply`'s conflict check runs (`crate::marks`), with doctor's names for their places.
/// With symroute running here, the ones within its bits are `mark-bits-shared` findings.
pub fn mark_users(host: &HostState) -> Vec<symroute_core::plan::diff::MarkUser> {
    marks::mark_users(&facts::Ctx::new(host))
}

/// Human-readable report.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    if findings.is_empty() {
        s.push_str("symroute doctor: no problems found\n");
        return s;
    }
    let count = |sev| findings.iter().filter(|f| f.severity == sev).count();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let _ = writeln!(
        s,
        "symroute doctor: {}, {}, {}",
        plural(count(Severity::Error), "error", "errors"),
        plural(count(Severity::Warning), "warning", "warnings"),
        plural(count(Severity::Info), "note", "notes")
    );
    for f in findings {
        let _ = writeln!(s, "\n{}[{}] {}", f.severity.as_str(), f.code, f.place);
        let _ = writeln!(s, "    {}", f.rule.replace('\t', " "));
        let _ = writeln!(s, "  why: {}", f.why);
        let _ = writeln!(s, "  fix: {}", f.fix);
    }
    s
}

#[cfg(test)]
mod tests;
