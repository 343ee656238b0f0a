//! The cgroup2 hierarchy, for `cgroup` matches and `symroute exec`: where it is mounted
//! (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones, anywhere
//! else in principle), how nft must name a cgroup in it, which of the cgroups a model
//! may match exist now (their ids), and `symroute exec`'s own cgroups.
//!
//! nft 1.0.x resolves `socket cgroupv2 level N "PATH"` as `/sys/fs/cgroup/PATH` when it
//! loads the rule, and reads a number as a path too (checked on 1.0.2's grammar and
//! 1.0.6 here): so a cgroup is named by a path relative to /sys/fs/cgroup, with
//! `../../../` leading back to `/` for a hierarchy mounted elsewhere. The id it loads is
//! the directory's inode number, which is the kernel's cgroup id.
//!
//! Nothing here fails an apply: without a usable hierarchy, cgroup matches simply wait
//! (the plan reports them), as they do for a cgroup that does not exist yet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use symroute_core::model::{CgroupPath, Model};
use symroute_core::plan::host::Cgroups;

use super::KernelError;

/// Where nft resolves cgroup paths from (nft's SYSFS_CGROUPSV2_PATH).
const NFT_BASE: &str = "/sys/fs/cgroup";

/// The top of `symroute exec`'s cgroups, below the cgroup2 root.
pub const EXEC_TOP: &str = "symroute.exec";

/// A mounted cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point (`/sys/fs/cgroup/unified`).
    pub mount: PathBuf,
    /// What nft puts before a path below it (`unified/`).
    pub nft_root: String,
}

impl Hierarchy {
    /// The directory of a cgroup.
    pub fn dir(&self, path: &CgroupPath) -> PathBuf {
        self.mount.join(path.as_str())
    }

    /// The id of an existing cgroup: its directory's inode number, if the directory is
    /// on this hierarchy (not something else mounted over a path below it).
    pub fn id(&self, path: &CgroupPath) -> Option<u64> {
        let root = std::fs::metadata(&self.mount).ok()?;
        let m = std::fs::metadata(self.dir(path)).ok()?;
        (m.is_dir() && m.dev() == root.dev()).then(|| m.ino())
    }

    /// Whether a cgroup has processes, in it or below (`populated 1` in cgroup.events).
    pub fn populated(&self, path: &CgroupPath) -> bool {
        read_small(&self.dir(path).join("cgroup.events"))
            .is_some_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
    }
}

/// The cgroup2 hierarchy of this mount namespace, if one is mounted where nft can name
/// it. Several mounts (a bind, or one over /sys/fs/cgroup): the one at /sys/fs/cgroup
/// first, then one below it, then any other; only mounts of the whole hierarchy count.
pub fn hierarchy() -> Option<Hierarchy> {
    let text = read_small(Path::new("/proc/self/mountinfo"))?;
    let mut mounts = cgroup2_mounts(&text);
    mounts.sort_by_key(|m| {
        if m == Path::new(NFT_BASE) {
            0
        } else if m.starts_with(NFT_BASE) {
            1
        } else {
            2
        }
    });
    mounts.into_iter().find_map(|mount| {
        let nft_root = nft_root(&mount)?;
        // Still visible at that path (not hidden under a later mount)?
        let visible = std::fs::metadata(mount.join("cgroup.controllers")).is_ok();
        visible.then_some(Hierarchy { mount, nft_root })
    })
}

/// The mount points of whole cgroup2 hierarchies in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let f: Vec<&str> = left.split(' ').collect();
            // id parent major:minor root mount-point …
            let (root, point) = (f.get(3)?, f.get(4)?);
            (fstype == "cgroup2" && *root == "/").then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How nft must name the root of a hierarchy mounted at `mount`: relative to
/// /sys/fs/cgroup. `None` when that cannot be said in plain text (a mount point with
/// characters nft's quoted strings or our checks would not carry), or when
/// /sys/fs/cgroup, which nft starts from, does not exist.
fn nft_root(mount: &Path) -> Option<String> {
    let text = mount.to_str()?;
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.@:+,=/".contains(c));
    if !plain || !text.starts_with('/') || text.split('/').any(|c| c == "..") {
        return None;
    }
    if mount == Path::new(NFT_BASE) {
        return Some(String::new());
    }
    if let Ok(rest) = mount.strip_prefix(NFT_BASE) {
        return Some(format!("{}/", rest.to_str()?));
    }
    std::fs::metadata(NFT_BASE).ok().filter(|m| m.is_dir())?;
    // /sys/fs/cgroup/../../.. is /.
    Some(format!("../../..{text}/"))
}

/// `symroute.exec/netns-<cookie>`: the parent of this network namespace's exec cgroups
/// (namespaces may name their gateways alike; the cookie is the name /run/symroute
/// uses too).
pub fn exec_base() -> Result<CgroupPath, KernelError> {
    let cookie = super::netns::cookie()?;
    CgroupPath::new(&format!("{EXEC_TOP}/netns-{cookie}")).map_err(KernelError::Other)
}

