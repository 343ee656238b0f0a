//! What a lookup answers (`Verdict`, the `Step`s that led to it) and how the engine
//! builds the answer from a table hit or a failure.

use super::*;

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    /// Sent (or forwarded) out of `interface`, to `via` or directly.
    Unicast,
    /// Delivered to this host (`interface` is `lo`, as the kernel reports it).
    Local,
    Broadcast,
    Multicast,
    /// IPv6 anycast address of this host (subnet-router anycast): delivered locally.
    Anycast,
    /// Silently discarded by a `blackhole` route or rule.
    Blackhole,
    /// Rejected with "network/host unreachable".
    Unreachable,
    /// Rejected with "administratively prohibited".
    Prohibit,
    /// Discarded by a check after routing: rp_filter, martian addresses, forwarding off
    /// (IPv6), no such device.
    Drop,
}

/// The error `ip route get` prints for this packet (`RTNETLINK answers: …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RouteError {
    /// ENETUNREACH
    NetworkUnreachable,
    /// EHOSTUNREACH
    HostUnreachable,
    /// EACCES
    PermissionDenied,
    /// EINVAL: blackhole, and every input-path drop (martians, rp_filter) since kernel
    /// 6.13 (older kernels said "Invalid cross-device link", EXDEV, for rp_filter).
    InvalidArgument,
    /// ENODEV: `iif`/`oif` names no interface.
    NoSuchDevice,
}

impl RouteError {
    /// strerror() text, as `ip route get` prints it.
    pub fn message(self) -> &'static str {
        match self {
            Self::NetworkUnreachable => "Network is unreachable",
            Self::HostUnreachable => "No route to host",
            Self::PermissionDenied => "Permission denied",
            Self::InvalidArgument => "Invalid argument",
            Self::NoSuchDevice => "No such device",
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// Egress interface (`lo` for local delivery); `None` when multipath candidates use
    /// different interfaces, or when nothing leaves.
    pub interface: Option<String>,
    /// Next hop (gateway); `None` for on-link destinations or when candidates differ.
    pub via: Option<IpAddr>,
    /// Table of the route used.
    pub table: Option<u32>,
    /// Priority of the rule that decided.
    pub rule: Option<u32>,
    /// The route used, as printed.
    pub route: Option<String>,
    /// Every (interface, next hop) the kernel may pick: for multipath routes it hashes
    /// the flow over these, any of them is a correct answer.
    pub candidates: Vec<(String, Option<IpAddr>)>,
    /// Other outcomes the multipath hash can lead to: when the kernel picks a next hop
    /// that is not in `candidates`, rp_filter may reject the packet, or (IPv6)
    /// `suppress_ifgroup` may suppress the route and the rule walk goes on. Each
    /// alternative lists its own next hops in its `candidates` (empty for errors).
    pub alternatives: Vec<Verdict>,
    /// What `ip route get` answers instead of a route (`None`: it prints a route; for a
    /// `Drop` without error, e.g. IPv6 forwarding off, the route it prints is
    /// `interface`/`via`, the drop happens later).
    pub error: Option<RouteError>,
    pub reason: String,
}

/// Which decision a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The packet's own route.
    Route,
    /// rp_filter / source validation: the reverse lookup of the source address.
    RpFilter,
    /// Checks outside the rule walk (interfaces, martians, forwarding).
    Check,
}

/// One thing the engine looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub stage: Stage,
    pub priority: Option<u32>,
    /// The rule as printed.
    pub rule: Option<String>,
    pub matched: bool,
    pub table: Option<u32>,
    /// The route the table lookup found, as printed.
    pub route: Option<String>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub verdict: Verdict,
    pub steps: Vec<Step>,
}

impl Verdict {
    pub(super) fn new(kind: VerdictKind, reason: impl Into<String>) -> Self {
        Verdict {
            kind,
            interface: None,
            via: None,
            table: None,
            rule: None,
            route: None,
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason: reason.into(),
        }
    }
}

pub(super) fn route_error_kind(
    kind: RouteKind,
    family: Family,
) -> (RouteError, VerdictKind, &'static str) {
    match (kind, family) {
        (RouteKind::Blackhole, _) => (
            RouteError::InvalidArgument,
            VerdictKind::Blackhole,
            "a blackhole route discards it silently",
        ),
        (RouteKind::Prohibit, _) => (
            RouteError::PermissionDenied,
            VerdictKind::Prohibit,
            "a prohibit route rejects it (ICMP administratively prohibited)",
        ),
        _ => (
            RouteError::HostUnreachable,
            VerdictKind::Unreachable,
            "an unreachable route rejects it (ICMP host unreachable)",
        ),
    }
}

impl<'s> Engine<'s> {
    pub(super) fn failed(&self, f: Failure) -> Verdict {
        Verdict {
            kind: f.kind,
            interface: None,
            via: None,
            table: f.table,
            rule: f.rule,
            route: f.route,
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: Some(f.error),
            reason: f.reason,
        }
    }

    pub(super) fn dropped(&self, error: RouteError, reason: impl Into<String>) -> Verdict {
        Verdict {
            error: Some(error),
            ..Verdict::new(VerdictKind::Drop, reason)
        }
    }

    /// A verdict that names the route found.
    pub(super) fn found(
        &self,
        hit: &Hit,
        kind: VerdictKind,
        hops: &[&NextHop],
        reason: String,
    ) -> Verdict {
        let candidates: Vec<(String, Option<IpAddr>)> = hops
            .iter()
            .map(|nh| {
                (
                    nh.dev.clone().unwrap_or_default(),
                    self.effective_via(hit.route, nh),
                )
            })
            .collect();
        let same_dev = candidates.windows(2).all(|w| w[0].0 == w[1].0);
        let same_via = candidates.windows(2).all(|w| w[0].1 == w[1].1);
        Verdict {
            kind,
            interface: candidates
                .first()
                .filter(|_| same_dev)
                .map(|c| c.0.clone())
                .filter(|d| !d.is_empty()),
            via: candidates.first().filter(|_| same_via).and_then(|c| c.1),
            table: Some(hit.table()),
            rule: hit.rule,
            route: Some(hit.route.text.clone()),
            candidates,
            alternatives: Vec::new(),
            error: None,
            reason,
        }
    }

    /// Local delivery: the kernel reports `dev lo`.
    pub(super) fn delivered(&self, hit: &Hit, kind: VerdictKind, reason: String) -> Verdict {
        Verdict {
            kind,
            interface: Some("lo".into()),
            via: None,
            table: Some(hit.table()),
            rule: hit.rule,
            route: Some(hit.route.text.clone()),
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason,
        }
    }

    /// `rule P → table T: DST HOPS`: why a route was found.
    pub(super) fn found_reason(hit: &Hit, hops: &[&NextHop]) -> String {
        format!(
            "rule {} → table {}: {} {}",
            hit.rule
                .map_or_else(|| "(default)".into(), |p| p.to_string()),
            table_name(hit.route.table),
            hit.route.dst,
            Self::describe_hops(hops)
        )
    }

    pub(super) fn describe_hops(hops: &[&NextHop]) -> String {
        let one = |nh: &NextHop| match (&nh.dev, nh.via) {
            (Some(d), Some(v)) => format!("via {v} dev {d}"),
            (Some(d), None) => format!("dev {d}"),
            (None, Some(v)) => format!("via {v}"),
            (None, None) => "?".into(),
        };
        match hops {
            [] => "nowhere".into(),
            [nh] => one(nh),
            many => format!(
                "one of {} (multipath: the kernel hashes the flow)",
                many.iter().map(|n| one(n)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}
