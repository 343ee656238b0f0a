//! Commands that defer to a running `symroute run` of the namespace (over its control
//! socket, `symroute::daemon::control`): `apply` becomes a reload of the daemon,
//! `confirm` confirms the daemon's pending apply, `status` shows its live health.

use std::io::Write;
use std::process::ExitCode;

use symroute::daemon::control;
use symroute::daemon::protocol::Request;
use symroute::kernel::status::{DaemonStatus, GatewayStatus};

use super::args::ConfigArg;

/// `apply [--confirm SECS]` while a daemon runs here: it loads and applies the config
/// (whose path is made absolute), and keeps it. `None`: no daemon, apply as usual. The
/// config was validated already (a bad one exits 2 before anything is sent).
pub fn apply(
    out: &mut impl Write,
    config: &ConfigArg,
    confirm: Option<u64>,
) -> anyhow::Result<Option<ExitCode>> {
    let path = std::path::absolute(config.path())?;
    let Some(resp) = control::call(&Request::Reload {
        config: path.clone(),
        confirm,
    })?
    else {
        return Ok(None);
    };
    if resp.ok {
        writeln!(
            out,
            "symroute run is running here: it now applies {}",
            path.display()
        )?;
    } else {
        writeln!(
            out,
            "symroute run is running here: it did not take {} and keeps its config",
            path.display()
        )?;
    }
    for l in &resp.lines {
        writeln!(out, "{l}")?;
    }
    if let Some(e) = &resp.error {
        eprintln!("symroute: {e}");
    }
    Ok(Some(if resp.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(resp.code.max(1))
    }))
}

/// `confirm`: true when the daemon had a pending apply and now keeps it.
pub fn confirm(out: &mut impl Write) -> anyhow::Result<bool> {
    match control::call(&Request::Confirm)? {
        Some(r) if r.ok => {
            for l in &r.lines {
                writeln!(out, "{l}")?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The daemon's live view, when one answers here (a daemon that fails to answer is
/// noted on stderr and treated as absent).
pub fn status() -> Option<DaemonStatus> {
    match probe() {
        Live::Running(s) => Some(*s),
        Live::Absent | Live::Unreachable => None,
    }
}

/// Whether a daemon runs here, as its control socket tells.
pub enum Live {
    Running(Box<DaemonStatus>),
    /// No socket, or nobody listening on it.
    Absent,
    /// A socket whose daemon did not answer (noted on stderr): one may well run.
    Unreachable,
}

pub fn probe() -> Live {
    match control::call(&Request::Status) {
        Ok(Some(r)) => match r.status {
            Some(s) => Live::Running(Box::new(s)),
            None => Live::Unreachable,
        },
        Ok(None) => Live::Absent,
        Err(e) => {
            eprintln!("symroute: note: no live state from the daemon: {e}");
            Live::Unreachable
        }
    }
}

/// One line per gateway for people.
pub fn gateway_line(g: &GatewayStatus) -> String {
    let mut s = format!(
        "{:<16} {:<10} table {:<6} {:<4}",
        g.name, g.interface, g.table, g.state
    );
    if let Some(since) = &g.since {
        s += &format!(" since {since}");
    }
    if let Some(loss) = g.loss {
        s += &format!("  loss {:.0}%", loss * 100.0);
    }
    if let Some(rtt) = g.rtt_ms {
        s += &format!("  rtt {rtt:.1} ms");
    }
    if let Some(f) = g.failovers {
        s += &format!("  {f} failover(s)");
    }
    s += &format!("  {} connection(s)", g.connections);
    if g.exec_packets > 0 {
        s += &format!("  {} started by symroute exec", g.exec_packets);
    }
    if let Some(why) = &g.reason {
        s += &format!("  ({why})");
    }
    s
}

/// `symroute ha ROLE`: recorded in /run/symroute, then told to the daemon if one runs.
pub fn ha(out: &mut impl Write, role: symroute::kernel::state::HaRole) -> anyhow::Result<()> {
    use symroute::kernel::state;
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = state::HaRecord {
        role,
        since_unix,
        told_at: state::process_started(),
    };
    let (told, _lock) = state::tell_ha(&record)?;
    if let state::Told::Stale(newer) = told {
        writeln!(
            out,
            "HA role: {role} not taken: keepalived said {newer} in a notification started after this one"
        )?;
        return Ok(());
    }
    match control::call(&Request::Ha { role })? {
        Some(r) => {
            for l in &r.lines {
                writeln!(out, "{l}")?;
            }
            if let Some(e) = &r.error {
                anyhow::bail!("{e}");
            }
        }
        None => writeln!(
            out,
            "HA role: {role} (recorded; no `symroute run` here now: one started later reads it)"
        )?,
    }
    Ok(())
}
