//! The virtio-vsock packet header (virtio 1.x, "Socket Device") and moving
//! packets between descriptor chains and host memory.
//!
//! A packet is a 44-byte little-endian header followed by `len` payload
//! bytes. The guest's transmit chains carry packets in their device-readable
//! buffers; the device writes packets into the device-writable buffers of
//! the guest's receive chains.

use address_space::GuestMemoryMmap;

use crate::chain::{descs_in_memory, Chain, Cursor, Desc};

/// Size of the packet header.
pub const HDR_LEN: usize = 44;
/// The CID of the host.
pub const HOST_CID: u64 = 2;
/// Socket type: stream (the only one offered).
pub const TYPE_STREAM: u16 = 1;
/// Largest payload accepted from, or sent to, the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Operation: connection request.
pub const OP_REQUEST: u16 = 1;
/// Operation: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Operation: connection reset (refused or closed).
pub const OP_RST: u16 = 3;
/// Operation: the sender shuts down one or both directions.
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: data.
pub const OP_RW: u16 = 5;
/// Operation: the sender's buffer space changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: the sender asks for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*`).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender consumed from that buffer (wrapping).
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Decodes the wire layout.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering this packet, sent to `guest_cid` from the address
    /// the packet was sent to (so that the guest matches it to its socket).
    pub fn rst_reply(&self, guest_cid: u64) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: guest_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }
}

/// Why a transmit chain does not hold a usable packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TxError {
    /// Fewer than [`HDR_LEN`] readable bytes.
    #[error("packet shorter than its header")]
    ShortHeader,
    /// The header announces more payload than [`MAX_PAYLOAD`].
    #[error("payload of {} bytes exceeds the {MAX_PAYLOAD}-byte limit", .0.len)]
    TooLong(Header),
    /// The header announces more payload than the chain holds.
    #[error("payload of {} bytes exceeds the {avail} bytes of the chain", .hdr.len)]
    Truncated {
        /// The header read.
        hdr: Header,
        /// Payload bytes the chain holds.
        avail: u64,
    },
    /// A buffer lies outside guest RAM.
    #[error("buffer outside guest RAM")]
    Memory,
}

impl TxError {
    /// The header, when it could be read.
    pub fn header(&self) -> Option<&Header> {
        match self {
            TxError::TooLong(h) | TxError::Truncated { hdr: h, .. } => Some(h),
            TxError::ShortHeader | TxError::Memory => None,
        }
    }
}

/// Reads the packet of a transmit chain: returns its header and leaves its
/// payload (exactly `len` bytes) in `payload`.
pub(crate) fn read_tx(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    payload: &mut Vec<u8>,
) -> Result<Header, TxError> {
    payload.clear();
    let readable: Vec<Desc> = chain
        .descs
        .iter()
        .filter(|d| !d.writable)
        .copied()
        .collect();
    if !descs_in_memory(mem, &readable) {
        return Err(TxError::Memory);
    }
    let mut cursor = Cursor::new(mem, &readable);
    let mut raw = [0u8; HDR_LEN];
    match cursor.read(&mut raw) {
        Ok(HDR_LEN) => {}
        Ok(_) => return Err(TxError::ShortHeader),
        Err(_) => return Err(TxError::Memory),
    }
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return Err(TxError::TooLong(hdr));
    }
    let avail = cursor.remaining();
    if u64::from(hdr.len) > avail {
        return Err(TxError::Truncated { hdr, avail });
    }
    payload.resize(len, 0);
    match cursor.read(payload) {
        Ok(n) if n == len => Ok(hdr),
        _ => Err(TxError::Memory),
    }
}

/// Payload room of a receive chain (its writable bytes after the header),
/// or `None` when it cannot even hold a header or lies outside guest RAM.
pub(crate) fn rx_capacity(mem: &GuestMemoryMmap, chain: &Chain) -> Option<usize> {
    let writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
    if !descs_in_memory(mem, &writable) {
        return None;
    }
    let room = chain.writable_len().checked_sub(HDR_LEN as u64)?;
    Some(usize::try_from(room).unwrap_or(usize::MAX).min(MAX_PAYLOAD))
}

