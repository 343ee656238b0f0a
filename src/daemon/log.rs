//! Logging for the daemon: `tracing` to stderr, one line per event, no colours. The filter
//! is RUST_LOG-style without regexes: `info`, `debug`, `symroute=debug,warn`.
//!
//! When stderr is the journal (systemd names its stream in `$JOURNAL_STREAM` as
//! `DEVICE:INODE`, and fd 2 is that very stream: a redirected stderr inherits the variable
//! but not the stream), every line starts with the syslog priority journald reads
//! (sd-daemon(3)) and carries no timestamp or level word, since the journal records both:
//!
//! | prefix | what | how it is logged |
//! |---|---|---|
//! | `<3>` | errors: an apply failed, a watcher died | `error!` |
//! | `<4>` | a gateway down, a failover, a reload refused, conflicts | `warn!` |
//! | `<5>` | changes: applies, a gateway's state | [`notice!`] (info, target `symroute::notice`) |
//! | `<6>` | routine: startup, reconciles without changes, hooks | `info!` |
//! | `<7>` | debug and trace | `debug!`, `trace!` |
//!
//! So `journalctl -u symroute -p warning` shows the failovers, `-p notice` what changed.
//! Elsewhere the output is as it always was: a timestamp, the level, the message.

use std::fmt::Write as _;
use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{self as tfmt, FmtContext};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The target of notice-level events: tracing has no level between warn and info, so a
/// notice is an info event with this target (filters see it as `symroute=…`).
pub const NOTICE_TARGET: &str = "symroute::notice";

/// `info!` at syslog's notice priority: something changed (an apply, a gateway's state).
macro_rules! notice {
    ($($arg:tt)*) => {
        ::tracing::info!(target: $crate::daemon::log::NOTICE_TARGET, $($arg)*)
    };
}
pub(crate) use notice;

/// Parse a filter (`--log-level`, $SYMROUTE_LOG), for clap's value parser. Stricter than
/// `Targets` itself, which would take a misspelt level for a target name and then log
/// nothing at all.
pub fn parse_filter(s: &str) -> Result<Targets, String> {
    let expected = "expected a level (off, error, warn, info, debug, trace) or TARGET=LEVEL pairs, e.g. symroute=debug,info";
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l);
        if LevelFilter::from_str(level).is_err() {
            return Err(format!("\"{part}\": {expected}"));
        }
    }
    Targets::from_str(s).map_err(|e| format!("{e}; {expected}"))
}

/// Install the global subscriber (once; later calls are ignored).
pub fn init(filter: Targets) {
    let layer = tfmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = if stderr_is_journal() {
        tracing_subscriber::registry()
            .with(
                layer
                    .event_format(Journal(
                        format::format()
                            .without_time()
                            .with_level(false)
                            .with_target(false)
                            .with_ansi(false),
                    ))
                    .with_filter(filter),
            )
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init()
    };
}

/// Whether fd 2 is the stream `$JOURNAL_STREAM` names.
pub fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(libc::STDERR_FILENO) else {
        return false;
    };
    named_stream(&named.to_string_lossy()) == Some((st.st_dev, st.st_ino))
}

/// `DEVICE:INODE` (decimal, as systemd writes it).
fn named_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority of an event: see the module's table.
pub fn priority(level: &Level, target: &str) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO if target == NOTICE_TARGET => 5,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Formats an event with the inner format, then starts each of its lines with `<N>`
/// (a message with a newline in it would otherwise leave its later lines at journald's
/// default priority).
struct Journal<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        writer.write_str(&prefixed(
            priority(meta.level(), meta.target()),
            text.trim_start(),
        ))
    }
}

/// `text` with every line started by `<prio>` and ended by a newline.
fn prefixed(prio: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.trim_end_matches('\n').split('\n') {
        let _ = writeln!(out, "<{prio}>{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_like_rust_log() {
        for ok in ["info", "debug", "symroute=debug,warn", "trace"] {
            assert!(super::parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "symroute=loud", "inf,symroute=debug"] {
            assert!(super::parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR, "symroute::daemon"), 3);
        assert_eq!(priority(&Level::WARN, "symroute::daemon"), 4);
        assert_eq!(priority(&Level::INFO, NOTICE_TARGET), 5);
        assert_eq!(priority(&Level::INFO, "symroute::daemon"), 6);
        assert_eq!(priority(&Level::DEBUG, "symroute::daemon"), 7);
        assert_eq!(priority(&Level::TRACE, NOTICE_TARGET), 7);
    }

    #[test]
    fn every_line_gets_the_prefix() {
        assert_eq!(prefixed(4, "one\n"), "<4>one\n");
        assert_eq!(prefixed(3, "one\ntwo\n"), "<3>one\n<3>two\n");
        assert_eq!(prefixed(6, "no newline"), "<6>no newline\n");
    }

    #[test]
    fn the_stream_is_device_colon_inode() {
        assert_eq!(named_stream("8:1234"), Some((8, 1234)));
        assert_eq!(named_stream("8:"), None);
        assert_eq!(named_stream("x:1"), None);
        assert_eq!(named_stream("81234"), None);
    }
}
