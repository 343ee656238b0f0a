//! `symroute run` logging to the journal: with stderr being the stream `$JOURNAL_STREAM`
//! names (device:inode of a real pipe here, as systemd sets it for its stdout stream),
//! every line starts with its syslog priority and carries no timestamp; with the variable
//! naming another stream (a redirected stderr inherits it), the output is as ever. And
//! with the real systemd-journald (run in a private mount namespace over its own tmpfs),
//! journald reads those prefixes as the lines' priorities: `journalctl -p warning` lists
//! the gateway lost and the failover, `-p notice` the changes, and routine lines stay out.
//! Needs root, `nft` and `ip`; the last test also `unshare`, systemd-journald,
//! `systemd-cat` and `journalctl` (package systemd).

use crate::support;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{symroute_in, two_uplinks, TempDir};
use symroute::lab::Netns;

const CONFIG: &str = r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"

[[policy]]
name = "mail"
route_via = ["isp1", "isp2"]
[policy.match]
protocol = "tcp"
destination_port = 25
"#;

/// A `symroute run` whose stderr is a pipe; `$JOURNAL_STREAM` names that pipe (or, with
/// `other_stream`, an inode it is not).
struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn start(ns: &Netns, config: &std::path::Path, other_stream: bool) -> Run {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
        let st = nix::sys::stat::fstat(write.as_raw_fd()).expect("fstat");
        let ino = if other_stream {
            st.st_ino + 1
        } else {
            st.st_ino
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_symroute"));
        cmd.args(["run", "-c"])
            .arg(config)
            .args(["--netns", ns.name(), "--log-level", "debug"])
            .env("JOURNAL_STREAM", format!("{}:{ino}", st.st_dev))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(write));
        let child = cmd.spawn().expect("spawn symroute run");
        drop(cmd); // our copy of the write end: the reader sees EOF when the child exits
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(std::fs::File::from(read)).lines() {
                let Ok(line) = line else { break };
                eprintln!("  [run] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Run { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line starting with `prefix`; that line.
    fn wait_for(&self, prefix: &str) -> String {
        self.wait_line(&format!("starting with {prefix:?}"), |l| {
            l.starts_with(prefix)
        })
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no line {what}; got:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        support::daemon::stop(&mut self.child);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes what the daemon applied in the namespace, however the test ends.
struct Removed<'a>(&'a Netns);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = symroute_in(self.0, "remove", None, &[]);
    }
}

fn is_timestamp(word: &str) -> bool {
    // tracing's `2026-12-07T03:59:50.123456Z`
    word.len() > 19 && word.as_bytes()[4] == b'-' && word.contains('T') && word.ends_with('Z')
}

#[test]
fn journal_lines_carry_syslog_priorities() {
    let (fw, _isp) = two_uplinks("jd");
    let _removed = Removed(&fw);
    let dir = TempDir::new("journald");
    let config = dir.file("symroute.toml", CONFIG.as_bytes(), 0o644);
    let mut run = Run::start(&fw, &config, false);

    // Routine: <6>; the first apply's changes: <5>; debug: <7>.
    run.wait_for("<6>symroute ");
    run.wait_for("<5>applied: ");
    run.wait_for("<5>reconciled at startup: ");
    run.wait_for("<7>");

    // A gateway lost and the failover: <4>; coming back is a change: <5>.
    fw.ip("link set up1 down").expect("up1 down");
    let down = run.wait_for("<4>gateway isp1 is down");
    assert!(down.contains("fall through to the main table"), "{down}");
    run.wait_for("<4>failover: policy mail: new connections leave via isp2 (isp1 down)");
    fw.ip("link set up1 up").expect("up1 up");
    run.wait_for("<5>gateway isp1 is up");
    run.wait_for("<5>policy mail: new connections leave via isp1 again (was isp2)");

    // A reload that fails keeps the old config: a warning.
    std::fs::write(&config, "[[gateway]]\nname = 1\n").expect("break the config");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let failed = run.wait_for("<4>reload failed, keeping the previous config: ");
    assert!(failed.contains("symroute.toml:2:8: "), "{failed}");

    run.stop();
    let lines = run.lines();
    for l in &lines {
        let prio = l.strip_prefix('<').and_then(|r| r.split_once('>'));
        assert!(
            matches!(prio, Some(("3" | "4" | "5" | "6" | "7", _))),
            "a line without a priority prefix: {l:?}"
        );
        let first = prio.map(|p| p.1).unwrap_or_default();
        let word = first.split_whitespace().next().unwrap_or_default();
        assert!(!is_timestamp(word), "a timestamp in the journal: {l:?}");
        assert!(
            !["INFO", "WARN", "DEBUG", "ERROR"].contains(&word),
            "a level word in the journal: {l:?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("<6>SIGTERM: exiting")),
        "{lines:?}"
    );
}

#[test]
fn a_fatal_error_is_priority_3_in_the_journal() {
    let (fw, _isp) = two_uplinks("jderr");
    let dir = TempDir::new("journald-err");
    let config = dir.file(
        "symroute.toml",
        CONFIG
            .replace("destination_port = 25", "destination_port = 70000")
            .as_bytes(),
        0o644,
    );
    let mut run = Run::start(&fw, &config, false);
    let status = run.child.wait().expect("wait");
    assert_eq!(status.code(), Some(2), "a bad config exits 2");
    let line = run.wait_for("<3>symroute: ");
    assert!(line.contains("symroute.toml:"), "{line}");
}

#[test]
fn stderr_that_is_not_the_journal_stream_keeps_the_plain_format() {
    let (fw, _isp) = two_uplinks("jdplain");
    let _removed = Removed(&fw);
    let dir = TempDir::new("journald-plain");
    let config = dir.file("symroute.toml", CONFIG.as_bytes(), 0o644);
    let mut run = Run::start(&fw, &config, true);
    let line = run.wait_for("20");
    run.wait_line("with INFO", |l| l.contains(" INFO reconciled at startup"));
    run.stop();
    let word = line.split_whitespace().next().unwrap_or_default();
    assert!(is_timestamp(word), "{line:?}");
    assert!(
        !run.lines().iter().any(|l| l.starts_with('<')),
        "{:?}",
        run.lines()
    );
}

/// The journal side of it, with the real journald: `symroute run`'s stderr is a stream
/// connected to systemd-journald's stdout socket (`systemd-cat`, which does what systemd
/// does for a unit's output), `$JOURNAL_STREAM` names that socket as systemd sets it, and
/// journalctl then filters by the priorities journald stored.
#[test]
fn journald_files_each_line_at_its_priority() {
    let (fw, _isp) = two_uplinks("jdreal");
    let _removed = Removed(&fw);
    let dir = TempDir::new("journald-real");
    let config = dir.file("symroute.toml", CONFIG.as_bytes(), 0o644);
    // journald, its sockets and its files live on tmpfs mounts of a private mount
    // namespace: the host's /run/systemd and journal are never touched.
    let script = r#"
set -eu
sym="$1"; cfg="$2"; ns="$3"; conf="$4"
run=; jd=
trap 'kill $run $jd 2>/dev/null || true; wait 2>/dev/null || true' EXIT
mkdir -p /run/systemd /run/log
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
# Our own journald.conf (on a tmpfs over /etc/systemd), nothing of the host's: volatile,
# every level kept, no kmsg, and `Audit=` unset (left as it is); and no audit capability
# at all, so this journald can never switch the host's kernel auditing on or off.
mount -t tmpfs tmpfs /etc/systemd
cp "$conf" /etc/systemd/journald.conf
for d in /usr/lib/systemd/journald.conf.d /usr/local/lib/systemd/journald.conf.d; do
  if [ -d "$d" ]; then mount -t tmpfs tmpfs "$d"; fi
done
mkdir -p /run/systemd/journal
setpriv --bounding-set -audit_control,-audit_read,-audit_write /lib/systemd/systemd-journald &
jd=$!
i=0; until [ -S /run/systemd/journal/stdout ]; do i=$((i+1)); [ $i -lt 100 ]; sleep 0.1; done
jc() { journalctl -t symroute-jd --no-pager -o cat "$@"; }
wait_for() { i=0; until jc | grep -q -- "$1"; do i=$((i+1)); [ $i -lt 150 ] || { echo "never logged: $1"; jc; exit 1; }; sleep 0.1; done; }
systemd-cat -t symroute-jd sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" run -c "$1" --netns "$2"' "$sym" "$cfg" "$ns" &
run=$!
wait_for "reconciled at startup"
ip -n "$ns" link set up1 down
wait_for "failover: policy mail"
ip -n "$ns" link set up1 up
wait_for "new connections leave via isp1 again"
kill -TERM $run; wait $run || true
run=
wait_for "SIGTERM: exiting"
echo "== all"; jc
echo "== warning"; jc -p warning
echo "== notice"; jc -p notice..notice
echo "== info"; jc -p info..info
echo "== end"
"#;
    let conf = dir.file(
        "journald.conf",
        b"[Journal]\nStorage=volatile\nMaxLevelStore=debug\nReadKMsg=no\nAudit=\nForwardToSyslog=no\nForwardToWall=no\n",
        0o644,
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_symroute"))
        .arg(&config)
        .arg(fw.name())
        .arg(&conf)
        .output()
        .expect("unshare (util-linux) and systemd-journald are needed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("== end"),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let section = |name: &str| -> Vec<&str> {
        text.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_default()
            .lines()
            .collect()
    };
    let (all, warning, notice, info) = (
        section("all"),
        section("warning"),
        section("notice"),
        section("info"),
    );
    let has = |lines: &[&str], start: &str| lines.iter().any(|l| l.starts_with(start));
    // Warnings: the gateway lost and the failover, and nothing routine.
    assert!(has(&warning, "gateway isp1 is down"), "{text}");
    assert!(
        has(
            &warning,
            "failover: policy mail: new connections leave via isp2"
        ),
        "{text}"
    );
    assert!(!has(&warning, "reconciled at startup"), "{text}");
    assert!(!has(&warning, "symroute "), "{text}");
    // Notices: what changed.
    assert!(has(&notice, "reconciled at startup"), "{text}");
    assert!(has(&notice, "gateway isp1 is up"), "{text}");
    assert!(!has(&notice, "failover: "), "{text}");
    // Routine at info, and journald took every prefix off: no `<N>`, no timestamp.
    assert!(has(&info, "symroute "), "{text}");
    assert!(has(&info, "SIGTERM: exiting"), "{text}");
    for l in &all {
        assert!(!l.starts_with('<'), "a prefix journald did not take: {l:?}");
        let word = l.split_whitespace().next().unwrap_or_default();
        assert!(!is_timestamp(word), "a timestamp in the journal: {l:?}");
    }
}
