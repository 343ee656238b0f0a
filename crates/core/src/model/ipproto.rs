//! IP protocol numbers and their names: the one table every layer reads them through (the
//! config's `protocol`, the nft and iptables parsers, `ip rule`'s `ipproto`, the netlink
//! rule text, import's TOML, the CLI's `--protocol`).
//!
//! Names are Debian's `/etc/protocols`, which is what `ip rule`, `nft list ruleset` (text
//! and JSON) and `iptables-save` all print: each resolves a number with
//! `getprotobynumber(3)`. Without a name `nft` and `iptables-save` print the number and
//! `ip rule` prints `ipproto-N`. The table is compiled in rather than read from
//! `/etc/protocols`, because a snapshot is read on another host than the one it was taken
//! on, and the pure layers read no files.

use std::fmt;

/// `(number, name as the tools print it, other spellings they accept)`. The aliases are
/// `/etc/protocols`' own, plus `icmpv6` (nft and iptables), `icmp6` (Shorewall) and `mh`
/// (ip6tables).
const TABLE: &[(u8, &str, &[&str])] = &[
    (0, "ip", &["hopopt"]),
    (1, "icmp", &[]),
    (2, "igmp", &[]),
    (3, "ggp", &[]),
    (4, "ipencap", &["ip-encap"]),
    (5, "st", &[]),
    (6, "tcp", &[]),
    (8, "egp", &[]),
    (9, "igp", &[]),
    (12, "pup", &[]),
    (17, "udp", &[]),
    (20, "hmp", &[]),
    (22, "xns-idp", &[]),
    (27, "rdp", &[]),
    (29, "iso-tp4", &[]),
    (33, "dccp", &[]),
    (36, "xtp", &[]),
    (37, "ddp", &[]),
    (38, "idpr-cmtp", &[]),
    (41, "ipv6", &[]),
    (43, "ipv6-route", &[]),
    (44, "ipv6-frag", &[]),
    (45, "idrp", &[]),
    (46, "rsvp", &[]),
    (47, "gre", &[]),
    (50, "esp", &["ipsec-esp"]),
    (51, "ah", &["ipsec-ah"]),
    (57, "skip", &[]),
    (58, "ipv6-icmp", &["icmpv6", "icmp6"]),
    (59, "ipv6-nonxt", &[]),
    (60, "ipv6-opts", &[]),
    (73, "rspf", &["cphb"]),
    (81, "vmtp", &[]),
    (88, "eigrp", &[]),
    (89, "ospf", &["ospfigp"]),
    (93, "ax.25", &[]),
    (94, "ipip", &[]),
    (97, "etherip", &[]),
    (98, "encap", &[]),
    (103, "pim", &[]),
    (108, "ipcomp", &[]),
    (112, "vrrp", &[]),
    (115, "l2tp", &[]),
    (124, "isis", &[]),
    (132, "sctp", &[]),
    (133, "fc", &[]),
    (135, "mobility-header", &["mh"]),
    (136, "udplite", &[]),
    (137, "mpls-in-ip", &[]),
    (138, "manet", &[]),
    (139, "hip", &[]),
    (140, "shim6", &[]),
    (141, "wesp", &[]),
    (142, "rohc", &[]),
    (143, "ethernet", &[]),
];

/// The protocols whose header starts with 16-bit source and destination ports, so that
/// `th dport`, `-m multiport` and `ip rule … dport` can match them.
const WITH_PORTS: [u8; 5] = [6, 17, 33, 132, 136];

/// An IP protocol number (IPv4's protocol field, IPv6's next header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProto(pub u8);

impl IpProto {
    /// A name or alias (any case), a decimal number, or `ipproto-N` (what `ip rule` prints
    /// for a number without a name).
    pub fn parse(word: &str) -> Option<Self> {
        let lower = word.to_ascii_lowercase();
        let number = lower.strip_prefix("ipproto-").unwrap_or(&lower);
        match number.parse() {
            Ok(n) => Some(Self(n)),
            Err(_) => Self::by_name(&lower),
        }
    }

