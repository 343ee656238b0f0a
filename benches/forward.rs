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
//! rtr receives, classifies and routes each packet, then drops it in its own postrouting
//! hook (table `inet benchtail`, priority 200) and counts it there: after the routing
//! decision and every chain of symroute's (its source NAT chain is at 100), before
//! conntrack confirms the entry. So the conntrack
//! table never fills: on this kernel `nf_conntrack_max` (262,144) cannot be raised in a
//! namespace, and a full table makes every new connection evict one first, which then
//! dominates the cost of every case (and flatters the slow ones, which fill it later).
//! The rate is the growth of that counter over a fixed window while trafgen runs flat out
//! on one CPU (`--cpus 1`; the forwarding softirq runs on the same CPU, so the figure is
//! the cost of generating + receiving + routing one new connection). trafgen is run with
//! `--no-sock-mem --notouch-irq` so it changes no host-wide setting.
//!
//! Cases: (a) rtr has no ruleset (no conntrack at all); (b) the floor: a table holding
//! only a conntrack-mark restore in prerouting; (c) symroute applied with the generated
//! 10,000-selector, 64-gateway config; (d) symroute applied with a two-ISP config like
//! examples/two-isps-firewall.toml on rtr's interfaces; then issue 15's four shapes of
//! 10,000 selectors over 64 gateways (benches/common/shapes.rs: alternating keys, grouped
//! keys, secondary conditions everywhere, reversed order) with traffic that hits their
//! policies, each against a floor run with the same traffic ((b2) for shapes 1, 2 and 4,
//! (b3) for shape 3, which mixes TCP SYNs with UDP). Each case runs 3 times, interleaved
//! (a b c d …, a b c d …, ...) so drifting machine load hits all cases alike, with the
//! conntrack table flushed before every run; the median is reported. The first run of
//! each symroute case prints which share of the packets each quarter of the policy list
//! classified (the policies' own nft counters).
//!
//! A program that PRINTS figures; it never fails because something is slow.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::shapes::{Shape, SHAPES};
use common::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
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

/// In rtr, in every case: counts and drops forwarded packets before conntrack confirms
/// them (no ct expression, so it alone loads no conntrack).
const TAIL_RULES: &str = "table inet benchtail {
\tcounter routed { }
\tchain post {
\t\ttype filter hook postrouting priority 200; policy accept;
\t\tmeta l4proto { tcp, udp } counter name \"routed\" drop
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

/// What rtr holds during a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Bare,
    Floor,
    Big,
    Small,
    Shape(Shape),
}

/// What trafgen sends: `Plain` from 192.0.2.R (one MAC, matching no policy of the
/// shapes), `Hits` and `Mixed` as benches/common/shapes.rs describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Plain,
    Hits,
    Mixed,
}

const TRAFFICS: [Traffic; 3] = [Traffic::Plain, Traffic::Hits, Traffic::Mixed];

#[derive(Clone, Copy)]
struct Case {
    label: &'static str,
    setup: Setup,
    traffic: Traffic,
    /// The case this one is compared with (the floor with the same traffic).
    floor: usize,
}

const CASES: [Case; 10] = [
    Case {
        label: "(a) no ruleset",
        setup: Setup::Bare,
        traffic: Traffic::Plain,
        floor: 1,
    },
    Case {
        label: "(b) floor: ct mark restore only",
        setup: Setup::Floor,
        traffic: Traffic::Plain,
        floor: 1,
    },
    Case {
        label: "(c) symroute, 10k selectors / 64 gw",
        setup: Setup::Big,
        traffic: Traffic::Plain,
        floor: 1,
    },
    Case {
        label: "(d) symroute, two-isps-like",
        setup: Setup::Small,
        traffic: Traffic::Plain,
        floor: 1,
    },
    Case {
        label: "(b2) floor, traffic of shapes 1 2 4",
        setup: Setup::Floor,
        traffic: Traffic::Hits,
        floor: 4,
    },
    Case {
        label: Shape::Alternating.label(),
        setup: Setup::Shape(Shape::Alternating),
        traffic: Traffic::Hits,
        floor: 4,
    },
    Case {
        label: Shape::Grouped.label(),
        setup: Setup::Shape(Shape::Grouped),
        traffic: Traffic::Hits,
        floor: 4,
    },
    Case {
        label: Shape::Reversed.label(),
        setup: Setup::Shape(Shape::Reversed),
        traffic: Traffic::Hits,
        floor: 4,
    },
    Case {
        label: "(b3) floor, traffic of shape 3",
        setup: Setup::Floor,
        traffic: Traffic::Mixed,
        floor: 8,
    },
    Case {
        label: Shape::Secondary.label(),
        setup: Setup::Shape(Shape::Secondary),
        traffic: Traffic::Mixed,
        floor: 8,
    },
];

