//! systemd's notify protocol (`Type=notify`): READY=1 after the first apply,
//! RELOADING=1 … READY=1 around a reload, STOPPING=1, one-line STATUS= summaries, and
//! WATCHDOG=1 at half the interval systemd asks for (`WatchdogSec=`). The pings come
//! from the actor's own loop, so a reconcile that hangs stops them and systemd restarts
//! the daemon. Without $NOTIFY_SOCKET every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct Systemd {
    /// Half of $WATCHDOG_USEC, when systemd set it for this process.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
}

impl Systemd {
    pub fn from_env(now: Instant) -> Self {
        let ping_every = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2);
        if let Some(p) = ping_every {
            tracing::debug!("systemd watchdog enabled: pinging every {p:?}");
        }
        Self {
            ping_every,
            next_ping: ping_every.map(|p| now + p),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    pub fn reloading(&self) {
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading config"),
        ];
        // Type=notify-reload (systemd 253+) wants the reload's start time with it.
        if let Ok(t) = NotifyState::monotonic_usec_now() {
            states.push(t);
        }
        self.send(&states);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&one_line(status)),
        ]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    /// When the watchdog must be pinged next.
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    pub fn ping_if_due(&mut self, now: Instant) {
        if let (Some(every), Some(next)) = (self.ping_every, self.next_ping) {
            if next <= now {
                self.send(&[NotifyState::Watchdog]);
                self.next_ping = Some(now + every);
            }
        }
    }
}

/// Log lines and STATUS= must be one line each.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_joins() {
        assert_eq!(super::one_line("a\n  b\n\nc"), "a; b; c");
        assert_eq!(super::one_line("plain"), "plain");
    }
}
