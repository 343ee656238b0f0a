//! Safe changes (`apply --confirm SECS`) without a daemon. The guard exists before the
//! first change:
//!
//! 1. `begin` takes the namespace lock and settles an earlier pending change: refused
//!    while its guard lives, rolled back (or, unreadable, cleared) when its guard is gone.
//! 2. The caller starts the guard, `symroute confirm-watch`, in a session of its own (so
//!    a hang-up or a kill of the caller's process group does not reach it), connected to
//!    the caller by a socket pair. The guard takes the guard lock
//!    (`netns-<cookie>.confirm.guard`, held for its whole life: "is anyone guarding?" is a
//!    non-blocking `flock`) and answers `armed`.
//! 3. `Session::apply` saves what a rollback needs in `netns-<cookie>.confirm.json`, then
//!    applies; the caller tells the guard `applied`, `unchanged` or `failed`.
//! 4. The guard (`guard`) rolls back at the deadline unless `symroute confirm` removed the
//!    file first; at once when the caller failed or vanished without saying `applied`
//!    (a half-made change is never left waiting); it does nothing when the file is not
//!    its own (nothing was saved, so nothing changed).
//!
//! The deadline is a CLOCK_BOOTTIME reading (`clock`), fixed when the command started.
//! The rollback is apply's own (`apply::roll_back`). What is kept on disk, and read by
//! `status` and `apply`, is `confirm_record`'s.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::apply::{self, Applied, ApplyOptions, Faults, Locking};
use super::clock::{unix, BootTime};
use super::confirm_record::{
    discard, guard_path, guarded, last_path, load, record, save, Ended, Pending,
};
use super::rundir::{self, Lock};
use super::{state, KernelError};
use symroute_core::model::Model;
use symroute_core::plan::diff::Observed;
use symroute_core::plan::HostView;

/// The range `--confirm` accepts, in seconds (a day at most).
pub const SECS: std::ops::RangeInclusive<u64> = 1..=86_400;

/// How long the caller waits for a starting guard to say it is armed.
pub const ARM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting guard waits for the guard lock (a guard whose change was just
/// confirmed lets go within `POLL`).
const GUARD_LOCK_WAIT: Duration = Duration::from_secs(3);
/// How often a guard looks whether its change was confirmed.
const POLL: Duration = Duration::from_millis(100);

/// What `begin` found of an earlier `apply --confirm` whose guard was gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Nothing was pending.
    None,
    /// It was put back as it was before that apply.
    RolledBack,
    /// It was forgotten without a rollback (why).
    Cleared(String),
}

impl Earlier {
    /// One line for people, when there is something to say.
    pub fn describe(&self) -> Option<String> {
        match self {
            Earlier::None => None,
            Earlier::RolledBack => Some(
                "an earlier `apply --confirm` was still pending but its guard was gone: rolled it back first"
                    .into(),
            ),
            Earlier::Cleared(why) => Some(format!(
                "an earlier `apply --confirm` was still pending but its guard was gone: cleared it without a rollback ({why})"
            )),
        }
    }
}

/// An `apply --confirm` in progress: holds the namespace lock from `begin` to the end.
pub struct Session {
    /// Held for the whole session: the apply runs under it.
    lock: Lock,
    pub earlier: Earlier,
    pub token: String,
    pub deadline: BootTime,
}

/// Step 1: lock the namespace and settle an earlier pending change. Refused while an
/// earlier one is guarded.
pub fn begin(deadline: BootTime) -> Result<Session, KernelError> {
    let lock = rundir::lock(rundir::WAIT_COMMAND)?;
    let earlier = settle_earlier()?;
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    Ok(Session {
        lock,
        earlier,
        token,
        deadline,
    })
}

/// With the namespace lock held: an earlier pending change is refused while guarded,
/// else rolled back (or cleared when it cannot be).
fn settle_earlier() -> Result<Earlier, KernelError> {
    let path = state::pending_path()?;
    let pending = match load() {
        Ok(None) => return Ok(Earlier::None),
        Ok(Some(p)) => Some(p),
        Err(KernelError::Parse { detail, .. }) if !guarded()? => {
            discard()?;
            return Ok(Earlier::Cleared(format!(
                "{} was unreadable: {detail}",
                path.display()
            )));
        }
        Err(e) => return Err(e),
    };
    if guarded()? {
        let when = pending
            .map(|p| {
                format!(
                    ", rolled back in {} s unless confirmed",
                    p.deadline.remaining().as_secs()
                )
            })
            .unwrap_or_default();
        return Err(KernelError::Other(format!(
            "an earlier `apply --confirm` is still pending in this namespace ({}{when}): run \
             `symroute confirm` to keep it, or wait for it to be rolled back, then apply again",
            path.display()
        )));
    }
    let p = pending.expect("read above");
    let r = roll_back_pending(&p);
    discard()?;
    Ok(match r {
        Ok(()) => Earlier::RolledBack,
        Err(e) => Earlier::Cleared(format!("its rollback failed: {e}")),
    })
}

