//! `symroute confirm`; `apply --confirm SECS` without a daemon: the guard
//! (`symroute confirm-watch`) is started and armed before the first change (see
//! `symroute::kernel::confirm`); and `confirm-watch` itself.

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;

use symroute::kernel::clock::BootTime;
use symroute::kernel::confirm::{self, Cause, GuardLink, Guarded, Outcome};
use symroute::model::Model;

use super::args::NetnsArg;
use super::{daemon, output};

/// Keep the change of a pending `apply --confirm` (so it is not rolled back).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    netns: NetnsArg,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.netns.enter()?;
    if daemon::confirm(out)? {
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm::confirm()? {
        anyhow::bail!("nothing to confirm: no `apply --confirm` is pending here");
    }
    writeln!(out, "confirmed")?;
    Ok(ExitCode::SUCCESS)
}

/// Internal: the guard of an `apply --confirm`, started by it (stdin is its socket).
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    netns: NetnsArg,
    #[arg(long)]
    token: String,
    /// CLOCK_BOOTTIME nanoseconds
    #[arg(long)]
    deadline: u64,
}

/// Apply `model` with a rollback at `deadline` unless confirmed.
pub fn apply(
    out: &mut impl Write,
    model: &Model,
    netns: Option<&str>,
    secs: u64,
    deadline: BootTime,
) -> anyhow::Result<ExitCode> {
    let session = confirm::begin(deadline)?;
    if let Some(line) = session.earlier.describe() {
        writeln!(out, "{line}")?;
    }
    let (link, pid) = start_guard(netns, &session.token, deadline)?;
    let (report, changed) = match session.apply(model, pid) {
        Ok(r) => r,
        Err(e) => {
            link.tell(Outcome::Failed);
            return Err(e.into());
        }
    };
    link.tell(if changed {
        Outcome::Applied
    } else {
        Outcome::Unchanged
    });
    drop(session);
    output::gateways(out, &report.outline)?;
    if !changed {
        output::changes(out, &report.changes, "applied")?;
        writeln!(out, "nothing to confirm: nothing changed")?;
        return Ok(ExitCode::SUCCESS);
    }
    for l in report.changes.summary() {
        writeln!(out, "{l}")?;
    }
    if deadline.passed() {
        writeln!(
            out,
            "applied, but the {secs} s to confirm ran out while applying: the change is being rolled back"
        )?;
    } else {
        writeln!(
            out,
            "applied; run `symroute confirm` within {secs} s or this change is rolled back"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Start `symroute confirm-watch` in a session of its own (stdio on /dev/null but for the
/// socket to us on stdin) and wait until it is armed. Returns the link and its pid.
fn start_guard(
    netns: Option<&str>,
    token: &str,
    deadline: BootTime,
) -> anyhow::Result<(GuardLink, u32)> {
    let exe = std::env::current_exe().context("finding the symroute binary")?;
    let (ours, theirs) = UnixStream::pair().context("making a socket pair for the guard")?;
    let mut cmd = Command::new(exe);
    cmd.arg("confirm-watch")
        .arg("--token")
        .arg(token)
        .arg("--deadline")
        .arg(deadline.nanos().to_string());
    if let Some(ns) = netns {
        cmd.arg("--netns").arg(ns);
    }
    cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().context("starting symroute confirm-watch")?;
    // The guard outlives us; nobody waits for it here (it is reaped by init once we exit).
    let pid = child.id();
    let link =
        GuardLink::armed(ours).context("starting the confirm guard (nothing was changed)")?;
    Ok((link, pid))
}

/// `symroute confirm-watch`: the guard. Ignores hang-ups and interrupts (it must outlive
/// the terminal that started it), then follows `confirm::guard`.
pub fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    args.netns.enter()?;
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }.context("ignoring hang-ups")?;
    }
    // SIGTERM (a shutdown, the login session's scope stopped): roll back at once rather
    // than leave an unconfirmed change with nobody guarding it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())
        .context("handling SIGTERM")?;
    // Our end of the socket came in as stdin.
    let link = {
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("taking the caller's socket from stdin")?;
        UnixStream::from(fd)
    };
    let r = confirm::guard(
        &args.token,
        BootTime::from_nanos(args.deadline),
        link,
        &stop,
    );
    let place = match args.netns.netns.as_deref() {
        Some(ns) => format!(" in network namespace {ns}"),
        None => String::new(),
    };
    let said = match &r {
        Ok(Guarded::RolledBack(Cause::Deadline)) => Some((
            WARNING,
            format!("apply --confirm{place} was not confirmed by its deadline: rolled back"),
        )),
        Ok(Guarded::RolledBack(Cause::Unfinished)) => Some((
            WARNING,
            format!("apply --confirm{place} did not complete (it failed, or its session died): rolled back"),
        )),
        Ok(Guarded::RolledBack(Cause::Stopped)) => Some((
            WARNING,
            format!("apply --confirm{place}: its guard was stopped (SIGTERM) before a confirm: rolled back"),
        )),
        Ok(Guarded::Kept | Guarded::Unchanged) => None,
        Err(e) => Some((ERR, format!("apply --confirm{place}: the guard failed: {e}"))),
    };
    if let Some((severity, msg)) = said {
        // Nobody may be left to read our stderr; the record for `status` is the other
        // witness. No system log (a container) is no reason to fail.
        let _ = syslog(Path::new(SYSLOG), severity, &msg);
    }
    r?;
    Ok(ExitCode::SUCCESS)
}

/// The system log's socket (journald's or rsyslog's).
const SYSLOG: &str = "/dev/log";
const ERR: u8 = 3;
const WARNING: u8 = 4;

/// One line to the system log, facility daemon, in RFC 3164's framing
/// (`<PRI>symroute[PID]: MSG`), which journald and rsyslog both take: a single datagram,
/// so no logging crate is pulled in for it.
fn syslog(socket: &Path, severity: u8, msg: &str) -> std::io::Result<()> {
    const DAEMON: u8 = 3;
    let line = format!(
        "<{}>symroute[{}]: {msg}",
        DAEMON * 8 + severity,
        std::process::id()
    );
    UnixDatagram::unbound()?
        .send_to(line.as_bytes(), socket)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_sends_one_framed_line() {
        let dir = std::env::temp_dir().join(format!("symroute-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let log = UnixDatagram::bind(&path).unwrap();
        syslog(&path, WARNING, "rolled back").unwrap();
        let mut buf = [0u8; 256];
        let n = log.recv(&mut buf).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            line,
            format!("<28>symroute[{}]: rolled back", std::process::id())
        );
        assert!(syslog(&dir.join("none"), ERR, "x").is_err());
    }
}
