//! Forwarded new connections per second through a namespace router, with and without
//! symroute's ruleset.
//!
//!     cargo bench -j2 --bench forward
//!
//! Topology (all private namespaces, deleted on exit, also on failure): two routers with
//! the same interfaces and routes, so a floor never runs where symroute's ip rules ever
//! were (the kernel keeps its "custom rules" state once a rule was added: every forwarded
//! packet's source is then checked by a full lookup, and the local and main tables stay
//! split, which a router without policy routing never pays).
//!
//!   gen g0 --veth-- in0 [rtr,  symroute's cases] out0 --veth-- s0 [sink]
//!                        gw0..gw63 --veth-- p0..p63 [gwpeer]
//!   gen g1 --veth-- in0 [rtr0, the floors]       out0 --veth-- s0 [sink0]
//!                        gw0..gw63 --veth-- p0..p63 [gwpeer0]
//!
//! Both routers: `default via` the sink, the LAN prefixes the traffic comes from routed
//! back to in0 (a LAN's own prefixes are), rp_filter off. trafgen sends UDP (shape 3:
//! also TCP SYNs) from 192.0.2.R or the shapes' sources, sport incrementing, to
//! destinations beyond the default route, so (nearly) every packet is a new conntrack
//! connection and `route_via` decisions really leave by their gateway. rtr0's in0 has
//! rtr's MAC, so the same trafgen configs serve both (on g1).
//!
//! Two methods, each run through all cases (`FORWARD_METHODS=A`, `=B`, default both):
//! - **A, dropped before confirm**: each packet is counted and dropped in the router's
//!   postrouting (table `inet benchtail`, priority 200: after the routing decision and
//!   every chain of symroute's, its source NAT chain at 100 included), before conntrack
//!   confirms the entry. The table never fills (on this kernel `nf_conntrack_max`,
//!   262,144, cannot be raised in a namespace), but no connection pays the conntrack
//!   insert a real one pays, so the classification's share of the cost looks larger.
//! - **B, confirmed**: counted there without a drop, confirmed by conntrack, then dropped
//!   at the egress hook of the outgoing interface (`netdev benchdrop`, every interface
//!   traffic can leave by). The routers' conntrack tables are flushed every 250 ms from
//!   outside (`conntrack -F`), which keeps them from filling (a full table makes every
//!   new connection evict one first). The insert is counted; the entry's destruction,
//!   done by the flushing process, is not, for the floor and symroute alike.
//!   **The targets are judged on B**: every real new connection is confirmed, so B's
//!   floor is what a router really pays per connection (still less than it pays: a
//!   real NIC's receive path and the entry's destruction are not in it, which would
//!   make symroute's share smaller still).
//!
//! The rate is the growth of that counter over a fixed window while trafgen runs flat out
//! on one CPU (`--cpus 1`; the forwarding softirq runs on the same CPU), per CPU-second of
//! trafgen plus that CPU's softirq time (so the figure is the cost of generating +
//! receiving + routing one new connection, and other load on the machine takes less from
//! it). trafgen runs with `--no-sock-mem --notouch-irq` so it changes no host-wide setting.
//!
//! Cases: (a) rtr0 without ruleset (no conntrack at all); (b) the floor: rtr0 with a
//! table holding only a conntrack-mark restore in prerouting; (b1) the floor on rtr plus
//! one `ip rule fwmark` (what policy routing by marks costs before any classification);
//! (c) symroute with the generated 10,000-selector, 64-gateway config; (d) symroute with
//! a two-ISP config like examples/two-isps-firewall.toml on rtr's interfaces; then issue
//! 15's four shapes of 10,000 selectors over 64 gateways (benches/common/shapes.rs:
//! alternating keys, grouped keys, secondary conditions everywhere, reversed order) with
//! traffic that hits their policies, each against a floor run with the same traffic
//! ((b2) for shapes 1, 2 and 4, (b3) for shape 3, which mixes TCP SYNs with UDP), and
//! (b3n): that floor plus a NAT chain (a router that masquerades its LAN pays the null
//! NAT binding every new connection gets once any NAT chain exists; symroute's shape 3
//! needs its source-NAT chain for the host's own route_via connections, so shape 3 is
//! also shown against it); (b2r): (b2) on rtr plus the one fwmark ip rule, the floor of a
//! router that routes by marks at all (shapes 1, 2 and 4 are shown against it too); and
//! (b2k): (b2r) plus the two verdict-map lookups shape 1's classification needs (the same
//! 10,000 MACs and sources, every element `continue`) behind symroute's guard, with no
//! decision: what one lookup per key type costs by itself, the most any such design can
//! keep of the floor. Each case runs 3 times per method (`FORWARD_REPEATS=N`: N times),
//! interleaved (a b c d …, a b c d …, …) so drifting machine load hits all cases alike,
//! with the conntrack table flushed before every run; the median is reported. The first run of each symroute case
//! prints which share of the packets each quarter of the policy list classified (the
//! policies' own nft counters).
//!
//! A program that PRINTS figures; it never fails because something is slow.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::shapes::{self, source_prefixes, Shape, INTERNET, SHAPES};
use common::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use symroute::lab::{veth, Netns};