impl Session {
    /// Step 3, once the guard is armed: save the rollback point before the first change,
    /// then apply. `Ok((report, true))`: something changed and is pending; `false`:
    /// nothing changed, nothing is pending. The report holds the plan's outline only (a
    /// proved no-op builds no plan).
    pub fn apply(&self, model: &Model, guard_pid: u32) -> Result<(Applied, bool), KernelError> {
        let saved = std::cell::Cell::new(false);
        let save_before = |b: &apply::Before| {
            let touched: BTreeSet<&String> = b
                .changes
                .sysctls
                .iter()
                .chain(&b.changes.sysctls_restore)
                .map(|c| &c.key)
                .collect();
            save(&Pending {
                token: self.token.clone(),
                deadline: self.deadline,
                deadline_unix: unix(self.deadline.wall()),
                guard_pid,
                rules: b.observed.rules.clone(),
                routes: b.observed.routes.clone(),
                nft_changed: b.changes.nft.is_some(),
                saved_table: b.saved_table.map(str::to_string),
                state_before: b.state.clone(),
                sysctls: b
                    .observed
                    .host
                    .sysctls
                    .iter()
                    .filter(|(k, _)| touched.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })?;
            saved.set(true);
            Ok(())
        };
        let opts = ApplyOptions {
            lock: Locking::Held(&self.lock),
            before_change: Some(&save_before),
            ..ApplyOptions::default()
        };
        let report = apply::apply_outlined(model, &opts)?;
        Ok((report, saved.get()))
    }
}

/// Forget a pending change without a rollback (`remove` took everything away): its
/// guard, if it still runs, finds nothing to guard and exits.
pub(crate) fn forget() -> Result<(), KernelError> {
    discard()?;
    rundir::remove(&last_path()?)?;
    guarded().map(drop)
}

/// `symroute confirm`: keep the pending change. False when nothing was pending.
pub fn confirm() -> Result<bool, KernelError> {
    let _lock = rundir::lock(rundir::WAIT_COMMAND)?;
    let kept = discard()?;
    if kept {
        record(Ended::Confirmed);
    }
    Ok(kept)
}

// ---------------------------------------------------------------------------------------
// the guard's side

/// What the caller tells its guard after the apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change is made and pending: roll it back at the deadline unless confirmed.
    Applied,
    /// Nothing changed (nothing to do, or refused before any change).
    Unchanged,
    /// The apply failed (it rolled back itself): make sure, now.
    Failed,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        }
    }
}

/// The caller's end of the line to its guard.
pub struct GuardLink(UnixStream);

impl GuardLink {
    /// Wait for the guard's `armed` (or its reason for not arming).
    pub fn armed(stream: UnixStream) -> Result<GuardLink, KernelError> {
        let io = |source| KernelError::Io {
            what: "waiting for the confirm guard to start".into(),
            source,
        };
        stream.set_read_timeout(Some(ARM_TIMEOUT)).map_err(io)?;
        let mut line = String::new();
        read_line(&stream, &mut line).map_err(io)?;
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("armed", _) => Ok(GuardLink(stream)),
            ("refused", why) => Err(KernelError::Other(format!(
                "the confirm guard did not start: {why}"
            ))),
            _ => Err(KernelError::Other(
                "the confirm guard exited before it was armed".into(),
            )),
        }
    }

    /// Tell the guard how the apply ended (it acts on it; a lost message reads as a
    /// vanished caller, which rolls back too).
    pub fn tell(mut self, outcome: Outcome) {
        let _ = writeln!(self.0, "{}", outcome.word());
    }
}

/// What a guard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guarded {
    /// The apply changed nothing: nothing to guard.
    Unchanged,
    /// Confirmed in time (or taken away by `remove`): nothing to do.
    Kept,
    /// Rolled back, and why.
    RolledBack(Cause),
}

/// Why a guard rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Not confirmed by the deadline.
    Deadline,
    /// At once: the apply did not complete (it failed, or its caller vanished).
    Unfinished,
    /// At once: the guard was told to stop (SIGTERM: a shutdown, the login session's
    /// scope going away), and an unconfirmed change must not outlive its guard.
    Stopped,
}

