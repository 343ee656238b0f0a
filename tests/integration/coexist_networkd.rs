//! Beside systemd-networkd, the real one (systemd 252 here), owning seed 1's uplinks:
//! their addresses and main's default route come from `.network` files, and networkd
//! runs inside the firewall's namespace (`/sys` read-only so it does not wait for udev,
//! its state directory /run/systemd/netif and the D-Bus directory on private tmpfs in a
//! mount namespace of its own, so nothing of the host's or another test's networkd is
//! seen or touched; config under /etc/netns/NS/systemd/, removed afterwards).
//!
//! With `symroute run`: seed 1 fails without symroute and works with it; after a networkd
//! restart and after a carrier loss and return it works again within 3 s; and the two
//! never fight (a handful of applies, none once things settle). `doctor` reports
//! networkd's ManageForeignRoutingPolicyRules=/ManageForeignRoutes= (yes, networkd's
//! default), and not once contrib/networkd/symroute.conf is in networkd.conf.d — with
//! which networkd and symroute still work together. Needs root, `nft`, `ip`,
//! `conntrack` and /lib/systemd/systemd-networkd.

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::{require_root, symroute_in};
use symroute::lab::{tcp_probe, EtcNetns, Netns, TwoIsps};

const CONFIG: &str = include_str!("../../examples/two-isps-firewall.toml");
const NETWORKD: &str = "/lib/systemd/systemd-networkd";
const DROP_IN: &str = include_str!("../../contrib/networkd/symroute.conf");

/// up1 and up2 as seed 1 has them, now networkd's: main's default route via ISP2.
const UP1: &str = "[Match]\nName=up1\n\n[Network]\nAddress=203.0.113.2/24\nAddress=2001:db8:1::2/64\nIPv6AcceptRA=no\nLinkLocalAddressing=ipv6\n";
const UP2: &str = "[Match]\nName=up2\n\n[Network]\nAddress=198.51.100.2/24\nAddress=2001:db8:2::2/64\nGateway=198.51.100.1\nGateway=2001:db8:2::1\nIPv6AcceptRA=no\nLinkLocalAddressing=ipv6\n";

/// systemd-networkd running in `ns`, stopped on drop.
struct Networkd {
    child: Child,
    log: std::path::PathBuf,
}

