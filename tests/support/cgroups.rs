//! Cgroups of a test's own, in the machine's real cgroup2 hierarchy: a unique parent
//! (`symroute-test-<pid>-<n>`) with the paths a test asks for below it, removed again on
//! drop (deepest first; a cgroup still holding a process is waited for briefly, then
//! left, which the message says).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use symroute::kernel::cgroup::{self, Hierarchy};
use symroute::model::CgroupPath;

static N: AtomicU32 = AtomicU32::new(0);

pub struct TestCgroups {
    pub hierarchy: Hierarchy,
    /// The parent, relative to the hierarchy's root.
    pub parent: String,
    made: Vec<PathBuf>,
}

impl TestCgroups {
    /// A fresh parent in the cgroup2 hierarchy this process sees.
    pub fn new() -> TestCgroups {
        let hierarchy = cgroup::hierarchy().expect("a cgroup2 hierarchy nft can name");
        let parent = format!(
            "symroute-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = TestCgroups {
            hierarchy,
            parent,
            made: Vec::new(),
        };
        t.make("");
        t
    }

    /// `parent/rel` (`""`: the parent itself), relative to the root.
    pub fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.parent.clone()
        } else {
            format!("{}/{rel}", self.parent)
        }
    }

    /// Makes `parent/rel` (and what is missing above it); returns its path.
    pub fn make(&mut self, rel: &str) -> String {
        let path = self.path(rel);
        let mut dir = self.hierarchy.mount.clone();
        for part in path.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.made.push(dir.clone());
            }
        }
        path
    }

    /// Removes `parent/rel` (it must hold no process).
    pub fn remove(&mut self, rel: &str) {
        let dir = self.hierarchy.mount.join(self.path(rel));
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        self.made.retain(|d| !d.starts_with(&dir));
    }

    /// The cgroup's id (its directory's inode number).
    pub fn id(&self, rel: &str) -> u64 {
        self.hierarchy
            .id(&CgroupPath::new(&self.path(rel)).expect("test cgroup path"))
            .expect("the cgroup exists")
    }

    /// `cgroup.procs` of `parent/rel`, for moving a process there.
    pub fn procs(&self, rel: &str) -> PathBuf {
        self.hierarchy
            .mount
            .join(self.path(rel))
            .join("cgroup.procs")
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        // Deepest first. A process that just exited may take a moment to leave.
        self.made
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &self.made {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
            if d.exists() {
                eprintln!("test cgroup {} could not be removed", d.display());
            }
        }
    }
}
