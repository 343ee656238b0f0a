//! The Debian package as `scripts/package` builds it (here from the debug binary under
//! test, with `--binary`: cargo-deb's own release build takes minutes), checked as an
//! admin meets it:
//!
//! - `dpkg-deb --info`/`--contents`: Depends nftables, Recommends conntrack, the binary in
//!   /usr/sbin, the units with ExecStart=/usr/sbin/symroute, the conffile, man pages,
//!   completions for bash, zsh and fish, the examples and monitoring files;
//! - the maintainer scripts are debhelper's systemd snippets: nothing enabled or started
//!   on install;
//! - its files work: the binary runs, the shipped config passes `symroute check` (and so
//!   does its commented example once uncommented), `man -l` renders symroute(8), bash
//!   loads the completion;
//! - a real `dpkg -i`, `dpkg -r` (the config stays), `dpkg --purge` (it goes) with this
//!   host's own dpkg, its database and its installed dependencies, in a copy-on-write
//!   overlay of the host's root (`HostOverlay`: a private mount namespace, the changes on
//!   a tmpfs that vanishes with it), so the host's dpkg database and /usr/sbin are never
//!   written. No download and no chroot to build: about 2 s.
//!
//! Needs root, cargo-deb (scripts/setup installs it), dpkg-deb, man-db, unshare and
//! nsenter (util-linux), and overlayfs.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::TempDir;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scripts/package --binary <the binary under test> --out DIR`; the .deb's path.
fn build(dir: &Path) -> PathBuf {
    run(Command::new("scripts/package")
        .args(["--binary", env!("CARGO_BIN_EXE_symroute"), "--out"])
        .arg(dir));
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let deb = dir.join(format!(
        "symroute_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    assert!(deb.exists(), "{} not built", deb.display());
    deb
}

/// This host's root as a copy-on-write overlay, in a mount namespace of its own held by a
/// helper process: everything written there (dpkg's database, /usr, /etc) goes to a tmpfs
/// that only that namespace sees and that goes with it when the helper is killed. /dev and
/// /proc are mounted in it for the maintainer scripts; /run is left empty, so they see no
/// running systemd (as in a chroot) and never reach the host's.
struct HostOverlay {
    helper: std::process::Child,
    /// The directory the tmpfs is mounted on (empty on the host).
    dir: PathBuf,
}

impl HostOverlay {
    fn new(dir: PathBuf) -> HostOverlay {
        use std::io::BufRead;
        std::fs::create_dir_all(&dir).expect("overlay dir");
        let d = dir.display();
        let script = format!(
            "set -e; mount -t tmpfs -o mode=0755 tmpfs '{d}'; \
             mkdir '{d}/upper' '{d}/work' '{d}/root'; \
             mount -t overlay overlay -o 'lowerdir=/,upperdir={d}/upper,workdir={d}/work' '{d}/root'; \
             mount --rbind /dev '{d}/root/dev'; mount -t proc proc '{d}/root/proc'; \
             echo ready; exec sleep 600"
        );
        let mut helper = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        let _ = std::io::BufReader::new(helper.stdout.take().expect("stdout")).read_line(&mut line);
        let overlay = HostOverlay { helper, dir };
        assert_eq!(line.trim(), "ready", "the overlay of / was not mounted");
        overlay
    }

    /// `p` (absolute) inside the overlay, as this process can reach it.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}/root{p}",
            self.helper.id(),
            self.dir.display()
        ))
    }

    /// `chroot ROOT ARGS…` inside the helper's mount namespace; its stdout.
    fn chroot(&self, args: &[&str]) -> String {
        let pid = self.helper.id().to_string();
        run(Command::new("nsenter")
            .args(["-t", &pid, "-m", "chroot"])
            .arg(self.dir.join("root"))
            .args(args))
    }
}

