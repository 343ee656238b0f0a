//! `symroute import` end to end, in the seed 2 namespaces (needs root and haproxy): the
//! seed's accepted answer installed by hand on the relay works; its snapshot imports to a
//! gateway and a reply_via policy; with the hand-made rules gone the proxied connection
//! fails again; the imported file, applied by symroute, makes both paths work again, and
//! the relay still sees the client's own address.
//!
//! Run with `cargo test --test integration import_live::`.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::sa;
use support::{require_root, symroute};
use symroute::explain::host::HostState;
use symroute::explain::import::import;
use symroute::lab::{tcp_probe, Netns, ProxyRelay};

const DIVERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/haproxy-divert.toml");

/// How long a probe that must fail gets.
const FAIL: Duration = Duration::from_millis(1500);
/// How long a probe that must succeed gets.
const OK: Duration = Duration::from_millis(3000);

/// Runs `symroute ARGS`, which must succeed; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let r = symroute(args);
    assert_eq!(
        r.code,
        0,
        "symroute {} failed:\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// `symroute remove` in each namespace when dropped (declared after the topology, so it
/// runs before the namespaces go): nothing left in /run/symroute for deleted namespaces.
struct Removed<'a> {
    namespaces: Vec<&'a Netns>,
    dir: PathBuf,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let r = symroute(&["remove", "--netns", ns.name()]);
            if r.code != 0 {
                eprintln!("symroute remove in {} failed: {}", ns.name(), r.stderr);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn expect_ok(what: &str, from: &Netns, dst: SocketAddr, prefix: &str) -> String {
    match tcp_probe(from, dst, OK) {
        Ok(line) if line.starts_with(prefix) => {
            eprintln!("  {what}: ok: {line}");
            line
        }
        Ok(line) => panic!("{what}: expected {prefix:?}…, got {line:?}"),
        Err(e) => panic!("{what}: must work: {e:#}"),
    }
}

fn expect_fail(what: &str, from: &Netns, dst: SocketAddr) {
    match tcp_probe(from, dst, FAIL) {
        Ok(line) => panic!("{what}: must fail, but answered {line:?}"),
        Err(e) => eprintln!("  {what}: fails as expected: {e:#}"),
    }
}

fn load_state(dir: &Path) -> HostState {
    let loaded = symroute::kernel::snapshot::load(dir).expect("load snapshot");
    HostState::from_files(&loaded.files, loaded.missing, "relay snapshot").expect("parse snapshot")
}

#[test]
fn seed004_hand_made_relay_is_imported_and_replaced() {
    require_root();
    let t = ProxyRelay::build().expect("build ProxyRelay");
    let _svc = t.start_services().expect("services");
    let dir = std::env::temp_dir().join(format!("symroute-import-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _removed = Removed {
        namespaces: vec![&t.relay, &t.proxy],
        dir: dir.clone(),
    };
    let c = &t.client;
    let proxied = sa(ProxyRelay::PROXY_V4, ProxyRelay::SMTP_PORT);
    let direct = sa(ProxyRelay::RELAY_V4, ProxyRelay::SMTP_PORT);
    let client = format!("hello {} ", ProxyRelay::CLIENT_V4);

    // The HAProxy host: the divert, by symroute.
    run_ok(&["apply", "-c", DIVERT, "--netns", t.proxy.name()]);

    // The relay: the seed's accepted answer, by hand, exactly as the answer writes it.
    let mac = ProxyRelay::PROXY_MAC;
    t.relay
        .sh(&format!(
            "iptables -t mangle -A PREROUTING -j CONNMARK --restore-mark
             iptables -t mangle -A PREROUTING -m mark ! --mark 0 -j RETURN
             iptables -t mangle -A PREROUTING ! -s 10.0.0.0/8 -m mac --mac-source {mac} -j MARK --set-mark 254
             iptables -t mangle -A PREROUTING -j CONNMARK --save-mark
             iptables -t mangle -A OUTPUT -j CONNMARK --restore-mark"
        ))
        .expect("iptables on the relay");
    t.relay
        .ip("rule add fwmark 254 lookup 1000254")
        .expect("ip rule");
    t.relay
        .ip(&format!(
            "route add table 1000254 default via {}",
            ProxyRelay::PROXY_V4
        ))
        .expect("ip route");
    eprintln!("hand-made setup:");
    expect_ok("proxied (hand-made)", c, proxied, &client);
    expect_ok("direct (hand-made)", c, direct, &client);

    // Import it from a snapshot of the relay.
    let snap = dir.join("snapshot");
    let snap_s = snap.display().to_string();
    eprint!(
        "{}",
        run_ok(&["snapshot", &snap_s, "--netns", t.relay.name()])
    );
    let imported = import(&load_state(&snap));
    eprintln!("imported:\n{}", imported.toml);
    assert!(
        imported.unexpressed.is_empty(),
        "the seed answer is fully expressible:\n{}",
        imported.report()
    );
    symroute::config::parse_str(&imported.toml, "imported").expect("imported config validates");
    let body = &imported.toml[imported
        .toml
        .find("\n# From table")
        .expect("a gateway block")..];
    assert_eq!(
        body,
        format!(
            "
# From table 1000254, looked up by `fwmark 0xfe` (IPv4).
[[gateway]]
name = \"table-1000254\"
interface = \"eth0\"
via = \"{}\"

[[policy]]
name = \"reply-via-table-1000254\"
reply_via = \"table-1000254\"
[policy.match]
source_mac = [\"{mac}\"]
not_source = [\"10.0.0.0/8\"]
",
            ProxyRelay::PROXY_V4
        )
    );
    for replaced in [
        "-A PREROUTING ! -s 10.0.0.0/8 -m mac --mac-source 02:03:04:05:06:07 -j MARK --set-xmark 0xfe/0xffffffff",
        "-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        "ip rule: 32765: from all fwmark 0xfe lookup 1000254",
        "ip route: default via 198.51.100.10 dev eth0 table 1000254",
    ] {
        assert!(
            imported.toml.contains(replaced),
            "the file must list `{replaced}` as replaced:\n{}",
            imported.toml
        );
    }
    let config = dir.join("imported.toml");
    std::fs::write(&config, &imported.toml).expect("write imported.toml");

    // Remove what was made by hand: the proxied path breaks again.
    t.relay
        .sh("iptables -t mangle -F
             iptables -t mangle -X
             ip rule del fwmark 254 lookup 1000254
             ip route flush table 1000254")
        .expect("remove the hand-made setup");
    eprintln!("hand-made setup removed:");
    expect_fail("proxied (nothing on the relay)", c, proxied);
    expect_ok("direct (nothing on the relay)", c, direct, &client);

    // The imported file, applied by symroute, does what the hand-made setup did.
    let config_s = config.display().to_string();
    eprint!(
        "{}",
        run_ok(&["apply", "-c", &config_s, "--netns", t.relay.name()])
    );
    eprintln!("imported config applied:");
    let answer = expect_ok("proxied (imported)", c, proxied, &client);
    expect_ok("direct (imported)", c, direct, &client);
    assert!(
        answer.starts_with(&format!("hello {} ", ProxyRelay::CLIENT_V4)),
        "the relay must see the client's own address through the proxy: {answer:?}"
    );
    // A second apply changes nothing: the import is a stable config.
    let again = run_ok(&["apply", "-c", &config_s, "--netns", t.relay.name()]);
    assert!(again.contains("no changes"), "second apply: {again}");
}
