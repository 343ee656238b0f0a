//! The control socket: `symroute status`, `apply` and `confirm` talk to a running
//! `symroute run` of the same network namespace over a unix socket next to its state
//! file (/run/symroute/netns-<cookie>.sock, mode 0600, removed on exit; a stale one left
//! by a killed daemon is replaced), in the JSON lines of `protocol`.
//!
//! One thread serves every client (`serve`: at most 64 at once, 2 s to send the request
//! and 2 s to read the answer, 64 KiB at most; a peer that is neither root nor the
//! daemon's user, by SO_PEERCRED, is refused) and hands each request to the actor as
//! `Event::Control` with a `Reply`. The actor alone decides.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::event::Event;
use super::log::notice;
use super::pending::{self, PendingConfirm};
use super::protocol::{line, Call, Reply, Request, Response};
use super::serve;
use super::{Daemon, DaemonError};
use crate::kernel::clock::{rfc3339, unix, BootTime};
use crate::kernel::status::{DaemonInfo, DaemonStatus, PendingInfo, State};
use crate::kernel::{state, KernelError};

/// How long a client waits for the daemon's answer (a reload applies first).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a client tries when the daemon drops it before reading its request.
const CALL_ATTEMPTS: u32 = 6;
/// Requests are one short line.
const MAX_REQUEST: usize = 64 * 1024;
/// A few clients at once (symroute's own commands send their line at once); slow or
/// idle ones are dropped after the deadline, or sooner when newcomers need the slot.
const LIMITS: serve::Limits = serve::Limits {
    max_clients: 64,
    request_deadline: Duration::from_secs(2),
    // A client gives up after CLIENT_TIMEOUT anyway (a long apply answers within it).
    wait_deadline: CLIENT_TIMEOUT,
    answer_deadline: Duration::from_secs(2),
    max_request: MAX_REQUEST,
};

// ---------------------------------------------------------------------------------------
// client

fn io(what: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Io { what, source }
}

/// Ask this namespace's daemon. `Ok(None)`: no daemon runs here (no socket, or a stale
/// one nobody listens on).
pub fn call(req: &Request) -> Result<Option<Response>, KernelError> {
    let path = state::socket_path()?;
    let what = || format!("talking to the daemon over {}", path.display());
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    // A daemon under a flood of clients drops those that have not sent their request
    // yet (`serve`); such a request was never seen, so sending it again is safe.
    let mut pause = Duration::from_millis(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut s = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io(format!("connecting to {}", path.display()))(e)),
        };
        s.set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io(what()))?;
        let mut answer = String::new();
        let r = s
            .write_all(line.as_bytes())
            .and_then(|()| BufReader::new(s).read_line(&mut answer));
        let dropped = match &r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
        };
        if dropped && attempt < CALL_ATTEMPTS {
            std::thread::sleep(pause);
            pause *= 2;
            continue;
        }
        if dropped {
            return Err(KernelError::Other(format!(
                "{}: the daemon dropped the connection {CALL_ATTEMPTS} times before reading the request (too many clients?)",
                what()
            )));
        }
        r.map_err(io(what()))?;
        return serde_json::from_str(&answer)
            .map(Some)
            .map_err(|e| KernelError::Parse {
                cmd: what(),
                detail: format!("{e} in {answer:?}"),
            });
    }
}

