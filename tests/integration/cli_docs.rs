//! What an admin meets besides `--help`: `symroute --version` names the commit, the shell
//! completions load (bash for real: `complete -p symroute` after sourcing them), and the
//! man pages generated from the clap definitions render with `man -l` and name every
//! subcommand. Needs bash and man-db (scripts/setup); no root.

use crate::support;

use std::process::Command;

use support::{symroute, TempDir};

/// The visible subcommands, from `symroute --help`.
fn subcommands() -> Vec<String> {
    let help = symroute(&["--help"]).ok().stdout;
    let list = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap_or_default();
    // Command lines are indented two spaces; wrapped descriptions further.
    let names: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

#[test]
fn version_names_the_commit() {
    let v = symroute(&["--version"]).ok().stdout;
    let commit = env!("BUILT_FROM_COMMIT");
    assert_eq!(
        v.trim(),
        format!("symroute {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
    }
}

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let bin = env!("CARGO_BIN_EXE_symroute");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{bin}' completions bash) && complete -p symroute && \
             COMP_WORDS=(symroute con) COMP_CWORD=1 COMP_LINE='symroute con' COMP_POINT=12 && \
             _symroute symroute con symroute && printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ))
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-F _symroute symroute"), "{text}");
    let words: Vec<&str> = text.lines().skip(1).collect();
    assert!(words.contains(&"confirm"), "{words:?}");
}

#[test]
fn zsh_and_fish_completions_name_the_subcommands() {
    for shell in ["zsh", "fish"] {
        let text = symroute(&["completions", shell]).ok().stdout;
        for sub in subcommands() {
            assert!(text.contains(&sub), "{shell}: {sub} missing");
        }
    }
    let bad = symroute(&["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn man_pages_render_with_every_subcommand() {
    let dir = TempDir::new("man");
    let listed = symroute(&["manpages", dir.0.to_str().unwrap()]).ok().stdout;
    let render = |page: &str| {
        let out = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.0.join(page))
            .env("MANWIDTH", "100")
            .output()
            .expect("man -l (man-db; scripts/setup installs it)");
        assert!(out.status.success(), "man -l {page}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let main = render("symroute.8");
    assert!(main.starts_with("SYMROUTE(8)"), "{main}");
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SUBCOMMANDS", "VERSION"] {
        assert!(
            main.contains(&format!("\n{section}\n")),
            "{section}:\n{main}"
        );
    }
    for sub in subcommands() {
        let page = format!("symroute-{sub}.8");
        assert!(listed.contains(&page), "{page} not written:\n{listed}");
        assert!(
            main.contains(&format!("symroute-{sub}(8)")),
            "{sub} not in symroute(8)"
        );
        let text = render(&page);
        assert!(
            text.contains(&format!("symroute {sub}")),
            "{page} has no synopsis:\n{text}"
        );
    }
    assert!(
        !listed.contains("confirm-watch"),
        "hidden subcommands stay out"
    );
    // The options of a subcommand are on its page, as --help has them.
    assert!(render("symroute-status.8").contains("--json"));
}
