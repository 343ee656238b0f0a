//! `symroute doctor`: the mistakes in a policy-routing setup (and, with `--peer`, where
//! the two boxes of an HA pair disagree about what a mark means).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use symroute::explain::doctor::{self, peer};
use symroute::explain::host::HostState;
use symroute::kernel;

use super::args::HostArgs;

/// Find the mistakes in a hand-made (or any) policy-routing setup.
///
/// Reads the live kernel (or --netns, or a snapshot with --from) and reports each
/// finding with a severity, a stable code (listed in the README), the offending rule
/// quoted as written, why it breaks, and the fix. Exits 1 when an error-level finding
/// exists, 0 otherwise.
///
/// With --peer, also compares the meaning of symroute's marks with the other box of an
/// HA pair (keepalived + conntrackd copy connections and their marks between the two):
/// give it the peer's `symroute status --json` output, or a snapshot directory of the
/// peer. A mark value that means another path or decision there is an error.
///
/// Example (on the backup, with the master's status copied over):
///   ssh master symroute status --json > master.json
///   symroute doctor --peer master.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    host: HostArgs,
    /// The other box of an HA pair: its `symroute status --json` output, or a
    /// snapshot directory of it
    #[arg(long, value_name = "FILE|DIR")]
    peer: Option<PathBuf>,
    /// Print as JSON: {"findings": [{severity, code, rule, why, fix, place}]}
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    // The peer first: its path is relative to where we were started.
    let peer = args.peer.as_deref().map(load_peer).transpose()?;
    let host = args.host.load()?;
    let findings = doctor::doctor_with_peer(&host, peer.as_ref());
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

/// The other box of an HA pair, for `doctor --peer`: a snapshot directory, or a file
/// holding its `symroute status --json` (or the `marks` object of one). Read bounded: it is
/// whatever file the user points us at.
fn load_peer(path: &Path) -> anyhow::Result<peer::Side> {
    const MAX: u64 = 16 << 20;
    let origin = path.display().to_string();
    if path.is_dir() {
        let loaded = kernel::snapshot::load(path)?;
        let host = HostState::from_files(&loaded.files, loaded.missing, &origin)?;
        return Ok(peer::side_of_host(&host));
    }
    let text = kernel::snapshot::read_bounded(path, MAX)
        .map_err(|why| anyhow::anyhow!("--peer {origin}: {why}"))?
        .ok_or_else(|| anyhow::anyhow!("--peer {origin}: no such file or directory"))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!("--peer {origin}: not JSON (expected the peer's `symroute status --json`, or a snapshot directory)")
    })?;
    let map = value.get("marks").unwrap_or(&value);
    let map: symroute::plan::markmap::MarkMap = serde_json::from_value(map.clone())
        .with_context(|| {
            format!("--peer {origin}: no mark map in it (expected the peer's `symroute status --json` from symroute with stable marks)")
        })?;
    Ok(peer::side_of_map(&map, &origin))
}
