//! Long-running programs the lab starts inside a namespace (keepalived, conntrackd, `symroute
//! run`), each with its output kept (and optionally shown as it comes), stopped politely on
//! drop: SIGTERM, a grace period, then SIGKILL. They also get SIGTERM if the lab process
//! dies first (PR_SET_PDEATHSIG), so a killed lab leaves none of them running.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::netns::Netns;

/// What to do with each line a service prints: `None` drops it from the display (it is
/// kept in the log either way).
pub type Show = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A program running in a namespace.
pub struct Service {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Other processes it forked that must go with it (keepalived's VRRP child), read from
    /// pid files when it stops.
    pid_files: Vec<std::path::PathBuf>,
    /// How long SIGTERM may take before SIGKILL.
    grace: Duration,
}

impl Service {
    /// Starts `args` in `ns` (`ip netns exec`). Every line of its stdout and stderr is kept
    /// with its arrival time; `show` decides which are printed, and how, as they arrive.
    pub fn start(
        ns: &Netns,
        name: &str,
        args: &[&str],
        show: Option<Show>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl only sets a flag of the new process; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} in netns {}", ns.name()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let show: Arc<Option<Show>> = Arc::new(show);
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let lines = lines.clone();
            let show = show.clone();
            std::thread::Builder::new()
                .name(format!("log-{name}"))
                .spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        if let Some(s) = show.as_ref().as_ref().and_then(|f| f(&line)) {
                            println!("{s}");
                        }
                        lock(&lines).push((Instant::now(), line));
                    }
                })
                .context("starting a log thread")?;
        }
        Ok(Service {
            name: name.to_string(),
            child,
            lines,
            pid_files: Vec::new(),
            grace: Duration::from_secs(3),
        })
    }

    /// Processes it forks whose pids it writes to these files go with it on stop.
    pub fn with_pid_files(mut self, files: Vec<std::path::PathBuf>) -> Self {
        self.pid_files = files;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line so far.
    pub fn log(&self) -> Vec<String> {
        lock(&self.lines).iter().map(|(_, l)| l.clone()).collect()
    }

    /// Lines that arrived after `t`.
    pub fn log_since(&self, t: Instant) -> Vec<String> {
        lock(&self.lines)
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Fails when it has exited (with what it printed last).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            let log = self.log();
            let tail = log[log.len().saturating_sub(8)..].join("\n    ");
            anyhow::bail!("{} exited early ({status}):\n    {tail}", self.name);
        }
        Ok(())
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; the same for the processes
    /// named in its pid files. Idempotent.
    pub fn stop(&mut self) {
        let forked: Vec<i32> = self
            .pid_files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| t.trim().parse().ok())
            .filter(|p| *p > 1)
            .collect();
        if matches!(self.child.try_wait(), Ok(None)) {
            // Our own child, not reaped yet.
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + self.grace;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for pid in forked {
            // Only if it is still that program (pids get reused).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if comm.contains(self.name.split_whitespace().next().unwrap_or("")) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
