//! Health probes (`[gateway.check]`): one thread per checked gateway sends ICMP echoes or
//! TCP connects, bound to the gateway's interface and carrying its mark, and reports each
//! result to the actor. `Window` is the pure judgement the actor keeps per target.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{recvfrom, SockaddrStorage};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::event::Event;
use crate::model::{Check, Model, ProbeTarget};
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
    for (i, g) in model.gateways_indexed() {
        let Some(check) = g.check.clone() else {
            continue;
        };
        let mark = if model.routes_via(i) || model.probed_alone(i) {
            alloc::route_mark(model, i).bits()
        } else if model.replies_via(i) {
            alloc::reply_mark(model, i).bits()
        } else {
            0
        };
        let prober = Prober {
            gateway: g.name.to_string(),
            dev: g.interface.to_string(),
            mark,
            check,
            tx: tx.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name(format!("probe-{}", g.name))
            .spawn(move || prober.run())?;
    }
    Ok(Probes(stop))
}

/// Longest a probe thread sleeps before looking at the stop flag again.
const STOP_POLL: Duration = Duration::from_millis(100);

/// One gateway's probe loop. Probes go out on a fixed schedule (every `interval`, all
/// targets together) whether or not earlier ones were answered, each with its own
/// deadline: a lost probe does not delay the next one, so detection time is
/// `(down_lost - 1) * interval + timeout` and does not grow with the timeout.
struct Prober {
    gateway: String,
    dev: String,
    mark: u32,
    check: Check,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
}

/// A probe waiting for its answer.
enum InFlight {
    Echo {
        target: usize,
        seq: u16,
        sent: Instant,
    },
    Connect {
        target: usize,
        fd: Socket,
        sent: Instant,
    },
}

impl InFlight {
    fn target(&self) -> usize {
        match self {
            InFlight::Echo { target, .. } | InFlight::Connect { target, .. } => *target,
        }
    }
    fn sent(&self) -> Instant {
        match self {
            InFlight::Echo { sent, .. } | InFlight::Connect { sent, .. } => *sent,
        }
    }
}

