//! A running `symroute run -c FILE --netns NS` (the real binary) with its stderr
//! collected; killed on drop, which then runs `symroute remove` in the namespace.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use symroute::lab::Netns;

use super::symroute;

pub struct Daemon<'a> {
    pub ns: &'a Netns,
    child: Child,
    dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl<'a> Daemon<'a> {
    /// Starts the daemon with `config` (debug logging, no systemd), without waiting.
    pub fn start(ns: &'a Netns, config: &str) -> Daemon<'a> {
        let dir = std::env::temp_dir().join(format!(
            "symroute-daemon-{}-{}",
            std::process::id(),
            ns.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
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
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  [run] {line}");
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Daemon {
            ns,
            child,
            dir,
            log,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits until a logged line contains `needle`; the line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {needle:?} within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = symroute(&["remove", "--netns", self.ns.name()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
