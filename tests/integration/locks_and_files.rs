//! Locks and files (issue 12, item 6): the per-namespace lock has one holder at a time
//! even while `remove` unlinks its file; many `apply`/`remove` run at once in one
//! namespace lose nothing; the daemon retries instead of blocking while another process
//! holds the lock; /run/symroute is 0700 with 0600 files and no link planted there is
//! written through; `snapshot DIR` refuses someone else's directory and follows no link
//! in its own, and reading a snapshot follows none either.
//!
//! Needs root, `nft`, `ip` and `conntrack`.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::lab;
use support::{
    kernel_snapshot, our_rule, require_root, run_file, settled_snapshot, symroute, RemoveOnDrop,
};
use symroute::kernel::rundir;
use symroute::lab::Netns;

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");

/// A temp directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// With the example config written in it; its path.
    fn with_config(tag: &str) -> (TempDir, String) {
        let dir = TempDir::new(tag);
        let config = dir.join("symroute.toml");
        std::fs::write(&config, CONFIG).expect("write config");
        let path = config.display().to_string();
        (dir, path)
    }

    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("symroute-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Threads take the lock, mark it held with an `O_EXCL` file (which fails if another
/// holds it too), and a third of the time unlink the lock file before letting go, as
/// `remove` does. Returns how often two held it at once.
fn overlaps(rounds: u32, threads: u32, take: impl Fn(&Path) -> Box<dyn FnOnce()> + Sync) -> u32 {
    let dir = TempDir::new("lock-race");
    let lock = dir.join("ns.lock");
    let marker = dir.join("held");
    let overlaps = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..rounds {
                    let release = take(&lock);
                    let mine = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&marker)
                        .is_ok();
                    if !mine {
                        overlaps.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    if mine {
                        let _ = std::fs::remove_file(&marker);
                    }
                    if i % 3 == 0 {
                        let _ = std::fs::remove_file(&lock);
                    }
                    release();
                }
            });
        }
    });
    overlaps.into_inner()
}

#[test]
fn the_lock_has_one_holder_while_its_file_comes_and_goes() {
    const ROUNDS: u32 = 150;
    const THREADS: u32 = 8;
    // Without the inode check after flock (open, flock, and a holder that unlinks): a
    // waiter wins the old inode while a newcomer locks a new file.
    let naive = overlaps(ROUNDS, THREADS, |p| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .expect("open lock file");
        let l = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock");
        Box::new(move || drop(l))
    });
    let ours = overlaps(ROUNDS, THREADS, |p| {
        let l = rundir::lock_path(p, Duration::from_secs(30)).expect("lock");
        Box::new(move || drop(l))
    });
    eprintln!(
        "{} lockings by {THREADS} threads: two holders at once {naive} time(s) with a plain flock, {ours} with symroute's lock",
        ROUNDS * THREADS
    );
    assert_eq!(ours, 0, "symroute's lock had two holders at once");
}

