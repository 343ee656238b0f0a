//! `symroute completions SHELL`: the shell completion script, generated from the clap
//! definitions by clap_complete (so it cannot drift from `--help`). scripts/package puts
//! the bash, zsh and fish scripts in the .deb.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

/// Print the shell completion script for SHELL. Load it for this shell with
/// `source <(symroute completions bash)`; the Debian package installs them for bash,
/// zsh and fish.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    clap_complete::generate(args.shell, &mut Cli::command(), "symroute", out);
    Ok(ExitCode::SUCCESS)
}
