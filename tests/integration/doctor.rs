//! `symroute doctor` on fixtures captured from real namespaces. No root needed.
//!
//! Each tests/fixtures/NAME/ holds the files `symroute snapshot` wrote for the setup in its
//! setup.sh (rebuild them with `sudo tests/fixtures/make.sh`):
//! - seed000: the CentOS firewall post, exactly (`--set-mark 0` in mangle FORWARD, `ip rule
//!   fwmark 1 table 1`, strict rp_filter);
//! - seed004-relay, seed004-haproxy: the accepted answer and the HAProxy DIVERT: correct;
//! - good-two-isps: a correct hand-made nft "reply via the arrival path";
//! - bad-routing, bad-marks-nft, bad-save-restore, tools-present: the other mistakes.
//!
//! Every code in `CODES` must fire on some fixture, and no code may fire on the correct ones.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use symroute::explain::doctor::{doctor, render, Finding, Severity, CODES};
use symroute::explain::host::HostState;
use symroute::kernel::snapshot;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files(name: &str) -> snapshot::Loaded {
    let loaded = snapshot::load(&fixture_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        loaded.missing.is_empty(),
        "{name}: missing {:?}",
        loaded.missing
    );
    loaded
}

fn host(name: &str) -> HostState {
    let loaded = files(name);
    HostState::from_files(&loaded.files, loaded.missing, name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn run(name: &str) -> Vec<Finding> {
    doctor(&host(name))
}

/// The setups doctor must find nothing wrong with.
const CORRECT: &[&str] = &["seed004-relay", "seed004-haproxy", "good-two-isps"];
const ALL: &[&str] = &[
    "seed000",
    "seed004-relay",
    "seed004-haproxy",
    "good-two-isps",
    "shorewall-two-isps",
    "bad-routing",
    "bad-marks-nft",
    "bad-save-restore",
    "tools-present",
    "networkd-host",
];

fn has(findings: &[Finding], sev: Severity, code: &str, rule_part: &str) -> bool {
    findings
        .iter()
        .any(|f| f.severity == sev && f.code == code && f.rule.contains(rule_part))
}

fn show(findings: &[Finding]) -> String {
    render(findings)
}

#[test]
#[ignore = "prints every fixture's report: cargo test --test integration doctor::dump -- --ignored --nocapture"]
fn dump() {
    for name in ALL {
        println!("===== {name}\n{}", render(&run(name)));
    }
}

#[test]
fn seed000_finds_every_mistake_of_the_post() {
    let f = run("seed000");
    let got: BTreeSet<(Severity, &str)> = f.iter().map(|x| (x.severity, x.code)).collect();
    let want: BTreeSet<(Severity, &str)> = [
        (Severity::Error, "mark-zero"),
        (Severity::Error, "fwmark-never-set"),
        (Severity::Error, "mark-after-routing"),
        (Severity::Error, "rp-filter-strict"),
        (Severity::Warning, "mark-not-saved"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{}", show(&f));

    let seed_rule =
        "-A FORWARD -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x0/0xffffffff";
    let by_code = |c: &str| f.iter().find(|x| x.code == c).unwrap();
    for code in ["mark-zero", "mark-after-routing", "mark-not-saved"] {
        assert_eq!(
            by_code(code).rule,
            seed_rule,
            "{code} quotes the seed's line"
        );
        assert!(
            by_code(code).place.contains("chain FORWARD"),
            "{}",
            by_code(code).place
        );
    }
    assert_eq!(
        by_code("fwmark-never-set").rule,
        "32765:\tfrom all fwmark 0x1 lookup 1"
    );
    assert_eq!(
        by_code("rp-filter-strict").rule,
        "net.ipv4.conf.eth2.rp_filter = 1"
    );
    // Concrete fixes.
    assert!(
        by_code("mark-zero").fix.contains("--set-mark 0x1"),
        "{}",
        by_code("mark-zero").fix
    );
    assert!(
        by_code("mark-after-routing")
            .fix
            .contains("-A PREROUTING -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-mark 0x1"),
        "{}",
        by_code("mark-after-routing").fix
    );
    assert!(by_code("mark-not-saved")
        .fix
        .contains("CONNMARK --save-mark"));
    assert!(by_code("mark-not-saved")
        .fix
        .contains("-I OUTPUT 1 -j CONNMARK --restore-mark"));
    assert!(by_code("rp-filter-strict")
        .fix
        .contains("sysctl -w net.ipv4.conf.eth2.rp_filter=2"));
    assert!(
        by_code("rp-filter-strict").why.contains("eth1"),
        "names the default route's interface"
    );
    assert!(
        by_code("mark-after-routing")
            .why
            .contains("never pass FORWARD"),
        "the firewall's own server"
    );
}

#[test]
fn seed004_relay_and_haproxy_have_no_error() {
    for name in ["seed004-relay", "seed004-haproxy"] {
        let f = run(name);
        assert!(
            f.iter().all(|x| x.severity != Severity::Error),
            "{name}:\n{}",
            show(&f)
        );
        // Not even a warning: the answer and the DIVERT are correct as written.
        assert!(
            f.iter().all(|x| x.severity == Severity::Info),
            "{name}:\n{}",
            show(&f)
        );
    }
}

#[test]
fn shorewall_reset_after_routing_is_no_error() {
    // Shorewall clears the provider bits in FORWARD; the marks its rules test are set in
    // PREROUTING and restored from the connection in PREROUTING and OUTPUT.
    let f = run("shorewall-two-isps");
    assert!(
        f.iter().all(|x| x.severity == Severity::Info),
        "{}",
        show(&f)
    );
    assert!(
        has(
            &f,
            Severity::Info,
            "mark-reset-after-routing",
            "-A FORWARD -j MARK --set-xmark 0x0/0xff"
        ),
        "{}",
        show(&f)
    );
    // Seed 000's `--set-mark 0` in FORWARD is still the error: nothing before routing
    // sets the mark its rule tests.
    assert!(has(
        &run("seed000"),
        Severity::Error,
        "mark-after-routing",
        "-A FORWARD -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x0/0xffffffff"
    ));
}

/// Every code fires where expected (code, fixture, severity, part of the quoted rule).
const FIRES: &[(&str, &str, Severity, &str)] = &[
    (
        "mark-reset-after-routing",
        "shorewall-two-isps",
        Severity::Info,
        "-A FORWARD -j MARK --set-xmark 0x0/0xff",
    ),
    (
        "mark-zero",
        "seed000",
        Severity::Error,
        "--set-xmark 0x0/0xffffffff",
    ),
    (
        "mark-zero",
        "bad-marks-nft",
        Severity::Error,
        "meta mark set 0x00000000",
    ),
    (
        "mark-outside-mask",
        "bad-routing",
        Severity::Error,
        "fwmark 0x1/0xff000000 iif eth1 lookup 210",
    ),
    (
        "mark-outside-mask",
        "bad-marks-nft",
        Severity::Error,
        "ip saddr 10.77.0.50",
    ),
    (
        "fwmark-never-set",
        "seed000",
        Severity::Error,
        "fwmark 0x1 lookup 1",
    ),
    (
        "fwmark-never-set",
        "bad-marks-nft",
        Severity::Error,
        "fwmark 0x3000/0xf000 lookup 104",
    ),
    (
        "mark-after-routing",
        "seed000",
        Severity::Error,
        "-A FORWARD",
    ),
    (
        "mark-after-routing",
        "bad-marks-nft",
        Severity::Error,
        "tcp dport 80",
    ),
    (
        "mark-after-routing",
        "bad-marks-nft",
        Severity::Error,
        "tcp dport 25",
    ),
    ("mark-not-saved", "seed000", Severity::Warning, "-A FORWARD"),
    (
        "mark-not-saved",
        "bad-save-restore",
        Severity::Warning,
        "--ctstate NEW -j MARK --set-xmark 0x3/0xf",
    ),
    (
        "mark-not-restored",
        "bad-save-restore",
        Severity::Warning,
        "CONNMARK --save-mark --nfmask 0xf0",
    ),
    (
        "no-output-restore",
        "bad-marks-nft",
        Severity::Warning,
        "meta mark set ct mark",
    ),
    (
        "rp-filter-strict",
        "seed000",
        Severity::Error,
        "net.ipv4.conf.eth2.rp_filter = 1",
    ),
    ("table-empty", "bad-routing", Severity::Error, "lookup 200"),
    (
        "table-no-default",
        "bad-routing",
        Severity::Warning,
        "lookup 201",
    ),
    (
        "table-reserved",
        "bad-routing",
        Severity::Warning,
        "lookup default",
    ),
    (
        "table-collision",
        "bad-routing",
        Severity::Info,
        "lookup 51820",
    ),
    (
        "table-collision",
        "bad-routing",
        Severity::Warning,
        "lookup 203 proto static",
    ),
    (
        "table-collision",
        "tools-present",
        Severity::Warning,
        "fwmark 0x1 lookup 51820",
    ),
    ("priority-collision", "bad-routing", Severity::Info, "5230:"),
    (
        "rule-shadowed",
        "bad-routing",
        Severity::Warning,
        "200:\tfrom 10.9.10.0/24 fwmark 0xa lookup 205",
    ),
    ("rule-shadowed", "bad-routing", Severity::Warning, "40000:"),
    (
        "mark-bits-shared",
        "tools-present",
        Severity::Warning,
        "-A OUTPUT -j CONNMARK --restore-mark",
    ),
    (
        "mark-bits-shared",
        "tools-present",
        Severity::Warning,
        "-A PREROUTING -i eth2 -j MARK --set-xmark 0x1/0xffffffff",
    ),
    (
        "mark-bits-shared",
        "tools-present",
        Severity::Warning,
        "fwmark 0x1 lookup 51820",
    ),
    (
        "nexthop-not-connected",
        "bad-routing",
        Severity::Error,
        "default via 10.3.0.1 dev eth2 table 207",
    ),
    (
        "nexthop-onlink",
        "bad-routing",
        Severity::Info,
        "via 192.0.2.254 dev eth1 table 208 onlink",
    ),
    (
        "route-no-gateway",
        "bad-routing",
        Severity::Warning,
        "default dev eth1 table 209",
    ),
    // good-two-isps' state on a host whose networkd.conf is Debian 12's (both commented
    // out: networkd's default) with a drop-in setting one of them explicitly.
    (
        "networkd-manages-foreign",
        "networkd-host",
        Severity::Info,
        "ManageForeignRoutes=yes",
    ),
    (
        "networkd-manages-foreign",
        "networkd-host",
        Severity::Info,
        "ManageForeignRoutingPolicyRules=yes",
    ),
];

#[test]
fn each_code_fires_on_its_fixture() {
    for (code, fixture, sev, part) in FIRES {
        let f = run(fixture);
        assert!(
            has(&f, *sev, code, part),
            "{code} ({sev:?}) on `{part}` in {fixture}:\n{}",
            show(&f)
        );
    }
}

#[test]
fn every_code_is_exercised_by_a_fixture() {
    let fired: BTreeSet<&str> = FIRES.iter().map(|(c, ..)| *c).collect();
    // The peer-* codes compare two boxes (`doctor --peer`): exercised by
    // doctor_live::peer_marks_compared_with_a_status_file_and_a_snapshot and the unit
    // tests of doctor::peer.
    for (code, _) in CODES.iter().filter(|(c, _)| !c.starts_with("peer-")) {
        assert!(fired.contains(code), "{code} has no fixture that fires it");
    }
}

#[test]
fn no_code_fires_on_a_correct_setup() {
    for name in CORRECT {
        let f = run(name);
        for (code, _) in CODES {
            assert!(
                f.iter().all(|x| x.code != *code),
                "{code} fired on the correct setup {name}:\n{}",
                show(&f)
            );
        }
    }
}

#[test]
fn bad_fixtures_report_only_their_mistakes() {
    // Nothing beyond what each fixture was built to show (no collateral noise).
    for name in [
        "bad-routing",
        "bad-marks-nft",
        "bad-save-restore",
        "tools-present",
    ] {
        let f = run(name);
        for x in &f {
            assert!(
                FIRES.iter().any(|(c, fx, s, part)| *fx == name
                    && *c == x.code
                    && *s == x.severity
                    && x.rule.contains(part))
                    || expected_extra(name, x),
                "unexpected finding in {name}: {} {} `{}`\n{}",
                x.severity.as_str(),
                x.code,
                x.rule,
                show(&f)
            );
        }
    }
}

/// Findings the bad fixtures legitimately produce besides the ones listed in FIRES.
fn expected_extra(name: &str, x: &Finding) -> bool {
    match (name, x.code) {
        // Marks set after routing are not saved either.
        ("bad-marks-nft", "mark-not-saved") => x.rule.contains("tcp dport"),
        // Three rules in Tailscale's range (5230, and the two added before it).
        ("bad-routing", "priority-collision") => x.rule.starts_with("522"),
        // kube-proxy's bits are overwritten by every all-bits CONNMARK of the hand setup.
        ("tools-present", "mark-bits-shared") => x.rule.contains("CONNMARK"),
        _ => false,
    }
}

#[test]
fn tools_own_objects_are_not_reported() {
    let f = run("tools-present");
    for x in &f {
        assert!(
            !x.rule.contains("0xca6c"),
            "wg-quick's own rule: {}",
            x.rule
        );
        assert!(
            !x.rule.contains("suppress_prefixlength"),
            "wg-quick's own rule: {}",
            x.rule
        );
        assert!(
            !x.place.contains("KUBE-"),
            "kube-proxy's own rule: {}",
            x.rule
        );
    }
    let out = f.iter().find(|x| x.rule.starts_with("-A OUTPUT")).unwrap();
    assert!(out.why.contains("wg-quick"), "{}", out.why);
    assert!(out.why.contains("kube-proxy"), "{}", out.why);
}

#[test]
fn findings_are_sorted_and_stable() {
    for name in ALL {
        let a = run(name);
        let b = run(name);
        assert_eq!(a, b, "{name}: same input, same findings");
        let keys: Vec<_> = a
            .iter()
            .map(|f| (f.severity, f.code, f.rule.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{name}: severity, then code, then rule");
    }
}

#[test]
fn codes_table_is_well_formed() {
    let mut seen = BTreeSet::new();
    for (code, meaning) in CODES {
        assert!(seen.insert(*code), "{code} listed twice");
        assert!(
            code.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !code.starts_with('-')
                && !code.ends_with('-'),
            "{code} is not kebab-case"
        );
        assert!(
            !meaning.is_empty() && !meaning.contains('\n'),
            "{code}: one line"
        );
    }
}

#[test]
fn json_has_the_documented_fields() {
    let f = run("seed000");
    let v = serde_json::to_value(&f).unwrap();
    let first = &v.as_array().unwrap()[0];
    for key in ["severity", "code", "rule", "why", "fix"] {
        assert!(
            first.get(key).and_then(|x| x.as_str()).is_some(),
            "{key} in {first}"
        );
    }
    assert_eq!(first["severity"], "error");
    let sev: BTreeSet<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["severity"].as_str().unwrap())
        .collect();
    assert!(
        sev.iter().all(|s| ["error", "warning", "info"].contains(s)),
        "{sev:?}"
    );
}

#[test]
fn render_is_readable() {
    let f = run("seed000");
    let text = render(&f);
    assert!(
        text.starts_with("symroute doctor: 4 errors, 1 warning, 0 notes\n"),
        "{text}"
    );
    for x in &f {
        assert!(
            text.contains(&format!("{}[{}]", x.severity.as_str(), x.code)),
            "{text}"
        );
        assert!(text.contains(&x.rule.replace('\t', " ")), "{text}");
    }
    assert_eq!(render(&[]), "symroute doctor: no problems found\n");
}

/// symroute's own objects (its `inet symroute` table, `proto 157` rules and tables, the
/// rp_filter it loosens) laid over the seed firewall without the seed's hand-made fix:
/// doctor finds nothing.
#[test]
fn symroute_plan_over_a_clean_host_is_clean() {
    let mut loaded = files("seed000");
    loaded.files.remove("nft.json");
    loaded
        .files
        .insert("iptables-save.txt".into(), String::new());
    let rules = loaded.files["ip-rule.txt"]
        .lines()
        .filter(|l| !l.contains("fwmark"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    loaded.files.insert("ip-rule.txt".into(), rules);
    let mut h = HostState::from_files(&loaded.files, Vec::new(), "seed000-clean").unwrap();
    assert!(
        doctor(&h).iter().all(|f| f.code != "mark-zero"),
        "the hand fix is gone"
    );
    let model = symroute::config::parse_str(
        r#"
[[gateway]]
name = "isp1"
interface = "eth2"
via = "203.0.113.1"

[[gateway]]
name = "isp2"
interface = "eth1"
via = "198.51.100.1"

[[policy]]
name = "answer-on-isp1"
reply_via = "isp1"
[policy.match]
in_interface = "eth2"

[[policy]]
name = "smtp-out"
route_via = "isp1"
[policy.match]
protocol = "tcp"
destination_port = 25
"#,
        "test.toml",
    )
    .unwrap();
    let plan = symroute::plan::build(&model, &h.host_view());
    h.overlay(&plan).unwrap();
    assert!(
        h.routing
            .rules
            .iter()
            .any(|r| r.protocol.as_deref() == Some("157")),
        "symroute's rules are laid over"
    );
    assert!(
        h.firewall.chains.iter().any(|c| c.table == "symroute"),
        "symroute's table is laid over"
    );
    let f = doctor(&h);
    assert!(f.is_empty(), "{}", show(&f));
}

/// The CLI as the lead wires it: `symroute doctor --from DIR [--json]`, exit 1 on errors.
#[test]
fn cli_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_symroute");
    let run = |args: &[&str]| Command::new(bin).args(args).output().expect("run symroute");
    let seed000 = fixture_dir("seed000");
    let o = run(&["doctor", "--from", seed000.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "errors found: exit 1\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("error[mark-zero]"), "{text}");
    let o = run(&["doctor", "--from", seed000.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["code"] == "mark-zero"),
        "{v}"
    );
    for name in CORRECT {
        let o = run(&["doctor", "--from", fixture_dir(name).to_str().unwrap()]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: no error, exit 0\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // Warnings alone do not fail.
    let o = run(&[
        "doctor",
        "--from",
        fixture_dir("bad-save-restore").to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// One reading of mark users: what `symroute apply`'s conflict check gets from its own
/// inputs (the nft ruleset, the iptables-save outputs, the foreign `ip rule`s) equals what
/// doctor reads from the same host's snapshot, object for object and bit for bit.
#[test]
fn apply_and_doctor_see_the_same_mark_users() {
    use symroute::model::Priority;
    use symroute::plan::diff::ForeignRule;
    let mut seen = 0;
    for name in ALL {
        let loaded = files(name);
        let host = host(name);
        let json: serde_json::Value = serde_json::from_str(&loaded.files["nft.json"])
            .unwrap_or_else(|e| panic!("{name}: nft.json: {e}"));
        let foreign: Vec<ForeignRule> = host
            .routing
            .rules
            .iter()
            .filter(|r| r.protocol.as_deref() != Some("157"))
            .map(|r| ForeignRule {
                family: r.family,
                priority: Priority::from_kernel(r.priority),
                fwmark: r.fwmark,
                text: r.text.clone(),
            })
            .collect();
        let texts = symroute::kernel::marks::IptablesTexts {
            v4: loaded.files.get("iptables-save.txt").cloned(),
            v6: loaded.files.get("ip6tables-save.txt").cloned(),
        };
        let key = |u: &symroute::plan::diff::MarkUser| (u.text.clone(), u.bits);
        let mut apply: Vec<_> =
            symroute::kernel::marks::foreign_mark_users(&json, &foreign, &texts)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .iter()
                .map(key)
                .collect();
        let mut doctor: Vec<_> = symroute::explain::doctor::mark_users(&host)
            .iter()
            .map(key)
            .collect();
        apply.sort();
        doctor.sort();
        assert_eq!(apply, doctor, "{name}");
        seen += apply.len();
    }
    // The fixtures hold mark users of every kind (nft and iptables sets, copies, partial
    // tests, ip rules): the comparison is not over empty lists.
    assert!(seen > 40, "only {seen} mark users in the fixtures");
}
