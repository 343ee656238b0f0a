//! What wakes the daemon's actor. Every thread that watches something (the kernel
//! monitor, the signal thread, the health probes, the control socket) only sends `Event`s; the
//! actor alone decides, and alone touches the kernel.

use std::fmt;
use std::time::Instant;

/// A message to the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Something the plan depends on may have changed in the kernel.
    Kernel(KernelEvent),
    /// SIGHUP: read the config file again.
    Reload,
    /// SIGTERM or SIGINT (the signal's name): exit.
    Stop(&'static str),
    /// A watcher thread cannot go on; the daemon exits with this error rather than run
    /// blind.
    WatcherFailed(String),
    /// One probe's result: `target` indexes the gateway's `check.targets`.
    /// `rtt` is the round trip of a good probe (None when lost).
    Health {
        gateway: String,
        target: usize,
        ok: bool,
        rtt: Option<std::time::Duration>,
    },
    /// A request from the control socket (`symroute status`, `apply`, `confirm`).
    Control(super::protocol::Call),
}

/// One batch of kernel notifications, read together by the monitor thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEvent {
    /// When the monitor read them (the debounce's maximum delay counts from here, not
    /// from when the actor got round to them).
    pub at: Instant,
    pub sources: Sources,
    /// A socket overflowed (ENOBUFS): notifications were lost, so anything may have
    /// changed. Observing from fresh dumps (which every reconcile does) is the resync.
    pub overrun: bool,
    /// The batch's last nftables notification ended a transaction that touched table
    /// inet symroute (the kernel sends NFT_MSG_NEWGEN after every other notification of
    /// a commit): that command's changes to our table are all in, so there is nothing
    /// of it left to wait for. Other programs' commits never set it: a stream of them
    /// (fail2ban, docker's iptables-nft, an nftset of dnsmasq) keeps the quiet period
    /// and the maximum delay, and so a bounded reconcile rate.
    pub nft_committed: bool,
}

impl KernelEvent {
    /// The daemon's own marker after an apply it made (no source): a verify pass a
    /// quiet period later takes in the notifications of its own changes.
    pub fn own_echo(at: Instant) -> KernelEvent {
        KernelEvent {
            at,
            sources: Sources::default(),
            overrun: false,
            nft_committed: false,
        }
    }

    pub fn is_own_echo(&self) -> bool {
        self.sources.is_empty() && !self.overrun
    }
}

/// Which kinds of kernel object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Source {
    Link = 1,
    Address = 2,
    Route = 4,
    Rule = 8,
    /// Per-interface IPv4 settings (rp_filter).
    Netconf = 16,
    Nftables = 32,
    /// A gateway's health checks changed their verdict.
    Health = 64,
    /// A cgroup the plan may match appeared, went, or gained or lost its processes.
    Cgroup = 128,
}

impl Source {
    const ALL: [Source; 8] = [
        Source::Link,
        Source::Address,
        Source::Route,
        Source::Rule,
        Source::Netconf,
        Source::Nftables,
        Source::Health,
        Source::Cgroup,
    ];

    fn name(self) -> &'static str {
        match self {
            Source::Link => "link",
            Source::Address => "address",
            Source::Route => "route",
            Source::Rule => "rule",
            Source::Netconf => "rp_filter",
            Source::Nftables => "nftables",
            Source::Health => "health check",
            Source::Cgroup => "cgroup",
        }
    }
}

/// A small set of `Source`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources(u8);

impl Sources {
    pub fn insert(&mut self, s: Source) {
        self.0 |= s as u8;
    }

    pub fn union(self, other: Sources) -> Sources {
        Sources(self.0 | other.0)
    }

    pub fn contains(self, s: Source) -> bool {
        self.0 & s as u8 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl From<Source> for Sources {
    fn from(s: Source) -> Self {
        Sources(s as u8)
    }
}

impl fmt::Display for Sources {
    /// `rule, route` (or `nothing`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Source::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Source::name)
            .collect();
        if names.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_print_in_a_fixed_order() {
        let mut s = Sources::default();
        assert_eq!(s.to_string(), "nothing");
        s.insert(Source::Nftables);
        s.insert(Source::Link);
        let s = s.union(Source::Rule.into());
        assert!(s.contains(Source::Rule) && !s.contains(Source::Route));
        assert_eq!(s.to_string(), "link, rule, nftables");
    }
}