struct Sample {
    /// Packets per second of wall time.
    wall_pps: f64,
    /// Packets per second of CPU time spent on them: trafgen's own time plus the softirq
    /// time of the CPU it runs on (where rtr's forwarding runs). Other work on the machine
    /// takes wall time from a run but not CPU time from this figure, so this is the one
    /// compared with the floor.
    pps: f64,
    /// Conntrack entries in rtr when the window ended.
    ct_count: u64,
    /// Packets trafgen sent minus packets rtr counted, over the whole run.
    lost: i64,
    /// Packets trafgen sent over the whole run.
    sent: u64,
}

struct Lab {
    gen: Netns,
    rtr: Netns,
    // The next hop's namespace (out0 needs its peer up); nothing reaches it.
    _sink: Netns,
    // Holds the gateways' peers; kept alive for the whole run.
    _gwpeer: Netns,
    /// One trafgen config per `TRAFFICS` entry.
    trafgen_cfg: Vec<ConfigFile>,
    big: ConfigFile,
    small: ConfigFile,
    /// One config per `SHAPES` entry.
    shapes: Vec<ConfigFile>,
}

impl Lab {
    fn config(&self, setup: Setup) -> Option<&ConfigFile> {
        match setup {
            Setup::Bare | Setup::Floor => None,
            Setup::Big => Some(&self.big),
            Setup::Small => Some(&self.small),
            Setup::Shape(s) => SHAPES.iter().position(|x| *x == s).map(|i| &self.shapes[i]),
        }
    }
    fn traffic(&self, t: Traffic) -> &ConfigFile {
        let i = TRAFFICS.iter().position(|x| *x == t).expect("listed");
        &self.trafgen_cfg[i]
    }
}