impl Prober {
    fn run(self) {
        // One echo socket per ICMP target, kept open (opened again after an error, e.g.
        // while the interface is missing).
        let mut echo: Vec<Option<EchoSocket>> = self.check.targets.iter().map(|_| None).collect();
        let mut flying: Vec<InFlight> = Vec::new();
        let mut seq: u16 = 0;
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next {
                seq = seq.wrapping_add(1);
                for (t, target) in self.check.targets.iter().enumerate() {
                    match self.send(target, t, seq, &mut echo[t], now) {
                        Ok(p) => flying.push(p),
                        // Nothing went out (no route, interface gone): lost, now.
                        Err(_) => {
                            echo[t] = None;
                            if !self.report(t, None) {
                                return;
                            }
                        }
                    }
                }
                next += self.check.interval;
                if next < now {
                    next = now + self.check.interval;
                }
            }
            // Expired probes are lost.
            let mut i = 0;
            while i < flying.len() {
                if now.duration_since(flying[i].sent()) >= self.check.timeout {
                    let p = flying.swap_remove(i);
                    if !self.report(p.target(), None) {
                        return;
                    }
                } else {
                    i += 1;
                }
            }
            let deadline = flying
                .iter()
                .map(|p| p.sent() + self.check.timeout)
                .chain([next, now + STOP_POLL])
                .min()
                .unwrap_or(next);
            match self.wait(&echo, &mut flying, deadline) {
                Ok(results) => {
                    for (t, rtt) in results {
                        if !self.report(t, rtt) {
                            return;
                        }
                    }
                }
                // poll itself failed (should not happen): don't spin.
                Err(_) => std::thread::sleep(STOP_POLL),
            }
        }
    }

    /// Wait until `deadline` for answers; returns each finished probe's target and its
    /// round trip (None: failed, e.g. a refused connect), removed from `flying`.
    fn wait(
        &self,
        echo: &[Option<EchoSocket>],
        flying: &mut Vec<InFlight>,
        deadline: Instant,
    ) -> io::Result<Vec<(usize, Option<Duration>)>> {
        // A pollfd per open echo socket with a probe out, then per pending connect.
        let mut fds = Vec::new();
        let mut who = Vec::new();
        for (t, s) in echo.iter().enumerate() {
            let Some(s) = s else { continue };
            if flying
                .iter()
                .any(|p| matches!(p, InFlight::Echo { target, .. } if *target == t))
            {
                fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
                who.push(Waiting::Echo(t));
            }
        }
        for (i, p) in flying.iter().enumerate() {
            if let InFlight::Connect { fd, .. } = p {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                who.push(Waiting::Connect(i));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = poll(&mut fds, super::timeout::poll_timeout(Some(left)))?;
        let now = Instant::now();
        // Index in `flying` → answered (Some(rtt)) or failed (None).
        let mut finished: Vec<(usize, Option<Duration>)> = Vec::new();
        if n > 0 {
            for (p, w) in fds.iter().zip(&who) {
                // Any event, errors and hang-ups included (unknown bits too).
                if p.revents().is_some_and(|r| r.is_empty()) {
                    continue;
                }
                match *w {
                    Waiting::Echo(t) => {
                        let s = echo[t].as_ref().expect("polled sockets are open");
                        for seq in s.answers() {
                            let found = flying.iter().position(|f| {
                                matches!(f, InFlight::Echo { target, seq: q, .. } if *target == t && *q == seq)
                            });
                            if let Some(i) = found {
                                finished.push((i, Some(now.duration_since(flying[i].sent()))));
                            }
                        }
                    }
                    Waiting::Connect(i) => {
                        if let InFlight::Connect { fd, sent, .. } = &flying[i] {
                            let ok = connect_result(fd).unwrap_or(false);
                            finished.push((i, ok.then(|| now.duration_since(*sent))));
                        }
                    }
                }
            }
        }
        // Remove from the back so the indices stay valid.
        finished.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
        finished.dedup_by_key(|x| x.0);
        Ok(finished
            .into_iter()
            .map(|(i, rtt)| (flying.remove(i).target(), rtt))
            .collect())
    }

    fn send(
        &self,
        target: &ProbeTarget,
        t: usize,
        seq: u16,
        echo: &mut Option<EchoSocket>,
        now: Instant,
    ) -> io::Result<InFlight> {
        match target {
            ProbeTarget::Icmp(a) => {
                if echo.is_none() {
                    *echo = Some(EchoSocket::open(*a, &self.dev, self.mark)?);
                }
                let s = echo.as_ref().expect("opened above");
                s.send(seq)?;
                Ok(InFlight::Echo {
                    target: t,
                    seq,
                    sent: now,
                })
            }
            ProbeTarget::Tcp(s) => Ok(InFlight::Connect {
                target: t,
                fd: start_connect(*s, &self.dev, self.mark)?,
                sent: now,
            }),
        }
    }

    /// Send one result to the actor; false when the daemon is gone or stopping.
    fn report(&self, target: usize, rtt: Option<Duration>) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        self.tx
            .send(Event::Health {
                gateway: self.gateway.clone(),
                target,
                ok: rtt.is_some(),
                rtt,
            })
            .is_ok()
    }
}
/// A non-blocking socket (close-on-exec, as every socket symroute opens).
fn socket(domain: Domain, ty: Type, proto: Protocol) -> io::Result<Socket> {
    Socket::new(domain, ty.nonblocking(), Some(proto))
}

/// Probes leave by the gateway's interface, carrying its mark (so they take its table).
fn bind_path(s: &Socket, dev: &str, mark: u32) -> io::Result<()> {
    s.bind_device(Some(dev.as_bytes()))?;
    if mark != 0 {
        s.set_mark(mark)?;
    }
    Ok(())
}

