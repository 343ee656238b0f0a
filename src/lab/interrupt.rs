//! Ctrl-C during a lab: instead of dying on the spot (and leaving namespaces, keepalived and
//! conntrackd behind), the lab notices at its next wait, returns an error, and its guards
//! clean up as on any failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// From now on SIGINT, SIGTERM and SIGHUP only set the flag [`interrupted`] reads.
pub fn stop_on_signals() -> anyhow::Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    Ok(())
}

/// Whether a signal asked the lab to stop.
pub fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// An error once a signal asked the lab to stop.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        anyhow::bail!("interrupted: cleaning up");
    }
    Ok(())
}
