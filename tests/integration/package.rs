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
//! - a real `dpkg -i`, `dpkg -r` (the config stays), `dpkg --purge` (it goes) in a Debian
//!   12 chroot made with debootstrap (cached under /var/cache/symroute-test; the test
//!   works on a copy), so the host's own dpkg database and /usr/sbin are never touched.
//!
//! Needs root, cargo-deb and debootstrap (scripts/setup installs both), dpkg-deb, man-db.

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
    let deb = dir.join(format!("symroute_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.exists(), "{} not built", deb.display());
    deb
}

/// A Debian 12 minbase chroot with nftables and iproute2 (the package's dependencies),
/// made once per machine and reused; each test copies it.
fn cached_chroot() -> PathBuf {
    let cache = Path::new("/var/cache/symroute-test/chroot-bookworm");
    if cache.join("usr/bin/dpkg").exists() {
        return cache.to_path_buf();
    }
    let partial = cache.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(cache.parent().unwrap()).expect("cache dir");
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=nftables,iproute2",
            "bookworm",
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian"));
    // Another test run may have finished first: either copy will do.
    if std::fs::rename(&partial, cache).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    cache.to_path_buf()
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
    for unit in ["symroute.service", "symroute-apply.service"] {
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

    // Installed, removed and purged for real, in a chroot.
    let cache = cached_chroot();
    let chroot = tmp.0.join("chroot");
    run(Command::new("cp").arg("-a").arg(&cache).arg(&chroot));
    std::fs::copy(&deb, chroot.join("tmp/symroute.deb")).expect("copy the .deb");
    let dpkg = |args: &[&str]| run(Command::new("chroot").arg(&chroot).arg("dpkg").args(args));
    dpkg(&["-i", "/tmp/symroute.deb"]);
    assert!(chroot.join("usr/sbin/symroute").exists());
    let conffile = chroot.join("etc/symroute/symroute.toml");
    assert!(conffile.exists());
    let enabled = |dir: &str| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(chroot.join(dir)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("symroute"))
            .collect()
    };
    assert_eq!(
        enabled("etc/systemd/system/multi-user.target.wants"),
        Vec::<String>::new(),
        "installing enables nothing"
    );
    // An admin's edit of the config survives `dpkg -r`; purge removes it.
    std::fs::write(&conffile, "# edited\n").unwrap();
    dpkg(&["-r", "symroute"]);
    assert!(!chroot.join("usr/sbin/symroute").exists());
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), "# edited\n");
    assert!(dpkg(&["-l", "symroute"]).contains("\nrc  symroute"));
    dpkg(&["--purge", "symroute"]);
    assert!(!conffile.exists() && !chroot.join("etc/symroute").exists());
    assert!(enabled("var/lib/systemd/deb-systemd-helper-enabled").is_empty());
}
