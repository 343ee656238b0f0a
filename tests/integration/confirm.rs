//! `symroute apply --confirm SECS` / `symroute confirm` on the two-ISP firewall lab: an
//! unconfirmed change is rolled back by the detached guard at its deadline (the kernel
//! is exactly as before), a confirmed one stays and works, and a second `apply --confirm`
//! (or a plain `apply`, which the rollback would undo) while one is pending is refused. Sessions killed (SIGHUP, then SIGKILL to their whole
//! process group) at random moments all end restored by the deadline + 1 s; a pending
//! change whose guard is gone never blocks the next one; absurd deadlines exit 2.
//!
//! Every test builds its own namespaces; guards remove what symroute made and kill any
//! `confirm-watch` process left for those namespaces. Needs root, `nft`, `ip`, `conntrack`.

use crate::support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::lab;
use support::{kernel_snapshot, run_file, settled_snapshot, status_json, symroute_in, Run};
use symroute::fuzz::Rng;
use symroute::lab::{tcp_probe, Netns, TwoIsps};

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");

/// On drop (declared after the lab, so it runs first): `symroute remove` (which also
/// forgets any pending confirm, so its guard exits and takes its file along), then kill
/// any guard of this namespace still running.
struct Cleanup<'a>(&'a Netns);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.0, "remove", None, &[]);
        if !no_guard_left(self.0, Duration::from_secs(1)) {
            for pid in watchers(self.0) {
                // SAFETY: kill(2) on a process id we found running our own binary for our
                // namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The guard file a killed guard left behind.
        let _ = symroute_in(self.0, "remove", None, &[]);
    }
}

/// Running `symroute confirm-watch … --netns NAME` processes for `ns`.
fn watchers(ns: &Netns) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let is_watch = args.iter().any(|a| *a == b"confirm-watch");
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--netns" && w[1] == ns.name().as_bytes());
        if is_watch && ours {
            pids.push(pid);
        }
    }
    pids
}

fn applied(ns: &Netns) -> bool {
    let rules = ns.exec(&["ip", "-4", "rule", "show"]).expect("ip rule");
    rules.contains("proto 157")
        && ns
            .exec(&["nft", "list", "tables"])
            .expect("nft list tables")
            .contains("inet symroute")
}

fn apply_confirm(ns: &Netns, secs: &str) -> Run {
    symroute_in(ns, "apply", Some(CONFIG), &["--confirm", secs])
}

fn smtp_v4() -> SocketAddr {
    SocketAddr::new(TwoIsps::FW_UP1_V4.into(), TwoIsps::SMTP_PORT)
}

#[test]
fn unconfirmed_change_is_rolled_back() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);
    let before = settled_snapshot(fw);
    assert!(!before.contains("proto 157"), "lab precondition");

    let r = apply_confirm(fw, "2");
    assert_eq!(r.code, 0, "apply --confirm 2:\n{}", r.show());
    assert!(
        r.stdout
            .contains("applied; run `symroute confirm` within 2 s or this change is rolled back"),
        "{}",
        r.show()
    );
    assert!(applied(fw), "the change should be applied while pending");
    assert_eq!(watchers(fw).len(), 1, "one guard should be running");
    let st = status_json(fw, Some(CONFIG));
    assert_eq!(
        st["confirm"]["pending"]["guard_pid"].as_i64(),
        Some(i64::from(watchers(fw)[0])),
        "status names the pending change's guard: {:#}",
        st["confirm"]
    );

    let t0 = Instant::now();
    let mut now = kernel_snapshot(fw);
    while now != before && t0.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        now = kernel_snapshot(fw);
    }
    eprintln!("rolled back after {:?}", t0.elapsed());
    assert_eq!(
        now, before,
        "the unconfirmed change was not rolled back exactly"
    );

    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 1, "confirm after the rollback:\n{}", r.show());
    assert!(
        (r.stdout.clone() + &r.stderr).contains("nothing to confirm"),
        "{}",
        r.show()
    );
    // The guard exits once it has rolled back, and leaves word of it for status.
    let t0 = Instant::now();
    while !watchers(fw).is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watchers(fw).is_empty(), "the guard outlived its rollback");
    let st = status_json(fw, Some(CONFIG));
    assert!(st["confirm"]["pending"].is_null(), "{:#}", st["confirm"]);
    assert_eq!(
        st["confirm"]["last"]["ended"], "rolled_back_at_deadline",
        "{:#}",
        st["confirm"]
    );
    let text = symroute_in(fw, "status", Some(CONFIG), &[]).ok();
    assert!(
        text.stdout
            .contains("last `apply --confirm`: rolled back: not confirmed by its deadline"),
        "{}",
        text.stdout
    );
}