/// Delete this namespace's socket if no daemon listens on it (one killed with SIGKILL
/// leaves it behind); `symroute remove` calls this.
pub fn remove_stale() -> Result<(), KernelError> {
    let path = state::socket_path()?;
    match UnixStream::connect(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// server

/// The bound socket; removes it when dropped (if it is still ours).
pub struct Listener {
    path: PathBuf,
    ino: u64,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Bind (refusing when another daemon answers there) and start accepting.
    pub fn spawn(tx: Sender<Event>) -> Result<Listener, DaemonError> {
        let path = state::socket_path()?;
        let err = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| DaemonError::Io { what, source }
        };
        crate::kernel::rundir::ensure_dir()?;
        match UnixStream::connect(&path) {
            Ok(_) => {
                return Err(DaemonError::Watcher(format!(
                    "another `symroute run` is already running in this network namespace (it answers on {})",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                info!("removing the stale control socket {}", path.display());
                std::fs::remove_file(&path).map_err(err("removing the stale socket"))?;
            }
        }
        let listener = bind_private(&path).map_err(err("listening on"))?;
        let ino = std::fs::symlink_metadata(&path)
            .map_err(err("reading"))?
            .ino();
        let guard = Listener {
            path: path.clone(),
            ino,
        };
        let owner = nix::unistd::geteuid().as_raw();
        serve::spawn("control", listener, Control { tx, owner }, LIMITS)
            .map_err(err("starting the thread serving"))?;
        info!("control socket: {}", path.display());
        Ok(guard)
    }
}

/// Bind with mode 0600 from the start (umask), then make sure of it.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    // The mask is the process's: no other thread of the daemon creates a file meanwhile.
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The control protocol on `serve`'s loop: a JSON line in, handed to the actor with a
/// `Reply`; its answer, a JSON line, out.
struct Control {
    tx: Sender<Event>,
    /// Besides root, the user owning the socket (the daemon's) may talk to it.
    owner: u32,
}

impl serve::Protocol for Control {
    /// SO_PEERCRED: the socket is 0600, but a descriptor can be passed on, and a mode
    /// can be loosened by hand; the uid that connected is what counts.
    fn admit(&mut self, client: BorrowedFd<'_>) -> Result<(), Vec<u8>> {
        let uid = getsockopt(&client, PeerCredentials).map(|c| c.uid());
        match uid {
            Ok(0) => Ok(()),
            Ok(uid) if uid == self.owner => Ok(()),
            Ok(uid) => {
                warn!("control socket: refused a client running as uid {uid} (only root or uid {} may)", self.owner);
                Err(line(&Response::failed(
                    1,
                    format!("permission denied: uid {uid} may not talk to symroute run (only root or uid {})", self.owner),
                )))
            }
            Err(e) => Err(line(&Response::failed(
                1,
                format!("cannot tell who you are: {e}"),
            ))),
        }
    }

    fn complete(&self, buf: &[u8]) -> Option<usize> {
        buf.iter().position(|b| *b == b'\n').map(|i| i + 1)
    }

    fn answer(&mut self, request: &[u8], waker: &serve::Waker) -> serve::Answer {
        let request = match serde_json::from_slice::<Request>(request) {
            Ok(r) => r,
            Err(e) => {
                return serve::Answer::Now(line(&Response::failed(
                    1,
                    format!("not a request symroute understands: {e}"),
                )))
            }
        };
        let (tx, rx) = mpsc::channel();
        let reply = Reply::new(tx, waker.clone());
        match self.tx.send(Event::Control(Call { request, reply })) {
            Ok(()) => serve::Answer::Later(rx),
            Err(_) => serve::Answer::Now(line(&Response::failed(1, "the daemon is exiting"))),
        }
    }

    /// A request without its newline at the end of the stream is still a request.
    fn incomplete(&mut self, buf: &[u8], too_large: bool, waker: &serve::Waker) -> serve::Answer {
        if too_large {
            return serve::Answer::Now(line(&Response::failed(
                1,
                format!("request larger than {MAX_REQUEST} bytes"),
            )));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            return serve::Answer::Close;
        }
        self.answer(buf, waker)
    }

    fn busy(&self) -> Option<Vec<u8>> {
        Some(line(&Response::failed(
            1,
            "the daemon is busy answering other clients; try again",
        )))
    }
}

// ---------------------------------------------------------------------------------------
// the actor's side

impl Daemon {
    /// Answer one request (on the actor's thread).
    pub(super) fn control(&mut self, call: Call) {
        let resp = match call.request {
            Request::Status => self.status_response(),
            Request::Reload { config, confirm } => self.reload_request(config, confirm),
            Request::Confirm => self.confirm_request(),
            Request::Reconcile => match self.reconcile(super::Why::Asked) {
                Ok(lines) => Response::done(lines),
                Err(e) => Response::failed(1, e),
            },
            Request::Ha { role } => {
                let mask = self.model.settings.mark_mask;
                let line = self
                    .ha
                    .set_role(role, &self.last_gateways, mask, Instant::now());
                Response::done(vec![line])
            }
        };
        call.reply.send(resp);
    }

    fn status_response(&self) -> Response {
        Response {
            ok: true,
            status: Some(DaemonStatus {
                daemon: DaemonInfo {
                    pid: std::process::id(),
                    config: self.config.display().to_string(),
                    started: rfc3339(self.started),
                    started_unix: unix(self.started),
                },
                summary: self.status(),
                pending_confirm: self.pending.as_ref().map(|p| PendingInfo {
                    deadline: rfc3339(p.deadline.wall()),
                    deadline_unix: unix(p.deadline.wall()),
                    previous_config: p.previous.0.display().to_string(),
                }),
                gateways: self.live.snapshot(&self.model, &self.windows),
                health_down: self.health_down.clone(),
                ha: self.ha.role(),
            }),
            ..Response::default()
        }
    }

    /// `symroute apply [--confirm SECS]` while the daemon runs.
    fn reload_request(&mut self, path: PathBuf, confirm: Option<u64>) -> Response {
        if let Some(secs) = confirm.filter(|s| !crate::kernel::confirm::SECS.contains(s)) {
            return Response::failed(
                2,
                format!("confirm: {secs} is not a number of seconds from 1 to 86400"),
            );
        }
        if let Some(p) = &self.pending {
            return Response::failed(
                1,
                format!(
                    "an earlier `apply --confirm` is still pending (the daemon goes back to {} at {}): run `symroute confirm` to keep it, or wait for it to be rolled back, then apply again",
                    p.previous.0.display(),
                    rfc3339(p.deadline.wall())
                ),
            );
        }
        let model = match crate::config_file::load_trusted(&path) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.reloaded(false);
                return Response::failed(2, e.to_string());
            }
        };
        notice!("`symroute apply`: switching to {}", path.display());
        self.systemd.reloading();
        let previous = (self.config.clone(), self.model.clone());
        let resp = match self.switch_to(path.clone(), model) {
            Ok(changes) => {
                self.metrics.reloaded(true);
                let mut lines = self.down_lines();
                let changed = !changes.is_empty();
                lines.extend(summary_lines(changes));
                match confirm {
                    Some(secs) if changed => {
                        lines.push(format!(
                            "applied; run `symroute confirm` within {secs} s or the daemon goes back to {}",
                            previous.0.display()
                        ));
                        let p = PendingConfirm {
                            deadline: BootTime::now().after(Duration::from_secs(secs)),
                            previous,
                        };
                        pending::save(&path, &self.model, &p);
                        self.pending = Some(p);
                    }
                    Some(_) => lines.push("nothing to confirm: nothing changed".into()),
                    None => {}
                }
                Response::done(lines)
            }
            Err(e) => {
                self.metrics.reloaded(false);
                warn!(
                    "`symroute apply` of {} failed; going back to {}",
                    path.display(),
                    previous.0.display()
                );
                let back = previous.0.display().to_string();
                let _ = self.switch_to(previous.0, previous.1);
                Response::failed(1, format!("{e}\nthe daemon keeps running {back}"))
            }
        };
        self.systemd.ready(&self.status());
        resp
    }

    fn confirm_request(&mut self) -> Response {
        match self.pending.take() {
            Some(_) => {
                pending::forget();
                notice!("`symroute confirm`: keeping {}", self.config.display());
                Response::done(vec![format!(
                    "confirmed: keeping {}",
                    self.config.display()
                )])
            }
            None => Response::failed(
                1,
                "nothing to confirm: no `apply --confirm` is pending in the daemon",
            ),
        }
    }

    /// When an unconfirmed `apply --confirm` runs out.
    pub(super) fn confirm_deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline.instant())
    }

    /// Whether that deadline has passed (on the boot clock it is kept in).
    pub(super) fn confirm_due(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.deadline.passed())
    }

    /// The deadline passed without `symroute confirm`: go back to the previous config.
    pub(super) fn confirm_expired(&mut self) {
        let Some(p) = self.pending.take() else { return };
        pending::forget();
        warn!(
            "`apply --confirm` of {} was not confirmed in time: going back to {}",
            self.config.display(),
            p.previous.0.display()
        );
        self.systemd.reloading();
        let _ = self.switch_to(p.previous.0, p.previous.1);
        self.systemd.ready(&self.status());
    }

    fn down_lines(&self) -> Vec<String> {
        self.live
            .snapshot(&self.model, &self.windows)
            .into_iter()
            .filter(|g| g.state == Some(State::Down))
            .map(|g| {
                format!(
                    "gateway {} is down ({})",
                    g.name,
                    g.reason.unwrap_or_default()
                )
            })
            .collect()
    }
}

/// As `symroute apply` prints them.
fn summary_lines(changes: Vec<String>) -> Vec<String> {
    if changes.is_empty() {
        return vec!["no changes: the kernel already matches the config".into()];
    }
    let n = changes.len();
    let mut lines = changes;
    lines.push(format!("applied: {n} change(s)"));
    lines
}