/// `symroute exec --gateway NAME`'s cgroup in this namespace.
pub fn exec_cgroup(gateway: &str) -> Result<CgroupPath, KernelError> {
    exec_base()?.join(gateway).map_err(KernelError::Other)
}

/// The cgroups a model may match (its policies'), and exec's per gateway.
pub fn targets(model: &Model) -> (BTreeSet<CgroupPath>, BTreeMap<String, CgroupPath>) {
    let policies = model
        .policies
        .iter()
        .flat_map(|p| p.selector.cgroup.iter().cloned())
        .collect();
    let exec = exec_base()
        .ok()
        .map(|base| {
            model
                .gateways
                .iter()
                .filter_map(|g| {
                    let p = base.join(g.name.as_str()).ok()?;
                    Some((g.name.to_string(), p))
                })
                .collect()
        })
        .unwrap_or_default();
    (policies, exec)
}

/// What the plan needs to know: the hierarchy as nft names it, which cgroups of the
/// model (and exec's) exist with their ids, which exec cgroups have processes. `None`
/// without a usable cgroup2 hierarchy.
pub fn observe(model: &Model) -> Option<Cgroups> {
    let h = hierarchy()?;
    let (policies, exec) = targets(model);
    let mut c = Cgroups {
        nft_root: h.nft_root.clone(),
        exec: exec.clone(),
        ..Cgroups::default()
    };
    for path in policies.iter().chain(exec.values()) {
        if let Some(id) = h.id(path) {
            c.ids.insert(path.clone(), id);
        }
    }
    for path in exec.values() {
        if c.ids.contains_key(path) && h.populated(path) {
            c.populated.insert(path.clone());
        }
    }
    Some(c)
}

/// Makes `path` (and its parents) in the hierarchy; an existing one is fine.
pub fn create(h: &Hierarchy, path: &CgroupPath) -> Result<(), KernelError> {
    let dir = h.dir(path);
    std::fs::create_dir_all(&dir).map_err(|source| KernelError::Io {
        what: format!("creating cgroup {}", dir.display()),
        source,
    })
}

/// Moves the calling process into `path` (writes `0`, "myself", to its cgroup.procs).
pub fn enter(h: &Hierarchy, path: &CgroupPath) -> Result<(), KernelError> {
    let procs = h.dir(path).join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .and_then(|mut f| f.write_all(b"0"))
        .map_err(|source| KernelError::Io {
            what: format!("moving this process into cgroup {}", procs.display()),
            source,
        })
}

/// Removes this namespace's exec cgroups that have no process left, then their parents
/// if empty. Returns the cgroups removed and those left because processes still run in
/// them. (A cgroup directory is removed with rmdir even though files are listed in it.)
pub fn remove_exec() -> Result<(Vec<String>, Vec<String>), KernelError> {
    let (mut removed, mut busy) = (Vec::new(), Vec::new());
    let Some(h) = hierarchy() else {
        return Ok((removed, busy));
    };
    let base = exec_base()?;
    let dir = h.dir(&base);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok((removed, busy));
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        match std::fs::remove_dir(&path) {
            Ok(()) => removed.push(path.display().to_string()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                busy.push(path.display().to_string())
            }
            Err(source) => {
                return Err(KernelError::Io {
                    what: format!("removing cgroup {}", path.display()),
                    source,
                })
            }
        }
    }
    // The namespace's directory, then the top one, when nothing else is in them.
    for d in [dir.clone(), h.mount.join(EXEC_TOP)] {
        if std::fs::remove_dir(&d).is_ok() {
            removed.push(d.display().to_string());
        }
    }
    Ok((removed, busy))
}

/// A small text file (cgroup and proc files), at most 1 MiB.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:38 /sub /mnt/bound rw - cgroup2 cgroup2 rw
51 23 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_whole_cgroup2_mounts() {
        assert_eq!(
            cgroup2_mounts(HYBRID),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
    }

    #[test]
    fn nft_names_the_root_relative_to_sys_fs_cgroup() {
        assert_eq!(nft_root(Path::new("/sys/fs/cgroup")).as_deref(), Some(""));
        assert_eq!(
            nft_root(Path::new("/sys/fs/cgroup/unified")).as_deref(),
            Some("unified/")
        );
        if Path::new(NFT_BASE).is_dir() {
            assert_eq!(
                nft_root(Path::new("/run/cg2")).as_deref(),
                Some("../../../run/cg2/")
            );
        }
        assert_eq!(nft_root(Path::new("/mnt/with space")), None);
        assert_eq!(nft_root(Path::new("/mnt/a\"b")), None);
        assert_eq!(nft_root(Path::new("/mnt/../x")), None);
    }
}
