//! IPv4 arriving packets (`ip_route_input_slow`): interface and martian checks,
//! broadcast, local delivery and forwarding.

use super::*;

impl<'s> Engine<'s> {
    /// The arrival interface must exist (when links are known); a down one is noted.
    pub(super) fn check_iif(&mut self, iif: &str) -> Option<Verdict> {
        if !self.st.links.is_empty() && !self.st.links.contains_key(iif) {
            return Some(self.dropped(
                RouteError::NoSuchDevice,
                format!("iif {iif}: no such interface"),
            ));
        }
        if self.st.links.get(iif).is_some_and(|l| !l.up) {
            self.check(format!(
                "iif {iif} is down: no packet can arrive there; routing it as if it did"
            ));
        }
        None
    }

    /// `ip_route_input_slow`.
    pub(super) fn input4(&mut self, q: &Query, iif: &str) -> Verdict {
        if let Some(v) = self.check_iif(iif) {
            return v;
        }
        let src = q.src.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let dst = q.dst;
        let martian_src = |e: &mut Self, why: String| {
            e.check(format!("martian source: {why}"));
            e.dropped(
                RouteError::InvalidArgument,
                format!("martian source: {why}"),
            )
        };
        let martian_dst = |e: &mut Self, why: String| {
            e.check(format!("martian destination: {why}"));
            e.dropped(
                RouteError::InvalidArgument,
                format!("martian destination: {why}"),
            )
        };
        if is_v4_multicast(dst) {
            return Verdict {
                kind: VerdictKind::Multicast,
                ..self.dropped(
                    RouteError::InvalidArgument,
                    "multicast input (group membership, multicast routing) is not modelled",
                )
            };
        }
        if is_v4_multicast(src) || is_lbcast(src) {
            return martian_src(self, format!("{src} is multicast/broadcast"));
        }
        if is_lbcast(dst) || (src.is_unspecified() && dst.is_unspecified()) {
            return self.broadcast_input4(q, iif, src, None);
        }
        if is_zeronet(src) {
            return martian_src(self, format!("{src} is in 0.0.0.0/8 (no source given?)"));
        }
        if is_zeronet(dst) {
            return martian_dst(self, format!("{dst} is in 0.0.0.0/8"));
        }
        let localnet = self.orconf4(iif, "route_localnet", 0);
        if is_loopback4(dst) && !localnet {
            return martian_dst(self, format!("{dst} is loopback (route_localnet=0)"));
        }
        if is_loopback4(src) && !is_loopback4(dst) && !localnet {
            return martian_src(self, format!("{src} is loopback (route_localnet=0)"));
        }
        let flow = self.flow(q, iif, None);
        let opts = Opts {
            oif: None,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let forwarding = self.forwarding4(iif);
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(mut f) => {
                if !forwarding {
                    self.check(format!(
                        "no route ({}), and forwarding is off on {iif}: the kernel answers host unreachable",
                        f.error.message()
                    ));
                    f.error = RouteError::HostUnreachable;
                    f.kind = VerdictKind::Unreachable;
                    f.reason = format!(
                        "{}; forwarding is off on {iif} (net.ipv4.conf.{iif}.forwarding=0), so host unreachable",
                        f.reason
                    );
                }
                return self.failed(f);
            }
        };
        let route = hit.route;
        match route.kind {
            RouteKind::Broadcast if !self.orconf4(iif, "bc_forwarding", 0) => {
                return self.broadcast_input4(q, iif, src, Some(&hit));
            }
            RouteKind::Local => {
                return match self.validate_source4(q, src, Some(dst), None, iif) {
                    Ok(()) => self.delivered(
                        &hit,
                        VerdictKind::Local,
                        format!("{dst} is an address of this host: delivered locally"),
                    ),
                    Err(why) => self.dropped(RouteError::InvalidArgument, why),
                };
            }
            _ => {}
        }
        if !forwarding {
            self.check(format!(
                "{dst} is not local and forwarding is off on {iif}: the kernel answers host unreachable"
            ));
            return Verdict {
                kind: VerdictKind::Unreachable,
                table: Some(route.table),
                rule: hit.rule,
                route: Some(route.text.clone()),
                ..self.dropped(
                    RouteError::HostUnreachable,
                    format!(
                        "{dst} would be forwarded, but forwarding is off on {iif} \
                         (net.ipv4.conf.{iif}.forwarding=0): host unreachable"
                    ),
                )
            };
        }
        if route.kind != RouteKind::Unicast && route.kind != RouteKind::Broadcast {
            return martian_dst(
                self,
                format!(
                    "the route to {dst} is {} (only unicast is forwarded)",
                    route.kind.name()
                ),
            );
        }
        let hops = hit.hops.clone();
        let mut pass = Vec::new();
        let mut fail = Vec::new();
        let mut first_err: Option<String> = None;
        for nh in &hops {
            match self.validate_source4(q, src, Some(dst), nh.dev.as_deref(), iif) {
                Ok(()) => pass.push(*nh),
                Err(why) => {
                    first_err.get_or_insert(why);
                    fail.push(*nh);
                }
            }
        }
        if pass.is_empty() {
            let why = first_err.unwrap_or_else(|| "route has no next hop".into());
            return Verdict {
                table: Some(route.table),
                rule: hit.rule,
                route: Some(route.text.clone()),
                ..self.dropped(RouteError::InvalidArgument, why)
            };
        }
        let reason = format!("forwarded: {}", Self::found_reason(&hit, &pass));
        let mut v = self.found(&hit, VerdictKind::Unicast, &pass, reason);
        if !fail.is_empty() {
            v.reason.push_str(&format!(
                "; rp_filter drops the packet if the hash picks {}",
                Self::describe_hops(&fail)
            ));
            let mut alt = self.found(
                &hit,
                VerdictKind::Drop,
                &fail,
                first_err.unwrap_or_default(),
            );
            alt.error = Some(RouteError::InvalidArgument);
            v.alternatives.push(alt);
        }
        v
    }

    pub(super) fn broadcast_input4(
        &mut self,
        q: &Query,
        iif: &str,
        src: IpAddr,
        hit: Option<&Hit>,
    ) -> Verdict {
        if !src.is_unspecified() {
            if let Err(why) = self.validate_source4(q, src, None, None, iif) {
                return self.dropped(RouteError::InvalidArgument, why);
            }
        }
        Verdict {
            kind: VerdictKind::Broadcast,
            interface: Some("lo".into()),
            via: None,
            table: hit.map(|h| h.table()),
            rule: hit.and_then(|h| h.rule),
            route: hit.map(|h| h.route.text.clone()),
            candidates: Vec::new(),
            alternatives: Vec::new(),
            error: None,
            reason: format!("{} is a broadcast address: received locally", q.dst),
        }
    }
}
