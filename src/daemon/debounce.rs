//! When to reconcile: pure timing policy over `Instant`s, tested without a kernel.
//!
//! - `Debounce`: kernel changes come in bursts (one `ip link set down` is a dozen
//!   notifications; one `nft -f` is one per object). Reconcile once the burst has been
//!   quiet for `quiet`, but never later than `max_delay` after its first event, so a
//!   steady trickle cannot postpone the repair forever. A burst of nothing but whole
//!   nftables transactions on our table is due at once: the kernel ends each commit's
//!   notifications with a new generation, so nothing of that command is still to come
//!   (a deleted table is put back without waiting out the quiet period). Not when the
//!   burst holds the daemon's own echo (its verify pass keeps the quiet period), nor
//!   for other programs' commits (a stream of them must not make a pass per commit).
//! - `Pace`: a token bucket on reconciles that changed something. If another program
//!   keeps undoing symroute's objects, symroute repairs them at a bounded rate instead of
//!   spinning.
//! - `Backoff`: after a failed apply (not a conflict: those wait for the next change),
//!   retry after 1 s, 2 s, 4 s… up to 30 s.

use std::time::{Duration, Instant};

use super::event::{KernelEvent, Source, Sources};

/// The quiet period: long enough to take in one command's burst of notifications.
pub const QUIET: Duration = Duration::from_millis(15);
/// The longest a change waits for its reconcile to start.
pub const MAX_DELAY: Duration = Duration::from_millis(100);

/// Changes noted since the last reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub first: Instant,
    pub last: Instant,
    pub sources: Sources,
    pub overrun: bool,
    /// Batches of notifications folded in.
    pub batches: u32,
    /// The latest batch ended a transaction on our table (`KernelEvent::nft_committed`).
    pub nft_committed: bool,
    /// The daemon's own echo marker is among them (`KernelEvent::own_echo`).
    pub echo: bool,
}

impl Pending {
    /// Nothing but nftables notifications, the last of them the end of a transaction on
    /// our table, none lost and no echo of the daemon's own apply among them: nothing of
    /// that command is still to come.
    pub fn complete(&self) -> bool {
        self.nft_committed
            && !self.overrun
            && !self.echo
            && self.sources == Sources::from(Source::Nftables)
    }
}

#[derive(Debug)]
pub struct Debounce {
    quiet: Duration,
    max_delay: Duration,
    pending: Option<Pending>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_delay: Duration) -> Self {
        Self {
            quiet,
            max_delay,
            pending: None,
        }
    }

    pub fn note(&mut self, e: &KernelEvent) {
        match &mut self.pending {
            Some(p) => {
                p.first = p.first.min(e.at);
                p.last = p.last.max(e.at);
                p.sources = p.sources.union(e.sources);
                p.overrun |= e.overrun;
                p.batches += 1;
                p.echo |= e.is_own_echo();
                p.nft_committed = e.nft_committed;
            }
            None => {
                self.pending = Some(Pending {
                    first: e.at,
                    last: e.at,
                    sources: e.sources,
                    overrun: e.overrun,
                    batches: 1,
                    nft_committed: e.nft_committed,
                    echo: e.is_own_echo(),
                })
            }
        }
    }

    /// When the pending changes are due (`None`: nothing pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|p| match p.complete() {
            true => p.last,
            false => (p.last + self.quiet).min(p.first + self.max_delay),
        })
    }

    /// The pending changes, if they are due at `now`; they are then cleared.
    pub fn take_due(&mut self, now: Instant) -> Option<Pending> {
        match self.deadline() {
            Some(d) if d <= now => self.pending.take(),
            _ => None,
        }
    }

    /// The pending changes, due or not (a reconcile happening anyway covers them).
    pub fn take(&mut self) -> Option<Pending> {
        self.pending.take()
    }
}

/// A token bucket: `burst` reconciles at once, then one per `refill`.
#[derive(Debug)]
pub struct Pace {
    burst: u32,
    refill: Duration,
    tokens: u32,
    /// When the next token is added (only meaningful while `tokens < burst`).
    next: Instant,
}

impl Pace {
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            next: now + refill,
        }
    }

    fn top_up(&mut self, now: Instant) {
        while self.tokens < self.burst && self.next <= now {
            self.tokens += 1;
            self.next += self.refill;
        }
        if self.tokens == self.burst {
            self.next = now.max(self.next);
        }
    }

    /// When a reconcile may start (`now` if a token is available).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.top_up(now);
        if self.tokens > 0 {
            now
        } else {
            self.next
        }
    }

    /// Spend a token (for a reconcile that changed something).
    pub fn spend(&mut self, now: Instant) {
        self.top_up(now);
        if self.tokens == self.burst {
            self.next = now + self.refill;
        }
        self.tokens = self.tokens.saturating_sub(1);
    }
}

