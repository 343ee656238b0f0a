//! The command line: one file per subcommand (its flags, its help, its `run`), shared
//! flags in `args`, and this table of them. Each is a thin layer over the library: load
//! the config, call `plan`/`kernel`, print for people or as JSON, return the exit code.

mod apply;
mod args;
mod check;
mod completions;
mod confirm;
mod daemon;
mod doctor;
mod exec;
mod explain;
mod ha;
mod import;
mod lab;
mod manpages;
mod output;
mod plan;
mod remove;
mod run;
mod snapshot;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Symmetric policy routing for multi-homed Linux hosts.

Every reply leaves by the path its connection came in on, and chosen classes of new
traffic leave by a chosen gateway. You describe gateways and policies in one TOML file
(default /etc/symroute/symroute.toml); symroute programs the kernel (one nftables table,
`inet symroute`, plus tagged ip rules and routes) atomically, idempotently, and without
touching anything it does not own.

Typical use:
  symroute check              validate the config (no root needed)
  symroute plan --script      see exactly what apply would do
  symroute apply              make it so (again: a no-op)
  symroute status             gateways, policy counters, live connections
  symroute remove             put the host back as it was
  symroute lab two-isps       watch it fix seed 1 in a private network-namespace lab";

/// `symroute --version`: the version and the git commit it was built from (build.rs;
/// `unknown` when built outside git, e.g. from a release tarball).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILT_FROM_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "symroute", version = VERSION, about = "Symmetric policy routing for multi-homed Linux hosts", long_about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The subcommands, in the order `--help` lists them (their help is in their files).
#[derive(Subcommand, Debug)]
enum Cmd {
    Check(check::Args),
    Plan(plan::Args),
    Apply(apply::Args),
    Confirm(confirm::Args),
    #[command(hide = true)]
    ConfirmWatch(confirm::WatchArgs),
    Remove(remove::Args),
    Run(run::Args),
    Exec(exec::Args),
    Status(status::Args),
    Explain(explain::Args),
    Doctor(doctor::Args),
    Import(import::Args),
    Snapshot(snapshot::Args),
    Ha(ha::Args),
    Lab(lab::Args),
    Completions(completions::Args),
    #[command(hide = true)]
    Manpages(manpages::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Check(args) => check::run(args, &mut out),
        Cmd::Plan(args) => plan::run(args, &mut out),
        Cmd::Apply(args) => apply::run(args, &mut out),
        Cmd::Confirm(args) => confirm::run(args, &mut out),
        Cmd::ConfirmWatch(args) => confirm::watch(args),
        Cmd::Remove(args) => remove::run(args, &mut out),
        Cmd::Status(args) => status::run(args, &mut out),
        Cmd::Explain(args) => explain::run(args, &mut out),
        Cmd::Doctor(args) => doctor::run(args, &mut out),
        Cmd::Import(args) => import::run(args, &mut out),
        Cmd::Snapshot(args) => snapshot::run(args, &mut out),
        Cmd::Ha(args) => ha::run(args, &mut out),
        Cmd::Completions(args) => completions::run(args, &mut out),
        Cmd::Manpages(args) => manpages::run(args, &mut out),
        // These print from other threads too: stdout must not stay locked here.
        Cmd::Run(args) => {
            drop(out);
            run::run(args)
        }
        // CMD replaces this process and writes to stdout itself.
        Cmd::Exec(args) => {
            drop(out);
            exec::run(args)
        }
        Cmd::Lab(args) => {
            drop(out);
            lab::run(args)
        }
    }
}
