//! Forwarded new connections per second through a namespace router, with and without
//! symroute's ruleset.
//!
//!     cargo bench -j2 --bench forward
//!
//! Topology (all private namespaces, deleted on exit, also on failure):
//!
//!   gen (trafgen on g0) --veth-- in0 [rtr, ip_forward=1] out0 --veth-- s0 [sink]
//!                                     gw0..gw63 --veth-- p0..p63 [gwpeer]
//!
//! trafgen sends UDP 192.0.2.R:P -> 198.18.0.2:9 to rtr's MAC, R random (2..254), P
//! incrementing (1024..65535), so (nearly) every packet is a new conntrack connection.
//! sink drops them in its ingress hook and counts them with a named nft counter. The rate
//! is the growth of that counter over a fixed window while trafgen runs flat out on one
//! CPU (`--cpus 1`; the forwarding softirq runs on the same CPU, so the figure is the
//! cost of generating + forwarding one new connection). trafgen is run with
//! `--no-sock-mem --notouch-irq` so it changes no host-wide setting.
//!
//! Cases: (a) rtr has no ruleset (no conntrack at all); (b) the floor: a table holding
//! only a conntrack-mark restore in prerouting; (c) symroute applied with the generated
//! 10,000-selector, 64-gateway config; (d) symroute applied with a two-ISP config like
//! examples/two-isps-firewall.toml on rtr's interfaces. Each case runs 3 times,
//! interleaved (a b c d, a b c d, ...) so drifting machine load hits all cases alike, with
//! the conntrack table flushed before every run; the median is reported.
//!
//! A program that PRINTS figures; it never fails because something is slow.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use symroute::lab::{veth, Netns};

const REPEATS: usize = 3;
const WARMUP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(3);
const TARGET_PCT: f64 = 95.0;

const FLOOR: &str = "table inet floor {
\tchain pre {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark set ct mark and 0xff000000
\t}
}
";

const SINK_RULES: &str = "table netdev sink {
\tcounter rx { }
\tchain in {
\t\ttype filter hook ingress device \"s0\" priority 0; policy accept;
\t\tudp dport 9 counter name \"rx\" drop
\t}
}
";

/// examples/two-isps-firewall.toml, with rtr's interfaces as the two uplinks.
const SMALL: &str = r#"# like examples/two-isps-firewall.toml, on rtr's interfaces
[[gateway]]
name = "isp1"
interface = "in0"
via = "192.0.2.254"

[[gateway]]
name = "isp2"
interface = "out0"
via = "198.18.0.254"

[[policy]]
name = "answer-on-isp1"
reply_via = "isp1"
[policy.match]
in_interface = "in0"

[[policy]]
name = "answer-on-isp2"
reply_via = "isp2"
[policy.match]
in_interface = "out0"
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Bare,
    Floor,
    Big,
    Small,
}

const CASES: [Case; 4] = [Case::Bare, Case::Floor, Case::Big, Case::Small];

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Bare => "(a) no ruleset",
            Case::Floor => "(b) floor: ct mark restore only",
            Case::Big => "(c) symroute, 10k selectors / 64 gw",
            Case::Small => "(d) symroute, two-isps-like",
        }
    }
}

struct Sample {
    pps: f64,
    /// Conntrack entries in rtr when the window ended.
    ct_count: u64,
    /// Packets trafgen sent minus packets sink counted, over the whole run.
    lost: i64,
}

struct Lab {
    gen: Netns,
    rtr: Netns,
    sink: Netns,
    // Holds the gateways' peers; kept alive for the whole run.
    _gwpeer: Netns,
    trafgen_cfg: ConfigFile,
    big: ConfigFile,
    small: ConfigFile,
}

