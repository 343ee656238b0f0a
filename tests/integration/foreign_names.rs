//! Names read from the host are data (issue 12, item 1): nftables tables, chains, sets and
//! comments whose names are nft commands (`x; add table ip pwned`, `x; include "FILE"`),
//! sitting next to a real table `x`, leave no trace through any symroute command that
//! reads the host: plan, apply, status, doctor, explain, import, snapshot and a short
//! `symroute run`. No `pwned…` table appears, the included file is never read, and the
//! foreign tables stay byte-identical.
//!
//! The hostile objects are made with nft's JSON input, which takes any string as a name
//! (as nfnetlink does), exactly as another program on the host could make them.
//!
//! Needs root, `ip`, `nft` and `conntrack`; every namespace is deleted on drop.

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::daemon::Daemon;
use support::{symroute, symroute_in, two_uplinks, RemoveOnDrop, TempDir};
use symroute::lab::Netns;

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");

/// An interface name that is a shell command (`true>pwned` creates a file `pwned`).
const HOSTILE_IF: &str = "x;true>pwned";

/// A chain name that, copied verbatim into a TOML comment, would end the comment and add
/// a gateway (and colour the terminal).
const EVIL_CHAIN: &str = "c\n[[gateway]]\nname = \"evil\"\ninterface = \"eth9\"\n#\u{1b}[31m";

/// The router `fw` with two uplinks to `isp`, and the hostile nftables objects.
struct Host {
    fw: Netns,
    _isp: Netns,
    dir: TempDir,
}

/// The nft JSON that makes the hostile objects; `payload` is a file that, if nft ever
/// read it as a script, would add table `ip pwned_include`.
fn hostile_json(payload: &Path) -> String {
    let inc = format!("x; include \"{}\"", payload.display());
    let cmds = serde_json::json!({ "nftables": [
        { "add": { "table": { "family": "ip", "name": "x" } } },
        { "add": { "chain": { "family": "ip", "table": "x", "name": "c",
            "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept" } } },
        { "add": { "chain": { "family": "ip", "table": "x", "name": "c; add table ip pwned_chain" } } },
        { "add": { "set": { "family": "ip", "table": "x", "name": "s; add table ip pwned_set",
            "type": "ipv4_addr" } } },
        { "add": { "rule": { "family": "ip", "table": "x", "chain": "c",
            "comment": "\"; add table ip pwned_comment; \"",
            "expr": [
                { "match": { "op": "==", "left": { "meta": { "key": "iifname" } },
                             "right": "\";flush ruleset" } },
                { "counter": null }
            ] } } },
        { "add": { "table": { "family": "ip", "name": "x; add table ip pwned" } } },
        { "add": { "chain": { "family": "ip", "table": "x; add table ip pwned", "name": "c" } } },
        { "add": { "rule": { "family": "ip", "table": "x; add table ip pwned", "chain": "c",
            "expr": [ { "counter": null } ] } } },
        { "add": { "table": { "family": "ip", "name": inc } } },
        { "add": { "chain": { "family": "ip", "table": inc, "name": "c" } } },
        { "add": { "table": { "family": "inet", "name": "x; include \"/etc/shadow\"" } } },
        { "add": { "chain": { "family": "inet", "table": "x; include \"/etc/shadow\"", "name": "c" } } },
        { "add": { "table": { "family": "ip", "name": "x\nadd table ip pwned_newline" } } },
        // A chain that sets marks (import quotes it) whose name holds TOML and an escape.
        { "add": { "table": { "family": "ip", "name": "m" } } },
        { "add": { "chain": { "family": "ip", "table": "m", "name": EVIL_CHAIN,
            "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept" } } },
        { "add": { "rule": { "family": "ip", "table": "m", "chain": EVIL_CHAIN,
            "expr": [ { "mangle": { "key": { "meta": { "key": "mark" } }, "value": 16 } } ] } } },
    ]});
    cmds.to_string()
}

fn host() -> Host {
    let (fw, isp) = two_uplinks("fgn");
    // A link whose name is shell syntax, with a route tagged as ours on it: `plan
    // --script` prints its removal.
    fw.exec(&[
        "ip", "link", "add", HOSTILE_IF, "type", "veth", "peer", "name", "hp0",
    ])
    .expect("hostile link");
    fw.exec(&["ip", "link", "set", HOSTILE_IF, "up"])
        .expect("link up");
    fw.exec(&[
        "ip",
        "route",
        "add",
        "10.9.9.0/24",
        "dev",
        HOSTILE_IF,
        "table",
        "42000",
        "proto",
        "157",
    ])
    .expect("tagged route");
    let dir = TempDir::new(fw.name());
    let payload = dir.0.join("payload.nft");
    std::fs::write(&payload, "add table ip pwned_include\n").expect("payload");
    let json = hostile_json(&payload);
    fw.sh(&format!("nft -j -f - <<'JSON'\n{json}\nJSON"))
        .expect("load the hostile tables");
    Host { fw, _isp: isp, dir }
}

