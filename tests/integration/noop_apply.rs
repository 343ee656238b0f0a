//! A no-op `symroute apply` is proved without planning, listing nftables, checking
//! conflicts or diffing (`kernel::noop`, inside `kernel::apply`): the same config on a host
//! unchanged since the last apply. These
//! tests check that the shortcut is really taken (the proved apply starts no other
//! program, where a full one runs `nft`), and that every kind of change since the last
//! apply (our table, a rule, a route, a sysctl, an address, the config, a foreign nft
//! table or an iptables-legacy one setting our mark bits) takes the full path and is
//! repaired or refused, exactly as without the shortcut.
//!
//! Real namespaces (the two uplinks of examples/two-isps-firewall.toml); needs root,
//! `nft`, `ip`, `strace` and `iptables-legacy`.

use crate::support;
use support::{our_rule, run_file, symroute_in, two_uplinks, RemoveOnDrop, Run, TempDir};
use symroute::lab::Netns;

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");
const NO_CHANGES: &str = "no changes: the kernel already matches the config";

fn show(r: &Run) -> String {
    format!(
        "exit code {}\n--- stdout:\n{}--- stderr:\n{}",
        r.code, r.stdout, r.stderr
    )
}

fn apply(fw: &Netns, config: &str) -> Run {
    symroute_in(fw, "apply", Some(config), &[])
}

