//! Names the git commit the binary was built from, for `symroute --version` and the
//! `symroute_build_info` metric: `BUILT_FROM_COMMIT` (not `SYMROUTE_…`: cargo also sets
//! it when it runs the tests, and `SYMROUTE_*` is what on_change hooks receive) is the short hash of HEAD, or
//! `unknown` outside a git checkout (a release tarball, a package build without `.git`)
//! or without git installed. (No `-dirty` mark: build scripts rerun only when the files
//! named below change, not on every edit, so it would go stale.)

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILT_FROM_COMMIT={commit}");
    // Build again when HEAD moves: its file, the branch it names and the packed refs (in
    // a worktree these live in the common directory).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let (Some(common), Some(head)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        for p in [format!("{common}/{head}"), format!("{common}/packed-refs")] {
            if Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