/// Every table name in the namespace.
fn tables(ns: &Netns) -> Vec<String> {
    let text = ns
        .exec(&["nft", "-j", "list", "tables"])
        .expect("list tables");
    let v: serde_json::Value = serde_json::from_str(&text).expect("nft json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["table"]["name"].as_str().map(String::from))
        .collect()
}

/// The foreign tables, as nft lists them (ours left out).
fn foreign_ruleset(ns: &Netns) -> String {
    let text = ns
        .exec(&["nft", "-j", "list", "ruleset"])
        .expect("list ruleset");
    let v: serde_json::Value = serde_json::from_str(&text).expect("nft json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            let Some((kind, o)) = i.as_object().and_then(|m| m.iter().next()) else {
                return false;
            };
            let table = if kind == "table" {
                &o["name"]
            } else {
                &o["table"]
            };
            kind != "metainfo" && !(o["family"] == "inet" && table == "symroute")
        })
        .map(|i| format!("{i}\n"))
        .collect()
}

/// No `pwned…` table exists, and the foreign tables are as they were.
fn assert_no_trace(h: &Host, before: &str, after_what: &str) {
    let pwned: Vec<String> = tables(&h.fw)
        .into_iter()
        .filter(|t| t.starts_with("pwned"))
        .collect();
    assert!(
        pwned.is_empty(),
        "after {after_what}: nft created {pwned:?} from a foreign name"
    );
    assert_eq!(
        foreign_ruleset(&h.fw),
        before,
        "after {after_what}: the foreign tables changed"
    );
}