    /// A name or alias only (any case), never a number.
    pub fn by_name(word: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|(_, name, aliases)| {
                name.eq_ignore_ascii_case(word)
                    || aliases.iter().any(|a| a.eq_ignore_ascii_case(word))
            })
            .map(|(n, ..)| Self(*n))
    }

    /// The protocol with ports whose name is exactly `name` (`tcp`, `udp`, `sctp`, `dccp`,
    /// `udplite`): nft's payload protocols with a `dport` field, iptables' port modules.
    pub fn with_ports_named(name: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|(n, table_name, _)| *table_name == name && WITH_PORTS.contains(n))
            .map(|(n, ..)| Self(*n))
    }

    /// The name `/etc/protocols` gives it, if any.
    pub fn name(self) -> Option<&'static str> {
        TABLE
            .iter()
            .find(|(n, ..)| *n == self.0)
            .map(|(_, name, _)| *name)
    }

    pub fn has_ports(self) -> bool {
        WITH_PORTS.contains(&self.0)
    }

    /// The word `ip rule` prints after `ipproto`.
    pub fn ip_rule_word(self) -> String {
        match self.name() {
            Some(name) => name.to_string(),
            None => format!("ipproto-{}", self.0),
        }
    }
}

/// The spelling of `nft list ruleset` and `iptables-save`: the name, else the number.
impl fmt::Display for IpProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<u8> for IpProto {
    fn from(n: u8) -> Self {
        Self(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_numbers_agree() {
        for (word, n) in [
            ("tcp", 6),
            ("TCP", 6),
            ("6", 6),
            ("ipproto-6", 6),
            ("dccp", 33),
            ("udplite", 136),
            ("ipv6-icmp", 58),
            ("icmpv6", 58),
            ("icmp6", 58),
            ("IPSEC-ESP", 50),
            ("mh", 135),
            ("hopopt", 0),
            ("ipproto-200", 200),
        ] {
            assert_eq!(IpProto::parse(word), Some(IpProto(n)), "{word}");
        }
        for word in ["", "all", "tcpx", "256", "ipproto-", "-1"] {
            assert_eq!(IpProto::parse(word), None, "{word}");
        }
        assert_eq!(IpProto::by_name("6"), None);
        // Every name reads back as its own number: no name is listed twice.
        for (n, name, aliases) in TABLE {
            assert_eq!(IpProto::parse(name), Some(IpProto(*n)), "{name}");
            for a in *aliases {
                assert_eq!(IpProto::parse(a), Some(IpProto(*n)), "{a}");
            }
        }
    }

    /// What `ip rule`, `nft list ruleset` and `iptables-save` printed here (Debian 12:
    /// iproute2 6.1, nft 1.0.6, iptables 1.8.9) for these numbers.
    #[test]
    fn spelled_as_the_tools_print() {
        let printed = [
            (1, "icmp"),
            (2, "igmp"),
            (6, "tcp"),
            (17, "udp"),
            (33, "dccp"),
            (47, "gre"),
            (50, "esp"),
            (51, "ah"),
            (58, "ipv6-icmp"),
            (132, "sctp"),
            (135, "mobility-header"),
            (136, "udplite"),
        ];
        for (n, word) in printed {
            assert_eq!(IpProto(n).to_string(), word);
            assert_eq!(IpProto(n).ip_rule_word(), word);
        }
        assert_eq!(IpProto(0).to_string(), "ip");
        assert_eq!(IpProto(200).to_string(), "200");
        assert_eq!(IpProto(200).ip_rule_word(), "ipproto-200");
    }

    #[test]
    fn ports_for_the_protocols_with_port_headers() {
        let with: Vec<u8> = (0..=255).filter(|n| IpProto(*n).has_ports()).collect();
        assert_eq!(with, [6, 17, 33, 132, 136]);
        let named: Vec<_> = [
            "tcp", "udp", "sctp", "dccp", "udplite", "TCP", "icmp", "6", "",
        ]
        .into_iter()
        .filter_map(IpProto::with_ports_named)
        .collect();
        assert_eq!(named, [6, 17, 132, 33, 136].map(IpProto));
    }
}