fn main() {
    require_root(&["ip", "nft", "trafgen", "conntrack"]);
    if let Err(e) = run() {
        eprintln!("forward bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// The cases to run: all, or those whose tag (`a`, `b`, `c`, `d`, `b2`, `1`, `2`, `4`,
/// `b3`, `3`: the label's parenthesis) is given as an argument (`cargo bench --bench
/// forward -- 1 3`), each with its floor.
fn selected() -> Vec<usize> {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tag = |c: &Case| c.label[1..].split(')').next().unwrap_or("").to_string();
    let mut out: Vec<usize> = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        if wanted.is_empty() || wanted.contains(&tag(c)) {
            for j in [c.floor, i] {
                if !out.contains(&j) {
                    out.push(j);
                }
            }
        }
    }
    out.sort();
    out
}

fn run() -> anyhow::Result<()> {
    let t_all = Instant::now();
    println!("load average at start: {}", loadavg());
    let lab = build()?;
    // Declared after the namespaces it refers to, so it runs (and clears the sysctl record
    // in /run/symroute) before they are deleted, on success and on failure alike.
    let _rm = RemoveOnDrop(&lab.rtr);

    let run_cases = selected();
    let mut samples: Vec<Vec<Sample>> = (0..CASES.len()).map(|_| Vec::new()).collect();
    for rep in 0..REPEATS {
        for &ci in &run_cases {
            let case = CASES[ci];
            configure(&lab, case.setup, (rep == 0).then_some(case.label))?;
            let s = measure(&lab, case.traffic)?;
            println!(
                "  run {}: {:<38} {:>10.0} pps per CPU-second ({:>7.0} per second of wall time)   conntrack entries at end {:>7}   lost {}",
                rep + 1,
                case.label,
                s.pps,
                s.wall_pps,
                s.ct_count,
                s.lost
            );
            if rep == 0 && lab.config(case.setup).is_some() {
                println!("         {}", classified(&lab.rtr, s.sent));
            }
            samples[ci].push(s);
        }
    }
    configure(&lab, Setup::Bare, None)?;

    let med: Vec<f64> = samples
        .iter()
        .map(|v| {
            if v.is_empty() {
                f64::NAN
            } else {
                median_f64(&v.iter().map(|s| s.pps).collect::<Vec<_>>())
            }
        })
        .collect();
    println!(
        "\n== new connections routed through rtr per CPU-second (median of {REPEATS} runs of {:.0} s) ==",
        WINDOW.as_secs_f64()
    );
    println!(
        "{:<38} | {:>12} | {:>24} | {:>13} | {:>10}",
        "case", "median pps", "runs (pps/CPU-s)", "% of floor", "max ct fill"
    );
    println!("{}", "-".repeat(38 + 12 + 24 + 13 + 10 + 12));
    for &ci in &run_cases {
        let case = CASES[ci];
        let runs: Vec<String> = samples[ci]
            .iter()
            .map(|s| format!("{:.0}k", s.pps / 1e3))
            .collect();
        let fill = samples[ci].iter().map(|s| s.ct_count).max().unwrap_or(0);
        let floor_tag = CASES[case.floor]
            .label
            .split(')')
            .next()
            .unwrap_or("")
            .to_string()
            + ")";
        println!(
            "{:<38} | {:>12.0} | {:>24} | {:>6.1}% {:<5} | {:>10}",
            case.label,
            med[ci],
            runs.join(" "),
            100.0 * med[ci] / med[case.floor],
            floor_tag,
            fill
        );
    }
    println!();
    for &ci in &run_cases {
        let case = CASES[ci];
        if lab.config(case.setup).is_none() || case.setup == Setup::Small {
            continue;
        }
        let pct = 100.0 * med[ci] / med[case.floor];
        println!(
            "{:<38} {pct:>6.1}% of its floor ({:.0} pps)   target ≥ {TARGET_PCT}%: {}",
            case.label,
            med[case.floor],
            if pct >= TARGET_PCT { "met" } else { "NOT met" }
        );
    }
    if run_cases.contains(&0) {
        println!(
            "(b)/(a) = {:.1}% (the cost of conntrack itself)",
            100.0 * med[1] / med[0]
        );
    }
    let max_lost = samples.iter().flatten().map(|s| s.lost).max().unwrap_or(0);
    println!(
        "packets lost inside rtr (sent - counted in rtr's postrouting, any run): at most {max_lost}{}",
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
    rtr.nft(TAIL_RULES)?;
    // No ARP round trip (or ARP table churn) inside the measurement.
    let sink_mac = mac_of(&sink, "s0")?;
    rtr.ip(&format!(
        "neigh replace 198.18.0.2 lladdr {sink_mac} dev out0 nud permanent"
    ))?;
    // Shape 3's destinations; symroute's route_via rules come after `lookup main
    // suppress_prefixlength 0`, so this route takes them to the sink, marked or not.
    rtr.ip("route add 100.64.0.0/10 via 198.18.0.2 dev out0")?;

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
    let plain = ConfigFile::new(
        "trafgen",
        &format!(
            "{{ eth(da={rtr_mac}, sa={gen_mac}), ipv4(sa=192.0.2.10, sa[3]=drnd(2, 254), da=198.18.0.2, ttl=64), udp(sp=dinc(1024, 65535), dp=9), fill(0x00, 18) }}\n"
        ),
    )?;
    let hits = ConfigFile::new("trafgen-hits", &Shape::Alternating.trafgen(&rtr_mac))?;
    let mixed = ConfigFile::new("trafgen-mixed", &Shape::Secondary.trafgen(&rtr_mac))?;
    let big = ConfigFile::new("fwd-big", &big_config())?;
    let small = ConfigFile::new("fwd-small", SMALL)?;
    let (items, _) = checked_items(&big)?;
    let mut shapes = Vec::new();
    for shape in SHAPES {
        let cfg = ConfigFile::new(&format!("fwd-{}", shape.tag()), &shape.config())?;
        if let Some(dir) = std::env::var_os("FORWARD_DUMP_DIR") {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("{}.toml", shape.tag())),
                shape.config(),
            )?;
        }
        let (n, _) = checked_items(&cfg)?;
        if n != BIG_ITEMS {
            anyhow::bail!(
                "shape {} has {n} selector items, not {BIG_ITEMS}",
                shape.tag()
            );
        }
        shapes.push(cfg);
    }

    println!("forward benchmark: gen -> rtr (counted and dropped in postrouting, before conntrack confirm), trafgen --cpus 1, {:.1} s warm-up + {:.0} s window per run", WARMUP.as_secs_f64(), WINDOW.as_secs_f64());
    println!(
        "rtr conntrack: nf_conntrack_max = {ct_max} ({}), udp timeout {timeout} s; the table is flushed before every run",
        if raised {
            format!("raised to {want}")
        } else {
            format!("raising it to {want} was refused: read-only outside the initial namespace on this kernel")
        }
    );
    println!(
        "generated configs: {items} selector items over {BIG_GATEWAYS} gateways (c), and {BIG_ITEMS} in each of the 4 shapes; topology built in {:.1} s\n",
        t.elapsed().as_secs_f64()
    );
    Ok(Lab {
        gen,
        rtr,
        _sink: sink,
        _gwpeer: gwpeer,
        trafgen_cfg: vec![plain, hits, mixed],
        big,
        small,
        shapes,
    })
}

/// What symroute's policy counters (one per policy, named `pN_…`) say about the last
/// run: how many connections were classified, and which share of the `sent` packets each
/// quarter of the policy list took.
fn classified(rtr: &Netns, sent: u64) -> String {
    let Ok(out) = rtr.exec(&["nft", "-j", "list", "counters", "table", "inet", "symroute"]) else {
        return "policy counters: unreadable".into();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return "policy counters: unreadable".into();
    };
    // Counters are named `pN_<policy name>`.
    let mut by_policy: Vec<(usize, u64)> = symroute::kernel::status::counters_in(&v)
        .into_iter()
        .filter_map(|(name, (packets, _))| {
            let idx = name.strip_prefix('p')?.split('_').next()?.parse().ok()?;
            Some((idx, packets))
        })
        .collect();
    by_policy.sort();
    let total: u64 = by_policy.iter().map(|(_, n)| n).sum();
    let n = by_policy.len().max(1);
    let pct = |x: u64| 100.0 * x as f64 / sent.max(1) as f64;
    let mut line = format!(
        "policy counters: {total} connection(s) classified ({:.0}% of {sent} sent)",
        pct(total)
    );
    if n >= 8 {
        let quarters: Vec<String> = (0..4)
            .map(|q| {
                let (lo, hi) = (q * n / 4, (q + 1) * n / 4);
                let k: u64 = by_policy
                    .iter()
                    .filter(|(i, _)| (lo..hi).contains(i))
                    .map(|(_, c)| c)
                    .sum();
                format!("{}-{}: {:.1}%", lo + 1, hi, pct(k))
            })
            .collect();
        line += &format!(
            "; by position in the list of {n}: {}; no policy: {:.1}%",
            quarters.join(", "),
            pct(sent.saturating_sub(total))
        );
    }
    line
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

/// Puts rtr's ruleset into the state `setup` wants, whatever it held before; with a
/// `describe` label, says what it holds.
fn configure(lab: &Lab, setup: Setup, describe: Option<&str>) -> anyhow::Result<()> {
    let rtr = &lab.rtr;
    let has_floor = rtr.exec(&["nft", "list", "tables"])?.contains("inet floor");
    let ours = |t: &&str| *t != "table inet benchtail";
    if has_floor && setup != Setup::Floor {
        rtr.exec(&["nft", "delete", "table", "inet", "floor"])?;
    }
    let t = Instant::now();
    let what = match lab.config(setup) {
        None => {
            remove(rtr)?;
            if setup == Setup::Floor && !has_floor {
                // FORWARD_FLOOR_NFT=FILE: another `table inet floor` to compare with.
                match std::env::var("FORWARD_FLOOR_NFT") {
                    Ok(f) => rtr.nft(&std::fs::read_to_string(f)?)?,
                    Err(_) => rtr.nft(FLOOR)?,
                }
            }
            None
        }
        Some(cfg) => Some(apply(rtr, cfg)?),
    };
    let tables = rtr.exec(&["nft", "list", "tables"])?;
    let tables: Vec<&str> = tables.lines().map(str::trim).filter(ours).collect();
    let expected: &[&str] = match setup {
        Setup::Bare => &[],
        Setup::Floor => &["table inet floor"],
        _ => &["table inet symroute"],
    };
    let label = describe.unwrap_or("this case");
    if tables != expected {
        anyhow::bail!("rtr should hold {expected:?} for {label}, holds {tables:?}");
    }
    if describe.is_some() {
        let mut line = format!(
            "{label}: rtr holds {}",
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
                "; classify chain: {rules} rule(s) with a verdict; {rules_ip} IPv4 ip rules"
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

    fn pgid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// SIGINT to the group (trafgen then prints its totals), SIGKILL if it lingers.
    /// Returns what trafgen printed.
    fn stop(mut self) -> anyhow::Result<String> {
        let child = self.0.take().expect("running");
        let group = Pid::from_raw(child.id() as i32);
        // The process group we created for this child.
        let _ = killpg(group, Signal::SIGINT);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r?,
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
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
            // The process group we created for this child.
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// CPU ticks spent by trafgen's process group plus the softirq ticks of the CPU its
/// worker runs on (`/proc/PID/stat` utime + stime, `/proc/stat` softirq).
fn cpu_ticks(pgid: u32) -> u64 {
    let mut ticks = 0;
    let mut cpu = None;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state is field 3.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let own = n(11) + n(12);
        if own > 0 {
            cpu = f.get(36).and_then(|c| c.parse::<usize>().ok());
        }
        ticks += own;
    }
    let softirq = cpu
        .and_then(|c| {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let line = stat
                .lines()
                .find(|l| l.starts_with(&format!("cpu{c} ")))?
                .to_string();
            line.split_whitespace().nth(7)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    ticks + softirq
}

/// rtr's counter of forwarded packets, and when it was read (midpoint of the `nft` run).
fn forwarded(rtr: &Netns) -> anyhow::Result<(u64, Instant)> {
    let t0 = Instant::now();
    let out = rtr.exec(&[
        "nft",
        "-j",
        "list",
        "counter",
        "inet",
        "benchtail",
        "routed",
    ])?;
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

fn measure(lab: &Lab, traffic: Traffic) -> anyhow::Result<Sample> {
    // Every run starts with an empty table (flushing an empty or absent one is fine).
    let _ = lab.rtr.exec(&["conntrack", "-F"]);
    lab.rtr
        .exec(&["nft", "reset", "counter", "inet", "benchtail", "routed"])?;
    let tg = Trafgen::start(&lab.gen, lab.traffic(traffic))?;
    std::thread::sleep(WARMUP);
    let pgid = tg.pgid();
    let cpu0 = cpu_ticks(pgid);
    let (c0, t0) = forwarded(&lab.rtr)?;
    std::thread::sleep(WINDOW);
    let (c1, t1) = forwarded(&lab.rtr)?;
    let cpu1 = cpu_ticks(pgid);
    let ct_count = lab
        .rtr
        .exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_count"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let printed = tg.stop()?;
    // Let the last packets in flight arrive before the final count.
    std::thread::sleep(Duration::from_millis(50));
    let (total, _) = forwarded(&lab.rtr)?;
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
            "rtr forwarded nothing during the window ({c0} -> {c1}); trafgen said:\n{printed}"
        );
    }
    let hz = common::clock_ticks_per_second();
    let cpu_s = cpu1.saturating_sub(cpu0) as f64 / hz;
    let wall_pps = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    Ok(Sample {
        wall_pps,
        pps: if cpu_s > 0.0 {
            (c1 - c0) as f64 / cpu_s
        } else {
            wall_pps
        },
        ct_count,
        lost: sent as i64 - total as i64,
        sent,
    })
}