/// Runs `symroute ARGS... --netns NS` for each of `jobs` at once; their results.
fn all_at_once(ns: &Netns, jobs: &[Vec<String>]) -> Vec<(String, std::process::Output)> {
    let children: Vec<_> = jobs
        .iter()
        .map(|args| {
            let child = Command::new(env!("CARGO_BIN_EXE_symroute"))
                .args(args)
                .args(["--netns", ns.name()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn symroute");
            (args.join(" "), child)
        })
        .collect();
    children
        .into_iter()
        .map(|(what, c)| (what, c.wait_with_output().expect("wait")))
        .collect()
}

#[test]
fn concurrent_applies_and_removes_in_one_namespace_lose_nothing() {
    let lab = lab();
    let fw = &lab.fw;
    let _remove = RemoveOnDrop(fw);
    let (_dir, config) = TempDir::with_config("lock-apply");
    let before = settled_snapshot(fw);
    symroute(&["apply", "-c", &config, "--netns", fw.name()]).ok();
    let applied = kernel_snapshot(fw);
    let sysctls = |s: &str| s.split("## sysctls").nth(1).unwrap_or_default().to_string();
    assert_ne!(
        sysctls(&applied),
        sysctls(&before),
        "the example changes sysctls (so a lost record of their old values would show)"
    );
    symroute(&["remove", "--netns", fw.name()]).ok();
    assert_eq!(kernel_snapshot(fw), before);

    for round in 0..3 {
        let jobs: Vec<Vec<String>> = (0..16)
            .map(|i| match i % 2 {
                0 => vec!["apply".into(), "-c".into(), config.clone()],
                _ => vec!["remove".into()],
            })
            .collect();
        let t0 = Instant::now();
        let results = all_at_once(fw, &jobs);
        let took = t0.elapsed();
        for (what, out) in &results {
            assert!(
                out.status.success(),
                "round {round}: `symroute {what}` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("round {round}: 8 applies and 8 removes at once took {took:?}");
        // Whoever came last, one more apply and one more remove end where they must.
        symroute(&["apply", "-c", &config, "--netns", fw.name()]).ok();
        assert_eq!(
            kernel_snapshot(fw),
            applied,
            "round {round}: apply after the race"
        );
        symroute(&["remove", "--netns", fw.name()]).ok();
        assert_eq!(
            kernel_snapshot(fw),
            before,
            "round {round}: remove after the race did not restore everything (a lost sysctl record?)"
        );
    }
}

#[test]
fn the_daemon_retries_while_another_process_holds_the_lock() {
    let lab = lab();
    let fw = &lab.fw;
    let d = Daemon::start(fw, CONFIG);
    // isp2's table: id 123 from its name (42000 + 123 - 1).
    let (rule, del) = our_rule(fw, 42122);
    let del: Vec<&str> = del.iter().map(String::as_str).collect();
    let sock = run_file(fw, "sock");
    assert_eq!(mode(&sock), 0o600, "{}", sock.display());
    assert_eq!(mode(Path::new(rundir::DIR)), 0o700);

    let held = rundir::lock_path(&run_file(fw, "lock"), Duration::from_secs(5)).expect("lock");
    fw.exec(&del).expect("delete a rule of ours");
    let t0 = Instant::now();
    d.wait_log("stayed locked", Duration::from_secs(5));
    // The daemon's loop goes on: it answers while it cannot apply.
    let t = Instant::now();
    let st = symroute(&["status", "--netns", fw.name()]).ok();
    let status_took = t.elapsed();
    assert!(st.stdout.contains("daemon: pid"), "{}", st.stdout);
    assert!(
        status_took < Duration::from_secs(1),
        "status took {status_took:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let rules = fw.exec(&["ip", "-4", "rule", "show"]).expect("ip rule");
    assert!(!rules.contains(&rule), "repaired while the lock was held?");

    drop(held);
    let released = t0.elapsed();
    let repaired = loop {
        let rules = fw.exec(&["ip", "-4", "rule", "show"]).expect("ip rule");
        if rules.contains(&rule) {
            break t0.elapsed() - released;
        }
        assert!(
            t0.elapsed() - released < Duration::from_secs(2),
            "not repaired after the lock was released:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "lock held {released:?}; status answered in {status_took:?} meanwhile; rule repaired {repaired:?} after the release"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn run_dir_is_private_and_nothing_is_written_through_a_link() {
    let lab = lab();
    let fw = &lab.fw;
    let _remove = RemoveOnDrop(fw);
    let (dir, config) = TempDir::with_config("run-files");

    // Found too open, made private again.
    std::fs::set_permissions(rundir::DIR, std::fs::Permissions::from_mode(0o755))
        .expect("chmod /run/symroute");
    let r = symroute(&[
        "apply",
        "-c",
        &config,
        "--netns",
        fw.name(),
        "--confirm",
        "60",
    ])
    .ok();
    assert!(r.stdout.contains("within 60 s"), "{}", r.stdout);
    assert_eq!(mode(Path::new(rundir::DIR)), 0o700, "/run/symroute");
    for suffix in ["json", "confirm.json", "lock", "confirm.guard"] {
        let p = run_file(fw, suffix);
        let meta = std::fs::symlink_metadata(&p).expect("state file");
        assert!(
            meta.file_type().is_file(),
            "{} is a regular file",
            p.display()
        );
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    symroute(&["confirm", "--netns", fw.name()]).ok();

    // A link planted where the state file goes is neither read through nor written through.
    let state = run_file(fw, "json");
    let target = dir.join("precious");
    std::fs::write(&target, "precious\n").expect("target");
    std::fs::remove_file(&state).expect("remove state file");
    std::os::unix::fs::symlink(&target, &state).expect("plant a link");
    let r = symroute(&["apply", "-c", &config, "--netns", fw.name()]);
    let _ = std::fs::remove_file(&state);
    assert_eq!(
        r.code, 1,
        "apply over a planted link:\n{}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(&state.display().to_string()),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "precious\n"
    );
}

#[test]
fn snapshot_writes_only_into_a_directory_of_ours_and_follows_no_link() {
    require_root();
    let ns = Netns::new("snap").expect("namespace");
    let dir = TempDir::new("snap-dirs");
    let snapshot =
        |d: &Path| symroute(&["snapshot", &d.display().to_string(), "--netns", ns.name()]);

    // Someone else's directory: refused, nothing written.
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
    let r = snapshot(&theirs);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("owned by uid 65534"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&theirs).expect("read dir").count(), 0);

    // The directory given as a link: refused.
    let real = dir.join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let r = snapshot(&link);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&real).expect("read dir").count(), 0);

    // A link planted in our own directory is replaced, its target untouched.
    let ours = dir.join("ours");
    std::fs::create_dir(&ours).expect("mkdir");
    let target = dir.join("precious");
    std::fs::write(&target, "precious\n").expect("target");
    std::os::unix::fs::symlink(&target, ours.join("ip-rule.txt")).expect("plant a link");
    let r = snapshot(&ours).ok();
    assert!(r.stdout.contains("ip-rule.txt"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "precious\n"
    );
    let meta = std::fs::symlink_metadata(ours.join("ip-rule.txt")).expect("ip-rule.txt");
    assert!(
        meta.file_type().is_file(),
        "ip-rule.txt should now be a file of its own"
    );
    assert!(std::fs::read_to_string(ours.join("ip-rule.txt"))
        .expect("ip-rule.txt")
        .contains("lookup main"));
    // And taken again over itself, as users do.
    snapshot(&ours).ok();

    // Reading one follows no link either: the file is named, nothing is read through it.
    std::fs::remove_file(ours.join("ip-route.txt")).expect("rm");
    std::os::unix::fs::symlink(&target, ours.join("ip-route.txt")).expect("plant a link");
    let r = symroute(&["doctor", "--from", &ours.display().to_string()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("ip-route.txt") && r.stderr.contains("symbolic link"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_rollback_whose_reads_fail_retries_then_puts_back_what_it_can() {
    let lab = lab();
    let fw = &lab.fw;
    let _remove = RemoveOnDrop(fw);
    let (_dir, config) = TempDir::with_config("rollback-reads");
    let before = settled_snapshot(fw);
    let apply = |reads: &str| {
        symroute(&[
            "apply",
            "-c",
            &config,
            "--netns",
            fw.name(),
            "--inject-failure",
            "rules",
            "--fail-rollback-reads",
            reads,
        ])
    };

    // Three failed reads: retried, and the rollback is complete.
    let r = apply("3");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("rolled back: the host is as it was"),
        "{}",
        r.stderr
    );
    assert_eq!(
        kernel_snapshot(fw),
        before,
        "after a rollback with 3 failed reads"
    );

    // Reads that never work: the table and the sysctls are put back anyway, and the
    // failure is reported with what to do.
    let r = apply("99");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("could not read the kernel to roll back")
            && r.stderr.contains("symroute remove"),
        "{}",
        r.stderr
    );
    let tables = fw.exec(&["nft", "list", "tables"]).expect("nft");
    assert!(
        !tables.contains("inet symroute"),
        "the table should be gone:\n{tables}"
    );
    let sysctls = |s: &str| s.split("## sysctls").nth(1).unwrap_or_default().to_string();
    assert_eq!(
        sysctls(&kernel_snapshot(fw)),
        sysctls(&before),
        "sysctls put back"
    );
    symroute(&["remove", "--netns", fw.name()]).ok();
    assert_eq!(
        kernel_snapshot(fw),
        before,
        "remove cleans up what the blind rollback left"
    );
}

/// A writer killed between creating its temporary and renaming it leaves the temporary
/// behind; the next holder of the namespace's lock sweeps those whose writer is gone,
/// never one a live process may still be writing.
#[test]
fn temporaries_of_killed_writers_are_swept() {
    let ns = Netns::new("sweep").expect("netns");
    let state = support::run_file(&ns, "json");
    let dir = state.parent().expect("run dir").to_path_buf();
    let base = state.file_name().and_then(|n| n.to_str()).expect("name");
    // No process has this pid (above any pid_max).
    let dead = dir.join(format!(".{base}.99999999.1.tmp"));
    let live = dir.join(format!(".{base}.{}.1.tmp", std::process::id()));
    // Another namespace's leftover is not this namespace's to judge.
    let other = dir.join(".netns-c0.json.99999999.1.tmp");
    for p in [&dead, &live, &other] {
        std::fs::write(p, "").expect("plant a temporary");
    }
    let r = support::symroute(&["remove", "--netns", ns.name()]);
    let (d, l, o) = (dead.exists(), live.exists(), other.exists());
    for p in [&dead, &live, &other] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(!d, "the dead writer's temporary stayed");
    assert!(l, "a live writer's temporary was removed");
    assert!(o, "another namespace's temporary was removed");
}
