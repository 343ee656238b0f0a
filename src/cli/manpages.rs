//! The hidden `symroute manpages DIR`: symroute(8) and symroute-SUBCOMMAND(8) for each
//! visible subcommand, generated from the clap definitions by clap_mangen (so they cannot
//! drift from `--help`). scripts/package runs it to put the pages in the .deb.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

/// Write the man pages (symroute.8 and symroute-SUBCOMMAND.8) into DIR, for packaging.
#[derive(clap::Args, Debug)]
pub struct Args {
    dir: PathBuf,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    for page in write_pages(&args.dir)? {
        writeln!(out, "{}", args.dir.join(page).display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `symroute.8` and `symroute-SUB.8` for every visible subcommand into `dir`; the
/// names written.
fn write_pages(dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let mut text = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.to_uppercase())
            .section("8")
            .manual("System Administration")
            .source(format!("symroute {}", symroute::daemon::metrics::VERSION))
            .render(&mut text)?;
        let file = format!("{name}.8");
        std::fs::write(dir.join(&file), text)?;
        written.push(file);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("symroute-{}", sub.get_name());
        let cmd = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("symroute {}", sub.get_name()));
        page(cmd, name)?;
    }
    page(cmd, "symroute".into())?;
    Ok(written)
}
