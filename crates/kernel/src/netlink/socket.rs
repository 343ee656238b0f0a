//! A NETLINK_ROUTE socket in the current network namespace (the process entered it with
//! `netns::enter` before anything else): dumps of links, addresses, rules and routes, and
//! pipelined batches of rule and route changes. Synchronous on purpose: the kernel handles
//! route requests while we send them and queues its answers, so a blocking socket and a
//! plain loop are all it takes.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use netlink_packet_core::{
    parse_string, DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::convert;
use crate::KernelError;
use symroute_core::model::Family;
use symroute_core::plan::{RouteSpec, RuleSpec};

// Types of the messages a dump answers with (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
/// The extended-ack attribute with the kernel's own explanation of an error (linux/netlink.h).
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// Requests per datagram. Every request is acked, and all acks of a datagram must fit in
/// our receive buffer (roughly 1 KiB each of the default ~200 KiB) before we read them.
const CHUNK: usize = 64;
/// An interrupted dump (the kernel's table changed while we read it) is read again at
/// most this many times.
const DUMP_RETRIES: usize = 3;
/// The kernel answers at once; silence this long means something is badly wrong, and an
/// error beats hanging forever.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// One change to a rule or route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    AddRule(RuleSpec),
    DelRule(RuleSpec),
    AddRoute(RouteSpec),
    DelRoute(RouteSpec),
}

impl fmt::Display for Request {
    /// The `ip` command that does the same, which is how errors name a request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (family, object, verb, args) = match self {
            Self::AddRule(r) => (r.family, "rule", "add", r.ip_args()),
            Self::DelRule(r) => (r.family, "rule", "del", r.ip_args()),
            Self::AddRoute(r) => (r.family, "route", "add", r.ip_args()),
            Self::DelRoute(r) => (r.family, "route", "del", r.ip_args()),
        };
        write!(f, "ip {} {object} {verb} {args}", family.ip_flag())
    }
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// Receive buffer; grows to the largest datagram seen.
    buf: Vec<u8>,
    /// Interface name → index, read on first need: a route names its device by index.
    ifindex: Option<BTreeMap<String, u32>>,
}

fn io_error(what: &str) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        what: format!("netlink: {what}"),
        source,
    }
}

fn parse_error(what: &str) -> impl FnOnce(DecodeError) -> KernelError + '_ {
    move |e| KernelError::Parse {
        cmd: format!("netlink: {what}"),
        detail: e.to_string(),
    }
}

impl Netlink {
    /// A socket talking to the kernel of the current network namespace.
    pub fn open() -> Result<Self, KernelError> {
        Ok(Self {
            socket: open_socket(NETLINK_ROUTE, "NETLINK_ROUTE")?,
            seq: 0,
            buf: vec![0; 32 * 1024],
            ifindex: None,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        send_all(&self.socket, bytes)
    }

    fn recv(&mut self) -> io::Result<usize> {
        recv_datagram(&self.socket, &mut self.buf)
    }

    /// Every link of the namespace.
    pub fn dump_links(&mut self) -> Result<Vec<LinkMessage>, KernelError> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump("ip link show", request, RTM_NEWLINK, convert::parse_link)
    }

    /// Every link and every address (IPv4 first, then IPv6, as `ip addr show` lists them).
    pub fn dump_links_addrs(
        &mut self,
    ) -> Result<(Vec<LinkMessage>, Vec<AddressMessage>), KernelError> {
        let links = self.dump_links()?;
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let addrs = self.dump("ip addr show", request, RTM_NEWADDR, convert::parse_address)?;
        Ok((links, addrs))
    }

    /// Every rule of a family, in priority order.
    pub fn dump_rules(&mut self, family: Family) -> Result<Vec<RuleMessage>, KernelError> {
        let mut msg = RuleMessage::default();
        msg.header.family = convert::address_family(family);
        let what = format!("ip {} rule show", family.ip_flag());
        let request = RouteNetlinkMessage::GetRule(msg);
        self.dump(&what, request, RTM_NEWRULE, convert::parse_rule)
    }

    /// Every route of a family in every table (no cached clones, like `ip route show
    /// table all`).
    pub fn dump_routes(&mut self, family: Family) -> Result<Vec<RouteMessage>, KernelError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = convert::address_family(family);
        let what = format!("ip {} route show table all", family.ip_flag());
        let request = RouteNetlinkMessage::GetRoute(msg);
        self.dump(&what, request, RTM_NEWROUTE, convert::parse_route)
    }