/// Runs per case and method (`FORWARD_REPEATS` overrides: more runs, a steadier median
/// on a noisy machine).
const REPEATS: usize = 3;

fn repeats() -> usize {
    let Ok(v) = std::env::var("FORWARD_REPEATS") else {
        return REPEATS;
    };
    match v.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("FORWARD_REPEATS={v:?} is not a count of runs: {REPEATS} runs");
            REPEATS
        }
    }
}
const WARMUP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(3);
const TARGET_PCT: f64 = 95.0;
/// Method B: how often the routers' conntrack tables are flushed during a run.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

const FLOOR: &str = "table inet floor {
\tchain pre {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark set ct mark and 0xff000000
\t}
}
";

/// (b1): the one ip rule a policy router by marks needs at least (added to the floor).
const FLOOR_RULE: &str = "fwmark 0x1000000/0xff000000 lookup 42000 pref 3000";

/// (b3n): a router masquerading its LAN. No packet of the bench matches the rule, so it
/// adds only what any NAT chain costs every new connection: the null binding.
const LAN_NAT: &str = "table ip lannat {
\tchain post {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.255.0.0/16 oifname \"out0\" masquerade
\t}
}
";

/// In both routers, in every case: counts forwarded packets (no ct expression, so it
/// alone loads no conntrack); method A also drops them there, before conntrack confirms.
fn tail_rules(method: Method) -> String {
    let drop = match method {
        Method::A => " drop",
        Method::B => "",
    };
    format!(
        "table inet benchtail {{
\tcounter routed {{ }}
\tchain post {{
\t\ttype filter hook postrouting priority 200; policy accept;
\t\tmeta l4proto {{ tcp, udp }} counter name \"routed\"{drop}
\t}}
}}
"
    )
}

/// Method B: drops at the egress of every interface traffic can leave by, after
/// conntrack confirmed the connection (no peer's receive path in the figure).
fn egress_drop() -> String {
    let mut devs = vec!["out0".to_string()];
    devs.extend((0..BIG_GATEWAYS).map(|i| format!("gw{i}")));
    format!(
        "table netdev benchdrop {{
\tchain egress {{
\t\ttype filter hook egress devices = {{ {} }} priority 0; policy drop;
\t}}
}}
",
        devs.join(", ")
    )
}

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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    A,
    B,
}

impl Method {
    fn describe(self) -> &'static str {
        match self {
            Method::A => "A: counted and dropped in postrouting, before conntrack confirms",
            Method::B => "B: confirmed by conntrack, dropped at egress; tables flushed every 250 ms (targets judged on B)",
        }
    }
}

/// What a router holds during a case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Bare,
    Floor,
    /// The floor plus one fwmark ip rule (on rtr: it has held ip rules already).
    FloorRule,
    /// `FloorRule` with shape 1's two key lookups and no decision
    /// (`shapes::lookups_table`) in place of the floor's table.
    FloorLookups,
    /// The floor plus a NAT chain.
    FloorNat,
    Big,
    Small,
    Shape(Shape),
}

impl Setup {
    /// rtr0 (never an ip rule) for the floors, rtr for everything with ip rules.
    fn on_rtr0(self) -> bool {
        matches!(self, Setup::Bare | Setup::Floor | Setup::FloorNat)
    }
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
    /// Another floor it is shown against too.
    also: Option<usize>,
}

