//! Rules, routes, links and addresses over rtnetlink: `socket` talks to the kernel,
//! `convert` turns symroute's values into messages and back (pure, tested without root).

pub mod convert;
mod socket;

pub use socket::{Netlink, Request};
