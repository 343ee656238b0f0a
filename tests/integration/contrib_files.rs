//! The monitoring files in `contrib/`: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`: each alert fires on the series that
//! should fire it, with its labels and annotations), and the Grafana dashboard is JSON
//! with a panel for each figure it promises. (tests/integration/daemon_metrics.rs checks that every
//! metric both query is on a real metrics page.) Needs `promtool` (Debian's prometheus
//! package; `scripts/setup` installs it without starting its service); no root.

use std::process::Command;

fn promtool(args: &[&str], dir: &str) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed for this test ({e}); scripts/setup installs it (package prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_alerting_rules_pass_promtool_check() {
    promtool(
        &["check", "rules", "symroute-alerts.yml"],
        "contrib/prometheus",
    );
}

#[test]
fn the_alerts_fire_on_their_series() {
    promtool(
        &["test", "rules", "symroute-alerts.test.yml"],
        "contrib/prometheus",
    );
}

#[test]
fn the_rules_alert_on_what_the_issue_names() {
    let rules = std::fs::read_to_string("contrib/prometheus/symroute-alerts.yml").unwrap();
    for alert in [
        "SymrouteGatewayDown",
        "SymrouteFailoverStorm",
        "SymrouteReloadFailed",
        "SymrouteApplyErrors",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
}

#[test]
fn the_dashboard_is_json_with_a_panel_per_figure() {
    let text = std::fs::read_to_string("contrib/grafana/symroute.json").expect("read");
    let d: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(d["uid"], "symroute");
    let panels = d["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect();
    for metric in [
        "symroute_gateway_up",
        "symroute_probe_rtt_seconds",
        "symroute_probe_loss_ratio",
        "symroute_connections",
        "symroute_failovers_total",
        "symroute_reconcile_duration_seconds_bucket",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
    // Panels do not overlap on Grafana's 24-column grid.
    let mut cells = std::collections::BTreeSet::new();
    for p in panels {
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panels overlap at {cx},{cy}");
            }
        }
    }
}

/// keepalived's notify scripts call the binary the units run (and the package installs):
/// a different path fails silently there, and an HA pair with `ha_pair = true` then
/// never hears it is master.
#[test]
fn keepalived_calls_the_binary_the_units_run() {
    let exec = |unit: &str| -> String {
        let text =
            std::fs::read_to_string(format!("{}/contrib/{unit}", env!("CARGO_MANIFEST_DIR")))
                .expect("unit");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart="))
            .to_string();
        line.split_whitespace().next().expect("binary").to_string()
    };
    let bin = exec("symroute.service");
    assert_eq!(bin, exec("symroute-apply.service"));
    assert_eq!(bin, exec("symroute@.service"));
    let ka = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/ha/keepalived.conf"
    ))
    .expect("keepalived.conf");
    let notify: Vec<&str> = ka
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("notify_"))
        .collect();
    assert_eq!(notify.len(), 4, "{notify:#?}");
    for l in notify {
        assert!(
            l.contains(&format!("\"{bin} ha ")),
            "{l} does not call {bin}"
        );
    }
}

/// symroute@.service is symroute.service for a named network namespace: every line of the
/// daemon unit's [Service] section (its sandbox above all) is in the template too, apart
/// from ExecStart, which names the instance's config; and the template joins the
/// namespace with NetworkNamespacePath=, so it needs no CAP_SYS_ADMIN, and names it to
/// the hooks in SYMROUTE_NETNS.
#[test]
fn the_namespace_template_keeps_the_daemon_units_sandbox() {
    let service = |unit: &str| -> Vec<String> {
        let text =
            std::fs::read_to_string(format!("{}/contrib/{unit}", env!("CARGO_MANIFEST_DIR")))
                .expect("unit");
        text.split("[Service]")
            .nth(1)
            .and_then(|s| s.split("[Install]").next())
            .expect("[Service] section")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let daemon = service("symroute.service");
    let template = service("symroute@.service");
    for line in &daemon {
        if line.starts_with("ExecStart=") {
            continue;
        }
        assert!(
            template.contains(line),
            "symroute@.service lacks `{line}` of symroute.service"
        );
    }
    for want in [
        "ExecStart=/usr/sbin/symroute run -c /etc/symroute/%i.toml",
        "NetworkNamespacePath=/run/netns/%i",
        // Hooks see the namespace's name as they do under --netns.
        "Environment=SYMROUTE_NETNS=%i",
    ] {
        assert!(template.iter().any(|l| l == want), "{want}: {template:#?}");
    }
    assert!(
        !template.iter().any(|l| l.contains("CAP_SYS_ADMIN")),
        "{template:#?}"
    );
    assert_eq!(template.len(), daemon.len() + 2, "{template:#?}");
}
