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
use symroute::daemon::protocol::Request;
use symroute::kernel::apply::ApplyOptions;
use symroute::kernel::{self, cgroup};
use symroute::model::Model;
use symroute::plan::{self, GatewayState};

use super::args::Scope;
use super::daemon;

const NOT_APPLIED: &str = "symroute is not applied in this network namespace (no nftables table inet symroute): run `symroute apply` or `symroute run` first";

/// How long a running daemon gets to load the table for a new exec cgroup (it takes
/// ~100 ms: a debounce and one apply).
const DAEMON_WAIT: Duration = Duration::from_secs(3);

/// Run a command whose new connections leave via one gateway (root only).
///
/// CMD runs in a cgroup of symroute's own for the gateway
/// (`symroute.exec/netns-<id>/NAME` under the cgroup2 root), which the table always
/// matches before any policy: the new connections of every socket CMD (or a child)
/// makes, IPv4 and IPv6, leave via gateway NAME, masqueraded to its interface's
/// address, and keep that path for their whole life. No policy is needed in the config.
/// Specific routes (the LAN, a VPN) still win, as for route_via. A running `symroute
/// run` adds the cgroup to the table within milliseconds; without one, exec applies the
/// config first. Without -c, the config of the daemon running here (else the default
/// file). The exit status is CMD's (127: not found). Fails (exit 1) when NAME is down,
/// exit 2 when the config has no gateway NAME. Needs root: it moves itself into the
/// cgroup.
///
/// Examples:
///   symroute exec --gateway isp2 -- curl -sS https://example.org/
///   symroute exec --gateway isp1 --netns fw -- dig @192.0.2.53 example.org
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The gateway (a name from the config) CMD's new connections leave by
    #[arg(long, value_name = "NAME")]
    gateway: String,
    #[command(flatten)]
    scope: Scope,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs CMD in the gateway's exec cgroup; returns only when that cannot be done (CMD
/// itself replaces this process).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("symroute exec needs root: it moves the command into a cgroup of its own and may apply the config");
    }
    // With -c, the file is read where the command started (as plan and apply do); without,
    // the config the daemon of the namespace runs (as status does), else the default file.
    let explicit = args.scope.config.config.is_some();
    let given = if explicit {
        Some(args.scope.load_and_enter()?)
    } else {
        args.scope.netns.enter()?;
        None
    };
    let live = daemon::status();
    let (path, model) = match (given, &live) {
        (Some(m), _) => (args.scope.config.path(), m),
        (None, Some(l)) => {
            let p = std::path::PathBuf::from(&l.daemon.config);
            let m = symroute::config_file::load(&p)?;
            (p, m)
        }
        (None, None) => (args.scope.config.path(), args.scope.config.load()?),
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
    let (observed, plan, _) = kernel::apply::prepare(&model, &health_down)?;
    if let GatewayState::Down(why) = &plan.gateways[idx].state {
        bail!(
            "gateway {} is down ({why}); not running {}",
            args.gateway,
            shown(&args.command)
        );
    }
    // Before any cgroup is made: exec does not put symroute in place on the side.
    if observed.nft_fingerprint.is_none() && live.is_none() {
        bail!(NOT_APPLIED);
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
        if let Some(r) = control::call(&Request::Reconcile)?.filter(|r| !r.ok) {
            eprintln!(
                "symroute: exec: symroute run could not apply: {}",
                r.error.unwrap_or_default()
            );
        }
    }
    loop {
        let (observed, plan, changes) = kernel::apply::prepare(model, health_down)?;
        if covered(&plan, &changes, idx) {
            return Ok(());
        }
        if observed.nft_fingerprint.is_none() && !daemon {
            bail!(NOT_APPLIED);
        }
        if !daemon && !applied {
            let opts = ApplyOptions {
                health_down: health_down.clone(),
                ..ApplyOptions::default()
            };
            kernel::apply::apply_outlined(model, &opts)?;
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
