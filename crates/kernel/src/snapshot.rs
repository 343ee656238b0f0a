//! `symroute snapshot DIR`: a box's routing-relevant state saved as the plain outputs of
//! the usual commands, so `explain`/`doctor`/`import` can work on another machine's state
//! and users can make the same files by hand (see README, "Snapshots").

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use serde::Serialize;

use super::{cmd, KernelError};

/// File name → the command whose output it holds (as a user would type it).
pub const FILES: &[(&str, &str)] = &[
    ("ip-rule.txt", "ip rule"),
    ("ip6-rule.txt", "ip -6 rule"),
    ("ip-route.txt", "ip route show table all"),
    ("ip6-route.txt", "ip -6 route show table all"),
    ("nft.json", "nft -j list ruleset"),
    (
        IPTABLES_V4,
        "iptables-save (each variant holding tables: -nft, -legacy)",
    ),
    (
        IPTABLES_V6,
        "ip6tables-save (each variant holding tables: -nft, -legacy)",
    ),
    ("ip-addr.json", "ip -j addr"),
    ("ip-link.json", "ip -j link"),
    (
        "sysctl.txt",
        "sysctl -a (net.ipv4/net.ipv6 conf, forwarding)",
    ),
];

const IPTABLES_V4: &str = "iptables-save.txt";
const IPTABLES_V6: &str = "ip6tables-save.txt";

/// The snapshot file holding the host's routing table names: the `rt_tables` files `ip`
/// read when it printed the outputs above (see [`table_names`]). Optional: a snapshot
/// without it (older symroute, or made by hand) reads fine as long as its outputs print
/// tables as numbers or as main/local/default; a copy of the host's
/// `/etc/iproute2/rt_tables` is what to add otherwise.
pub const TABLE_NAMES: &str = "rt_tables";

/// The snapshot file holding systemd-networkd's own configuration (networkd.conf and its
/// drop-ins, in the order networkd reads them, each after a `# PATH` line), present only
/// where networkd is configured (a `.network` file in /etc/systemd/network or
/// /run/systemd/network). It is data for `doctor`, which reports the settings that let
/// networkd remove rules and routes it did not make (see [`networkd_config`]).
pub const NETWORKD: &str = "networkd.conf";

/// Where networkd's `.network` files and its own configuration live, in its order.
const NETWORKD_NETWORK_DIRS: &[&str] = &["/etc/systemd/network", "/run/systemd/network"];
const NETWORKD_CONF_DIRS: &[&str] = &[
    "/etc/systemd",
    "/run/systemd",
    "/usr/local/lib/systemd",
    "/usr/lib/systemd",
];

/// iproute2's own directory first (`/etc/iproute2`), then where newer iproute2 versions
/// keep the distribution's defaults.
const NAMES_ETC: &str = "/etc/iproute2";
const NAMES_USR: &[&str] = &["/usr/share/iproute2", "/usr/lib/iproute2"];
/// Bounds on what is read: a real names file is a few hundred bytes.
const NAMES_FILE_MAX: u64 = 1 << 20;
const NAMES_DIR_MAX: usize = 256;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub written: Vec<String>,
    /// File → why it could not be made (tool missing, permission…).
    pub missing: BTreeMap<String, String>,
}

/// Capture the current namespace's state into `dir` (created, mode 0700, if needed).
///
/// `dir` must be a directory of the user running symroute (root writing into someone
/// else's directory could be led to overwrite files through links planted there), and
/// nothing in it is followed: each file is written as a new `O_EXCL|O_NOFOLLOW` temporary
/// relative to the opened directory, then renamed over the name (a link planted there is
/// replaced, never written through).
pub fn take(dir: &Path) -> Result<Report, KernelError> {
    let d = SnapDir::open_for_writing(dir)?;
    let captured = capture();
    let mut report = Report {
        missing: captured.missing,
        ..Report::default()
    };
    for (file, text) in &captured.files {
        d.write(file, text.as_bytes())?;
        report.written.push(file.clone());
    }
    Ok(report)
}

