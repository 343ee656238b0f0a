//! Logging for the daemon: `tracing` to stderr, one line per event, no colours, and no
//! timestamps when stderr goes to the journal (systemd sets $JOURNAL_STREAM; journald
//! stamps every line itself). The filter is RUST_LOG-style without regexes:
//! `info`, `debug`, `symroute=debug,warn`.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

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
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = if journal {
        tracing_subscriber::registry()
            .with(layer.without_time().with_filter(filter))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_parse_like_rust_log() {
        for ok in ["info", "debug", "symroute=debug,warn", "trace"] {
            assert!(super::parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "symroute=loud", "inf,symroute=debug"] {
            assert!(super::parse_filter(bad).is_err(), "{bad}");
        }
    }
}
