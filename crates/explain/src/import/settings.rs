//! `[settings]`: symroute's mark bits, priorities and tables moved out of the way of what
//! stays on the host.

use std::ops::Range;

use super::*;

/// symroute's default mark mask (README: coexistence defaults).
pub(super) const DEFAULT_MASK: u32 = 0xff00_0000;
const DEFAULT_FIRST_TABLE: u32 = 42000;
pub(super) const DEFAULT_FIRST_PRIORITY: u32 = 3000;
/// Bits other tools are known to use (Tailscale, kube-proxy, wg-quick): avoided when the
/// default mask has to move.
const WELL_KNOWN_BITS: u32 = 0x00ff_0000 | 0x0000_c000 | 0x0000_ca6c;

impl<'h> Cx<'h> {
    /// `[settings]` text when the defaults collide with what stays on the host ("" if not).
    pub(super) fn settings(&mut self, body: &str) -> String {
        let Ok(model) = symroute_core::config::parse_str(body, "import") else {
            return String::new();
        };
        // A moved mask comes with ids 1..=n (see `Cx::explicit_ids`): values up to 2n, and
        // the divert's top value above them.
        let needed = 2 * model.gateways.len() as u32 + 1;
        let mut lines = String::new();
        if self.kept_bits & DEFAULT_MASK != 0 {
            if let Some(mask) = choose_mask(self.kept_bits, needed) {
                let from: Vec<String> = self
                    .kept_bits_from
                    .iter()
                    .filter(|(_, b)| b & DEFAULT_MASK != 0)
                    .take(3)
                    .map(|(w, _)| w.clone())
                    .collect();
                lines += &wrap(
                    &format!(
                        "mark_mask: what stays on this host uses mark bits {:#010x}, inside symroute's default mask 0xff000000 (e.g. {}); {:#010x} is free and holds the {needed} value(s) this file needs.",
                        self.kept_bits & DEFAULT_MASK,
                        from.join("; "),
                        mask
                    ),
                    "# ",
                );
                let _ = writeln!(lines, "mark_mask = \"{mask:#010x}\"");
                self.mask = mask;
            } else {
                lines += &wrap(
                    &format!(
                        "mark_mask: what stays on this host uses mark bits {:#010x}, inside symroute's default mask, and no other run of free bits holds {needed} values; the default is kept and `symroute apply` will name the conflicting rules.",
                        self.kept_bits & DEFAULT_MASK
                    ),
                    "# ",
                );
            }
        }
        // Priorities and tables of what stays, with the mask chosen (tables depend on it).
        let model = if self.mask == DEFAULT_MASK {
            model
        } else {
            match symroute_core::config::parse_str(
                &format!("[settings]\nmark_mask = \"{:#010x}\"\n{body}", self.mask),
                "import",
            ) {
                Ok(m) => m,
                Err(_) => model,
            }
        };
        let plan = symroute_core::plan::build(&model, &self.host.host_view());
        let kept_prios: BTreeSet<u32> = self
            .rules_left()
            .filter(|r| !r.is_default() && !Self::ours(&r.protocol))
            .map(|r| r.priority)
            .collect();
        let kept_tables: BTreeSet<u32> = self
            .routes_left()
            .filter(|r| !Self::ours(&r.protocol))
            .map(|r| r.table)
            .collect();
        // The spans symroute may use (`plan::alloc`): fixed priority slots, and a table per
        // gateway id the mask holds plus the divert's.
        let np = symroute_core::plan::alloc::SLOTS;
        let nt = symroute_core::plan::alloc::id_max(model.settings.mark_mask) + 1;
        // (`fallback_priority` lies after main, apart from the slots: not moved by this.)
        if plan
            .priorities
            .iter()
            .any(|p| p.get() < 32766 && kept_prios.contains(&p.get()))
        {
            if let Some(p) = first_free(&kept_prios, DEFAULT_FIRST_PRIORITY..32000 - 600, 100, np) {
                lines += &wrap(
                    &format!("first_priority: rules that stay on this host use priorities in symroute's default range {DEFAULT_FIRST_PRIORITY}+; {p}+ is free."),
                    "# ",
                );
                let _ = writeln!(lines, "first_priority = {p}");
            }
        }
        if plan.tables.iter().any(|t| kept_tables.contains(&t.id())) {
            if let Some(t) =
                first_free(&kept_tables, DEFAULT_FIRST_TABLE..u32::MAX - 1024, 1000, nt)
            {
                lines += &wrap(
                    &format!("first_table: routes that stay on this host use tables in symroute's default range {DEFAULT_FIRST_TABLE}+; {t}+ is free."),
                    "# ",
                );
                let _ = writeln!(lines, "first_table = {t}");
            }
        }
        if lines.is_empty() {
            String::new()
        } else {
            format!("[settings]\n{lines}")
        }
    }
}

/// The first start in `starts` (every `step`) whose `n` values, and room for 16 more to
/// grow into, are all clear of `kept`.
fn first_free(kept: &BTreeSet<u32>, starts: Range<u32>, step: usize, n: u32) -> Option<u32> {
    starts
        .step_by(step)
        .find(|s| (*s..s + n + 16).all(|x| !kept.contains(&x)))
}

/// A contiguous mask avoiding `used`, holding `needed` values: within the default mask's
/// bits first (widest, then highest), then anywhere away from other tools' known bits,
/// then anywhere.
pub(super) fn choose_mask(used: u32, needed: u32) -> Option<u32> {
    let min_w = (1..=32u32).find(|w| (1u64 << w) > u64::from(needed))?;
    for avoid in [used | !DEFAULT_MASK, used | WELL_KNOWN_BITS, used] {
        for w in (min_w..=8.max(min_w)).rev() {
            for low in (0..=(32 - w)).rev() {
                let mask = (((1u64 << w) - 1) << low) as u32;
                if mask & avoid == 0 {
                    return Some(mask);
                }
            }
        }
    }
    None
}
