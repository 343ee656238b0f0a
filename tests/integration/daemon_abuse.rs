//! `symroute run` bounded under abuse (issue 12, item 5): 400 clients trickling bytes
//! into the control socket and 60 idle clients on the metrics port, all reconnecting as
//! soon as they are dropped, while `symroute status` answers within 1 s, a scrape gets
//! its page, a deleted rule and a deleted table are repaired, and the daemon never runs
//! more than 64 threads (read from /proc/PID/task). A client that is neither root nor the
//! daemon's user is refused (SO_PEERCRED), even on a socket opened up to it.
//!
//! Needs root, `nft`, `ip` and `conntrack`.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::lab;
use support::{our_rule, run_file, symroute};
use symroute::lab::in_netns;

const METRICS: &str = "127.0.0.1:19469";
const CONTROL_CLIENTS: usize = 400;
const METRICS_CLIENTS: usize = 60;
const MAX_THREADS: usize = 64;

fn config() -> String {
    format!(
        "[settings]\nmetrics = \"{METRICS}\"\n\n{}",
        include_str!("../../examples/two-isps-firewall.toml")
    )
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Keeps `n` connections made by `connect` open, writing `drip` (one byte of it per
/// connection per round) every `every`, and making a new one for each the server
/// dropped; until `stop`. Counts the connections made.
fn abuse<S: Read + Write>(
    n: usize,
    every: Duration,
    drip: &'static [u8],
    connect: impl Fn() -> std::io::Result<S>,
    set_nonblocking: impl Fn(&S),
    stop: &AtomicBool,
    made: &AtomicU32,
) {
    let mut conns: Vec<Option<(S, usize)>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        for slot in conns.iter_mut() {
            if slot.is_none() {
                if let Ok(s) = connect() {
                    set_nonblocking(&s);
                    made.fetch_add(1, Ordering::Relaxed);
                    *slot = Some((s, 0));
                }
                continue;
            }
            let (s, at) = slot.as_mut().expect("checked");
            let mut sink = [0u8; 512];
            let closed = match s.read(&mut sink) {
                Ok(_) => true, // an answer (or the end): the server is done with it
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let dripped = drip.is_empty() || s.write(&drip[*at % drip.len()..][..1]).is_ok();
            *at += 1;
            if closed || !dripped {
                *slot = None;
            }
        }
        std::thread::sleep(every);
    }
}

#[test]
fn abusive_clients_cost_no_threads_and_the_daemon_goes_on() {
    let lab = lab();
    let fw = &lab.fw;
    let d = Daemon::start(fw, &config());
    let pid = d.child.id();
    let quiet_threads = threads(pid);
    let sock = run_file(fw, "sock");
    let stop = Arc::new(AtomicBool::new(false));
    let (control_made, metrics_made) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));

    let control = {
        let (stop, made, sock) = (stop.clone(), control_made.clone(), sock.clone());
        std::thread::spawn(move || {
            abuse(
                CONTROL_CLIENTS,
                Duration::from_millis(100),
                br#"{"request":"status"}"#,
                || UnixStream::connect(&sock),
                |s| s.set_nonblocking(true).expect("nonblocking"),
                &stop,
                &made,
            )
        })
    };
    let metrics = {
        let (stop, made, ns) = (stop.clone(), metrics_made.clone(), fw.name().to_string());
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                abuse(
                    METRICS_CLIENTS,
                    Duration::from_millis(100),
                    b"",
                    || TcpStream::connect(METRICS),
                    |s| s.set_nonblocking(true).expect("nonblocking"),
                    &stop,
                    &made,
                )
            })
            .expect("in netns")
        })
    };
    let max_threads = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max_threads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(threads(pid) as u32, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));

    // `status` answers, again and again.
    let mut status_took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = symroute(&["status", "--netns", fw.name()]).ok();
        status_took.push(t.elapsed());
        assert!(r.stdout.contains("daemon: pid"), "{}", r.stdout);
    }
    // A scrape gets its page.
    let mut scrape_took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let page = in_netns(fw.name(), || -> std::io::Result<String> {
            let mut s = TcpStream::connect(METRICS)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .expect("in netns")
        .expect("scrape");
        scrape_took.push(t.elapsed());
        assert!(page.starts_with("HTTP/1.0 200 OK"), "{page}");
        assert!(
            page.contains("symroute_gateway_up{gateway=\"isp1\"} 1"),
            "{page}"
        );
    }
    // Reconciles go on: a deleted rule, then the deleted table, come back.
    // isp2's table: id 123 from its name (42000 + 123 - 1).
    let (rule, del) = our_rule(fw, 42122);
    let del: Vec<&str> = del.iter().map(String::as_str).collect();
    // How long after `undo` the command `args` prints `want` again.
    let repaired = |what: &str, undo: &[&str], args: &[&str], want: &str| {
        let t = Instant::now();
        fw.exec(undo).expect(what);
        while !fw.exec(args).expect("list").contains(want) {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{what}: not repaired:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.elapsed()
    };
    let rule_back = repaired("delete a rule", &del, &["ip", "-4", "rule", "show"], &rule);
    let table_back = repaired(
        "delete the table",
        &["nft", "delete", "table", "inet", "symroute"],
        &["nft", "list", "tables"],
        "inet symroute",
    );

    stop.store(true, Ordering::Relaxed);
    control.join().expect("control abuser");
    metrics.join().expect("metrics abuser");
    sampler.join().expect("sampler");
    let max_threads = max_threads.load(Ordering::Relaxed) as usize;
    eprintln!(
        "{CONTROL_CLIENTS} trickling control clients ({} connections made), {METRICS_CLIENTS} idle metrics clients ({} made): daemon threads {quiet_threads} before, at most {max_threads} during; status took {status_took:?}; scrapes took {scrape_took:?}; a deleted rule came back in {rule_back:?}, the deleted table in {table_back:?}",
        control_made.load(Ordering::Relaxed),
        metrics_made.load(Ordering::Relaxed),
    );
    assert!(max_threads <= MAX_THREADS, "{max_threads} threads");
    for t in status_took.iter().chain(&scrape_took) {
        assert!(*t < Duration::from_secs(1), "an answer took {t:?}");
    }
    assert!(
        control_made.load(Ordering::Relaxed) as usize > CONTROL_CLIENTS,
        "the daemon should have dropped trickling clients (they reconnected)"
    );
    assert!(d.log().matches("reconciled").count() >= 2, "{}", d.log());
}

#[test]
fn a_client_that_is_neither_root_nor_the_owner_is_refused() {
    let lab = lab();
    let fw = &lab.fw;
    let _d = Daemon::start(fw, include_str!("../../examples/two-isps-firewall.toml"));
    let sock = run_file(fw, "sock");
    // Open the socket up (the directory stays 0700: the client reaches it through a
    // descriptor opened here, as one passed on would be).
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let path = std::fs::File::open(&sock).map(drop).err();
    assert!(path.is_some(), "a socket cannot be opened as a file");
    let fd = nix::fcntl::open(
        &sock,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .expect("O_PATH");
    // One thread drops to uid 65534 (the raw syscall changes only the calling thread),
    // connects and asks.
    let answer = std::thread::spawn(move || -> std::io::Result<String> {
        // SAFETY: setresuid on this thread only; the thread ends right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        let mut s = UnixStream::connect(format!("/proc/self/fd/{fd}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"{\"request\":\"status\"}\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
    .join()
    .expect("client thread");
    let _ = nix::unistd::close(fd);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let answer = answer.expect("connect as uid 65534");
    assert!(
        answer.contains("permission denied: uid 65534"),
        "refusal expected, got {answer:?}"
    );
    assert!(!answer.contains("\"status\""), "{answer}");
    // Root is still served.
    let r = symroute(&["status", "--netns", fw.name()]).ok();
    assert!(r.stdout.contains("daemon: pid"), "{}", r.stdout);
}
