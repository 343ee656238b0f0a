//! The control socket: `symroute status`, `apply` and `confirm` talk to a running
//! `symroute run` of the same network namespace over a unix socket next to its state
//! file (/run/symroute/netns-<cookie>.sock, mode 0600, removed on exit; a stale one left
//! by a killed daemon is replaced). One JSON request line, one JSON response line:
//!
//! ```text
//! {"request":"status"}
//! {"request":"reload","config":"/etc/symroute/new.toml","confirm":60}
//! {"request":"confirm"}
//! ```
//!
//! A listener thread accepts; a thread per connection reads the request and hands it to
//! the actor as `Event::Control` with a reply channel. The actor alone decides.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::event::Event;
use super::gateways::{rfc3339, unix, LiveGateway};
use super::pending::{self, PendingConfirm};
use super::{Daemon, DaemonError};
use crate::config;
use crate::kernel::clock::BootTime;
use crate::kernel::status::DaemonInfo;
use crate::kernel::{state, KernelError};

/// How long a client waits for the daemon's answer (a reload applies first).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests are one short line.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// The daemon's live view: gateways' state, since, loss, round trip.
    Status,
    /// Switch to this config file (validate → apply; a bad one changes nothing). With
    /// `confirm`, go back to the previous config after that many seconds unless a
    /// `confirm` request arrives first.
    Reload {
        config: PathBuf,
        #[serde(default)]
        confirm: Option<u64>,
    },
    /// Keep the config of a pending `reload` with `confirm`.
    Confirm,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// The exit code for the command that asked: 0 ok, 1 failure, 2 bad config.
    pub code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to print, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
}

impl Response {
    fn done(lines: Vec<String>) -> Self {
        Response {
            ok: true,
            lines,
            ..Response::default()
        }
    }

    fn failed(code: u8, error: impl Into<String>) -> Self {
        Response {
            ok: false,
            code,
            error: Some(error.into()),
            ..Response::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon: DaemonInfo,
    /// The STATUS= line: `applied, 2 gateways up`, …
    pub summary: String,
    pub pending_confirm: Option<PendingInfo>,
    pub gateways: Vec<LiveGateway>,
    /// Gateways its health checks hold down (name → why): the plan the daemon keeps is
    /// built with them, so `status` and `plan` compare against that plan, not the bare
    /// config's.
    #[serde(default)]
    pub health_down: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInfo {
    /// When the daemon goes back to `previous_config` (RFC 3339 UTC).
    pub deadline: String,
    pub deadline_unix: u64,
    pub previous_config: String,
}

/// A request on its way to the actor, with where to send the answer.
#[derive(Debug, Clone)]
pub struct Call {
    pub request: Request,
    pub reply: Sender<Response>,
}

/// Calls are equal when their requests are (the reply channels cannot be compared).
impl PartialEq for Call {
    fn eq(&self, other: &Self) -> bool {
        self.request == other.request
    }
}

impl Eq for Call {}

// ---------------------------------------------------------------------------------------
// client

fn io(what: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Io { what, source }
}

/// Ask this namespace's daemon. `Ok(None)`: no daemon runs here (no socket, or a stale
/// one nobody listens on).
pub fn call(req: &Request) -> Result<Option<Response>, KernelError> {
    let path = state::socket_path()?;
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
    let what = || format!("talking to the daemon over {}", path.display());
    s.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io(what()))?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io(what()))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(io(what()))?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| KernelError::Parse {
            cmd: what(),
            detail: format!("{e} in {answer:?}"),
        })
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
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept(listener, tx))
            .map_err(err("starting the thread serving"))?;
        info!("control socket: {}", path.display());
        Ok(guard)
    }
}

/// Bind with mode 0600 from the start (umask), then make sure of it.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file mode mask; no file is created by other
    // threads of the daemon meanwhile.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn accept(listener: UnixListener, tx: Sender<Event>) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                let tx = tx.clone();
                let r = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve(s, &tx));
                if let Err(e) = r {
                    warn!("control socket: could not start a thread for a client: {e}");
                }
            }
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(mut s: UnixStream, tx: &Sender<Event>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let read = BufReader::new((&s).take(MAX_REQUEST)).read_line(&mut line);
    let resp = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()))
    {
        Err(e) => Response::failed(1, format!("not a request symroute understands: {e}")),
        Ok(request) => {
            let (reply, answer) = mpsc::channel();
            if tx.send(Event::Control(Call { request, reply })).is_err() {
                Response::failed(1, "the daemon is exiting")
            } else {
                answer
                    .recv()
                    .unwrap_or_else(|_| Response::failed(1, "the daemon exited before answering"))
            }
        }
    };
    let mut text = serde_json::to_string(&resp).expect("response serializes");
    text.push('\n');
    let _ = s.write_all(text.as_bytes());
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
        };
        let _ = call.reply.send(resp);
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
        let model = match config::load(&path) {
            Ok(m) => m,
            Err(e) => return Response::failed(2, e.to_string()),
        };
        info!("`symroute apply`: switching to {}", path.display());
        self.systemd.reloading();
        let previous = (self.config.clone(), self.model.clone());
        let resp = match self.switch_to(path.clone(), model) {
            Ok(changes) => {
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
                        pending::save(&path, &p);
                        self.pending = Some(p);
                    }
                    Some(_) => lines.push("nothing to confirm: nothing changed".into()),
                    None => {}
                }
                Response::done(lines)
            }
            Err(e) => {
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
                info!("`symroute confirm`: keeping {}", self.config.display());
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
            .filter(|g| g.state == "down")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        let r: Request = serde_json::from_str(r#"{"request":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request =
            serde_json::from_str(r#"{"request":"reload","config":"/etc/s.toml"}"#).unwrap();
        assert_eq!(
            r,
            Request::Reload {
                config: "/etc/s.toml".into(),
                confirm: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Confirm).unwrap(),
            r#"{"request":"confirm"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::failed(2, "bad.toml:1:1: x")).unwrap(),
            r#"{"ok":false,"code":2,"error":"bad.toml:1:1: x"}"#
        );
    }
}
