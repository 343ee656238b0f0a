//! Rules, routes, links and addresses over rtnetlink: `socket` talks to the kernel,
//! `convert` turns symroute's values into messages and back (pure, tested without root).
//! The socket helpers also serve `kernel::conntrack` (ctnetlink).

pub mod convert;
mod socket;

pub use socket::{close_nfnetlink_in_background, Netlink, Request};
pub(crate) use socket::{dump_raw, encode, request_acked, request_answered, NfSocket};
