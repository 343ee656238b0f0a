//! Kernel change notifications: two multicast netlink sockets, separate from the request
//! socket that `kernel::apply` opens, read by one thread that turns each burst into one
//! `Event::Kernel`.
//!
//! - NETLINK_ROUTE: links, IPv4/IPv6 addresses, routes and rules, and IPv4 netconf
//!   (rp_filter). Route notifications count only where observe looks (`route_matters`):
//!   not cached clones (PMTU exceptions), nor main's and local's own routes.
//! - NETLINK_NETFILTER, group NFNLGRP_NFTABLES: every nftables commit anyone makes
//!   (ours, `nft delete table inet symroute`, firewalld…). Any of them means our table
//!   may have changed; each message's table is read only to tell commits on our table
//!   alone from the others (the debounce, and `listing::NftLedger`, which lets a repair
//!   skip listing foreign tables nobody touched).
//!
//! Both sockets get a large receive buffer (an `nft -f` of a big table is one message
//! per object); if one overflows anyway, the kernel says ENOBUFS, which becomes an
//! `overrun` event: notifications were lost, so the actor just reconciles from fresh dumps.

use std::io;
use std::os::fd::AsFd;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{protocols, Socket};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::event::{Event, KernelEvent, Source, Sources};
use crate::kernel::listing::NftLedger;
use crate::kernel::nft_rules::{
    generation_of, names_inet_table, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN,
};
use crate::plan::nft::TABLE;
use crate::plan::RT_PROTO;

/// Receive buffer of each monitor socket.
const RCVBUF: usize = 4 << 20;

// Multicast groups (linux/rtnetlink.h, linux/netfilter/nfnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_IPV6_RULE: u32 = 19;
const RTNLGRP_IPV4_NETCONF: u32 = 24;
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_NEWGEN: u16 = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN;

// Message types (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_NEWNETCONF: u16 = 80;
const RTM_DELNETCONF: u16 = 81;
/// `rtm_flags` bit of a cached clone (linux/rtnetlink.h); the flags follow 8 bytes of
/// `struct rtmsg`.
const RTM_F_CLONED: u32 = 0x200;
const NLMSG_OVERRUN: u16 = 4;

/// The subscribed sockets. Opened by the actor's thread (inside the namespace, before the
/// first apply, so no change after that apply goes unseen), then moved to `spawn`.
pub struct Monitor {
    route: Socket,
    nft: Option<Socket>,
}

fn subscribe(protocol: isize, groups: &[u32], what: &str) -> io::Result<Socket> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut s = Socket::new(protocol).map_err(context)?;
    s.bind_auto().map_err(context)?;
    set_rcvbuf(&s, RCVBUF);
    for g in groups {
        s.add_membership(*g)
            .map_err(|e| context(io::Error::new(e.kind(), format!("joining group {g}: {e}"))))?;
    }
    s.set_non_blocking(true).map_err(context)?;
    Ok(s)
}

/// SO_RCVBUFFORCE (root may exceed net.core.rmem_max), else SO_RCVBUF (capped there).
fn set_rcvbuf(s: &Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &bytes);
    }
}

