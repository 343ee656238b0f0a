//! What symroute reads of nftables over nfnetlink, without starting `nft`: the ruleset's
//! generation ([`generation`]), our table's chains ([`table_chains`]) and named counters
//! ([`counters`]), and which rules it holds ([`rule_handles`]: one NFT_MSG_GETRULE dump
//! of table `inet symroute`, reduced to (chain, rule handle) pairs. Every rule added,
//! deleted or replaced gets or loses a handle, so a digest of these pairs tells whether
//! anyone altered the table since symroute wrote it, at a fraction of the cost of
//! listing it with `nft` (which also formats every set element): well under a
//! millisecond for a table of 10,000 selectors, against 30–80 ms).
//!
//! Hand-written because no rust-netlink crate encodes nf_tables messages (and the
//! nftnl bindings need libnftnl); each request is a header and at most two attributes,
//! and only a few attributes of the answers are read.

use std::collections::BTreeMap;

use netlink_packet_core::{NlasIterator, NLM_F_DUMP, NLM_F_REQUEST};

use netlink_packet_core::NLM_F_ACK;

use super::netlink::{dump_raw, request_answered, NfSocket};
use super::KernelError;

/// linux/netfilter/nfnetlink.h and nf_tables.h.
/// nfnetlink message types are `(subsystem << 8) | message`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFPROTO_INET: u8 = 1;
const NFPROTO_UNSPEC: u8 = 0;
/// The generation message: a GETGEN answer, and the last notification of every commit.
pub const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const ENOENT: &str = "No such file or directory";

