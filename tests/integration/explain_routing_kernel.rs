//! Differential test of the routing engine (`symroute::explain::routing`) against the
//! kernel: random multi-homed setups, each in fresh namespaces (veth interfaces, IPv4 and
//! IPv6 addresses, routes of every type in several tables, random rules and rp_filter /
//! forwarding sysctls, some interfaces down or without carrier). The state is read back
//! with `ip rule`, `ip route show table all`, `ip -j addr`, `sysctl -a` through the
//! engine's parsers, then hundreds of packets per setup are routed by the engine and by
//! `ip route get` (one `ip -batch` per setup) and the answers compared: verdict type,
//! error, egress interface, next hop and table.
//!
//! A second test checks the same engine against real sockets on hosts whose main table
//! has no default route (some with symroute's local reply rules): a UDP socket bound to
//! one of the host's addresses, with `SO_MARK`, sends to a destination; the kernel routes
//! that packet once before any output hook, and `sendto` fails exactly when the engine
//! says the lookup does.
//!
//! Needs root. The RNG is `symroute::fuzz::Rng`; the default seed is fixed so CI is
//! reproducible. `SYMROUTE_EXPLAIN_SEED=<n>` picks another, `=random` a fresh one each
//! run (printed, so a failure can be replayed); `SYMROUTE_EXPLAIN_SETUPS=<n>` changes the
//! number of setups.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use symroute::explain::routing::{
    describe_query, lookup, Query, RouteError, RoutingState, StateTexts, TableNames, Verdict,
    VerdictKind,
};
use symroute::fuzz::Rng;
use symroute::lab::{veth, Netns};
use symroute::model::Family;

const DEFAULT_SEED: u64 = 0x5eed_0007_e8b1_a1a5;
const SETUPS: usize = 24;
const PACKETS_PER_SETUP: usize = 520;
/// Mismatch reports printed in full (all are counted).
const MAX_REPORTS: usize = 12;

fn rand_in4(rng: &mut Rng, net: Ipv4Net) -> Ipv4Addr {
    let host_bits = 32 - u32::from(net.prefix_len());
    let span = if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    let off = if span == 0 {
        0
    } else {
        (rng.next_u64() as u32) & span
    };
    Ipv4Addr::from(u32::from(net.network()) | off)
}

fn rand_in6(rng: &mut Rng, net: Ipv6Net) -> Ipv6Addr {
    let host_bits = 128 - u32::from(net.prefix_len());
    let off: u128 = if host_bits == 0 {
        0
    } else {
        // Mostly small host parts (like real addresses), sometimes anywhere.
        let raw = if rng.pct(70) {
            u128::from(rng.next_u64() & 0xffff)
        } else {
            (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
        };
        if host_bits >= 128 {
            raw
        } else {
            raw & ((1u128 << host_bits) - 1)
        }
    };
    Ipv6Addr::from(u128::from(net.network()) | off)
}

fn rand_in(rng: &mut Rng, net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(rand_in4(rng, n)),
        IpNet::V6(n) => IpAddr::V6(rand_in6(rng, n)),
    }
}

// ---- running commands -------------------------------------------------------------

/// `ip -n NS [-j] -batch - -force`: one answer per line. Returns, per command, the JSON
/// line it printed or the error text it caused.
fn ip_batch(ns: &str, json: bool, cmds: &[String]) -> Vec<Result<String, String>> {
    ip_batch_with(ns, &[], json, cmds)
}

/// [`ip_batch`] with global options (`-4`, `-6`): batch lines cannot carry them.
fn ip_batch_with(
    ns: &str,
    opts: &[&str],
    json: bool,
    cmds: &[String],
) -> Vec<Result<String, String>> {
    let mut args = vec!["-n", ns];
    args.extend(opts);
    if json {
        args.push("-j");
    }
    args.extend(["-batch", "-", "-force"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let mut text = cmds.join("\n");
        text.push('\n');
        stdin.write_all(text.as_bytes()).expect("write batch");
    }
    let out = child.wait_with_output().expect("wait ip -batch");
    // With -force a failing command prints "Command failed"; exit status 255 means
    // iproute2 gave up on the whole batch (a syntax error it treats as fatal).
    assert_ne!(
        out.status.code(),
        Some(255),
        "ip {args:?} aborted the batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    let mut pending: Vec<&str> = Vec::new();
    for line in stderr.lines() {
        if let Some(n) = line.strip_prefix("Command failed -:") {
            let n: usize = n.trim().parse().expect("line number in `Command failed`");
            failed.insert(n, pending.join(" / "));
            pending.clear();
        } else if !line.trim().is_empty() {
            pending.push(line.trim());
        }
    }
    let mut lines = stdout.lines().filter(|l| !l.trim().is_empty());
    let mut answers = Vec::with_capacity(cmds.len());
    for n in 1..=cmds.len() {
        match failed.remove(&n) {
            Some(err) => answers.push(Err(err)),
            None if json => answers.push(Ok(lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "ip -batch printed fewer answers than commands (at {n}: {})",
                        cmds[n - 1]
                    )
                })
                .to_string())),
            None => answers.push(Ok(String::new())),
        }
    }
    answers
}

fn sysctl_w(ns: &str, pairs: &[(String, String)]) {
    for chunk in pairs.chunks(40) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "sysctl", "-qw"]);
        for (k, v) in chunk {
            cmd.arg(format!("{k}={v}"));
        }
        // A key that does not exist is the generator's problem, not the kernel's: ignore.
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

// ---- random setups ----------------------------------------------------------------

struct Iface {
    name: String,
    v4: Ipv4Net,
    v6: Ipv6Net,
}

struct Setup {
    ifaces: Vec<Iface>,
    /// Every command that built it (printed on mismatch).
    script: Vec<String>,
    marks: Vec<(u32, u32)>,
    ports: Vec<(u16, u16)>,
    pool4: Vec<Ipv4Net>,
    pool6: Vec<Ipv6Net>,
    gateways: Vec<IpAddr>,
}

const TABLE_CHOICES: &[&str] = &["main", "100", "101", "102", "200", "42000", "7", "default"];

