//! What `-c` may name (issue 12, item 4): only a regular file of at most 16 MiB of UTF-8
//! is read. A FIFO, a device, a directory, a 50 MB file, binary garbage or a missing file
//! exits 2 within a second, naming the path, the message printed exactly once. A config
//! with `on_change` hooks (run as root) that others could rewrite is refused by `check`
//! and `symroute run` (exit 2, naming the file and its mode), and by a reload (SIGHUP or
//! `apply` through the daemon), which keeps the old config running.
//!
//! `run` is always given `--netns` of a throwaway namespace, so nothing can reach the
//! host's own namespace even if a refusal failed. Needs root, `ip`, `nft`, `conntrack`.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::daemon::{with_config, Daemon};
use support::{require_root, symroute, two_uplinks, Run, TempDir};
use symroute::lab::Netns;

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `symroute ARGS` timed; asserts exit 2 within a second and `want` in stderr, on a
/// single line printed once.
fn refused(args: &[&str], want: &str) -> Run {
    let t0 = Instant::now();
    let r = symroute(args);
    let took = t0.elapsed();
    assert_eq!(r.code, 2, "{args:?}:\n{}", r.show());
    assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
    assert_eq!(
        r.stderr.matches(want).count(),
        1,
        "{args:?}: want {want:?} once in stderr:\n{}",
        r.show()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{args:?}:\n{}", r.show());
    r
}

/// The namespace has no trace of symroute: `run` never got as far as applying.
fn untouched(ns: &Netns) {
    let tables = ns
        .exec(&["nft", "list", "tables"])
        .expect("nft list tables");
    assert!(!tables.contains("symroute"), "{tables}");
}

#[test]
fn only_regular_utf8_files_up_to_16_mib_are_read() {
    require_root();
    let ns = Netns::new("cfgfile").expect("netns");
    let dir = TempDir::new("bad");
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let big = dir.0.join("big.toml");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(50 * 1000 * 1000))
        .expect("50 MB file");
    let garbage = dir.file(
        "garbage.toml",
        b"[settings]\nmark_mask = \"0xff000000\"\n# caf\xe9 \xff\xfe\x00\x01 binary\n",
        0o644,
    );
    let missing = dir.0.join("missing.toml");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let cases: Vec<(String, String)> = vec![
        (
            "/dev/zero".into(),
            "/dev/zero: cannot read config: it is a character device, not a regular file".into(),
        ),
        (
            s(&fifo),
            format!(
                "{}: cannot read config: it is a FIFO (named pipe), not a regular file",
                s(&fifo)
            ),
        ),
        (
            s(&dir.0),
            format!(
                "{}: cannot read config: it is a directory, not a regular file",
                s(&dir.0)
            ),
        ),
        (
            s(&big),
            format!(
                "{}: cannot read config: 50000000 bytes, more than symroute reads (16 MiB)",
                s(&big)
            ),
        ),
        (
            s(&garbage),
            format!("{}:3:6: not UTF-8 text: byte 0xe9", s(&garbage)),
        ),
        (
            s(&missing),
            format!(
                "{}: cannot read config: No such file or directory (os error 2)",
                s(&missing)
            ),
        ),
    ];
    for (path, want) in &cases {
        refused(&["check", "-c", path], want);
        refused(&["plan", "-c", path, "--netns", ns.name()], want);
        refused(&["run", "-c", path, "--netns", ns.name()], want);
    }
    untouched(&ns);

    // Up to 16 MiB is read: the example config padded with comments to 15 MiB.
    let mut text = CONFIG.to_string();
    let line = format!("# {}\n", "x".repeat(1000));
    while text.len() < 15 * 1024 * 1024 {
        text.push_str(&line);
    }
    let large = dir.file("large.toml", text.as_bytes(), 0o644);
    let r = symroute(&["check", "-c", &s(&large)]);
    assert_eq!(r.code, 0, "{}", r.show());
}

fn with_hook(dir: &Path) -> String {
    format!(
        "[settings]\non_change = \"echo $SYMROUTE_GATEWAY >> {}/calls\"\n\n{CONFIG}",
        dir.display()
    )
}