/// The programs `symroute apply` starts (traced with strace), but for symroute itself.
fn programs_of_apply(fw: &Netns, config: &str) -> (Run, Vec<String>) {
    let dir = TempDir::new("noop");
    let (cfg, trace) = (dir.0.join("symroute.toml"), dir.0.join("trace"));
    std::fs::write(&cfg, config).expect("config");
    let out = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_symroute"))
        .args(["apply", "--netns", fw.name(), "-c"])
        .arg(&cfg)
        .output()
        .expect("strace");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let programs = std::fs::read_to_string(&trace)
        .expect("trace")
        .lines()
        .filter(|l| l.contains("execve(\"") && !l.contains("= -1"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .filter(|p| !p.ends_with("/symroute"))
        .collect();
    (run, programs)
}

/// `apply` changed something (its summary ends `applied: N change(s)`).
fn repaired(what: &str, r: &Run) {
    assert_eq!(r.code, 0, "{what}: {}", show(r));
    assert!(
        r.stdout.contains("applied: ") && !r.stdout.contains(NO_CHANGES),
        "{what}: the change since the last apply was not repaired:\n{}",
        show(r)
    );
}

fn no_changes(what: &str, r: &Run) {
    assert_eq!(r.code, 0, "{what}: {}", show(r));
    assert!(r.stdout.contains(NO_CHANGES), "{what}: {}", show(r));
}

#[test]
fn a_proved_noop_starts_no_other_program() {
    let (fw, _isp) = two_uplinks("noop-a");
    let _rm = RemoveOnDrop(&fw);
    let first = apply(&fw, CONFIG);
    repaired("first apply", &first);
    assert!(run_file(&fw, "noop").exists(), "no record after apply");
    let (again, programs) = programs_of_apply(&fw, CONFIG);
    no_changes("again", &again);
    assert!(programs.is_empty(), "a proved no-op started {programs:?}");
    // Without the record the same no-op takes the full path, which lists nftables (and
    // writes the record again).
    std::fs::remove_file(run_file(&fw, "noop")).expect("drop the record");
    let (full, programs) = programs_of_apply(&fw, CONFIG);
    no_changes("without the record", &full);
    assert!(
        programs.iter().any(|p| p.ends_with("/nft")),
        "the full path ran {programs:?}"
    );
    let (_, programs) = programs_of_apply(&fw, CONFIG);
    assert!(programs.is_empty(), "recorded again: {programs:?}");
    // `remove` forgets it.
    symroute_in(&fw, "remove", None, &[]).ok();
    assert!(!run_file(&fw, "noop").exists());
}

/// A proved no-op prints what the full path prints: each gateway's state and each
/// policy still waiting for its cgroup (the proof builds no plan; the command prints the
/// plan's outline, built apart).
#[test]
fn a_proved_noop_reports_what_the_full_path_reports() {
    let (fw, _isp) = two_uplinks("noop-o");
    let _rm = RemoveOnDrop(&fw);
    let config = format!(
        "{CONFIG}\n[[policy]]\nname = \"backup\"\nroute_via = \"isp2\"\n[policy.match]\ncgroup = \"symroute-test-{}.slice/none.service\"\n",
        std::process::id()
    );
    fw.ip("link set up2 down").expect("up2 down");
    repaired("first apply", &apply(&fw, &config));
    let (proved, programs) = programs_of_apply(&fw, &config);
    no_changes("proved", &proved);
    assert!(programs.is_empty(), "not proved: it started {programs:?}");
    for line in [
        "gateway isp2 is down (",
        "policy backup: cgroup symroute-test-",
    ] {
        assert!(
            proved.stdout.contains(line),
            "{line:?} missing:\n{}",
            show(&proved)
        );
    }
    std::fs::remove_file(run_file(&fw, "noop")).expect("drop the record");
    let (full, programs) = programs_of_apply(&fw, &config);
    assert!(!programs.is_empty(), "the full path started nothing");
    assert_eq!(
        proved.stdout, full.stdout,
        "proved and full paths print alike"
    );
}

/// A change to the host, and what it is.
type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);

#[test]
fn every_change_since_the_last_apply_takes_the_full_path() {
    let (fw, _isp) = two_uplinks("noop-b");
    let _rm = RemoveOnDrop(&fw);
    repaired("first apply", &apply(&fw, CONFIG));
    let sh = |script: &str| fw.sh(script).unwrap_or_else(|e| panic!("{script}: {e:#}"));
    // A gateway table of ours (its number follows from the gateway's id).
    let table: u32 = sh("ip -4 rule show")
        .lines()
        .filter(|l| l.contains("proto 157") && l.contains("fwmark 0x"))
        .find_map(|l| {
            l.split("lookup ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("a fwmark rule of ours");
    let changes: Vec<Change> = vec![
        (
            "our table deleted",
            Box::new(|| {
                sh("nft delete table inet symroute");
            }),
        ),
        (
            "a rule of ours deleted",
            Box::new(|| {
                let (_, del) = our_rule(&fw, table);
                fw.exec(&del.iter().map(String::as_str).collect::<Vec<_>>())
                    .expect("ip rule del");
            }),
        ),
        (
            "a route of ours deleted",
            Box::new(|| {
                sh(&format!("ip route del default table {table}"));
            }),
        ),
        (
            "a rule inside our table deleted",
            Box::new(|| {
                sh("nft flush chain inet symroute classify");
            }),
        ),
        (
            "rp_filter put back to strict",
            Box::new(|| {
                sh("sysctl -qw net.ipv4.conf.up1.rp_filter=1");
            }),
        ),
        (
            "a second address on up1 (a local reply rule to add)",
            Box::new(|| {
                sh("ip addr add 203.0.113.3/24 dev up1");
            }),
        ),
    ];
    for (what, change) in changes {
        // Proved: the last apply (the first, or the repair before) left its record.
        let (before, programs) = programs_of_apply(&fw, CONFIG);
        no_changes(&format!("before: {what}"), &before);
        assert!(
            programs.is_empty(),
            "before {what}: not proved, ran {programs:?}"
        );
        change();
        repaired(what, &apply(&fw, CONFIG));
    }
    let (after, programs) = programs_of_apply(&fw, CONFIG);
    no_changes("after the last repair", &after);
    assert!(
        programs.is_empty(),
        "after the last repair: not proved, ran {programs:?}"
    );
    // The config's bytes: another policy.
    let more = format!(
        "{CONFIG}\n[[policy]]\nname = \"mail\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 25\n"
    );
    no_changes("before the new policy", &apply(&fw, CONFIG));
    repaired("a policy added", &apply(&fw, &more));
    no_changes("after it", &apply(&fw, &more));
    repaired("and removed", &apply(&fw, CONFIG));

    // Foreign tables setting our bits: refused, as without the shortcut. An nft one
    // changes the ruleset's generation; an iptables-legacy one does not, and its mere
    // existence turns the shortcut off.
    for (what, add, del) in [
        (
            "an nft table setting our mark bits",
            "nft add table ip intruder; nft add chain ip intruder pre '{ type filter hook prerouting priority -150; }'; nft add rule ip intruder pre meta mark set 0x01000000",
            "nft delete table ip intruder",
        ),
        (
            "an iptables-legacy MARK rule on our bits",
            "iptables-legacy -t mangle -A PREROUTING -j MARK --set-xmark 0x01000000/0x01000000",
            "iptables-legacy -t mangle -F PREROUTING",
        ),
    ] {
        no_changes(&format!("before {what}"), &apply(&fw, CONFIG));
        sh(add);
        let r = apply(&fw, CONFIG);
        assert_eq!(r.code, 1, "{what}: apply should refuse:\n{}", show(&r));
        assert!(r.stderr.contains("0x1000000") || r.stderr.contains("0x01000000"), "{}", show(&r));
        sh(del);
    }
    // The legacy mangle table is still listed (empty): no shortcut, still no changes.
    let (r, programs) = programs_of_apply(&fw, CONFIG);
    no_changes("with an empty legacy table", &r);
    assert!(!programs.is_empty(), "no proof beside a legacy table");
}

/// Someone else commits to nftables while an apply runs (here: a table setting our mark
/// bits, committed just before the apply's first change, after it observed). The apply
/// must not leave a record vouching for that ruleset: the next apply takes the full path
/// and refuses beside the new mark user, where a record taken at the ruleset's new
/// generation would prove it a no-op.
#[test]
fn a_commit_by_someone_else_during_an_apply_leaves_no_record() {
    use symroute::kernel::apply::{apply as apply_model, ApplyOptions, BeforeChange};
    let (fw, _isp) = two_uplinks("noop-c");
    let _rm = RemoveOnDrop(&fw);
    repaired("first apply", &apply(&fw, CONFIG));
    // Something for the next apply to change, so that it runs its before-change hook.
    fw.sh("nft delete table inet symroute")
        .expect("delete our table");
    let model = symroute::config::parse_str(CONFIG, "two-isps-firewall.toml").expect("config");
    let report = symroute::lab::in_netns(fw.name(), move || {
        let meanwhile = |_: &symroute::kernel::apply::Before| {
            let out = std::process::Command::new("nft")
                .arg("add table ip meanwhile; add chain ip meanwhile c { type filter hook prerouting priority 0; }; add rule ip meanwhile c meta mark set meta mark or 0x01000000")
                .output()
                .expect("nft");
            assert!(out.status.success(), "{out:?}");
            Ok(())
        };
        let hook: &BeforeChange = &meanwhile;
        apply_model(
            &model,
            &ApplyOptions {
                before_change: Some(hook),
                ..ApplyOptions::default()
            },
        )
        .map(|r| r.changes.is_empty())
    })
    .expect("in the namespace");
    assert_eq!(report.ok(), Some(false), "the apply changed nothing");
    assert!(
        !run_file(&fw, "noop").exists(),
        "a record vouches for a ruleset the apply never observed"
    );
    let next = apply(&fw, CONFIG);
    assert_ne!(
        next.code,
        0,
        "applied beside a new mark user: {}",
        show(&next)
    );
    assert!(next.stderr.contains("meanwhile"), "{}", show(&next));
}