impl Monitor {
    /// Subscribe in the current network namespace. Without nftables notifications (an old
    /// kernel without nf_tables) the daemon still runs, and says what it will miss.
    pub fn open() -> io::Result<Monitor> {
        let route = subscribe(
            protocols::NETLINK_ROUTE,
            &[
                RTNLGRP_LINK,
                RTNLGRP_IPV4_IFADDR,
                RTNLGRP_IPV6_IFADDR,
                RTNLGRP_IPV4_ROUTE,
                RTNLGRP_IPV6_ROUTE,
                RTNLGRP_IPV4_RULE,
                RTNLGRP_IPV6_RULE,
                RTNLGRP_IPV4_NETCONF,
            ],
            "rtnetlink monitor socket",
        )?;
        let nft = match subscribe(
            protocols::NETLINK_NETFILTER,
            &[NFNLGRP_NFTABLES],
            "nftables monitor socket",
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot watch nftables changes ({e}): a changed or deleted table inet symroute is only repaired on the next other change"
                );
                None
            }
        };
        Ok(Monitor { route, nft })
    }

    /// The receive buffer the kernel granted, for the log (it reports twice the usable
    /// size: the other half is its bookkeeping).
    pub fn rcvbuf(&self) -> usize {
        self.route.get_rx_buf_sz().unwrap_or(0) / 2
    }

    /// Read notifications forever on a thread of its own, sending one event per burst.
    /// Ends when the actor has gone, or with `Event::WatcherFailed` on a socket error.
    /// Commits are also recorded in `ledger`.
    pub fn spawn(self, tx: Sender<Event>, ledger: Arc<NftLedger>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                if let Err(e) = self.run(&tx, ledger) {
                    let _ = tx.send(Event::WatcherFailed(format!(
                        "reading kernel notifications: {e}"
                    )));
                }
            })
            .map(drop)
    }

    fn run(self, tx: &Sender<Event>, ledger: Arc<NftLedger>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut fds = vec![PollFd::new(self.route.as_fd(), PollFlags::POLLIN)];
        if let Some(nft) = &self.nft {
            fds.push(PollFd::new(nft.as_fd(), PollFlags::POLLIN));
        }
        // Across batches: a transaction's notifications may take several reads.
        let mut transactions = Transactions::new(ledger);
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let at = Instant::now();
            let mut ev = KernelEvent {
                at,
                sources: Sources::default(),
                overrun: false,
                nft_committed: false,
            };
            drain(&self.route, &mut buf, &mut ev, |read, s| {
                if let Read::Datagram(data) = read {
                    route_sources(data, s);
                }
            })?;
            if let Some(nft) = &self.nft {
                let mut ended = None;
                drain(nft, &mut buf, &mut ev, |read, s| match read {
                    Read::Datagram(data) => {
                        s.insert(Source::Nftables);
                        ended = transactions.read(data).or(ended);
                    }
                    // Notifications were lost, a transaction's end perhaps among them.
                    // Told at once: what is read after this may end a transaction whose
                    // notifications about other tables were among the lost.
                    Read::Lost => transactions.lost(),
                })?;
                ev.nft_committed = ended == Some(true);
            }
            if ev.overrun {
                tracing::debug!("a monitor socket overflowed: resyncing from fresh dumps");
            }
            if !ev.sources.is_empty() || ev.overrun {
                tracing::trace!(sources = %ev.sources, "kernel notifications");
                if tx.send(Event::Kernel(ev)).is_err() {
                    return Ok(()); // the actor has gone: the process is exiting
                }
            }
        }
    }
}

/// What one read of a monitor socket gave.
enum Read<'a> {
    Datagram(&'a [u8]),
    /// ENOBUFS: the socket overflowed, notifications were lost.
    Lost,
}

