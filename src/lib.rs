//! symroute: one declarative file → correct, atomic, owned policy routing.
//!
//! The layers are crates (see docs/architecture.md):
//! `symroute-core` — `config` (TOML with spans) → `model` (validated, typed) → `plan`
//! (desired kernel state, a plain value, no I/O); `symroute-explain` — what a host does
//! with a packet and what is wrong with its setup, from its state as text (pure);
//! `symroute-kernel` — observe, diff, apply: the only code that touches the host.
//! This crate holds what runs on top: `daemon` keeps the plan applied as the kernel
//! changes (`symroute run`), `lab` builds the seed topologies in network namespaces, and
//! the CLI (`src/main.rs`). The layers are re-exported under their old paths so the
//! binary, the tests and the benches name them in one way.

pub use symroute_core::{config, fuzz, model, plan};
pub use symroute_explain as explain;
pub use symroute_kernel as kernel;

pub mod config_file;
pub mod daemon;
pub mod lab;
