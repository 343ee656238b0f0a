//! Running `nft` and friends, with errors that say what was run and what it said.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("`{cmd}` is not installed or not runnable ({source}); install it (Debian: apt-get install {package})")]
    Missing {
        cmd: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    /// A netlink request the kernel refused, named by the `ip` command doing the same.
    #[error("`{request}` failed: {reason}")]
    Netlink { request: String, reason: String },
    #[error("cannot understand the output of `{cmd}`: {detail}")]
    Parse { cmd: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to change anything:\n  {}", .0.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n  "))]
    Conflicts(Vec<symroute_core::plan::diff::Conflict>),
    /// Another symroute process held the namespace's lock for longer than the caller
    /// may wait (`rundir::lock`).
    #[error("another symroute process is working in this network namespace: {path} stayed locked for {waited_ms} ms; try again once it is done")]
    Locked { path: String, waited_ms: u64 },
    /// A tool ran past its time limit and was killed (`cmd::TIMEOUT`).
    #[error("`{cmd}` did not finish within {secs} s and was killed")]
    TimedOut { cmd: String, secs: f64 },
    #[error("{0}")]
    Other(String),
}

fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "conntrack" => "conntrack",
        "iptables-save" | "ip6tables-save" => "iptables",
        _ => "iproute2",
    }
}

/// How long a tool may run. `nft -f` loading a 10,000-selector table takes well under a
/// second; a tool still running after this is stuck (a wedged netlink socket, a lock
/// held by another program) and is killed, so no symroute command or daemon loop waits
/// for ever.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Run `program args…` with optional stdin; stdout on success.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    run_within(program, args, stdin, TIMEOUT)
}

/// [`run`] with its own time limit. The pipes are read (and stdin written) on threads of
/// their own while this one waits with a deadline: std's `wait_with_output` has none, and
/// the child is killed through its own handle (never by a pid that may have been reused).
pub fn run_within(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> Result<String, KernelError> {
    let cmd_line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| KernelError::Missing {
            cmd: program.to_string(),
            package: package_of(program),
            source,
        })?;
    let input = child.stdin.take().zip(stdin.map(str::to_owned));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // A write error shows up again as the tool's own failure below.
        let writer = input.map(|(mut pipe, text)| {
            std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            })
        });
        let errors = std::thread::spawn(move || read_all(stderr));
        let out = read_all(stdout);
        let err = errors.join().unwrap_or_default();
        if let Some(w) = writer {
            let _ = w.join();
        }
        let _ = tx.send((out, err));
    });
    let waited = |source| KernelError::Io {
        what: format!("waiting for `{cmd_line}`"),
        source,
    };
    let (out, err) = match rx.recv_timeout(limit) {
        Ok(o) => o,
        Err(_) => {
            // Killed and reaped; its pipes close, so the reading thread ends too.
            let _ = child.kill();
            child.wait().map_err(waited)?;
            return Err(KernelError::TimedOut {
                cmd: cmd_line,
                secs: limit.as_secs_f64(),
            });
        }
    };
    let status = child.wait().map_err(waited)?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(KernelError::Failed {
            cmd: cmd_line,
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        })
    }
}

fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn output_stdin_and_failures_come_back() {
        assert_eq!(run("cat", &[], Some("hello\n")).unwrap(), "hello\n");
        // More than a pipe buffer each way: neither side may block the other.
        let big = "x".repeat(1 << 20);
        assert_eq!(run("cat", &[], Some(&big)).unwrap().len(), big.len());
        match run("sh", &["-c", "echo out; echo oops >&2; exit 3"], None) {
            Err(KernelError::Failed { cmd, stderr }) => {
                assert_eq!(cmd, "sh -c echo out; echo oops >&2; exit 3");
                assert_eq!(stderr, "oops");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run("symroute-no-such-tool", &[], None),
            Err(KernelError::Missing { .. })
        ));
    }

    #[test]
    fn a_stuck_tool_is_killed_at_its_limit() {
        let t0 = Instant::now();
        // Not reading its stdin either: the writer must not hold us.
        let big = "x".repeat(1 << 20);
        let r = run_within("sleep", &["30"], Some(&big), Duration::from_millis(300));
        let took = t0.elapsed();
        assert!(
            matches!(&r, Err(KernelError::TimedOut { cmd, .. }) if cmd == "sleep 30"),
            "{r:?}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}
