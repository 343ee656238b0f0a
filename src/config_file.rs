//! Reading a config file safely: `-c` may name anything, and the daemon runs as root.
//! (Here, not in symroute-core, which does no I/O: it decodes and parses the bytes.)
//!
//! - Only a regular file is read. It is opened with `O_NONBLOCK`, so a FIFO nobody
//!   writes to cannot hang the open, and `fstat` on the open descriptor rejects FIFOs,
//!   devices (`/dev/zero` never ends), sockets and directories before a byte is read.
//! - At most [`MAX_BYTES`] are read, whatever the file claims to be (a file growing while
//!   it is read, or a /proc file reporting size 0, still stops there).
//! - The text must be UTF-8; the first bad byte is located as FILE:LINE:COL.
//! - [`hooks_trusted`]: a config whose `on_change` commands root will run must be
//!   writable by root (or the user running symroute) alone.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::config::{self, ConfigError, MAX_BYTES};
use crate::model::Model;

/// Read and validate a config file (a regular file of at most 16 MiB of UTF-8). User
/// names are looked up in the system's user database now: an unknown one is an error at
/// its line and column.
pub fn load(path: &Path) -> Result<Model, ConfigError> {
    let f = read(path)?;
    config::parse_str_with(&f.text, &path.display().to_string(), &SystemUsers)
}

/// The system's user database (`getpwnam_r`, so NSS sources such as LDAP or systemd's
/// dynamic users count too).
pub struct SystemUsers;

impl config::Names for SystemUsers {
    fn uid(&self, user: &str) -> Option<u32> {
        nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
}

/// [`load`] for a config whose `on_change` hooks will run (`symroute run`, its reloads,
/// and `check`, which says what `run` would refuse): with hooks, only root (or the user
/// running symroute) may be able to write the file ([`hooks_trusted`]).
pub fn load_trusted(path: &Path) -> Result<Model, ConfigError> {
    let f = read(path)?;
    let model = config::parse_str_with(&f.text, &path.display().to_string(), &SystemUsers)?;
    if !model.settings.on_change.is_empty() {
        hooks_trusted(path, &f.meta)?;
    }
    Ok(model)
}

/// A config file's text and what `fstat` said about it when it was read.
pub struct ConfigFile {
    pub text: String,
    pub meta: Metadata,
}

/// What a non-regular file is, for the message.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
    let io = |err: std::io::Error| ConfigError::Io {
        path: path.to_path_buf(),
        err,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ConfigError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(&meta),
        });
    }
    if meta.len() > MAX_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: Some(meta.len()),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            size: None,
        });
    }
    let text = config::decode(bytes, &path.display().to_string())?;
    Ok(ConfigFile { text, meta })
}

/// Group or other write permission.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Whether `uid` may own what root runs: root itself, or the user running symroute.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Refuses a config whose `on_change` hooks someone else could rewrite: the file (as read,
/// `meta`) must belong to root or to the user running symroute and be writable by its
/// owner alone, and no directory on its real path (links resolved) may let others replace
/// it (owned by root or that user, not writable by group or other unless sticky like
/// /tmp, where only a file's owner may rename or delete it).
pub fn hooks_trusted(path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    let refuse = |why: String| ConfigError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    let mode = meta.mode() & 0o7777;
    if !trusted_owner(meta.uid()) {
        return Err(refuse(format!(
            "the file is owned by uid {} (mode {mode:04o}), not by root; `chown root: {}`",
            meta.uid(),
            path.display()
        )));
    }
    if mode & WRITABLE_BY_OTHERS != 0 {
        return Err(refuse(format!(
            "the file is writable by {} (mode {mode:04o}); `chmod go-w {}`",
            who(mode),
            path.display()
        )));
    }
    // Every directory on the way to the file as it really is (links resolved: a link in
    // root's directory may point into a user's), up to /: whoever may replace any of
    // them may replace the file.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in real.ancestors().skip(1) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(d) = std::fs::metadata(dir) else {
            continue;
        };
        let dmode = d.mode() & 0o7777;
        let sticky = dmode & 0o1000 != 0;
        if !trusted_owner(d.uid()) {
            return Err(refuse(format!(
                "its directory {} is owned by uid {} (mode {dmode:04o}), who could replace the file",
                dir.display(),
                d.uid()
            )));
        }
        if dmode & WRITABLE_BY_OTHERS != 0 && !sticky {
            return Err(refuse(format!(
                "its directory {} is writable by {} (mode {dmode:04o}), who could replace the file; `chmod go-w {}`",
                dir.display(),
                who(dmode),
                dir.display()
            )));
        }
    }
    Ok(())
}

fn who(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and everyone",
        (true, false) => "its group",
        _ => "everyone",
    }
}