impl Drop for HostOverlay {
    fn drop(&mut self) {
        // The namespace, its mounts and the tmpfs go with the last process in it.
        let _ = self.helper.kill();
        let _ = self.helper.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn the_debian_package() {
    support::require_root();
    let tmp = TempDir::new("package");
    let deb = build(&tmp.0.join("out"));

    // Control fields.
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for want in [
        "Package: symroute",
        "Section: net",
        "Recommends: conntrack",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(info.contains(want), "{want}:\n{info}");
    }
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .expect("Depends:");
    assert!(depends.split(", ").any(|d| d == "nftables"), "{depends}");

    // Files.
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/sbin/symroute",
        "./usr/lib/systemd/system/symroute.service",
        "./usr/lib/systemd/system/symroute-apply.service",
        "./usr/lib/systemd/system/symroute@.service",
        "./etc/symroute/symroute.toml",
        "./usr/share/man/man8/symroute.8.gz",
        "./usr/share/man/man8/symroute-run.8.gz",
        "./usr/share/bash-completion/completions/symroute",
        "./usr/share/zsh/vendor-completions/_symroute",
        "./usr/share/fish/vendor_completions.d/symroute.fish",
        "./usr/share/doc/symroute/copyright",
        "./usr/share/doc/symroute/examples/full.toml",
        "./usr/share/doc/symroute/examples/networkd.conf.d/symroute.conf",
        "./usr/share/doc/symroute/examples/prometheus/symroute-alerts.yml",
        "./usr/share/doc/symroute/examples/grafana/symroute.json",
        "./usr/share/doc/symroute/examples/ha/keepalived.conf",
        "./usr/share/doc/symroute/examples/ha/conntrackd.conf",
    ] {
        assert!(
            files.contains(&want),
            "{want} not in the package:\n{contents}"
        );
    }
    let sbin = contents
        .lines()
        .find(|l| l.ends_with("./usr/sbin/symroute"))
        .unwrap();
    assert!(sbin.starts_with("-rwxr-xr-x 0/0"), "{sbin}");

    // Maintainer scripts: debhelper's systemd snippets, nothing enabled or started.
    let control = tmp.0.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/symroute/symroute.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    for unit in ["symroute.service", "symroute-apply.service"] {
        assert!(
            postinst.contains(&format!("deb-systemd-helper update-state {unit}")),
            "{postinst}"
        );
    }
    // `enable` only for what an admin had enabled before (an upgrade), never `start`.
    for line in postinst
        .lines()
        .filter(|l| l.contains("deb-systemd-helper enable"))
    {
        let at = postinst.find(line).unwrap();
        assert!(
            postinst[..at]
                .trim_end()
                .ends_with("then\n\t\t\t# Create new symlinks, if any.")
                || postinst[..at].contains("was-enabled"),
            "{postinst}"
        );
    }
    assert!(!postinst.contains("invoke start"), "{postinst}");
    assert!(
        postinst.contains("if [ -n \"$2\" ]; then\n\t\t\tdeb-systemd-invoke try-restart"),
        "an upgrade try-restarts, a first install does not:\n{postinst}"
    );

    // What is inside works.
    let root = tmp.0.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let bin = root.join("usr/sbin/symroute");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("symroute "), "{version}");
    for unit in [
        "symroute.service",
        "symroute-apply.service",
        "symroute@.service",
    ] {
        let text =
            std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).expect("unit");
        assert!(text.contains("ExecStart=/usr/sbin/symroute "), "{unit}");
    }
    let conf = root.join("etc/symroute/symroute.toml");
    let check = run(Command::new(&bin).arg("check").arg("-c").arg(&conf));
    assert!(check.starts_with("ok: 0 gateway(s)"), "{check}");
    // Its example, uncommented, is a working config too.
    let example: String = std::fs::read_to_string(&conf)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let uncommented = tmp.0.join("uncommented.toml");
    std::fs::write(&uncommented, example).unwrap();
    let check = run(Command::new(&bin).arg("check").arg("-c").arg(&uncommented));
    assert!(
        check.starts_with("ok: 2 gateway(s), 2 policy(ies)"),
        "{check}"
    );
    let man = run(Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(root.join("usr/share/man/man8/symroute.8.gz"))
        .env("MANWIDTH", "100"));
    assert!(
        man.starts_with("SYMROUTE(8)") && man.contains("symroute-status(8)"),
        "{man}"
    );
    let completion = root.join("usr/share/bash-completion/completions/symroute");
    let complete = run(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p symroute",
        completion.display()
    )));
    assert!(complete.contains("-F _symroute symroute"), "{complete}");

    // Installed, removed and purged for real, with this host's dpkg in an overlay of it.
    let host = HostOverlay::new(tmp.0.join("overlay"));
    std::fs::copy(&deb, host.path("/root/symroute.deb")).expect("copy the .deb");
    let dpkg = |args: &[&str]| host.chroot(&[&["dpkg"], args].concat());
    dpkg(&["-i", "/root/symroute.deb"]);
    assert!(host.path("/usr/sbin/symroute").exists());
    let version = host.chroot(&["/usr/sbin/symroute", "--version"]);
    assert!(version.starts_with("symroute "), "{version}");
    let conffile = host.path("/etc/symroute/symroute.toml");
    assert!(conffile.exists());
    let enabled = |dir: &str| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(host.path(dir)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("symroute"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    // postinst ran debhelper's snippet: both units recorded for deb-systemd-helper (so an
    // admin's later enable survives upgrades), neither enabled.
    assert_eq!(
        enabled("/var/lib/systemd/deb-systemd-helper-enabled"),
        vec![
            "symroute-apply.service.dsh-also".to_string(),
            "symroute.service.dsh-also".to_string()
        ],
        "postinst did not record the units"
    );
    assert_eq!(
        enabled("/etc/systemd/system/multi-user.target.wants"),
        Vec::<String>::new(),
        "installing enables nothing"
    );
    // An admin's edit of the config survives `dpkg -r`; purge removes it.
    std::fs::write(&conffile, "# edited\n").unwrap();
    dpkg(&["-r", "symroute"]);
    assert!(!host.path("/usr/sbin/symroute").exists());
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), "# edited\n");
    assert!(dpkg(&["-l", "symroute"]).contains("\nrc  symroute"));
    dpkg(&["--purge", "symroute"]);
    assert!(!conffile.exists() && !host.path("/etc/symroute").exists());
    assert!(enabled("/var/lib/systemd/deb-systemd-helper-enabled").is_empty());
}
