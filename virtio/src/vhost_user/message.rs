//! vhost-user message encoding (spec: "Message Specification"): a 12-byte
//! header of three little-endian u32 (request, flags, payload size)
//! followed by the payload; file descriptors travel as SCM_RIGHTS
//! ancillary data of the same message.

/// Requests the frontend sends (front-end message types).
pub mod req {
    /// Features the backend offers.
    pub const GET_FEATURES: u32 = 1;
    /// Features the frontend accepted.
    pub const SET_FEATURES: u32 = 2;
    /// Claims the session.
    pub const SET_OWNER: u32 = 3;
    /// Guest memory regions (with one fd each).
    pub const SET_MEM_TABLE: u32 = 5;
    /// Ring size.
    pub const SET_VRING_NUM: u32 = 8;
    /// Ring addresses.
    pub const SET_VRING_ADDR: u32 = 9;
    /// Next available index.
    pub const SET_VRING_BASE: u32 = 10;
    /// Stops a ring and returns its next available index.
    pub const GET_VRING_BASE: u32 = 11;
    /// Notification eventfd (guest → backend).
    pub const SET_VRING_KICK: u32 = 12;
    /// Used-buffer eventfd (backend → guest).
    pub const SET_VRING_CALL: u32 = 13;
    /// Protocol features the backend offers.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// Protocol features the frontend accepted.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// Queues the backend supports (with MQ).
    pub const GET_QUEUE_NUM: u32 = 17;
    /// Enables or disables a ring.
    pub const SET_VRING_ENABLE: u32 = 18;

    /// The request's name for error messages.
    pub fn name(request: u32) -> &'static str {
        match request {
            GET_FEATURES => "GET_FEATURES",
            SET_FEATURES => "SET_FEATURES",
            SET_OWNER => "SET_OWNER",
            SET_MEM_TABLE => "SET_MEM_TABLE",
            SET_VRING_NUM => "SET_VRING_NUM",
            SET_VRING_ADDR => "SET_VRING_ADDR",
            SET_VRING_BASE => "SET_VRING_BASE",
            GET_VRING_BASE => "GET_VRING_BASE",
            SET_VRING_KICK => "SET_VRING_KICK",
            SET_VRING_CALL => "SET_VRING_CALL",
            GET_PROTOCOL_FEATURES => "GET_PROTOCOL_FEATURES",
            SET_PROTOCOL_FEATURES => "SET_PROTOCOL_FEATURES",
            GET_QUEUE_NUM => "GET_QUEUE_NUM",
            SET_VRING_ENABLE => "SET_VRING_ENABLE",
            _ => "request",
        }
    }
}

/// Header flags: protocol version 1 in bits 0-1.
pub const FLAG_VERSION_1: u32 = 0x1;
/// Header flags: the message is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flags: the frontend wants an ack (with REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Size of the header.
pub const HEADER_LEN: usize = 12;
/// Largest reply payload accepted.
pub const MAX_REPLY_LEN: u32 = 4096;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Protocol feature: several queues, GET_QUEUE_NUM.
pub const PROTOCOL_F_MQ: u64 = 1 << 0;
/// Protocol feature: acks for requests flagged NEED_REPLY.
pub const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request code.
    pub request: u32,
    /// Flags (version, reply, need-reply).
    pub flags: u32,
    /// Payload size in bytes.
    pub size: u32,
}

impl Header {
    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.request.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    /// Parses 12 bytes from the wire.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }
}

/// A u64 payload (features, acks).
pub fn u64_payload(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// `struct vhost_vring_state`: ring index and a number.
pub fn vring_state(index: u32, num: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0..4].copy_from_slice(&index.to_le_bytes());
    out[4..8].copy_from_slice(&num.to_le_bytes());
    out
}

/// `struct vhost_vring_addr` (no dirty logging): ring index, flags 0, then
/// the frontend's virtual addresses of the descriptor table, used ring and
/// available ring, and the log address 0.
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[0..4].copy_from_slice(&index.to_le_bytes());
    for (i, v) in [desc, used, avail, 0].into_iter().enumerate() {
        out[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// One region of SET_MEM_TABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// Guest physical start.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// The frontend's virtual address of the region.
    pub userspace_addr: u64,
    /// Offset of the region in its file.
    pub mmap_offset: u64,
}

/// The SET_MEM_TABLE payload: region count, padding, regions.
pub fn mem_table(regions: &[MemRegion]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 32 * regions.len());
    out.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        for v in [
            r.guest_phys_addr,
            r.memory_size,
            r.userspace_addr,
            r.mmap_offset,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// SET_VRING_KICK/CALL payload: the ring index (bit 8 clear: an fd is
/// attached).
pub fn vring_fd(index: u32) -> [u8; 8] {
    u64_payload(u64::from(index & 0xff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            request: req::SET_MEM_TABLE,
            flags: FLAG_VERSION_1 | FLAG_NEED_REPLY,
            size: 40,
        };
        let b = h.encode();
        assert_eq!(b, [5, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn payload_layouts_follow_the_spec() {
        assert_eq!(vring_state(1, 256), [1, 0, 0, 0, 0, 1, 0, 0]);
        let a = vring_addr(2, 0x1000, 0x3000, 0x2000);
        assert_eq!(&a[0..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&a[8..16], &0x1000u64.to_le_bytes());
        assert_eq!(&a[16..24], &0x3000u64.to_le_bytes());
        assert_eq!(&a[24..32], &0x2000u64.to_le_bytes());
        assert_eq!(&a[32..40], &[0; 8]);
        let t = mem_table(&[
            MemRegion {
                guest_phys_addr: 0,
                memory_size: 0x100,
                userspace_addr: 0x7f00_0000,
                mmap_offset: 0,
            },
            MemRegion {
                guest_phys_addr: 1 << 32,
                memory_size: 0x200,
                userspace_addr: 0x7f10_0000,
                mmap_offset: 0x100,
            },
        ]);
        assert_eq!(t.len(), 8 + 64);
        assert_eq!(&t[0..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&t[40..48], &(1u64 << 32).to_le_bytes());
        assert_eq!(&t[64..72], &0x100u64.to_le_bytes());
        assert_eq!(vring_fd(3), [3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(req::name(req::GET_VRING_BASE), "GET_VRING_BASE");
    }
}