/// Read every datagram waiting on `s`, noting what they are about.
fn drain(
    s: &Socket,
    buf: &mut [u8],
    ev: &mut KernelEvent,
    mut classify: impl FnMut(Read<'_>, &mut Sources),
) -> io::Result<()> {
    loop {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(n) => classify(Read::Datagram(&buf[..n.min(buf.len())]), &mut ev.sources),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                ev.overrun = true;
                classify(Read::Lost, &mut ev.sources);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Follows nftables transactions through their notifications: whether the one a
/// NFT_MSG_NEWGEN ends (the kernel sends it after all of a commit's other notifications)
/// touched table inet symroute, and whether it touched anything else (told to `ledger`
/// with the commit's generation).
#[derive(Debug)]
pub struct Transactions {
    /// The transaction being read has touched our table so far.
    ours: bool,
    /// ... or another table.
    foreign: bool,
    ledger: Arc<NftLedger>,
}

impl Transactions {
    pub fn new(ledger: Arc<NftLedger>) -> Transactions {
        Transactions {
            ours: false,
            foreign: false,
            ledger,
        }
    }

    /// Notifications were lost: forget the transaction being read, and tell the ledger.
    pub fn lost(&mut self) {
        (self.ours, self.foreign) = (false, false);
        self.ledger.lost();
    }

    /// Reads one datagram: `Some(true)` when its last nftables notification ends a
    /// transaction that touched our table, `Some(false)` when it ends another or a
    /// transaction is still being read, `None` when it holds no nftables notification.
    pub fn read(&mut self, data: &[u8]) -> Option<bool> {
        let mut ended = None;
        each_message(data, |kind, payload| {
            if kind == NFT_NEWGEN {
                let foreign = std::mem::take(&mut self.foreign);
                self.ledger.committed(generation_of(payload), foreign);
                ended = Some(std::mem::take(&mut self.ours));
            } else if kind >> 8 == NFNL_SUBSYS_NFTABLES {
                if names_inet_table(payload, TABLE) {
                    self.ours = true;
                } else {
                    self.foreign = true;
                }
                ended = Some(false);
            }
        });
        ended
    }
}

/// Each message of a datagram (type, payload), up to the first that does not fit: a cut
/// or garbled datagram gives what it holds whole, and never a panic or an endless loop.
fn each_message(mut data: &[u8], mut f: impl FnMut(u16, &[u8])) {
    while let Ok(msg) = NetlinkBuffer::new_checked(data) {
        let len = msg.length() as usize;
        f(msg.message_type(), msg.payload());
        data = data.get((len + 3) & !3..).unwrap_or_default();
        if len == 0 {
            break;
        }
    }
}

/// Whether a route notification (its `struct rtmsg` first) can change what a reconcile
/// observes: our routes (any table), default routes (the next hops `via = "auto"`
/// follows), and routes of any other table but main and local (foreign routes in a
/// table we use are conflicts). The rest of main and local is never read: a router
/// holding a full BGP table in main would otherwise start a pass, and a dump of every
/// route, for each of its updates. Cached clones (PMTU exceptions) never count.
fn route_matters(rtmsg: &[u8]) -> bool {
    const RT_TABLE_MAIN: u8 = 254;
    const RT_TABLE_LOCAL: u8 = 255;
    let (Some(&dst_len), Some(&table), Some(&protocol), Some(flags)) =
        (rtmsg.get(1), rtmsg.get(4), rtmsg.get(5), rtmsg.get(8..12))
    else {
        return true; // unreadable: take it as a change
    };
    let flags = u32::from_ne_bytes(flags.try_into().unwrap_or_default());
    if flags & RTM_F_CLONED != 0 {
        return false;
    }
    // Tables above 255 have RT_TABLE_COMPAT here (their id is in RTA_TABLE): not main.
    protocol == RT_PROTO || dst_len == 0 || !matches!(table, RT_TABLE_MAIN | RT_TABLE_LOCAL)
}

/// The kinds of object the rtnetlink notifications of one datagram are about.
pub fn route_sources(data: &[u8], sources: &mut Sources) {
    each_message(data, |kind, payload| match kind {
        RTM_NEWLINK | RTM_DELLINK => sources.insert(Source::Link),
        RTM_NEWADDR | RTM_DELADDR => sources.insert(Source::Address),
        RTM_NEWROUTE | RTM_DELROUTE if route_matters(payload) => sources.insert(Source::Route),
        RTM_NEWRULE | RTM_DELRULE => sources.insert(Source::Rule),
        RTM_NEWNETCONF | RTM_DELNETCONF => sources.insert(Source::Netconf),
        // Not expected on a multicast socket; harmless either way.
        NLMSG_OVERRUN => {}
        _ => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(payload);
        b.resize((b.len() + 3) & !3, 0);
        b
    }

    /// A `struct rtmsg`: IPv4, `dst_len`, `table`, `protocol`, unicast, `flags`.
    fn rtmsg_of(dst_len: u8, table: u8, protocol: u8, flags: u32) -> Vec<u8> {
        let mut p = vec![2, dst_len, 0, 0, table, protocol, 0, 1];
        p.extend_from_slice(&flags.to_ne_bytes());
        p
    }

    /// One of ours (protocol 157) in a table above 255 (RT_TABLE_COMPAT, 252).
    fn rtmsg(flags: u32) -> Vec<u8> {
        rtmsg_of(24, 252, 157, flags)
    }

    #[test]
    fn route_notifications_count_only_where_a_reconcile_looks() {
        const STATIC: u8 = 4;
        const BGP: u8 = 186;
        // Main's and local's own routes: a BGP feed, a static LAN route.
        assert!(!route_matters(&rtmsg_of(24, 254, BGP, 0)));
        assert!(!route_matters(&rtmsg_of(32, 255, 2, 0)));
        assert!(!route_matters(&rtmsg_of(16, 254, STATIC, 0)));
        // A default route anywhere, ours anywhere, anything in another table.
        assert!(route_matters(&rtmsg_of(0, 254, STATIC, 0)));
        assert!(route_matters(&rtmsg_of(24, 254, 157, 0)));
        assert!(route_matters(&rtmsg_of(24, 252, STATIC, 0)));
        assert!(route_matters(&rtmsg_of(24, 52, STATIC, 0)));
        // Clones never; a cut header always.
        assert!(!route_matters(&rtmsg_of(0, 252, 157, RTM_F_CLONED)));
        assert!(route_matters(&[2, 24, 0]));
    }

    #[test]
    fn notifications_are_classified_and_clones_skipped() {
        let mut data = msg(RTM_DELRULE, &[0; 12]);
        data.extend(msg(RTM_NEWADDR, &[0; 8]));
        data.extend(msg(RTM_NEWROUTE, &rtmsg(RTM_F_CLONED)));
        // A route of main's own: nothing a reconcile reads.
        data.extend(msg(RTM_NEWROUTE, &rtmsg_of(24, 254, 4, 0)));
        let mut s = Sources::default();
        route_sources(&data, &mut s);
        assert_eq!(s.to_string(), "address, rule");
        route_sources(&msg(RTM_DELROUTE, &rtmsg(0)), &mut s);
        route_sources(&msg(RTM_NEWLINK, &[0; 16]), &mut s);
        assert_eq!(s.to_string(), "link, address, route, rule");
        // Garbage or a cut datagram must not panic or loop.
        route_sources(&[1, 2, 3], &mut s);
        route_sources(&data[..20], &mut s);
    }

    /// An nftables notification of `family` naming table `table` (attribute 1).
    fn nft_msg(kind: u16, family: u8, table: &str) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        let mut name = table.as_bytes().to_vec();
        name.push(0);
        p.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&name);
        p.resize((p.len() + 3) & !3, 0);
        msg(kind, &p)
    }

    #[test]
    fn a_transaction_on_our_table_ends_with_its_generation() {
        const NEWTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8;
        const DELSET: u16 = NFNL_SUBSYS_NFTABLES << 8 | 11;
        const INET: u8 = 1;
        const IP: u8 = 2;
        let gen = msg(NFT_NEWGEN, &[0; 4]);
        let mut t = Transactions::new(Arc::default());
        assert_eq!(t.read(&[]), None);
        // Ours, read in two datagrams.
        let mut one = nft_msg(NEWTABLE, INET, "symroute");
        one.extend(nft_msg(DELSET, INET, "symroute"));
        assert_eq!(t.read(&one), Some(false));
        assert_eq!(t.read(&gen), Some(true));
        // Another program's table, or ours by name in another family: not ours.
        for (family, table) in [(INET, "filter"), (IP, "symroute"), (INET, "symroutex")] {
            let mut other = nft_msg(NEWTABLE, family, table);
            other.extend(gen.clone());
            assert_eq!(t.read(&other), Some(false), "{family} {table}");
        }
        // The next transaction's first notification: not ended any more.
        let mut next = nft_msg(NEWTABLE, INET, "symroute");
        next.extend(gen.clone());
        next.extend(nft_msg(NEWTABLE, INET, "symroute"));
        assert_eq!(t.read(&next), Some(false));
        assert_eq!(t.read(&gen), Some(true));
        // Cut or garbage datagrams neither panic nor loop.
        t.read(&one[..20]);
        t.read(&[1, 2, 3]);
        assert!(!names_inet_table(&[1, 0, 0, 0, 0, 0, 1, 0], TABLE));
        assert!(!names_inet_table(&[1, 0, 0, 0, 200, 0, 1, 0, b's'], TABLE));
    }

    /// A NEWGEN announcing generation `id` (NFTA_GEN_ID, big endian).
    fn gen_msg(id: u32) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        msg(NFT_NEWGEN, &p)
    }

    /// What the ledger learns decides whether a kept listing serves again: commits on our
    /// table alone keep it; one that also names another table, or lost notifications,
    /// end it.
    #[test]
    fn the_ledger_learns_which_commits_touched_other_tables() {
        use crate::kernel::listing::ListingMemo;
        const NEWTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8;
        const DELTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8 | 2;
        const INET: u8 = 1;
        let ledger = Arc::new(NftLedger::default());
        let memo = ListingMemo::new(ledger.clone());
        let mut t = Transactions::new(ledger);
        let listing = serde_json::json!({"nftables": []});
        t.read(&gen_msg(5));
        memo.keep(&listing, memo.mark());
        assert!(memo.foreign_at(5).is_some());
        // Our table deleted: still good at generation 6.
        let mut ours = nft_msg(DELTABLE, INET, "symroute");
        ours.extend(gen_msg(6));
        assert_eq!(t.read(&ours), Some(true));
        assert!(memo.foreign_at(6).is_some());
        // One transaction deleting ours and adding another table: never again.
        let mut both = nft_msg(DELTABLE, INET, "symroute");
        both.extend(nft_msg(NEWTABLE, INET, "other"));
        assert_eq!(t.read(&both), Some(false));
        assert_eq!(t.read(&gen_msg(7)), Some(true));
        assert_eq!(memo.foreign_at(7), None);
        // Lost notifications in the middle of a transaction on ours.
        memo.keep(&listing, memo.mark());
        assert!(memo.foreign_at(7).is_some());
        t.read(&nft_msg(NEWTABLE, INET, "symroute"));
        t.lost();
        assert_eq!(t.read(&gen_msg(8)), Some(false));
        assert_eq!(memo.foreign_at(8), None);
    }
}