/// The (chain, handle) pairs of every rule of table `inet NAME`, sorted (none when the
/// table does not exist: the kernel's filtered dump is then simply empty; `None` only if
/// the kernel says ENOENT).
pub fn rule_handles(table: &str) -> Result<Option<Vec<(String, u64)>>, KernelError> {
    let socket = NfSocket::open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let seq = 1;
    let what = format!("nft list table inet {table} (rule handles)");
    let mut rules = Vec::new();
    let res = dump_raw(
        &socket,
        &mut buf,
        &what,
        seq,
        &rules_request(table, seq),
        |m| {
            if m.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
                // nfgenmsg (4 bytes), then the attributes.
                let (chain, handle) = rule_attrs(m.payload.get(4..).unwrap_or_default());
                if let (Some(c), Some(h)) = (chain, handle) {
                    rules.push((c, h));
                }
            }
            Ok(())
        },
    );
    match res {
        Ok(_) => {
            rules.sort();
            Ok(Some(rules))
        }
        Err(KernelError::Netlink { reason, .. }) if reason.contains(ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names of the chains of table `inet TABLE`, `None` when there is no such table:
/// two dumps of family inet (its tables, its chains), filtered here, since the kernel
/// filters chain dumps by family only. Well under a millisecond, where `nft` would list
/// the whole ruleset. The ruleset's generation is read before and after, on the same
/// socket: a commit between the dumps (the table deleted after the tables were read), or
/// a dump the kernel marks as interrupted, is an error (the caller lists the ruleset
/// instead).
pub fn table_chains(table: &str) -> Result<Option<Vec<String>>, KernelError> {
    let socket = NfSocket::open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let what = format!("nft list chains of table inet {table}");
    let before = generation_on(&socket, &mut buf)?;
    // Tables first: a chain read after the table went is simply not there.
    let exists = !inet_names(&socket, &mut buf, &what, Names::TABLES, table)?.is_empty();
    let mut chains = inet_names(&socket, &mut buf, &what, Names::CHAINS, table)?;
    if generation_on(&socket, &mut buf)? != before {
        return Err(KernelError::Other(format!(
            "{what}: the ruleset changed while it was read"
        )));
    }
    chains.sort();
    Ok(exists.then_some(chains))
}

/// Named counters: name → (packets, bytes).
pub type Counts = BTreeMap<String, (u64, u64)>;

/// The named counters of table `inet TABLE`, name → (packets, bytes); `None` without the
/// table. One dump of its counter objects (the kernel filters by table and type) after
/// one of the family's tables, where `nft -j list counters` would start a process: every
/// metrics scrape, `status`, and every replace of our table (which carries the counts
/// over) reads them, and an `nft` child's exit waits for the kernel to free what a
/// recent commit deleted.
pub fn counters(table: &str) -> Result<Option<Counts>, KernelError> {
    let socket = NfSocket::open()?;
    let mut buf = vec![0u8; 64 * 1024];
    let what = format!("nft list counters table inet {table}");
    if inet_names(&socket, &mut buf, &what, Names::TABLES, table)?.is_empty() {
        return Ok(None);
    }
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let seq = 3;
    let request = request_with(
        NFT_MSG_GETOBJ,
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_INET,
        seq,
        &[
            (NFTA_OBJ_TABLE, &name),
            (NFTA_OBJ_TYPE, &NFT_OBJECT_COUNTER.to_be_bytes()),
        ],
    );
    let mut out = BTreeMap::new();
    dump_raw(&socket, &mut buf, &what, seq, &request, |m| {
        if m.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ {
            if let Some((obj_table, name, counts)) =
                counter_attrs(m.payload.get(4..).unwrap_or_default())
            {
                if obj_table == table {
                    out.insert(name, counts);
                }
            }
        }
        Ok(())
    })?;
    Ok(Some(out))
}

/// A dump of one kind of object of family inet, and the attribute naming the object
/// (its table is in attribute 1: `names_inet_table`).
struct Names {
    get: u16,
    new: u16,
    name_attr: u16,
    seq: u32,
}

impl Names {
    const TABLES: Names = Names {
        get: NFT_MSG_GETTABLE,
        new: NFT_MSG_NEWTABLE,
        name_attr: NFTA_TABLE_NAME,
        seq: 1,
    };
    const CHAINS: Names = Names {
        get: NFT_MSG_GETCHAIN,
        new: NFT_MSG_NEWCHAIN,
        name_attr: NFTA_CHAIN_NAME,
        seq: 2,
    };
}

/// The names of the objects `kind` dumps that belong to table `inet TABLE` (for tables:
/// the table's own name, if it exists). A dump the kernel marks as interrupted by a
/// change is an error.
fn inet_names(
    socket: &NfSocket,
    buf: &mut Vec<u8>,
    what: &str,
    kind: Names,
    table: &str,
) -> Result<Vec<String>, KernelError> {
    let mut names = Vec::new();
    let request = request_with(
        kind.get,
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_INET,
        kind.seq,
        &[],
    );
    let interrupted = dump_raw(socket, buf, what, kind.seq, &request, |m| {
        if m.kind == (NFNL_SUBSYS_NFTABLES << 8) | kind.new && names_inet_table(m.payload, table) {
            names.extend(attr_name(
                m.payload.get(4..).unwrap_or_default(),
                kind.name_attr,
            ));
        }
        Ok(())
    })?;
    if interrupted {
        return Err(KernelError::Other(format!(
            "{what}: the dump was interrupted by a change"
        )));
    }
    Ok(names)
}

/// A counter object's table, name and (packets, bytes); `None` for another type.
fn counter_attrs(attrs: &[u8]) -> Option<(String, String, (u64, u64))> {
    let (mut table, mut name, mut kind, mut counts) = (None, None, None, None);
    for nla in NlasIterator::new(attrs).map_while(Result::ok) {
        match nla.kind() {
            NFTA_OBJ_TABLE => table = Some(name_of(nla.value())),
            NFTA_OBJ_NAME => name = Some(name_of(nla.value())),
            NFTA_OBJ_TYPE => kind = nla.value().try_into().ok().map(u32::from_be_bytes),
            NFTA_OBJ_DATA => {
                let (mut packets, mut bytes) = (0, 0);
                for c in NlasIterator::new(nla.value()).map_while(Result::ok) {
                    let v = c
                        .value()
                        .try_into()
                        .ok()
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    match c.kind() {
                        NFTA_COUNTER_PACKETS => packets = v,
                        NFTA_COUNTER_BYTES => bytes = v,
                        _ => {}
                    }
                }
                counts = Some((packets, bytes));
            }
            _ => {}
        }
    }
    (kind == Some(NFT_OBJECT_COUNTER)).then_some(())?;
    Some((table?, name?, counts.unwrap_or_default()))
}

/// An nf_tables request of `kind`: header, nfgenmsg (family, NFNETLINK_V0, resource id
/// 0) and `attrs`, each padded to 4 bytes.
fn request_with(kind: u16, flags: u16, family: u8, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&0u32.to_ne_bytes()); // the length, set below
    b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, 0, 0, 0]);
    for (attr, value) in attrs {
        b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&attr.to_ne_bytes());
        b.extend_from_slice(value);
        b.resize((b.len() + 3) & !3, 0);
    }
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// The name attribute `kind` of a message's attributes.
fn attr_name(attrs: &[u8], kind: u16) -> Option<String> {
    NlasIterator::new(attrs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == kind)
        .map(|nla| name_of(nla.value()))
}