/// Makes a raw ICMP socket keep only echo replies (and, for IPv4, the types from 32 up,
/// which the kernel never filters; `Reply::ours` drops them). Without a filter it gets a copy of
/// every ICMP message the host receives (echo requests to the host, unreachables,
/// redirects, on any device until it is bound), each a wake-up of the probe thread and a
/// message to read and drop. The kernel drops them before they are queued instead.
/// Neither libc nor socket2 names these options: the values are the kernel's
/// (linux/icmp.h `ICMP_FILTER`, linux/icmpv6.h `ICMPV6_FILTER`, both 1). In both filters
/// a set bit drops that message type; IPv4's has one bit per type below 32 (echo reply
/// is 0), IPv6's 256 (echo reply is 129).
fn keep_only_echo_replies(s: &Socket, v4: bool) -> io::Result<()> {
    const FILTER: libc::c_int = 1;
    let (level, filter) = if v4 {
        (libc::SOL_RAW, vec![!1u32])
    } else {
        let mut all = vec![u32::MAX; 8];
        all[129 / 32] &= !(1 << (129 % 32));
        (libc::IPPROTO_ICMPV6, all)
    };
    let len = libc::socklen_t::try_from(std::mem::size_of_val(filter.as_slice()))
        .expect("32 bytes at most");
    // SAFETY: `filter` is a live, initialised buffer of `len` bytes for the whole call,
    // the layout of `struct icmp_filter` (one u32) or `struct icmp6_filter` (eight);
    // the kernel only reads it. The fd is open: `s` owns it.
    let r = unsafe { libc::setsockopt(s.as_raw_fd(), level, FILTER, filter.as_ptr().cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

enum Waiting {
    Echo(usize),
    Connect(usize),
}

/// An ICMP echo socket for one target: an unprivileged ping socket if allowed, a raw
/// one otherwise, bound to the gateway's interface and mark. An answer counts only if it
/// is an echo reply from the target carrying this socket's payload (a marker and a
/// random nonce): a stray or forged reply from elsewhere, or to someone else's ping,
/// never makes a dead path look alive.
struct EchoSocket {
    fd: Socket,
    to: IpAddr,
    raw: bool,
    id: u16,
    payload: [u8; PAYLOAD],
}

/// Bytes after the 8-byte ICMP echo header: "symroute" and a nonce.
const PAYLOAD: usize = 16;

impl EchoSocket {
    fn open(to: IpAddr, dev: &str, mark: u32) -> io::Result<EchoSocket> {
        let (domain, proto) = match to {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let (fd, raw) = match socket(domain, Type::DGRAM, proto) {
            Ok(fd) => (fd, false),
            Err(_) => (socket(domain, Type::RAW, proto)?, true),
        };
        if raw {
            // Only a saving: `Reply::ours` drops every other message anyway.
            if let Err(e) = keep_only_echo_replies(&fd, to.is_ipv4()) {
                tracing::debug!("raw ICMP socket for {to}: no filter ({e}); every ICMP message is read and dropped");
            }
        }
        bind_path(&fd, dev, mark)?;
        // Ping sockets get their identifier from the kernel; raw ones carry ours, which
        // differs per interface so two gateways probing one target tell their answers apart.
        let id = dev
            .bytes()
            .fold((std::process::id() as u16) ^ 0x5359, |h, b| {
                h.rotate_left(5) ^ u16::from(b)
            });
        let mut payload = [0u8; PAYLOAD];
        payload[..8].copy_from_slice(b"symroute");
        payload[8..].copy_from_slice(&nonce().to_be_bytes());
        Ok(EchoSocket {
            fd,
            to,
            raw,
            id,
            payload,
        })
    }

    fn send(&self, seq: u16) -> io::Result<()> {
        let v4 = self.to.is_ipv4();
        let mut pkt = [0u8; 8 + PAYLOAD];
        pkt[0] = if v4 { 8 } else { 128 };
        pkt[4..6].copy_from_slice(&self.id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..].copy_from_slice(&self.payload);
        if v4 {
            // The kernel computes ICMPv6 checksums itself, not ICMPv4 ones on raw sockets.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        self.fd
            .send_to(&pkt, &SockAddr::from(SocketAddr::new(self.to, 0)))?;
        Ok(())
    }

    /// Sequence numbers of our echo replies waiting on the socket.
    fn answers(&self) -> Vec<u16> {
        let mut seqs = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = match recvfrom::<SockaddrStorage>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, from)) if n > 0 => (n, from),
                _ => return seqs,
            };
            let from = from.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|a| IpAddr::V4(a.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
            });
            let reply = Reply {
                msg: &buf[..n],
                from,
                ip_header: self.raw && self.to.is_ipv4(),
            };
            if let Some(seq) = reply.ours(self.to, self.raw.then_some(self.id), &self.payload) {
                seqs.push(seq);
            }
        }
    }
}

