//! Running `nft` and friends, with errors that say what was run and what it said.

use std::io::Write;
use std::process::{Command, Stdio};

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

/// Run `program args…` with optional stdin; stdout on success.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
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
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up again as the tool's own failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| KernelError::Io {
        what: format!("waiting for `{cmd_line}`"),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Failed {
            cmd: cmd_line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
