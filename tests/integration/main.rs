//! The end-to-end tests, one binary (as ripgrep does): each former `tests/NAME.rs` is a
//! module here, so the crate and its dependencies are linked once instead of once per
//! file. Run one file's tests with `cargo test --test integration NAME::` (a test:
//! `cargo test --test integration NAME::TEST -- --exact`). Shared helpers are in
//! `tests/support`.
//!
//! Most tests need root: they build network namespaces (`sudo scripts/test`).

#[path = "../support/mod.rs"]
mod support;

mod classify_kernel;
mod classify_props;
mod cli_docs;
mod coexist_networkd;
mod coexist_nftables;
mod config_errors;
mod config_files;
mod confirm;
mod contrib_files;
mod daemon;
mod daemon_abuse;
mod daemon_health;
mod daemon_metrics;
mod daemon_ops;
mod doctor;
mod doctor_live;
mod e2e_lifecycle;
mod e2e_local_owner;
mod e2e_local_replies;
mod e2e_seeds;
mod e2e_share;
mod examples;
mod explain_live;
mod explain_netfilter_kernel;
mod explain_routing_kernel;
mod foreign_names;
mod ha_pair;
mod import;
mod import_live;
mod journald;
mod lab_cli;
mod locks_and_files;
mod netlink_kernel;
mod no_panic;
mod noop_apply;
mod package;
mod plan_snapshots;
mod shorewall_live;
mod status_no_config;
mod systemd_sandbox;
mod systemd_unit;
mod table_names_live;