const fn case(label: &'static str, setup: Setup, traffic: Traffic, floor: usize) -> Case {
    Case {
        label,
        setup,
        traffic,
        floor,
        also: None,
    }
}

/// A shape of issue 15, with the traffic that hits its policies.
const fn shape_case(shape: Shape, floor: usize) -> Case {
    let traffic = match shape {
        Shape::Secondary => Traffic::Mixed,
        _ => Traffic::Hits,
    };
    case(shape.label(), Setup::Shape(shape), traffic, floor)
}

const CASES: [Case; 14] = [
    case("(a) no ruleset", Setup::Bare, Traffic::Plain, 1),
    case(
        "(b) floor: ct mark restore only",
        Setup::Floor,
        Traffic::Plain,
        1,
    ),
    case(
        "(b1) floor + one fwmark ip rule",
        Setup::FloorRule,
        Traffic::Plain,
        1,
    ),
    case(
        "(c) symroute, 10k selectors / 64 gw",
        Setup::Big,
        Traffic::Plain,
        1,
    ),
    case(
        "(d) symroute, two-isps-like",
        Setup::Small,
        Traffic::Plain,
        1,
    ),
    case(
        "(b2) floor, traffic of shapes 1 2 4",
        Setup::Floor,
        Traffic::Hits,
        5,
    ),
    Case {
        also: Some(12),
        ..shape_case(Shape::Alternating, 5)
    },
    Case {
        also: Some(12),
        ..shape_case(Shape::Grouped, 5)
    },
    Case {
        also: Some(12),
        ..shape_case(Shape::Reversed, 5)
    },
    case(
        "(b3) floor, traffic of shape 3",
        Setup::Floor,
        Traffic::Mixed,
        9,
    ),
    case(
        "(b3n) floor + NAT chain, shape 3's",
        Setup::FloorNat,
        Traffic::Mixed,
        9,
    ),
    Case {
        also: Some(10),
        ..shape_case(Shape::Secondary, 9)
    },
    case(
        "(b2r) b2 + one fwmark ip rule",
        Setup::FloorRule,
        Traffic::Hits,
        5,
    ),
    Case {
        also: Some(12),
        ..case(
            "(b2k) b2r + shape 1's lookups only",
            Setup::FloorLookups,
            Traffic::Hits,
            5,
        )
    },
];

struct Sample {
    /// Packets per second of wall time.
    wall_pps: f64,
    /// Packets per second of CPU time spent on them: trafgen's own time plus the softirq
    /// time of the CPU it runs on (where the router's forwarding runs). Other work on the
    /// machine takes wall time from a run but not CPU time from this figure, so this is
    /// the one compared with the floor.
    pps: f64,
    /// Conntrack entries in the router when the window ended (method B: the most any
    /// flush interval left, read just before the flush).
    ct_count: u64,
    /// Packets trafgen sent minus packets the router counted, over the whole run.
    lost: i64,
    /// Packets trafgen sent over the whole run.
    sent: u64,
}

/// One router with its next hops.
struct Router {
    ns: Netns,
    /// gen's interface facing it.
    dev: &'static str,
    // The next hop's namespace (out0 needs its peer up) and the gateways' peers.
    _sink: Netns,
    _gwpeer: Netns,
}

struct Lab {
    gen: Netns,
    rtr: Router,
    rtr0: Router,
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
            Setup::Bare
            | Setup::Floor
            | Setup::FloorRule
            | Setup::FloorLookups
            | Setup::FloorNat => None,
            Setup::Big => Some(&self.big),
            Setup::Small => Some(&self.small),
            Setup::Shape(s) => SHAPES.iter().position(|x| *x == s).map(|i| &self.shapes[i]),
        }
    }
    fn traffic(&self, t: Traffic) -> &ConfigFile {
        let i = TRAFFICS.iter().position(|x| *x == t).expect("listed");
        &self.trafgen_cfg[i]
    }
    fn router(&self, setup: Setup) -> &Router {
        if setup.on_rtr0() {
            &self.rtr0
        } else {
            &self.rtr
        }
    }
}

