//! Issue 18, item 3: a setup made by the real Shorewall (Debian's `shorewall` 5.2) reads
//! right. Seed 1's firewall (`TwoIsps`) gets two providers `track,balance` and a DNAT
//! from Shorewall, which makes SMTP arriving via ISP1 work, local and DNAT'd. Then:
//! `symroute doctor` finds no error or warning in it; `symroute import` names the gateways
//! as Shorewall names their tables (isp1, isp2) and turns its `balance` table into a
//! share; and once Shorewall is gone (its rules, ip rules, tables and names; the host's
//! own default route and DNAT put back, which breaks SMTP via ISP1 again), the imported
//! config, applied, answers SMTP via ISP1 again and shares the LAN's new connections.
//! Needs root and `scripts/setup` (shorewall installed, its service never started).
//!
//! Shorewall runs only inside the firewall's namespace, with everything it writes kept
//! away from the host: its config is `/etc/netns/FW/shorewall/` and the table names it
//! writes go to `/etc/netns/FW/iproute2/rt_tables` (`ip netns exec FW` bind-mounts both
//! over /etc, in a mount namespace of its own; the script refuses to run without them),
//! and its state directory (/var/lib/shorewall) is a per-test temporary directory bound
//! over it the same way, so concurrent runs never share state. All of it is removed
//! afterwards; the host's own rt_tables is checked unchanged.

use crate::support;

use std::path::PathBuf;
use std::time::Duration;

use support::sa;
use support::{require_root, symroute_in, RemoveOnDrop};
use symroute::lab::{tcp_probe, EtcNetns, Netns, TwoIsps};

const ZONES: &str = "fw\tfirewall\nnet\tipv4\nloc\tipv4\n";
const INTERFACES: &str = "?FORMAT 2\nnet\tup1\t-\nnet\tup2\t-\nloc\tlan0\t-\n";
const POLICY: &str = "$FW\tall\tACCEPT\nloc\tall\tACCEPT\nnet\tall\tDROP\nall\tall\tREJECT\n";
const RULES: &str = "?SECTION NEW\n\
ACCEPT\tnet\t$FW\ttcp\t25\n\
ACCEPT\tnet\t$FW\ticmp\n\
DNAT\tnet\tloc:10.77.0.10:25\ttcp\t2525\n";
/// Seed 000's two ISPs as Shorewall providers: marks and table numbers 1 and 2.
const PROVIDERS: &str = "#NAME\tNUMBER\tMARK\tDUPLICATE\tINTERFACE\tGATEWAY\tOPTIONS\n\
isp1\t1\t1\t-\tup1\t203.0.113.1\ttrack,balance\n\
isp2\t2\t2\t-\tup2\t198.51.100.1\ttrack,balance\n";
const SNAT: &str = "MASQUERADE\t10.77.0.0/24\tup1\nMASQUERADE\t10.77.0.0/24\tup2\n";

const FAIL: Duration = Duration::from_secs(1);
const OK: Duration = Duration::from_secs(3);

