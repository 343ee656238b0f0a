//! The classification with real packets: random configs (the generator of
//! `classify_props`) applied with `symroute apply` to a namespace router, a few hundred
//! crafted first packets per config (any source MAC, addresses, protocol and ports,
//! IPv4 and IPv6) sent into it, and the kernel's verdict read back: every policy's nft
//! counter must equal the number of packets `Model::first_match` gives it, and each
//! connection's conntrack mark must carry a decision exactly when some policy matched.
//! Also loads a few hundred random tables with `nft -c` (the kernel's own parser).
//!
//!   snd (AF_PACKET frames on s0) --veth-- lan0 [rtr] k0 --veth-- k1 [sink]

use crate::support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use support::cgroups::TestCgroups;
use support::classify::{random_config, random_packet, Pools};
use support::{require_root, symroute_in};
use symroute::config::parse_str;
use symroute::fuzz::Rng;
use symroute::lab::{in_netns, veth, Netns};
use symroute::model::PacketKeys;
use symroute::plan::build;

/// Internet checksum over `chunks`.
fn csum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for c in chunks {
        for pair in c.chunks(2) {
            let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Ethernet frame of a connection's first packet (UDP, TCP SYN or ICMP echo).
/// Written here: a test-only packet builder of 60 lines beats a packet crate.
fn frame(p: &PacketKeys, dst_mac: [u8; 6]) -> Vec<u8> {
    let src_mac = p.source_mac.expect("arriving packet").to_string();
    let mac: Vec<u8> = src_mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let (sp, dp) = (p.source_port.unwrap_or(0), p.destination_port.unwrap_or(0));
    let mut l4 = match p.protocol {
        17 => {
            let mut u = Vec::new();
            u.extend(sp.to_be_bytes());
            u.extend(dp.to_be_bytes());
            u.extend(12u16.to_be_bytes());
            u.extend([0, 0, 1, 2, 3, 4]);
            u
        }
        6 => {
            let mut t = Vec::new();
            t.extend(sp.to_be_bytes());
            t.extend(dp.to_be_bytes());
            t.extend(1000u32.to_be_bytes()); // seq
            t.extend(0u32.to_be_bytes()); // ack
            t.extend([0x50, 0x02]); // 20 bytes, SYN
            t.extend(64240u16.to_be_bytes());
            t.extend([0, 0, 0, 0]); // checksum, urgent
            t
        }
        // ICMP / ICMPv6 echo request.
        proto => vec![if proto == 1 { 8 } else { 128 }, 0, 0, 0, 0x12, 0x34, 0, 1],
    };
    let len = l4.len() as u16;
    let csum_at = match p.protocol {
        17 => 6,
        6 => 16,
        _ => 2,
    };
    let (ethertype, ip) = match (p.source, p.destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = if p.protocol == 1 {
                csum(&[&l4])
            } else {
                let pseudo = [
                    &s.octets()[..],
                    &d.octets()[..],
                    &[0, p.protocol],
                    &len.to_be_bytes()[..],
                ]
                .concat();
                csum(&[&pseudo, &l4])
            };
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut h = vec![0x45, 0];
            h.extend((20 + len).to_be_bytes());
            h.extend([0, 1, 0x40, 0, 64, p.protocol, 0, 0]);
            h.extend(s.octets());
            h.extend(d.octets());
            let hc = csum(&[&h]);
            h[10..12].copy_from_slice(&hc.to_be_bytes());
            (0x0800u16, h)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo = [
                &s.octets()[..],
                &d.octets()[..],
                &u32::from(len).to_be_bytes()[..],
                &[0, 0, 0, p.protocol],
            ]
            .concat();
            let c = csum(&[&pseudo, &l4]);
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut h = vec![0x60, 0, 0, 0];
            h.extend(len.to_be_bytes());
            h.extend([p.protocol, 64]);
            h.extend(s.octets());
            h.extend(d.octets());
            (0x86ddu16, h)
        }
        _ => unreachable!("one family per packet"),
    };
    let mut f = Vec::new();
    f.extend(dst_mac);
    f.extend(mac);
    f.extend(ethertype.to_be_bytes());
    f.extend(ip);
    f.extend(l4);
    f
}

/// Sends `frames` out of `ifname` in namespace `ns` (one AF_PACKET socket).
fn send(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    in_netns(ns.name(), move || {
        // SAFETY: plain syscalls on a socket we own; buffers outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            sll.sll_halen = 6;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "sendto");
            }
            libc::close(fd);
        }
    })
    .expect("sender thread");
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&format!("-j link show {ifname}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().unwrap().to_string();
    let b: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

/// Packets per policy (by index, as `names` lists their counters), those above zero.
fn counters(rtr: &Netns, names: &[String]) -> BTreeMap<usize, u64> {
    let out = rtr
        .exec(&["nft", "-j", "list", "counters", "table", "inet", "symroute"])
        .unwrap();
    let by_name = symroute::kernel::status::counters_in(&serde_json::from_str(&out).unwrap());
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| by_name.get(n).map(|(packets, _)| (i, *packets)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// `rtr`'s default routes (both families) lead out of `k0` to `sink`, whose MAC is
/// pinned, so packets leave without waiting for neighbour discovery.
fn default_via_sink(rtr: &Netns, sink: &Netns) {
    veth(rtr, "k0", sink, "k1").unwrap();
    for cmd in [
        "addr add 203.0.113.1/24 dev k0",
        "addr add 2001:db8:ee::1/64 dev k0 nodad",
        "route add default via 203.0.113.2",
        "-6 route add default via 2001:db8:ee::2",
        "neigh replace 203.0.113.2 lladdr 02:00:00:00:ee:02 dev k0 nud permanent",
        "-6 neigh replace 2001:db8:ee::2 lladdr 02:00:00:00:ee:02 dev k0 nud permanent",
    ] {
        rtr.ip(cmd).unwrap();
    }
}

/// Once the packets are through: every policy's counter holds the packets `want` gives
/// it, and each connection (with a port) carries a decision in our conntrack-mark bits
/// exactly when some policy took it (`hit`).
fn assert_verdicts(
    rtr: &Netns,
    model: &symroute::model::Model,
    pools: &Pools,
    want: &BTreeMap<usize, u64>,
    tuples: &[(PacketKeys, bool)],
    config: &str,
) {
    std::thread::sleep(std::time::Duration::from_millis(200));
    let names: Vec<String> = build(model, &pools.host())
        .policies
        .into_iter()
        .map(|p| p.counter)
        .collect();
    assert_eq!(&counters(rtr, &names), want, "config:\n{config}");
    let mask = model.settings.mark_mask.bits();
    let listing = rtr
        .exec(&["conntrack", "-L", "-o", "id"])
        .unwrap_or_default();
    for (p, hit) in tuples {
        let Some(sp) = p.source_port else { continue };
        let key = format!("src={} dst={} sport={sp} ", p.source, p.destination);
        let line = listing
            .lines()
            .find(|l| l.contains(&key))
            .unwrap_or_else(|| panic!("no conntrack entry for {key}\n{listing}"));
        let mark: u32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mark="))
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert_eq!(mark & mask != 0, *hit, "{line}\n{p:?}\nconfig:\n{config}");
    }
}

#[test]
fn real_packets_take_the_first_matching_policy() {
    require_root();
    let snd = Netns::new("cls-snd").unwrap();
    let rtr = Netns::new("cls-rtr").unwrap();
    let sink = Netns::new("cls-sink").unwrap();
    veth(&snd, "s0", &rtr, "lan0").unwrap();
    rtr.sysctl("net.ipv4.ip_forward", "1").unwrap();
    rtr.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    rtr.ip("addr add 172.31.0.1/24 dev lan0").unwrap();
    default_via_sink(&rtr, &sink);
    let rtr_mac = mac_of(&rtr, "lan0");
    // Every packet arrives on lan0 (the pools' other names, e0 and e1, then never match).
    let pools = Pools {
        arrive: vec![Some("lan0")],
        ..Pools::default()
    };
    let mut rng = Rng::new(0x15c1_a55f_0000_00a1);
    let (mut configs, mut sent, mut matched) = (0, 0, 0);
    while configs < 6 {
        let text = random_config(&mut rng, &pools);
        let Ok(model) = parse_str(&text, "random.toml") else {
            continue;
        };
        if model.policies.len() < 6 {
            continue; // the lookups, not the plain rules of short lists
        }
        configs += 1;
        let _ = rtr.exec(&["conntrack", "-F"]);
        // From no table: counters of the same name would go on from the last config's
        // counts (`nft::carry_counters`).
        symroute_in(&rtr, "remove", None, &[]).ok();
        symroute_in(&rtr, "apply", Some(&text), &[]).ok();
        let mut want: BTreeMap<usize, u64> = BTreeMap::new();
        let mut frames = Vec::new();
        let mut tuples: Vec<(PacketKeys, bool)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        while frames.len() < 120 {
            let mut p = random_packet(&mut rng, &pools);
            // A fresh connection each: a new source port (ICMP: a new echo id is not
            // modelled, so only one per address pair).
            if p.source_port.is_some() {
                p.source_port = Some(10_000 + frames.len() as u16);
            }
            if p.source == p.destination
                || !seen.insert((p.source, p.destination, p.protocol, p.source_port))
            {
                continue;
            }
            let w = model.first_match(&p);
            if let Some(i) = w {
                *want.entry(i).or_default() += 1;
            }
            frames.push(frame(&p, rtr_mac));
            tuples.push((p, w.is_some()));
        }
        send(&snd, "s0", frames);
        assert_verdicts(&rtr, &model, &pools, &want, &tuples, &text);
        sent += tuples.len();
        matched += tuples.iter().filter(|(_, h)| *h).count();
    }
    println!("{configs} configs, {sent} real packets, {matched} classified by a policy");
    assert!(matched > sent / 5 && matched < sent, "{matched}/{sent}");
    symroute_in(&rtr, "remove", None, &[]).ok();
}

/// nft itself accepts every table the generator leads to (`nft -c -f`, nothing loaded).
#[test]
fn nft_accepts_the_rendered_tables() {
    require_root();
    let ns = Netns::new("cls-check").unwrap();
    let mut rng = Rng::new(0x15c1_a55f_0000_00c1);
    let mut checked = 0;
    // nft resolves cgroup paths when it loads a table: they must exist.
    let mut cgroups = TestCgroups::new();
    let with_cgroups = Pools::default().with_real_cgroups(&mut cgroups);
    for (pools, n) in [
        (with_cgroups, 150),
        (support::classify::wide_pools(), 40),
        (support::classify::disjoint_pools(), 40),
    ] {
        let mut done = 0;
        let mut batch = String::new();
        while done < n {
            let text = random_config(&mut rng, &pools);
            let Ok(model) = parse_str(&text, "random.toml") else {
                continue;
            };
            done += 1;
            batch += &build(&model, &pools.host()).nft;
            batch += "delete table inet symroute\n";
            if done % 10 == 0 || done == n {
                let path =
                    std::env::temp_dir().join(format!("symroute-cls-{}.nft", std::process::id()));
                std::fs::write(&path, &batch).unwrap();
                let r = ns.nsenter(&["nft", "-c", "-f", &path.display().to_string()]);
                let _ = std::fs::remove_file(&path);
                assert!(r.is_ok(), "{r:?}");
                batch.clear();
            }
        }
        checked += n;
    }
    println!("nft -c accepted {checked} tables");
}

/// One connection the host opens: its first packet, sent by a process of `uid` in the
/// cgroup whose `cgroup.procs` is `procs` (`None`: where the test runs).
struct LocalSend {
    uid: u32,
    procs: std::ffi::CString,
    tcp: bool,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
}

/// Each connection's first packet from a process of its own: forked from a thread inside
/// `ns`, it moves into its cgroup, becomes its user (uid and gid), binds the source and
/// sends one UDP datagram or one TCP SYN. Everything the child touches is prepared
/// before the fork, and it calls only async-signal-safe functions (this test binary has
/// threads). Written here: a test-only helper; no crate forks into a cgroup and user.
fn send_local(ns: &Netns, sends: Vec<LocalSend>) {
    in_netns(ns.name(), move || {
        for s in &sends {
            use nix::sys::socket::{SockaddrLike, SockaddrStorage};
            let (src, dst) = (SockaddrStorage::from(s.src), SockaddrStorage::from(s.dst));
            let family = if s.src.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let kind = if s.tcp {
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK
            } else {
                libc::SOCK_DGRAM
            };
            let id = libc::c_long::from(s.uid);
            // SAFETY: fork; the child runs only raw system calls on data prepared above
            // and leaves with _exit, the parent waits for it.
            unsafe {
                let pid = libc::fork();
                assert!(pid >= 0, "fork");
                if pid == 0 {
                    let fd = libc::open(s.procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        libc::_exit(2);
                    }
                    libc::close(fd);
                    if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()) != 0
                        || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                        || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
                    {
                        libc::_exit(3);
                    }
                    let fd = libc::socket(family, kind, 0);
                    if fd < 0 {
                        libc::_exit(4);
                    }
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        (&one as *const libc::c_int).cast(),
                        4,
                    );
                    if libc::bind(fd, src.as_ptr(), src.len()) != 0 {
                        libc::_exit(5);
                    }
                    let sent = if s.tcp {
                        // The SYN leaves inside connect(), even a non-blocking one.
                        libc::connect(fd, dst.as_ptr(), dst.len()) == 0
                            || *libc::__errno_location() == libc::EINPROGRESS
                    } else {
                        libc::sendto(fd, b"x".as_ptr().cast(), 1, 0, dst.as_ptr(), dst.len()) == 1
                    };
                    libc::_exit(if sent { 0 } else { 6 });
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "sender for {:?} -> {} (uid {}) failed: status {status:#x}",
                    s.src,
                    s.dst,
                    s.uid
                );
            }
        }
    })
    .expect("sender thread");
}

/// The host's own connections, for real: random configs whose route_via policies name
/// users and cgroups (and addresses, ports, protocols), applied with `symroute apply`;
/// each connection's first packet is sent by a process of its own, as one of the pools'
/// users and in one of the pools' cgroups (made real below a test parent, some named by
/// policies, some not yet existing). Every policy's counter must equal the number of
/// packets `Model::first_match` gives it, and each connection's conntrack mark must carry
/// a decision exactly when some policy matched.
#[test]
fn local_sockets_take_the_first_matching_policy() {
    require_root();
    let mut cgroups = TestCgroups::new();
    let pools = Pools {
        arrive: vec![None],
        socket_odds: 2,
        ..Pools::default()
    }
    .with_real_cgroups(&mut cgroups);
    let rtr = Netns::new("cls-local").unwrap();
    let sink = Netns::new("cls-lsink").unwrap();
    for a in pools.local_v4.iter().chain(&pools.local_v6) {
        rtr.ip(&format!("addr add {a} dev lo")).unwrap();
    }
    default_via_sink(&rtr, &sink);
    let local: Vec<IpAddr> = pools
        .local_v4
        .iter()
        .chain(&pools.local_v6)
        .map(|a| a.parse().unwrap())
        .collect();
    let procs = |cgroup: &str| {
        let dir = cgroups.hierarchy.mount.join(cgroup);
        std::ffi::CString::new(dir.join("cgroup.procs").display().to_string()).unwrap()
    };
    let mut rng = Rng::new(0x15c1_a55f_0000_00b1);
    let (mut configs, mut sent, mut matched, mut by_socket) = (0, 0, 0, 0);
    while configs < 6 {
        let text = random_config(&mut rng, &pools);
        let Ok(model) = parse_str(&text, "random.toml") else {
            continue;
        };
        let socket_policies = model
            .policies
            .iter()
            .filter(|p| p.selector.needs_socket())
            .count();
        if model.policies.len() < 8 || socket_policies < 2 {
            continue; // the lookups, with users and cgroups among them
        }
        configs += 1;
        let _ = rtr.exec(&["conntrack", "-F"]);
        // From no table: counters of the same name would go on from the last config's
        // counts (`nft::carry_counters`).
        symroute_in(&rtr, "remove", None, &[]).ok();
        symroute_in(&rtr, "apply", Some(&text), &[]).ok();
        let mut want: BTreeMap<usize, u64> = BTreeMap::new();
        let mut sends = Vec::new();
        let mut tuples: Vec<(PacketKeys, bool)> = Vec::new();
        while sends.len() < 100 {
            let mut p = random_packet(&mut rng, &pools);
            if !matches!(p.protocol, 6 | 17) || local.contains(&p.destination) {
                continue; // sockets of this test send UDP and TCP beyond the host
            }
            p.source_port = Some(20_000 + sends.len() as u16);
            let w = model.first_match(&p);
            if let Some(i) = w {
                *want.entry(i).or_default() += 1;
                by_socket += usize::from(model.policies[i].selector.needs_socket());
            }
            let sock = |a: IpAddr, port: Option<u16>| std::net::SocketAddr::new(a, port.unwrap());
            sends.push(LocalSend {
                uid: p.uid.unwrap(),
                procs: procs(p.cgroup.as_deref().unwrap()),
                tcp: p.protocol == 6,
                src: sock(p.source, p.source_port),
                dst: sock(p.destination, p.destination_port),
            });
            tuples.push((p, w.is_some()));
        }
        send_local(&rtr, sends);
        assert_verdicts(&rtr, &model, &pools, &want, &tuples, &text);
        sent += tuples.len();
        matched += tuples.iter().filter(|(_, h)| *h).count();
    }
    println!(
        "{configs} configs, {sent} connections opened by {} users in {} cgroups, {matched} classified by a policy, {by_socket} of them by user or cgroup",
        pools.uids.len(),
        pools.packet_cgroups.len()
    );
    assert!(matched > sent / 5 && matched < sent, "{matched}/{sent}");
    assert!(by_socket > sent / 20, "{by_socket}/{sent}");
    symroute_in(&rtr, "remove", None, &[]).ok();
}
