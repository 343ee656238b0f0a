//! `symroute run`: the daemon (`symroute::daemon`).

use std::process::ExitCode;

use super::args::Scope;

/// Keep the policy applied: apply, then re-apply whenever the kernel changes.
///
/// Applies like `apply` (a gateway that is down is logged, not fatal; a bad config
/// exits 2, conflicts exit 1), then watches links, addresses, routes, rules, rp_filter
/// and nftables and re-applies symroute's own difference within ~100 ms of a change.
/// Foreign objects are never touched: a conflict is logged and retried on the next
/// change. SIGHUP reloads the config (an invalid one is logged and the old one kept);
/// SIGTERM/SIGINT exit 0, leaving the policy applied unless --remove-on-exit.
/// `symroute status`, `apply` and `confirm` talk to it over a unix socket in
/// /run/symroute; `[settings] on_change` commands run on gateway up/down changes.
/// Speaks systemd's notify protocol and watchdog: see contrib/symroute.service.
///
/// Gateways with `[gateway.check]` are probed (ICMP echo or tcp:HOST:PORT, bound to
/// the gateway's interface and mark): by default one probe every 150 ms, lost after
/// 450 ms, down after 7 of the last 10 lost (~1.5 s), up after 5 good in a row. A
/// gateway that is down loses its routes (reply_via falls back to the main table),
/// `route_via` lists move new connections to the next usable gateway, and the dead
/// gateway's route_via connections are flushed from conntrack so they re-establish.
/// `[settings] metrics = "127.0.0.1"` serves Prometheus metrics (port 19469).
///
/// Try it: `symroute lab failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    scope: Scope,
    /// On SIGTERM/SIGINT, remove everything symroute made before exiting
    #[arg(long)]
    remove_on_exit: bool,
    /// What to log to stderr: a level (error, warn, info, debug, trace) or
    /// RUST_LOG-style TARGET=LEVEL pairs, e.g. symroute=debug,info
    #[arg(
        long,
        env = "SYMROUTE_LOG",
        value_name = "FILTER",
        default_value = "info",
        value_parser = symroute::daemon::log::parse_filter
    )]
    log_level: tracing_subscriber::filter::Targets,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    symroute::daemon::log::init(args.log_level);
    // Absolute: `status` reads it from wherever it runs.
    let path = std::path::absolute(args.scope.config.path())?;
    let model = args.scope.config.load_trusted()?;
    // Before any thread exists: threads and children inherit the namespace.
    args.scope.netns.enter()?;
    symroute::daemon::run(symroute::daemon::Options {
        config: path,
        model,
        netns: args.scope.netns.netns,
        remove_on_exit: args.remove_on_exit,
    })?;
    Ok(ExitCode::SUCCESS)
}
