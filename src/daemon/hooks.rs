//! `[settings] on_change`: commands run on every gateway up↔down change (and once per
//! gateway at startup, from the old state "none"), with the event in environment
//! variables. The actor only queues them; one worker thread runs them in order.
//!
//! Bounded whatever the gateways do: at most one run waits per gateway (a change that
//! comes before its gateway's waiting run started replaces it: the latest state wins),
//! so a flapping link queues no backlog. Each command runs as `/bin/sh -c CMD` in its own
//! process group, without the daemon's systemd variables (`NOTIFY_SOCKET`, `WATCHDOG_*`:
//! a hook must not speak for the daemon), for at most `LIMIT`; when it exits (or is
//! killed at the limit) its whole process group is killed too, so nothing it left in the
//! background lingers. Its output (stdout and stderr together) goes to the log, the
//! first `OUTPUT_CAP` bytes of it.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::gateways::Change;
use crate::kernel::status::{self, State};

/// How long one hook may run before it is killed.
pub const LIMIT: Duration = Duration::from_secs(30);
/// How much of a hook's output is logged.
pub const OUTPUT_CAP: usize = 4096;
/// The daemon's own systemd variables, kept from hooks.
const PRIVATE_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

struct Job {
    gateway: String,
    commands: Vec<String>,
    env: Vec<(&'static str, String)>,
    what: String,
}

/// Jobs waiting for the worker: at most one per gateway, in order of arrival.
#[derive(Default)]
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

impl Queue {
    /// Add `job`, or let it replace its gateway's waiting one. Returns what it replaced.
    fn put(&self, job: Job) -> Option<String> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let replaced = match jobs.iter_mut().find(|j| j.gateway == job.gateway) {
            Some(waiting) => Some(std::mem::replace(waiting, job).what),
            None => {
                jobs.push_back(job);
                None
            }
        };
        self.ready.notify_one();
        replaced
    }