#[test]
fn hostile_nft_names_leave_no_trace() {
    let h = host();
    let _remove = RemoveOnDrop(&h.fw);
    let before = foreign_ruleset(&h.fw);
    assert!(
        before.contains("x; add table ip pwned") && before.contains("include"),
        "the hostile tables were not made:\n{before}"
    );
    assert_no_trace(&h, &before, "setting up");

    // The script, run by a real shell with `ip`, `nft` and `sysctl` replaced by functions
    // printing their arguments: the link's name is one argument, never a command.
    let script = symroute_in(&h.fw, "plan", Some(CONFIG), &["--script"])
        .ok()
        .stdout;
    let stubs = "ip() { printf '<%s>' \"$@\"; echo; }\nsysctl() { ip \"$@\"; }\nnft() { cat >/dev/null; }\n";
    let sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{stubs}{script}"))
        .current_dir(&h.dir.0)
        .output()
        .expect("sh");
    let printed = String::from_utf8_lossy(&sh.stdout);
    assert!(
        sh.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&sh.stderr)
    );
    assert!(
        !h.dir.0.join("pwned").exists(),
        "plan --script ran a link name as a command:\n{script}"
    );
    assert!(
        printed.contains("<-4><route><del><10.9.9.0/24><dev><x;true>pwned><table><42000>"),
        "{script}\n{printed}"
    );

    for (cmd, extra, codes) in [
        ("plan", &[][..], &[0][..]),
        ("plan", &["--script"], &[0]),
        ("apply", &[], &[0]),
        ("apply", &[], &[0]),
        ("status", &[], &[0]),
        ("status", &["--json"], &[0]),
    ] {
        let r = symroute_in(&h.fw, cmd, Some(CONFIG), extra);
        assert!(codes.contains(&r.code), "{cmd} {extra:?}:\n{}", r.show());
        assert_no_trace(&h, &before, &format!("{cmd} {extra:?}"));
    }

    let ns = h.fw.name();
    let snap = h.dir.0.join("snap");
    let snap = snap.to_str().expect("utf-8 path");
    let explain = [
        "--in-interface",
        "up1",
        "--source",
        "203.0.113.1",
        "--destination",
        "203.0.113.2",
    ];
    let runs: Vec<(String, Vec<&str>, &[i32])> = vec![
        ("doctor".into(), vec!["doctor", "--netns", ns], &[0, 1]),
        (
            "doctor --json".into(),
            vec!["doctor", "--json", "--netns", ns],
            &[0, 1],
        ),
        (
            "explain".into(),
            [&["explain", "-v", "--netns", ns][..], &explain].concat(),
            &[0],
        ),
        ("import".into(), vec!["import", "--netns", ns], &[0]),
        (
            "snapshot".into(),
            vec!["snapshot", "--netns", ns, snap],
            &[0],
        ),
        (
            "doctor --from".into(),
            vec!["doctor", "--from", snap],
            &[0, 1],
        ),
        (
            "explain --from".into(),
            [&["explain", "--from", snap][..], &explain].concat(),
            &[0],
        ),
        ("import --from".into(), vec!["import", "--from", snap], &[0]),
    ];
    for (what, args, codes) in runs {
        let r = symroute(&args);
        assert!(codes.contains(&r.code), "{what}:\n{}", r.show());
        assert_no_trace(&h, &before, &what);
        if what.starts_with("import") {
            // Whatever it quotes from the host stays inside comments and strings.
            let parsed: Result<toml::Value, _> = toml::from_str(&r.stdout);
            assert!(
                parsed.is_ok(),
                "{what}: not TOML ({parsed:?}):\n{}",
                r.stdout
            );
            assert!(
                !r.stdout.lines().any(|l| l.starts_with("add table")),
                "{what}: a foreign name escaped its comment:\n{}",
                r.stdout
            );
            // Its report of what it cannot express quotes the same names on stderr.
            assert!(
                !r.stderr.chars().any(|c| c.is_control() && c != '\n')
                    && !r
                        .stderr
                        .lines()
                        .any(|l| l.starts_with("[[") || l.starts_with("add table")),
                "{what}: host text reached stderr raw:\n{:?}",
                r.stderr
            );
        }
    }
    // The snapshot holds the names as JSON strings, as nft printed them.
    let nft_json = std::fs::read_to_string(Path::new(snap).join("nft.json")).expect("nft.json");
    assert!(nft_json.contains("x; add table ip pwned"), "{nft_json}");

    {
        let d = Daemon::start(&h.fw, CONFIG);
        // A reconcile per foreign-table change: deleting our table makes the daemon
        // observe (and repair) with the hostile tables present.
        h.fw.exec(&["nft", "delete", "table", "inet", "symroute"])
            .expect("delete our table");
        d.wait_log_count("reconciled", 2, Duration::from_secs(10));
        assert!(tables(&h.fw).iter().any(|t| t == "symroute"), "{}", d.log());
        assert_no_trace(&h, &before, "symroute run");
    }
    assert_no_trace(&h, &before, "symroute run and its exit");
}

/// The lab config plus sharing with sticky sources (their sets are carried across each
/// table replace).
fn sticky() -> String {
    format!("{CONFIG}\n[[policy]]\nname = \"office-sticky\"\nroute_via = {{ isp1 = 3, isp2 = 1 }}\nsticky = \"10m\"\n[policy.match]\nsource = [\"10.77.0.0/25\"]\n")
}

/// The same with one more policy: a different table, so apply replaces it.
fn sticky_plus() -> String {
    format!("{}\n[[policy]]\nname = \"smtp\"\nroute_via = \"isp2\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 25\n", sticky())
}

