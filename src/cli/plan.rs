//! `symroute plan`: what `apply` would change, changing nothing.

use std::io::Write;
use std::process::ExitCode;

use symroute::kernel;

use super::args::Scope;
use super::{daemon, output};

/// Show what `apply` would change on this host (nothing is changed).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    scope: Scope,
    /// Print the plan and changes as JSON
    #[arg(long)]
    json: bool,
    /// Print equivalent `sysctl`/`nft`/`ip` commands for review
    #[arg(long, conflicts_with = "json")]
    script: bool,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let m = args.scope.load_and_enter()?;
    // With a daemon here, gateways its health checks hold down are down.
    let health_down = daemon::status().map(|l| l.health_down).unwrap_or_default();
    let (_, plan, changes) = kernel::apply::prepare(&m, &health_down)?;
    if args.json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({ "plan": plan, "changes": changes }),
        )?;
        writeln!(out)?;
    } else if args.script {
        write!(out, "{}", changes.script())?;
    } else {
        output::gateways(out, &plan.outline())?;
        output::changes(out, &changes, "would")?;
    }
    Ok(ExitCode::SUCCESS)
}
