//! Signals become events: SIGHUP → `Reload`, SIGTERM/SIGINT → `Stop`. The handlers are
//! installed first thing (so a signal during the first apply is queued, not fatal); a
//! thread turns them into events. A signal never interrupts a reconcile: the actor sees
//! it once the current one has finished, so the kernel is never left half-changed.

use std::io;
use std::sync::mpsc::Sender;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::event::Event;

pub struct SignalWatch(Signals);

impl SignalWatch {
    pub fn install() -> io::Result<Self> {
        Signals::new([SIGHUP, SIGTERM, SIGINT]).map(SignalWatch)
    }

    pub fn spawn(self, tx: Sender<Event>) -> io::Result<()> {
        let mut signals = self.0;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let ev = match sig {
                        SIGHUP => Event::Reload,
                        SIGINT => Event::Stop("SIGINT"),
                        _ => Event::Stop("SIGTERM"),
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            })
            .map(drop)
    }
}