/// The guard (`symroute confirm-watch`), in the caller's namespace: arm, then follow the
/// caller's apply over `link` and act as the module doc says. How it ended is recorded
/// for `symroute status` (the guard has no terminal to tell: its caller may be gone).
///
/// `stop` is set (by the caller's SIGTERM handler) to roll back at once.
pub fn guard(
    token: &str,
    deadline: BootTime,
    link: UnixStream,
    stop: &AtomicBool,
) -> Result<Guarded, KernelError> {
    let r = follow(token, deadline, link, stop);
    let ended = match &r {
        // Confirmed (`confirm` records that) or removed (`remove` forgets the record).
        Ok(Guarded::Unchanged | Guarded::Kept) => None,
        Ok(Guarded::RolledBack(Cause::Deadline)) => Some(Ended::RolledBackAtDeadline),
        Ok(Guarded::RolledBack(Cause::Unfinished)) => Some(Ended::RolledBackUnfinished),
        Ok(Guarded::RolledBack(Cause::Stopped)) => Some(Ended::RolledBackStopped),
        // Refused before it was armed: it guarded nothing.
        Err(_) if !ARMED.load(Ordering::Relaxed) => None,
        Err(e) => Some(Ended::Failed(e.to_string())),
    };
    if let Some(ended) = ended {
        record(ended);
    }
    r
}

/// Whether this process's guard got as far as arming.
static ARMED: AtomicBool = AtomicBool::new(false);

fn follow(
    token: &str,
    deadline: BootTime,
    link: UnixStream,
    stop: &AtomicBool,
) -> Result<Guarded, KernelError> {
    let mut link = link;
    // Held for the guard's whole life; its file goes with it.
    let _guard = match rundir::lock_path(&guard_path()?, GUARD_LOCK_WAIT) {
        Ok(l) => l.unlink_on_drop(),
        Err(e) => {
            let _ = writeln!(link, "refused {e}");
            return Err(e);
        }
    };
    writeln!(link, "armed").map_err(|source| KernelError::Io {
        what: "telling the caller the guard is armed".into(),
        source,
    })?;
    ARMED.store(true, Ordering::Relaxed);
    // Until the deadline, wait for the caller's word.
    let mut line = String::new();
    let heard = loop {
        if stop.load(Ordering::Relaxed) {
            return roll_back_now(token, Cause::Stopped);
        }
        let left = deadline.remaining();
        if left.is_zero() {
            break None;
        }
        // Woken every POLL to see whether it was told to stop.
        let _ = link.set_read_timeout(Some(left.min(POLL)));
        match read_line(&link, &mut line) {
            Ok(_) => break Some(line.trim().to_string()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break Some(String::new()),
        }
    };
    drop(link);
    match heard.as_deref() {
        Some("unchanged") => Ok(Guarded::Unchanged),
        Some("applied") | None => {
            // Applied (or still applying at the deadline): wait out the deadline.
            while !deadline.passed() {
                if stop.load(Ordering::Relaxed) {
                    return roll_back_now(token, Cause::Stopped);
                }
                match load() {
                    Ok(Some(p)) if p.token == token => {}
                    // Confirmed, or replaced by `remove`: nothing left to guard.
                    Ok(_) => return Ok(Guarded::Kept),
                    // Unreadable now and then (a write in progress cannot be: it is
                    // atomic) is not a confirm: keep guarding.
                    Err(_) => {}
                }
                std::thread::sleep(deadline.remaining().min(POLL));
            }
            roll_back_now(token, Cause::Deadline)
        }
        // Failed, or the caller vanished mid-apply: put it back now.
        Some(_) => roll_back_now(token, Cause::Unfinished),
    }
}

/// Read up to a newline into `line`, byte by byte (so a timeout never loses input read
/// ahead), at most 256 bytes; an empty result at the end of the stream.
fn read_line(mut stream: &UnixStream, line: &mut String) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        if stream.read(&mut byte)? == 0 || byte[0] == b'\n' {
            return Ok(());
        }
        line.push(char::from(byte[0]));
    }
    Ok(())
}

/// Put back what the pending change named `token` saved and forget it (under the
/// namespace lock, waited for as long as it takes; nothing happens when it was
/// confirmed meanwhile).
fn roll_back_now(token: &str, cause: Cause) -> Result<Guarded, KernelError> {
    let _lock = loop {
        match rundir::lock(rundir::WAIT_COMMAND) {
            Ok(l) => break l,
            Err(KernelError::Locked { .. }) => continue,
            Err(e) => return Err(e),
        }
    };
    let Some(p) = load()? else {
        return Ok(Guarded::Kept);
    };
    if p.token != token {
        return Ok(Guarded::Kept);
    }
    let r = roll_back_pending(&p);
    discard()?;
    r.map(|()| Guarded::RolledBack(cause))
}

/// The rollback of one pending change (the lock held).
fn roll_back_pending(p: &Pending) -> Result<(), KernelError> {
    let before = Observed {
        host: HostView {
            sysctls: p.sysctls.clone(),
            ..HostView::default()
        },
        rules: p.rules.clone(),
        routes: p.routes.clone(),
        ..Observed::default()
    };
    apply::roll_back(
        &before,
        p.nft_changed,
        p.saved_table.as_deref(),
        &p.state_before,
        Faults::default(),
    )
}