/// Exponential retry delay after failures.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay before the next retry; each call doubles the one after.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn succeeded(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::super::event::{Source, Sources};
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ev(at: Instant, s: Source) -> KernelEvent {
        KernelEvent {
            at,
            sources: s.into(),
            overrun: false,
            nft_committed: false,
        }
    }

    fn committed(at: Instant) -> KernelEvent {
        KernelEvent {
            nft_committed: true,
            ..ev(at, Source::Nftables)
        }
    }

    #[test]
    fn whole_nft_transactions_are_due_at_once() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(15), ms(100));
        d.note(&committed(t0));
        assert_eq!(d.deadline(), Some(t0));
        d.note(&committed(t0 + ms(2)));
        assert_eq!(d.take_due(t0 + ms(2)).map(|p| p.batches), Some(2));
        // Our own apply's echo, then its nftables transaction: the verify pass keeps the
        // quiet period.
        d.note(&KernelEvent::own_echo(t0));
        d.note(&committed(t0 + ms(1)));
        assert_eq!(d.deadline(), Some(t0 + ms(16)));
        d.take();
        // A transaction read in several batches: due once its end is in.
        d.note(&ev(t0, Source::Nftables));
        assert_eq!(d.deadline(), Some(t0 + ms(15)));
        d.note(&committed(t0 + ms(1)));
        assert_eq!(d.deadline(), Some(t0 + ms(1)));
        d.take();
        // A transaction still arriving, anything else, or lost notifications: quiet.
        for other in [
            ev(t0, Source::Nftables),
            ev(t0, Source::Rule),
            KernelEvent {
                sources: Sources::from(Source::Nftables).union(Source::Route.into()),
                ..committed(t0)
            },
            KernelEvent {
                overrun: true,
                ..committed(t0)
            },
        ] {
            d.note(&committed(t0));
            d.note(&other);
            assert_eq!(d.deadline(), Some(t0 + ms(15)), "{other:?}");
            d.take();
        }
    }

    #[test]
    fn quiet_period_after_the_last_event() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(15), ms(100));
        assert_eq!(d.deadline(), None);
        d.note(&ev(t0, Source::Rule));
        assert_eq!(d.deadline(), Some(t0 + ms(15)));
        d.note(&ev(t0 + ms(10), Source::Route));
        assert_eq!(d.deadline(), Some(t0 + ms(25)));
        assert_eq!(d.take_due(t0 + ms(24)), None);
        let p = d.take_due(t0 + ms(25)).expect("due");
        assert_eq!((p.first, p.last, p.batches), (t0, t0 + ms(10), 2));
        assert_eq!(p.sources.to_string(), "route, rule");
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_steady_trickle_waits_at_most_max_delay() {
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(15), ms(100));
        for i in 0..20 {
            d.note(&ev(t0 + ms(i * 10), Source::Link));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(100)));
        assert!(d.take_due(t0 + ms(100)).is_some());
    }

    #[test]
    fn late_delivery_keeps_the_first_time() {
        // Events queued while a reconcile ran arrive out of order of reading.
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(15), ms(100));
        d.note(&ev(t0 + ms(50), Source::Nftables));
        d.note(&KernelEvent {
            at: t0,
            sources: Source::Rule.into(),
            overrun: true,
            nft_committed: false,
        });
        let p = d.take().expect("pending");
        assert_eq!((p.first, p.last), (t0, t0 + ms(50)));
        assert!(p.overrun);
    }

    #[test]
    fn pace_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut p = Pace::new(3, ms(200), t0);
        for _ in 0..3 {
            assert_eq!(p.ready_at(t0), t0);
            p.spend(t0);
        }
        assert_eq!(p.ready_at(t0), t0 + ms(200));
        assert_eq!(p.ready_at(t0 + ms(200)), t0 + ms(200));
        p.spend(t0 + ms(200));
        assert_eq!(p.ready_at(t0 + ms(250)), t0 + ms(400));
        // Quiet for long: the bucket fills up again, no more.
        let later = t0 + ms(10_000);
        for _ in 0..3 {
            assert_eq!(p.ready_at(later), later);
            p.spend(later);
        }
        assert_eq!(p.ready_at(later), later + ms(200));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(1000), ms(30_000));
        let got: Vec<u64> = (0..7).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(got, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        b.succeeded();
        assert_eq!(b.failed(), ms(1000));
    }
}
