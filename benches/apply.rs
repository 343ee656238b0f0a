//! How long `symroute apply` takes, end to end, as a user runs it: the release binary,
//! `symroute apply -c X --netns NS`, wall clock from spawn to exit.
//!
//!     cargo bench -j2 --bench apply
//!
//! Cases: the three example configs (each in a namespace holding the interfaces it
//! names), and a generated config with 10,000 selector items over 64 gateways. For each:
//! "first apply" (10 runs, `symroute remove` untimed between them) and "no-op re-apply"
//! (10 runs against an already applied namespace: `kernel::noop`, inside apply, proves
//! them no-ops without listing nftables, checking conflicts or diffing). Then the phases of the 10k config
//! in-process (`config::parse_str`, `plan::build`, `plan::diff::diff`, plus `observe`,
//! the kernel read every full apply starts with, and what the no-op proof reads), and
//! the peak RSS of one 10k apply.
//!
//! This is a program that PRINTS figures; it never fails because something is slow.
//! Needs root, `ip` and `nft`. Namespaces are deleted on exit, also on failure.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use symroute::lab::{in_netns, veth, Netns};

const RUNS: usize = 10;
const TARGET_SEED_MS: f64 = 30.0;
const TARGET_BIG_MS: f64 = 300.0;
const TARGET_NOOP_MS: f64 = 20.0;

struct Row {
    case: String,
    items: usize,
    first: Stats,
    noop: Stats,
    first_target: f64,
    notes: Vec<String>,
}

