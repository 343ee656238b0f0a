//! poll(2)'s timeout from a `Duration`, rounded up to whole milliseconds: nix's
//! conversion rounds down, so with less than a millisecond to a deadline a loop would
//! poll with 0 and spin until the deadline passes (before every health probe and every
//! cgroup rescan).

use std::time::Duration;

use nix::poll::PollTimeout;

/// At least `d` (`None`: no timeout), at most `PollTimeout::MAX`.
pub fn poll_timeout(d: Option<Duration>) -> PollTimeout {
    match d {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_of_a_millisecond_waits_a_whole_one() {
        assert_eq!(poll_timeout(Some(Duration::ZERO)), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Some(Duration::from_micros(300))),
            PollTimeout::try_from(1).unwrap()
        );
        assert_eq!(
            poll_timeout(Some(Duration::from_micros(1500))),
            PollTimeout::try_from(2).unwrap()
        );
        assert_eq!(poll_timeout(None), PollTimeout::NONE);
        assert_eq!(poll_timeout(Some(Duration::MAX)), PollTimeout::MAX);
    }
}
