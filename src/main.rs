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
            let msg = format!("symroute: {}", message(&e));
            if symroute::daemon::log::stderr_is_journal() {
                // The journal's error priority on every line (see daemon::log).
                for line in msg.lines() {
                    eprintln!("<3>{line}");
                }
            } else {
                eprintln!("{msg}");
            }
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, each said once: many messages already end with their
/// cause (`…: No such file or directory`), which `{e:#}` would print a second time.
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}