#[test]
fn confirmed_change_stays() {
    let lab = lab();
    let _svc = lab.start_services().expect("start lab services");
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);

    let r = apply_confirm(fw, "3");
    assert_eq!(r.code, 0, "apply --confirm 3:\n{}", r.show());
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 0, "confirm:\n{}", r.show());
    assert_eq!(r.stdout.trim(), "confirmed", "{}", r.show());

    let st = status_json(fw, Some(CONFIG));
    assert_eq!(
        st["confirm"]["last"]["ended"], "confirmed",
        "{:#}",
        st["confirm"]
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(applied(fw), "a confirmed change must stay applied");
    assert!(
        watchers(fw).is_empty(),
        "the guard should exit after confirm"
    );
    let line = tcp_probe(&lab.client, smtp_v4(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("client -> {} after confirm: {e:#}", smtp_v4()));
    assert!(
        line.starts_with(&format!("hello {} ", TwoIsps::CLIENT_V4)),
        "unexpected greeting: {line:?}"
    );
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 1, "a second confirm:\n{}", r.show());
}

#[test]
fn second_confirm_apply_is_refused_while_pending() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);

    let r = apply_confirm(fw, "30");
    assert_eq!(r.code, 0, "first apply --confirm:\n{}", r.show());
    let r = apply_confirm(fw, "30");
    assert_eq!(r.code, 1, "second apply --confirm:\n{}", r.show());
    assert!(
        r.stderr.contains("still pending") && r.stderr.contains("symroute confirm"),
        "the refusal should say why and what to do:\n{}",
        r.show()
    );
    // A plain apply is refused too: the pending rollback would silently undo it.
    let r = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert_eq!(r.code, 1, "plain apply while pending:\n{}", r.show());
    assert!(
        r.stderr.contains("would undo this apply") && r.stderr.contains("symroute confirm"),
        "the refusal should say why and what to do:\n{}",
        r.show()
    );
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 0, "confirm:\n{}", r.show());
    let r = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert_eq!(r.code, 0, "plain apply once confirmed:\n{}", r.show());
    // Once confirmed, the same config is a no-op: its guard exits at once.
    let r = apply_confirm(fw, "30");
    assert_eq!(
        r.code,
        0,
        "apply --confirm with nothing to change:\n{}",
        r.show()
    );
    assert!(r.stdout.contains("no changes"), "{}", r.show());
    let t0 = Instant::now();
    while !watchers(fw).is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watchers(fw).is_empty(), "no watcher should be left");
}

