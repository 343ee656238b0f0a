//! The systemd units in `contrib/` pass `systemd-analyze verify` (syntax, known options,
//! the capability and sandbox settings), with ExecStart pointed at the binary under test
//! (verify checks that the executable exists). Needs `systemd-analyze` (package systemd;
//! `scripts/setup` installs it); no root.

use std::process::Command;

fn verify(unit: &str) {
    verify_as(unit, unit);
}

/// Verifies `contrib/{unit}` installed as `name` (a template as one of its instances).
fn verify_as(unit: &str, name: &str) {
    let text = std::fs::read_to_string(format!("contrib/{unit}")).expect("read unit");
    assert!(
        text.contains("/usr/sbin/symroute"),
        "{unit}: ExecStart path"
    );
    let text = text.replace("/usr/sbin/symroute", env!("CARGO_BIN_EXE_symroute"));
    // One directory per unit: the tests of this file run at once in one process, and one
    // removing a shared directory made the other's unit "not found".
    let dir = std::env::temp_dir().join(format!("symroute-unit-{}-{unit}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap_or_else(|e| {
        panic!(
            "systemd-analyze is needed for this test ({e}); install the systemd package (scripts/setup does)"
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {unit}: {}\n{stderr}",
        out.status
    );
}

#[test]
fn the_daemon_unit_verifies() {
    verify("symroute.service");
}

#[test]
fn the_apply_at_boot_unit_verifies() {
    verify("symroute-apply.service");
}

#[test]
fn the_namespace_template_verifies() {
    verify_as("symroute@.service", "symroute@lab.service");
}
