//! Real TCP/UDP traffic between lab namespaces, in-process: sockets are created on a
//! thread that joined the namespace (see [`in_netns`]) and keep it afterwards.
//!
//! Servers answer with the peer address they saw, so a probe proves both that the
//! reply came back and which source address the server observed (NAT, proxies).

use super::netns::{in_netns, Netns};
use anyhow::{anyhow, Context};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A background server thread that stops (and closes its socket) when dropped.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(
        name: String,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(&flag))
            .context("spawn server thread")?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP server that writes `hello <peer-ip> <peer-port>\n` to each connection and closes.
pub struct TcpServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    _worker: Worker,
}

impl TcpServer {
    /// Binds `addr` inside `ns` (for IPv6 bind the exact address, since std cannot set
    /// IPV6_V6ONLY and `[::]` would collide with a `0.0.0.0` listener on the same port).
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpServer> {
        let listener = in_netns(ns.name(), move || TcpListener::bind(addr))?
            .with_context(|| format!("bind tcp {addr} in netns {}", ns.name()))?;
        // Nonblocking accept + polling the stop flag: the thread never blocks forever.
        listener.set_nonblocking(true).context("set_nonblocking")?;
        let worker = Worker::start(format!("tcp-{addr}"), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let _ = greet(stream, peer);
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        })?;
        Ok(TcpServer {
            addr,
            _worker: worker,
        })
    }
}

fn greet(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(format!("hello {} {}\n", peer.ip(), peer.port()).as_bytes())
}

/// UDP server that answers each datagram with `echo <peer-ip> <peer-port>`.
pub struct UdpEcho {
    /// The address it listens on.
    pub addr: SocketAddr,
    _worker: Worker,
}

impl UdpEcho {
    /// Binds `addr` inside `ns` and echoes until dropped.
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpEcho> {
        let sock = in_netns(ns.name(), move || UdpSocket::bind(addr))?
            .with_context(|| format!("bind udp {addr} in netns {}", ns.name()))?;
        sock.set_read_timeout(Some(POLL))
            .context("set_read_timeout")?;
        let worker = Worker::start(format!("udp-{addr}"), move |stop| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let reply = format!("echo {} {}", peer.ip(), peer.port());
                    let _ = sock.send_to(reply.as_bytes(), peer);
                }
            }
        })?;
        Ok(UdpEcho {
            addr,
            _worker: worker,
        })
    }
}

/// How a wildcard-bound UDP server (`0.0.0.0:PORT`, `[::]:PORT`) chooses the source of
/// its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpSource {
    /// Plain `sendto`: the kernel picks the source by routing to the client.
    Routed,
    /// `IP_PKTINFO` / `IPV6_PKTINFO`: the answer leaves from the address the request came
    /// to, as DNS and NTP servers that listen on every address do.
    Pktinfo,
}

impl UdpEcho {
    /// A wildcard-bound echo on `port` in `ns` for IPv4 or (IPv6-only) IPv6, answering
    /// from the source `how` says.
    pub fn start_wildcard(
        ns: &Netns,
        v6: bool,
        port: u16,
        how: UdpSource,
    ) -> anyhow::Result<UdpEcho> {
        let sock = in_netns(ns.name(), move || wildcard_socket(v6, port, how))?
            .with_context(|| format!("bind wildcard udp :{port} in netns {}", ns.name()))?;
        let addr = sock.local_addr().context("local_addr")?;
        sock.set_read_timeout(Some(POLL))
            .context("set_read_timeout")?;
        let worker = Worker::start(format!("udp-any-{addr}"), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                let _ = echo_once(&sock, how);
            }
        })?;
        Ok(UdpEcho {
            addr,
            _worker: worker,
        })
    }
}

/// std cannot set IPV6_V6ONLY (a `[::]` socket would also take IPv4 and collide with the
/// `0.0.0.0` one) nor ask for the arrival address, hence nix.
fn wildcard_socket(v6: bool, port: u16, how: UdpSource) -> io::Result<UdpSocket> {
    use nix::sys::socket::{self as ns, sockopt, AddressFamily, SockFlag, SockType};
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = ns::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    if v6 {
        ns::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if how == UdpSource::Pktinfo {
        if v6 {
            ns::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        } else {
            ns::setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
        }
    }
    let any: SocketAddr = if v6 {
        SocketAddr::from(([0u16; 8], port))
    } else {
        SocketAddr::from(([0u8; 4], port))
    };
    ns::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &ns::SockaddrStorage::from(any),
    )?;
    Ok(UdpSocket::from(fd))
}

