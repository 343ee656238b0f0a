//! Where each decision lives: mark values, tables and rule priorities, derived from the
//! gateway's position in the file so they stay stable while policies come and go.
//!
//! Gateway `i` (0-based) owns mark values `2i+1` (reply decisions) and `2i+2` (route
//! decisions) inside the mask, and table `first_table + i`. Diverts share the mask's top
//! value and the table after the gateways'. So route decisions are the even values and
//! every other decision is odd (the top value of a contiguous mask is odd): one `ip rule`
//! on the mask's lowest bit tells them apart.

use crate::model::{GatewayIdx, Mark, Model, TableId};

/// How many mark values the model needs at most (checked against the mask's capacity).
pub fn values_needed(model: &Model) -> usize {
    2 * model.gateways.len() + usize::from(!model.diverts.is_empty())
}

/// How many rule priorities `plan::build` takes from `first_priority` on, at most: the
/// skip rule, the diverts', the route decisions' skip past the reply rules (3 reply
/// gateways and route decisions), one per reply gateway, main without its default and
/// one per gateway taking route decisions (any of them may: `symroute exec --gateway`),
/// the local copy of main and one per reply gateway again (their `from` rules).
pub fn priorities_needed(model: &Model) -> usize {
    let n = model.gateways.len();
    let reply = (0..n).filter(|&i| model.replies_via(GatewayIdx(i))).count();
    let route = n;
    1 + usize::from(!model.diverts.is_empty())
        + usize::from(reply >= 3 && route > 0) // route decisions skip the reply rules
        + usize::from(reply > 0) // the skip rule for forwarded packets, beside local ones
        + reply
        + if route > 0 { 1 + route } else { 0 }
        + if reply > 0 { 1 + reply } else { 0 }
}

pub fn reply_mark(model: &Model, gw: GatewayIdx) -> Mark {
    value(model, 2 * gw.index() as u32 + 1)
}

pub fn route_mark(model: &Model, gw: GatewayIdx) -> Mark {
    value(model, 2 * gw.index() as u32 + 2)
}

pub fn divert_mark(model: &Model) -> Mark {
    let mask = model.settings.mark_mask;
    value(model, mask.capacity())
}

fn value(model: &Model, n: u32) -> Mark {
    // `config::check_capacity` refused every model whose values don't fit.
    model
        .settings
        .mark_mask
        .value(n)
        .expect("validated model fits its mark mask")
}

pub fn gateway_table(model: &Model, gw: GatewayIdx) -> TableId {
    table(model, gw.index() as u32)
}

pub fn divert_table(model: &Model) -> TableId {
    table(model, model.gateways.len() as u32)
}

fn table(model: &Model, offset: u32) -> TableId {
    // `config::validate_settings` keeps first_table far enough from 253-255 and 2^32.
    TableId::new(model.settings.first_table.id() + offset).expect("validated table range")
}
