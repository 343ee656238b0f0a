//! `symroute apply --confirm SECS` / `symroute confirm` on the two-ISP firewall lab: an
//! unconfirmed change is rolled back by the detached watcher at its deadline (the kernel
//! is exactly as before), a confirmed one stays and works, and a second `apply --confirm`
//! while one is pending is refused.
//!
//! Every test builds its own namespaces; guards remove what symroute made and kill any
//! `confirm-watch` process left for those namespaces. Needs root, `nft`, `ip`, `conntrack`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{kernel_snapshot, require_root, settled_snapshot, symroute_in, Run};
use symroute::lab::{tcp_probe, Netns, TwoIsps};

const CONFIG: &str = include_str!("../examples/two-isps-firewall.toml");

/// On drop (declared after the lab, so it runs first): kill the watchers started for this
/// namespace, then `symroute remove` (which also forgets any pending confirm).
struct Cleanup<'a>(&'a Netns);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in watchers(self.0) {
            // SAFETY: kill(2) on a process id we found running our own binary for our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
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

fn lab() -> TwoIsps {
    require_root();
    TwoIsps::build().expect("build TwoIsps")
}

fn show(r: &Run) -> String {
    format!(
        "exit code {}\n--- stdout:\n{}--- stderr:\n{}",
        r.code, r.stdout, r.stderr
    )
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
    assert_eq!(r.code, 0, "apply --confirm 2:\n{}", show(&r));
    assert!(
        r.stdout
            .contains("applied; run `symroute confirm` within 2 s or this change is rolled back"),
        "{}",
        show(&r)
    );
    assert!(applied(fw), "the change should be applied while pending");
    assert_eq!(watchers(fw).len(), 1, "one watcher should be running");

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
    assert_eq!(r.code, 1, "confirm after the rollback:\n{}", show(&r));
    assert!(
        (r.stdout.clone() + &r.stderr).contains("nothing to confirm"),
        "{}",
        show(&r)
    );
    // The watcher exits once it has rolled back.
    let t0 = Instant::now();
    while !watchers(fw).is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watchers(fw).is_empty(), "the watcher outlived its rollback");
}

#[test]
fn confirmed_change_stays() {
    let lab = lab();
    let _svc = lab.start_services().expect("start lab services");
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);

    let r = apply_confirm(fw, "3");
    assert_eq!(r.code, 0, "apply --confirm 3:\n{}", show(&r));
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 0, "confirm:\n{}", show(&r));
    assert_eq!(r.stdout.trim(), "confirmed", "{}", show(&r));

    std::thread::sleep(Duration::from_secs(5));
    assert!(applied(fw), "a confirmed change must stay applied");
    assert!(
        watchers(fw).is_empty(),
        "the watcher should exit after confirm"
    );
    let line = tcp_probe(&lab.client, smtp_v4(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("client -> {} after confirm: {e:#}", smtp_v4()));
    assert!(
        line.starts_with(&format!("hello {} ", TwoIsps::CLIENT_V4)),
        "unexpected greeting: {line:?}"
    );
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 1, "a second confirm:\n{}", show(&r));
}

#[test]
fn second_confirm_apply_is_refused_while_pending() {
    let lab = lab();
    let fw = &lab.fw;
    let _cleanup = Cleanup(fw);

    let r = apply_confirm(fw, "30");
    assert_eq!(r.code, 0, "first apply --confirm:\n{}", show(&r));
    let r = apply_confirm(fw, "30");
    assert_eq!(r.code, 1, "second apply --confirm:\n{}", show(&r));
    assert!(
        r.stderr.contains("still pending") && r.stderr.contains("symroute confirm"),
        "the refusal should say why and what to do:\n{}",
        show(&r)
    );
    let r = symroute_in(fw, "confirm", None, &[]);
    assert_eq!(r.code, 0, "confirm:\n{}", show(&r));
    // Once confirmed, the same config is a no-op: no watcher is started.
    let r = apply_confirm(fw, "30");
    assert_eq!(
        r.code,
        0,
        "apply --confirm with nothing to change:\n{}",
        show(&r)
    );
    assert!(r.stdout.contains("no changes"), "{}", show(&r));
    let t0 = Instant::now();
    while !watchers(fw).is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watchers(fw).is_empty(), "no watcher should be left");
}
