//! One thread serving many clients of a small request/answer protocol (the control
//! socket, the metrics page), bounded whatever the clients do: at most
//! `Limits::max_clients` connections at once (a new client past that evicts the one that
//! has been sending its request longest), a deadline for the whole request and another
//! for reading the answer, and a cap on the request's size. Slow or idle clients cost a
//! slot each for at most the deadline, never a thread; a client that sends its request
//! at once is answered at once, however many others trickle.
//!
//! Written here rather than with an async runtime: a `poll(2)` loop over a few dozen
//! sockets is all both servers need, and a runtime would dwarf the rest of the daemon.
//! An answer the protocol cannot give at once (the control socket asks the actor) is
//! `Answer::Later`: a channel, plus a `Waker` that the answering side pokes so the loop
//! picks the answer up without polling on a timer.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};

/// How long a new client is spared from eviction while older ones remain.
const GRACE: Duration = Duration::from_millis(50);

/// How a server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, whatever their phase.
    pub max_clients: usize,
    /// From accept to a complete request.
    pub request_deadline: Duration,
    /// From a complete request to its answer being ready (`Answer::Later`): a client is
    /// dropped after that, so a stuck answering side cannot hold every slot for ever.
    pub wait_deadline: Duration,
    /// From the answer being ready to its last byte written.
    pub answer_deadline: Duration,
    /// The largest request.
    pub max_request: usize,
}

/// What a request gets.
pub enum Answer {
    Now(Vec<u8>),
    /// Bytes sent on the channel later; the sender calls `Waker::wake` after sending.
    Later(Receiver<Vec<u8>>),
    /// Nothing: close the connection.
    Close,
}

/// Wakes the serving thread when an `Answer::Later` is ready.
#[derive(Clone)]
pub struct Waker(Arc<UnixStream>);

impl Waker {
    pub fn wake(&self) {
        // Non-blocking: a full buffer means a wake-up is pending already.
        let _ = (&*self.0).write(&[1]);
    }
}

/// One protocol's side of the server.
pub trait Protocol: Send + 'static {
    /// Whether to serve a new client; `Err` carries what to tell it before closing.
    fn admit(&mut self, _client: BorrowedFd<'_>) -> Result<(), Vec<u8>> {
        Ok(())
    }
    /// The length of a complete request at the start of `buf`, if one is there.
    fn complete(&self, buf: &[u8]) -> Option<usize>;
    /// Answer a complete request.
    fn answer(&mut self, request: &[u8], waker: &Waker) -> Answer;
    /// The client stopped sending (end of stream) or went past `max_request` before a
    /// complete request.
    fn incomplete(&mut self, buf: &[u8], too_large: bool, waker: &Waker) -> Answer;
    /// What to tell a client turned away because every slot is busy answering.
    fn busy(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A listening socket the loop accepts from.
pub trait Listen: AsFd + Send + 'static {
    type Stream: Read + Write + AsFd + Send;
    fn accept_client(&self) -> io::Result<Self::Stream>;
    fn set_nonblocking(&self) -> io::Result<()>;
    fn prepare(s: &Self::Stream) -> io::Result<()>;
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    fn accept_client(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        UnixListener::set_nonblocking(self, true)
    }
    fn prepare(s: &UnixStream) -> io::Result<()> {
        s.set_nonblocking(true)
    }
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    fn accept_client(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        TcpListener::set_nonblocking(self, true)
    }
    fn prepare(s: &TcpStream) -> io::Result<()> {
        s.set_nonblocking(true)?;
        s.set_nodelay(true)
    }
}

enum Phase {
    Reading {
        deadline: Instant,
    },
    Waiting {
        rx: Receiver<Vec<u8>>,
        deadline: Instant,
    },
    Writing {
        out: Vec<u8>,
        at: usize,
        deadline: Instant,
    },
}

impl Phase {
    /// When a client in this phase is dropped (every phase has one).
    fn deadline(&self) -> Instant {
        match *self {
            Phase::Reading { deadline }
            | Phase::Waiting { deadline, .. }
            | Phase::Writing { deadline, .. } => deadline,
        }
    }
}

struct Client<S> {
    stream: S,
    buf: Vec<u8>,
    phase: Phase,
    /// When it was accepted: the oldest reader is evicted first.
    since: Instant,
    /// Not admitted: its request gets this answer instead (once it has sent it, so
    /// closing does not reset the connection under the answer).
    refused: Option<Vec<u8>>,
}