/// Receives one datagram and answers `echo <peer-ip> <peer-port>`; errors (timeouts
/// included) end this round.
fn echo_once(sock: &UdpSocket, how: UdpSource) -> io::Result<()> {
    use nix::sys::socket::{self as ns, ControlMessage, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = ns::recvmsg::<ns::SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let Some(peer) = msg.address else {
        return Ok(());
    };
    let mut v4_info = None;
    let mut v6_info = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(i) => {
                v4_info = Some(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: i.ipi_addr,
                    ipi_addr: i.ipi_addr,
                })
            }
            ControlMessageOwned::Ipv6PacketInfo(i) => {
                v6_info = Some(libc::in6_pktinfo {
                    ipi6_addr: i.ipi6_addr,
                    ipi6_ifindex: 0,
                })
            }
            _ => {}
        }
    }
    let peer_sa = peer
        .as_sockaddr_in()
        .map(|a| SocketAddr::from((a.ip(), a.port())))
        .or_else(|| {
            peer.as_sockaddr_in6()
                .map(|a| SocketAddr::from((a.ip(), a.port())))
        })
        .ok_or_else(|| io::Error::other("peer is not an IP address"))?;
    let reply = format!("echo {} {}", peer_sa.ip(), peer_sa.port());
    let mut cmsgs = Vec::new();
    if let Some(i) = v4_info.as_ref() {
        cmsgs.push(ControlMessage::Ipv4PacketInfo(i));
    }
    if let Some(i) = v6_info.as_ref() {
        cmsgs.push(ControlMessage::Ipv6PacketInfo(i));
    }
    if how == UdpSource::Routed {
        cmsgs.clear();
    }
    ns::sendmsg(
        fd,
        &[io::IoSlice::new(reply.as_bytes())],
        &cmsgs,
        MsgFlags::empty(),
        Some(&peer),
    )?;
    Ok(())
}

/// Connects from inside `ns` to `dst` and returns the server's greeting line, trimmed.
/// A timeout, reset or a connection closed without a line is an error.
pub fn tcp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let from = ns.name().to_string();
    in_netns(ns.name(), move || -> anyhow::Result<String> {
        let ctx =
            |what: &str, e: io::Error| anyhow!("{what} {dst} from netns {from}: {}", describe(&e));
        let stream = TcpStream::connect_timeout(&dst, timeout).map_err(|e| ctx("connect to", e))?;
        stream
            .set_read_timeout(Some(timeout))
            .context("set_read_timeout")?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| ctx("read from", e))?;
        if line.is_empty() {
            return Err(anyhow!(
                "read from {dst} from netns {from}: closed without a greeting"
            ));
        }
        Ok(line.trim().to_string())
    })?
}

/// Sends `ping` from inside `ns` to `dst` and returns the answer.
pub fn udp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let from = ns.name().to_string();
    in_netns(ns.name(), move || -> anyhow::Result<String> {
        let ctx = |e: io::Error| anyhow!("udp to {dst} from netns {from}: {}", describe(&e));
        let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .context("parse wildcard address")?;
        let sock = UdpSocket::bind(any).map_err(ctx)?;
        sock.connect(dst).map_err(ctx)?;
        sock.set_read_timeout(Some(timeout))
            .context("set_read_timeout")?;
        sock.send(b"ping").map_err(ctx)?;
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).map_err(ctx)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// Socket timeouts surface as EAGAIN on Linux; call them what they are.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

/// TCP server that greets like [`TcpServer`] (`hello <peer-ip> <peer-port>`) and then
/// echoes every line until the peer closes: a connection that stays open, for sessions
/// held across a failover.
pub struct TcpEcho {
    pub addr: SocketAddr,
    _worker: Worker,
}

impl TcpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpEcho> {
        let listener = in_netns(ns.name(), move || TcpListener::bind(addr))?
            .with_context(|| format!("bind tcp {addr} in netns {}", ns.name()))?;
        listener.set_nonblocking(true).context("set_nonblocking")?;
        let worker = Worker::start(format!("echo-{addr}"), move |stop| {
            std::thread::scope(|scope| {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            scope.spawn(move || {
                                let _ = echo(stream, peer, stop);
                            });
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            });
        })?;
        Ok(TcpEcho {
            addr,
            _worker: worker,
        })
    }
}

