//! Where each decision lives: mark values, tables and rule priorities. Each follows from
//! the gateway's id alone, never from its position in the file, so a connection's mark
//! keeps its meaning when gateways or policies are added, removed or reordered, across a
//! reload, and between the two boxes of an HA pair whose conntrack tables are synced.
//!
//! - Gateway id `N` owns mark values `2N-1` (reply decisions) and `2N` (route decisions)
//!   inside the mask, and table `first_table + N - 1`. `id = N` (1-based, as files list
//!   gateways) therefore gives the values a gateway had in position `N` before ids
//!   existed.
//! - Ids run from 1 to [`id_max`], `(capacity - 1) / 2`: 127 with the default mask.
//! - Without `id`, a gateway's id is [`default_id`]: `1 + FNV-1a(name) mod id_max`. Two
//!   gateways that land on the same id are a config error naming both (a stable rule has
//!   no way to move one of them aside that would not move it again when the file
//!   changes); `id = N` on either settles it.
//! - The divert owns the mask's top value (`capacity`, which no gateway id reaches) and
//!   table `first_table + id_max`.
//! - Rule priorities are fixed slots, not one per gateway: `first_priority` the skip rule
//!   (undecided packets jump to the end marker), `+2` diverts and the route decisions'
//!   skip past the reply rules, `+3` every reply rule, `+4` main without its default
//!   route, `+5` every route rule, `+8` a `nop` the skip rule lands on (`+1`, `+6` and `+7`
//!   are kept free: they held rules in an earlier layout, and leaving them keeps every
//!   other rule's priority). Rules that share a priority match disjoint marks, so their
//!   order within it does not matter.
//! - The local replies' `from ADDRESS lookup TABLE` rules sit at `fallback_priority`
//!   (32800 unless set), after main (32766) and default (32767): they act only when
//!   nothing else — main, or any rule of the host's own (wg-quick, Tailscale, a hand-made
//!   uplink) — routes the packet.
//! - Route decisions are the even values and every other decision is odd (the top value
//!   of a contiguous mask is odd): one `ip rule` on the mask's lowest bit tells them
//!   apart.

use crate::model::{GatewayId, GatewayIdx, Mark, MarkMask, Model, Name, Priority, TableId};

/// The highest gateway id the mask holds (two values per id, the top value kept for
/// diverts): 127 with 0xff000000, 0 with a one-bit mask.
pub fn id_max(mask: MarkMask) -> u32 {
    (mask.capacity() - 1) / 2
}

/// The id of a gateway named `name` that has no `id = N`: `1 + FNV-1a(name) mod id_max`.
/// `None` when the mask holds no gateway at all.
pub fn default_id(name: &Name, mask: MarkMask) -> Option<GatewayId> {
    let max = id_max(mask);
    if max == 0 {
        return None;
    }
    GatewayId::new(1 + fnv1a32(name.as_str()) % max, max)
}

/// FNV-1a, 32 bit. Written here because it is 6 lines and must never change between
/// builds or Rust releases (std's `DefaultHasher` may): every default id depends on it.
fn fnv1a32(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

pub fn reply_mark(model: &Model, gw: GatewayIdx) -> Mark {
    value(model, 2 * model.gateway(gw).id.get() - 1)
}

pub fn route_mark(model: &Model, gw: GatewayIdx) -> Mark {
    value(model, 2 * model.gateway(gw).id.get())
}

pub fn divert_mark(model: &Model) -> Mark {
    let mask = model.settings.mark_mask;
    value(model, mask.capacity())
}

fn value(model: &Model, n: u32) -> Mark {
    // `config` refused every id above `id_max`, so 2 * id < capacity.
    model
        .settings
        .mark_mask
        .value(n)
        .expect("validated model fits its mark mask")
}

pub fn gateway_table(model: &Model, gw: GatewayIdx) -> TableId {
    table(model, model.gateway(gw).id.get() - 1)
}

pub fn divert_table(model: &Model) -> TableId {
    table(model, id_max(model.settings.mark_mask))
}

/// The last table the settings may allocate (`first_table + id_max`), if it exists.
pub fn last_table(first: TableId, mask: MarkMask) -> Option<u32> {
    first.id().checked_add(id_max(mask))
}

fn table(model: &Model, offset: u32) -> TableId {
    // `config` keeps first_table ..= first_table + id_max clear of 253-255 and of 2^32.
    TableId::new(model.settings.first_table.id() + offset).expect("validated table range")
}

/// The fixed priority slots after `first_priority` (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Skip,
    Divert,
    /// `fwmark 0/LOWEST_BIT goto` main without its default: route decisions (even values)
    /// past the reply rules. Shares the divert's priority: the divert's value is odd.
    RouteSkip,
    Reply,
    MainWithoutDefault,
    Route,
    /// `nop`: where the skip rule lands (rules of one kind share a priority, so a `goto`
    /// to the last of them would walk them all).
    End,
}

/// How many priorities the slots span from `first_priority`.
pub const SLOTS: u32 = 9;