impl Networkd {
    fn start(ns: &Netns, log: std::path::PathBuf) -> Networkd {
        // A private mount namespace: /sys read-only (no udev wait), and tmpfs over its
        // state directory and D-Bus's, owned by the user it drops to.
        let script = format!(
            "set -e; mount -o remount,ro /sys; \
             u=$(id -u systemd-network); g=$(id -g systemd-network); \
             mount -t tmpfs -o mode=0755,uid=$u,gid=$g tmpfs /run/systemd/netif; \
             if [ -d /run/dbus ]; then mount -t tmpfs tmpfs /run/dbus; fi; \
             exec {NETWORKD}"
        );
        let out = std::fs::File::create(&log).expect("networkd log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "unshare",
                "-m",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .env("SYSTEMD_LOG_TARGET", "console")
            .env("SYSTEMD_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start systemd-networkd");
        Networkd { child, log }
    }

    fn stop(&mut self) {
        support::daemon::stop(&mut self.child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Networkd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Waits until `ok`; how long it took. On a timeout the failure shows `fw`'s routing
/// state (rules, routes, the uplink, conntrack).
fn wait_until(fw: &Netns, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() >= limit {
            let state = fw
                .sh("ip rule; ip route show table all | grep -v '^local\\|^broadcast'; ip -s link show up1; ip neigh; conntrack -L 2>&1 | head -20")
                .unwrap_or_else(|e| e.to_string());
            panic!("{what}: not within {limit:?}\n{state}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// networkd has configured both uplinks: addresses and main's default route via ISP2.
fn configured(fw: &Netns) -> bool {
    let addrs = fw.exec(&["ip", "-4", "addr", "show"]).unwrap_or_default();
    let routes = fw.exec(&["ip", "-4", "route", "show"]).unwrap_or_default();
    addrs.contains("203.0.113.2/24")
        && addrs.contains("198.51.100.2/24")
        && routes.contains("default via 198.51.100.1 dev up2")
}

fn smtp_answers(lab: &TwoIsps) -> bool {
    let smtp = SocketAddr::from((TwoIsps::FW_UP1_V4, TwoIsps::SMTP_PORT));
    tcp_probe(&lab.client, smtp, Duration::from_millis(300)).is_ok()
}

fn doctor_codes(fw: &Netns) -> String {
    let run = symroute_in(fw, "doctor", None, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}{}", run.stdout, run.stderr));
    json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == "networkd-manages-foreign")
        .map(|f| format!("{}\n", f["rule"].as_str().unwrap_or_default()))
        .collect()
}

#[test]
fn symroute_run_beside_systemd_networkd() {
    require_root();
    assert!(
        std::path::Path::new(NETWORKD).exists(),
        "{NETWORKD} is needed (package systemd; scripts/setup installs it)"
    );
    let lab = TwoIsps::build().expect("build TwoIsps");
    // What networkd will own: the uplinks' addresses and main's default routes.
    lab.fw
        .sh("ip route del default && ip -6 route del default && ip addr flush dev up1 && ip addr flush dev up2")
        .expect("hand the uplinks to networkd");
    let etc: EtcNetns = lab.fw.etc().expect("/etc/netns/NS");
    etc.write("systemd/network/10-up1.network", UP1)
        .expect("up1");
    etc.write("systemd/network/20-up2.network", UP2)
        .expect("up2");
    let log = std::env::temp_dir().join(format!("symroute-networkd-{}.log", std::process::id()));
    let mut networkd = Networkd::start(&lab.fw, log.clone());
    wait_until(
        &lab.fw,
        "networkd configures up1 and up2",
        Duration::from_secs(10),
        || configured(&lab.fw),
    );
    let _services = lab.start_services().expect("services");

    // doctor: networkd removes foreign rules and routes by default.
    let found = doctor_codes(&lab.fw);
    assert!(
        found.contains("ManageForeignRoutingPolicyRules=yes")
            && found.contains("ManageForeignRoutes=yes"),
        "doctor:\n{found}"
    );

    // Seed 1 without symroute: the client beyond ISP1 gets no answer (main's default is
    // ISP2's).
    assert!(!smtp_answers(&lab), "answered without symroute");
    let d = Daemon::start(&lab.fw, CONFIG);
    let applies = |d: &Daemon| d.log().matches("change(s) applied").count();
    wait_until(
        &lab.fw,
        "seed 1 answered with symroute",
        Duration::from_secs(3),
        || smtp_answers(&lab),
    );

    // networkd restarts: it keeps symroute's rules and routes (protocol 157); answered
    // again within 3 s either way. A hand-made rule (what doctor warns about) goes.
    lab.fw
        .ip("rule add pref 5000 fwmark 0x5 lookup 100")
        .expect("a hand-made rule");
    networkd.stop();
    networkd = Networkd::start(&lab.fw, log.clone());
    wait_until(
        &lab.fw,
        "networkd up again",
        Duration::from_secs(10),
        || configured(&lab.fw),
    );
    let took = wait_until(
        &lab.fw,
        "answered after a networkd restart",
        Duration::from_secs(3),
        || smtp_answers(&lab),
    );
    eprintln!(
        "after a networkd restart: answered within {} ms",
        took.as_millis()
    );
    let hand_made = |fw: &Netns| {
        fw.exec(&["ip", "rule", "show"])
            .expect("ip rule")
            .contains("5000:")
    };
    eprintln!(
        "a hand-made rule after a networkd restart with its defaults: {}",
        if hand_made(&lab.fw) {
            "kept"
        } else {
            "removed"
        }
    );

    // Carrier loss and return on up1 (ISP1's side of the cable goes down and up).
    lab.isp1.ip("link set fw0 down").expect("carrier off");
    wait_until(
        &lab.fw,
        "up1 loses its carrier",
        Duration::from_secs(3),
        || {
            lab.fw
                .exec(&["ip", "link", "show", "up1"])
                .is_ok_and(|l| l.contains("NO-CARRIER"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    lab.isp1.ip("link set fw0 up").expect("carrier on");
    let took = wait_until(
        &lab.fw,
        "answered after the carrier came back",
        Duration::from_secs(3),
        || smtp_answers(&lab),
    );
    eprintln!(
        "after carrier loss and return: answered within {} ms",
        took.as_millis()
    );

    // They never fight: a handful of applies in all, and none once things settle.
    std::thread::sleep(Duration::from_secs(1));
    let settled = applies(&d);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(applies(&d), settled, "still applying:\n{}", d.log());
    assert!(
        settled <= 8,
        "{settled} applies in all:\n{}\nnetworkd:\n{}",
        d.log(),
        networkd.log()
    );
    eprintln!("{settled} applies over start, networkd restart, carrier loss and return");

    // With the drop-in that sets both to no: doctor is quiet, and networkd still owns the
    // uplinks beside symroute.
    etc.write("systemd/networkd.conf.d/symroute.conf", DROP_IN)
        .expect("drop-in");
    assert_eq!(doctor_codes(&lab.fw), "", "doctor with the drop-in");
    networkd.stop();
    let _ = lab.fw.ip("rule del pref 5000");
    lab.fw
        .ip("rule add pref 5000 fwmark 0x5 lookup 100")
        .expect("a hand-made rule");
    networkd = Networkd::start(&lab.fw, log);
    wait_until(
        &lab.fw,
        "networkd up with the drop-in",
        Duration::from_secs(10),
        || configured(&lab.fw),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(hand_made(&lab.fw), "the drop-in keeps hand-made rules");
    wait_until(
        &lab.fw,
        "answered with the drop-in",
        Duration::from_secs(3),
        || smtp_answers(&lab),
    );
    drop(networkd);
    drop(d);
}