impl<S> Client<S> {
    /// A client with nothing left to do but read `out` by `deadline`.
    fn answered(stream: S, out: Vec<u8>, deadline: Instant) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
            phase: Phase::Writing {
                out,
                at: 0,
                deadline,
            },
            since: Instant::now(),
            refused: None,
        }
    }
}

/// What became of a client after some I/O.
enum Next {
    Keep,
    Close,
}

/// Start serving `listener` with `protocol` on a thread named `name`.
pub fn spawn<L: Listen, P: Protocol>(
    name: &str,
    listener: L,
    protocol: P,
    limits: Limits,
) -> io::Result<()> {
    listener.set_nonblocking()?;
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let server = Server {
        listener,
        protocol,
        limits,
        wake_rx,
        waker: Waker(Arc::new(wake_tx)),
        clients: Vec::new(),
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || server.run())?;
    Ok(())
}

struct Server<L: Listen, P> {
    listener: L,
    protocol: P,
    limits: Limits,
    wake_rx: UnixStream,
    waker: Waker,
    clients: Vec<Client<L::Stream>>,
}

impl<L: Listen, P: Protocol> Server<L, P> {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let timeout = self
                .clients
                .iter()
                .map(|c| c.phase.deadline())
                .min()
                .map(|d| d.saturating_duration_since(now));
            let (listener_ready, woken, ready) = match self.wait(timeout) {
                Ok(r) => r,
                // EINTR and the like: look again.
                Err(_) => continue,
            };
            // Back to front: closing swaps the last client (already seen) into the
            // freed place, so the indices of `ready` stay right.
            for i in (0..self.clients.len()).rev() {
                if ready.get(i).copied().unwrap_or(false) {
                    if let Next::Close = self.io(i) {
                        self.clients.swap_remove(i);
                    }
                }
            }
            if woken {
                self.drain_wakes();
            }
            if listener_ready {
                self.accept();
            }
            self.expire(Instant::now());
        }
    }

    /// Poll the listener, the wake socket and every client that waits for I/O.
    fn wait(&self, timeout: Option<Duration>) -> io::Result<(bool, bool, Vec<bool>)> {
        let mut fds = Vec::with_capacity(self.clients.len() + 2);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN));
        for c in &self.clients {
            let events = match c.phase {
                Phase::Reading { .. } => PollFlags::POLLIN,
                Phase::Writing { .. } => PollFlags::POLLOUT,
                // Waiting: only the wake socket matters; no events asked.
                Phase::Waiting { .. } => PollFlags::empty(),
            };
            fds.push(PollFd::new(c.stream.as_fd(), events));
        }
        poll(&mut fds, super::timeout::poll_timeout(timeout))?;
        let any = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let ready = fds[2..].iter().map(any).collect();
        Ok((any(&fds[0]), any(&fds[1]), ready))
    }

    fn drain_wakes(&mut self) {
        let mut sink = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        let deadline = Instant::now() + self.limits.answer_deadline;
        for i in (0..self.clients.len()).rev() {
            let Phase::Waiting { rx, .. } = &self.clients[i].phase else {
                continue;
            };
            let out = match rx.try_recv() {
                Ok(out) => out,
                Err(TryRecvError::Empty) => continue,
                // The answering side went away without answering: nothing to say.
                Err(TryRecvError::Disconnected) => {
                    self.clients.swap_remove(i);
                    continue;
                }
            };
            self.clients[i].phase = Phase::Writing {
                out,
                at: 0,
                deadline,
            };
            if let Next::Close = self.io(i) {
                self.clients.swap_remove(i);
            }
        }
    }

    /// Accept whoever is waiting (a bounded number per round, so one flood cannot hold
    /// the loop), evicting the longest reader when every slot is taken.
    fn accept(&mut self) {
        for _ in 0..64 {
            let stream = match self.listener.accept_client() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EMFILE and the like: the client stays in the backlog; don't spin.
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
            };
            if L::prepare(&stream).is_err() {
                continue;
            }
            let refused = self.protocol.admit(stream.as_fd()).err();
            if self.clients.len() >= self.limits.max_clients {
                // The longest reader goes, sparing those accepted in the last `GRACE`
                // while older ones remain: a client between its connect and its write.
                let now = Instant::now();
                let oldest = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.phase, Phase::Reading { .. }))
                    .min_by_key(|(_, c)| (now.duration_since(c.since) < GRACE, c.since))
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        self.clients.swap_remove(i);
                    }
                    None => {
                        if let Some(msg) = self.protocol.busy() {
                            let mut c = Client::answered(stream, msg, Instant::now());
                            let _ = write(&mut c);
                        }
                        continue;
                    }
                }
            }
            let now = Instant::now();
            self.clients.push(Client {
                stream,
                buf: Vec::new(),
                phase: Phase::Reading {
                    deadline: now + self.limits.request_deadline,
                },
                since: now,
                refused,
            });
            // The request is often there already.
            let i = self.clients.len() - 1;
            if let Next::Close = self.io(i) {
                self.clients.swap_remove(i);
            }
        }
    }

    /// Read or write what client `i` is ready for.
    fn io(&mut self, i: usize) -> Next {
        match self.clients[i].phase {
            Phase::Reading { .. } => self.read(i),
            Phase::Writing { .. } => write(&mut self.clients[i]),
            // Polled for no events: ready means it hung up (or failed) while its answer
            // was being made. Nobody is left to read it.
            Phase::Waiting { .. } => Next::Close,
        }
    }

    fn read(&mut self, i: usize) -> Next {
        let max = self.limits.max_request;
        let c = &mut self.clients[i];
        let mut chunk = [0u8; 4096];
        let mut ended = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if c.buf.len() > max || self.protocol.complete(&c.buf).is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        let done = ended || c.buf.len() > max || self.protocol.complete(&c.buf).is_some();
        if !done {
            return Next::Keep;
        }
        if let Some(msg) = c.refused.take() {
            c.phase = Phase::Writing {
                out: msg,
                at: 0,
                deadline: Instant::now() + self.limits.answer_deadline,
            };
            return write(c);
        }
        let answer = match self.protocol.complete(&c.buf) {
            Some(n) if n <= max => {
                let request = c.buf[..n].to_vec();
                self.protocol.answer(&request, &self.waker)
            }
            _ if c.buf.len() > max => {
                let head = c.buf[..max].to_vec();
                self.protocol.incomplete(&head, true, &self.waker)
            }
            _ if ended => {
                let buf = std::mem::take(&mut c.buf);
                self.protocol.incomplete(&buf, false, &self.waker)
            }
            _ => return Next::Keep,
        };
        let c = &mut self.clients[i];
        match answer {
            Answer::Close => Next::Close,
            Answer::Later(rx) => {
                c.phase = Phase::Waiting {
                    rx,
                    deadline: Instant::now() + self.limits.wait_deadline,
                };
                Next::Keep
            }
            Answer::Now(out) => {
                c.phase = Phase::Writing {
                    out,
                    at: 0,
                    deadline: Instant::now() + self.limits.answer_deadline,
                };
                write(c)
            }
        }
    }

    /// Drop clients past their deadline.
    fn expire(&mut self, now: Instant) {
        self.clients.retain(|c| c.phase.deadline() > now);
    }
}

