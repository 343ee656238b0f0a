//! `symroute status` with no config at the default path and no daemon: what symroute has
//! applied in the namespace (its table, tagged rules and routes, counters, the sysctls it
//! changed), as text and as JSON, instead of failing; and "nothing" where nothing is.
//! Needs root, `nft`, `ip`, `conntrack`; and no /etc/symroute/symroute.toml on the host.

use crate::support;

use support::{symroute, two_uplinks, Applied};

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");

#[test]
fn status_without_a_config_shows_what_is_applied() {
    assert!(
        !std::path::Path::new("/etc/symroute/symroute.toml").exists(),
        "this test needs no config at the default path"
    );
    let (fw, _isp) = two_uplinks("stnocfg");
    let empty = symroute(&["status", "--netns", fw.name()]).ok();
    assert!(
        empty
            .stdout
            .contains("no config at /etc/symroute/symroute.toml")
            && empty.stdout.contains("not applied: nothing of symroute's"),
        "{}",
        empty.stdout
    );

    let _applied = Applied::apply(&fw, CONFIG);
    let text = symroute(&["status", "--netns", fw.name()]).ok().stdout;
    for want in [
        "applied: nftables table inet symroute (fingerprint ",
        "lookup 42025",
        "table 42025",
        "p0_answer_on_isp1",
        "net.ipv4.icmp_errors_use_inbound_ifaddr = 1 (was 0)",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &symroute(&["status", "--netns", fw.name(), "--json"])
            .ok()
            .stdout,
    )
    .expect("JSON");
    assert_eq!(json["config"], serde_json::Value::Null);
    assert_eq!(json["applied"], true);
    assert!(json["rules"].as_array().unwrap().len() >= 4, "{json}");
    assert!(json["routes"].as_array().unwrap().len() >= 2, "{json}");
    assert!(json["counters"]["p0_answer_on_isp1"]["packets"].is_u64());
    assert_eq!(
        json["sysctls"]["net.ipv4.icmp_errors_use_inbound_ifaddr"]["now"],
        "1"
    );
    // symroute's own records come along: no `apply --confirm` pending or done here.
    assert_eq!(
        json["confirm"]["pending"],
        serde_json::Value::Null,
        "{json}"
    );
    assert!(json.get("ha").is_none(), "{json}");

    // With -c, the usual status of that config.
    let dir = support::TempDir::new("stnocfg");
    let path = dir.file("c.toml", CONFIG.as_bytes(), 0o644);
    let with = symroute(&["status", "--netns", fw.name(), "-c", path.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(with.starts_with("applied, matches the config"), "{with}");
}

/// The package installs a commented template at the default path, which defines nothing:
/// status with it shows people what symroute has applied here (as with no config), not
/// an empty config's view that calls whatever is applied "differs"; `--json` keeps its
/// shape.
#[test]
fn status_with_the_packages_template_shows_what_is_applied() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/symroute.toml");
    let (fw, _isp) = two_uplinks("sttmpl");
    let status = |json: bool| {
        let mut args = vec!["status", "--netns", fw.name(), "-c", template];
        if json {
            args.push("--json");
        }
        symroute(&args).ok().stdout
    };
    let empty = status(false);
    assert!(
        empty.contains("symroute.toml defines no gateway or policy yet")
            && empty.contains("not applied: nothing of symroute's"),
        "{empty}"
    );
    let _applied = Applied::apply(&fw, CONFIG);
    let text = status(false);
    for want in [
        "applied: nftables table inet symroute (fingerprint ",
        "lookup 42025",
        "p0_answer_on_isp1",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    // `--json` keeps the one shape scripts and `doctor --peer` read (the mark map).
    let json: serde_json::Value = serde_json::from_str(&status(true)).expect("JSON");
    assert!(json["gateways"].is_array(), "{json}");
    assert!(json["marks"]["digest"].is_string(), "{json}");
}

/// A control socket whose daemon does not answer (it drops every connection): a daemon
/// may well run here, so status says it could not ask and shows the config's usual view,
/// not "no `symroute run` here" with what is applied.
#[test]
fn a_daemon_that_does_not_answer_is_not_taken_for_none() {
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/symroute.toml");
    let (fw, _isp) = two_uplinks("stunr");
    let path = symroute::lab::in_netns(fw.name(), symroute::kernel::state::socket_path)
        .expect("enter")
        .expect("socket path");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _gone = Gone(path.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropper = {
        let done = done.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                drop(c);
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
            }
        })
    };
    let r = symroute(&["status", "--netns", fw.name(), "-c", template]);
    // The dropping thread ends (and closes the socket) on one more connection.
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::os::unix::net::UnixStream::connect(&path);
    dropper.join().expect("dropper");
    assert!(
        r.stderr.contains("no live state from the daemon"),
        "{}",
        r.show()
    );
    assert!(
        !r.stdout.contains("defines no gateway or policy yet"),
        "{}",
        r.show()
    );
}