fn main() {
    require_root(&["ip", "nft"]);
    if let Err(e) = run() {
        eprintln!("apply bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let t_all = Instant::now();
    println!("symroute apply benchmark: {SYMROUTE}");
    println!(
        "{RUNS} runs per figure; wall clock of the whole `symroute apply -c X --netns NS` process"
    );
    println!(
        "load average at start: {} (2 cores; other work on the machine inflates every figure)\n",
        loadavg()
    );
    let mut rows = Vec::new();

    // --- seed 1: firewall with two ISPs and a LAN ----------------------------------------
    {
        let ns = Netns::new("bench-fw")?;
        let _rm = RemoveOnDrop(&ns);
        for (ifname, peer) in [("up1", "up1p"), ("up2", "up2p"), ("lan0", "lan0p")] {
            veth(&ns, ifname, &ns, peer)?;
        }
        ns.ip("addr add 203.0.113.2/24 dev up1")?;
        ns.ip("addr add 2001:db8:1::2/64 dev up1")?;
        ns.ip("addr add 198.51.100.2/24 dev up2")?;
        ns.ip("addr add 2001:db8:2::2/64 dev up2")?;
        ns.ip("addr add 10.77.0.1/24 dev lan0")?;
        ns.ip("route add default via 198.51.100.1 dev up2")?;
        let cfg = ConfigFile::new(
            "two-isps",
            include_str!("../examples/two-isps-firewall.toml"),
        )?;
        rows.push(measure(
            &ns,
            "two-isps-firewall.toml",
            &cfg,
            TARGET_SEED_MS,
        )?);
        command_breakdown(&ns, "two-isps-firewall.toml, applied")?;
    }

    // --- seed 2: SMTP relay behind a transparent HAProxy ---------------------------------
    {
        let ns = Netns::new("bench-relay")?;
        let _rm = RemoveOnDrop(&ns);
        veth(&ns, "eth0", &ns, "eth0p")?;
        ns.ip("addr add 198.51.100.20/24 dev eth0")?;
        ns.ip("addr add 2001:db8:5::20/64 dev eth0")?;
        let cfg = ConfigFile::new("proxy-relay", include_str!("../examples/proxy-relay.toml"))?;
        rows.push(measure(&ns, "proxy-relay.toml", &cfg, TARGET_SEED_MS)?);
    }

    // --- seed 2: the HAProxy host (divert only; lo is up in every Netns) -----------------
    {
        let ns = Netns::new("bench-hap")?;
        let _rm = RemoveOnDrop(&ns);
        let cfg = ConfigFile::new(
            "haproxy-divert",
            include_str!("../examples/haproxy-divert.toml"),
        )?;
        rows.push(measure(&ns, "haproxy-divert.toml", &cfg, TARGET_SEED_MS)?);
    }

    // --- generated: 10,000 selector items over 64 gateways -------------------------------
    let big_text = big_config();
    let big = ConfigFile::new("big", &big_text)?;
    let (items, check_line) = checked_items(&big)?;
    println!(
        "generated config ({} bytes): `symroute check` says: {check_line}",
        big_text.len()
    );
    if items != BIG_ITEMS {
        println!("  WARNING: expected exactly {BIG_ITEMS} selector items, check counted {items}");
    }
    let ns = Netns::new("bench-big")?;
    let _rm = RemoveOnDrop(&ns);
    let t = Instant::now();
    add_big_interfaces(&ns, &ns)?;
    println!(
        "namespace {} with 64 veth pairs gw0..gw63 (peers p0..p63 up in the same namespace) built in {:.0} ms\n",
        ns.name(),
        ms(t.elapsed())
    );
    let mut row = measure(&ns, "generated 10k / 64 gw", &big, TARGET_BIG_MS)?;
    row.items = items;
    rows.push(row);

    print_table(&rows);

    // --- in-process phases for the 10k config --------------------------------------------
    phases(&ns, big_text.clone())?;
    command_breakdown(&ns, "generated 10k, applied")?;

    // --- peak RSS of one first apply of the 10k config -----------------------------------
    remove(&ns)?;
    peak_rss(&ns, &big)?;

    println!(
        "\n(total benchmark time {:.1} s)",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// First apply (10×, with an untimed remove before each) and no-op re-apply (10×).
fn measure(ns: &Netns, case: &str, cfg: &ConfigFile, first_target: f64) -> anyhow::Result<Row> {
    let mut notes = Vec::new();
    let (items, _) = checked_items(cfg)?;
    let mut first = Vec::new();
    let mut remove_times = Vec::new();
    let mut first_out = String::new();
    for _ in 0..RUNS {
        remove_times.push(remove(ns)?.wall);
        let r = apply(ns, cfg)?;
        if r.stdout.contains("no changes") {
            notes.push("a first apply after remove reported \"no changes\"".into());
        }
        first_out = r.stdout;
        first.push(r.wall);
    }
    let changes = first_out
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut noop = Vec::new();
    let mut not_noop = 0;
    for _ in 0..RUNS {
        let r = apply(ns, cfg)?;
        if !r.stdout.contains("no changes") {
            not_noop += 1;
            if not_noop == 1 {
                notes.push(format!(
                    "re-apply was NOT a no-op; it printed:\n      {}",
                    r.stdout.trim().replace('\n', "\n      ")
                ));
            }
        }
        noop.push(r.wall);
    }
    if not_noop > 0 {
        notes.push(format!("{not_noop}/{RUNS} re-applies changed something"));
    }
    let rm = stats(&remove_times);
    println!(
        "{case}: first apply \"{changes}\"; remove (untimed in the table) median {:.1} ms, max {:.1} ms",
        ms(rm.median),
        ms(rm.max)
    );
    for n in &notes {
        println!("  NOTE: {n}");
    }
    Ok(Row {
        case: case.to_string(),
        items,
        first: stats(&first),
        noop: stats(&noop),
        first_target,
        notes,
    })
}

/// The external commands every apply (and every no-op apply) runs to observe the kernel,
/// each timed on its own inside the namespace: where the no-op time goes.
fn command_breakdown(ns: &Netns, what: &str) -> anyhow::Result<()> {
    const N: usize = 5;
    let cmds: &[&[&str]] = &[
        // observe() reads links, addresses, rules and routes over netlink in-process;
        // these are the child processes it still runs: one terse dump of the ruleset
        // (foreign names never go back to nft as arguments), and iptables-save and
        // ip6tables-save (every table) only where nft or /proc/net shows an iptables
        // table: none in these namespaces, timed anyway. The full listing is shown for
        // comparison.
        &["true"],
        &["nft", "-j", "-t", "list", "ruleset"],
        &["iptables-save"],
        &["ip6tables-save"],
        &["nft", "-j", "list", "ruleset"],
    ];
    let cmds: Vec<Vec<String>> = cmds
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let lines = in_netns(ns.name(), move || -> Vec<String> {
        let mut out = Vec::new();
        let mut sum = 0.0;
        for c in &cmds {
            let mut times = Vec::new();
            let mut bytes = 0;
            let mut ok = true;
            for _ in 0..N {
                let t = Instant::now();
                match Command::new(&c[0]).args(&c[1..]).output() {
                    Ok(o) => {
                        ok &= o.status.success();
                        bytes = o.stdout.len();
                    }
                    Err(_) => ok = false,
                }
                times.push(t.elapsed());
            }
            let s = stats(&times);
            let full = c[0] == "nft" && !c.iter().any(|a| a == "-t");
            if c[0] != "true" && !full {
                sum += ms(s.median);
            }
            out.push(format!(
                "{:<40} | {:>8.2} | {:>8.2} | {:>9}{}{}",
                c.join(" "),
                ms(s.median),
                ms(s.max),
                bytes,
                if ok { "" } else { "  (failed or missing)" },
                if full {
                    "  (NOT run by symroute: the full listing, for comparison)"
                } else {
                    ""
                }
            ));
        }
        out.push(format!(
            "sum of medians (excluding `true` and the full listing): {sum:.1} ms; observe() runs these one after another"
        ));
        out
    })?;
    println!("\n== commands observe() runs ({what}; median / max of {N}, ms; stdout bytes) ==");
    println!(
        "{:<40} | {:>8} | {:>8} | {:>9}",
        "command", "median", "max", "bytes"
    );
    println!("{}", "-".repeat(74));
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn verdict(d: Duration, target_ms: f64) -> &'static str {
    if ms(d) <= target_ms {
        "yes"
    } else {
        "NO"
    }
}

fn print_table(rows: &[Row]) {
    println!("\n== symroute apply, wall ms (median / max of {RUNS}) ==");
    println!(
        "{:<24} | {:>6} | {:>26} | {:>22} | {:>22}",
        "case",
        "items",
        "first apply median/max ms",
        "no-op median/max ms",
        "targets met (first/noop)"
    );
    println!("{}", "-".repeat(24 + 6 + 26 + 22 + 22 + 12));
    for r in rows {
        println!(
            "{:<24} | {:>6} | {:>12.1} / {:>9.1}  | {:>9.1} / {:>9.1} | {:>9} / {:<9}",
            r.case,
            r.items,
            ms(r.first.median),
            ms(r.first.max),
            ms(r.noop.median),
            ms(r.noop.max),
            format!(
                "{}≤{}",
                verdict(r.first.median, r.first_target),
                r.first_target
            ),
            format!(
                "{}≤{}",
                verdict(r.noop.median, TARGET_NOOP_MS),
                TARGET_NOOP_MS
            ),
        );
    }
    println!(
        "targets (judged on the median; max shown for spread): first apply ≤ {TARGET_SEED_MS} ms for a seed config, ≤ {TARGET_BIG_MS} ms for the 10k config; no-op re-apply ≤ {TARGET_NOOP_MS} ms"
    );
    for r in rows {
        for n in &r.notes {
            println!("  {}: NOTE {n}", r.case);
        }
        let max_first = verdict(r.first.max, r.first_target);
        let max_noop = verdict(r.noop.max, TARGET_NOOP_MS);
        if max_first == "NO" || max_noop == "NO" {
            println!(
                "  {}: max exceeds its target (first {max_first}, no-op {max_noop})",
                r.case
            );
        }
    }
}

/// The pure phases (and observe) of the 10k config, in-process, inside the namespace.
fn phases(ns: &Netns, text: String) -> anyhow::Result<()> {
    const N: usize = 10;
    let lines = in_netns(ns.name(), move || -> anyhow::Result<Vec<String>> {
        use symroute::plan::diff::{self, Observed};
        let mut out = Vec::new();
        let mut t_parse = Vec::new();
        let mut model = None;
        for _ in 0..N {
            let t = Instant::now();
            let m = symroute::config::parse_str(&text, "big.toml")
                .map_err(|e| anyhow::anyhow!("parse_str: {e}"))?;
            t_parse.push(t.elapsed());
            model = Some(m);
        }
        let model = model.expect("parsed");
        // The namespace holds the applied 10k config here (measure() left it applied).
        let mut t_observe = Vec::new();
        let mut observed = None;
        for _ in 0..N {
            let t = Instant::now();
            let o = symroute::kernel::observe::observe()?;
            t_observe.push(t.elapsed());
            observed = Some(o);
        }
        let observed = observed.expect("observed");
        let mut t_build = Vec::new();
        let mut plan = None;
        for _ in 0..N {
            let t = Instant::now();
            let p = symroute::plan::build(&model, &observed.host);
            t_build.push(t.elapsed());
            plan = Some(p);
        }
        let plan = plan.expect("built");
        let mut t_conf = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            let c = diff::conflicts(&plan, &observed);
            t_conf.push(t.elapsed());
            std::hint::black_box(c);
        }
        let recorded = symroute::kernel::state::load()?.sysctls;
        let mut t_diff_noop = Vec::new();
        let mut noop_changes = 0;
        for _ in 0..N {
            let t = Instant::now();
            let c = diff::diff(&plan, &observed, &recorded);
            t_diff_noop.push(t.elapsed());
            noop_changes = c.summary().len();
        }
        // A first apply diffs against a kernel holding nothing of ours.
        let empty = Observed {
            host: observed.host.clone(),
            ..Observed::default()
        };
        let mut t_diff_first = Vec::new();
        let mut first_changes = 0;
        for _ in 0..N {
            let t = Instant::now();
            let c = diff::diff(&plan, &empty, &Default::default());
            t_diff_first.push(t.elapsed());
            first_changes = c.summary().len();
        }
        // What a no-op apply now runs instead of all the above: the proof (the namespace
        // holds the 10k config as `symroute apply` left it, with its record).
        let mut t_proof = Vec::new();
        let mut proved = 0;
        for _ in 0..N {
            let t = Instant::now();
            let p = symroute::kernel::noop::prove(&model, &Default::default(), None, None)?;
            t_proof.push(t.elapsed());
            proved += usize::from(
                p.is_some_and(|p| matches!(p.outcome, symroute::kernel::noop::Outcome::Proved)),
            );
        }
        let mut t_netlink = Vec::new();
        let mut t_gen = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            std::hint::black_box(symroute::kernel::observe::observe_netlink()?);
            t_netlink.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(symroute::kernel::nft_rules::generation()?);
            t_gen.push(t.elapsed());
        }
        let row = |name: &str, v: &[Duration]| {
            let s = stats(v);
            format!("{name:<34} | {:>10.3} | {:>10.3}", ms(s.median), ms(s.max))
        };
        out.push(format!(
            "\n== 10k config, in-process phases (median / max of {N}, ms) =="
        ));
        out.push(format!(
            "{:<34} | {:>10} | {:>10}",
            "phase", "median", "max"
        ));
        out.push("-".repeat(60));
        out.push(row("config::parse_str", &t_parse));
        out.push(row("kernel::observe::observe (I/O)", &t_observe));
        out.push(row("plan::build", &t_build));
        out.push(row("plan::diff::conflicts", &t_conf));
        out.push(row("plan::diff::diff (no-op)", &t_diff_noop));
        out.push(row("plan::diff::diff (first apply)", &t_diff_first));
        // In this process the proof fails on the binary's identity (the record names the
        // symroute binary that wrote it), after computing everything else it compares.
        out.push(format!(
            "a no-op apply runs only this (here {proved}/{N} proved: this bench is not the binary that recorded it):"
        ));
        out.push(row("kernel::noop::prove (I/O)", &t_proof));
        out.push(row("  of which observe_netlink", &t_netlink));
        out.push(row("  of which nft_rules::generation", &t_gen));
        out.push(format!(
            "plan size: {} ip rules, {} routes, nft table {} bytes ({} named sets/maps, {} lines); diff: {} change line(s) on first apply, {} on no-op",
            plan.rules.len(),
            plan.routes.len(),
            plan.nft.len(),
            plan.nft.matches("\n\tset ").count() + plan.nft.matches("\n\tmap ").count(),
            plan.nft.lines().count(),
            first_changes,
            noop_changes
        ));
        out.push(format!(
            "observed: {} links, {} of our rules, {} of our routes, {} foreign rules",
            observed.host.links.len(),
            observed.rules.len(),
            observed.routes.len(),
            observed.foreign_rules.len()
        ));
        Ok(out)
    })??;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// Peak RSS of one (first) apply of the 10k config. `/usr/bin/time -v` reports the
/// maximum over symroute and the children it waited for (`ip`, `nft`): Linux folds a
/// reaped child's peak into its parent's rusage, so this is the peak of the tree's
/// largest process, not a sum.
fn peak_rss(ns: &Netns, cfg: &ConfigFile) -> anyhow::Result<()> {
    println!("\n== peak RSS, one first apply of the 10k config ==");
    if std::path::Path::new("/usr/bin/time").exists() {
        let out = Command::new("/usr/bin/time")
            .args([
                "-v",
                SYMROUTE,
                "apply",
                "-c",
                &cfg.arg(),
                "--netns",
                ns.name(),
            ])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            anyhow::bail!("apply under /usr/bin/time failed: {err}");
        }
        let kb = err
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let wall = err
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss):")
            })
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        println!("peak RSS {kb} kB (max of symroute and its ip/nft children; /usr/bin/time -v), wall {wall}");
    } else {
        let r = symroute(&["apply", "-c", &cfg.arg(), "--netns", ns.name()]);
        if !r.ok {
            anyhow::bail!("apply failed: {}", r.stderr);
        }
        let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
        println!(
            "peak RSS {} kB (getrusage RUSAGE_CHILDREN maxrss: the largest child this bench ever reaped, an upper bound)",
            ru.max_rss()
        );
    }
    // symroute alone, without children: the plan for `symroute check` is built in-process
    // only up to validation; `plan --json` runs observe (children) too, so report check.
    let out = Command::new("/usr/bin/time")
        .args(["-v", SYMROUTE, "check", "-c", &cfg.arg()])
        .output();
    if let Ok(out) = out {
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(kb) = err
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        {
            println!(
                "for comparison, `symroute check` of the same config (no children): {} kB",
                kb.trim()
            );
        }
    }
    Ok(())
}