fn write<S: Read + Write>(c: &mut Client<S>) -> Next {
    let Phase::Writing { out, at, .. } = &mut c.phase else {
        return Next::Keep;
    };
    while *at < out.len() {
        match c.stream.write(&out[*at..]) {
            Ok(0) => return Next::Close,
            Ok(n) => *at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
    // Closing with unread input resets the connection, and the client may lose the
    // answer with it: read what is there (a little) first.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(c.stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    Next::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines in, the same line out (later, through the waker, when it starts with "l").
    struct Echo;

    impl Protocol for Echo {
        fn complete(&self, buf: &[u8]) -> Option<usize> {
            buf.iter().position(|b| *b == b'\n').map(|i| i + 1)
        }
        fn answer(&mut self, request: &[u8], waker: &Waker) -> Answer {
            if request.starts_with(b"l") {
                let (tx, rx) = std::sync::mpsc::channel();
                let (out, waker) = (request.to_vec(), waker.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = tx.send(out);
                    waker.wake();
                });
                Answer::Later(rx)
            } else {
                Answer::Now(request.to_vec())
            }
        }
        fn incomplete(&mut self, _: &[u8], too_large: bool, _: &Waker) -> Answer {
            if too_large {
                Answer::Now(b"too large\n".to_vec())
            } else {
                Answer::Close
            }
        }
    }

    /// Refuses everyone.
    struct Refuse;

    impl Protocol for Refuse {
        fn admit(&mut self, _: BorrowedFd<'_>) -> Result<(), Vec<u8>> {
            Err(b"go away\n".to_vec())
        }
        fn complete(&self, buf: &[u8]) -> Option<usize> {
            Echo.complete(buf)
        }
        fn answer(&mut self, request: &[u8], _: &Waker) -> Answer {
            Answer::Now(request.to_vec())
        }
        fn incomplete(&mut self, _: &[u8], _: bool, _: &Waker) -> Answer {
            Answer::Close
        }
    }

    #[test]
    fn a_refused_client_is_refused_however_late_its_request() {
        let served = Served::start(
            "refuse",
            Refuse,
            Limits {
                max_clients: 4,
                request_deadline: Duration::from_secs(2),
                wait_deadline: Duration::from_secs(2),
                answer_deadline: Duration::from_secs(2),
                max_request: 64,
            },
        );
        let path = served.path();
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Accepted (and judged) before the request comes.
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"status\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out, "go away\n");
    }

    /// Answers later, and never does (keeps the senders, so nothing disconnects).
    struct Never(Vec<std::sync::mpsc::Sender<Vec<u8>>>);

    impl Protocol for Never {
        fn complete(&self, buf: &[u8]) -> Option<usize> {
            buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
        }
        fn answer(&mut self, _: &[u8], _: &Waker) -> Answer {
            let (tx, rx) = std::sync::mpsc::channel();
            self.0.push(tx);
            Answer::Later(rx)
        }
        fn incomplete(&mut self, _: &[u8], _: bool, _: &Waker) -> Answer {
            Answer::Close
        }
    }

    #[test]
    fn a_client_waiting_past_its_deadline_is_dropped() {
        let served = Served::start(
            "never",
            Never(Vec::new()),
            Limits {
                max_clients: 2,
                request_deadline: Duration::from_secs(5),
                wait_deadline: Duration::from_millis(300),
                answer_deadline: Duration::from_secs(5),
                max_request: 64,
            },
        );
        let path = served.path();
        let t = Instant::now();
        let out = ask(&path, b"status\n");
        let took = t.elapsed();
        // Every slot taken by waiting clients would refuse newcomers for ever: after
        // the deadline they are closed (EOF, no answer), and the slots are free again.
        let again = ask(&path, b"status\n");
        assert_eq!(out.unwrap(), "");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(again.unwrap(), "");
    }

    /// A server on a socket in a fresh directory, which goes on drop.
    struct Served(std::path::PathBuf);

    impl Served {
        fn start(tag: &str, protocol: impl Protocol, limits: Limits) -> Served {
            let dir = std::env::temp_dir().join(format!("symroute-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let listener = UnixListener::bind(dir.join("s.sock")).unwrap();
            spawn(&format!("{tag}-test"), listener, protocol, limits).unwrap();
            Served(dir)
        }

        fn path(&self) -> std::path::PathBuf {
            self.0.join("s.sock")
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ask(path: &std::path::Path, line: &[u8]) -> io::Result<String> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(line)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn idle_clients_never_keep_a_prompt_one_waiting() {
        let served = Served::start(
            "serve",
            Echo,
            Limits {
                max_clients: 8,
                request_deadline: Duration::from_millis(500),
                wait_deadline: Duration::from_millis(500),
                answer_deadline: Duration::from_millis(500),
                max_request: 64,
            },
        );
        let path = served.path();
        // 40 clients that send half a line and stall: far more than the slots.
        let idle: Vec<UnixStream> = (0..40)
            .map(|_| {
                let mut s = UnixStream::connect(&path).unwrap();
                s.write_all(b"half").unwrap();
                s
            })
            .collect();
        let t = Instant::now();
        assert_eq!(ask(&path, b"now\n").unwrap(), "now\n");
        assert_eq!(ask(&path, b"later\n").unwrap(), "later\n");
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(ask(&path, &[b'x'; 100]).unwrap(), "too large\n");
        // The stalled ones were dropped (evicted or past their deadline).
        std::thread::sleep(Duration::from_millis(600));
        let dropped = idle
            .iter()
            .filter(|s| {
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                matches!((&**s).read(&mut [0u8; 8]), Ok(0))
            })
            .count();
        assert_eq!(dropped, 40);
    }
}
