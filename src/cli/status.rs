//! `symroute status`: gateways, policy counters and connections, with the daemon's live
//! view when one runs here.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use symroute::kernel;

use super::args::Scope;
use super::daemon;

/// Gateways, policy counters and live connections per gateway; with a running
/// `symroute run`, its live health (since, loss, round trip). Without -c, the
/// daemon's config. Also what each mark means here (compare it with the other box of an
/// HA pair: `symroute doctor --peer`), the HA role keepalived last reported, and a
/// pending or last `apply --confirm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    scope: Scope,
    /// Print as JSON (daemon.pid/.config/.started, gateways[].name/.state/.since/.loss/
    /// .rtt_ms/.connections, policies[].name/.gateways[]/.packets/.bytes,
    /// marks.gateways[].id/.reply_mark/.table and marks.digest, ha.role/.since_unix,
    /// confirm.pending.guard_pid/.deadline and confirm.last.ended/.at)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.scope.netns.enter()?;
    let live = daemon::status();
    // Without -c, the config the daemon runs.
    let m = match (&args.scope.config.config, &live) {
        (None, Some(l)) => symroute::config_file::load(std::path::Path::new(&l.daemon.config))?,
        _ => args.scope.config.load()?,
    };
    let st = kernel::status::status(&m, live.as_ref())?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &st)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{}",
        match (st.applied, st.matches_config) {
            (false, _) => "not applied (no nftables table inet symroute)",
            (true, true) => "applied, matches the config",
            (true, false) => "applied, but differs from the config: run `symroute plan`",
        }
    )?;
    match &live {
        Some(l) => writeln!(
            out,
            "daemon: pid {}, config {}, started {}; {}",
            l.daemon.pid, l.daemon.config, l.daemon.started, l.summary
        )?,
        None => writeln!(out, "daemon: not running in this namespace")?,
    }
    if let Some(h) = &st.ha {
        writeln!(
            out,
            "ha: {} (keepalived's last word, {}); dead gateways' connections are flushed {}",
            h.role,
            kernel::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(h.since_unix)),
            if h.role == kernel::state::HaRole::Master {
                "(a second after they go down)"
            } else {
                "only once this box is master"
            }
        )?;
    }
    if let Some(p) = &st.confirm.pending {
        writeln!(
            out,
            "pending: `apply --confirm` (guard pid {}); rolled back at {} unless `symroute confirm`",
            p.guard_pid, p.deadline
        )?;
    }
    if let Some(l) = &st.confirm.last {
        writeln!(
            out,
            "last `apply --confirm`: {} ({})",
            l.ended.describe(),
            l.at
        )?;
    }
    if let Some(p) = live.as_ref().and_then(|l| l.pending_confirm.as_ref()) {
        writeln!(
            out,
            "pending: `apply --confirm`; back to {} at {} unless `symroute confirm`",
            p.previous_config, p.deadline
        )?;
    }
    writeln!(out, "gateways:")?;
    for g in &st.gateways {
        writeln!(out, "  {}", daemon::gateway_line(g))?;
    }
    writeln!(out, "policies:")?;
    for p in &st.policies {
        writeln!(
            out,
            "  {:<20} {} {:<12} mark {}  {} packet(s) {} byte(s) classified",
            p.name,
            p.kind,
            kernel::status::describe_gateways(&p.gateways),
            p.mark,
            p.packets,
            p.bytes
        )?;
        for w in &p.waiting {
            writeln!(
                out,
                "  {:<20} waiting for cgroup {}: {}",
                "", w.cgroup, w.why
            )?;
        }
    }
    writeln!(
        out,
        "marks: mask {}, digest {} (`symroute doctor --peer` compares it with the other box of an HA pair)",
        st.marks.mask, st.marks.digest
    )?;
    for g in &st.marks.gateways {
        writeln!(
            out,
            "  {:<16} id {:<4} replies {:<10} routes {:<10} table {}",
            g.name,
            g.id,
            g.reply_mark.as_deref().unwrap_or("-"),
            g.route_mark.as_deref().unwrap_or("-"),
            g.table
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
