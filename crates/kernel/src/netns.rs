//! Acting inside a named network namespace (`--netns NAME`, as made by `ip netns add`).
//! The whole process switches before it starts any thread or child, so every netlink
//! socket, `nft` run and `/proc/sys/net` access afterwards sees that namespace.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sched::{setns, CloneFlags};

use super::KernelError;

pub fn enter(name: &str) -> Result<(), KernelError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(KernelError::Other(format!(
            "\"{name}\" is not a network namespace name"
        )));
    }
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).map_err(|source| KernelError::Io {
        what: format!("opening network namespace {name} ({path}; see `ip netns list`)"),
        source,
    })?;
    setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| KernelError::Io {
        what: if e == nix::errno::Errno::EPERM {
            // CAP_NET_ADMIN is not enough: setns(2) wants CAP_SYS_ADMIN. contrib/'s units
            // grant only the former and let systemd join the namespace instead.
            format!("entering network namespace {name} needs CAP_SYS_ADMIN (under systemd, join it with NetworkNamespacePath=/run/netns/{name} and leave out --netns)")
        } else {
            format!("entering network namespace {name}")
        },
        source: std::io::Error::from_raw_os_error(e as i32),
    })
}

/// [`enter`], then see `/etc/iproute2` and `/etc/systemd` as `ip netns exec NAME` shows
/// them: each of `/etc/netns/NAME/iproute2` and `/etc/netns/NAME/systemd` that exists is
/// bind-mounted over its `/etc` directory in a mount namespace of this process alone (the
/// host's mounts are untouched and the mounts go away with the process). So the `ip` this
/// process runs prints the table names the namespace's own files give, and
/// [`super::snapshot`] reads the same files (and the namespace's networkd configuration):
/// one view per namespace, whichever way it is entered (`--netns NAME` or `ip netns exec
/// NAME symroute …`). Only these two are overlaid: they are all the reads depend on.
/// Returns a note when an overlay could not be made (the host's files apply).
pub fn enter_with_etc(name: &str) -> Result<Option<String>, KernelError> {
    enter(name)?;
    let base = std::path::Path::new("/etc/netns").join(name);
    let overlays: Vec<&str> = ETC_OVERLAYS
        .iter()
        .copied()
        .filter(|d| base.join(d).is_dir())
        .collect();
    if overlays.is_empty() {
        return Ok(None);
    }
    use nix::mount::{mount, MsFlags};
    let io = |what: String, e: nix::Error| KernelError::Io {
        what,
        source: std::io::Error::from_raw_os_error(e as i32),
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("making a mount namespace for /etc/netns".into(), e))?;
    // As `ip netns exec`: our mounts must not propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io("making / a slave mount".into(), e))?;
    let mut notes = Vec::new();
    for d in overlays {
        let (src, dst) = (base.join(d), std::path::Path::new("/etc").join(d));
        if let Err(e) = mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            notes.push(format!(
                "could not bind {} over {} ({e}); the host's files apply",
                src.display(),
                dst.display()
            ));
        }
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// The `/etc` directories [`enter_with_etc`] takes from `/etc/netns/NAME`: table names
/// (iproute2) and systemd-networkd's configuration (systemd).
const ETC_OVERLAYS: &[&str] = &["iproute2", "systemd"];

/// A number that names the current network namespace for as long as the machine runs
/// (never reused, unlike inode numbers), so recorded state can't leak into a new namespace.
pub fn cookie() -> Result<String, KernelError> {
    // SO_NETNS_COOKIE (Linux 5.14+); not exported by libc for every architecture.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| KernelError::Io {
        what: "creating a socket to identify the network namespace".into(),
        source: e.into(),
    })?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64 of that size, for
    // a descriptor `fd` owns (nix has no SO_NETNS_COOKIE option).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        return Ok(format!("c{cookie}"));
    }
    // Older kernels: the namespace inode (reusable, but the best there is).
    let f = File::open("/proc/self/ns/net").map_err(|source| KernelError::Io {
        what: "reading /proc/self/ns/net".into(),
        source,
    })?;
    let meta = f.metadata().map_err(|source| KernelError::Io {
        what: "reading /proc/self/ns/net".into(),
        source,
    })?;
    let _ = f.as_raw_fd();
    Ok(format!("i{}", std::os::unix::fs::MetadataExt::ino(&meta)))
}