fn main() {
    require_root(&["ip", "nft", "trafgen", "conntrack"]);
    if let Err(e) = run() {
        eprintln!("forward bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// The cases to run: all, or those whose tag (`a`, `b`, `b1`, `c`, `d`, `b2`, `1`, `2`,
/// `4`, `b3`, `b3n`, `3`, `b2r`, `b2k`: the label's parenthesis) is given as an argument (`cargo bench
/// --bench forward -- 1 3`), each with its floors.
fn selected() -> Vec<usize> {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tag = |c: &Case| c.label[1..].split(')').next().unwrap_or("").to_string();
    let mut out: Vec<usize> = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        if wanted.is_empty() || wanted.contains(&tag(c)) {
            for j in [Some(c.floor), c.also, Some(i)].into_iter().flatten() {
                if !out.contains(&j) {
                    out.push(j);
                }
            }
        }
    }
    out.sort();
    out
}

/// `FORWARD_METHODS`: `A`, `B` or both (the default), in that order.
fn methods() -> Vec<Method> {
    let want = std::env::var("FORWARD_METHODS").unwrap_or_else(|_| "A,B".into());
    let mut out = Vec::new();
    for (tag, m) in [("A", Method::A), ("B", Method::B)] {
        if want.to_ascii_uppercase().contains(tag) {
            out.push(m);
        }
    }
    out
}

fn run() -> anyhow::Result<()> {
    let t_all = Instant::now();
    println!("load average at start: {}", loadavg());
    let lab = build()?;
    // Declared after the namespaces it refers to, so it runs (and clears the sysctl record
    // in /run/symroute) before they are deleted, on success and on failure alike.
    let _rm = RemoveOnDrop(&lab.rtr.ns);

    let run_cases = selected();
    for method in methods() {
        run_method(&lab, method, &run_cases)?;
    }
    println!(
        "\n(total benchmark time {:.1} s)",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_method(lab: &Lab, method: Method, run_cases: &[usize]) -> anyhow::Result<()> {
    println!("\n=== method {} ===", method.describe());
    println!("load average: {}", loadavg());
    for r in [&lab.rtr, &lab.rtr0] {
        let _ = r.ns.exec(&["nft", "delete", "table", "inet", "benchtail"]);
        let _ =
            r.ns.exec(&["nft", "delete", "table", "netdev", "benchdrop"]);
        r.ns.nft(&tail_rules(method))?;
        if method == Method::B {
            r.ns.nft(&egress_drop())?;
        }
    }
    let mut samples: Vec<Vec<Sample>> = (0..CASES.len()).map(|_| Vec::new()).collect();
    for rep in 0..repeats() {
        for &ci in run_cases {
            let case = CASES[ci];
            configure(lab, case.setup, (rep == 0).then_some(case.label))?;
            let s = measure(lab, case.setup, case.traffic, method)?;
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
                println!("         {}", classified(&lab.rtr.ns, s.sent));
            }
            samples[ci].push(s);
        }
    }

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
    let tag = |i: usize| CASES[i].label.split(')').next().unwrap_or("").to_string() + ")";
    println!(
        "\n== method {method:?}: new connections routed per CPU-second (median of {} runs of {:.0} s) ==",
        repeats(),
        WINDOW.as_secs_f64()
    );
    // "246k " per run.
    let runs_w = (5 * repeats()).max(24);
    println!(
        "{:<38} | {:>12} | {:>runs_w$} | {:>13} | {:>14} | {:>10}",
        "case", "median pps", "runs (pps/CPU-s)", "% of floor", "% of other", "max ct fill"
    );
    println!("{}", "-".repeat(38 + 12 + runs_w + 13 + 14 + 10 + 15));
    for &ci in run_cases {
        let case = CASES[ci];
        let runs: Vec<String> = samples[ci]
            .iter()
            .map(|s| format!("{:.0}k", s.pps / 1e3))
            .collect();
        let fill = samples[ci].iter().map(|s| s.ct_count).max().unwrap_or(0);
        let other = case
            .also
            .map(|o| format!("{:>6.1}% {:<6}", 100.0 * med[ci] / med[o], tag(o)))
            .unwrap_or_default();
        println!(
            "{:<38} | {:>12.0} | {:>runs_w$} | {:>6.1}% {:<5} | {:>14} | {:>10}",
            case.label,
            med[ci],
            runs.join(" "),
            100.0 * med[ci] / med[case.floor],
            tag(case.floor),
            other,
            fill
        );
    }
    println!();
    for &ci in run_cases {
        let case = CASES[ci];
        if lab.config(case.setup).is_none() || case.setup == Setup::Small {
            continue;
        }
        for f in [Some(case.floor), case.also].into_iter().flatten() {
            let pct = 100.0 * med[ci] / med[f];
            println!(
                "method {method:?} {:<38} {pct:>6.1}% of {} ({:.0} pps)   target ≥ {TARGET_PCT}%: {}",
                case.label,
                tag(f),
                med[f],
                if pct >= TARGET_PCT { "met" } else { "NOT met" }
            );
        }
    }
    if run_cases.contains(&0) && run_cases.contains(&1) {
        println!(
            "(b)/(a) = {:.1}% (the cost of conntrack itself)",
            100.0 * med[1] / med[0]
        );
    }
    if run_cases.contains(&2) {
        println!(
            "(b1)/(b) = {:.1}% (what one ip rule costs: the router checks every forwarded packet's source by a full lookup and looks up the local and main tables apart; symroute's cases pay it before any classification)",
            100.0 * med[2] / med[1]
        );
    }
    if run_cases.contains(&12) && run_cases.contains(&13) {
        println!(
            "(b2r)/(b2) = {:.1}%, (b2k)/(b2r) = {:.1}%: shape 1's two lookups alone, with no decision, leave {:.1}% of the floor (the most any classification by one lookup per key type can keep here)",
            100.0 * med[12] / med[5],
            100.0 * med[13] / med[12],
            100.0 * med[13] / med[5]
        );
    }
    let max_lost = samples.iter().flatten().map(|s| s.lost).max().unwrap_or(0);
    println!(
        "packets lost inside the routers (sent - counted in postrouting, any run): at most {max_lost}{}",
        if max_lost > 0 {
            ""
        } else {
            " (they kept up; the generator's CPU is the limit)"
        }
    );
    println!(
        "load average at end: {} (other work on this 2-core machine shows up as run-to-run spread)",
        loadavg()
    );
    Ok(())
}

/// A router: `in0` from gen's `dev`, `out0` to a sink (the default route), the 64
/// gateway interfaces of the big config, the LAN prefixes routed back to in0.
fn router(gen: &Netns, dev: &'static str, tag: &str, mac: Option<&str>) -> anyhow::Result<Router> {
    let ns = Netns::new(&format!("fw-{tag}"))?;
    let sink = Netns::new(&format!("fw-sink{tag}"))?;
    let gwpeer = Netns::new(&format!("fw-gwpeer{tag}"))?;
    veth(gen, dev, &ns, "in0")?;
    veth(&ns, "out0", &sink, "s0")?;
    if let Some(mac) = mac {
        ns.ip(&format!("link set in0 address {mac}"))?;
    }
    ns.ip("addr add 192.0.2.1/24 dev in0")?;
    ns.ip("addr add 198.18.0.1/24 dev out0")?;
    sink.ip("addr add 198.18.0.2/24 dev s0")?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    add_big_interfaces(&ns, &gwpeer)?;
    // No ARP round trip (or ARP table churn) inside the measurement.
    let sink_mac = mac_of(&sink, "s0")?;
    ns.ip(&format!(
        "neigh replace 198.18.0.2 lladdr {sink_mac} dev out0 nud permanent"
    ))?;
    // The same for the gateways' next hops (10.i.0.1 on p{i}): in method B the egress
    // drop on gw{i} also drops the ARP requests, so without this every packet a route_via
    // decision sends there would wait on an unresolved neighbour (queued, then dropped),
    // a cost a router with live gateways never pays and the floor (via the sink) never
    // shows.
    let gw_macs = (0..BIG_GATEWAYS).map(|i| format!("02:67:77:00:00:{i:02x}"));
    let (mut peer_macs, mut neighbours) = (String::new(), String::new());
    for (i, mac) in gw_macs.enumerate() {
        peer_macs += &format!("link set p{i} address {mac}\n");
        neighbours += &format!("neigh replace 10.{i}.0.1 lladdr {mac} dev gw{i} nud permanent\n");
    }
    ip_batch(&gwpeer, &peer_macs)?;
    ip_batch(&ns, &neighbours)?;
    ns.ip("route add default via 198.18.0.2 dev out0")?;
    let back: String = source_prefixes()
        .iter()
        .map(|p| format!("route add {p} via 192.0.2.2 dev in0\n"))
        .collect();
    ip_batch(&ns, &back)?;
    Ok(Router {
        ns,
        dev,
        _sink: sink,
        _gwpeer: gwpeer,
    })
}

fn build() -> anyhow::Result<Lab> {
    let t = Instant::now();
    let gen = Netns::new("fw-gen")?;
    let rtr = router(&gen, "g0", "rtr", None)?;
    let rtr_mac = mac_of(&rtr.ns, "in0")?;
    let rtr0 = router(&gen, "g1", "rtr0", Some(&rtr_mac))?;
    gen.ip("addr add 192.0.2.2/24 dev g0")?;
    gen.ip("addr add 192.0.2.3/24 dev g1")?;

    // Let conntrack hold every connection of a run, if this kernel allows it in a
    // non-initial namespace (newer kernels cap it at the initial namespace's value).
    let want = "2097152";
    let mut ct_max = String::new();
    for r in [&rtr, &rtr0] {
        // conntrack's per-namespace sysctls appear once something uses conntrack.
        r.ns.nft(FLOOR)?;
        // `sysctl -w` exits 0 even when the kernel refuses (procps): read it back.
        let _ = r.ns.sysctl("net.netfilter.nf_conntrack_max", want);
        ct_max =
            r.ns.exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_max"])
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
        r.ns.exec(&["nft", "delete", "table", "inet", "floor"])?;
    }
    let raised = ct_max == want;

    let gen_mac = mac_of(&gen, "g0")?;
    let plain = ConfigFile::new(
        "trafgen",
        &format!(
            "{{ eth(da={rtr_mac}, sa={gen_mac}), ipv4(sa=192.0.2.10, sa[3]=drnd(2, 254), da={INTERNET}, ttl=64), udp(sp=dinc(1024, 65535), dp=9), fill(0x00, 18) }}\n"
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

    println!("forward benchmark: gen -> router, trafgen --cpus 1, {:.1} s warm-up + {:.0} s window per run; floors on rtr0 (never an ip rule), symroute on rtr", WARMUP.as_secs_f64(), WINDOW.as_secs_f64());
    println!(
        "conntrack: nf_conntrack_max = {ct_max} ({}); the table is flushed before every run",
        if raised {
            format!("raised to {want}")
        } else {
            format!("raising it to {want} was refused: read-only outside the initial namespace on this kernel")
        }
    );
    println!(
        "generated configs: {items} selector items over {BIG_GATEWAYS} gateways (c), and {BIG_ITEMS} in each of the 4 shapes; topology built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Lab {
        gen,
        rtr,
        rtr0,
        trafgen_cfg: vec![plain, hits, mixed],
        big,
        small,
        shapes,
    })
}

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

/// Puts the case's router into the state `setup` wants, whatever it held before; with a
/// `describe` label, says what it holds.
fn configure(lab: &Lab, setup: Setup, describe: Option<&str>) -> anyhow::Result<()> {
    let rtr = &lab.router(setup).ns;
    let listed = rtr.exec(&["nft", "list", "tables"])?;
    let ours = |t: &&str| *t != "table inet benchtail" && *t != "table netdev benchdrop";
    for (table, keep) in [
        (
            "inet floor",
            matches!(setup, Setup::Floor | Setup::FloorRule | Setup::FloorNat),
        ),
        ("ip lannat", setup == Setup::FloorNat),
        ("inet lookups", setup == Setup::FloorLookups),
    ] {
        if listed.contains(&format!("table {table}")) && !keep {
            let mut args = vec!["nft", "delete", "table"];
            args.extend(table.split(' '));
            rtr.exec(&args)?;
        }
    }
    let has_rule = !setup.on_rtr0()
        && rtr.ip("rule show pref 3000")?.contains("lookup 42000")
        && !rtr.ip("rule show pref 3000")?.contains("proto 157");
    let wants_rule = matches!(setup, Setup::FloorRule | Setup::FloorLookups);
    if has_rule && !wants_rule {
        rtr.ip(&format!("rule del {FLOOR_RULE}"))?;
    }
    let t = Instant::now();
    let what = match lab.config(setup) {
        None => {
            if !setup.on_rtr0() {
                remove(rtr)?;
            }
            if setup == Setup::FloorLookups {
                if !listed.contains("table inet lookups") {
                    rtr.nft(&shapes::lookups_table())?;
                }
            } else if setup != Setup::Bare && !listed.contains("table inet floor") {
                rtr.nft(FLOOR)?;
            }
            if setup == Setup::FloorNat && !listed.contains("table ip lannat") {
                rtr.nft(LAN_NAT)?;
            }
            if wants_rule && !has_rule {
                rtr.ip(&format!("rule add {FLOOR_RULE}"))?;
            }
            None
        }
        Some(cfg) => Some(apply(rtr, cfg)?),
    };
    let tables = rtr.exec(&["nft", "list", "tables"])?;
    let tables: Vec<&str> = tables.lines().map(str::trim).filter(ours).collect();
    let expected: &[&str] = match setup {
        Setup::Bare => &[],
        Setup::Floor | Setup::FloorRule => &["table inet floor"],
        Setup::FloorLookups => &["table inet lookups"],
        Setup::FloorNat => &["table inet floor", "table ip lannat"],
        _ => &["table inet symroute"],
    };
    let label = describe.unwrap_or("this case");
    if tables != expected {
        anyhow::bail!("the router should hold {expected:?} for {label}, holds {tables:?}");
    }
    if describe.is_some() {
        let mut line = format!(
            "{label}: {} holds {}",
            if setup.on_rtr0() { "rtr0" } else { "rtr" },
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
            line += &format!("; classify chain: {rules} rule(s) with a verdict");
        }
        let rules_ip = rtr
            .ip("-4 rule show")
            .map(|s| s.lines().count())
            .unwrap_or(0);
        line += &format!("; {rules_ip} IPv4 ip rules");
        println!("{line}");
    }
    Ok(())
}

/// A running trafgen (its own process group: it forks a worker). Dropping it stops both.
struct Trafgen(Option<Child>);

impl Trafgen {
    fn start(gen: &Netns, dev: &str, cfg: &ConfigFile) -> anyhow::Result<Trafgen> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                gen.name(),
                "trafgen",
                "--dev",
                dev,
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

/// The router's counter of forwarded packets, and when it was read (midpoint of the
/// `nft` run).
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

fn ct_count(rtr: &Netns) -> u64 {
    rtr.exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_count"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Method B: flushes the router's conntrack table every `FLUSH_EVERY` until dropped;
/// remembers the fullest table it flushed.
struct Flusher {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flusher {
    fn start(rtr: &Netns) -> Flusher {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let name = rtr.name().to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(FLUSH_EVERY);
                let run = |args: &[&str]| {
                    Command::new("ip")
                        .args(["netns", "exec", &name])
                        .args(args)
                        .output()
                };
                if let Ok(out) = run(&["sysctl", "-n", "net.netfilter.nf_conntrack_count"]) {
                    let n = String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    most = most.max(n);
                }
                let _ = run(&["conntrack", "-F"]);
            }
            most
        });
        Flusher {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn measure(lab: &Lab, setup: Setup, traffic: Traffic, method: Method) -> anyhow::Result<Sample> {
    let router = lab.router(setup);
    let rtr = &router.ns;
    // Every run starts with an empty table (flushing an empty or absent one is fine).
    let _ = rtr.exec(&["conntrack", "-F"]);
    rtr.exec(&["nft", "reset", "counter", "inet", "benchtail", "routed"])?;
    let flusher = (method == Method::B).then(|| Flusher::start(rtr));
    let tg = Trafgen::start(&lab.gen, router.dev, lab.traffic(traffic))?;
    std::thread::sleep(WARMUP);
    let pgid = tg.pgid();
    let cpu0 = cpu_ticks(pgid);
    let (c0, t0) = forwarded(rtr)?;
    std::thread::sleep(WINDOW);
    let (c1, t1) = forwarded(rtr)?;
    let cpu1 = cpu_ticks(pgid);
    let mut ct = ct_count(rtr);
    let printed = tg.stop()?;
    if let Some(f) = flusher {
        ct = ct.max(f.stop());
    }
    // Let the last packets in flight arrive before the final count.
    std::thread::sleep(Duration::from_millis(50));
    let (total, _) = forwarded(rtr)?;
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
            "the router forwarded nothing during the window ({c0} -> {c1}); trafgen said:\n{printed}"
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
        ct_count: ct,
        lost: sent as i64 - total as i64,
        sent,
    })
}