/// Someone adds, inside symroute's own table, a chain whose name closes the table and
/// opens another, and a sticky-set element whose comment holds commands. `nft list`
/// prints both verbatim (nft syntax has no quoting for names), so neither the rollback
/// (which puts the listed table back) nor the sticky carry (which copies listed
/// elements) may replay them: no `pwned…` table appears, the rollback says the table
/// was removed instead, and a later apply writes a clean table.
#[test]
fn a_tampered_own_table_is_never_replayed() {
    let h = host();
    let _remove = RemoveOnDrop(&h.fw);
    let before = foreign_ruleset(&h.fw);
    symroute_in(&h.fw, "apply", Some(&sticky()), &[]).ok();
    let listing =
        h.fw.exec(&["nft", "list", "table", "inet", "symroute"])
            .expect("list");
    let set = listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("set ")?.strip_suffix(" {"))
        .filter(|s| s.starts_with("sticky_"))
        .unwrap_or_else(|| panic!("no sticky set in:\n{listing}"))
        .to_string();
    let chain = "x {\n\t}\n}\ntable ip pwned_rollback {\n\tchain y";
    let comment = format!(
        "x\"; add table ip pwned_carry; add element inet symroute {set} {{ 10.77.0.9 comment \"y"
    );
    let tamper = serde_json::json!({ "nftables": [
        { "add": { "chain": { "family": "inet", "table": "symroute", "name": chain } } },
        { "add": { "element": { "family": "inet", "table": "symroute", "name": set,
            "elem": [ { "elem": { "val": "10.77.0.1", "comment": comment } } ] } } },
    ]});
    h.fw.sh(&format!("nft -j -f - <<'JSON'\n{tamper}\nJSON"))
        .expect("tamper with our table");
    assert!(
        h.fw.exec(&["nft", "list", "table", "inet", "symroute"])
            .expect("list")
            .contains("table ip pwned_rollback {"),
        "the tampered listing does not hold the replayable text"
    );

    // A failing apply rolls back: the tampered table is not put back.
    let r = symroute_in(
        &h.fw,
        "apply",
        Some(&sticky_plus()),
        &["--inject-failure", "routes"],
    );
    assert_eq!(r.code, 1, "{}", r.show());
    assert!(
        r.stderr.contains("removed instead of restored"),
        "{}",
        r.show()
    );
    assert_no_trace(&h, &before, "a rolled-back apply of a tampered table");

    // Tamper again; a successful apply carries sticky sources but not the comment.
    symroute_in(&h.fw, "apply", Some(&sticky()), &[]).ok();
    h.fw.sh(&format!("nft -j -f - <<'JSON'\n{tamper}\nJSON"))
        .expect("tamper with our table again");
    symroute_in(&h.fw, "apply", Some(&sticky_plus()), &[]).ok();
    assert_no_trace(&h, &before, "an apply replacing a tampered table");
    let after =
        h.fw.exec(&["nft", "list", "table", "inet", "symroute"])
            .expect("list");
    assert!(!after.contains("pwned"), "{after}");
}

/// A foreign chain that conflicts with symroute's marks is named in apply's refusal with
/// its control characters spelled as escapes: the name stays on its line of the message
/// and its escape sequence never reaches the admin's terminal.
#[test]
fn a_conflicting_chain_is_named_inert() {
    let h = host();
    let _remove = RemoveOnDrop(&h.fw);
    // Copies every mark bit into the connection, symroute's included: a conflict. Its
    // text (quoted in the refusal) holds a log prefix with an escape and a new line.
    let copy = serde_json::json!({ "nftables": [
        { "add": { "rule": { "family": "ip", "table": "m", "chain": EVIL_CHAIN,
            "expr": [ { "log": { "prefix": "\u{1b}[31m\n[[gateway]]" } },
                      { "mangle": { "key": { "ct": { "key": "mark" } },
                                    "value": { "meta": { "key": "mark" } } } } ] } } },
    ]});
    h.fw.sh(&format!("nft -j -f - <<'JSON'\n{copy}\nJSON"))
        .expect("add the conflicting rule");
    // And a route of someone else's in a table symroute's plan uses, on a link whose
    // name holds an escape (quoted in the refusal as the table's example route).
    let evil_if = "e\u{1b}[31m";
    h.fw.exec(&[
        "ip", "link", "add", evil_if, "type", "veth", "peer", "name", "ep0",
    ])
    .expect("a link named with an escape");
    h.fw.exec(&["ip", "link", "set", evil_if, "up"])
        .expect("link up");
    h.fw.exec(&[
        "ip",
        "route",
        "add",
        "10.55.0.0/24",
        "dev",
        evil_if,
        "table",
        "42025",
    ])
    .expect("a foreign route in our table");
    let r = symroute_in(&h.fw, "apply", Some(CONFIG), &[]);
    assert_ne!(r.code, 0, "apply beside a conflict:\n{}", r.show());
    assert!(
        r.stderr
            .contains("chain c\\n[[gateway]]\\nname = \\\"evil\\\"")
            || r.stderr.contains("chain c\\n[[gateway]]\\nname = \"evil\""),
        "the refusal does not name the chain, escaped:\n{:?}",
        r.stderr
    );
    assert!(
        r.stderr.contains("routing table 42025") && r.stderr.contains("dev e\\u{1b}[31m"),
        "the refusal does not name the foreign route, escaped:\n{:?}",
        r.stderr
    );
    assert!(
        !r.stderr.chars().any(|c| c.is_control() && c != '\n')
            && !r.stderr.lines().any(|l| l.starts_with("[[gateway]]")),
        "host text reached stderr raw:\n{:?}",
        r.stderr
    );
}
