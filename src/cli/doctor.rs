//! `symroute doctor`: the mistakes in a policy-routing setup.

use std::io::Write;
use std::process::ExitCode;

use symroute::explain::doctor;

use super::args::HostArgs;

/// Find the mistakes in a hand-made (or any) policy-routing setup.
///
/// Reads the live kernel (or --netns, or a snapshot with --from) and reports each
/// finding with a severity, a stable code (listed in the README), the offending rule
/// quoted as written, why it breaks, and the fix. Exits 1 when an error-level finding
/// exists, 0 otherwise.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    host: HostArgs,
    /// Print as JSON: {"findings": [{severity, code, rule, why, fix, place}]}
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let host = args.host.load()?;
    let findings = doctor::doctor(&host);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "findings": findings }))?;
        writeln!(out)?;
    } else {
        write!(out, "{}", doctor::render(&findings))?;
    }
    let errors = findings
        .iter()
        .any(|f| f.severity == doctor::Severity::Error);
    Ok(if errors {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
