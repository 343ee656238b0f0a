//! `symroute ha ROLE`: keepalived's notify scripts tell symroute this box's role.

use std::io::Write;
use std::process::ExitCode;

use symroute::kernel::state::HaRole;

use super::args::NetnsArg;
use super::daemon;

/// This box's role in an HA pair: for keepalived's notify scripts.
///
/// keepalived (contrib/ha/keepalived.conf) runs `symroute ha master`, `backup` or
/// `fault` when its VRRP state changes. conntrackd copies every connection to the
/// peer, so the conntrack table of a backup holds the master's connections: a running
/// `symroute run` flushes a dead gateway's route_via connections only while this box
/// is the master (and a second later still is), never on a backup, and a box that
/// becomes master flushes then what it held back. With `[settings] ha_pair = true` it
/// holds back until told it is master.
///
/// The role is kept in /run/symroute (a daemon started later reads it) until reboot or
/// `symroute remove`; it is recorded, exit 0, even when no daemon runs. keepalived starts
/// a script per change without waiting for the last: a notification started before the
/// one recorded is ignored (said, exit 0), so a slow old word never has the last say.
#[derive(clap::Args, Debug)]
pub struct Args {
    role: RoleArg,
    #[command(flatten)]
    netns: NetnsArg,
}

/// `symroute ha ROLE`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// This box holds the virtual addresses
    Master,
    /// The peer does
    Backup,
    /// keepalived found a tracked link down
    Fault,
}

impl From<RoleArg> for HaRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Master => Self::Master,
            RoleArg::Backup => Self::Backup,
            RoleArg::Fault => Self::Fault,
        }
    }
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.netns.enter()?;
    daemon::ha(out, args.role.into())?;
    Ok(ExitCode::SUCCESS)
}
