//! Health probes (`[gateway.check]`): one thread per checked gateway sends ICMP echoes or
//! TCP connects, bound to the gateway's interface and carrying its mark, and reports each
//! result to the actor. `Window` is the pure judgement the actor keeps per target.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::Event;
use crate::model::{Action, Check, GatewayIdx, Model, ProbeTarget};
use crate::plan::alloc;

/// The last probes of one target, and whether it is judged down.
#[derive(Debug, Clone, Default)]
pub struct Window {
    results: VecDeque<bool>,
    good_in_a_row: u32,
    pub down: bool,
}

impl Window {
    /// Record a result; returns true when the target's state changed.
    pub fn note(&mut self, ok: bool, check: &Check) -> bool {
        self.results.push_back(ok);
        while self.results.len() > check.down_window as usize {
            self.results.pop_front();
        }
        self.good_in_a_row = if ok { self.good_in_a_row + 1 } else { 0 };
        let was = self.down;
        if !self.down && self.lost() >= check.down_lost {
            self.down = true;
        } else if self.down && self.good_in_a_row >= check.up {
            self.down = false;
            self.results.clear();
        }
        was != self.down
    }

    pub fn lost(&self) -> u32 {
        self.results.iter().filter(|ok| !**ok).count() as u32
    }
}

/// Stops the probe threads when dropped.
pub struct Probes(Arc<AtomicBool>);

impl Drop for Probes {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Start one thread per checked gateway.
pub fn spawn(model: &Model, tx: &Sender<Event>) -> io::Result<Probes> {
    let stop = Arc::new(AtomicBool::new(false));
    for (i, g) in model.gateways.iter().enumerate() {
        let Some(check) = g.check.clone() else {
            continue;
        };
        let uses = |route: bool| {
            model.policies.iter().any(|p| match p.action {
                Action::ReplyVia(x) => !route && x.index() == i,
                Action::RouteVia(x) => route && x.index() == i,
            })
        };
        let mark = if uses(true) {
            alloc::route_mark(model, GatewayIdx(i)).bits()
        } else if uses(false) {
            alloc::reply_mark(model, GatewayIdx(i)).bits()
        } else {
            0
        };
        let (name, dev) = (g.name.to_string(), g.interface.to_string());
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || {
                let mut seq: u16 = 0;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for (t, target) in check.targets.iter().enumerate() {
                        seq = seq.wrapping_add(1);
                        let sent = Instant::now();
                        let ok = probe(target, &dev, mark, check.timeout, seq).unwrap_or(false);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let ev = Event::Health {
                            gateway: name.clone(),
                            target: t,
                            ok,
                            rtt: ok.then(|| sent.elapsed()),
                        };
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    next += check.interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })?;
    }
    Ok(Probes(stop))
}

fn probe(
    target: &ProbeTarget,
    dev: &str,
    mark: u32,
    timeout: Duration,
    seq: u16,
) -> io::Result<bool> {
    match target {
        ProbeTarget::Icmp(a) => ping(*a, dev, mark, timeout, seq),
        ProbeTarget::Tcp(s) => connect(*s, dev, mark, timeout),
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_path(fd: &OwnedFd, dev: &str, mark: u32) -> io::Result<()> {
    // SAFETY: pointers and lengths describe live buffers.
    unsafe {
        cvt(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        ))?;
        if mark != 0 {
            cvt(libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&mark as *const u32).cast(),
                4,
            ))?;
        }
    }
    Ok(())
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as _,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as _,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn wait(fd: &OwnedFd, events: i16, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) })?;
    Ok(n > 0)
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo; an unprivileged ping socket if allowed, a raw one otherwise.
fn ping(a: IpAddr, dev: &str, mark: u32, timeout: Duration, seq: u16) -> io::Result<bool> {
    let (domain, proto, req, rep) = match a {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    let (fd, raw) = match socket(domain, libc::SOCK_DGRAM, proto) {
        Ok(fd) => (fd, false),
        Err(_) => (socket(domain, libc::SOCK_RAW, proto)?, true),
    };
    bind_path(&fd, dev, mark)?;
    let id = (std::process::id() as u16) ^ 0x5359;
    let mut pkt = [0u8; 16];
    pkt[0] = req;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    pkt[8..16].copy_from_slice(b"symroute");
    if domain == libc::AF_INET {
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let (ss, len) = sockaddr(SocketAddr::new(a, 0));
    // SAFETY: buffer and address are valid for the given lengths.
    cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        ) as i32
    })?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while wait(&fd, libc::POLLIN, deadline)? {
        // SAFETY: zeroed storage is a valid out-parameter.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: buffers are valid for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_storage).cast(),
                &mut flen,
            )
        };
        if n < 0 {
            continue;
        }
        let mut msg = &buf[..n as usize];
        if raw && domain == libc::AF_INET {
            let ihl = usize::from(msg.first().copied().unwrap_or(0) & 0x0f) * 4;
            if msg.len() < ihl + 8
                || msg[12..16]
                    != match a {
                        IpAddr::V4(v4) => v4.octets(),
                        IpAddr::V6(_) => [0; 4],
                    }
            {
                continue;
            }
            msg = &msg[ihl..];
        }
        if msg.len() < 8 || msg[0] != rep || msg[6..8] != seq.to_be_bytes() {
            continue;
        }
        if raw && msg[4..6] != id.to_be_bytes() {
            continue;
        }
        return Ok(true);
    }
    Ok(false)
}

/// One TCP connect: good when the handshake completes within the timeout.
fn connect(s: SocketAddr, dev: &str, mark: u32, timeout: Duration) -> io::Result<bool> {
    let domain = if s.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    bind_path(&fd, dev, mark)?;
    let (ss, len) = sockaddr(s);
    // SAFETY: the address is valid for len bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Ok(false);
        }
    }
    if !wait(&fd, libc::POLLOUT, Instant::now() + timeout)? {
        return Ok(false);
    }
    let mut err: libc::c_int = 0;
    let mut l = 4 as libc::socklen_t;
    // SAFETY: err is a valid c_int out-parameter.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut l,
        )
    })?;
    Ok(err == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_3_of_5_up_after_5_in_a_row() {
        let check = Check {
            targets: vec![],
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(500),
            down_lost: 3,
            down_window: 5,
            up: 5,
        };
        let mut w = Window::default();
        for ok in [true, false, true, false] {
            assert!(!w.note(ok, &check));
        }
        assert!(w.note(false, &check) && w.down);
        for _ in 0..4 {
            assert!(!w.note(true, &check));
        }
        assert!(w.note(true, &check) && !w.down);
    }
}