/// Polls until the kernel state of `ns` equals `want` or `limit` has passed since `t0`;
/// how long after `t0` it was seen equal (the end of the matching poll).
fn restored(ns: &Netns, want: &str, t0: Instant, limit: Duration) -> Option<Duration> {
    loop {
        let now = kernel_snapshot(ns);
        let t = t0.elapsed();
        if now == want {
            return Some(t);
        }
        if t > limit {
            eprintln!("still not restored after {t:?}:\n{now}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until no guard runs for `ns`.
fn no_guard_left(ns: &Netns, within: Duration) -> bool {
    let t0 = Instant::now();
    while !watchers(ns).is_empty() {
        if t0.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The config in a temp dir of the test's own (removed on drop).
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(ns: &Netns, text: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!(
            "symroute-kill-{}-{}",
            std::process::id(),
            ns.name()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("symroute.toml"), text).expect("write config");
        ConfigFile(dir)
    }
    fn path(&self) -> std::path::PathBuf {
        self.0.join("symroute.toml")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `symroute apply --confirm SECS` as the leader of a session of its own (as an SSH
/// login's shell is), output discarded.
fn spawn_session(ns: &Netns, config: &std::path::Path, secs: &str) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_symroute"));
    cmd.args(["apply", "--netns", ns.name(), "-c"])
        .arg(config)
        .args(["--confirm", secs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().expect("spawn symroute apply --confirm")
}

/// What a dropped SSH session does to its processes: SIGHUP to the session's process
/// group, then (here, 2 ms later) SIGKILL to all of it.
fn hang_up_and_kill(pgid: i32) {
    // SAFETY: kill(2) on the process group our child leads.
    unsafe {
        libc::kill(-pgid, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(2));
    // SAFETY: as above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[test]
fn sessions_killed_at_any_moment_end_restored_by_the_deadline() {
    const SESSIONS: u32 = 12;
    const SECS: u64 = 2;
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);
    let config = ConfigFile::new(fw, CONFIG);
    let before = settled_snapshot(fw);
    let pending = run_file(fw, "confirm.json");
    let guard_file = run_file(fw, "confirm.guard");

    // How long an undisturbed `apply --confirm` takes, so the kills cover all of it.
    let t0 = Instant::now();
    let mut child = spawn_session(fw, &config.path(), &SECS.to_string());
    let status = child.wait().expect("wait");
    let took = t0.elapsed();
    assert!(status.success(), "undisturbed apply --confirm failed");
    assert_ne!(kernel_snapshot(fw), before, "the apply changed nothing");
    let back = restored(fw, &before, t0, Duration::from_secs(SECS + 1));
    eprintln!("undisturbed: the command took {took:?}, rolled back at {back:?}");
    assert!(
        back.is_some(),
        "the undisturbed change was not rolled back by the deadline + 1 s"
    );
    assert!(
        no_guard_left(fw, Duration::from_secs(2)),
        "its guard outlived the rollback"
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(0x5eed);
    eprintln!("kill moments from seed {seed:#x}");
    let mut rng = Rng::new(seed);
    let span = took.mul_f64(1.2);
    let mut changed_when_killed = 0;
    for i in 0..SESSIONS {
        // One kill moment per slice of the command's run, anywhere in the slice.
        let at = span.mul_f64((f64::from(i) + rng.unit()) / f64::from(SESSIONS));
        let t0 = Instant::now();
        let mut child = spawn_session(fw, &config.path(), &SECS.to_string());
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        let killed_at = t0.elapsed();
        hang_up_and_kill(child.id() as i32);
        // A rollback point saved means the change was under way or made.
        let saved = pending.exists();
        let status = child.wait().expect("wait");
        changed_when_killed += u32::from(saved);
        let back = restored(fw, &before, t0, Duration::from_secs(SECS + 1));
        eprintln!(
            "session {i}: killed at {killed_at:?} ({status}), {} at the kill; restored at {back:?}",
            if saved {
                "rollback point saved"
            } else {
                "nothing saved"
            }
        );
        assert!(
            back.is_some(),
            "session {i} (killed at {killed_at:?}) was not restored by the deadline + 1 s"
        );
        assert!(
            no_guard_left(fw, Duration::from_secs(2)),
            "session {i}: a guard was left running"
        );
        for file in [&pending, &guard_file] {
            assert!(
                !file.exists(),
                "session {i}: {} was left behind",
                file.display()
            );
        }
        // It stays restored: nothing applies late.
        assert_eq!(
            kernel_snapshot(fw),
            before,
            "session {i}: changed again later"
        );
    }
    eprintln!("{changed_when_killed} of {SESSIONS} sessions had saved a rollback point (were changing or had changed the kernel) when killed");
}

#[test]
fn a_pending_change_whose_guard_is_gone_never_blocks_the_next() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);
    let before = settled_snapshot(fw);
    let pending = run_file(fw, "confirm.json");

    // The guard dies (an admin's kill -9, the OOM killer): its change is orphaned.
    let r = apply_confirm(fw, "60");
    assert_eq!(r.code, 0, "apply --confirm 60:\n{}", r.show());
    let guards = watchers(fw);
    assert_eq!(guards.len(), 1, "one guard should run");
    // SAFETY: kill(2) on the guard we found for our namespace.
    unsafe { libc::kill(guards[0], libc::SIGKILL) };
    assert!(no_guard_left(fw, Duration::from_secs(2)));
    assert!(
        pending.exists(),
        "the orphan's pending file should still be there"
    );
    let st = status_json(fw, Some(CONFIG));
    assert_eq!(
        st["confirm"]["pending"]["guarded"], false,
        "status shows the orphan: {:#}",
        st["confirm"]
    );

    // The next `apply --confirm` rolls the orphan back first, says so, and goes on.
    let r = apply_confirm(fw, "2");
    assert_eq!(r.code, 0, "apply --confirm after an orphan:\n{}", r.show());
    assert!(
        r.stdout
            .contains("its guard was gone: rolled it back first"),
        "{}",
        r.show()
    );
    let t0 = Instant::now();
    assert!(
        restored(fw, &before, t0, Duration::from_secs(3)).is_some(),
        "the new change was not rolled back at its deadline"
    );
    assert!(no_guard_left(fw, Duration::from_secs(2)));

    // An unreadable pending file without a guard is cleared, and said so.
    std::fs::write(&pending, "{ not json").expect("plant a broken pending file");
    let r = apply_confirm(fw, "2");
    assert_eq!(
        r.code,
        0,
        "apply --confirm over a broken file:\n{}",
        r.show()
    );
    assert!(
        r.stdout.contains("cleared it without a rollback") && r.stdout.contains("unreadable"),
        "{}",
        r.show()
    );
    assert!(restored(fw, &before, Instant::now(), Duration::from_secs(3)).is_some());
    assert!(no_guard_left(fw, Duration::from_secs(2)));

    // Nor does such a file block a plain apply: nobody guards it.
    std::fs::write(&pending, "{ not json").expect("plant a broken pending file");
    let r = symroute_in(fw, "apply", Some(CONFIG), &[]);
    assert_eq!(
        r.code,
        0,
        "plain apply over an unguarded broken file:\n{}",
        r.show()
    );
}

/// SIGTERM to the guard (a shutdown, its login session's scope stopped) rolls the
/// change back at once: an unconfirmed change never outlives its guard.
#[test]
fn a_guard_told_to_stop_rolls_back_at_once() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);
    let before = settled_snapshot(fw);
    let r = apply_confirm(fw, "60");
    assert_eq!(r.code, 0, "apply --confirm 60:\n{}", r.show());
    let guards = watchers(fw);
    assert_eq!(guards.len(), 1, "one guard should run");
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guards[0]),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the guard");
    let took = restored(fw, &before, t0, Duration::from_secs(3));
    eprintln!("SIGTERM to the guard: rolled back after {took:?}");
    assert!(took.is_some(), "not rolled back after SIGTERM");
    assert!(no_guard_left(fw, Duration::from_secs(2)));
    let st = status_json(fw, Some(CONFIG));
    assert!(st["confirm"]["pending"].is_null(), "{:#}", st["confirm"]);
    assert_eq!(
        st["confirm"]["last"]["ended"], "rolled_back_stopped",
        "{:#}",
        st["confirm"]
    );
}

#[test]
fn absurd_deadlines_exit_2_and_change_nothing() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);
    let before = settled_snapshot(fw);
    for secs in [
        "0",
        "86401",
        "18446744073709551615",
        "99999999999999999999",
        "-1",
        "1.5",
        "abc",
        "",
    ] {
        let r = apply_confirm(fw, secs);
        assert_eq!(r.code, 2, "--confirm {secs:?}:\n{}", r.show());
        assert!(
            r.stderr.contains("error"),
            "--confirm {secs:?}: {}",
            r.show()
        );
        assert!(
            watchers(fw).is_empty(),
            "--confirm {secs:?} started a guard"
        );
    }
    assert_eq!(
        kernel_snapshot(fw),
        before,
        "a refused --confirm changed the kernel"
    );
    // The bounds themselves are accepted.
    let r = apply_confirm(fw, "86400");
    assert_eq!(r.code, 0, "--confirm 86400:\n{}", r.show());
    assert!(r.stdout.contains("within 86400 s"), "{}", r.show());
}
