//! IPv4 source validation (`fib_validate_source`): rp_filter's reverse lookup of the
//! source address.

use super::*;

impl<'s> Engine<'s> {
    /// `fib_validate_source`: rp_filter and the source-address sanity checks of the input
    /// path. `oif` is the forward route's device (`None` for local delivery).
    pub(super) fn validate_source4(
        &mut self,
        q: &Query,
        src: IpAddr,
        dst: Option<IpAddr>,
        oif: Option<&str>,
        iif: &str,
    ) -> Result<(), String> {
        let rpf = self.rp_filter(iif);
        let accept_local = self.orconf4(iif, "accept_local", 0);
        let redirects = self.orconf4(iif, "send_redirects", 1);
        if rpf == 0 && (oif != Some(iif) || !redirects) {
            if accept_local {
                return Ok(());
            }
            if !self.custom_rules4() && !self.custom_local_routes4() {
                if self.is_configured(src) {
                    let why = format!(
                        "source {src} is one of this host's own addresses (accept_local=0): martian source"
                    );
                    self.check(why.clone());
                    return Err(why);
                }
                return Ok(());
            }
        }
        let saved = self.stage;
        self.stage = Stage::RpFilter;
        let result = self.reverse_lookup4(q, src, dst, oif, iif, rpf, accept_local);
        self.stage = saved;
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn reverse_lookup4(
        &mut self,
        q: &Query,
        src: IpAddr,
        dst: Option<IpAddr>,
        oif: Option<&str>,
        iif: &str,
        rpf: i64,
        accept_local: bool,
    ) -> Result<(), String> {
        let src_valid_mark = self.orconf4(iif, "src_valid_mark", 0);
        let mark = if src_valid_mark { q.mark } else { 0 };
        let rev_iif = oif.unwrap_or("lo");
        self.step(
            None,
            true,
            format!(
                "reverse lookup of {src} (rp_filter={rpf} on {iif}): iif {rev_iif}, mark {mark:#x}{}",
                if src_valid_mark || q.mark == 0 {
                    ""
                } else {
                    " (src_valid_mark=0: the packet's mark is not used)"
                }
            ),
        );
        let flow = Flow {
            family: Family::Inet4,
            src: dst.filter(|d| !d.is_unspecified()),
            dst: src,
            iif: rev_iif,
            oif: None,
            mark,
            proto: q.ipproto.unwrap_or(0),
            sport: q.dport.unwrap_or(0),
            dport: q.sport.unwrap_or(0),
            tos: q.tos,
        };
        let opts = Opts {
            oif: None,
            strict: false,
            ignore_linkstate: false,
            min_scope: 0,
        };
        let hit = match self.fib_lookup(&flow, &opts) {
            Ok(h) => h,
            Err(f) => {
                if rpf != 0 {
                    let why = format!(
                        "rp_filter: no route back to {src} ({}), so the source is not reachable via {iif}",
                        f.error.message()
                    );
                    self.step(None, true, why.clone());
                    return Err(why);
                }
                return Ok(());
            }
        };
        let kind = hit.route.kind;
        if kind != RouteKind::Unicast {
            if kind != RouteKind::Local {
                let why = format!(
                    "martian source: the route to {src} is {} ({})",
                    kind.name(),
                    hit.route.text
                );
                self.step(None, true, why.clone());
                return Err(why);
            }
            if !accept_local {
                let why =
                    format!("martian source: {src} is an address of this host (accept_local=0)");
                self.step(None, true, why.clone());
                return Err(why);
            }
        }
        let dev_match = hit
            .route
            .nexthops
            .iter()
            .any(|nh| nh.dev.as_deref() == Some(iif))
            || (kind == RouteKind::Local && iif == "lo");
        if dev_match {
            self.step(
                None,
                true,
                format!("the route back to {src} uses {iif}: source valid"),
            );
            return Ok(());
        }
        let back = Self::describe_hops(&hit.route.nexthops.iter().collect::<Vec<_>>());
        if !self.has_v4_addr(iif) {
            if rpf != 0 {
                let why = format!(
                    "rp_filter: {iif} has no IPv4 address, and the route back to {src} leaves {back}, not via {iif}"
                );
                self.step(None, true, why.clone());
                return Err(why);
            }
            return Ok(());
        }
        if rpf == 1 {
            let why = format!(
                "rp_filter (strict, 1): the route back to {src} leaves {back}, not via {iif}"
            );
            self.step(None, true, why.clone());
            return Err(why);
        }
        self.step(
            None,
            true,
            format!(
                "the route back to {src} leaves {back}, not via {iif}; {}",
                if rpf == 2 {
                    "loose rp_filter (2) only needs a route: source valid"
                } else {
                    "rp_filter off: source valid"
                }
            ),
        );
        Ok(())
    }
}
