//! Deadlines that outlive a process: `BootTime` is a reading of CLOCK_BOOTTIME, which is
//! monotonic (a wall-clock jump by NTP or an admin moves nothing), keeps counting across
//! suspend, and is the same clock in every process of the machine, so a deadline written
//! to /run/symroute by one process means the same instant to another. It restarts at
//! boot, and so does /run.

use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use serde::{Deserialize, Serialize};

/// Nanoseconds of CLOCK_BOOTTIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootTime(u64);

impl BootTime {
    pub fn now() -> BootTime {
        // CLOCK_BOOTTIME exists on every kernel symroute runs on (2.6.39+); reading a
        // clock the kernel has cannot fail.
        let t = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
        BootTime(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
    }

    /// As a number (for a command line); `from_nanos` reads it back.
    pub fn nanos(self) -> u64 {
        self.0
    }

    pub fn from_nanos(n: u64) -> BootTime {
        BootTime(n)
    }

    pub fn after(self, d: Duration) -> BootTime {
        BootTime(
            self.0
                .saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64),
        )
    }

    /// Time left until `self` (zero once it has passed).
    pub fn remaining(self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(BootTime::now().0))
    }

    pub fn passed(self) -> bool {
        BootTime::now() >= self
    }

    /// The same moment on this process's `Instant` clock (CLOCK_MONOTONIC), for waits.
    pub fn instant(self) -> Instant {
        Instant::now() + self.remaining()
    }

    /// The same moment as wall-clock time (for people; may be off after a clock jump).
    pub fn wall(self) -> std::time::SystemTime {
        std::time::SystemTime::now() + self.remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_pass_on_the_boot_clock() {
        let t = BootTime::now().after(Duration::from_millis(30));
        assert!(!t.passed());
        assert!(t.remaining() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.passed());
        assert_eq!(t.remaining(), Duration::ZERO);
    }
}