#[test]
fn hooks_others_could_rewrite_are_refused_at_start() {
    require_root();
    let ns = Netns::new("cfghook").expect("netns");
    let dir = TempDir::new("hook");
    let text = with_hook(&dir.0);
    let p = dir.file("symroute.toml", text.as_bytes(), 0o666);
    let path = p.to_str().expect("utf-8 path");
    let want = format!(
        "{path}: refusing this config: its on_change hooks run as root, but the file is writable by its group and everyone (mode 0666)"
    );
    refused(&["check", "-c", path], &want);
    refused(&["run", "-c", path, "--netns", ns.name()], &want);
    untouched(&ns);

    chmod(&p, 0o620);
    refused(
        &["check", "-c", path],
        "the file is writable by its group (mode 0620)",
    );

    // Owned by another user.
    chmod(&p, 0o644);
    std::os::unix::fs::chown(&p, Some(65534), None).expect("chown");
    refused(
        &["check", "-c", path],
        "the file is owned by uid 65534 (mode 0644), not by root",
    );
    std::os::unix::fs::chown(&p, Some(0), None).expect("chown back");

    // In a directory others may write to (and not sticky): they could replace the file.
    chmod(&dir.0, 0o777);
    let want = format!(
        "its directory {} is writable by its group and everyone (mode 0777)",
        dir.0.display()
    );
    refused(&["run", "-c", path, "--netns", ns.name()], &want);
    untouched(&ns);
    chmod(&dir.0, 0o1777);
    let r = symroute(&["check", "-c", path]);
    assert_eq!(
        r.code,
        0,
        "a sticky directory protects root's file:\n{}",
        r.show()
    );
    chmod(&dir.0, 0o755);

    // Root's file in root's directory, but that directory inside one others may write
    // to: they could rename it away and put their own in its place.
    let open = dir.0.join("open");
    let inner = open.join("inner");
    std::fs::create_dir_all(&inner).expect("mkdir");
    chmod(&open, 0o777);
    chmod(&inner, 0o755);
    let deep = inner.join("symroute.toml");
    std::fs::write(&deep, &text).expect("write");
    chmod(&deep, 0o644);
    refused(
        &["check", "-c", deep.to_str().expect("utf-8")],
        &format!(
            "its directory {} is writable by its group and everyone (mode 0777)",
            open.display()
        ),
    );
    // A link in root's directory to root's file in a directory a user owns: the user
    // could replace the file the link reaches.
    chmod(&open, 0o755);
    std::os::unix::fs::chown(&inner, Some(65534), None).expect("chown");
    let link = dir.0.join("link.toml");
    std::os::unix::fs::symlink(&deep, &link).expect("symlink");
    refused(
        &["check", "-c", link.to_str().expect("utf-8")],
        &format!(
            "its directory {} is owned by uid 65534 (mode 0755), who could replace the file",
            inner.display()
        ),
    );
    std::os::unix::fs::chown(&inner, Some(0), None).expect("chown back");
    let r = symroute(&["check", "-c", link.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "a link to a safe place is fine:\n{}", r.show());

    // Safe again; and without hooks a world-writable file is only a config (not refused).
    let r = symroute(&["check", "-c", path]);
    assert_eq!(r.code, 0, "{}", r.show());
    let plain = dir.file("plain.toml", CONFIG.as_bytes(), 0o666);
    let r = symroute(&["check", "-c", plain.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{}", r.show());
}

/// The running daemon is given a hook config that others can write: SIGHUP and `apply`
/// both refuse it (logged, exit 2 naming the mode) and the old config keeps running.
#[test]
fn a_reload_keeps_the_old_config_when_hooks_become_writable() {
    let (fw, _isp) = two_uplinks("cfgrel");
    let hooks = TempDir::new("reload-hooks");
    let d = Daemon::start(&fw, &with_hook(&hooks.0));
    let path = d.config_path();
    // The new config would add a policy; it must not take effect.
    let new = format!(
        "{}\n[[policy]]\nname = \"smtp-out\"\nroute_via = \"isp2\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 25\n",
        with_hook(&hooks.0)
    );
    std::fs::write(&path, &new).expect("write new config");
    chmod(&path, 0o666);
    let want = "writable by its group and everyone (mode 0666)";

    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_log(
        "reload failed, keeping the previous config",
        Duration::from_secs(10),
    );
    assert!(d.log().contains(want), "{}", d.log());

    let r = with_config(&["apply"], &path, &fw);
    assert_eq!(r.code, 2, "{}", r.show());
    assert_eq!(r.stderr.matches(want).count(), 1, "{}", r.show());

    let mut d = d;
    assert!(d.running(), "the daemon exited:\n{}", d.log());
    let st = with_config(&["status", "--json"], &path, &fw);
    let table = fw
        .exec(&["nft", "list", "table", "inet", "symroute"])
        .expect("our table is still there");
    assert!(
        !table.contains("smtp_out"),
        "the refused config's policy was applied:\n{table}\n{}",
        st.stdout
    );
}