/// A random number for the probes' payload (std's hasher keys come from the OS's
/// randomness; no crate needed for 8 bytes).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// One ICMP message read from an echo socket.
struct Reply<'a> {
    msg: &'a [u8],
    /// Its sender, as the socket reports it.
    from: Option<IpAddr>,
    /// Raw IPv4 sockets see the IP header first.
    ip_header: bool,
}

impl Reply<'_> {
    /// Its sequence number, if it is the echo reply to one of our probes to `to`: from
    /// `to`, of the reply type, with our identifier (`id`, raw sockets; a ping socket's
    /// kernel matches it) and our `payload`.
    fn ours(&self, to: IpAddr, id: Option<u16>, payload: &[u8]) -> Option<u16> {
        let mut msg = self.msg;
        let mut from = self.from;
        if self.ip_header {
            let ihl = usize::from(*msg.first()? & 0x0f) * 4;
            if msg.len() < ihl.max(20) {
                return None;
            }
            from = Some(IpAddr::V4(std::net::Ipv4Addr::new(
                msg[12], msg[13], msg[14], msg[15],
            )));
            msg = &msg[ihl..];
        }
        let reply_type = if to.is_ipv4() { 0u8 } else { 129 };
        if from != Some(to) || msg.len() != 8 + payload.len() || msg[0] != reply_type {
            return None;
        }
        if id.is_some_and(|id| msg[4..6] != id.to_be_bytes()) || &msg[8..] != payload {
            return None;
        }
        Some(u16::from_be_bytes([msg[6], msg[7]]))
    }
}

/// Start a non-blocking TCP connect; `connect_result` tells how it ended.
fn start_connect(s: SocketAddr, dev: &str, mark: u32) -> io::Result<Socket> {
    let fd = socket(Domain::for_address(s), Type::STREAM, Protocol::TCP)?;
    bind_path(&fd, dev, mark)?;
    match fd.connect(&SockAddr::from(s)) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(fd),
    }
}

