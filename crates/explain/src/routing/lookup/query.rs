//! The packet to route (`Query`), and how reports print it.

use super::*;

/// One packet to route. `iif: None` is a locally generated packet (an output route);
/// `iif: Some(dev)` a packet that arrived on `dev` (an input route, as `ip route get …
/// iif dev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    pub family: Family,
    /// Source address. Output: `None` lets the kernel pick one after routing (and
    /// `from PREFIX` rules cannot match). Input: required (`None` is 0.0.0.0 / ::, which
    /// the kernel treats as a martian source on IPv4).
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub iif: Option<String>,
    /// Output interface a socket is bound to (`SO_BINDTODEVICE`, `ip route get … oif`).
    /// Ignored for input packets.
    pub oif: Option<String>,
    pub mark: u32,
    pub ipproto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The TOS / traffic class byte (0 when unset).
    pub tos: u8,
}

impl Query {
    /// A locally generated packet to `dst` with nothing else set.
    pub fn output(dst: IpAddr) -> Self {
        Query {
            family: Family::of(&dst),
            src: None,
            dst,
            iif: None,
            oif: None,
            mark: 0,
            ipproto: None,
            sport: None,
            dport: None,
            tos: 0,
        }
    }
    /// A packet from `src` to `dst` arriving on `iif`.
    pub fn input(src: IpAddr, dst: IpAddr, iif: &str) -> Self {
        Query {
            src: Some(src),
            iif: Some(iif.to_string()),
            ..Query::output(dst)
        }
    }
}

/// Human one-liner for a query, for reports: `10.0.0.1 → 8.8.8.8 iif eth0 mark 0x1`.
pub fn describe_query(q: &Query) -> String {
    let mut s = format!("{} → {}", addr_or_none(q.src), q.dst);
    if let Some(i) = &q.iif {
        s.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &q.oif {
        s.push_str(&format!(" oif {o}"));
    }
    if q.mark != 0 {
        s.push_str(&format!(" mark {:#x}", q.mark));
    }
    if let Some(p) = q.ipproto {
        s.push_str(&format!(" ipproto {}", IpProto(p).ip_rule_word()));
    }
    if let Some(p) = q.sport {
        s.push_str(&format!(" sport {p}"));
    }
    if let Some(p) = q.dport {
        s.push_str(&format!(" dport {p}"));
    }
    if q.tos != 0 {
        s.push_str(&format!(" tos {:#x}", q.tos));
    }
    s
}
