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
        what: format!("entering network namespace {name}"),
        source: std::io::Error::from_raw_os_error(e as i32),
    })
}

/// A number that names the current network namespace for as long as the machine runs
/// (never reused, unlike inode numbers), so recorded state can't leak into a new namespace.
pub fn cookie() -> Result<String, KernelError> {
    // SO_NETNS_COOKIE (Linux 5.14+); not exported by libc for every architecture.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let io = |what: &str| KernelError::Io {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io("creating a socket to identify the network namespace"));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        if rc == 0 {
            return Ok(format!("c{cookie}"));
        }
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