fn mark_choices(rng: &mut Rng) -> Vec<(u32, u32)> {
    let masks = [0xffff_ffff, 0xff, 0xff00, 0xff00_0000, 0x1, 0xf0];
    (0..rng.range(2, 5))
        .map(|_| {
            let m: u32 = *rng.pick(&masks);
            let v = (rng.next_u64() as u32) & m & 0x0303_0303;
            (
                if rng.pct(20) {
                    0
                } else {
                    v | (m & m.wrapping_neg())
                },
                m,
            )
        })
        .collect()
}

fn fmt_mark((v, m): (u32, u32)) -> String {
    if m == u32::MAX {
        format!("{v:#x}")
    } else {
        format!("{v:#x}/{m:#x}")
    }
}

fn build(rng: &mut Rng, host: &Netns, peer: &Netns, same_ns: bool) -> Setup {
    let n_if = rng.range(2, 5);
    let mut ifaces = Vec::new();
    let mut script = Vec::new();
    for i in 0..n_if {
        let name = format!("ve{i}");
        let peer_name = format!("pe{i}");
        let other = if same_ns { host } else { peer };
        veth(host, &name, other, &peer_name).expect("veth");
        script.push(format!(
            "link add {name} type veth peer {peer_name}{}",
            if same_ns {
                ""
            } else {
                " (peer in second namespace)"
            }
        ));
        let len4 = *rng.pick(&[16u8, 20, 24, 24, 24, 26, 28, 30]);
        let v4 = Ipv4Net::new(Ipv4Addr::new(10, i as u8, 0, 0), len4)
            .expect("v4 net")
            .trunc();
        let len6 = *rng.pick(&[64u8, 64, 64, 60, 56, 120]);
        let v6 = Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 0), len6)
            .expect("v6 net")
            .trunc();
        ifaces.push(Iface { name, v4, v6 });
    }
    let mut cmds: Vec<String> = Vec::new();
    let mut gateways: Vec<IpAddr> = Vec::new();
    // Addresses: one of each family per interface, sometimes a second one, sometimes
    // none (an interface without IPv4 fails loose rp_filter).
    for (i, f) in ifaces.iter().enumerate() {
        let host_part = |rng: &mut Rng, net: Ipv4Net| loop {
            let a = rand_in4(rng, net);
            if a != net.network() && a != net.broadcast() {
                break a;
            }
        };
        if !rng.pct(8) {
            let a = host_part(rng, f.v4);
            cmds.push(format!("addr add {a}/{} dev {}", f.v4.prefix_len(), f.name));
        }
        if rng.pct(15) {
            let extra = Ipv4Net::new(Ipv4Addr::new(172, 20 + i as u8, 0, 0), 24).expect("net");
            let a = host_part(rng, extra);
            cmds.push(format!("addr add {a}/24 dev {}", f.name));
        }
        let a6 = rand_in6(rng, f.v6);
        cmds.push(format!(
            "addr add {a6}/{} dev {} nodad",
            f.v6.prefix_len(),
            f.name
        ));
        if same_ns && rng.pct(50) {
            // The peer end gets an address of the same subnet: two connected routes for
            // one prefix, on different interfaces.
            let p = host_part(rng, f.v4);
            cmds.push(format!("addr add {p}/{} dev pe{i}", f.v4.prefix_len()));
            let p6 = rand_in6(rng, f.v6);
            cmds.push(format!(
                "addr add {p6}/{} dev pe{i} nodad",
                f.v6.prefix_len()
            ));
        }
        for _ in 0..3 {
            gateways.push(IpAddr::V4(host_part(rng, f.v4)));
            gateways.push(IpAddr::V6(rand_in6(rng, f.v6)));
        }
        if rng.pct(15) {
            cmds.push(format!("link set dev {} group 7", f.name));
        }
    }
    // Prefix pools: connected subnets, pieces of them, remote networks, hosts, default.
    let mut pool4: Vec<Ipv4Net> = Vec::new();
    let mut pool6: Vec<Ipv6Net> = Vec::new();
    for f in &ifaces {
        pool4.push(f.v4);
        pool6.push(f.v6);
        if f.v4.prefix_len() < 28 {
            pool4.push(Ipv4Net::new(f.v4.network(), f.v4.prefix_len() + 2).expect("sub"));
        }
        pool6.push(Ipv6Net::new(f.v6.network(), 48).expect("sub").trunc());
    }
    for s in [
        "0.0.0.0/0",
        "172.16.0.0/12",
        "172.16.0.0/16",
        "172.16.1.0/24",
        "172.16.2.0/24",
        "192.168.0.0/16",
        "192.168.7.0/24",
        "198.51.100.0/24",
        "198.51.100.7/32",
        "203.0.113.0/24",
        "203.0.113.128/25",
        "100.64.0.0/10",
        "10.0.0.0/8",
    ] {
        pool4.push(s.parse().expect("pool4"));
    }
    for s in [
        "::/0",
        "2001:db8::/32",
        "2001:db8:f0::/44",
        "2001:db8:f1::/48",
        "2001:db8:f2::/48",
        "2001:db8:f1:5::/64",
        "2001:db8:ff::1/128",
        "fd00::/8",
        "2000::/3",
    ] {
        pool6.push(s.parse().expect("pool6"));
    }
    // Tables: 2-6 of them (main counts), routes of every type.
    let n_tables = rng.range(2, 6);
    let mut tables: Vec<&str> = vec!["main"];
    while tables.len() < n_tables {
        let t = *rng.pick(TABLE_CHOICES);
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    // IPv6 source-specific routes only where no interface goes down later: deleting the
    // plain routes of a prefix that has a source subtree leaves kernel state no output
    // shows (see the engine's table6 documentation).
    let src_routing = rng.pct(35);
    for &table in &tables {
        for family in [Family::Inet4, Family::Inet6] {
            for _ in 0..rng.range(3, 10) {
                cmds.push(route_cmd(
                    rng,
                    family,
                    table,
                    &ifaces,
                    &pool4,
                    &pool6,
                    src_routing,
                ));
            }
        }
    }
    // Device routes first, as people write them: a gateway is resolved once, when its
    // route is added, against the routes present then.
    let first_dev_routes: Vec<String> = cmds
        .iter()
        .filter(|c| c.contains(" dev ") && !c.contains(" via ") && !c.contains("nexthop"))
        .cloned()
        .collect();
    cmds.retain(|c| !first_dev_routes.contains(c));
    let addr_cmds = cmds.len() - cmds.iter().filter(|c| c.contains("route add")).count();
    for (k, c) in first_dev_routes.into_iter().enumerate() {
        cmds.insert(addr_cmds + k, c);
    }
    if rng.pct(15) {
        // A local route someone added (AnyIP style): custom local routes change rp_filter.
        let t = *rng.pick(&tables);
        cmds.push(format!("route add local 192.168.77.0/24 dev lo table {t}"));
    }
    // Rules.
    let marks = mark_choices(rng);
    let ports = vec![(20u16, 30u16), (25, 25), (1000, 2000), (53, 53)];
    let mut rule_tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    rule_tables.extend(["main".into(), "local".into(), "9999".into()]);
    for family in [Family::Inet4, Family::Inet6] {
        let fl = match family {
            Family::Inet4 => "-4",
            Family::Inet6 => "-6",
        };
        // Some setups keep only the default rules (the IPv4 shortcut path).
        let n_rules = if rng.pct(10) { 0 } else { rng.range(2, 10) };
        let mut prios: Vec<u32> = (0..n_rules).map(|_| 1000 + rng.below(60) as u32).collect();
        prios.sort_unstable();
        for &prio in &prios {
            let mut sel = String::new();
            if rng.pct(15) {
                sel.push_str(" not");
            }
            if rng.pct(25) {
                let p = match family {
                    Family::Inet4 => IpNet::V4(*rng.pick(&pool4)),
                    Family::Inet6 => IpNet::V6(*rng.pick(&pool6)),
                };
                sel.push_str(&format!(" from {p}"));
            }
            if rng.pct(25) {
                let p = match family {
                    Family::Inet4 => IpNet::V4(*rng.pick(&pool4)),
                    Family::Inet6 => IpNet::V6(*rng.pick(&pool6)),
                };
                sel.push_str(&format!(" to {p}"));
            }
            if rng.pct(15) {
                let dev = match rng.below(6) {
                    0 => "lo".to_string(),
                    1 => "nonexist0".to_string(),
                    _ => rng.pick(&ifaces).name.clone(),
                };
                sel.push_str(&format!(" iif {dev}"));
            }
            if rng.pct(8) {
                let dev = if rng.pct(20) {
                    "lo".to_string()
                } else {
                    rng.pick(&ifaces).name.clone()
                };
                sel.push_str(&format!(" oif {dev}"));
            }
            if rng.pct(35) {
                sel.push_str(&format!(" fwmark {}", fmt_mark(*rng.pick(&marks))));
            }
            if rng.pct(10) {
                let proto = *rng.pick(&["tcp", "udp"]);
                let (a, b) = *rng.pick(&ports);
                let which = *rng.pick(&["sport", "dport"]);
                let range = if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                };
                sel.push_str(&format!(" ipproto {proto} {which} {range}"));
            }
            if family == Family::Inet4 && rng.pct(6) {
                sel.push_str(&format!(" tos {:#x}", rng.pick(&[0x10u8, 0x08, 0x04])));
            }
            let action = match rng.below(100) {
                0..=69 => {
                    let mut a = format!("lookup {}", rng.pick(&rule_tables));
                    if rng.pct(12) {
                        let n = match family {
                            Family::Inet4 => *rng.pick(&[0u8, 0, 8, 16, 24, 32]),
                            Family::Inet6 => *rng.pick(&[0u8, 0, 32, 48, 64, 128]),
                        };
                        a.push_str(&format!(" suppress_prefixlength {n}"));
                    } else if rng.pct(6) {
                        a.push_str(" suppress_ifgroup 7");
                    }
                    a
                }
                70..=79 => {
                    // Mostly to an existing later priority, sometimes to nothing.
                    let later: Vec<u32> = prios.iter().copied().filter(|p| *p > prio).collect();
                    let target = if !later.is_empty() && rng.pct(75) {
                        *rng.pick(&later)
                    } else {
                        prio + 1 + rng.below(50) as u32
                    };
                    format!("goto {target}")
                }
                80..=84 => "nop".into(),
                85..=89 => "blackhole".into(),
                90..=94 => "unreachable".into(),
                _ => "prohibit".into(),
            };
            cmds.push(format!("{fl} rule add pref {prio}{sel} {action}"));
        }
        if rng.pct(10) {
            // Move `lookup local` after other rules (a documented, legal setup).
            cmds.push(format!("{fl} rule add pref 1059 lookup local"));
            cmds.push(format!("{fl} rule del pref 0"));
        }
        if rng.pct(8) {
            cmds.push(format!("{fl} rule del pref 32767"));
        }
    }
    // Run each family's commands with its flag (`blackhole default` needs it).
    for (flag, opts) in [("", &[][..]), ("-4 ", &["-4"][..]), ("-6 ", &["-6"][..])] {
        let mine: Vec<String> = cmds
            .iter()
            .filter(|c| {
                if flag.is_empty() {
                    !c.starts_with("-4 ") && !c.starts_with("-6 ")
                } else {
                    c.starts_with(flag)
                }
            })
            .map(|c| c.strip_prefix(flag).unwrap_or(c).to_string())
            .collect();
        let answers = ip_batch_with(host.name(), opts, false, &mine);
        for (c, a) in mine.iter().zip(&answers) {
            script.push(match a {
                Ok(_) => format!("{flag}{c}"),
                Err(e) => format!("{flag}{c}    # failed: {e}"),
            });
        }
    }
    // Sysctls: `all` first (writing all.forwarding overwrites every interface).
    let mut sys: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: &str| sys.push((k, v.to_string()));
    set(
        "net.ipv4.conf.all.forwarding".into(),
        if rng.pct(60) { "1" } else { "0" },
    );
    set(
        "net.ipv6.conf.all.forwarding".into(),
        if rng.pct(50) { "1" } else { "0" },
    );
    let all_rp_filter = *rng.pick(&["0", "0", "1", "2"]);
    set("net.ipv4.conf.all.rp_filter".into(), all_rp_filter);
    if rng.pct(20) {
        set("net.ipv4.conf.all.src_valid_mark".into(), "1");
    }
    if rng.pct(10) {
        set("net.ipv4.conf.all.ignore_routes_with_linkdown".into(), "1");
    }
    if rng.pct(10) {
        set("net.ipv4.conf.all.accept_local".into(), "1");
    }
    for f in &ifaces {
        let n = &f.name;
        if rng.pct(20) {
            set(
                format!("net.ipv4.conf.{n}.forwarding"),
                if rng.pct(50) { "1" } else { "0" },
            );
        }
        let v = *rng.pick(&["0", "1", "2"]);
        set(format!("net.ipv4.conf.{n}.rp_filter"), v);
        if rng.pct(20) {
            set(format!("net.ipv4.conf.{n}.src_valid_mark"), "1");
        }
        if rng.pct(10) {
            set(format!("net.ipv4.conf.{n}.accept_local"), "1");
        }
        if rng.pct(15) {
            set(
                format!("net.ipv4.conf.{n}.ignore_routes_with_linkdown"),
                "1",
            );
        }
        if rng.pct(15) {
            set(
                format!("net.ipv6.conf.{n}.ignore_routes_with_linkdown"),
                "1",
            );
        }
        if rng.pct(10) {
            set(format!("net.ipv4.conf.{n}.send_redirects"), "0");
        }
    }
    sysctl_w(host.name(), &sys);
    script.extend(sys.iter().map(|(k, v)| format!("sysctl {k}={v}")));
    // Take some interfaces down (routes vanish or go dead) and some peers (linkdown).
    let mut downs = Vec::new();
    let mut peer_downs = Vec::new();
    for f in ifaces.iter().skip(1) {
        if rng.pct(20) && !src_routing {
            downs.push(format!("link set dev {} down", f.name));
        } else if rng.pct(20) {
            peer_downs.push(format!("link set dev p{} down", &f.name[1..]));
        }
    }
    let carrier_lost: Vec<String> = peer_downs
        .iter()
        .filter_map(|c| c.split_whitespace().nth(3))
        .map(|p| format!("v{}", &p[1..]))
        .collect();
    if same_ns {
        downs.extend(peer_downs);
        ip_batch(host.name(), false, &downs);
        script.extend(downs);
    } else {
        ip_batch(host.name(), false, &downs);
        ip_batch(peer.name(), false, &peer_downs);
        script.extend(downs);
        script.extend(
            peer_downs
                .iter()
                .map(|c| format!("{c}    # in the peer namespace")),
        );
    }
    wait_for_linkwatch(host, &carrier_lost);
    Setup {
        ifaces,
        script,
        marks,
        ports,
        pool4,
        pool6,
        gateways,
    }
}

