//! systemd-networkd beside a policy-routing setup. networkd.conf(5): with
//! `ManageForeignRoutingPolicyRules=` / `ManageForeignRoutes=` yes (its default), networkd
//! removes rules and routes that its `.network` files do not configure (except those of
//! protocol `kernel`). networkd 252 was seen keeping symroute's (protocol 157) and a
//! hand-made `ip rule` across restarts (tests/integration/coexist_networkd.rs), but the setting is
//! what permits removal, so doctor reports it. The settings are read from the host's
//! networkd.conf and drop-ins as text (the snapshot's `networkd.conf`), later
//! assignments winning as in systemd.

use super::{Finding, Severity};
use crate::host::HostState;

const KEYS: [&str; 2] = ["ManageForeignRoutingPolicyRules", "ManageForeignRoutes"];
/// The drop-in symroute ships (contrib/networkd/symroute.conf, installed by the package
/// under /usr/share/doc/symroute/examples).
const DROP_IN: &str = "/etc/systemd/networkd.conf.d/symroute.conf";

/// Where a key was last set: its value as written and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    line: String,
    value: String,
    file: String,
}

/// The last assignment of `key` in the `[Network]` sections of `text`.
fn last_setting(text: &str, key: &str) -> Option<Setting> {
    let mut file = String::from("networkd.conf");
    let mut section = String::new();
    let mut found = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(path) = line.strip_prefix("# /") {
            // A `# PATH` line of the snapshot file (not `# PATH skipped: …`).
            if !path.contains(" skipped: ") {
                file = format!("/{path}");
            }
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != "Network" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                found = Some(Setting {
                    line: line.to_string(),
                    value: v.trim().to_string(),
                    file: file.clone(),
                });
            }
        }
    }
    found
}

/// systemd's boolean: true for 1/yes/y/true/t/on; unknown words count as the default.
fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

pub fn check(host: &HostState, out: &mut Vec<Finding>) {
    let Some(text) = &host.networkd else {
        return;
    };
    for key in KEYS {
        let set = last_setting(text, key);
        let (rule, place) = match &set {
            Some(s) if truthy(&s.value) == Some(false) => continue,
            Some(s) if truthy(&s.value) == Some(true) => (
                format!("{key}={}", s.value),
                format!("{} [Network]", s.file),
            ),
            // Unset, or a value networkd would not take: its default applies.
            _ => (
                format!("{key}=yes"),
                "networkd.conf [Network] (networkd's default)".to_string(),
            ),
        };
        let what = if key == KEYS[0] {
            "routing policy rules (`ip rule`)"
        } else {
            "routes"
        };
        out.push(Finding {
            severity: Severity::Info,
            code: "networkd-manages-foreign",
            rule,
            place,
            why: format!(
                "systemd-networkd configures links on this host, and this setting lets it remove {what} that its .network files do not configure (networkd.conf(5)), e.g. when it starts or reconfigures a link; hand-made policy routing and symroute's could go with them (networkd 252 keeps rules and routes of other protocols, such as symroute's 157). `symroute run` puts back anything removed within ~100 ms; a one-shot `symroute apply` does not"
            ),
            fix: format!(
                "let networkd leave them alone: a drop-in {DROP_IN} with `[Network]`, `ManageForeignRoutingPolicyRules=no`, `ManageForeignRoutes=no` (symroute ships it as contrib/networkd/symroute.conf), then restart systemd-networkd (it reads networkd.conf when it starts)"
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "# /etc/systemd/networkd.conf\n[Network]\n#ManageForeignRoutingPolicyRules=yes\n#ManageForeignRoutes=yes\n[DHCPv4]\n";

    #[test]
    fn the_last_assignment_in_network_wins() {
        let text = format!(
            "{MAIN}# /etc/systemd/networkd.conf.d/10-a.conf\n[Network]\nManageForeignRoutes = no\n# /usr/lib/systemd/networkd.conf.d/20-b.conf\n[Network]\nManageForeignRoutes=on\n[DHCPv4]\nManageForeignRoutes=no\n"
        );
        assert_eq!(
            last_setting(&text, "ManageForeignRoutes"),
            Some(Setting {
                line: "ManageForeignRoutes=on".into(),
                value: "on".into(),
                file: "/usr/lib/systemd/networkd.conf.d/20-b.conf".into(),
            })
        );
        assert_eq!(last_setting(MAIN, "ManageForeignRoutes"), None);
    }

    fn findings(text: Option<&str>) -> Vec<Finding> {
        let host = HostState::from_files(&Default::default(), vec![], "t").map(|mut h| {
            h.networkd = text.map(str::to_string);
            h
        });
        let mut out = Vec::new();
        check(&host.expect("empty state"), &mut out);
        out
    }

    #[test]
    fn reported_by_default_and_when_set_not_when_off() {
        assert!(findings(None).is_empty(), "no networkd, nothing to say");
        let f = findings(Some(MAIN));
        assert_eq!(
            f.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            [
                "ManageForeignRoutingPolicyRules=yes",
                "ManageForeignRoutes=yes"
            ]
        );
        assert!(f[0].place.contains("default"), "{:?}", f[0]);
        let explicit = format!("{MAIN}[Network]\nManageForeignRoutes=true\n");
        let f = findings(Some(&explicit));
        assert_eq!(f[1].rule, "ManageForeignRoutes=true");
        assert_eq!(f[1].place, "/etc/systemd/networkd.conf [Network]");
        let off = format!(
            "{MAIN}# /etc/systemd/networkd.conf.d/symroute.conf\n{}",
            include_str!("../../../../contrib/networkd/symroute.conf")
        );
        assert!(
            findings(Some(&off)).is_empty(),
            "the shipped drop-in silences it"
        );
    }
}
