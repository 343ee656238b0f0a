//! Conntrack entries by mark, over ctnetlink (NETLINK_NETFILTER, subsystem
//! NFNL_SUBSYS_CTNETLINK) in the current network namespace: count them with a filtered
//! dump, flush them with a filtered delete. Both carry CTA_MARK and CTA_MARK_MASK and no
//! tuple, so the kernel itself selects the entries whose `mark & mask == value` (filtered
//! dumps and flushes exist since Linux 4.x/5.x; 5.15 has both).
//!
//! The messages are encoded by `netlink-packet-netfilter` (the rust-netlink crate that
//! matches our `netlink-packet-core`); it has no variant for CTA_MARK_MASK, which goes in
//! as a raw attribute. Dump answers are only counted, never parsed: the kernel has already
//! filtered them.

use netlink_packet_core::{DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::netlink::{dump_raw, encode, request_acked, NfSocket};
use super::KernelError;

/// linux/netfilter/nfnetlink_conntrack.h
const CTA_MARK_MASK: u16 = 21;
/// The type of each entry of a dump: NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW.
const CT_NEW: u16 = 1 << 8;

/// A ctnetlink socket.
pub struct Conntrack {
    socket: NfSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// The request for entries with `mark & mask == value`, in every address family
/// (AF_UNSPEC with version 0 means all of them, for dumps and flushes alike).
fn by_mark(
    msg: fn(Vec<ConntrackAttribute>) -> ConntrackMessage,
    value: u32,
    mask: u32,
) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        msg(vec![
            ConntrackAttribute::CtaMark(value),
            ConntrackAttribute::Other(DefaultNla::new(CTA_MARK_MASK, mask.to_be_bytes().to_vec())),
        ]),
    )
}

impl Conntrack {
    pub fn open() -> Result<Self, KernelError> {
        Ok(Self {
            socket: NfSocket::open()?,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The request for entries with `mark & mask == value`, encoded with a fresh sequence
    /// number; that number.
    fn request(
        &mut self,
        msg: fn(Vec<ConntrackAttribute>) -> ConntrackMessage,
        flags: u16,
        value: u32,
        mask: u32,
    ) -> (u32, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1);
        let mut bytes = Vec::new();
        encode(by_mark(msg, value, mask), flags, self.seq, &mut bytes);
        (self.seq, bytes)
    }

    /// How many entries have `mark & mask == value`.
    pub fn count(&mut self, value: u32, mask: u32) -> Result<u64, KernelError> {
        let (seq, bytes) = self.request(
            ConntrackMessage::Get,
            NLM_F_REQUEST | NLM_F_DUMP,
            value,
            mask,
        );
        let what = format!("conntrack -L --mark {value:#x}/{mask:#x}");
        let mut n = 0;
        dump_raw(&self.socket, &mut self.buf, &what, seq, &bytes, |m| {
            if m.kind == CT_NEW {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// How many entries carry any of `values` (under `mask`): a gateway's connections,
    /// counted over its reply and route marks.
    pub fn count_any(
        &mut self,
        values: impl IntoIterator<Item = u32>,
        mask: u32,
    ) -> Result<u64, KernelError> {
        values.into_iter().map(|v| self.count(v, mask)).sum()
    }

    /// Delete every entry with `mark & mask == value`; how many there were just before
    /// (the kernel's flush does not say, so they are counted first: a connection that
    /// starts in between is flushed without being counted). Refuses `value & mask == 0`,
    /// which would select every unmarked connection.
    pub fn flush(&mut self, value: u32, mask: u32) -> Result<u64, KernelError> {
        let what = format!("conntrack -D --mark {value:#x}/{mask:#x}");
        if value & mask == 0 || value & !mask != 0 {
            return Err(KernelError::Other(format!(
                "{what}: refusing to flush by a mark outside the mask or zero (it would select unmarked connections)"
            )));
        }
        let n = self.count(value, mask)?;
        if n == 0 {
            return Ok(0);
        }
        let (seq, bytes) = self.request(
            ConntrackMessage::Delete,
            NLM_F_REQUEST | NLM_F_ACK,
            value,
            mask,
        );
        request_acked(&self.socket, &mut self.buf, &what, seq, &bytes)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_mark_and_mask_and_no_tuple() {
        let mut bytes = Vec::new();
        encode(
            by_mark(ConntrackMessage::Delete, 0x0200_0000, 0xff00_0000),
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            &mut bytes,
        );
        let ne16 = |v: u16| v.to_ne_bytes();
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes()); // length
        want.extend_from_slice(&ne16(1 << 8 | 2)); // ctnetlink, IPCTNL_MSG_CT_DELETE
        want.extend_from_slice(&ne16(NLM_F_REQUEST | NLM_F_ACK));
        want.extend_from_slice(&9u32.to_ne_bytes()); // sequence
        want.extend_from_slice(&0u32.to_ne_bytes()); // port
        want.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, version 0, res_id 0
        want.extend_from_slice(&ne16(8));
        want.extend_from_slice(&ne16(8)); // CTA_MARK
        want.extend_from_slice(&[2, 0, 0, 0]); // big-endian
        want.extend_from_slice(&ne16(8));
        want.extend_from_slice(&ne16(CTA_MARK_MASK));
        want.extend_from_slice(&[0xff, 0, 0, 0]);
        assert_eq!(bytes, want);
    }
}