/// The generation a NEWGEN notification (nfgenmsg, then attributes) announces.
pub fn generation_of(payload: &[u8]) -> Option<u32> {
    NlasIterator::new(payload.get(4..).unwrap_or_default())
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NFTA_GEN_ID)
        .and_then(|nla| nla.value().try_into().ok().map(u32::from_be_bytes))
}

/// The generation of the namespace's nftables ruleset: the kernel counts every
/// committed transaction (anyone's: `nft`, iptables-nft, firewalld…), so an unchanged
/// number means nothing in any table changed. Set elements that packets add (`update
/// @set`) are not transactions and leave it alone.
pub fn generation() -> Result<u32, KernelError> {
    generation_on(&NfSocket::open()?, &mut vec![0u8; 4096])
}

/// [`generation`], asked on `socket`.
fn generation_on(socket: &NfSocket, buf: &mut Vec<u8>) -> Result<u32, KernelError> {
    let seq: u32 = 9;
    let request = request_with(
        NFT_MSG_GETGEN,
        NLM_F_REQUEST | NLM_F_ACK,
        NFPROTO_UNSPEC,
        seq,
        &[],
    );
    let mut id = None;
    request_answered(
        socket,
        buf,
        "nft list ruleset (generation)",
        seq,
        &request,
        |m| {
            if m.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                id = id.or(generation_of(m.payload));
            }
        },
    )?;
    id.ok_or_else(|| KernelError::Other("the kernel answered no nftables generation".into()))
}

/// nlmsghdr + nfgenmsg + NFTA_RULE_TABLE, as a dump request.
fn rules_request(table: &str, seq: u32) -> Vec<u8> {
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    request_with(
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        NFPROTO_INET,
        seq,
        &[(NFTA_RULE_TABLE, &name)],
    )
}

/// NFTA_RULE_CHAIN and NFTA_RULE_HANDLE of one rule's attributes.
fn rule_attrs(attrs: &[u8]) -> (Option<String>, Option<u64>) {
    let (mut chain, mut handle) = (None, None);
    for nla in NlasIterator::new(attrs).map_while(Result::ok) {
        match nla.kind() {
            NFTA_RULE_CHAIN => chain = Some(name_of(nla.value())),
            NFTA_RULE_HANDLE => handle = nla.value().try_into().ok().map(u64::from_be_bytes),
            _ => {}
        }
    }
    (chain, handle)
}

/// A NUL-terminated name attribute as text.
fn name_of(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches('\0')
        .to_string()
}

/// Whether an nftables message (nfgenmsg, then attributes; a notification or a dump
/// answer) is about an object of table `inet TABLE`. Every object kind names its table in
/// attribute 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
/// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
pub fn names_inet_table(payload: &[u8], table: &str) -> bool {
    const NFTA_TABLE: u16 = 1;
    payload.first() == Some(&NFPROTO_INET)
        && NlasIterator::new(payload.get(4..).unwrap_or_default())
            .map_while(Result::ok)
            .find(|nla| nla.kind() == NFTA_TABLE)
            .is_some_and(|nla| name_of(nla.value()) == table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_one_header_and_a_padded_table_name() {
        let r = rules_request("symroute", 7);
        assert_eq!(r.len(), 16 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 10 << 8 | 7);
        assert_eq!(&r[24..33], b"symroute\0");
    }

    #[test]
    fn the_generation_is_read_from_its_attribute() {
        // nfgenmsg, then the attribute.
        let mut a = vec![0u8; 4];
        a.extend_from_slice(&8u16.to_ne_bytes());
        a.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        a.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(generation_of(&a), Some(0x0102_0304));
        assert_eq!(generation_of(&a[..10]), None);
    }

    #[test]
    fn chain_and_handle_are_read_and_the_rest_skipped() {
        let mut a = Vec::new();
        let mut attr = |kind: u16, v: &[u8]| {
            a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(v);
            a.resize((a.len() + 3) & !3, 0);
        };
        attr(NFTA_RULE_TABLE, b"symroute\0");
        attr(NFTA_RULE_CHAIN, b"pre\0");
        attr(4 | 0x8000, &[1, 2, 3, 4]); // nested expressions
        attr(NFTA_RULE_HANDLE, &42u64.to_be_bytes());
        assert_eq!(rule_attrs(&a), (Some("pre".into()), Some(42)));
        assert_eq!(rule_attrs(&a[..3]), (None, None));
    }
}
