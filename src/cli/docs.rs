//! `symroute completions SHELL` and the hidden `symroute manpages DIR`: shell completions
//! (clap_complete) and the man pages (clap_mangen), both generated from the clap
//! definitions, so they cannot drift from `--help`. scripts/package runs them to put the
//! completions and symroute(8) (plus symroute-SUBCOMMAND(8) for each subcommand) in the
//! .deb.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The completion script for `shell` on `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "symroute", out);
}

/// Writes `symroute.8` and `symroute-SUB.8` for every visible subcommand into `dir`; the
/// names written.
pub fn manpages(dir: &Path) -> anyhow::Result<Vec<String>> {
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