/// Writes `hdr` (with `len` set to the payload length) and `payload` into
/// the writable buffers of `chain`; returns the bytes written.
pub(crate) fn write_rx(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    mut hdr: Header,
    payload: &[u8],
) -> Option<u32> {
    let writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
    hdr.len = u32::try_from(payload.len()).ok()?;
    let mut cursor = Cursor::new(mem, &writable);
    if cursor.remaining() < (HDR_LEN + payload.len()) as u64 {
        return None;
    }
    let a = cursor.write(&hdr.to_bytes()).ok()?;
    let b = cursor.write(payload).ok()?;
    u32::try_from(a + b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::*;
    use vm_memory::GuestAddress;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0xa5,
            buf_alloc: 1 << 18,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), h);
        let r = h.rst_reply(3);
        assert_eq!((r.src_cid, r.src_port), (2, 52));
        assert_eq!((r.dst_cid, r.dst_port), (3, 0x1234_5678));
        assert_eq!((r.op, r.type_, r.len), (OP_RST, TYPE_STREAM, 0));
    }

    fn chain(descs: &[(u64, u32, bool)]) -> Chain {
        Chain {
            head: 0,
            descs: descs
                .iter()
                .map(|&(a, len, writable)| Desc {
                    addr: GuestAddress(a),
                    len,
                    writable,
                })
                .collect(),
        }
    }

    #[test]
    fn tx_packet_split_over_buffers() {
        let mem = guest_memory();
        let h = sample();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"hel", GuestAddress(0x2000)).unwrap();
        mem.write_slice(b"lo", GuestAddress(0x3000)).unwrap();
        let c = chain(&[
            (0x1000, 44, false),
            (0x2000, 3, false),
            (0x9000, 64, true),
            (0x3000, 10, false),
        ]);
        let mut payload = Vec::new();
        assert_eq!(read_tx(&mem, &c, &mut payload).unwrap(), h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn malformed_tx_packets_are_reported() {
        let mem = guest_memory();
        let mut payload = Vec::new();
        let mut h = sample();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            read_tx(&mem, &chain(&[(0x1000, 43, false)]), &mut payload),
            Err(TxError::ShortHeader)
        );
        let e = read_tx(&mem, &chain(&[(0x1000, 46, false)]), &mut payload).unwrap_err();
        assert_eq!(e, TxError::Truncated { hdr: h, avail: 2 });
        assert_eq!(e.header(), Some(&h));
        h.len = MAX_PAYLOAD as u32 + 1;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            read_tx(&mem, &chain(&[(0x1000, 1 << 20, false)]), &mut payload),
            Err(TxError::TooLong(h))
        );
        assert_eq!(
            read_tx(&mem, &chain(&[(MEM_SIZE - 8, 64, false)]), &mut payload),
            Err(TxError::Memory)
        );
    }

    #[test]
    fn rx_packet_written_and_capacity_bounded() {
        let mem = guest_memory();
        let c = chain(&[(0x1000, 40, true), (0x2000, 10, true)]);
        assert_eq!(rx_capacity(&mem, &c), Some(6));
        let n = write_rx(&mem, &c, sample(), b"abcdef").unwrap();
        assert_eq!(n, 50);
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw[..40], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut raw[40..], GuestAddress(0x2000))
            .unwrap();
        let mut want = sample();
        want.len = 6;
        assert_eq!(Header::from_bytes(&raw), want);
        let mut p = [0u8; 6];
        mem.read_slice(&mut p, GuestAddress(0x2004)).unwrap();
        assert_eq!(&p, b"abcdef");
        assert_eq!(write_rx(&mem, &c, sample(), b"abcdefg"), None);
        assert_eq!(rx_capacity(&mem, &chain(&[(0x1000, 43, true)])), None);
        assert_eq!(rx_capacity(&mem, &chain(&[(MEM_SIZE - 8, 64, true)])), None);
        assert_eq!(
            rx_capacity(&mem, &chain(&[(0x1000, 1 << 20, true)])),
            Some(MAX_PAYLOAD)
        );
    }
}
