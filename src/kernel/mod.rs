//! The only module that touches the host: observe what the kernel holds, apply `Changes`,
//! read status. Everything is driven through iproute2 (`ip -batch`, `ip -j`) and nftables
//! (`nft -f`, `nft -j`), one process per step and batched, inside the network namespace
//! the process entered (`netns::enter`).
//!
//! Why the tools and not netlink sockets from Rust: `nft` is the only supported way to
//! build an nftables transaction from text on nft 1.0.x hosts, and `ip -batch` gives the
//! same one-process batching for rules and routes with error messages our users already
//! know from their own scripts. Both are in every distribution that has the kernel features.

pub mod apply;
pub mod cmd;
pub mod marks;
pub mod netns;
pub mod observe;
pub mod snapshot;
pub mod state;
pub mod status;

pub use cmd::KernelError;