fn main() {
    require_root(&["ip", "nft", "trafgen", "conntrack"]);
    if let Err(e) = run() {
        eprintln!("forward bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let t_all = Instant::now();
    println!("load average at start: {}", loadavg());
    let lab = build()?;
    // Declared after the namespaces it refers to, so it runs (and clears the sysctl record
    // in /run/symroute) before they are deleted, on success and on failure alike.
    let _rm = RemoveOnDrop(&lab.rtr);

    let mut samples: Vec<Vec<Sample>> = (0..CASES.len()).map(|_| Vec::new()).collect();
    for rep in 0..REPEATS {
        for (ci, case) in CASES.iter().enumerate() {
            configure(&lab, *case, rep == 0)?;
            let s = measure(&lab)?;
            println!(
                "  run {}: {:<38} {:>10.0} pps   conntrack entries at end {:>7}   lost {}",
                rep + 1,
                case.label(),
                s.pps,
                s.ct_count,
                s.lost
            );
            if rep == 0 && matches!(case, Case::Big | Case::Small) {
                println!(
                    "         symroute's policy counters after this run: {} connection(s) classified (matched a policy)",
                    classified(&lab.rtr)
                );
            }
            samples[ci].push(s);
        }
    }
    configure(&lab, Case::Bare, false)?;

    let med: Vec<f64> = samples
        .iter()
        .map(|v| median_f64(&v.iter().map(|s| s.pps).collect::<Vec<_>>()))
        .collect();
    let floor = med[1];
    println!(
        "\n== forwarded new connections per second through rtr (median of {REPEATS} runs of {:.0} s) ==",
        WINDOW.as_secs_f64()
    );
    println!(
        "{:<38} | {:>12} | {:>24} | {:>9} | {:>10}",
        "case", "median pps", "runs (pps)", "% of (b)", "max ct fill"
    );
    println!("{}", "-".repeat(38 + 12 + 24 + 9 + 10 + 12));
    for (ci, case) in CASES.iter().enumerate() {
        let runs: Vec<String> = samples[ci]
            .iter()
            .map(|s| format!("{:.0}k", s.pps / 1e3))
            .collect();
        let fill = samples[ci].iter().map(|s| s.ct_count).max().unwrap_or(0);
        println!(
            "{:<38} | {:>12.0} | {:>24} | {:>8.1}% | {:>10}",
            case.label(),
            med[ci],
            runs.join(" "),
            100.0 * med[ci] / floor,
            fill
        );
    }
    let pct = 100.0 * med[2] / floor;
    println!(
        "\n(c)/(b) = {pct:.1}%  target ≥ {TARGET_PCT}%: {}",
        if pct >= TARGET_PCT { "met" } else { "NOT met" }
    );
    println!(
        "(d)/(b) = {:.1}%   (b)/(a) = {:.1}% (the cost of conntrack itself)",
        100.0 * med[3] / floor,
        100.0 * floor / med[0]
    );
    let max_lost = samples.iter().flatten().map(|s| s.lost).max().unwrap_or(0);
    println!(
        "packets lost inside rtr (sent - counted at sink, any run): at most {max_lost}{}",
        if max_lost > 0 {
            ""
        } else {
            " (rtr kept up; the generator's CPU is the limit)"
        }
    );
    println!(
        "load average at end: {} (other work on this 2-core machine shows up as run-to-run spread)",
        loadavg()
    );
    println!(
        "\n(total benchmark time {:.1} s)",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build() -> anyhow::Result<Lab> {
    let t = Instant::now();
    let gen = Netns::new("fw-gen")?;
    let rtr = Netns::new("fw-rtr")?;
    let sink = Netns::new("fw-sink")?;
    let gwpeer = Netns::new("fw-gwpeer")?;
    veth(&gen, "g0", &rtr, "in0")?;
    veth(&rtr, "out0", &sink, "s0")?;
    gen.ip("addr add 192.0.2.2/24 dev g0")?;
    rtr.ip("addr add 192.0.2.1/24 dev in0")?;
    rtr.ip("addr add 198.18.0.1/24 dev out0")?;
    sink.ip("addr add 198.18.0.2/24 dev s0")?;
    rtr.sysctl("net.ipv4.ip_forward", "1")?;
    add_big_interfaces(&rtr, &gwpeer)?;
    sink.nft(SINK_RULES)?;
    // No ARP round trip (or ARP table churn) inside the measurement.
    let sink_mac = mac_of(&sink, "s0")?;
    rtr.ip(&format!(
        "neigh replace 198.18.0.2 lladdr {sink_mac} dev out0 nud permanent"
    ))?;

    // Let conntrack hold every connection of a run, if this kernel allows it in a
    // non-initial namespace (newer kernels cap it at the initial namespace's value).
    let want = "2097152";
    // conntrack's per-namespace sysctls appear once something in rtr uses conntrack.
    rtr.nft(FLOOR)?;
    // `sysctl -w` exits 0 even when the kernel refuses (procps), so read the value back.
    let _ = rtr.sysctl("net.netfilter.nf_conntrack_max", want);
    let ct_max = rtr
        .exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_max"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let raised = ct_max == want;
    rtr.exec(&["nft", "delete", "table", "inet", "floor"])?;
    let timeout = rtr
        .exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());

    let rtr_mac = mac_of(&rtr, "in0")?;
    let gen_mac = mac_of(&gen, "g0")?;
    let trafgen_cfg = ConfigFile::new(
        "trafgen",
        &format!(
            "{{ eth(da={rtr_mac}, sa={gen_mac}), ipv4(sa=192.0.2.10, sa[3]=drnd(2, 254), da=198.18.0.2, ttl=64), udp(sp=dinc(1024, 65535), dp=9), fill(0x00, 18) }}\n"
        ),
    )?;
    let big = ConfigFile::new("fwd-big", &big_config())?;
    let small = ConfigFile::new("fwd-small", SMALL)?;
    let (items, _) = checked_items(&big)?;

    println!("forward benchmark: gen -> rtr -> sink, trafgen --cpus 1, {:.1} s warm-up + {:.0} s window per run", WARMUP.as_secs_f64(), WINDOW.as_secs_f64());
    println!(
        "rtr conntrack: nf_conntrack_max = {ct_max} ({}), udp timeout {timeout} s; the table is flushed before every run",
        if raised {
            format!("raised to {want}")
        } else {
            format!("raising it to {want} was refused: read-only outside the initial namespace on this kernel")
        }
    );
    println!(
        "generated config: {items} selector items over {BIG_GATEWAYS} gateways; topology built in {:.1} s\n",
        t.elapsed().as_secs_f64()
    );
    Ok(Lab {
        gen,
        rtr,
        sink,
        _gwpeer: gwpeer,
        trafgen_cfg,
        big,
        small,
    })
}

/// Sum of the packet counts of every named counter in `inet symroute` (one per policy).
fn classified(rtr: &Netns) -> String {
    let Ok(out) = rtr.exec(&["nft", "-j", "list", "counters", "table", "inet", "symroute"]) else {
        return "?".into();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return "?".into();
    };
    let n: u64 = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["counter"]["packets"].as_u64())
        .sum();
    n.to_string()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn mac_of(ns: &Netns, ifname: &str) -> anyhow::Result<String> {
    let out = ns.ip(&format!("-j link show {ifname}"))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no MAC for {ifname} in {out}"))
}

/// Puts rtr's ruleset into the state `case` wants, whatever it held before.
fn configure(lab: &Lab, case: Case, describe: bool) -> anyhow::Result<()> {
    let rtr = &lab.rtr;
    let has_floor = rtr.exec(&["nft", "list", "tables"])?.contains("inet floor");
    if has_floor && case != Case::Floor {
        rtr.exec(&["nft", "delete", "table", "inet", "floor"])?;
    }
    let t = Instant::now();
    let what = match case {
        Case::Bare | Case::Floor => {
            remove(rtr)?;
            if case == Case::Floor && !has_floor {
                rtr.nft(FLOOR)?;
            }
            None
        }
        Case::Big => Some(apply(rtr, &lab.big)?),
        Case::Small => Some(apply(rtr, &lab.small)?),
    };
    let tables = rtr.exec(&["nft", "list", "tables"])?;
    let tables: Vec<&str> = tables.lines().map(str::trim).collect();
    let expected: &[&str] = match case {
        Case::Bare => &[],
        Case::Floor => &["table inet floor"],
        Case::Big | Case::Small => &["table inet symroute"],
    };
    if tables != expected {
        anyhow::bail!(
            "rtr should hold {expected:?} for {}, holds {tables:?}",
            case.label()
        );
    }
    if describe {
        let mut line = format!(
            "{}: rtr holds {}",
            case.label(),
            if tables.is_empty() {
                "no nft table".to_string()
            } else {
                tables.join(", ")
            }
        );
        if let Some(run) = what {
            line += &format!(
                "; `symroute apply` took {:.0} ms ({})",
                ms(t.elapsed()),
                run.stdout.lines().last().unwrap_or_default().trim()
            );
            let classify = rtr
                .exec(&["nft", "list", "chain", "inet", "symroute", "classify"])
                .unwrap_or_default();
            let rules = classify
                .lines()
                .filter(|l| l.contains("goto") || l.contains("vmap"))
                .count();
            let rules_ip = rtr
                .ip("-4 rule show")
                .map(|s| s.lines().count())
                .unwrap_or(0);
            line += &format!(
                "; classify chain: {rules} rule(s) every new connection walks; {rules_ip} IPv4 ip rules"
            );
        }
        println!("{line}");
    }
    Ok(())
}

/// A running trafgen (its own process group: it forks a worker). Dropping it stops both.
struct Trafgen(Option<Child>);

impl Trafgen {
    fn start(gen: &Netns, cfg: &ConfigFile) -> anyhow::Result<Trafgen> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                gen.name(),
                "trafgen",
                "--dev",
                "g0",
                "--conf",
            ])
            .arg(cfg.path())
            .args([
                "--cpus",
                "1",
                "--num",
                "0",
                "--no-sock-mem",
                "--notouch-irq",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        Ok(Trafgen(Some(child)))
    }

    /// SIGINT to the group (trafgen then prints its totals), SIGKILL if it lingers.
    /// Returns what trafgen printed.
    fn stop(mut self) -> anyhow::Result<String> {
        let child = self.0.take().expect("running");
        let pgid = child.id() as libc::pid_t;
        // SAFETY: signalling the process group we created for this child.
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r?,
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                rx.recv()??
            }
        };
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// sink's counter of received packets, and when it was read (midpoint of the `nft` run).
fn sink_count(sink: &Netns) -> anyhow::Result<(u64, Instant)> {
    let t0 = Instant::now();
    let out = sink.exec(&["nft", "-j", "list", "counter", "netdev", "sink", "rx"])?;
    let t1 = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let n = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no counter in {out}"))?;
    Ok((n, t0 + (t1 - t0) / 2))
}

fn measure(lab: &Lab) -> anyhow::Result<Sample> {
    // Every run starts with an empty table (flushing an empty or absent one is fine).
    let _ = lab.rtr.exec(&["conntrack", "-F"]);
    lab.sink
        .exec(&["nft", "reset", "counter", "netdev", "sink", "rx"])?;
    let tg = Trafgen::start(&lab.gen, &lab.trafgen_cfg)?;
    std::thread::sleep(WARMUP);
    let (c0, t0) = sink_count(&lab.sink)?;
    std::thread::sleep(WINDOW);
    let (c1, t1) = sink_count(&lab.sink)?;
    let ct_count = lab
        .rtr
        .exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_count"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let printed = tg.stop()?;
    // Let the last packets in flight arrive before the final count.
    std::thread::sleep(Duration::from_millis(50));
    let (total, _) = sink_count(&lab.sink)?;
    let sent: Option<u64> = printed.lines().find_map(|l| {
        l.trim()
            .strip_suffix("packets outgoing")
            .and_then(|n| n.trim().parse().ok())
    });
    let Some(sent) = sent else {
        anyhow::bail!("trafgen printed no packet total:\n{printed}");
    };
    if c1 <= c0 {
        anyhow::bail!(
            "sink counted nothing during the window ({c0} -> {c1}); trafgen said:\n{printed}"
        );
    }
    Ok(Sample {
        pps: (c1 - c0) as f64 / (t1 - t0).as_secs_f64(),
        ct_count,
        lost: sent as i64 - total as i64,
    })
}