/// A connect that polled writable (or failed): good when the handshake completed.
fn connect_result(fd: &Socket) -> io::Result<bool> {
    Ok(fd.take_error()?.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw echo socket (a fresh namespace allows no ping sockets) keeps only echo
    /// replies: the peer's echo requests to this host, which every raw ICMP socket
    /// would otherwise get a copy of, never reach it, while the reply to our own probe
    /// does. Both families; real namespaces, needs root.
    #[test]
    fn a_raw_echo_socket_takes_only_echo_replies() {
        use crate::lab::{in_netns, veth, Netns};
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: run as root after scripts/setup"
        );
        let (host, peer) = (
            Netns::new("icmpf").expect("netns"),
            Netns::new("icmpf-p").expect("netns"),
        );
        veth(&host, "e0", &peer, "p0").expect("veth");
        for (ns, a4, a6) in [
            (&host, "192.0.2.1/24", "2001:db8::1/64"),
            (&peer, "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            let dev = if ns.name() == host.name() { "e0" } else { "p0" };
            ns.ip(&format!("addr add {a4} dev {dev}")).expect("addr");
            ns.ip(&format!("addr add {a6} dev {dev} nodad"))
                .expect("addr");
        }
        for (to, from) in [("192.0.2.2", "192.0.2.1"), ("2001:db8::2", "2001:db8::1")] {
            let to: IpAddr = to.parse().expect("address");
            let from: IpAddr = from.parse().expect("address");
            let sock = in_netns(host.name(), move || EchoSocket::open(to, "e0", 0))
                .expect("thread")
                .expect("echo socket");
            assert!(sock.raw, "a fresh namespace should allow no ping socket");
            // Three echo requests from the peer to this host, answered by its kernel;
            // then our probe.
            let pinger = in_netns(peer.name(), move || EchoSocket::open(from, "p0", 0))
                .expect("thread")
                .expect("the peer's echo socket");
            for seq in 1..=3 {
                pinger.send(seq).expect("ping from the peer");
            }
            sock.send(7).expect("probe");
            // Everything the socket gets until the reply to our probe, which comes after
            // the peer's requests (or 5 s), then whatever else is queued.
            let reply = if to.is_ipv4() { 0 } else { 129 };
            let mut kinds = Vec::new();
            let read = |kinds: &mut Vec<u8>| {
                let mut buf = [0u8; 1500];
                let (n, _) = recvfrom::<SockaddrStorage>(sock.fd.as_raw_fd(), &mut buf).ok()?;
                // Raw IPv4 sockets get the IP header first.
                let at = if to.is_ipv4() {
                    usize::from(buf[0] & 0x0f) * 4
                } else {
                    0
                };
                kinds.extend(buf[..n].get(at).copied());
                Some(())
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !kinds.contains(&reply) && Instant::now() < deadline {
                if read(&mut kinds).is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
            while read(&mut kinds).is_some() {}
            assert_eq!(kinds, vec![reply], "{to}: message types on the socket");
        }
    }

    fn echo_reply(v4: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![if v4 { 0 } else { 129 }, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn only_replies_from_the_target_with_our_payload_count() {
        let to: IpAddr = "192.0.2.53".parse().unwrap();
        let other: IpAddr = "192.0.2.54".parse().unwrap();
        let payload = *b"symroute\x01\x02\x03\x04\x05\x06\x07\x08";
        let ours = |msg: &[u8], from: IpAddr, id: Option<u16>| {
            Reply {
                msg,
                from: Some(from),
                ip_header: false,
            }
            .ours(to, id, &payload)
        };
        let good = echo_reply(true, 7, 42, &payload);
        assert_eq!(ours(&good, to, None), Some(42));
        assert_eq!(ours(&good, to, Some(7)), Some(42));
        assert_eq!(ours(&good, other, None), None, "from another address");
        assert_eq!(ours(&good, to, Some(8)), None, "someone else's identifier");
        let mut forged = payload;
        forged[15] ^= 1;
        assert_eq!(
            ours(&echo_reply(true, 7, 42, &forged), to, None),
            None,
            "another payload"
        );
        assert_eq!(
            ours(&echo_reply(true, 7, 42, &payload[..8]), to, None),
            None,
            "short"
        );
        let mut request = good.clone();
        request[0] = 8;
        assert_eq!(ours(&request, to, None), None, "an echo request");
        // Raw IPv4: the source is the header's.
        let mut ip = vec![
            0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 53, 192, 0, 2, 1,
        ];
        ip.extend_from_slice(&good);
        let raw = |msg: &[u8]| {
            Reply {
                msg,
                from: Some(to),
                ip_header: true,
            }
            .ours(to, Some(7), &payload)
        };
        assert_eq!(raw(&ip), Some(42));
        ip[15] = 54;
        assert_eq!(raw(&ip), None, "the header names another source");
        assert_eq!(raw(&ip[..10]), None, "truncated");
        // IPv6.
        let to6: IpAddr = "2001:db8::53".parse().unwrap();
        let r6 = Reply {
            msg: &echo_reply(false, 7, 9, &payload),
            from: Some(to6),
            ip_header: false,
        };
        assert_eq!(r6.ours(to6, None, &payload), Some(9));
    }

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
