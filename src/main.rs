//! The `symroute` command: parse flags, enter the namespace, run one subcommand, and map
//! the outcome to an exit code (0 ok, 1 runtime failure, 2 bad input).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<symroute::config::ConfigError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("symroute: {e:#}");
            ExitCode::from(code)
        }
    }
}
