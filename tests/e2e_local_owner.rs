//! End-to-end: the host's own connections steered by who opens them (`user`, `cgroup`)
//! and `symroute exec --gateway`, with real processes. Seed 1's firewall (`TwoIsps`,
//! default route via ISP2) reaches a server behind both ISPs
//! ([`TwoIsps::add_dual_homed_server`]); each ISP masquerades what it forwards, so the
//! server's greeting names the uplink a connection came by.
//!
//! Processes run in the firewall's namespace through `nsenter --net` (not `ip netns
//! exec`, which remounts /sys and would hide the cgroup tree), as another user with
//! `setpriv --reuid`, and open their connection with bash's `/dev/tcp`.
//!
//! Needs root, nft, conntrack, setpriv and nsenter. Run with `cargo test --test e2e_local_owner`.

mod support;

use std::net::IpAddr;
use std::process::Command;

use support::{require_root, symroute_in, RemoveOnDrop};
use symroute::lab::{Netns, TwoIsps};

const GATEWAYS: &str = r#"
[[gateway]]
name = "isp1"
interface = "up1"
via = "203.0.113.1"
via6 = "2001:db8:1::1"

[[gateway]]
name = "isp2"
interface = "up2"
via = "198.51.100.1"
via6 = "2001:db8:2::1"
"#;

/// A uid no process of this machine runs as (setpriv needs no passwd entry for it).
const USER: u32 = 47_017;

struct Lab {
    t: TwoIsps,
    _servers: Vec<symroute::lab::TcpServer>,
}

fn lab() -> Lab {
    require_root();
    let t = TwoIsps::build().expect("build TwoIsps");
    let servers = t.add_dual_homed_server().expect("dual-homed server");
    Lab {
        t,
        _servers: servers,
    }
}

/// Which uplink the server saw a new TCP connection come by, opened by `bash` in `ns`
/// with `wrap` before it (e.g. `setpriv --reuid=…`): "isp1", "isp2", or what went wrong.
fn uplink(ns: &Netns, wrap: &[&str], server: IpAddr) -> String {
    let script = format!("exec 3<>/dev/tcp/{server}/80 && head -n1 <&3");
    let out = Command::new("timeout")
        .arg("5")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args(wrap)
        .args(["bash", "-c", &script])
        .output()
        .expect("run nsenter");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    TwoIsps::uplink_of(&line).map_or_else(
        || {
            format!(
                "no greeting ({}): {line:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        },
        str::to_string,
    )
}

fn servers() -> [IpAddr; 2] {
    [TwoIsps::SERVER_V4.into(), TwoIsps::SERVER_V6.into()]
}

fn as_user(uid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ]
}

/// Packets the policy's nft counter counted (first packets of the connections it took).
fn policy_packets(ns: &Netns, config: &str, policy: &str) -> u64 {
    let out = symroute_in(ns, "status", Some(config), &["--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status json");
    v["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == policy))
        .and_then(|p| p["packets"].as_u64())
        .unwrap_or_else(|| panic!("no policy {policy} in {v}"))
}

#[test]
fn another_users_connections_leave_via_the_chosen_isp() {
    let lab = lab();
    let fw = &lab.t.fw;
    let user = as_user(USER);
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    // Without symroute everyone leaves by the default route.
    for server in servers() {
        assert_eq!(uplink(fw, &user, server), "isp2", "{server}");
        assert_eq!(uplink(fw, &[], server), "isp2", "{server}");
    }
    let config = format!(
        "{GATEWAYS}\n[[policy]]\nname = \"backup-user\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [\"nobody\", {USER}]\n"
    );
    let _remove = RemoveOnDrop(fw);
    symroute_in(fw, "apply", Some(&config), &[]).ok();
    for server in servers() {
        assert_eq!(uplink(fw, &user, server), "isp1", "{server}");
        assert_eq!(uplink(fw, &[], server), "isp2", "root, {server}");
    }
    // By name too: nobody (65534 on Debian and Ubuntu).
    let nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    assert_eq!(uplink(fw, &nobody, TwoIsps::SERVER_V4.into()), "isp1");
    assert_eq!(policy_packets(fw, &config, "backup-user"), 3);
}
