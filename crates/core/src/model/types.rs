//! Newtypes for the values symroute juggles. Each validates on construction, so a
//! `Mark` outside its mask or a reserved `TableId` cannot exist past the config layer.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ipproto::IpProto;

/// The packet/conntrack mark bits symroute owns. Always non-zero and contiguous, so
/// decision values can be numbered `1..=max` shifted into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MarkMask(u32);

impl MarkMask {
    pub fn new(bits: u32) -> Result<Self, String> {
        if bits == 0 {
            return Err("mark_mask must have at least one bit set".into());
        }
        let shifted = bits >> bits.trailing_zeros();
        if shifted & (shifted + 1) != 0 {
            return Err(format!(
                "mark_mask {bits:#010x} is not one contiguous run of bits (e.g. 0xff000000)"
            ));
        }
        Ok(Self(bits))
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    /// How many distinct non-zero decision values fit in the mask.
    pub fn capacity(self) -> u32 {
        self.0 >> self.0.trailing_zeros()
    }
    /// The `n`-th decision value (1-based) inside the mask.
    pub fn value(self, n: u32) -> Option<Mark> {
        (n >= 1 && n <= self.capacity()).then(|| Mark(n << self.0.trailing_zeros()))
    }
}

impl fmt::Display for MarkMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A decision value: non-zero, and only ever made by `MarkMask::value`, so it fits its mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Mark(u32);

impl Mark {
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A gateway's number: its mark values and its table follow from it alone
/// (`plan::alloc`), so they keep their meaning however the file lists, adds or removes
/// gateways and policies. Written as `id = N`, or derived from the gateway's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GatewayId(u32);

impl GatewayId {
    /// `n` when it is in 1..=`max` (the ids the mark mask holds, `plan::alloc::id_max`).
    pub fn new(n: u32, max: u32) -> Option<Self> {
        (1..=max).contains(&n).then_some(Self(n))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A routing table id. 0 (unspec) and 253–255 (default, main, local) are the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId(u32);

impl TableId {
    pub const MAIN: TableId = TableId(254);

    pub fn new(id: u32) -> Result<Self, String> {
        match id {
            0 | 253..=255 => Err(format!(
                "table {id} is reserved by the kernel (0 unspec, 253 default, 254 main, 255 local)"
            )),
            _ => Ok(Self(id)),
        }
    }
    /// Tables as the kernel reports them, reserved ones included.
    pub fn from_kernel(id: u32) -> Self {
        Self(id)
    }
    pub fn id(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            254 => f.write_str("main"),
            255 => f.write_str("local"),
            253 => f.write_str("default"),
            n => write!(f, "{n}"),
        }
    }
}

/// An `ip rule` priority. 0 is the kernel's `lookup local`; 32766/32767 are main/default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Priority(u32);

impl Priority {
    pub fn new(p: u32) -> Result<Self, String> {
        if p == 0 || p >= 32766 {
            return Err(format!(
                "priority {p} is outside 1..32765 (0 is `lookup local`, 32766/32767 are main/default)"
            ));
        }
        Ok(Self(p))
    }
    /// A priority after main (32766) and default (32767), for rules that must act only
    /// when nothing else routes the packet.
    pub fn after_main(p: u32) -> Result<Self, String> {
        if p <= 32767 {
            return Err(format!(
                "priority {p} is not after main and default (32766, 32767): use 32768 or more"
            ));
        }
        Ok(Self(p))
    }
    pub fn from_kernel(p: u32) -> Self {
        Self(p)
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Linux interface name as a config may name it: 1–15 of letters, digits, '-', '_' and
/// '.', not "." or "..". The kernel allows more (`eth*`, `a;b`, `$(x)`), but such a name
/// would be a pattern to nft (`iifname "eth*"` matches every `eth…`), or need quoting in
/// nft, shell and sysctl spellings; refusing it here keeps every rendering literal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IfName(String);

impl IfName {
    pub fn new(s: &str) -> Result<Self, String> {
        const RULE: &str = "1-15 of letters, digits, '-', '_' and '.'";
        if s.is_empty() || s.len() > 15 {
            return Err(format!("{s:?} is not an interface name ({RULE})"));
        }
        if s == "." || s == ".." {
            return Err(format!(
                "{s:?} is not an interface name ({RULE}, not \".\" or \"..\")"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
        {
            let why = match c {
                '*' => "nft would read '*' as a wildcard matching many interfaces".to_string(),
                c if c.is_whitespace() || c.is_control() => {
                    format!("{:?} is not allowed", c)
                }
                c => format!("'{c}' is not allowed"),
            };
            return Err(format!(
                "{s:?} is not an interface name symroute accepts: {why} ({RULE}; rename the interface, e.g. with `ip link set OLD name NEW`)"
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name the user gave a gateway, policy or divert. Restricted so it can appear
/// verbatim in nft object names, logs and metrics labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name(String);

impl Name {
    pub fn new(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "\"{s}\" is not a valid name (1-64 of letters, digits, '-', '_', '.', starting with a letter or digit)"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || {
            format!("\"{s}\" is not a MAC address (expected six hex pairs like 02:03:04:05:06:07)")
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A cgroup as a config names it: a path below the cgroup2 root, wherever that is
/// mounted (`system.slice/backup.service`). Kept relative and plain, because it reaches
/// nft as a quoted path (nft 1.0.x takes no numeric cgroup id, see `plan::nft`): no
/// empty, `.` or `..` component, and only letters, digits and `-_.@:+,=`, which covers
/// systemd's slices, services and scopes (`user@1000.service`), docker and kubepods. A
/// component is at most 255 bytes (a file name), the path at most 1024.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CgroupPath(String);

impl CgroupPath {
    pub const MAX_LEN: usize = 1024;

    pub fn new(s: &str) -> Result<Self, String> {
        const RULE: &str = "a path below the cgroup2 root like \"system.slice/backup.service\": components of letters, digits and '-_.@:+,=', separated by '/'";
        let trimmed = s.trim_matches('/');
        if trimmed.is_empty() {
            return Err(format!(
                "{s:?} names the cgroup2 root, which holds every process; expected {RULE}"
            ));
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(format!(
                "a cgroup path of {} bytes is longer than {} (expected {RULE})",
                trimmed.len(),
                Self::MAX_LEN
            ));
        }
        for part in trimmed.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.len() > 255 {
                return Err(format!(
                    "{s:?} is not a cgroup path symroute accepts: {} (expected {RULE})",
                    match part {
                        "" => "an empty component (\"//\")".to_string(),
                        "." | ".." => format!("the component \"{part}\""),
                        _ => "a component longer than 255 bytes".to_string(),
                    }
                ));
            }
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "-_.@:+,=".contains(*c)))
            {
                return Err(format!(
                    "{s:?} is not a cgroup path symroute accepts: {c:?} is not allowed (expected {RULE})"
                ));
            }
        }
        Ok(Self(trimmed.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// How deep it is below the root: the `level` of nft's `socket cgroupv2 level N`
    /// (`system.slice/backup.service` is 2).
    pub fn level(&self) -> u32 {
        self.0.split('/').count() as u32
    }
    /// Whether a socket in cgroup `path` (relative to the root, `""` for the root
    /// itself) is in this cgroup or below it, as `socket cgroupv2 level N` tests it.
    pub fn contains(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        path == self.0
            || path
                .strip_prefix(self.0.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
    /// `self/child`.
    pub fn join(&self, child: &str) -> Result<Self, String> {
        Self::new(&format!("{}/{child}", self.0))
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A port or an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("\"{s}\" is not a port or range (expected 25 or \"465-587\")");
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(err()),
                Ok(n) => Ok(n),
            }
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange {
                first: port(a)?,
                last: port(b)?,
            },
            None => {
                let p = port(s)?;
                PortRange { first: p, last: p }
            }
        };
        if r.first > r.last {
            return Err(format!(
                "port range \"{s}\" runs backwards (write \"{}-{}\")",
                r.last, r.first
            ));
        }
        Ok(r)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Layer-4 protocols a policy can select. Ports make sense only for the ones with ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Dccp,
    Udplite,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub const ALL: [Self; 7] = [
        Self::Tcp,
        Self::Udp,
        Self::Sctp,
        Self::Dccp,
        Self::Udplite,
        Self::Icmp,
        Self::Icmpv6,
    ];

    /// A name or alias from the protocol table (`icmpv6`, `ipv6-icmp` and `icmp6` are one),
    /// any case; numbers are not accepted in a config.
    pub fn parse(s: &str) -> Result<Self, String> {
        IpProto::by_name(s)
            .and_then(Self::from_number)
            .ok_or_else(|| {
                format!(
                    "\"{s}\" is not a protocol symroute knows (expected tcp, udp, sctp, dccp, udplite, icmp or icmpv6)"
                )
            })
    }
    pub fn from_number(p: IpProto) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.number() == p)
    }
    pub fn number(self) -> IpProto {
        IpProto(match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Dccp => 33,
            Self::Udplite => 136,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
        })
    }
    pub fn has_ports(self) -> bool {
        self.number().has_ports()
    }
    /// nft spelling for `meta l4proto` (the table's name: every variant has one).
    pub fn nft(self) -> &'static str {
        self.number().name().unwrap_or_default()
    }
}

/// The config's spelling: the table's name, but `icmpv6` (as `ip6tables`, `nft`'s
/// `icmpv6 type` and most users write it) for `ipv6-icmp`.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Icmpv6 => "icmpv6",
            p => p.nft(),
        })
    }
}

/// IPv4 or IPv6: rules and routes exist once per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet4,
    Inet6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Inet4,
            IpAddr::V6(_) => Self::Inet6,
        }
    }
    /// The `ip` command's family flag.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Self::Inet4 => "-4",
            Self::Inet6 => "-6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inet4 => "ipv4",
            Self::Inet6 => "ipv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_values_fit_and_count() {
        let m = MarkMask::new(0xff00_0000).unwrap();
        assert_eq!(m.capacity(), 255);
        assert_eq!(m.value(1).unwrap().bits(), 0x0100_0000);
        assert_eq!(m.value(255).unwrap().bits(), 0xff00_0000);
        assert!(m.value(0).is_none());
        assert!(m.value(256).is_none());
        assert!(MarkMask::new(0).is_err());
        assert!(MarkMask::new(0x0f0f_0000).is_err());
        assert_eq!(MarkMask::new(0x8000_0000).unwrap().capacity(), 1);
    }

    #[test]
    fn reserved_tables_and_priorities_refused() {
        for t in [0, 253, 254, 255] {
            assert!(TableId::new(t).is_err());
        }
        assert!(TableId::new(42000).is_ok());
        assert!(Priority::new(0).is_err());
        assert!(Priority::new(32766).is_err());
    }

    #[test]
    fn parse_small_values() {
        assert_eq!(
            MacAddr::parse("02:03:04:05:06:07").unwrap().to_string(),
            "02:03:04:05:06:07"
        );
        assert!(MacAddr::parse("02:03:04:05:06").is_err());
        assert!(MacAddr::parse("zz:03:04:05:06:07").is_err());
        assert_eq!(PortRange::parse("465-587").unwrap().to_string(), "465-587");
        assert!(PortRange::parse("587-465").is_err());
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("70000").is_err());
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("averyveryverylongname").is_err());
        assert!(Name::new("isp-1").is_ok());
        assert!(Name::new("has space").is_err());
    }

