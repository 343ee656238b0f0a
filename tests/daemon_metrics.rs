//! Conntrack flushing and Prometheus metrics of `symroute run`, in private namespaces.
//! Needs root, `nft`, `ip` and `conntrack`.

mod support;

use support::require_root;
use symroute::kernel::conntrack::Conntrack;
use symroute::lab::{in_netns, Netns};

const MASK: u32 = 0xff00_0000;

/// `count` and `flush` select exactly the entries whose mark (inside the mask) matches;
/// bits outside the mask do not matter, and other marks are left alone.
#[test]
fn conntrack_count_and_flush_by_mark() {
    require_root();
    let ns = Netns::new("ct").expect("netns");
    for (i, mark) in [0x0100_0000u32, 0x0100_0042, 0x0200_0000, 0, 0x0100_0000]
        .into_iter()
        .enumerate()
    {
        let sport = (1000 + i).to_string();
        let mark = mark.to_string();
        ns.exec(&[
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            "192.0.2.1",
            "-d",
            "198.51.100.1",
            "--sport",
            &sport,
            "--dport",
            "80",
            "--state",
            "ESTABLISHED",
            "-u",
            "SEEN_REPLY",
            "-t",
            "300",
            "--mark",
            &mark,
        ])
        .expect("conntrack -I");
    }
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "2001:db8::1",
        "-d",
        "2001:db8::2",
        "--sport",
        "53",
        "--dport",
        "53",
        "-t",
        "300",
        "--mark",
        "16777216",
    ])
    .expect("conntrack -I (IPv6)");
    let (before, deleted, after, other, none) = in_netns(ns.name(), || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        let before = ct.count(0x0100_0000, MASK).expect("count");
        let deleted = ct.flush(0x0100_0000, MASK).expect("flush");
        let after = ct.count(0x0100_0000, MASK).expect("count");
        let other = ct.count(0x0200_0000, MASK).expect("count");
        let none = ct.flush(0x0300_0000, MASK).expect("flush nothing");
        (before, deleted, after, other, none)
    })
    .expect("in netns");
    assert_eq!((before, deleted, after, other, none), (4, 4, 0, 1, 0));
    let left = ns
        .exec(&["conntrack", "-L", "-f", "ipv4"])
        .expect("conntrack -L");
    assert_eq!(left.lines().count(), 2, "left:\n{left}");
    in_netns(ns.name(), || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        assert!(ct.flush(0, MASK).is_err(), "mark 0 must be refused");
        assert!(
            ct.flush(0x0100_0001, MASK).is_err(),
            "bits outside the mask"
        );
    })
    .expect("in netns");
}
