//! symroute's pure core: `config` (TOML with spans) → `model` (validated, typed) → `plan`
//! (the complete kernel state symroute wants, a plain value). Nothing here performs I/O
//! beyond reading the config file; no I/O crate is a dependency, so the compiler keeps it
//! that way.

pub mod config;
pub mod fuzz;
pub mod inert;
pub mod model;
pub mod plan;