/// Carrier changes reach the routing tables asynchronously (linkwatch marks routes
/// `linkdown` a moment later): wait until the interfaces report it.
fn wait_for_linkwatch(host: &Netns, devs: &[String]) {
    for dev in devs {
        for _ in 0..150 {
            let out = host
                .ip(&format!("-j link show dev {dev}"))
                .unwrap_or_default();
            let up = serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v.get(0)?.get("operstate")?.as_str().map(|s| s == "UP"))
                .unwrap_or(false);
            if !up {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if !devs.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
}

fn route_cmd(
    rng: &mut Rng,
    family: Family,
    table: &str,
    ifaces: &[Iface],
    pool4: &[Ipv4Net],
    pool6: &[Ipv6Net],
    src_routing: bool,
) -> String {
    let (fl, dst) = match family {
        Family::Inet4 => ("-4", IpNet::V4(*rng.pick(pool4))),
        Family::Inet6 => ("-6", IpNet::V6(*rng.pick(pool6))),
    };
    let dst = if dst.prefix_len() == 0 {
        "default".to_string()
    } else {
        dst.to_string()
    };
    let metric = match (family, rng.below(4)) {
        (_, 0) => String::new(),
        (Family::Inet4, n) => format!(" metric {}", [0, 10, 50, 100][n]),
        (Family::Inet6, n) => format!(" metric {}", [0, 10, 256, 2048][n]),
    };
    let nexthop = |rng: &mut Rng| {
        let f = rng.pick(ifaces);
        match family {
            Family::Inet4 => {
                if rng.pct(8) {
                    format!("via 192.0.2.{} dev {} onlink", rng.range(1, 254), f.name)
                } else if rng.pct(25) {
                    format!("dev {}", f.name)
                } else {
                    let gw = loop {
                        let a = rand_in4(rng, f.v4);
                        if a != f.v4.network() && a != f.v4.broadcast() {
                            break a;
                        }
                    };
                    format!("via {gw} dev {}", f.name)
                }
            }
            Family::Inet6 => {
                if rng.pct(20) {
                    format!("via fe80::{:x} dev {}", rng.range(1, 0xffff), f.name)
                } else if rng.pct(20) {
                    format!("dev {}", f.name)
                } else {
                    format!("via {} dev {}", rand_in6(rng, f.v6), f.name)
                }
            }
        }
    };
    // `table`/`metric` must come before multipath `nexthop`s (iproute2 aborts the whole
    // batch otherwise).
    let (head, tail) = match rng.below(100) {
        0..=59 => {
            let mut b = format!("{dst} {}", nexthop(rng));
            if family == Family::Inet4 && rng.pct(6) {
                b.push_str(&format!(" tos {:#x}", rng.pick(&[0x10u8, 0x08])));
            }
            (b, String::new())
        }
        60..=69 => {
            let n = rng.range(2, 3);
            let hops: Vec<String> = (0..n)
                .map(|_| {
                    let mut h = nexthop(rng);
                    if h.starts_with("dev") {
                        // Multipath next hops need gateways on IPv6.
                        h = nexthop(rng);
                    }
                    format!("nexthop {h} weight {}", rng.range(1, 3))
                })
                .collect();
            (dst, format!(" {}", hops.join(" ")))
        }
        70..=76 => (format!("blackhole {dst}"), String::new()),
        77..=83 => (format!("unreachable {dst}"), String::new()),
        84..=90 => (format!("prohibit {dst}"), String::new()),
        _ => (format!("throw {dst}"), String::new()),
    };
    // IPv6 source-specific routes (`from PREFIX`, subtrees) now and then.
    let from =
        if src_routing && family == Family::Inet6 && rng.pct(10) && !head.starts_with("throw") {
            format!(
                " from {}",
                rng.pick(&["2001:db8:1::/48", "2001:db8::/32", "2001:db8:2::/64"])
            )
        } else {
            String::new()
        };
    format!("{fl} route add {head}{from} table {table}{metric}{tail}")
}

// ---- reading the kernel back --------------------------------------------------------

struct Texts {
    rule: String,
    rule6: String,
    route: String,
    route6: String,
    addr: String,
    sysctl: String,
}

fn read_texts(ns: &Netns) -> Texts {
    Texts {
        rule: ns.ip("rule").expect("ip rule"),
        rule6: ns.ip("-6 rule").expect("ip -6 rule"),
        route: ns.ip("route show table all").expect("ip route"),
        route6: ns.ip("-6 route show table all").expect("ip -6 route"),
        addr: ns.ip("-j addr").expect("ip -j addr"),
        sysctl: ns
            .sh("sysctl -a 2>/dev/null | grep -E '^net\\.ipv[46]\\.(conf\\.|ip_forward)' || true")
            .expect("sysctl -a"),
    }
}

fn parse_state(t: &Texts) -> RoutingState {
    RoutingState::from_texts(&StateTexts {
        ip_rule: &t.rule,
        ip6_rule: &t.rule6,
        ip_route: &t.route,
        ip6_route: &t.route6,
        ip_addr_json: &t.addr,
        sysctl: &t.sysctl,
        rt_tables: "",
    })
    .unwrap_or_else(|e| {
        panic!(
            "the parsers rejected real kernel output: {e}\n--- ip rule\n{}\n--- ip -6 rule\n{}\n--- ip route\n{}\n--- ip -6 route\n{}",
            t.rule, t.rule6, t.route, t.route6
        )
    })
}

// ---- random packets -----------------------------------------------------------------

fn gen_packet(rng: &mut Rng, s: &Setup, st: &RoutingState) -> Query {
    let family = if rng.pct(50) {
        Family::Inet4
    } else {
        Family::Inet6
    };
    let own: Vec<IpAddr> = st
        .links
        .values()
        .flat_map(|l| l.addrs.iter().map(|n| n.addr()))
        .filter(|a| Family::of(a) == family && !is_link_local(a))
        .collect();
    let route_dsts: Vec<IpNet> = st
        .routes
        .iter()
        .filter(|r| r.family == family)
        .map(|r| r.dst)
        .filter(|d| !is_special(&d.network()))
        .collect();
    let subnets: Vec<IpNet> = s
        .ifaces
        .iter()
        .map(|f| match family {
            Family::Inet4 => IpNet::V4(f.v4),
            Family::Inet6 => IpNet::V6(f.v6),
        })
        .collect();
    let pool: Vec<IpNet> = match family {
        Family::Inet4 => s.pool4.iter().map(|n| IpNet::V4(*n)).collect(),
        Family::Inet6 => s.pool6.iter().map(|n| IpNet::V6(*n)).collect(),
    };
    let gws: Vec<IpAddr> = s
        .gateways
        .iter()
        .copied()
        .filter(|g| Family::of(g) == family)
        .collect();
    let random_addr = |rng: &mut Rng| match family {
        Family::Inet4 => IpAddr::V4(Ipv4Addr::new(
            [8u8, 100, 172, 192, 198, 203, 10][rng.below(7)],
            rng.below(256) as u8,
            rng.below(256) as u8,
            rng.range(1, 254) as u8,
        )),
        Family::Inet6 => rand_in(rng, "2001:db8::/32".parse().expect("net")),
    };
    let addr_from = |rng: &mut Rng, local_ok: bool| -> IpAddr {
        loop {
            let a = match rng.below(100) {
                0..=34 if !route_dsts.is_empty() => {
                    let d = *rng.pick(&route_dsts);
                    rand_in(rng, d)
                }
                35..=54 => {
                    let d = *rng.pick(&subnets);
                    rand_in(rng, d)
                }
                55..=64 if local_ok && !own.is_empty() => *rng.pick(&own),
                65..=69 if family == Family::Inet4 => {
                    // Subnet broadcast.
                    match *rng.pick(&subnets) {
                        IpNet::V4(n) => IpAddr::V4(n.broadcast()),
                        n => n.addr(),
                    }
                }
                70..=79 if !gws.is_empty() => *rng.pick(&gws),
                80..=81 => match family {
                    Family::Inet4 => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                    Family::Inet6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
                },
                // Link-local destinations (IPv6 needs the route on the given interface).
                90..=91 if family == Family::Inet6 => {
                    return IpAddr::V6(Ipv6Addr::new(
                        0xfe80,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        rng.range(1, 0xffff) as u16,
                    ));
                }
                82..=89 => {
                    let d = *rng.pick(&pool);
                    rand_in(rng, d)
                }
                _ => random_addr(rng),
            };
            if !is_special(&a) {
                return a;
            }
        }
    };
    let input = rng.pct(34);
    let up_ifaces: Vec<&str> = s
        .ifaces
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| st.links.get(*n).is_some_and(|l| l.up))
        .collect();
    let dst = addr_from(rng, true);
    let mut q = Query::output(dst);
    if input && !up_ifaces.is_empty() {
        q.iif = Some(rng.pick(&up_ifaces).to_string());
        let local_ok = rng.pct(30);
        q.src = Some(addr_from(rng, local_ok));
        if family == Family::Inet4 && rng.pct(2) {
            q.dst = IpAddr::V4(Ipv4Addr::BROADCAST);
        }
    } else {
        match rng.below(100) {
            0..=44 => {}
            45..=84 if !own.is_empty() => q.src = Some(*rng.pick(&own)),
            _ => q.src = Some(addr_from(rng, false)),
        }
        if rng.pct(15) {
            q.oif = Some(if rng.pct(10) {
                "lo".to_string()
            } else {
                rng.pick(&s.ifaces).name.clone()
            });
        }
    }
    if q.src.is_some_and(|a| is_loopback(&a)) && q.iif.is_some() {
        q.src = Some(random_addr(rng));
    }
    if rng.pct(50) {
        let (v, m) = *rng.pick(&s.marks);
        q.mark = if rng.pct(60) {
            v | ((rng.next_u64() as u32) & !m & 0x00f0_00f0)
        } else {
            rng.next_u64() as u32 & 0x0f0f_0f0f
        };
    }
    if rng.pct(20) {
        q.ipproto = Some(*rng.pick(&[6u8, 17]));
        let (a, b) = *rng.pick(&s.ports);
        let p = if rng.pct(70) {
            a + rng.below(usize::from(b - a) + 1) as u16
        } else {
            rng.range(1, 65535) as u16
        };
        if rng.pct(50) {
            q.sport = Some(p);
            q.dport = Some(rng.range(1, 65535) as u16);
        } else {
            q.dport = Some(p);
            q.sport = Some(rng.range(1, 65535) as u16);
        }
    }
    if family == Family::Inet4 && rng.pct(10) {
        q.tos = *rng.pick(&[0x10u8, 0x08, 0x04, 0x1c]);
    }
    q
}

fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

fn is_loopback(a: &IpAddr) -> bool {
    a.is_loopback()
}

/// Addresses the test leaves out: multicast, unspecified, 0.0.0.0/8, link-local.
fn is_special(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_multicast() || v.octets()[0] == 0 || v.is_broadcast(),
        IpAddr::V6(v) => v.is_multicast() || v.is_unspecified() || is_link_local(a),
    }
}