fn echo(stream: TcpStream, peer: SocketAddr, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut w = stream.try_clone()?;
    w.write_all(format!("hello {} {}\n", peer.ip(), peer.port()).as_bytes())?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with('\n') => {
                w.write_all(line.as_bytes())?;
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TCP connection held open to a [`TcpEcho`], pinged from a thread every `every`: the
/// time of each answer is recorded, so a caller sees when a failover interrupted it and
/// whether (and when) it came back. Stops (and closes) on drop.
pub struct Session {
    /// The server's greeting (`hello <ip> <port>`: the address it saw).
    pub greeting: String,
    state: Arc<std::sync::Mutex<SessionState>>,
    /// Shut down on drop, so a ping waiting for its answer ends at once.
    sock: TcpStream,
    _worker: Worker,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

#[derive(Default)]
struct SessionState {
    answers: Vec<std::time::Instant>,
    failed: Option<String>,
}

impl Session {
    /// Connects from `ns` (within `timeout`), reads the greeting, then pings every `every`;
    /// a ping unanswered for `patience` ends the session as failed.
    pub fn open(
        ns: &Netns,
        dst: SocketAddr,
        timeout: Duration,
        every: Duration,
        patience: Duration,
    ) -> anyhow::Result<Session> {
        let stream = in_netns(ns.name(), move || TcpStream::connect_timeout(&dst, timeout))?
            .map_err(|e| {
                anyhow!(
                    "connect to {dst} from netns {}: {}",
                    ns.name(),
                    describe(&e)
                )
            })?;
        stream
            .set_read_timeout(Some(timeout))
            .context("set_read_timeout")?;
        let mut r = BufReader::new(stream.try_clone().context("clone")?);
        let mut greeting = String::new();
        r.read_line(&mut greeting)
            .map_err(|e| anyhow!("greeting from {dst}: {}", describe(&e)))?;
        stream
            .set_read_timeout(Some(patience))
            .context("set_read_timeout")?;
        let state = Arc::new(std::sync::Mutex::new(SessionState::default()));
        let st = state.clone();
        let sock = stream.try_clone().context("clone")?;
        let worker = Worker::start(format!("session-{dst}"), move |stop| {
            let mut w = stream;
            let mut n = 0u64;
            let lock = || st.lock().unwrap_or_else(|e| e.into_inner());
            while !stop.load(Ordering::Relaxed) {
                let sent = std::time::Instant::now();
                n += 1;
                let word = format!("ping {n}\n");
                let mut line = String::new();
                let r = w
                    .write_all(word.as_bytes())
                    .and_then(|_| r.read_line(&mut line));
                match r {
                    Ok(_) if line == word => lock().answers.push(std::time::Instant::now()),
                    Ok(0) => {
                        lock().failed = Some("the server closed the connection".into());
                        return;
                    }
                    Ok(_) => {
                        lock().failed = Some(format!("unexpected answer {line:?}"));
                        return;
                    }
                    Err(e) => {
                        lock().failed = Some(format!(
                            "no answer to ping {n} for {patience:?}: {}",
                            describe(&e)
                        ));
                        return;
                    }
                }
                if let Some(rest) = every.checked_sub(sent.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
        })?;
        Ok(Session {
            greeting: greeting.trim().to_string(),
            state,
            sock,
            _worker: worker,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why it ended, if it did.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    pub fn answers(&self) -> usize {
        self.lock().answers.len()
    }

    /// The first answer after `t`, waiting up to `limit` for it (`None`: none came, or
    /// the session failed first).
    pub fn answer_after(
        &self,
        t: std::time::Instant,
        limit: Duration,
    ) -> Option<std::time::Instant> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            {
                let s = self.lock();
                if let Some(a) = s.answers.iter().find(|a| **a > t) {
                    return Some(*a);
                }
                if s.failed.is_some() {
                    return None;
                }
            }
            if std::time::Instant::now() > deadline || super::interrupt::interrupted() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The longest time without an answer between `from` and `to` (counting from `from`
    /// to the first answer after it).
    pub fn longest_gap(&self, from: std::time::Instant, to: std::time::Instant) -> Duration {
        let s = self.lock();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for a in s.answers.iter().filter(|a| **a > from && **a <= to) {
            gap = gap.max(a.duration_since(last));
            last = *a;
        }
        gap.max(to.saturating_duration_since(last))
    }
}
