//! A running `symroute run -c FILE --netns NS` for the end-to-end tests: stderr is
//! collected (and echoed), and on drop it is stopped with SIGTERM (so it removes its
//! control socket; SIGKILL if it hangs), then `symroute remove` runs and its files go.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use symroute::lab::Netns;

use super::symroute;

pub struct Daemon<'a> {
    pub ns: &'a Netns,
    pub child: Child,
    /// Its temp directory: the config file and anything the test puts there.
    pub dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
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
        let dir = Self::dir_for(ns);
        let path = dir.join("symroute.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_symroute"))
            .args(["run", "-c"])
            .arg(&path)
            .args(["--netns", ns.name(), "--log-level", "debug"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn symroute run");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (log, tag) = (log.clone(), ns.name().to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  [run {tag}] {line}");
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let d = Daemon {
            ns,
            child,
            dir,
            log,
        };
        d.wait_log("reconciled at startup", Duration::from_secs(10));
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("symroute.toml")
    }

    /// Writes `text` to `name` in the daemon's directory; its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
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

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = symroute(&["remove", "--netns", self.ns.name()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a child with SIGTERM (so it removes its control socket), SIGKILL if it is still
/// there 5 s later, and reaps it.
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `symroute ARGS... -c PATH --netns NS`.
pub fn with_config<'p>(args: &[&'p str], path: &'p Path, ns: &'p Netns) -> super::Run {
    let path = path.to_str().expect("utf-8 path");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", path, "--netns", ns.name()]);
    symroute(&all)
}
