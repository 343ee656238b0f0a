//! IPv4 locally generated packets (`ip_route_output_key_hash_rcu`).

use super::*;

impl<'s> Engine<'s> {
    /// `ip_route_output_key_hash_rcu`.
    pub(super) fn output4(&mut self, q: &Query) -> Verdict {
        let oif = q.oif.as_deref();
        if let Some(oif) = oif {
            match self.st.links.get(oif) {
                None if !self.st.links.is_empty() => {
                    return self.dropped(
                        RouteError::NoSuchDevice,
                        format!("oif {oif}: no such interface"),
                    );
                }
                Some(link) if !link.up && oif != "lo" => {
                    self.check(format!("oif {oif} is down"));
                    return Verdict {
                        kind: VerdictKind::Unreachable,
                        ..self.dropped(
                            RouteError::NetworkUnreachable,
                            format!("the output interface {oif} is down (network unreachable)"),
                        )
                    };
                }
                _ => {}
            }
        }
        self.output4_lookup(q, oif)
    }

    pub(super) fn output4_lookup(&mut self, q: &Query, oif: Option<&str>) -> Verdict {
        let dst = q.dst;
        let on_oif = |kind: VerdictKind, oif: &str, reason: String| Verdict {
            kind,
            interface: Some(oif.to_string()),
            via: None,
            table: None,
            rule: None,
            route: None,
            candidates: vec![(oif.to_string(), None)],
            alternatives: Vec::new(),
            error: None,
            reason,
        };
        if let Some(oif) = oif {
            let local_mc = matches!(dst, IpAddr::V4(v) if v.octets()[..3] == [224, 0, 0]);
            if (is_lbcast(dst) || local_mc) && q.src.is_some_and(is_loopback4) && oif != "lo" {
                return self.dropped(
                    RouteError::InvalidArgument,
                    format!("a 127.0.0.0/8 source may only leave via lo, not {oif}"),
                );
            }
            if is_lbcast(dst) || local_mc {
                return on_oif(
                    broadcast_kind(dst),
                    oif,
                    format!("{dst} with an output interface is sent on {oif} without a lookup"),
                );
            }
        }
        if let Some(src) = q.src.filter(|s| !s.is_unspecified()) {
            if is_v4_multicast(src) || is_lbcast(src) || is_zeronet(src) {
                return self.dropped(
                    RouteError::InvalidArgument,
                    format!("source {src} is multicast/broadcast/zero: invalid"),
                );
            }
            if !self.st.links.is_empty() && !self.is_local4(src) {
                self.check(format!(
                    "source {src} is not an address of this host: the kernel refuses to route it"
                ));
                return Verdict {
                    kind: VerdictKind::Unreachable,
                    ..self.dropped(
                        RouteError::NetworkUnreachable,
                        format!(
                            "locally generated packets may only use this host's addresses as source; \
                             {src} is not one (network unreachable)"
                        ),
                    )
                };
            }
        }
        if let (None, Some(src)) = (oif, q.src.filter(|s| !s.is_unspecified())) {
            if is_lbcast(dst) || is_v4_multicast(dst) {
                // `ip_route_output_key_hash_rcu`: with a source and no output interface,
                // limited broadcast and multicast leave through the source's own
                // interface, without a lookup.
                if let Some(dev) = self.dev_of4(src) {
                    return on_oif(
                        broadcast_kind(dst),
                        &dev,
                        format!(
                            "{dst} from {src}: sent on {dev}, the interface of its source, without a lookup"
                        ),
                    );
                }
            }
        }
        if dst.is_unspecified() {
            let mut v = Verdict::new(
                VerdictKind::Local,
                "0.0.0.0 is this host: delivered over lo",
            );
            v.interface = Some("lo".into());
            return v;
        }
        let flow = self.flow(q, "lo", oif);
        let opts = Opts {
            oif,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let loopback_src = q.src.is_some_and(is_loopback4);
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(f) => {
                if let Some(oif) = oif.filter(|o| *o != "lo" && loopback_src) {
                    return self.dropped(
                        RouteError::InvalidArgument,
                        format!("a 127.0.0.0/8 source may only leave via lo, not {oif}"),
                    );
                }
                if let Some(oif) = oif {
                    self.check(format!(
                        "lookup failed ({}), but an output interface is set: the kernel assumes {dst} is on-link on {oif}",
                        f.error.message()
                    ));
                    return on_oif(
                        VerdictKind::Unicast,
                        oif,
                        format!(
                            "no usable route via {oif} ({}); with an output interface the kernel \
                             sends on-link there anyway",
                            f.reason
                        ),
                    );
                }
                return self.failed(f);
            }
        };
        let route = hit.route;
        if route.kind == RouteKind::Local {
            return self.delivered(
                &hit,
                VerdictKind::Local,
                format!(
                    "{dst} is an address of this host ({}): delivered locally over lo",
                    route.text
                ),
            );
        }
        let hops = hit.hops.clone();
        let dev_is_lo = hops.first().and_then(|n| n.dev.as_deref()) == Some("lo");
        if q.src.is_some_and(is_loopback4) && !dev_is_lo {
            return self.dropped(
                RouteError::InvalidArgument,
                "a 127.0.0.0/8 source may only leave via lo",
            );
        }
        let kind = if is_lbcast(dst) {
            VerdictKind::Broadcast
        } else if is_v4_multicast(dst) {
            VerdictKind::Multicast
        } else if is_zeronet(dst) {
            return self.dropped(RouteError::InvalidArgument, "destination in 0.0.0.0/8");
        } else {
            match route.kind {
                RouteKind::Broadcast => VerdictKind::Broadcast,
                RouteKind::Multicast => VerdictKind::Multicast,
                RouteKind::Anycast => VerdictKind::Anycast,
                _ => VerdictKind::Unicast,
            }
        };
        let reason = Self::found_reason(&hit, &hops);
        self.found(&hit, kind, &hops, reason)
    }
}
