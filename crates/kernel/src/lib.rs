//! The only module that touches the host: observe what the kernel holds, apply `Changes`,
//! read status, inside the network namespace the process entered (`netns::enter`).
//!
//! Rules, routes, links and addresses go over an rtnetlink socket (`netlink`): one dump
//! per table instead of one `ip` process each, and every rule or route change of a step
//! pipelined in one datagram with an ack per request, so errors still name the `ip`
//! command that does the same. nftables stays with `nft -f` (the only supported way to
//! build a transaction from text on nft 1.0.x hosts); reading our table's rule handles
//! (`nft_rules`) and conntrack entries by mark (`conntrack`) go over nfnetlink;
//! `iptables-save` stays a command-line tool: its output format is what we parse.

pub mod apply;
pub mod cgroup;
pub mod clock;
pub mod cmd;
pub mod confirm;
pub mod confirm_record;
pub mod conntrack;
pub mod listing;
pub mod marks;
pub mod netlink;
pub mod netns;
pub mod nft_rules;
pub mod noop;
pub mod observe;
pub mod plans;
pub mod process;
pub mod remove;
pub mod rundir;
pub mod snapshot;
pub mod state;
pub mod status;

pub use cmd::KernelError;