/// A snapshot directory, opened once; files are made relative to it.
struct SnapDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SnapDir {
    fn open_for_writing(dir: &Path) -> Result<SnapDir, KernelError> {
        let io = |what: String| move |source| KernelError::Io { what, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let fd = open_dir(dir, true)?;
        let meta = fstat(fd.as_raw_fd())
            .map_err(|e| io(format!("reading {}", dir.display()))(std::io::Error::from(e)))?;
        let euid = nix::unistd::geteuid().as_raw();
        if meta.st_uid != euid {
            return Err(KernelError::Other(format!(
                "{}: owned by uid {}, not by the user running symroute (uid {euid}); refusing to write a snapshot into someone else's directory (use a directory of your own)",
                dir.display(),
                meta.st_uid
            )));
        }
        Ok(SnapDir {
            fd,
            path: dir.to_path_buf(),
        })
    }

    /// `name` ← `bytes`, through a fresh temporary renamed over it.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), KernelError> {
        let path = self.path.join(name);
        let io = |e: nix::errno::Errno| KernelError::Io {
            what: format!("writing {}", path.display()),
            source: std::io::Error::from(e),
        };
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o644);
        let dirfd = Some(self.fd.as_raw_fd());
        let fd = match open_owned(dirfd, tmp.as_str(), flags, mode) {
            // Left by a killed run (or planted): unlink the name, never follow it.
            Err(nix::errno::Errno::EEXIST) => {
                unlinkat(dirfd, tmp.as_str(), UnlinkatFlags::NoRemoveDir).map_err(io)?;
                open_owned(dirfd, tmp.as_str(), flags, mode)
            }
            r => r,
        }
        .map_err(io)?;
        let mut f = std::fs::File::from(fd);
        let written = f.write_all(bytes).map_err(|source| KernelError::Io {
            what: format!("writing {}", path.display()),
            source,
        });
        drop(f);
        let renamed = written.and_then(|()| renameat(dirfd, tmp.as_str(), dirfd, name).map_err(io));
        if renamed.is_err() {
            let _ = unlinkat(dirfd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        renamed
    }
}

/// `openat(2)` (relative to `dir`, or the working directory), owning what it opens: nix
/// 0.29 returns a bare descriptor, and std cannot open relative to a directory.
fn open_owned<P: ?Sized + nix::NixPath>(
    dir: Option<std::os::fd::RawFd>,
    path: &P,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    let raw = openat(dir, path, flags, mode)?;
    // SAFETY: openat just returned this descriptor, open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Open a directory (`O_DIRECTORY`; with `no_follow`, refusing a symbolic link).
fn open_dir(dir: &Path, no_follow: bool) -> Result<OwnedFd, KernelError> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if no_follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    match open_owned(None, dir, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOFOLLOW|O_DIRECTORY on a link: ENOTDIR (ELOOP on some systems).
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR)
            if no_follow && dir.is_symlink() =>
        {
            Err(KernelError::Other(format!(
            "{}: a symbolic link; give the directory itself (symroute does not follow links in a snapshot directory)",
            dir.display()
        )))
        }
        Err(e) => Err(KernelError::Io {
            what: format!("opening {}", dir.display()),
            source: std::io::Error::from(e),
        }),
    }
}

