//! `symroute status`: gateways, policy counters and connections, with the daemon's live
//! view when one runs here; with no config at all, or one that defines nothing yet (the
//! package's template), what symroute has applied here.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use symroute::kernel;

use super::args::Scope;
use super::daemon;

/// Gateways, policy counters and live connections per gateway; with a running
/// `symroute run`, its live health (since, loss, round trip). Without -c, the
/// daemon's config; with neither and no file at the default path, what symroute has
/// applied here (its table, tagged rules and routes, counters, the sysctls it changed),
/// and the same as text for a config that defines no gateway or policy yet (as the
/// package installs it).
/// Also what each mark means here (compare it with the other box of an HA pair:
/// `symroute doctor --peer`), the HA role keepalived last reported, and a pending or last
/// `apply --confirm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    scope: Scope,
    /// Print as JSON (daemon.pid/.config/.started, gateways[].name/.state/.since/.loss/
    /// .rtt_ms/.connections, policies[].name/.gateways[]/.packets/.bytes,
    /// marks.gateways[].id/.reply_mark/.table and marks.digest, ha.role/.since_unix,
    /// confirm.pending.guard_pid/.deadline/.guarded and confirm.last.ended/.at)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.scope.netns.enter()?;
    let probe = daemon::probe();
    let absent = matches!(probe, daemon::Live::Absent);
    let live = match probe {
        daemon::Live::Running(s) => Some(*s),
        _ => None,
    };
    // No -c, no daemon and no file at the default path: what is applied here.
    let default = args.scope.config.path();
    if args.scope.config.config.is_none() && absent && !default.exists() {
        let note = format!(
            "no config at {} (and no `symroute run` here): showing what symroute has applied in this namespace",
            default.display()
        );
        let st = kernel::status::without_config(None, note)?;
        print_without_config(&st, args.json, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Without -c, the config the daemon runs.
    let m = match (&args.scope.config.config, &live) {
        (None, Some(l)) => symroute::config_file::load(std::path::Path::new(&l.daemon.config))?,
        _ => args.scope.config.load()?,
    };
    // A config that defines nothing yet (the package installs its commented template at
    // the default path): compared with it, anything applied would only "differ"; what is
    // applied here says more, to people (`--json` keeps its one shape for scripts and
    // `doctor --peer`).
    let defines_nothing = m.gateways.is_empty() && m.policies.is_empty() && m.diverts.is_empty();
    if absent && defines_nothing && !args.json {
        let path = args.scope.config.path();
        let note = format!(
            "{} defines no gateway or policy yet (and no `symroute run` here): showing what symroute has applied in this namespace",
            path.display()
        );
        let st = kernel::status::without_config(Some(&path), note)?;
        print_without_config(&st, args.json, out)?;
        return Ok(ExitCode::SUCCESS);
    }
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
    print_ha_and_confirm(st.ha.as_ref(), &st.confirm, out)?;
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

fn print_without_config(
    st: &kernel::status::StatusWithoutConfig,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, st)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{}", st.note)?;
    if st.is_empty() {
        writeln!(
            out,
            "not applied: nothing of symroute's is in this namespace"
        )?;
        return Ok(());
    }
    match (st.applied, &st.fingerprint) {
        (true, Some(fp)) => writeln!(
            out,
            "applied: nftables table inet symroute (fingerprint {fp})"
        )?,
        (true, None) => writeln!(out, "applied: nftables table inet symroute")?,
        (false, _) => writeln!(out, "no nftables table inet symroute; leftovers below")?,
    }
    for (title, lines) in [("rules", &st.rules), ("routes", &st.routes)] {
        writeln!(out, "{title} (protocol {}):", symroute::plan::RT_PROTO)?;
        for l in lines {
            writeln!(out, "  {l}")?;
        }
    }
    print_ha_and_confirm(st.ha.as_ref(), &st.confirm, out)?;
    if !st.counters.is_empty() {
        writeln!(out, "policy counters:")?;
        for (name, c) in &st.counters {
            writeln!(
                out,
                "  {name:<24} {} packet(s) {} byte(s) classified",
                c.packets, c.bytes
            )?;
        }
    }
    if !st.sysctls.is_empty() {
        writeln!(out, "sysctls changed (`symroute remove` puts them back):")?;
        for (k, s) in &st.sysctls {
            writeln!(
                out,
                "  {k} = {} (was {})",
                s.now.as_deref().unwrap_or("?"),
                s.before
            )?;
        }
    }
    Ok(())
}

/// This box's HA role and the pending or last `apply --confirm`: symroute's own records,
/// shown with a config or without.
fn print_ha_and_confirm(
    ha: Option<&kernel::state::HaRecord>,
    confirm: &kernel::status::ConfirmView,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Some(h) = ha {
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
    if let Some(p) = &confirm.pending {
        if p.guarded {
            writeln!(
                out,
                "pending: `apply --confirm` (guard pid {}); rolled back at {} unless `symroute confirm`",
                p.guard_pid, p.deadline
            )?;
        } else {
            writeln!(
                out,
                "pending: `apply --confirm` whose guard (pid {}) is gone: nothing rolls it back; `symroute confirm` keeps it, the next `apply --confirm` rolls it back first",
                p.guard_pid
            )?;
        }
    }
    if let Some(l) = &confirm.last {
        writeln!(
            out,
            "last `apply --confirm`: {} ({})",
            l.ended.describe(),
            l.at
        )?;
    }
    Ok(())
}
