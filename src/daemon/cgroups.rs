//! Watching the cgroups the plan depends on: those `match.cgroup` names and `symroute
//! exec`'s, per gateway. nft can only load a rule for a cgroup that exists, and loads its
//! id, so the table must follow them: a service starting (systemd makes its cgroup),
//! stopping (and its cgroup removed), starting again (a new cgroup, a new id), and an
//! exec cgroup gaining or losing its processes (the table masquerades the host's own
//! connections only while some exist).
//!
//! One thread: inotify on the deepest existing ancestor of each cgroup (creation and
//! removal below it) and on exec cgroups' `cgroup.events` (populated), a fresh look at
//! every cgroup after each batch of events, and at least every [`RESCAN`] in case an event
//! was missed. When what it sees differs from what it saw, it sends one
//! `Event::Kernel` (source `cgroup`); the actor's reconcile observes for itself, as for
//! any other change.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::event::{Event, KernelEvent, Source};
use crate::kernel::cgroup::{self, Hierarchy};
use crate::model::{CgroupPath, Model};

/// The longest a change can go unseen if inotify missed it (it should not).
const RESCAN: Duration = Duration::from_millis(500);

/// Stops the watch thread when dropped.
pub struct Watch(Arc<AtomicBool>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one look at the cgroups saw: each one's id (absent: `None`), and for exec's
/// whether processes are in it.
type Seen = BTreeMap<CgroupPath, (Option<u64>, bool)>;

/// The inotify watches in place, by what they watch, with the inode each was added on:
/// on cgroupfs a removed directory reports no IN_IGNORED while the watch pins it, so a
/// path made again is told apart by its new inode.
type Watches = BTreeMap<PathBuf, (WatchDescriptor, u64)>;

struct Watcher {
    hierarchy: Hierarchy,
    /// `match.cgroup` paths: their existence and id matter.
    ids: BTreeSet<CgroupPath>,
    /// Exec cgroups: their processes matter too.
    exec: BTreeSet<CgroupPath>,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
}

/// Starts watching the cgroups `model` may match; `None` when there is no cgroup2
/// hierarchy to watch (every cgroup match then waits, as the plan says).
pub fn spawn(model: &Model, tx: &Sender<Event>) -> io::Result<Option<Watch>> {
    let Some(hierarchy) = cgroup::hierarchy() else {
        return Ok(None);
    };
    let (ids, exec) = cgroup::targets(model);
    let stop = Arc::new(AtomicBool::new(false));
    let w = Watcher {
        hierarchy,
        ids,
        exec: exec.into_values().collect(),
        tx: tx.clone(),
        stop: stop.clone(),
    };
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // The first look before the thread starts (and before the daemon's first apply
    // observes): any change after it is an event.
    let seen = w.look();
    std::thread::Builder::new()
        .name("cgroups".into())
        .spawn(move || w.run(inotify, seen))?;
    Ok(Some(Watch(stop)))
}

impl Watcher {
    fn look(&self) -> Seen {
        self.ids
            .iter()
            .map(|p| (p.clone(), (self.hierarchy.id(p), false)))
            .chain(self.exec.iter().map(|p| {
                let id = self.hierarchy.id(p);
                (p.clone(), (id, id.is_some() && self.hierarchy.populated(p)))
            }))
            .collect()
    }

    /// Watches for what may change next: below the deepest existing ancestor of each
    /// cgroup (its parent, once it exists: its removal), and each existing exec cgroup's
    /// `cgroup.events`. Only what differs from `watches` is changed: removing a watch
    /// queues an IN_IGNORED event, so re-arming everything after every event would wake
    /// the thread again at once, forever.
    fn arm(&self, inotify: &Inotify, watches: &mut Watches) {
        let mut want: BTreeMap<PathBuf, AddWatchFlags> = BTreeMap::new();
        let below = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        for p in self.ids.iter().chain(&self.exec) {
            let mut dir = self.hierarchy.dir(p);
            while dir.pop() && dir.starts_with(&self.hierarchy.mount) {
                if dir.is_dir() {
                    want.insert(dir, below);
                    break;
                }
            }
        }
        // A file that does not exist (yet) has no inode: neither kept nor added below.
        for p in &self.exec {
            want.insert(
                self.hierarchy.dir(p).join("cgroup.events"),
                AddWatchFlags::IN_MODIFY,
            );
        }
        let inode = |path: &PathBuf| std::fs::metadata(path).map(|m| m.ino()).ok();
        watches.retain(|path, (wd, ino)| {
            let keep = want.contains_key(path) && inode(path) == Some(*ino);
            if !keep {
                let _ = inotify.rm_watch(*wd);
            }
            keep
        });
        for (path, flags) in want {
            if let std::collections::btree_map::Entry::Vacant(slot) = watches.entry(path) {
                // The inode first: a path replaced between the two is seen at the next look.
                if let (Some(ino), Ok(wd)) =
                    (inode(slot.key()), inotify.add_watch(slot.key(), flags))
                {
                    slot.insert((wd, ino));
                }
            }
        }
    }

    /// Reads every queued event; forgets the watches the kernel removed itself (their
    /// directory or file went), so the next `arm` adds them again if still wanted.
    fn drain(inotify: &Inotify, watches: &mut Watches) {
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                    watches.retain(|_, (wd, _)| *wd != e.wd);
                }
            }
        }
    }

    fn run(self, inotify: Inotify, mut seen: Seen) {
        let mut watches = Watches::new();
        self.arm(&inotify, &mut watches);
        let mut rescan_at = Instant::now() + RESCAN;
        while !self.stop.load(Ordering::Relaxed) {
            let wait = rescan_at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, super::timeout::poll_timeout(Some(wait))).unwrap_or(0) > 0;
            if ready {
                // What changed is read from the cgroups themselves. A directory on the
                // way to a cgroup may have appeared: watch below it.
                Self::drain(&inotify, &mut watches);
                self.arm(&inotify, &mut watches);
            } else if Instant::now() < rescan_at {
                continue;
            }
            rescan_at = Instant::now() + RESCAN;
            let now = self.look();
            if now == seen {
                continue;
            }
            if !ready {
                self.arm(&inotify, &mut watches);
            }
            seen = now;
            let event = Event::Kernel(KernelEvent {
                at: Instant::now(),
                sources: Source::Cgroup.into(),
                overrun: false,
                nft_committed: false,
            });
            if self.tx.send(event).is_err() {
                return;
            }
        }
    }
}
