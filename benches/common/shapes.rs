//! The four 10,000-selector, 64-gateway configs of issue 15 (the same selectors written as
//! sites write them), and trafgen traffic whose packets really hit their policies.
//! Used by `benches/forward.rs` only.
//!
//! Per gateway `g` (0..64) there are two policies:
//! - `mac-g`: `reply_via = "gw{g}"`, 78 source MACs `02:5a:GG:00:00:JJ` (JJ = 0..77);
//! - `src-g`: `route_via = "gw{g}"`, 78 or 79 source /32s `100.{64+g}.0.{2j+1}` (odd hosts,
//!   so symroute's aggregation keeps them 10,000 items).
//!
//! Shapes: (1) `Alternating`: mac-0, src-0, mac-1, src-1, … (the keys alternate: 128 runs
//! of one policy); (2) `Grouped`: every mac-g first, then every src-g; (3) `Secondary`:
//! `mac-g` also has `not_source = "100.120.0.0/13"`, tcp and destination ports 25, 443 and
//! 8000-8999, and `dst-g` (in place of src-g, `route_via`) matches 72 or 73 destination
//! /24s `100.{64+g}.{2j+1}.0/24` and udp: every policy has a secondary condition;
//! (4) `Reversed`: shape 1 with the gateways (and their policies) listed in reverse order.
//!
//! Traffic (each packet a new connection; sport counts up): source MAC `02:5a:GG:00:00:JJ`
//! with GG uniform over the 64 gateways and JJ uniform in 0..=99 (78 % are some mac-g's);
//! source `100.{64+G}.0.H`, G uniform in 0..=63, H uniform in 0..=157 (half are odd: some
//! src-g's). Shapes 1, 2, 4: UDP to the sink. A packet whose MAC belongs to gateway a and
//! whose source to gateway b goes to whichever of mac-a / src-b comes first; so in shape 1
//! about 39 % of packets match both keys, 39 % the MAC only, 11 % the source only and 11 %
//! nothing, and every position in the list wins some (the bench prints the measured share
//! per quarter of the list from the policy counters). Destinations are beyond the
//! router's default route (as a LAN's traffic to the Internet is), so `route_via`
//! decisions really leave by their gateway and undecided packets by main's default.
//! Shapes 1, 2, 4 send to 203.0.113.9. Shape 3: half UDP to `100.{64+G}.D.x` (D uniform
//! in 1..=150, about 48 % in some dst-g), half TCP SYNs to port 443 from the same sources
//! (78 % from some mac-g's MAC, of which 1/8 come from the excluded /13). The routers
//! route each source's /24 `100.{64+g}.0.0/24` back to the LAN side, as a LAN's own
//! prefixes are (D starts at 1 so no destination falls into one).

use std::fmt::Write as _;

use super::BIG_GATEWAYS;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    Alternating,
    Grouped,
    Secondary,
    Reversed,
}

pub const SHAPES: [Shape; 4] = [
    Shape::Alternating,
    Shape::Grouped,
    Shape::Secondary,
    Shape::Reversed,
];

/// MACs per mac-g policy; JJ in the traffic runs over 0..=MAC_SPREAD.
const MACS: usize = 78;
const MAC_SPREAD: usize = 99;
/// not_source of the shape-3 MAC policies (1/8 of the traffic's sources).
const EXCLUDED: &str = "100.120.0.0/13";
/// Where shapes 1, 2 and 4 send: beyond the routers' default route.
pub const INTERNET: &str = "203.0.113.9";

/// The LAN prefixes the traffic's sources come from, routed back to the LAN side.
pub fn source_prefixes() -> Vec<String> {
    (0..BIG_GATEWAYS)
        .map(|g| format!("100.{}.0.0/24", 64 + g))
        .collect()
}

/// The source MACs of policy `mac-g`.
fn macs(g: usize) -> impl Iterator<Item = String> {
    (0..MACS).map(move |j| format!("02:5a:{g:02x}:00:00:{j:02x}"))
}

/// The sources of policy `src-g` (shapes 1, 2, 4): 78 or 79 odd hosts of `100.{64+g}.0.0/24`
/// (64 gateways share 16 leftover items, one each for the first 16).
fn sources(g: usize) -> Vec<String> {
    (0..78 + usize::from(g < 16))
        .map(|j| format!("100.{}.0.{}", 64 + g, 2 * j + 1))
        .collect()
}

/// Case (b2k) of the forward bench: the two lookups shape 1's classification needs (one
/// per key type, over the same 10,000 MACs and sources), every element `continue`, with
/// the floor's mark restore and symroute's guard, and no decision at all. What the
/// lookups alone cost, so what any classification by one lookup per key type costs at
/// least on this machine.
pub fn lookups_table() -> String {
    let all = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("{i} : continue"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let macs: Vec<String> = (0..BIG_GATEWAYS).flat_map(macs).collect();
    let sources: Vec<String> = (0..BIG_GATEWAYS).flat_map(sources).collect();
    format!(
        "table inet lookups {{
\tmap mac {{
\t\ttype ether_addr : verdict
\t\telements = {{ {} }}
\t}}
\tmap src4 {{
\t\ttype ipv4_addr : verdict
\t\telements = {{ {} }}
\t}}
\tchain classify {{
\t\tether saddr vmap @mac
\t\tip saddr vmap @src4
\t\taccept
\t}}
\tchain pre {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tct state new ct mark & 0xff000000 == 0 jump classify
\t\tmeta mark set ct mark and 0xff000000
\t}}
}}
",
        all(macs),
        all(sources)
    )
}