    /// A dump, read again when the kernel flags it interrupted (a change raced with it),
    /// so the caller never sees half of an old table and half of a new one.
    fn dump<T>(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
        answer: u16,
        parse: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, KernelError> {
        for _ in 0..=DUMP_RETRIES {
            let (items, interrupted) = self.dump_once(what, request.clone(), answer, parse)?;
            if !interrupted {
                return Ok(items);
            }
        }
        Err(KernelError::Netlink {
            request: what.to_string(),
            reason: format!(
                "the dump was interrupted by concurrent changes {} times in a row; try again",
                DUMP_RETRIES + 1
            ),
        })
    }

    fn dump_once<T>(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
        answer: u16,
        parse: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<(Vec<T>, bool), KernelError> {
        let seq = self.next_seq();
        let mut bytes = Vec::new();
        encode(request, NLM_F_REQUEST | NLM_F_DUMP, seq, &mut bytes);
        let mut items = Vec::new();
        let interrupted = dump_raw(&self.socket, &mut self.buf, what, seq, &bytes, |m| {
            if m.kind == answer {
                items.push(parse(m.payload).map_err(parse_error(what))?);
            }
            Ok(())
        })?;
        Ok((items, interrupted))
    }

    /// Send `requests` in order, pipelined: a datagram of up to `CHUNK` requests, then its
    /// acks, matched by sequence number. Without `best_effort` no further datagram is sent
    /// after a failure and the first failure is returned (the kernel still runs the rest
    /// of that datagram: apply's rollback undoes whatever it did, like any other change).
    /// With `best_effort` everything is sent and every failure is reported.
    pub fn apply(&mut self, requests: &[Request], best_effort: bool) -> Result<(), KernelError> {
        let mut errors: Vec<(usize, KernelError)> = Vec::new();
        for (c, chunk) in requests.chunks(CHUNK).enumerate() {
            let mut bytes = Vec::new();
            let mut pending: BTreeMap<u32, (usize, &Request)> = BTreeMap::new();
            for (i, req) in chunk.iter().enumerate() {
                let pos = c * CHUNK + i;
                match self.message(req) {
                    Ok((msg, flags)) => {
                        let seq = self.next_seq();
                        encode(msg, flags, seq, &mut bytes);
                        pending.insert(seq, (pos, req));
                    }
                    Err(e) => {
                        errors.push((pos, e));
                        if !best_effort {
                            break;
                        }
                    }
                }
            }
            if !pending.is_empty() {
                self.send(&bytes)
                    .map_err(io_error("sending rule and route changes"))?;
            }
            while !pending.is_empty() {
                let n = self.recv().map_err(io_error(
                    "reading the kernel's answers to rule and route changes",
                ))?;
                let msgs = messages(&self.buf[..n]).map_err(parse_error("reading acks"))?;
                for m in msgs.iter().filter(|m| m.kind == NLMSG_ERROR) {
                    let Some((pos, req)) = pending.remove(&m.seq) else {
                        continue;
                    };
                    let (code, text) = ack_error(m.flags, m.payload);
                    if code != 0 {
                        errors.push((
                            pos,
                            KernelError::Netlink {
                                request: req.to_string(),
                                reason: reason(code, text),
                            },
                        ));
                    }
                }
            }
            if !best_effort && !errors.is_empty() {
                break;
            }
        }
        errors.sort_by_key(|(pos, _)| *pos);
        let mut errors = errors.into_iter().map(|(_, e)| e);
        let Some(first) = errors.next() else {
            return Ok(());
        };
        let rest: Vec<String> = errors.map(|e| e.to_string()).collect();
        if !best_effort || rest.is_empty() {
            return Err(first);
        }
        Err(KernelError::Other(
            std::iter::once(first.to_string())
                .chain(rest)
                .collect::<Vec<_>>()
                .join("\n"),
        ))
    }

    /// A request as a message and its netlink flags. Adds say NLM_F_EXCL, as `ip rule add`
    /// and `ip route add` do, so an existing object is an error rather than silently kept.
    fn message(&mut self, req: &Request) -> Result<(RouteNetlinkMessage, u16), KernelError> {
        const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;
        Ok(match req {
            Request::AddRule(r) => (RouteNetlinkMessage::NewRule(convert::rule_message(r)), ADD),
            Request::DelRule(r) => (RouteNetlinkMessage::DelRule(convert::rule_message(r)), DEL),
            Request::AddRoute(r) => {
                let oif = self.oif(&r.dev)?;
                if oif.is_none() && !r.dev.is_empty() {
                    return Err(KernelError::Netlink {
                        request: req.to_string(),
                        reason: format!(
                            "Cannot find device \"{}\" (no such interface in this network namespace)",
                            r.dev
                        ),
                    });
                }
                let msg = convert::route_message(r, oif, false);
                (RouteNetlinkMessage::NewRoute(msg), ADD)
            }
            // A vanished interface took its routes with it; without the index the table,
            // prefix, type and tag still name the route exactly.
            Request::DelRoute(r) => {
                let msg = convert::route_message(r, self.oif(&r.dev)?, true);
                (RouteNetlinkMessage::DelRoute(msg), DEL)
            }
        })
    }

    /// The index of interface `dev` (`None` for "" or an unknown name).
    fn oif(&mut self, dev: &str) -> Result<Option<u32>, KernelError> {
        if dev.is_empty() {
            return Ok(None);
        }
        let map = match &mut self.ifindex {
            Some(map) => map,
            None => {
                let links = self.dump_links()?;
                let map = convert::link_names(&links)
                    .into_iter()
                    .map(|(i, n)| (n, i))
                    .collect();
                self.ifindex.insert(map)
            }
        };
        Ok(map.get(dev).copied())
    }
}

/// A netlink socket of `protocol` (its name for errors) connected to the kernel of the
/// current network namespace, with extended acks and a receive timeout.
pub(crate) fn open_socket(protocol: isize, name: &str) -> Result<Socket, KernelError> {
    let opening = format!("opening a {name} socket");
    let mut socket = Socket::new(protocol).map_err(io_error(&opening))?;
    socket
        .bind_auto()
        .map_err(io_error("binding the netlink socket"))?;
    // Connected to the kernel, the socket takes no messages from other processes.
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io_error("connecting the netlink socket to the kernel"))?;
    // Both optional (older kernels lack them): CAP_ACK keeps error acks small (no copy
    // of our request), EXT_ACK adds the kernel's own explanation to an error.
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    set_recv_timeout(&socket, RECV_TIMEOUT)
        .map_err(io_error("setting a receive timeout on the netlink socket"))?;
    Ok(socket)
}

/// An nfnetlink socket (`open_socket(NETLINK_NETFILTER, ..)`) that a long-running
/// process closes on a thread of its own ([`close_nfnetlink_in_background`]). Closing one
/// while the kernel is still freeing a deleted nftables table waits for that: nf_tables'
/// NETLINK_URELEASE handler takes the commit mutex and flushes its destroy work, an RCU
/// grace period (5–30 ms here). The daemon's repair of our deleted table reads the
/// ruleset's generation first; waiting there would hold back the `nft -f` that writes it
/// again. A command closes them where it drops them: it exits soon anyway, and a thread
/// would only add to its start.
pub(crate) struct NfSocket(Option<Socket>);

/// Where dropped nfnetlink sockets go once [`close_nfnetlink_in_background`] was called:
/// `None` inside when its thread could not start (they are closed where dropped). A
/// Sender is Sync: the threads dropping sockets share it as it is.
static CLOSER: OnceLock<Option<mpsc::Sender<Socket>>> = OnceLock::new();

/// From now on, nfnetlink request sockets are closed on a thread of their own (the
/// daemon calls this once, at its start).
pub fn close_nfnetlink_in_background() {
    CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Socket>();
        std::thread::Builder::new()
            .name("nfnl-close".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
}

impl NfSocket {
    pub(crate) fn open() -> Result<NfSocket, KernelError> {
        open_socket(
            netlink_sys::protocols::NETLINK_NETFILTER,
            "NETLINK_NETFILTER",
        )
        .map(|s| NfSocket(Some(s)))
    }
}

impl std::ops::Deref for NfSocket {
    type Target = Socket;

    fn deref(&self) -> &Socket {
        self.0
            .as_ref()
            .expect("an NfSocket holds its socket until dropped")
    }
}

impl Drop for NfSocket {
    fn drop(&mut self) {
        // Without the thread (not asked for, could not start, or gone), closed here.
        if let (Some(socket), Some(Some(tx))) = (self.0.take(), CLOSER.get()) {
            let _ = tx.send(socket);
        }
    }
}

pub(crate) fn send_all(socket: &Socket, bytes: &[u8]) -> io::Result<()> {
    loop {
        match socket.send(bytes, 0) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "sent {n} of {} bytes",
                    bytes.len()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One datagram (it may hold several messages), however large; its length.
pub(crate) fn recv_datagram(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        // MSG_PEEK|MSG_TRUNC tells the datagram's full length without consuming it, so
        // the buffer can grow first instead of the datagram being cut.
        let peeked = socket.recv(&mut &mut buf[..], libc::MSG_PEEK | libc::MSG_TRUNC);
        match peeked {
            Ok(n) if n > buf.len() => buf.resize(n, 0),
            Ok(_) => match socket.recv(&mut &mut buf[..], 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the kernel within {RECV_TIMEOUT:?}"),
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Send a dump request (`request`, encoded with sequence number `seq`) and hand every
/// message of its answer to `each`, until NLMSG_DONE; whether the kernel flagged the dump
/// interrupted (a change raced with it). Errors in the answer name `what`.
pub(crate) fn dump_raw(
    socket: &Socket,
    buf: &mut Vec<u8>,
    what: &str,
    seq: u32,
    request: &[u8],
    mut each: impl FnMut(&Msg<'_>) -> Result<(), KernelError>,
) -> Result<bool, KernelError> {
    send_all(socket, request).map_err(io_error(what))?;
    let mut interrupted = false;
    loop {
        let n = recv_datagram(socket, buf).map_err(io_error(what))?;
        for m in messages(&buf[..n]).map_err(parse_error(what))? {
            if m.seq != seq {
                continue; // a late answer to something earlier: not part of this dump
            }
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match m.kind {
                NLMSG_DONE => {
                    // A dump that failed midway says so in NLMSG_DONE's errno.
                    let code = m.payload.get(..4).map_or(0, read_i32);
                    if code < 0 {
                        return Err(KernelError::Netlink {
                            request: what.to_string(),
                            reason: reason(code, extack_after(m.payload, 4)),
                        });
                    }
                    return Ok(interrupted);
                }
                NLMSG_ERROR => {
                    let (code, text) = ack_error(m.flags, m.payload);
                    if code != 0 {
                        return Err(KernelError::Netlink {
                            request: what.to_string(),
                            reason: reason(code, text),
                        });
                    }
                }
                _ => each(&m)?,
            }
        }
    }
}

/// Send one request that the kernel answers with messages of its own (encoded with
/// sequence number `seq` and NLM_F_ACK), hand each to `each`, and return at its ack; a
/// negative ack is an error naming `what`.
pub(crate) fn request_answered(
    socket: &Socket,
    buf: &mut Vec<u8>,
    what: &str,
    seq: u32,
    request: &[u8],
    mut each: impl FnMut(&Msg<'_>),
) -> Result<(), KernelError> {
    send_all(socket, request).map_err(io_error(what))?;
    loop {
        let n = recv_datagram(socket, buf).map_err(io_error(what))?;
        for m in messages(&buf[..n]).map_err(parse_error(what))? {
            if m.seq != seq {
                continue;
            }
            if m.kind != NLMSG_ERROR {
                each(&m);
                continue;
            }
            let (code, text) = ack_error(m.flags, m.payload);
            if code != 0 {
                return Err(KernelError::Netlink {
                    request: what.to_string(),
                    reason: reason(code, text),
                });
            }
            return Ok(());
        }
    }
}

/// Send one request (encoded with sequence number `seq` and NLM_F_ACK) and wait for its
/// ack; a negative ack is an error naming `what`.
pub(crate) fn request_acked(
    socket: &Socket,
    buf: &mut Vec<u8>,
    what: &str,
    seq: u32,
    request: &[u8],
) -> Result<(), KernelError> {
    request_answered(socket, buf, what, seq, request, |_| {})
}

/// Append one request to `out`, at the 4-byte alignment netlink requires.
pub(crate) fn encode<T: NetlinkSerializable>(msg: T, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    // Sets the length and type in the header, so serialize can't run out of room.
    m.finalize();
    let start = (out.len() + 3) & !3;
    out.resize(start + m.buffer_len(), 0);
    m.serialize(&mut out[start..]);
}

/// One netlink message of a datagram.
#[derive(Debug)]
pub(crate) struct Msg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of a datagram (each checked to lie within it).
pub(crate) fn messages(mut data: &[u8]) -> Result<Vec<Msg<'_>>, DecodeError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let buf = NetlinkBuffer::new_checked(data)?;
        let len = buf.length() as usize;
        out.push(Msg {
            kind: buf.message_type(),
            flags: buf.flags(),
            seq: buf.sequence_number(),
            payload: buf.payload(),
        });
        // The last message may lack its padding.
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(out)
}

fn read_i32(b: &[u8]) -> i32 {
    b.try_into().map_or(0, i32::from_ne_bytes)
}

/// The (negative) errno of an NLMSG_ERROR (0: a plain ack) and the kernel's explanation.
fn ack_error(flags: u16, payload: &[u8]) -> (i32, Option<String>) {
    let code = payload.get(..4).map_or(0, read_i32);
    if code == 0 || flags & NLM_F_ACK_TLVS == 0 {
        return (code, None);
    }
    // After the errno comes our request's header, and its payload unless capped; then
    // the extended-ack attributes.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        payload
            .get(4..8)
            .map_or(NLMSG_HDRLEN, |b| read_i32(b) as u32 as usize)
    };
    (code, extack_after(payload, 4 + ((echoed + 3) & !3)))
}

fn extack_after(payload: &[u8], offset: usize) -> Option<String> {
    for nla in NlasIterator::new(payload.get(offset..).unwrap_or_default()) {
        let Ok(nla) = nla else { break };
        if nla.kind() == NLMSGERR_ATTR_MSG {
            return parse_string(nla.value()).ok().filter(|s| !s.is_empty());
        }
    }
    None
}

/// The errno text, plus the kernel's own words when it gave some.
fn reason(code: i32, text: Option<String>) -> String {
    let errno = io::Error::from_raw_os_error(code.saturating_abs());
    match text {
        Some(t) => format!("{errno}: {t}"),
        None => errno.to_string(),
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let secs = libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX);
    setsockopt(socket, ReceiveTimeout, &TimeVal::new(secs, 0)).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use symroute_core::model::{Priority, TableId};
    use symroute_core::plan::{RuleAction, RT_PROTO};

    /// A dropped NfSocket is closed, by the closer thread rather than by whoever drops it
    /// (there, the close could wait out the kernel's freeing of a deleted table).
    #[test]
    fn an_nfnetlink_socket_is_closed_on_the_closer_thread() {
        use std::os::fd::AsRawFd;
        // From here on for the whole test binary: it changes only when sockets close.
        close_nfnetlink_in_background();
        let socket = NfSocket::open().expect("an nfnetlink socket");
        let link = format!("/proc/self/fd/{}", socket.as_raw_fd());
        let inode = std::fs::read_link(&link).expect("its fd");
        assert!(inode.to_string_lossy().starts_with("socket:"), "{inode:?}");
        drop(socket);
        let closers = || {
            std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "nfnl-close")
                })
                .count()
        };
        // The thread names itself once it runs.
        let t0 = std::time::Instant::now();
        while closers() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "no closer thread");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(closers(), 1);
        // Closed soon after (the fd number may have been taken by another test since:
        // what matters is that it no longer is this socket).
        while std::fs::read_link(&link).ok().as_ref() == Some(&inode) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never closed");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Many more: still the one thread.
        for _ in 0..20 {
            drop(NfSocket::open().expect("an nfnetlink socket"));
        }
        assert_eq!(closers(), 1);
    }

    fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize((b.len() + 3) & !3, 0);
        b
    }

    #[test]
    fn requests_are_framed_and_split_back() {
        let rule = RuleSpec {
            priority: Priority::from_kernel(3001),
            family: Family::Inet4,
            from: None,
            iif_lo: false,
            fwmark: Some((0x0100_0000, 0xff00_0000)),
            action: RuleAction::Lookup(TableId::from_kernel(42000)),
            suppress_prefixlength: None,
        };
        let mut bytes = Vec::new();
        let req = Request::AddRule(rule.clone());
        assert_eq!(
            req.to_string(),
            format!("ip -4 rule add pref 3001 fwmark 0x1000000/0xff000000 lookup 42000 protocol {RT_PROTO}")
        );
        encode(
            RouteNetlinkMessage::NewRule(convert::rule_message(&rule)),
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            &mut bytes,
        );
        encode(
            RouteNetlinkMessage::DelRule(convert::rule_message(&rule)),
            NLM_F_REQUEST | NLM_F_ACK,
            8,
            &mut bytes,
        );
        let msgs = messages(&bytes).expect("frames");
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].kind, msgs[0].seq), (RTM_NEWRULE, 7));
        assert_eq!((msgs[1].kind, msgs[1].seq), (RTM_NEWRULE + 1, 8));
        let back = convert::parse_rule(msgs[1].payload).expect("parses");
        assert_eq!(convert::rule_spec(&back), Some(rule));
        assert!(messages(&bytes[..20]).is_err());
    }

    #[test]
    fn acks_carry_errno_and_kernel_text() {
        // A capped error ack with an extended-ack message, as the kernel sends it.
        let mut payload = (-17i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&nlmsg(RTM_NEWROUTE, 0, 3, &[])[..NLMSG_HDRLEN]);
        let text = b"Nexthop has invalid gateway\0";
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let datagram = nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 3, &payload);
        let msgs = messages(&datagram).unwrap();
        let (code, text) = ack_error(msgs[0].flags, msgs[0].payload);
        assert_eq!(code, -17);
        assert_eq!(
            reason(code, text),
            format!(
                "{}: Nexthop has invalid gateway",
                io::Error::from_raw_os_error(17)
            )
        );
        let ok = nlmsg(NLMSG_ERROR, 0, 4, &[0; 20]);
        let msgs = messages(&ok).unwrap();
        assert_eq!(ack_error(msgs[0].flags, msgs[0].payload), (0, None));
        // A truncated error message must not panic.
        assert_eq!(ack_error(NLM_F_ACK_TLVS, &[0xef, 0xff]).0, 0);
        assert_eq!(
            ack_error(NLM_F_ACK_TLVS, &(-1i32).to_ne_bytes()),
            (-1, None)
        );
    }
}
