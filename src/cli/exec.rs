//! `symroute exec --gateway NAME -- CMD [ARGS…]`: run one command whose new connections
//! leave via gateway NAME, with no policy for it in the config (mwan3's `mwan3 use`).
//!
//! A socket's mark cannot be imposed on another program, but its cgroup can: symroute
//! moves itself into `symroute.exec/netns-<cookie>/NAME` under the cgroup2 root and then
//! becomes CMD (`execvp`), so CMD and everything it starts live there. The table matches
//! each gateway's exec cgroup first in `classify_out` (before any policy) and takes that
//! gateway's route decision, masquerading to its interface's address as for route_via.
//! nft needs a cgroup to exist when it loads the table, so before CMD runs the table must
//! be one loaded with this cgroup (and its processes, which bring the masquerade): a
//! running `symroute run` sees the cgroup appear and reloads it within milliseconds;
//! without one, `exec` applies the config itself. CMD's exit status is symroute's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use symroute::daemon::control;
use symroute::kernel::{self, cgroup};
use symroute::model::Model;
use symroute::plan::{self, GatewayState};

use super::{daemon, ConfigArg, NetnsArg};

/// How long a running daemon gets to load the table for a new exec cgroup (it takes
/// ~100 ms: a debounce and one apply).
const DAEMON_WAIT: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The gateway (a name from the config) CMD's new connections leave by
    #[arg(long, value_name = "NAME")]
    gateway: String,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    netns: NetnsArg,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs CMD in the gateway's exec cgroup; returns only when that cannot be done (CMD
/// itself replaces this process).
pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("symroute exec needs root: it moves the command into a cgroup of its own and may apply the config");
    }
    args.netns.enter()?;
    let live = daemon::status();
    // Without -c, the config the daemon runs (as `status`), else the default file.
    let (path, model) = match (&args.config.config, &live) {
        (None, Some(l)) => {
            let p = std::path::PathBuf::from(&l.daemon.config);
            let m = symroute::config_file::load(&p)?;
            (p, m)
        }
        _ => (args.config.path(), args.config.load()?),
    };
    let Some(idx) = model
        .gateways
        .iter()
        .position(|g| g.name.as_str() == args.gateway)
    else {
        let names: Vec<&str> = model.gateways.iter().map(|g| g.name.as_str()).collect();
        eprintln!(
            "symroute: exec: no gateway named \"{}\" in {} (gateways: {})",
            args.gateway,
            path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Ok(ExitCode::from(2));
    };
    let health_down = live
        .as_ref()
        .map(|l| l.health_down.clone())
        .unwrap_or_default();
    let (_, plan, _) = kernel::apply::prepare_health(&model, &health_down)?;
    if let GatewayState::Down(why) = &plan.gateways[idx].state {
        bail!(
            "gateway {} is down ({why}); not running {}",
            args.gateway,
            shown(&args.command)
        );
    }
    let h = cgroup::hierarchy().context(
        "no cgroup2 hierarchy is mounted where nft can name it (at /sys/fs/cgroup or below, or anywhere while /sys/fs/cgroup exists), so symroute exec has no cgroup to run the command in",
    )?;
    let own = cgroup::exec_cgroup(&args.gateway)?;
    cgroup::create(&h, &own)?;
    cgroup::enter(&h, &own)?;
    cover(&model, &health_down, idx, live.is_some())?;
    let err = std::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .exec();
    eprintln!("symroute: exec: cannot run {}: {err}", shown(&args.command));
    // As a shell says it: 127 not found, 126 found but not runnable.
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}

/// Waits until the table is the one for this cgroup with us in it (a daemon loads it),
/// or applies it (no daemon here).
fn cover(
    model: &Model,
    health_down: &std::collections::BTreeMap<String, String>,
    idx: usize,
    daemon: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DAEMON_WAIT;
    let mut applied = false;
    // The daemon reconciles when asked, after this process moved: an apply it began
    // before (the last exec command leaving, say) is over by then, so the table checked
    // below cannot be replaced by one made without this process in the cgroup.
    if daemon {
        if let Some(r) = control::call(&control::Request::Reconcile)?.filter(|r| !r.ok) {
            eprintln!(
                "symroute: exec: symroute run could not apply: {}",
                r.error.unwrap_or_default()
            );
        }
    }
    loop {
        let (observed, plan, changes) = kernel::apply::prepare_health(model, health_down)?;
        if covered(&plan, &changes, idx) {
            return Ok(());
        }
        if observed.nft_fingerprint.is_none() && !daemon {
            bail!("symroute is not applied in this network namespace (no nftables table inet symroute): run `symroute apply` or `symroute run` first");
        }
        if !daemon && !applied {
            kernel::apply::apply_with_health(model, health_down, kernel::rundir::WAIT_COMMAND)?;
            applied = true;
            continue;
        }
        if Instant::now() >= deadline || applied {
            bail!(
                "the table does not match gateway {}'s exec cgroup yet{}; see `symroute status` and the daemon's log",
                plan.gateways[idx].name,
                if daemon {
                    format!(" after {} s of symroute run", DAEMON_WAIT.as_secs())
                } else {
                    String::new()
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The table is the one for this cgroup (with it and its processes) and the gateway's
/// rules and routes are in place.
fn covered(plan: &plan::Plan, changes: &plan::diff::Changes, idx: usize) -> bool {
    let table = plan.gateways[idx].table;
    changes.nft.is_none()
        && !changes
            .rules_add
            .iter()
            .any(|r| r.action == plan::RuleAction::Lookup(table))
        && !changes.routes_add.iter().any(|r| r.table == table)
}

fn shown(cmd: &[OsString]) -> String {
    cmd.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
