//! IPv6 output and input routes (`ip6_route_output`, `ip6_route_input`): one rule walk
//! with strict interface matching, and forwarding.

use super::*;

impl<'s> Engine<'s> {
    /// `ip6_route_output`.
    pub(super) fn output6(&mut self, q: &Query) -> Verdict {
        let oif = q.oif.as_deref();
        if let Some(oif) = oif {
            if !self.st.links.is_empty() && !self.st.links.contains_key(oif) {
                return self.dropped(
                    RouteError::NoSuchDevice,
                    format!("oif {oif}: no such interface"),
                );
            }
        }
        let src = q.src.filter(|s| !s.is_unspecified());
        let strict = v6_need_strict(q.dst) || (oif.is_some() && src.is_none());
        if strict && oif.is_some() {
            self.check(format!(
                "oif {} without a source address: only routes through {} qualify",
                oif.unwrap_or(""),
                oif.unwrap_or("")
            ));
        }
        let flow = self.flow(q, "lo", oif);
        let opts = Opts {
            oif,
            strict,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let result = self.fib_lookup(&flow, &opts);
        self.v6_result(q, result, false)
    }

    pub(super) fn v6_result(
        &mut self,
        q: &Query,
        result: Result<Hit<'s>, Failure>,
        input: bool,
    ) -> Verdict {
        match result {
            Ok(mut hit) => {
                let alt = hit.alt.take();
                let mut v = self.v6_hit(q, &hit, input);
                if let Some(alt) = alt {
                    let other = self.v6_result(q, *alt, input);
                    v.alternatives.push(other);
                }
                v
            }
            Err(f) => self.failed(f),
        }
    }

    /// `ip6_route_input`: the lookup scores routes through the arrival interface higher
    /// (it is passed as the lookup's oif). There is no rp_filter for IPv6.
    pub(super) fn input6(&mut self, q: &Query, iif: &str) -> Verdict {
        if let Some(v) = self.check_iif(iif) {
            return v;
        }
        let flow = self.flow(q, iif, None);
        let opts = Opts {
            oif: Some(iif),
            strict: v6_need_strict(q.dst),
            ignore_linkstate: false,
            min_scope: 0,
        };
        let result = self.fib_lookup(&flow, &opts);
        self.v6_result(q, result, true)
    }

    pub(super) fn v6_hit(&mut self, q: &Query, hit: &Hit, input: bool) -> Verdict {
        let route = hit.route;
        match route.kind {
            RouteKind::Local => {
                return self.delivered(
                    hit,
                    VerdictKind::Local,
                    format!("{} is an address of this host: delivered locally", q.dst),
                )
            }
            RouteKind::Anycast => {
                return self.delivered(
                    hit,
                    VerdictKind::Anycast,
                    format!(
                        "{} is an anycast address of this host: delivered locally",
                        q.dst
                    ),
                )
            }
            _ => {}
        }
        let kind = match route.kind {
            RouteKind::Multicast => VerdictKind::Multicast,
            RouteKind::Broadcast => VerdictKind::Broadcast,
            _ => VerdictKind::Unicast,
        };
        let hops = hit.hops.clone();
        let reason = format!(
            "{}{}",
            if input { "forwarded: " } else { "" },
            Self::found_reason(hit, &hops)
        );
        let mut v = self.found(hit, kind, &hops, reason);
        if input && kind == VerdictKind::Unicast && !self.forwarding6() {
            self.check(
                "net.ipv6.conf.all.forwarding=0: ip6_forward drops the packet (route lookup still succeeds)",
            );
            v.kind = VerdictKind::Drop;
            v.reason = format!(
                "{}; but IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0): dropped in ip6_forward",
                v.reason
            );
        }
        v
    }
}
