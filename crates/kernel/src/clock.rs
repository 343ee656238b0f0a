//! Deadlines that outlive a process: `BootTime` is a reading of CLOCK_BOOTTIME, which is
//! monotonic (a wall-clock jump by NTP or an admin moves nothing), keeps counting across
//! suspend, and is the same clock in every process of the machine, so a deadline written
//! to /run/symroute by one process means the same instant to another. It restarts at
//! boot, and so does /run.
//!
//! Wall-clock times, for people and the files and answers they read, are written with
//! `unix` and `rfc3339`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    pub fn wall(self) -> SystemTime {
        SystemTime::now() + self.remaining()
    }
}

/// Whole seconds since the epoch (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2024-05-01T12:34:56.789Z` (fixed width: strings sort as times do). Written here: the
/// dependency tree has no date crate (tracing-subscriber's formatter is private), and a
/// UTC timestamp is this one function.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix(t);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

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
