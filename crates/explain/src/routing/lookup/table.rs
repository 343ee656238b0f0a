//! One table lookup (`fib_table_lookup` / `fib6_table_lookup`): longest prefix, then
//! IPv4 TOS and metric, or IPv6 metric and router preference, over live next hops.

use super::*;

impl<'s> Engine<'s> {
    pub(super) fn table(
        &self,
        family: Family,
        tables: &[u32],
        flow: &Flow,
        o: &Opts,
    ) -> TableResult<'s> {
        match family {
            Family::Inet4 => self.table4(tables, flow, o),
            Family::Inet6 => self.table6(tables, flow, o),
        }
    }

    /// `fib_table_lookup`: longest prefix first; within a prefix, TOS-specific routes
    /// first, then by metric; reject types answer at once (before any next-hop check);
    /// other routes need a next hop that is alive and, with an oif, on that device.
    pub(super) fn table4(&self, tables: &[u32], flow: &Flow, o: &Opts) -> TableResult<'s> {
        let st = self.st;
        let mut cands: Vec<&'s RouteEntry> = st
            .routes
            .iter()
            .filter(|r| {
                r.family == Family::Inet4 && tables.contains(&r.table) && r.dst.contains(&flow.dst)
            })
            .collect();
        cands.sort_by_key(|r| (Reverse(r.dst.prefix_len()), Reverse(r.tos), r.metric));
        for r in cands {
            if r.tos != 0 && r.tos != flow.tos & 0x1c {
                continue;
            }
            if scope_num(r) < o.min_scope {
                continue;
            }
            if r.kind == RouteKind::Other {
                continue;
            }
            if r.kind.is_reject() {
                return TableResult::Reject(r);
            }
            if !r.nexthops.is_empty() && r.nexthops.iter().all(|nh| self.nh_dead(nh)) {
                continue;
            }
            let alive: Vec<&'s NextHop> = r
                .nexthops
                .iter()
                .filter(|nh| self.nh_alive(Family::Inet4, nh, o.ignore_linkstate))
                .collect();
            if r.nexthops.is_empty() {
                if o.oif.is_none() {
                    return TableResult::Found(r, Vec::new());
                }
                continue;
            }
            let first = alive
                .iter()
                .find(|nh| o.oif.is_none_or(|oif| nh.dev.as_deref() == Some(oif)));
            let Some(first) = first else {
                continue;
            };
            let hops = if o.oif.is_some() {
                vec![*first]
            } else {
                alive.clone()
            };
            return TableResult::Found(r, hops);
        }
        TableResult::Miss
    }

    /// `fib6_table_lookup` + `fib6_select_path`: the trie nodes containing the
    /// destination, longest first; in a node the routes of the lowest metric are scored
    /// (device = oif: 2, router preference on top) and the first best wins; only when
    /// none of them is usable are the higher metrics considered; a node with nothing
    /// usable hands over to the next one. Reject routes sit on `lo` and compete like any
    /// other.
    ///
    /// Source-specific routes (`from PREFIX`) hang in a subtree of their destination
    /// node. The first descent (`fib6_node_lookup_1`) looks only into that subtree: a
    /// destination prefix with source-specific routes none of which matches the source
    /// is skipped *including its plain routes* (except `::/0`, the root, where the kernel
    /// falls back when the descent finds nothing). Those are only reached when
    /// backtracking (`fib6_backtrack`) after a matching node had nothing usable: the
    /// remaining (shorter) source nodes, then the prefix's plain routes, then the parents.
    ///
    /// Not visible in any output, so not modelled: when the plain routes of a prefix with
    /// a source subtree are deleted (an interface went down), the kernel's node keeps a
    /// leaf borrowed from a more specific prefix and then only reaches the subtree for
    /// destinations inside that prefix; for the others it falls back to shorter prefixes.
    pub(super) fn table6(&self, tables: &[u32], flow: &Flow, o: &Opts) -> TableResult<'s> {
        let st = self.st;
        let src = flow.src.unwrap_or(unspecified(Family::Inet6));
        let cands: Vec<&'s RouteEntry> = st
            .routes
            .iter()
            .filter(|r| {
                r.family == Family::Inet6
                    && tables.contains(&r.table)
                    && r.dst.contains(&flow.dst)
                    && r.kind != RouteKind::Other
            })
            .collect();
        let specific = |r: &RouteEntry| r.src.is_some_and(|s| s.prefix_len() > 0);
        let mut dsts: Vec<ipnet::IpNet> = cands.iter().map(|r| r.dst).collect();
        dsts.sort_by_key(|d| Reverse(d.prefix_len()));
        dsts.dedup();
        // The nodes in visiting order, each a list of routes in printed order.
        let mut nodes: Vec<Vec<&'s RouteEntry>> = Vec::new();
        for d in dsts {
            let at: Vec<&'s RouteEntry> = cands.iter().copied().filter(|r| r.dst == d).collect();
            let plain: Vec<&'s RouteEntry> = at.iter().copied().filter(|r| !specific(r)).collect();
            let has_subtree = at.iter().any(|r| specific(r));
            let mut srcs: Vec<ipnet::IpNet> = at
                .iter()
                .filter_map(|r| r.src.filter(|s| s.prefix_len() > 0 && s.contains(&src)))
                .collect();
            srcs.sort_by_key(|s| Reverse(s.prefix_len()));
            srcs.dedup();
            // The first descent skips this prefix entirely — except the root (::/0):
            // when the descent finds nothing the kernel falls back to the root node.
            if nodes.is_empty() && has_subtree && srcs.is_empty() && d.prefix_len() > 0 {
                continue;
            }
            for s in srcs {
                nodes.push(at.iter().copied().filter(|r| r.src == Some(s)).collect());
            }
            if !plain.is_empty() {
                nodes.push(plain);
            }
        }
        for mut group in nodes {
            group.sort_by_key(|r| r.metric);
            // Each next hop of a multipath route is its own sibling entry in the kernel.
            let entries: Vec<(&'s RouteEntry, Option<&'s NextHop>)> = group
                .iter()
                .flat_map(|r| {
                    if r.nexthops.is_empty() {
                        vec![(*r, None)]
                    } else {
                        r.nexthops.iter().map(|nh| (*r, Some(nh))).collect()
                    }
                })
                .collect();
            let Some(m0) = entries.first().map(|(r, _)| r.metric) else {
                continue;
            };
            let pick = |same: bool| {
                let mut best: Option<(u32, (&'s RouteEntry, Option<&'s NextHop>))> = None;
                for e in entries.iter().filter(|(r, _)| (r.metric == m0) == same) {
                    if let Some(s) = self.score6(e.0, e.1, o) {
                        if best.is_none_or(|(b, _)| s > b) {
                            best = Some((s, *e));
                        }
                    }
                }
                best.map(|(_, e)| e)
            };
            let Some((r, nh)) = pick(true).or_else(|| pick(false)) else {
                continue;
            };
            if r.kind.is_reject() {
                return TableResult::Reject(r);
            }
            let hops: Vec<&'s NextHop> = if r.nexthops.len() > 1 {
                r.nexthops
                    .iter()
                    .filter(|h| {
                        self.nh_alive(Family::Inet6, h, o.ignore_linkstate)
                            && (!o.strict || o.oif.is_none_or(|oif| h.dev.as_deref() == Some(oif)))
                    })
                    .collect()
            } else {
                nh.into_iter().collect()
            };
            return TableResult::Found(r, hops);
        }
        TableResult::Miss
    }

    /// `find_match`/`rt6_score_route`: `None` when unusable.
    pub(super) fn score6(&self, r: &RouteEntry, nh: Option<&NextHop>, o: &Opts) -> Option<u32> {
        let dev = nh.and_then(|n| n.dev.as_deref()).unwrap_or("lo");
        if let Some(nh) = nh {
            if !self.nh_alive(Family::Inet6, nh, o.ignore_linkstate) {
                return None;
            }
        }
        let m = if o.oif.is_none_or(|oif| oif == dev) {
            2
        } else {
            0
        };
        if m == 0 && o.strict {
            return None;
        }
        Some(m | (pref_bits(r.pref.as_deref()) << 2))
    }
}