fn route_get(q: &Query) -> String {
    let mut c = format!("route get {}", q.dst);
    if let Some(s) = q.src {
        c.push_str(&format!(" from {s}"));
    }
    if let Some(i) = &q.iif {
        c.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &q.oif {
        c.push_str(&format!(" oif {o}"));
    }
    if q.mark != 0 {
        c.push_str(&format!(" mark {:#x}", q.mark));
    }
    if let Some(p) = q.ipproto {
        c.push_str(&format!(" ipproto {}", if p == 6 { "tcp" } else { "udp" }));
    }
    if let Some(p) = q.sport {
        c.push_str(&format!(" sport {p}"));
    }
    if let Some(p) = q.dport {
        c.push_str(&format!(" dport {p}"));
    }
    if q.tos != 0 {
        c.push_str(&format!(" tos {:#x}", q.tos));
    }
    c
}

// ---- comparing ----------------------------------------------------------------------

const ERRORS: &[(&str, RouteError)] = &[
    ("Network is unreachable", RouteError::NetworkUnreachable),
    ("No route to host", RouteError::HostUnreachable),
    ("Permission denied", RouteError::PermissionDenied),
    ("Invalid argument", RouteError::InvalidArgument),
    ("Invalid cross-device link", RouteError::InvalidArgument),
    ("No such device", RouteError::NoSuchDevice),
    ("Cannot find device", RouteError::NoSuchDevice),
];

fn kernel_error(msg: &str) -> Option<RouteError> {
    ERRORS
        .iter()
        .find(|(text, _)| msg.contains(text))
        .map(|(_, e)| *e)
}

/// The kernel's answer must match the verdict or one of its hash-dependent alternatives.
fn compare(v: &Verdict, kernel: &Result<String, String>) -> Result<(), String> {
    let first = compare_one(v, kernel);
    if first.is_ok() || v.alternatives.iter().any(|a| compare(a, kernel).is_ok()) {
        Ok(())
    } else {
        first
    }
}

fn compare_one(v: &Verdict, kernel: &Result<String, String>) -> Result<(), String> {
    match (v.error, kernel) {
        (Some(e), Err(msg)) => match kernel_error(msg) {
            Some(k) if k == e => Ok(()),
            _ => Err(format!("model error {e:?}, kernel error {msg:?}")),
        },
        (Some(e), Ok(json)) => Err(format!("model error {e:?}, kernel route {json}")),
        (None, Err(msg)) => Err(format!(
            "model {:?} via {:?}, kernel error {msg:?}",
            v.kind, v.interface
        )),
        (None, Ok(json)) => {
            let parsed: Value = serde_json::from_str(json).map_err(|e| format!("bad JSON: {e}"))?;
            let r = parsed.get(0).ok_or("empty JSON answer")?;
            let ktype = r.get("type").and_then(Value::as_str).unwrap_or("unicast");
            let mtype = match v.kind {
                VerdictKind::Unicast | VerdictKind::Drop => "unicast",
                VerdictKind::Local => "local",
                VerdictKind::Broadcast => "broadcast",
                VerdictKind::Multicast => "multicast",
                VerdictKind::Anycast => "anycast",
                other => return Err(format!("model {other:?} without error, kernel {json}")),
            };
            if ktype != mtype {
                return Err(format!("type: model {mtype}, kernel {ktype}"));
            }
            let dev = r.get("dev").and_then(Value::as_str).unwrap_or("");
            let gw: Option<IpAddr> = r
                .get("gateway")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok());
            if v.candidates.is_empty() {
                if v.interface.as_deref() != Some(dev) || v.via != gw {
                    return Err(format!(
                        "egress: model {:?} via {:?}, kernel {dev} via {gw:?}",
                        v.interface, v.via
                    ));
                }
            } else if !v.candidates.iter().any(|(d, g)| d == dev && *g == gw) {
                return Err(format!(
                    "egress: kernel {dev} via {gw:?} is not among the model's {:?}",
                    v.candidates
                ));
            }
            let ktable = r
                .get("table")
                .and_then(Value::as_str)
                .and_then(|t| TableNames::default().id(t))
                .filter(|t| *t != 254);
            let mtable = v.table.filter(|t| *t != 254);
            if ktable != mtable {
                return Err(format!("table: model {mtable:?}, kernel {ktable:?}"));
            }
            Ok(())
        }
    }
}

