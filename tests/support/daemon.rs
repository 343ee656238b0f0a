//! A running `symroute run -c FILE --netns NS` for the end-to-end tests: its stderr is
//! collected (and echoed), optionally what it sends to a notify socket of our own (as
//! systemd's), and on drop it is stopped with SIGTERM (so it removes its control socket;
//! SIGKILL if it hangs), then `symroute remove` runs and its files go.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use symroute::lab::Netns;

use super::{symroute, Run};

/// How long the first apply may take.
pub const START: Duration = Duration::from_secs(10);
/// How long anything may take to converge before a test fails (the target is 100 ms).
pub const SETTLE: Duration = Duration::from_secs(3);

type Lines = Arc<Mutex<Vec<String>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to start it.
#[derive(Default)]
pub struct Options<'o> {
    /// More arguments for `symroute run` (`--remove-on-exit`).
    pub args: &'o [&'o str],
    /// Environment variables for it (`WATCHDOG_USEC`).
    pub env: &'o [(&'o str, &'o str)],
    /// Give it a notify socket (`NOTIFY_SOCKET`) and keep what it sends there.
    pub notify: bool,
}

/// What the daemon sent to our notify socket, read by a thread until the daemon goes.
struct Notify {
    notes: Lines,
    stop: Arc<AtomicBool>,
}

impl Notify {
    /// Bind `path` and drain it continuously (a full datagram queue would block the
    /// daemon's sends).
    fn listen(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let notes: Lines = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (notes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(len) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..len]);
                    lock(&n).extend(text.lines().map(str::to_string));
                }
            }
        });
        Notify { notes, stop }
    }
}

pub struct Daemon<'a> {
    pub ns: &'a Netns,
    pub child: Child,
    /// Its temp directory: the config file and anything the test puts there.
    pub dir: PathBuf,
    log: Lines,
    notify: Option<Notify>,
}

impl<'a> Daemon<'a> {
    /// A fresh temp directory for a daemon in `ns` (for files the config names).
    pub fn dir_for(ns: &Netns) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("symroute-run-{}-{}", std::process::id(), ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Starts the daemon with `config` in `Daemon::dir_for(ns)` and waits for its first
    /// apply.
    pub fn start(ns: &'a Netns, config: &str) -> Daemon<'a> {
        Self::start_with(ns, config, &Options::default())
    }

    /// `start` with options; with a notify socket, it waits for READY=1.
    pub fn start_with(ns: &'a Netns, config: &str, opts: &Options) -> Daemon<'a> {
        let d = Self::spawn(ns, config, opts);
        if d.notify.is_some() {
            d.wait_ready();
        } else {
            d.wait_log("reconciled at startup", START);
        }
        d
    }

    /// Starts the daemon without waiting for anything (it may fail to start).
    pub fn spawn(ns: &'a Netns, config: &str, opts: &Options) -> Daemon<'a> {
        let dir = Self::dir_for(ns);
        let notify_path = dir.join("notify.sock");
        let notify = opts.notify.then(|| Notify::listen(&notify_path));
        let path = dir.join("symroute.toml");
        write_atomically(&path, config);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_symroute"));
        cmd.args(["run", "-c"])
            .arg(&path)
            .args(["--netns", ns.name(), "--log-level", "debug"])
            .args(opts.args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if notify.is_some() {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        }
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn symroute run");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Lines = Arc::default();
        {
            let (log, tag) = (log.clone(), ns.name().to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  [run {tag}] {line}");
                    lock(&log).push(line);
                }
            });
        }
        Daemon {
            ns,
            child,
            dir,
            log,
            notify,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("symroute.toml")
    }

    /// Replaces the config file (atomically: the daemon never reads half a file).
    pub fn write_config(&self, text: &str) {
        write_atomically(&self.config_path(), text);
    }

    /// Writes `text` to `name` in the daemon's directory; its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap_or_else(|e| panic!("kill({sig}): {e}"));
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn log(&self) -> String {
        lock(&self.log).join("\n")
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_count(needle, 1, timeout);
    }

    /// Waits until `needle` occurs `n` times in the log.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {needle:?} {n} time(s) within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What it sent to the notify socket (started with `Options::notify`).
    pub fn notes(&self) -> Vec<String> {
        let notify = self.notify.as_ref().expect("started with a notify socket");
        lock(&notify.notes).clone()
    }

    /// Waits for the notification `what` at index `from` or later; returns its index.
    pub fn wait_note(&self, what: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let notes = self.notes();
            if let Some(i) = notes.iter().skip(from).position(|n| n == what) {
                return from + i;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {what} from the daemon within {timeout:?}; notifications: {notes:?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START;
        while !self.notes().iter().any(|n| n == "READY=1") {
            // Signal 0 only checks the pid exists; a zombie has exited.
            let alive = kill(Pid::from_raw(self.pid()), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                    .unwrap_or_default()
                    .contains(") Z ");
            assert!(
                alive,
                "symroute run exited before READY=1; log:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "no READY=1 within {START:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its exit code, once it has exited (within `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "symroute run still running {timeout:?} after the signal; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `symroute plan` with the daemon's current config file.
    pub fn plan(&self) -> Run {
        with_config(&["plan"], &self.config_path(), self.ns)
    }

    /// Waits until `symroute plan` says there is nothing to do.
    pub fn wait_converged(&self, what: &str) {
        wait_plan_clean(self.ns, what, || self.plan(), &self.log());
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        stop(&mut self.child);
        if let Some(n) = &self.notify {
            n.stop.store(true, Ordering::Relaxed);
        }
        let _ = symroute(&["remove", "--netns", self.ns.name()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Waits (up to `SETTLE`) until `plan` says there is nothing to do in `ns`.
pub fn wait_plan_clean(ns: &Netns, what: &str, plan: impl Fn() -> Run, log: &str) {
    let t0 = Instant::now();
    loop {
        let r = plan();
        if r.code == 0 && r.stdout.contains("no changes") {
            eprintln!(
                "{what}: converged (plan: no changes) after {:?}",
                t0.elapsed()
            );
            return;
        }
        assert!(
            t0.elapsed() < SETTLE,
            "{what}: {} still has changes to make after {SETTLE:?}:\n{}{}\ndaemon log:\n{log}",
            ns.name(),
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a child with SIGTERM (so it removes its control socket), SIGKILL if it is still
/// there 5 s later, and reaps it.
pub fn stop(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `symroute ARGS... -c PATH --netns NS`.
pub fn with_config<'p>(args: &[&'p str], path: &'p Path, ns: &'p Netns) -> Run {
    let path = path.to_str().expect("utf-8 path");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", path, "--netns", ns.name()]);
    symroute(&all)
}