    fn take(&self) -> Job {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = jobs.pop_front() {
                return job;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The queue to the worker thread (started on first use).
#[derive(Default)]
pub struct Hooks(Option<Arc<Queue>>);

impl Hooks {
    /// Queue `commands` for one up↔down change (or a gateway seen for the first time);
    /// never blocks.
    pub fn fire(&mut self, commands: &[String], c: &Change, netns: Option<&str>) {
        if commands.is_empty() {
            return;
        }
        let job = Job {
            gateway: c.gateway.clone(),
            commands: commands.to_vec(),
            env: env(c, netns),
            what: format!("gateway {} {}→{}", c.gateway, old_name(c), c.new_state()),
        };
        let queue = match &self.0 {
            Some(q) => q.clone(),
            None => {
                let q = Arc::new(Queue::default());
                let worker = q.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("hooks".into())
                        .spawn(move || loop {
                            let job = worker.take();
                            for cmd in &job.commands {
                                run_one(cmd, &job.env, &job.what);
                            }
                        });
                if let Err(e) = spawned {
                    warn!(
                        "on_change: could not start the hook thread, not running hooks for {}: {e}",
                        job.what
                    );
                    return;
                }
                self.0 = Some(q.clone());
                q
            }
        };
        let what = job.what.clone();
        if let Some(old) = queue.put(job) {
            info!("on_change: {what} came before the hooks for {old} started: they run once, for {what}");
        }
    }
}

/// The state a hook is told a gateway left: up, down, or "none" when first seen.
fn old_name(c: &Change) -> &'static str {
    c.old_state().map_or("none", State::as_str)
}

/// The environment a hook sees.
fn env(c: &Change, netns: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SYMROUTE_EVENT", "gateway".to_string()),
        ("SYMROUTE_GATEWAY", c.gateway.clone()),
        ("SYMROUTE_INTERFACE", c.interface.clone()),
        ("SYMROUTE_OLD_STATE", old_name(c).to_string()),
        ("SYMROUTE_NEW_STATE", c.new_state().to_string()),
        (
            "SYMROUTE_REASON",
            status::reason(&c.new).unwrap_or_default(),
        ),
    ];
    if let Some(ns) = netns {
        env.push(("SYMROUTE_NETNS", ns.to_string()));
    }
    env
}

/// What one command did.
#[derive(Debug)]
struct Ran {
    status: Result<ExitStatus, String>,
    /// The first `OUTPUT_CAP` bytes of its output, and how many more there were.
    output: Vec<u8>,
    dropped: usize,
}

fn run_one(cmd: &str, env: &[(&'static str, String)], what: &str) -> Ran {
    let started = Instant::now();
    let ran = match spawn(cmd, env) {
        Ok((child, out)) => wait(child, out),
        Err(e) => {
            warn!("on_change `{cmd}` ({what}): could not start /bin/sh: {e}");
            return Ran {
                status: Err(e.to_string()),
                output: Vec::new(),
                dropped: 0,
            };
        }
    };
    let ms = started.elapsed().as_millis();
    match &ran.status {
        Ok(st) if st.success() => info!("on_change `{cmd}` ({what}): exit 0 in {ms} ms"),
        Ok(st) => warn!("on_change `{cmd}` ({what}): {} in {ms} ms", describe(*st)),
        Err(why) => warn!("on_change `{cmd}` ({what}): {why}"),
    }
    for line in String::from_utf8_lossy(&ran.output).lines() {
        info!("on_change `{cmd}` ({what}) said: {line}");
    }
    if ran.dropped > 0 {
        info!(
            "on_change `{cmd}` ({what}): {} more byte(s) of output not logged",
            ran.dropped
        );
    }
    ran
}

/// Start `cmd` in a process group of its own, stdout and stderr into one pipe.
fn spawn(cmd: &str, env: &[(&'static str, String)]) -> std::io::Result<(Child, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write))
        .process_group(0);
    for k in PRIVATE_ENV {
        command.env_remove(k);
    }
    // `command` (holding our copies of the write end) is dropped on return: the pipe
    // ends when the hook and what it started have closed it.
    let child = command.spawn()?;
    Ok((child, read))
}

/// Wait for the hook (at most `LIMIT`), reading its output; then kill its process group
/// (before reaping it, so the group id cannot have been reused) and reap it.
fn wait(mut child: Child, out: OwnedFd) -> Ran {
    let started = Instant::now();
    let pid = Pid::from_raw(child.id() as i32);
    let mut output = Output::default();
    let status = loop {
        output.read(&out);
        // WNOWAIT: seen exited but left a zombie, which keeps its process group alive.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) if started.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
                break Err(format!("killed after {} s", LIMIT.as_secs()));
            }
            Ok(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                break child
                    .wait()
                    .map_err(|e| format!("waiting for it failed: {e}"));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
                break Err(format!("waiting for it failed: {e}"));
            }
        }
    };
    // The group is dead: the pipe ends once its last writes are read.
    let until = Instant::now() + Duration::from_millis(200);
    while !output.ended && Instant::now() < until {
        output.read(&out);
        if !output.ended {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ran {
        status,
        output: output.kept,
        dropped: output.dropped,
    }
}

/// A hook's output as read so far: the first `OUTPUT_CAP` bytes, and a count of the rest.
#[derive(Default)]
struct Output {
    kept: Vec<u8>,
    dropped: usize,
    ended: bool,
}

impl Output {
    /// Read what the pipe holds now (it is non-blocking).
    fn read(&mut self, pipe: &OwnedFd) {
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(pipe.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    self.ended = true;
                    return;
                }
                Ok(n) => {
                    let keep = n.min(OUTPUT_CAP - self.kept.len());
                    self.kept.extend_from_slice(&buf[..keep]);
                    self.dropped += n - keep;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GatewayState;

    /// A change between "none", "up" and "down" (down by its health check).
    fn transition(gateway: &str, old: &'static str, new: &'static str) -> Change {
        let state = |name| match name {
            "up" => GatewayState::Up,
            "down" => GatewayState::Down("health check: 3 of last 5 probes lost".into()),
            other => panic!("not a state: {other}"),
        };
        Change {
            gateway: gateway.into(),
            interface: "up1".into(),
            old: (old != "none").then(|| state(old)),
            new: state(new),
        }
    }

    #[test]
    fn hook_sees_the_event_in_its_environment() {
        let dir = std::env::temp_dir().join(format!("symroute-hook-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let t = transition("isp1", "up", "down");
        let cmd = format!("env | grep ^SYMROUTE_ | sort > {}", out.display());
        run_one(&cmd, &env(&t, Some("fw")), "test");
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            text,
            "SYMROUTE_EVENT=gateway\nSYMROUTE_GATEWAY=isp1\nSYMROUTE_INTERFACE=up1\n\
             SYMROUTE_NETNS=fw\nSYMROUTE_NEW_STATE=down\nSYMROUTE_OLD_STATE=up\n\
             SYMROUTE_REASON=health check: 3 of last 5 probes lost\n"
        );
    }

    #[test]
    fn output_is_captured_and_capped_and_strays_are_killed() {
        let dir = std::env::temp_dir().join(format!("symroute-hook-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stray = dir.join("stray");
        // Output on both streams, more than the cap, and a child left in the background.
        let cmd = format!(
            "echo to-stdout; echo to-stderr >&2; head -c 10000 /dev/zero | tr '\\0' x; (sleep 60 & echo $! > {})",
            stray.display()
        );
        let t = Instant::now();
        let ran = run_one(&cmd, &[], "test");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(ran.status.as_ref().is_ok_and(|s| s.success()), "{ran:?}");
        let text = String::from_utf8_lossy(&ran.output).into_owned();
        assert!(text.starts_with("to-stdout\nto-stderr\nxxx"), "{text:?}");
        assert_eq!(ran.output.len(), OUTPUT_CAP);
        assert_eq!(ran.output.len() + ran.dropped, 20 + 10000);
        let pid: i32 = std::fs::read_to_string(&stray)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        // Gone, or a zombie waiting for init: not running.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(!running, "the hook's background child still runs: {state}");
    }

    #[test]
    fn one_waiting_run_per_gateway_the_latest_wins() {
        let q = Queue::default();
        let job = |gw: &str, old, new| {
            let t = transition(gw, old, new);
            Job {
                gateway: gw.into(),
                commands: vec![],
                env: env(&t, None),
                what: format!("{gw} {old}→{new}"),
            }
        };
        assert_eq!(q.put(job("isp1", "up", "down")), None);
        assert_eq!(q.put(job("isp2", "none", "up")), None);
        assert_eq!(
            q.put(job("isp1", "down", "up")).as_deref(),
            Some("isp1 up→down")
        );
        assert_eq!(
            q.put(job("isp1", "up", "down")).as_deref(),
            Some("isp1 down→up")
        );
        let order: Vec<String> = (0..2).map(|_| q.take().what).collect();
        assert_eq!(order, ["isp1 up→down", "isp2 none→up"]);
    }
}