/// Debian's shorewall.conf with what a namespace and providers need: no host log files,
/// and ROUTE_FILTER=No (Shorewall refuses providers with USE_DEFAULT_RT=Yes otherwise).
fn shorewall_conf() -> String {
    let base = std::fs::read_to_string("/etc/shorewall/shorewall.conf")
        .or_else(|_| std::fs::read_to_string("/usr/share/shorewall/configfiles/shorewall.conf"))
        .expect("shorewall.conf from Debian's shorewall package: run scripts/setup");
    base.lines()
        .map(|l| {
            if l.starts_with("STARTUP_LOG=") {
                "STARTUP_LOG=".to_string()
            } else if l.starts_with("LOGFILE=") {
                "LOGFILE=/dev/null".to_string()
            } else if l.starts_with("ROUTE_FILTER=") {
                "ROUTE_FILTER=No".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Shorewall configured in the namespace `ns`; `clear`ed and its files removed on drop.
struct Shorewall<'a> {
    ns: &'a Netns,
    etc: EtcNetns,
    var: PathBuf,
    host_names: String,
}

impl<'a> Shorewall<'a> {
    fn configure(ns: &'a Netns) -> Shorewall<'a> {
        assert!(
            std::path::Path::new("/usr/share/shorewall/version").exists()
                && std::path::Path::new("/var/lib/shorewall").is_dir(),
            "Debian's shorewall package is missing: run scripts/setup"
        );
        let etc = ns.etc().expect("/etc/netns/NS");
        let var = std::env::temp_dir().join(format!("symroute-shorewall-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&var);
        std::fs::create_dir_all(&var).expect("state dir");
        let host_names = std::fs::read_to_string("/etc/iproute2/rt_tables").unwrap_or_default();
        // The namespace's own names file, which Shorewall (KEEP_RT_TABLES=No) rewrites.
        etc.write("iproute2/rt_tables", &host_names)
            .expect("rt_tables");
        for (file, text) in [
            ("shorewall.conf", shorewall_conf().as_str()),
            ("zones", ZONES),
            ("interfaces", INTERFACES),
            ("policy", POLICY),
            ("rules", RULES),
            ("providers", PROVIDERS),
            ("snat", SNAT),
            // No kernel modules loaded from the namespace: they would be the host's.
            ("modules", ""),
            ("helpers", ""),
        ] {
            etc.write(&format!("shorewall/{file}"), text)
                .expect("shorewall config");
        }
        Shorewall {
            ns,
            etc,
            var,
            host_names,
        }
    }

    /// `shorewall CMD` inside the namespace, with its /etc and state directory there.
    fn run(&self, cmd: &str) -> anyhow::Result<String> {
        self.ns.sh(&format!(
            "mountpoint -q /etc/iproute2 && mountpoint -q /etc/shorewall || \
               {{ echo 'no /etc/netns overlay: refusing to run shorewall' >&2; exit 1; }}\n\
             mount --bind '{}' /var/lib/shorewall\n\
             mountpoint -q /var/lib/shorewall\n\
             shorewall {cmd} 2>&1",
            self.var.display()
        ))
    }

    /// Shorewall gone, as after `apt-get purge shorewall` and a reboot: `shorewall
    /// clear`, then what clear leaves (its tables' routes, its host routes to the gateways,
    /// the empty iptables-nft tables, the table names, its config, the loosened rp_filter)
    /// removed, and the host's own default route and DNAT put back.
    fn remove(&self, lab: &TwoIsps) {
        self.run("clear").expect("shorewall clear");
        lab.fw
            .sh("for t in 1 2 250; do ip route flush table $t; done\n\
                 ip route del 203.0.113.1 dev up1 2>/dev/null || true\n\
                 ip route del 198.51.100.1 dev up2 2>/dev/null || true\n\
                 for t in raw mangle nat filter; do nft delete table ip $t 2>/dev/null || true; done\n\
                 ip route replace default via 198.51.100.1 dev up2\n\
                 sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.up1.rp_filter=1")
            .expect("remove what shorewall left");
        self.etc
            .write("iproute2/rt_tables", &self.host_names)
            .expect("names gone");
        let _ = std::fs::remove_dir_all(self.etc.path().join("shorewall"));
        lab.fw
            .nft(TwoIsps::DNAT_V4_NFT)
            .expect("the host's DNAT back");
    }
}

impl Drop for Shorewall<'_> {
    fn drop(&mut self) {
        if self.etc.path().join("shorewall").exists() {
            let _ = self.run("clear");
        }
        let _ = std::fs::remove_dir_all(&self.var);
    }
}

/// SMTP from the client beyond ISP1: to the firewall itself, and DNAT'd to the LAN.
fn smtp_via_isp1(lab: &TwoIsps, timeout: Duration) -> [(&'static str, bool); 2] {
    let c = &lab.client;
    let ok = |port| {
        tcp_probe(c, sa(TwoIsps::FW_UP1_V4, port), timeout)
            .map(|l| l.starts_with("hello 192.0.2.10 "))
            .unwrap_or(false)
    };
    [("local :25", ok(25)), ("DNAT :2525", ok(2525))]
}

/// Which ISP each of `n` new connections from the LAN to the dual-homed server took.
fn lan_paths(lab: &TwoIsps, n: usize) -> (usize, usize, usize) {
    let (mut one, mut two, mut none) = (0, 0, 0);
    for _ in 0..n {
        match lab.lan_path_now(false, OK) {
            Some("isp1") => one += 1,
            Some("isp2") => two += 1,
            _ => none += 1,
        }
    }
    (one, two, none)
}

#[test]
fn shorewall_setup_reads_right_and_imports_into_a_working_config() {
    require_root();
    let host_names_before = std::fs::read("/etc/iproute2/rt_tables").unwrap_or_default();
    let lab = TwoIsps::build().expect("lab");
    let _services = lab.start_services().expect("services");
    let _server = lab.add_dual_homed_server().expect("dual-homed server");

    let without = smtp_via_isp1(&lab, FAIL);
    eprintln!("seed 1 as built (default via ISP2, nothing else): {without:?}");
    assert!(without.iter().all(|(_, ok)| !ok), "{without:?}");

    // Shorewall makes the DNAT itself: the lab's own nft DNAT out of its way.
    lab.fw
        .exec(&["nft", "delete", "table", "ip", "labnat"])
        .expect("lab DNAT out");
    let sw = Shorewall::configure(&lab.fw);
    let out = sw.run("start").expect("shorewall start");
    assert!(out.contains("done."), "{out}");
    let rules = lab.fw.exec(&["ip", "rule"]).expect("ip rule");
    assert!(
        rules.contains("lookup isp1") && rules.contains("lookup balance"),
        "Shorewall's providers, named in the namespace's rt_tables:\n{rules}"
    );
    let with_shorewall = smtp_via_isp1(&lab, OK);
    eprintln!("with Shorewall: {with_shorewall:?}");
    assert!(
        with_shorewall.iter().all(|(_, ok)| *ok),
        "{with_shorewall:?}"
    );
    eprintln!(
        "with Shorewall, LAN → server over 20 new connections (isp1, isp2, none): {:?}",
        lan_paths(&lab, 20)
    );

    // doctor: nothing wrong, the FORWARD reset is a note.
    let d = symroute_in(&lab.fw, "doctor", None, &["--json"]);
    eprintln!(
        "doctor on Shorewall:\n{}",
        symroute_in(&lab.fw, "doctor", None, &[]).stdout
    );
    assert_eq!(
        d.code, 0,
        "no error-level finding:\n{}{}",
        d.stdout, d.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&d.stdout).expect("doctor --json");
    let findings = v["findings"].as_array().expect("findings");
    assert!(
        findings.iter().all(|f| f["severity"] == "info"),
        "{}",
        d.stdout
    );
    assert!(
        findings
            .iter()
            .any(|f| f["code"] == "mark-reset-after-routing"
                && f["rule"].as_str().unwrap_or("").contains("-A FORWARD")),
        "{}",
        d.stdout
    );

    // import: gateways named isp1/isp2, replies via the arrival ISP, balance as a share.
    let imp = symroute_in(&lab.fw, "import", None, &[]).ok();
    eprintln!("import of Shorewall:\n{}{}", imp.stdout, imp.stderr);
    let toml = imp.stdout;
    let m = symroute::config::parse_str(&toml, "imported").expect("imported config validates");
    let names: Vec<&str> = m.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["isp1", "isp2"], "{toml}");
    assert!(
        toml.contains("name = \"balance\"\nroute_via = { \"isp1\" = 1, \"isp2\" = 1 }"),
        "{toml}"
    );
    for gone in ["routemark", "--restore-mark", "lookup balance"] {
        assert!(
            !imp.stderr.contains(gone),
            "`{gone}` is expressed, not reported:\n{}",
            imp.stderr
        );
    }

    // Shorewall removed: the host is back to seed 1's trouble.
    sw.remove(&lab);
    let rules = lab.fw.exec(&["ip", "rule"]).expect("ip rule");
    assert_eq!(
        rules.lines().count(),
        3,
        "only the kernel's rules:\n{rules}"
    );
    let removed = smtp_via_isp1(&lab, FAIL);
    eprintln!("Shorewall removed (default via ISP2, DNAT back): {removed:?}");
    assert!(removed.iter().all(|(_, ok)| !ok), "{removed:?}");

    // The imported config applied.
    let _remove = RemoveOnDrop(&lab.fw);
    symroute_in(&lab.fw, "apply", Some(&toml), &[]).ok();
    let with_symroute = smtp_via_isp1(&lab, OK);
    eprintln!("imported config applied: {with_symroute:?}");
    assert!(with_symroute.iter().all(|(_, ok)| *ok), "{with_symroute:?}");
    let (one, two, none) = lan_paths(&lab, 40);
    eprintln!("imported config, LAN → server over 40 new connections: isp1 {one}, isp2 {two}, none {none}");
    assert_eq!(none, 0);
    assert!(
        one >= 5 && two >= 5,
        "balance shares new connections 1:1: isp1 {one}, isp2 {two}"
    );

    drop(sw);
    assert_eq!(
        std::fs::read("/etc/iproute2/rt_tables").unwrap_or_default(),
        host_names_before,
        "the host's rt_tables is untouched"
    );
}