// ---- the test ------------------------------------------------------------------------

fn require_root() {
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        euid, 0,
        "explain_routing_kernel builds network namespaces and compares with the kernel: it needs root \
         (run `sudo cargo test --test integration explain_routing_kernel::` or `sudo scripts/test`)"
    );
    let ip_ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ip_ok, "`ip` (iproute2) is missing: run `scripts/setup`");
}

fn seed() -> u64 {
    match std::env::var("SYMROUTE_EXPLAIN_SEED").ok().as_deref() {
        None | Some("") => DEFAULT_SEED,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Some(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .expect("SYMROUTE_EXPLAIN_SEED: a number, 0x-hex, or `random`")
        }
    }
}

#[test]
fn engine_matches_kernel_route_get() {
    require_root();
    let seed = seed();
    let setups: usize = std::env::var("SYMROUTE_EXPLAIN_SETUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SETUPS);
    println!(
        "explain_routing_kernel: seed {seed:#x} (replay with SYMROUTE_EXPLAIN_SEED={seed:#x})"
    );
    let started = Instant::now();
    let mut packets = 0usize;
    let mut inputs = 0usize;
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_error: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = 0usize;
    let mut reports = Vec::new();
    let mut mismatch_kinds: BTreeSet<String> = BTreeSet::new();
    let mut rules_seen = 0usize;
    let mut config_cmds = 0usize;
    let mut config_failed = 0usize;
    let mut failure_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut routes_seen = 0usize;
    for i in 0..setups {
        let setup_seed = seed.wrapping_add(i as u64);
        let mut rng = Rng::mixed(setup_seed);
        let host = Netns::new("xr").expect("netns");
        let peer = Netns::new("xp").expect("netns");
        let same_ns = rng.pct(40);
        let setup = build(&mut rng, &host, &peer, same_ns);
        let texts = read_texts(&host);
        let state = parse_state(&texts);
        config_cmds += setup.script.len();
        for line in setup.script.iter().filter(|l| l.contains("# failed")) {
            config_failed += 1;
            if let Some((_, why)) = line.split_once("# failed: ") {
                *failure_reasons.entry(why.to_string()).or_default() += 1;
            }
        }
        rules_seen += state.rules.len();
        if std::env::var_os("SYMROUTE_EXPLAIN_DEBUG").is_some() {
            println!(
                "setup {i}: {} rules, {} routes\n  ip {}\n{}{}{}{}",
                state.rules.len(),
                state.routes.len(),
                setup.script.join("\n  ip "),
                texts.rule,
                texts.rule6,
                texts.route,
                texts.route6
            );
        }
        routes_seen += state.routes.len();
        let queries: Vec<Query> = (0..PACKETS_PER_SETUP)
            .map(|_| gen_packet(&mut rng, &setup, &state))
            .collect();
        let cmds: Vec<String> = queries.iter().map(route_get).collect();
        let answers = ip_batch(host.name(), true, &cmds);
        let mut dumped = false;
        for ((q, cmd), kernel) in queries.iter().zip(&cmds).zip(&answers) {
            packets += 1;
            if q.iif.is_some() {
                inputs += 1;
            }
            let result = lookup(&state, q);
            let v = &result.verdict;
            *by_kind
                .entry(format!("{:?}", v.kind).to_lowercase())
                .or_default() += 1;
            if let Some(e) = v.error {
                *by_error.entry(format!("{e:?}")).or_default() += 1;
            }
            if let Err(why) = compare(v, kernel) {
                mismatches += 1;
                mismatch_kinds.insert(format!("{:?}", v.kind));
                if reports.len() < MAX_REPORTS {
                    let mut r = String::new();
                    if !dumped {
                        dumped = true;
                        r.push_str(&format!(
                            "=== setup {i} (seed {setup_seed:#x}, peers in {}): built with\n  ip {}\n--- ip rule\n{}--- ip -6 rule\n{}--- ip route show table all\n{}--- ip -6 route show table all\n{}",
                            if same_ns { "the same namespace" } else { "a second namespace" },
                            setup.script.join("\n  ip "),
                            texts.rule,
                            texts.rule6,
                            texts.route,
                            texts.route6
                        ));
                    }
                    r.push_str(&format!(
                        "--- MISMATCH setup {i}: ip {cmd}\n    packet: {}\n    {why}\n    kernel: {}\n    model:  {:?}: {} (error {:?}, dev {:?}, via {:?}, table {:?}, candidates {:?}, {} alternatives)\n    steps:\n",
                        describe_query(q),
                        match kernel {
                            Ok(j) => j.clone(),
                            Err(e) => e.clone(),
                        },
                        v.kind,
                        v.reason,
                        v.error,
                        v.interface,
                        v.via,
                        v.table,
                        v.candidates,
                        v.alternatives.len()
                    ));
                    for s in &result.steps {
                        r.push_str(&format!(
                            "      [{:?}] {} {} {}\n",
                            s.stage,
                            s.rule.as_deref().unwrap_or("-"),
                            if s.matched { "=>" } else { "x " },
                            s.note
                        ));
                    }
                    reports.push(r);
                }
            }
        }
    }
    for r in &reports {
        println!("{r}");
    }
    println!(
        "explain_routing_kernel: {setups} setups ({rules_seen} rules, {routes_seen} routes parsed from real output), \
         {packets} packets ({inputs} input, {} output) in {:.1}s",
        packets - inputs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  config commands: {config_cmds}, rejected by the kernel: {config_failed} {failure_reasons:?}"
    );
    println!("  verdicts: {by_kind:?}");
    println!("  errors:   {by_error:?}");
    println!("  mismatches: {mismatches}");
    assert!(packets >= 10_000, "only {packets} packets");
    assert_eq!(
        mismatches, 0,
        "{mismatches} packets routed differently by the engine and the kernel (kinds {mismatch_kinds:?}); replay with SYMROUTE_EXPLAIN_SEED={seed:#x}"
    );
}

// ---- real sockets on hosts without a way back in main -------------------------------

const SOCKET_SETUPS: usize = 8;
const SOCKETS_PER_SETUP: usize = 160;

/// The addresses a server on the host can bind: on up interfaces, not link-local or
/// loopback.
fn own_addresses(st: &RoutingState) -> Vec<IpAddr> {
    st.links
        .values()
        .filter(|l| l.up)
        .flat_map(|l| l.addrs.iter().map(|n| n.addr()))
        .filter(|a| !is_link_local(a) && !a.is_loopback())
        .collect()
}

/// What a socket's `sendto` answered: sent, or the errno as a route error.
fn socket_result(e: Option<nix::errno::Errno>) -> Result<(), Option<RouteError>> {
    use nix::errno::Errno;
    match e {
        None => Ok(()),
        Some(Errno::ENETUNREACH) => Err(Some(RouteError::NetworkUnreachable)),
        Some(Errno::EHOSTUNREACH) => Err(Some(RouteError::HostUnreachable)),
        Some(Errno::EACCES) | Some(Errno::EPERM) => Err(Some(RouteError::PermissionDenied)),
        Some(Errno::EINVAL) => Err(Some(RouteError::InvalidArgument)),
        Some(Errno::ENODEV) => Err(Some(RouteError::NoSuchDevice)),
        Some(_) => Err(None),
    }
}

/// One UDP datagram the way a server answers: a socket bound to `src` (port 0: the
/// kernel picks one), `SO_MARK` = `mark`, `sendto(dst:9)`. Returns the bound port and
/// whether the kernel sent it. Runs inside the namespace.
fn send_from(src: IpAddr, dst: IpAddr, mark: u32) -> (u16, Option<nix::errno::Errno>) {
    use nix::sys::socket::{
        self as s, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    let family = match src {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = s::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    s::setsockopt(&fd, sockopt::Mark, &mark).expect("SO_MARK");
    // Broadcast destinations are routed like the rest, not refused for a missing flag.
    s::setsockopt(&fd, sockopt::Broadcast, &true).expect("SO_BROADCAST");
    if let Err(e) = s::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    ) {
        panic!("bind {src}: {e}");
    }
    let port = s::getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v| v.port())
                .or(a.as_sockaddr_in6().map(|v| v.port()))
        })
        .unwrap_or(0);
    let to = SockaddrStorage::from(SocketAddr::new(dst, 9));
    let r = s::sendto(fd.as_raw_fd(), b"x", &to, s::MsgFlags::MSG_DONTWAIT);
    (port, r.err())
}

