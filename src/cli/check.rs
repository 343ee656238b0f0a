//! `symroute check`: validate the config.

use std::io::Write;
use std::process::ExitCode;

use super::args::ConfigArg;

/// Validate the config file; errors print as FILE:LINE:COL and exit 2. Needs no root.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let m = args.config.load_trusted()?;
    let selectors: usize = m.policies.iter().map(|p| p.selector.item_count()).sum();
    writeln!(
        out,
        "ok: {} gateway(s), {} policy(ies), {} divert(s), {selectors} selector item(s); mark_mask {}, tables from {}, priorities from {}",
        m.gateways.len(),
        m.policies.len(),
        m.diverts.len(),
        m.settings.mark_mask,
        m.settings.first_table,
        m.settings.first_priority
    )?;
    Ok(ExitCode::SUCCESS)
}
