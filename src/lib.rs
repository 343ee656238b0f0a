//! symroute: one declarative file → correct, atomic, owned policy routing.
//!
//! The pipeline, one module per room:
//! `config` (TOML with spans) → `model` (validated, typed) → `plan` (desired kernel
//! state, a plain value, no I/O) → `kernel` (observe, diff, apply; the only module that
//! touches the host). `daemon` keeps the plan applied as the kernel changes (`symroute
//! run`). `lab` builds the seed topologies in network namespaces.

pub mod config;
pub mod daemon;
pub mod explain;
pub mod fuzz;
pub mod kernel;
pub mod lab;
pub mod model;
pub mod plan;