/// The routing engine against real sockets on hosts whose main table has no default
/// route (an uplink down, or none by design), some with symroute-style local reply
/// rules (`from <own address> lookup <table>` after main and default). Each packet
/// is what a server sends: bound source, socket mark, UDP; the kernel routes it once,
/// before any output hook, and `sendto` fails when that lookup does. The engine's
/// verdict for the same flow must agree: sent, or the same error.
#[test]
fn engine_matches_sockets_without_a_default_in_main() {
    require_root();
    let seed = seed() ^ 0x050c_4e75;
    println!("explain_routing_kernel sockets: seed {seed:#x}");
    let (mut sent, mut by_source, mut failed) = (0usize, 0usize, 0usize);
    let mut mismatches = Vec::new();
    for i in 0..SOCKET_SETUPS {
        let mut rng = Rng::mixed(seed.wrapping_add(i as u64));
        let host = Netns::new("xs").expect("netns");
        let peer = Netns::new("xq").expect("netns");
        let setup = build(&mut rng, &host, &peer, false);
        // No way back in main: its default routes go (whatever kind build made).
        let mut cmds = Vec::new();
        for fl in ["-4", "-6"] {
            cmds.push(format!(
                "{fl} route flush table main exact {}",
                if fl == "-4" { "0.0.0.0/0" } else { "::/0" }
            ));
        }
        let st0 = parse_state(&read_texts(&host));
        let own = own_addresses(&st0);
        if rng.pct(70) {
            // A gateway table as symroute makes one (a default route through an uplink),
            // and now and then a table of the random setup.
            let up: Vec<&String> = st0
                .links
                .iter()
                .filter(|(n, l)| l.up && n.as_str() != "lo")
                .map(|(n, _)| n)
                .collect();
            if let Some(dev) = up.first() {
                cmds.push(format!("-4 route add default dev {dev} table 4242"));
                cmds.push(format!("-6 route add default dev {dev} table 4242"));
            }
            let tables = ["4242", "4242", "4242", "100", "200", "42000"];
            for a in &own {
                if rng.pct(60) {
                    let t = rng.pick(&tables);
                    cmds.push(format!("rule add pref 32800 from {a} lookup {t}"));
                }
            }
        }
        for c in &cmds {
            let _ = host.ip(c);
        }
        let texts = read_texts(&host);
        let state = parse_state(&texts);
        assert!(
            !state
                .routes
                .iter()
                .any(|r| r.table == 254 && r.dst.prefix_len() == 0),
            "main kept a default route:\n{}{}",
            texts.route,
            texts.route6
        );
        let own = own_addresses(&state);
        if own.is_empty() {
            continue;
        }
        let queries: Vec<Query> = (0..SOCKETS_PER_SETUP)
            .filter_map(|_| {
                let mut q = gen_packet(&mut rng, &setup, &state);
                let src = *rng.pick(&own);
                if Family::of(&src) != Family::of(&q.dst) || q.dst.is_loopback() {
                    return None;
                }
                if rng.pct(50) {
                    // A client out on the Internet: nothing in main leads there.
                    q.dst = match src {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(
                            198,
                            18,
                            rng.below(256) as u8,
                            rng.range(1, 254) as u8,
                        )),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(
                            0x2001,
                            0xdb8,
                            0xffee,
                            0,
                            0,
                            0,
                            0,
                            rng.range(1, 0xffff) as u16,
                        )),
                    };
                }
                q.src = Some(src);
                q.iif = None;
                q.oif = None;
                q.tos = 0;
                q.ipproto = Some(17);
                q.dport = Some(9);
                Some(q)
            })
            .collect();
        let results = symroute::lab::in_netns(host.name(), {
            let queries = queries.clone();
            move || {
                queries
                    .iter()
                    .map(|q| send_from(q.src.expect("source"), q.dst, q.mark))
                    .collect::<Vec<_>>()
            }
        })
        .expect("in netns");
        for (mut q, (port, errno)) in queries.into_iter().zip(results) {
            q.sport = Some(port);
            let v = lookup(&state, &q).verdict;
            let real = socket_result(errno);
            let model: Result<(), Option<RouteError>> = match v.error {
                None => Ok(()),
                Some(e) => Err(Some(e)),
            };
            let agrees = real == model
                || v.alternatives
                    .iter()
                    .any(|a| a.error.map_or(Ok(()), |e| Err(Some(e))) == real);
            match real {
                Ok(()) if v.rule == Some(32800) => by_source += 1,
                Ok(()) => sent += 1,
                Err(_) => failed += 1,
            }
            if !agrees && mismatches.len() < MAX_REPORTS {
                mismatches.push(format!(
                    "setup {i}: {}: socket {errno:?}, engine {:?} {:?}: {}\n--- ip rule\n{}--- ip -6 rule\n{}--- ip route\n{}--- ip -6 route\n{}",
                    describe_query(&q),
                    v.kind,
                    v.error,
                    v.reason,
                    texts.rule,
                    texts.rule6,
                    texts.route,
                    texts.route6
                ));
            }
        }
    }
    for m in &mismatches {
        println!("{m}");
    }
    println!(
        "explain_routing_kernel sockets: {} sent ({by_source} through a `from` rule), {failed} refused by the first lookup, {} mismatches",
        sent + by_source,
        mismatches.len()
    );
    assert!(
        sent > 100 && failed > 100 && by_source > 10,
        "too few of one kind: {sent} sent by other rules, {by_source} through `from` rules, {failed} refused"
    );
    assert!(
        mismatches.is_empty(),
        "the engine and real sockets disagree (seed {seed:#x})"
    );
}