/// What `take` would write, in memory (the live state for `explain`, `doctor`, `import`).
pub fn capture() -> Captured {
    let mut c = Captured::default();
    for (file, command) in FILES {
        let result = if *file == "sysctl.txt" {
            Ok(sysctl_lines())
        } else if *file == IPTABLES_V4 || *file == IPTABLES_V6 {
            // Read later, from the nft listing, as apply reads them.
            continue;
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
    // The same save outputs apply's conflict check reads (`marks::iptables_texts`): each
    // variant (iptables-nft, iptables-legacy) that holds tables, so doctor on the snapshot
    // sees what apply saw. A host with no iptables tables gets empty files.
    let nft_tables = c
        .files
        .get("nft.json")
        .and_then(|t| serde_json::from_str(t).ok())
        .map(|v| super::marks::nft_tables(&v))
        .unwrap_or_default();
    let texts = super::marks::iptables_texts(&nft_tables);
    for (file, text) in [(IPTABLES_V4, texts.v4), (IPTABLES_V6, texts.v6)] {
        c.files.insert(file.to_string(), text.unwrap_or_default());
    }
    c.files.insert(TABLE_NAMES.to_string(), table_names());
    if let Some(text) = networkd_config() {
        c.files.insert(NETWORKD.to_string(), text);
    }
    c
}

/// systemd-networkd's configuration as one text (`None` where networkd has no `.network`
/// file to act on): the main file (the first of /etc, /run, /usr/local/lib, /usr/lib that
/// has `systemd/networkd.conf`), then the drop-ins of `networkd.conf.d` in those
/// directories, sorted by file name, a name in an earlier directory hiding the same name
/// in a later one (systemd's rules). Each file follows a `# PATH` line; the first lines
/// name the `.network` files found. Read bounded, never interpreted here.
pub fn networkd_config() -> Option<String> {
    let networks: Vec<String> = NETWORKD_NETWORK_DIRS
        .iter()
        .flat_map(|d| {
            let names = files_ending(Path::new(d), ".network");
            names.into_iter().map(move |n| format!("{d}/{n}"))
        })
        .collect();
    if networks.is_empty() {
        return None;
    }
    let mut out = String::from(
        "# systemd-networkd's configuration (networkd.conf, then its drop-ins, in the order networkd reads them),\n\
         # saved by `symroute snapshot` for `symroute doctor`.\n",
    );
    for n in &networks {
        out.push_str(&format!("# network file: {n}\n"));
    }
    let add = append_file;
    if let Some(main) = NETWORKD_CONF_DIRS
        .iter()
        .map(|d| Path::new(d).join("networkd.conf"))
        .find(|p| p.exists())
    {
        add(&main, &mut out);
    }
    let mut drop_ins: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in NETWORKD_CONF_DIRS {
        let dir = Path::new(d).join("networkd.conf.d");
        for name in files_ending(&dir, ".conf") {
            drop_ins
                .entry(name.clone())
                .or_insert_with(|| dir.join(name));
        }
    }
    for path in drop_ins.values() {
        add(path, &mut out);
    }
    Some(out)
}

/// `path`'s text after a `# PATH` line (bounded; nothing when it does not exist, a
/// `# PATH skipped: WHY` line when it cannot be read).
fn append_file(path: &Path, out: &mut String) {
    match read_bounded(path, NAMES_FILE_MAX) {
        Ok(Some(text)) => {
            out.push_str(&format!("# {}\n", path.display()));
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(None) => {}
        Err(why) => out.push_str(&format!("# {} skipped: {why}\n", path.display())),
    }
}

/// Names in `dir` ending in `suffix` (not hidden), sorted, at most [`NAMES_DIR_MAX`].
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.len() > suffix.len() && n.ends_with(suffix))
        .take(NAMES_DIR_MAX)
        .collect();
    names.sort();
    names
}

/// The routing table names `ip` uses here, as one `rt_tables` text: the files iproute2
/// reads, in its order, each after a `# PATH` comment line. That order is `rt_tables` from
/// `/etc/iproute2` (or, when it has none, from `/usr/share/iproute2` or
/// `/usr/lib/iproute2`, as iproute2 ≥ 6.5 does), then `rt_tables.d/*.conf` from those
/// directories (a file in `/etc` replaces the one of the same name), then from
/// `/etc/iproute2/rt_tables.d`, by file name. A later name for the same table is the one
/// `ip` prints, and concatenating keeps that. Files are read bounded and never executed
/// or interpreted beyond `ID NAME` lines (`explain::routing::TableNames`); one that
/// cannot be read is named in a comment.
pub fn table_names() -> String {
    let mut out = String::from(
        "# Routing table names (iproute2's rt_tables files, in the order `ip` reads them),\n\
         # saved by `symroute snapshot` so the outputs here can be read on any machine.\n",
    );
    let add = append_file;
    let etc = Path::new(NAMES_ETC);
    if etc.join("rt_tables").exists() {
        add(&etc.join("rt_tables"), &mut out);
    } else if let Some(usr) = NAMES_USR
        .iter()
        .map(|d| Path::new(d).join("rt_tables"))
        .find(|p| p.exists())
    {
        add(&usr, &mut out);
    }
    let etc_d = etc.join("rt_tables.d");
    let etc_confs = conf_files(&etc_d);
    for usr in NAMES_USR {
        for name in conf_files(&Path::new(usr).join("rt_tables.d")) {
            if !etc_confs.contains(&name) {
                add(&Path::new(usr).join("rt_tables.d").join(&name), &mut out);
            }
        }
    }
    for name in &etc_confs {
        add(&etc_d.join(name), &mut out);
    }
    out
}

/// `*.conf` names in a `rt_tables.d` directory (as iproute2: not hidden, longer than
/// `.conf`), sorted, at most [`NAMES_DIR_MAX`].
fn conf_files(dir: &Path) -> Vec<String> {
    files_ending(dir, ".conf")
}

/// A regular file's text, at most `max` bytes (`Ok(None)`: it does not exist). Opened
/// without blocking, so a FIFO put in its place cannot hang us.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
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

/// The largest snapshot file read (a ruleset of tens of thousands of rules is a few MiB).
const MAX_FILE: u64 = 256 * 1024 * 1024;

/// Read a snapshot. Files are opened relative to the directory and never through a
/// symbolic link (one found there is an error naming it), each bounded in size.
pub fn load(dir: &Path) -> Result<Loaded, KernelError> {
    if !dir.is_dir() {
        return Err(KernelError::Other(format!(
            "{}: not a snapshot directory (make one with `symroute snapshot DIR`)",
            dir.display()
        )));
    }
    let d = open_dir(dir, false)?;
    let mut loaded = Loaded::default();
    for (file, _) in FILES {
        match read_at(&d, dir, file, MAX_FILE)? {
            Some(text) => {
                loaded.files.insert(file.to_string(), text);
            }
            None => loaded.missing.push(file.to_string()),
        }
    }
    // Optional (see TABLE_NAMES): absent is not missing.
    let max = NAMES_FILE_MAX * (NAMES_DIR_MAX as u64 + 1);
    if let Some(text) = read_at(&d, dir, TABLE_NAMES, max)? {
        loaded.files.insert(TABLE_NAMES.to_string(), text);
    }
    // Optional as well (see NETWORKD): a host without networkd has none.
    if let Some(text) = read_at(&d, dir, NETWORKD, max)? {
        loaded.files.insert(NETWORKD.to_string(), text);
    }
    Ok(loaded)
}

/// The text of `file` in the opened snapshot directory `d` (`None`: absent), at most
/// `max` bytes, never through a symbolic link.
fn read_at(d: &OwnedFd, dir: &Path, file: &str, max: u64) -> Result<Option<String>, KernelError> {
    let path = dir.join(file);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match open_owned(Some(d.as_raw_fd()), file, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::ELOOP) => {
            return Err(KernelError::Other(format!(
                "{}: a symbolic link; snapshot files are read only as regular files (copy the file there instead)",
                path.display()
            )))
        }
        Err(e) => {
            return Err(KernelError::Io {
                what: format!("reading {}", path.display()),
                source: std::io::Error::from(e),
            })
        }
    };
    let f = std::fs::File::from(fd);
    let io = |source| KernelError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    if !f.metadata().map_err(io)?.is_file() {
        return Err(KernelError::Other(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(KernelError::Other(format!(
            "{}: larger than {max} bytes; not a snapshot file symroute reads",
            path.display()
        )));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}