impl Shape {
    pub const fn label(self) -> &'static str {
        match self {
            Shape::Alternating => "(1) mac/src alternating, 128 runs",
            Shape::Grouped => "(2) all mac, then all src",
            Shape::Secondary => "(3) every policy with secondaries",
            Shape::Reversed => "(4) shape 1, gateways reversed",
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Shape::Alternating => "alternating",
            Shape::Grouped => "grouped",
            Shape::Secondary => "secondary",
            Shape::Reversed => "reversed",
        }
    }

    /// The config: 64 gateways, 128 policies, 10,000 selector items.
    pub fn config(self) -> String {
        let mut s = format!(
            "# generated by benches/common/shapes.rs: shape {}, 64 gateways, 10,000 selector items\n",
            self.tag()
        );
        let order: Vec<usize> = match self {
            Shape::Reversed => (0..BIG_GATEWAYS).rev().collect(),
            _ => (0..BIG_GATEWAYS).collect(),
        };
        // `id = g + 1`: 64 names would collide in the default mask's 127 name-derived
        // ids; fixed ids also keep each gateway's marks and table in the reversed shape.
        for &g in &order {
            let _ = write!(
                s,
                "\n[[gateway]]\nname = \"gw{g}\"\nid = {}\ninterface = \"gw{g}\"\nvia = \"10.{g}.0.1\"\n",
                g + 1
            );
        }
        let mut first = String::new();
        let mut second = String::new();
        for &g in &order {
            let (a, b) = (self.mac_policy(g), self.other_policy(g));
            if self == Shape::Grouped {
                first += &a;
                second += &b;
            } else {
                first += &a;
                first += &b;
            }
        }
        s + &first + &second
    }

    fn mac_policy(self, g: usize) -> String {
        let macs: Vec<String> = macs(g).map(|m| format!("\"{m}\"")).collect();
        let mut p = format!(
            "\n[[policy]]\nname = \"mac-{g}\"\nreply_via = \"gw{g}\"\n[policy.match]\nsource_mac = [{}]\n",
            macs.join(", ")
        );
        if self == Shape::Secondary {
            let _ = write!(
                p,
                "not_source = \"{EXCLUDED}\"\nprotocol = \"tcp\"\ndestination_port = [25, 443, \"8000-8999\"]\n"
            );
        }
        p
    }

    fn other_policy(self, g: usize) -> String {
        // Shape 3: 78 MACs + not_source + protocol + 3 ports = 83 items; 72 + 1 + 83 = 156
        // (the first 16 gateways one more each, as `sources` has).
        let (name, key, items, rest) = if self == Shape::Secondary {
            let n = 72 + usize::from(g < 16);
            let dst = (0..n).map(|j| format!("100.{}.{}.0/24", 64 + g, 2 * j + 1));
            ("dst", "destination", dst.collect(), "protocol = \"udp\"\n")
        } else {
            ("src", "source", sources(g), "")
        };
        let items: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!(
            "\n[[policy]]\nname = \"{name}-{g}\"\nroute_via = \"gw{g}\"\n[policy.match]\n{key} = [{}]\n{rest}",
            items.join(", ")
        )
    }

    /// trafgen packets (sent round-robin) from `gen_mac`'s side to rtr (`rtr_mac`).
    pub fn trafgen(self, rtr_mac: &str) -> String {
        let eth = format!(
            "eth(da={rtr_mac}, sa=02:5a:00:00:00:00, sa[2]=drnd(0, {}), sa[5]=drnd(0, {MAC_SPREAD}))",
            BIG_GATEWAYS - 1
        );
        let src = format!(
            "sa=100.64.0.0, sa[1]=drnd(64, {}), sa[3]=drnd(0, 157)",
            64 + BIG_GATEWAYS - 1
        );
        match self {
            Shape::Secondary => {
                let dst = format!(
                    "da=100.64.0.1, da[1]=drnd(64, {}), da[2]=drnd(1, 150), da[3]=drnd(1, 254)",
                    64 + BIG_GATEWAYS - 1
                );
                format!(
                    "{{ {eth}, ipv4({src}, {dst}, ttl=64), udp(sp=dinc(1024, 65535), dp=9), fill(0x00, 18) }}\n\
                     {{ {eth}, ipv4({src}, {dst}, ttl=64), tcp(sp=dinc(1024, 65535), dp=443, syn) }}\n"
                )
            }
            _ => format!(
                "{{ {eth}, ipv4({src}, da={INTERNET}, ttl=64), udp(sp=dinc(1024, 65535), dp=9), fill(0x00, 18) }}\n"
            ),
        }
    }
}
