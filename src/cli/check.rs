//! `symroute check`: validate the config.

use std::io::Write;
use std::process::ExitCode;

use symroute::model::IdFrom;
use symroute::plan::alloc;

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
    // Each gateway's id and what follows from it (the same on every box that
    // loads this file, whatever its order).
    for (i, g) in m.gateways_indexed() {
        writeln!(
            out,
            "  gateway {}: id {} ({}), reply mark {}, route mark {}, table {}",
            g.name,
            g.id,
            match g.id_from {
                IdFrom::Config => "set in the file",
                IdFrom::Name => "from its name",
            },
            alloc::reply_mark(&m, i),
            alloc::route_mark(&m, i),
            alloc::gateway_table(&m, i)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
