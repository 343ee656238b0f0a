//! What symroute keeps under /run/symroute (cleared at boot): one set of files per network
//! namespace, named by its cookie. The directory is 0700 and every file in it 0600; all
//! writes go through `write` (a new `O_EXCL|O_NOFOLLOW` temporary, then rename), so a
//! reader never sees half a file and nothing planted there is ever written through.
//!
//! `lock` is the per-namespace lock that keeps two symroute processes from interleaving
//! their steps. Its file may be unlinked (`remove` drops it) only while held; a waiter
//! that then wins the old, unlinked inode notices after `flock` (the path names another
//! inode, or none) and locks the path again, so there are never two holders. Waits are
//! bounded: a caller says how long it may wait and gets `KernelError::Locked` after that.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::KernelError;

pub const DIR: &str = "/run/symroute";

/// How long commands run by hand wait for another symroute in the namespace.
pub const WAIT_COMMAND: Duration = Duration::from_secs(30);
/// How long the daemon's loop waits before it gives up and retries later.
pub const WAIT_DAEMON: Duration = Duration::from_millis(100);

/// The largest state file read back (they hold a few rules and a table's text).
const MAX_FILE: u64 = 64 * 1024 * 1024;

fn io(what: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Io { what, source }
}

/// `/run/symroute/netns-<cookie>.<suffix>` of the current network namespace.
pub fn netns_file(suffix: &str) -> Result<PathBuf, KernelError> {
    Ok(PathBuf::from(DIR).join(format!("netns-{}.{suffix}", super::netns::cookie()?)))
}

/// Make sure /run/symroute is a real directory of ours with mode 0700.
pub fn ensure_dir() -> Result<&'static Path, KernelError> {
    let dir = Path::new(DIR);
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("creating {DIR}"))(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io(format!("reading {DIR}")))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != euid {
        return Err(KernelError::Other(format!(
            "{DIR} is not a directory owned by uid {euid} (found a {} owned by uid {}): refusing to keep state there; remove it",
            if meta.file_type().is_symlink() { "symbolic link" } else if meta.is_dir() { "directory" } else { "file" },
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("making {DIR} mode 0700")))?;
    }
    Ok(dir)
}

/// Files under /run/symroute need the directory made and checked first.
fn prepare(path: &Path) -> Result<(), KernelError> {
    if path.starts_with(DIR) {
        ensure_dir()?;
    }
    Ok(())
}

/// Replace `path` (in /run/symroute) with `bytes`: a fresh temporary next to it, created
/// with `O_EXCL|O_NOFOLLOW` and mode 0600, then renamed over it.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    prepare(path)?;
    let what = || format!("writing {}", path.display());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| KernelError::Other(format!("{}: not a file name", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new(DIR));
    // Unique per process and call; O_EXCL refuses anything already there.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io(what()))?;
    let done = f
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.map_err(io(what()))
}

/// The text of `path`, `None` when it does not exist. Never follows a symbolic link and
/// reads at most `MAX_FILE` bytes (a larger file is an error).
pub fn read(path: &Path) -> Result<Option<String>, KernelError> {
    let what = || format!("reading {}", path.display());
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(what())(e)),
    };
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io(what()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(KernelError::Other(format!(
            "{}: larger than {} MiB; not a file symroute wrote",
            path.display(),
            MAX_FILE >> 20
        )));
    }
    Ok(Some(text))
}

/// Delete `path`; false when there was none.
pub fn remove(path: &Path) -> Result<bool, KernelError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

/// An exclusive `flock` on a file under /run/symroute; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct Lock {
    _file: Flock<File>,
    path: PathBuf,
    unlink_on_drop: bool,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Runs before the fields drop: the file goes while the lock is still held.
        if self.unlink_on_drop {
            self.unlink();
        }
    }
}

impl Lock {
    /// Delete the lock file while holding it: lockers that wait on it now will find it
    /// gone after their `flock` and start over on a new file.
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Unlink the file when dropped (still held then), so it does not outlive its use.
    pub fn unlink_on_drop(mut self) -> Lock {
        self.unlink_on_drop = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The per-namespace lock, held while applying, removing or rolling back. Taking it
/// also sweeps the namespace's temporaries that a killed writer left (see [`write`]).
pub fn lock(wait: Duration) -> Result<Lock, KernelError> {
    let lock = lock_path(&netns_file("lock")?, wait)?;
    sweep_temporaries(&netns_file("")?);
    Ok(lock)
}

/// Remove `.<prefix>….<pid>.<nanos>.tmp` files in the run directory whose writer no
/// longer runs (a live one may still be writing: its file stays). Best effort.
fn sweep_temporaries(prefix: &Path) {
    let Some(prefix) = prefix.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return;
    };
    // Bounded: the directory holds a few files per namespace.
    for entry in dir.flatten().take(10_000) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(inner) = name
            .strip_prefix('.')
            .filter(|n| n.starts_with(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        let mut fields = inner.rsplit('.');
        let _nanos = fields.next();
        let Some(pid) = fields.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Lock `path` exclusively, waiting at most `wait` for its holder.
pub fn lock_path(path: &Path, wait: Duration) -> Result<Lock, KernelError> {
    prepare(path)?;
    let started = Instant::now();
    let what = || format!("locking {}", path.display());
    let mut pause = Duration::from_millis(1);
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(what()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(file) => {
                if still_named(&file, path) {
                    return Ok(Lock {
                        _file: file,
                        path: path.to_path_buf(),
                        unlink_on_drop: false,
                    });
                }
                // Unlinked (or replaced) by its holder before we got it: try the new one.
                continue;
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => return Err(io(what())(std::io::Error::from(e))),
        }
        let waited = started.elapsed();
        if waited >= wait {
            return Err(KernelError::Locked {
                path: path.display().to_string(),
                waited_ms: waited.as_millis() as u64,
            });
        }
        std::thread::sleep(pause.min(wait - waited));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Whether `path` still names the inode `f` has open.
fn still_named(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_waits_a_bounded_time() {
        let dir = std::env::temp_dir().join(format!("symroute-lock-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.lock");
        let held = lock_path(&p, Duration::ZERO).unwrap();
        let t = Instant::now();
        let e = lock_path(&p, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, KernelError::Locked { .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        held.unlink();
        drop(held);
        let again = lock_path(&p, Duration::ZERO).unwrap();
        assert!(p.exists(), "a new lock file is made");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