    #[test]
    fn cgroup_paths() {
        let p = CgroupPath::new("/system.slice/backup.service/").unwrap();
        assert_eq!(p.as_str(), "system.slice/backup.service");
        assert_eq!(p.level(), 2);
        assert!(p.contains("system.slice/backup.service"));
        assert!(p.contains("/system.slice/backup.service/sub"));
        assert!(!p.contains("system.slice/backup.service2"));
        assert!(!p.contains("system.slice"));
        assert!(!p.contains(""));
        assert!(CgroupPath::new("user.slice/user-1000.slice/user@1000.service").is_ok());
        for bad in [
            "", "/", "a//b", "a/../b", "./a", "a b", "a\"b", "a\\x2d", "a\nb",
        ] {
            assert!(CgroupPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(CgroupPath::new(&"a".repeat(256)).is_err());
    }

    #[test]
    fn protocols_read_and_spell_through_the_table() {
        for p in Protocol::ALL {
            assert!(!p.nft().is_empty(), "{p:?} has a name in the table");
            assert_eq!(Protocol::parse(p.nft()), Ok(p));
            assert_eq!(Protocol::parse(&p.to_string()), Ok(p));
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::Icmpv6.nft(), "ipv6-icmp");
        assert_eq!(Protocol::Icmpv6.to_string(), "icmpv6");
        assert_eq!(Protocol::parse("ICMP6"), Ok(Protocol::Icmpv6));
        assert!(Protocol::parse("6").is_err());
        assert!(Protocol::parse("gre").is_err());
        let ported: Vec<_> = Protocol::ALL
            .into_iter()
            .filter(|p| p.has_ports())
            .collect();
        use Protocol::*;
        assert_eq!(ported, [Tcp, Udp, Sctp, Dccp, Udplite]);
    }
}
