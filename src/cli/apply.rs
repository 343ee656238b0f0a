//! `symroute apply`: make the kernel match the config (through the daemon when one runs
//! here), optionally with a rollback unless confirmed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use symroute::kernel;
use symroute::kernel::apply::{ApplyOptions, Faults, Step};

use super::args::Scope;
use super::{confirm, daemon, output};

/// Make the kernel match the config. Idempotent; rolls back if any step fails.
///
/// While `symroute run` runs in the namespace, the daemon switches to this config
/// instead (and with --confirm, goes back to its previous one unless confirmed).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    scope: Scope,
    /// Test only: fail right after STEP, so the rollback runs
    #[arg(long, value_name = "STEP", hide = true)]
    inject_failure: Option<StepArg>,
    /// Test only: die right after STEP without cleaning up, like `kill -9`
    #[arg(long, value_name = "STEP", hide = true)]
    abort_after: Option<StepArg>,
    /// Test only: the rollback's first N reads of the kernel fail
    #[arg(
        long,
        value_name = "N",
        hide = true,
        requires = "inject_failure",
        default_value = "0"
    )]
    fail_rollback_reads: u32,
    /// Roll the change back SECS seconds (1 to 86400) after this command started unless
    /// `symroute confirm` runs first. A guard process in its own session is armed before
    /// the first change, so a dropped SSH session still gets its rollback.
    #[arg(
        long,
        value_name = "SECS",
        conflicts_with_all = ["inject_failure", "abort_after"],
        value_parser = clap::value_parser!(u64).range(kernel::confirm::SECS)
    )]
    confirm: Option<u64>,
}

/// A step of the apply, as the test-only flags name it (`kernel::apply::Step`, which
/// knows nothing of the command line).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StepArg {
    Sysctls,
    Nft,
    Routes,
    Rules,
}

impl From<StepArg> for Step {
    fn from(s: StepArg) -> Step {
        match s {
            StepArg::Sysctls => Step::Sysctls,
            StepArg::Nft => Step::Nft,
            StepArg::Routes => Step::Routes,
            StepArg::Rules => Step::Rules,
        }
    }
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if let Some(secs) = args.confirm {
        // The deadline counts from now, on the boot clock (see kernel::clock).
        let deadline = kernel::clock::BootTime::now().after(Duration::from_secs(secs));
        let m = args.scope.load_and_enter()?;
        if let Some(code) = daemon::apply(out, &args.scope.config, Some(secs))? {
            return Ok(code);
        }
        return confirm::apply(out, &m, args.scope.netns.netns.as_deref(), secs, deadline);
    }
    let m = args.scope.load_and_enter()?;
    let faults = Faults {
        fail_after: args.inject_failure.map(Step::from),
        abort_after: args.abort_after.map(Step::from),
        fail_rollback_reads: args.fail_rollback_reads,
    };
    // Injected faults are for this process's own apply, never the daemon's.
    if faults.fail_after.is_none() && faults.abort_after.is_none() {
        if let Some(code) = daemon::apply(out, &args.scope.config, None)? {
            return Ok(code);
        }
    }
    let opts = ApplyOptions {
        faults,
        when_locked: Some(&kernel::confirm_record::refuse_while_guarded),
        ..ApplyOptions::default()
    };
    let applied = kernel::apply::apply_outlined(&m, &opts)?;
    output::gateways(out, &applied.outline)?;
    output::changes(out, &applied.changes, "applied")?;
    Ok(ExitCode::SUCCESS)
}
