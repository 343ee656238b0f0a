//! symroute-explain: what any host does with a packet, and what is wrong with its
//! policy routing, computed from its state as text (live or a snapshot). Pure: the state
//! is read by symroute-kernel or given as files; nothing here touches the host.

pub mod doctor;
pub mod host;
pub mod import;
pub use symroute_core::inert;
pub mod marks;
pub mod netfilter;
pub mod routing;
pub mod trace;
