//! `symroute snapshot DIR`: a box's routing-relevant state saved as the plain outputs of
//! the usual commands, so `explain`/`doctor`/`import` can work on another machine's state
//! and users can make the same files by hand (see README, "Snapshots").

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{cmd, KernelError};

/// File name → the command whose output it holds (as a user would type it).
pub const FILES: &[(&str, &str)] = &[
    ("ip-rule.txt", "ip rule"),
    ("ip6-rule.txt", "ip -6 rule"),
    ("ip-route.txt", "ip route show table all"),
    ("ip6-route.txt", "ip -6 route show table all"),
    ("nft.json", "nft -j list ruleset"),
    ("iptables-save.txt", "iptables-save"),
    ("ip6tables-save.txt", "ip6tables-save"),
    ("ip-addr.json", "ip -j addr"),
    ("ip-link.json", "ip -j link"),
    (
        "sysctl.txt",
        "sysctl -a (net.ipv4/net.ipv6 conf, forwarding)",
    ),
];

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub written: Vec<String>,
    /// File → why it could not be made (tool missing, permission…).
    pub missing: BTreeMap<String, String>,
}

/// Capture the current namespace's state into `dir` (created if needed).
pub fn take(dir: &Path) -> Result<Report, KernelError> {
    std::fs::create_dir_all(dir).map_err(|source| KernelError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let captured = capture();
    let mut report = Report {
        missing: captured.missing,
        ..Report::default()
    };
    for (file, text) in &captured.files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|source| KernelError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        report.written.push(file.clone());
    }
    Ok(report)
}

/// What `take` would write, in memory (the live state for `explain`, `doctor`, `import`).
pub fn capture() -> Captured {
    let mut c = Captured::default();
    for (file, command) in FILES {
        let result = if *file == "sysctl.txt" {
            Ok(sysctl_lines())
        } else {
            let words: Vec<&str> = command.split_whitespace().collect();
            cmd::run(words[0], &words[1..], None)
        };
        match result {
            Ok(text) => {
                c.files.insert(file.to_string(), text);
            }
            Err(e) => {
                c.missing.insert(file.to_string(), e.to_string());
            }
        }
    }
    c
}

/// Command outputs by file name, and the ones that could not be made (with why).
#[derive(Debug, Default)]
pub struct Captured {
    pub files: BTreeMap<String, String>,
    pub missing: BTreeMap<String, String>,
}

/// `key = value` lines like `sysctl -a` prints, for the keys routing depends on.
fn sysctl_lines() -> String {
    let mut out = Vec::new();
    for fam in ["ipv4", "ipv6"] {
        let base = format!("/proc/sys/net/{fam}/conf");
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        let mut ifaces: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ifaces.sort();
        for iface in ifaces {
            let Ok(keys) = std::fs::read_dir(format!("{base}/{iface}")) else {
                continue;
            };
            let mut keys: Vec<String> = keys
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            keys.sort();
            for key in keys {
                if let Ok(v) = std::fs::read_to_string(format!("{base}/{iface}/{key}")) {
                    // sysctl writes '.' in interface names as '/'.
                    out.push(format!(
                        "net.{fam}.conf.{}.{key} = {}",
                        iface.replace('.', "/"),
                        v.trim()
                    ));
                }
            }
        }
    }
    for key in [
        "net/ipv4/ip_forward",
        "net/ipv4/icmp_errors_use_inbound_ifaddr",
        "net/ipv4/fwmark_reflect",
        "net/ipv6/fwmark_reflect",
        "net/ipv4/tcp_fwmark_accept",
    ] {
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/{key}")) {
            out.push(format!("{} = {}", key.replace('/', "."), v.trim()));
        }
    }
    out.join("\n") + "\n"
}

/// A snapshot read back: file name → contents, and the expected files that are absent.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: BTreeMap<String, String>,
    pub missing: Vec<String>,
}

pub fn load(dir: &Path) -> Result<Loaded, KernelError> {
    if !dir.is_dir() {
        return Err(KernelError::Other(format!(
            "{}: not a snapshot directory (make one with `symroute snapshot DIR`)",
            dir.display()
        )));
    }
    let mut loaded = Loaded::default();
    for (file, _) in FILES {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(text) => {
                loaded.files.insert(file.to_string(), text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                loaded.missing.push(file.to_string())
            }
            Err(source) => {
                return Err(KernelError::Io {
                    what: format!("reading {}", dir.join(file).display()),
                    source,
                });
            }
        }
    }
    Ok(loaded)
}
