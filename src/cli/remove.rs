//! `symroute remove`: put the host back as it was.

use std::io::Write;
use std::process::ExitCode;

use symroute::kernel;

use super::args::NetnsArg;
use super::daemon;

/// Delete everything symroute made and restore the sysctls it changed.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    netns: NetnsArg,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.netns.enter()?;
    // A daemon would put everything back within milliseconds: say so instead.
    if let Some(live) = daemon::status() {
        eprintln!(
            "symroute: symroute run (pid {}) keeps the policy applied here and would put it back at once; stop it first (systemctl stop symroute), or stop it with --remove-on-exit to remove everything as it exits",
            live.daemon.pid
        );
        return Ok(ExitCode::from(1));
    }
    let changes = kernel::remove::remove()?;
    symroute::daemon::control::remove_stale()?;
    // `symroute exec`'s cgroups of this namespace, once no command runs in them.
    let (gone, busy) = kernel::cgroup::remove_exec()?;
    for c in &busy {
        eprintln!("symroute: left cgroup {c}: a command started by symroute exec still runs in it");
    }
    if changes.is_empty() && gone.is_empty() {
        writeln!(out, "nothing to remove: symroute owns nothing here")?;
    } else {
        for l in changes.summary() {
            writeln!(out, "{l}")?;
        }
        for c in &gone {
            writeln!(out, "- cgroup {c}")?;
        }
        writeln!(out, "removed")?;
    }
    Ok(ExitCode::SUCCESS)
}
