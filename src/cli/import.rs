//! `symroute import`: a symroute.toml for a hand-made setup.

use std::io::Write;
use std::process::ExitCode;

use super::args::HostArgs;

/// Print a symroute.toml for a hand-made setup (iptables/nft marks, CONNMARK,
/// `ip rule fwmark`, extra tables, DIVERT), where it can be expressed.
///
/// Everything it could not express is listed precisely, as comments at the top of the
/// file and on stderr. Review the file, then `symroute plan -c FILE` and remove the
/// hand-made rules it replaces (listed under "Replaces") before `symroute apply`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    host: HostArgs,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let host = args.host.load()?;
    let imported = symroute::explain::import::import(&host);
    write!(out, "{}", imported.toml)?;
    if !imported.unexpressed.is_empty() {
        eprint!("{}", imported.report());
    }
    Ok(ExitCode::SUCCESS)
}