/// How many priorities `plan::build` uses for `model` at most (each distinct): the skip
/// rule's and the end marker's always, the divert's (or the route skip's, from 3 reply
/// gateways taking route decisions), main without its default and the route rules' (with
/// route decisions: route_via, or `symroute exec` for any gateway, whose rules appear
/// while its cgroup exists), and with reply_via the reply rules' and the `from` rules'
/// (at `fallback_priority`).
pub fn priorities_needed(model: &Model) -> usize {
    let n = model.gateways.len();
    let replies = (0..n).filter(|&i| model.replies_via(GatewayIdx(i))).count();
    let route = n > 0;
    let route_skip = replies >= 3 && route;
    2 + usize::from(!model.diverts.is_empty() || route_skip)
        + if replies > 0 { 2 } else { 0 }
        + if route { 2 } else { 0 }
}

pub fn priority(model: &Model, slot: Slot) -> Priority {
    let offset = match slot {
        Slot::Skip => 0,
        Slot::Divert | Slot::RouteSkip => 2,
        Slot::Reply => 3,
        Slot::MainWithoutDefault => 4,
        Slot::Route => 5,
        Slot::End => 8,
    };
    // `config` keeps first_priority + SLOTS below main's 32766.
    Priority::new(model.settings.first_priority.get() + offset).expect("validated priority range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    /// Pinned: changing the hash or the formula would change every default mark in the
    /// field at the next upgrade. These values are documented in the README.
    #[test]
    fn default_ids_are_pinned() {
        let mask = MarkMask::new(0xff00_0000).unwrap();
        let ids: Vec<u32> = ["isp1", "isp2", "isp3", "wan", "lte"]
            .iter()
            .map(|n| default_id(&name(n), mask).unwrap().get())
            .collect();
        assert_eq!(ids, [26, 123, 93, 53, 66]);
        assert_eq!(id_max(mask), 127);
        assert_eq!(id_max(MarkMask::new(0x00f0_0000).unwrap()), 7);
        assert_eq!(id_max(MarkMask::new(0x8000_0000).unwrap()), 0);
        assert!(default_id(&name("isp1"), MarkMask::new(0x8000_0000).unwrap()).is_none());
    }

    const GWS: [&str; 3] = [
        "[[gateway]]\nname=\"isp1\"\ninterface=\"up1\"\nvia=\"192.0.2.1\"\n",
        "[[gateway]]\nname=\"isp2\"\ninterface=\"up2\"\nvia=\"192.0.2.2\"\n",
        "[[gateway]]\nname=\"lte\"\ninterface=\"wwan0\"\n",
    ];
    const POLICIES: [&str; 2] = [
        "[[policy]]\nname=\"in1\"\nreply_via=\"isp1\"\n[policy.match]\nin_interface=\"up1\"\n",
        "[[policy]]\nname=\"out\"\nroute_via=[\"isp2\",\"isp1\",\"lte\"]\n",
    ];

    /// Each gateway's (name, reply mark, route mark, table).
    fn map(order: &[usize], policies: &[usize], extra: &str) -> Vec<(String, u32, u32, u32)> {
        let mut text = String::from(extra);
        for i in order {
            text += GWS[*i];
        }
        for i in policies {
            text += POLICIES[*i];
        }
        let m = parse_str(&text, "t.toml").expect("valid");
        let mut out: Vec<_> = m
            .gateways_indexed()
            .map(|(i, g)| {
                (
                    g.name.to_string(),
                    reply_mark(&m, i).bits(),
                    route_mark(&m, i).bits(),
                    gateway_table(&m, i).id(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn marks_and_tables_do_not_depend_on_order_or_on_other_gateways() {
        let all = map(&[0, 1, 2], &[0, 1], "");
        assert_eq!(
            all,
            [
                ("isp1".into(), 0x3300_0000, 0x3400_0000, 42025),
                ("isp2".into(), 0xf500_0000, 0xf600_0000, 42122),
                ("lte".into(), 0x8300_0000, 0x8400_0000, 42065),
            ]
        );
        assert_eq!(map(&[2, 0, 1], &[1, 0], ""), all, "reordered");
        // A gateway removed: the others keep their values.
        let without_lte = map(&[1, 0], &[0], "");
        assert_eq!(without_lte, all[..2]);
        // Policies removed: same.
        assert_eq!(map(&[0, 1, 2], &[], ""), all);
    }

    #[test]
    fn id_gives_the_values_of_that_position_before_ids_existed() {
        let text = format!("{}id = 1\n{}id = 2\n", GWS[0], GWS[1]);
        let m = parse_str(&text, "t.toml").expect("valid");
        let got: Vec<_> = m
            .gateways_indexed()
            .map(|(i, _)| {
                (
                    reply_mark(&m, i).bits(),
                    route_mark(&m, i).bits(),
                    gateway_table(&m, i).id(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0x0100_0000, 0x0200_0000, 42000),
                (0x0300_0000, 0x0400_0000, 42001)
            ]
        );
        assert_eq!(divert_table(&m).id(), 42127);
        assert_eq!(divert_mark(&m).bits(), 0xff00_0000);
    }

    #[test]
    fn priority_slots_are_fixed() {
        let m = parse_str(GWS[0], "t.toml").unwrap();
        let p: Vec<u32> = [
            Slot::Skip,
            Slot::Divert,
            Slot::RouteSkip,
            Slot::Reply,
            Slot::MainWithoutDefault,
            Slot::Route,
            Slot::End,
        ]
        .map(|s| priority(&m, s).get())
        .into();
        assert_eq!(p, [3000, 3002, 3002, 3003, 3004, 3005, 3008]);
        assert!(p.iter().all(|&x| x < 3000 + SLOTS));
    }
}
