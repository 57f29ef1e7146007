//! The harness drives the real devices (requests take effect), its checks
//! fire, and the seed corpora in `virtio/fuzz/corpus` run without a
//! finding. The seeds are built here: `ALTOVIRT_WRITE_SEEDS=1 cargo test
//! -p virtio fuzzing` rewrites them after a format change.

use std::path::{Path, PathBuf};

use super::guest::{check_writes, guest_memory, snapshot, Allowed, GuestQueue, F_WRITE};
use super::*;
use vm_memory::{Bytes, GuestAddress};

const F_NEXT: u16 = 1;
const F_INDIRECT: u16 = 4;

/// Builds virtqueue inputs (see [`Fuzzer::virtqueue`]).
struct Ops(Vec<u8>);

impl Ops {
    fn new(size_exp: u8, mode: u8) -> Self {
        Ops(vec![size_exp, mode])
    }
    fn desc(mut self, q: u8, idx: u16, addr: u64, len: u32, flags: u16, next: u16) -> Self {
        self.0.extend([0, q]);
        self.0.extend(idx.to_le_bytes());
        self.0.extend(addr.to_le_bytes());
        self.0.extend(len.to_le_bytes());
        self.0.extend(flags.to_le_bytes());
        self.0.extend(next.to_le_bytes());
        self
    }
    /// A chain of `bufs` (addr, len, writable) at descriptors `first..`.
    fn chain(mut self, q: u8, first: u16, bufs: &[(u64, u32, bool)]) -> Self {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if w { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self = self.desc(q, idx, addr, len, flags, idx + 1);
        }
        self
    }
    fn ram(mut self, addr: u16, bytes: &[u8]) -> Self {
        for (i, part) in bytes.chunks(255).enumerate() {
            self.0.extend([1]);
            self.0.extend((addr + 255 * i as u16).to_le_bytes());
            self.0.push(part.len() as u8);
            self.0.extend(part);
        }
        self
    }
    fn publish(mut self, q: u8, heads: &[u16]) -> Self {
        self.0.extend([2, q, heads.len() as u8]);
        for h in heads {
            self.0.extend(h.to_le_bytes());
        }
        self
    }
    fn kick(mut self, q: u8) -> Self {
        self.0.extend([3, q]);
        self
    }
    fn host(mut self, bytes: &[u8]) -> Self {
        self.0.push(4);
        self.0.extend((bytes.len() as u16).to_le_bytes());
        self.0.extend(bytes);
        self
    }
    fn avail_idx(mut self, q: u8, idx: u16) -> Self {
        self.0.extend([5, q]);
        self.0.extend(idx.to_le_bytes());
        self
    }
    fn fill(mut self, addr: u16, n: u16, byte: u8) -> Self {
        self.0.push(6);
        self.0.extend(addr.to_le_bytes());
        self.0.extend(n.to_le_bytes());
        self.0.push(byte);
        self
    }
}

fn blk_hdr(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn blk_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let write_read = Ops::new(4, 1)
        .ram(0x9000, &blk_hdr(1, 2))
        .fill(0xa000, 512, 0x5a)
        .chain(
            0,
            0,
            &[(0x9000, 16, false), (0xa000, 512, false), (0xb000, 1, true)],
        )
        .publish(0, &[0])
        .kick(0)
        .ram(0x9100, &blk_hdr(0, 2))
        // The data buffer straddles the two adjacent RAM regions.
        .chain(
            0,
            3,
            &[(0x9100, 16, false), (0xbf00, 512, true), (0xb001, 1, true)],
        )
        .publish(0, &[3])
        .kick(0);
    let misc = Ops::new(8, 1)
        .ram(0x9000, &blk_hdr(8, 0))
        .chain(0, 0, &[(0x9000, 16, false), (0xa000, 21, true)])
        .ram(0x9100, &blk_hdr(4, 0))
        .chain(0, 2, &[(0x9100, 16, false), (0xb000, 1, true)])
        .ram(0x9200, &blk_hdr(11, 0))
        .ram(0x9210, &[4, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0])
        .chain(0, 4, &[(0x9200, 32, false), (0xb001, 1, true)])
        .ram(0x9300, &blk_hdr(13, 0))
        .ram(0x9310, &[8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0])
        .chain(0, 6, &[(0x9300, 32, false), (0xb002, 1, true)])
        .ram(0x9400, &blk_hdr(0, 1000))
        .chain(
            0,
            8,
            &[(0x9400, 16, false), (0xa000, 512, true), (0xb003, 1, true)],
        )
        .publish(0, &[0, 2, 4, 6, 8])
        .kick(0);
    // An indirect table at 0x9800: header, data, status.
    let mut table = Vec::new();
    for (addr, len, flags, next) in [
        (0x9000u64, 16u32, F_NEXT, 1u16),
        (0xa000, 1024, F_NEXT | F_WRITE, 2),
        (0xb000, 1, F_WRITE, 0),
    ] {
        table.extend(addr.to_le_bytes());
        table.extend(len.to_le_bytes());
        table.extend(flags.to_le_bytes());
        table.extend(next.to_le_bytes());
    }
    let indirect = Ops::new(4, 1)
        .ram(0x9000, &blk_hdr(0, 0))
        .ram(0x9800, &table)
        .desc(0, 0, 0x9800, 48, F_INDIRECT, 0)
        .publish(0, &[0])
        .kick(0);
    let broken = Ops::new(4, 1)
        .desc(0, 0, 0x9000, 16, F_NEXT, 1)
        .desc(0, 1, 0x9000, 16, F_NEXT, 0)
        .publish(0, &[0, 300])
        .kick(0)
        .avail_idx(0, 999)
        .kick(0);
    let outside = Ops::new(4, 2)
        .ram(0x9000, &blk_hdr(1, 0))
        .chain(
            0,
            0,
            &[
                (0x9000, 16, false),
                (0x1_f000, 512, false),
                (0xb000, 1, true),
            ],
        )
        .chain(0, 3, &[(0x9000, 16, false), (u64::MAX - 4, 8, true)])
        .publish(0, &[0, 3])
        .kick(0);
    let empty_slot = Ops::new(4, 0)
        .ram(0x9000, &blk_hdr(8, 0))
        .chain(
            0,
            0,
            &[(0x9000, 16, false), (0xa000, 20, true), (0xb000, 1, true)],
        )
        .publish(0, &[0])
        .kick(0);
    vec![
        ("write-read", write_read.0),
        ("misc-requests", misc.0),
        ("indirect", indirect.0),
        ("broken-chains", broken.0),
        ("outside-ram", outside.0),
        ("empty-slot", empty_slot.0),
    ]
}

fn net_tx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let frame = Ops::new(4, 0)
        .fill(0x9000, 12, 0)
        .fill(0x900c, 60, 0xee)
        .chain(1, 0, &[(0x9000, 12, false), (0x900c, 60, false)])
        .chain(1, 2, &[(0x9000, 20, false)])
        .chain(1, 3, &[(0x9000, 72, true)])
        .chain(1, 4, &[(0x9000, 0x2_0000, false)])
        .publish(1, &[0, 2, 3, 4])
        .kick(1);
    vec![("frames", frame.0)]
}

fn net_rx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rx = Ops::new(4, 0)
        .chain(0, 0, &[(0x9000, 12, true), (0xa000, 1514, true)])
        .chain(0, 2, &[(0xb000, 20, true)])
        .publish(0, &[0, 2])
        .kick(0)
        .host(&[0xffu8; 60])
        .host(&[0x11u8; 1600])
        .chain(0, 4, &[(0xbff0, 2000, true)])
        .publish(0, &[4])
        .kick(0);
    vec![("frames", rx.0)]
}

fn vsock_hdr(op: u16, src_port: u32, dst_port: u32, len: u32, flags: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&3u64.to_le_bytes());
    h[8..16].copy_from_slice(&2u64.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&1u16.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[36..40].copy_from_slice(&(64u32 << 10).to_le_bytes());
    h
}

fn vsock_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Receive buffers: descriptors 0..8 of queue 0, 1 KiB each.
    let mut ops = Ops::new(4, 0);
    for i in 0..8u16 {
        ops = ops.desc(0, i, 0xa000 + 0x400 * u64::from(i), 0x400, F_WRITE, 0);
    }
    let session = ops
        .publish(0, &[0, 1, 2, 3, 4, 5, 6, 7])
        .kick(0)
        .ram(0x9000, &vsock_hdr(1, 7000, 1024, 0, 0))
        .chain(1, 0, &[(0x9000, 44, false)])
        .publish(1, &[0])
        .kick(1)
        .ram(0x9100, &vsock_hdr(5, 7000, 1024, 5, 0))
        .ram(0x912c, b"hello")
        .chain(1, 1, &[(0x9100, 44, false), (0x912c, 5, false)])
        .publish(1, &[1])
        .kick(1)
        .host(b"world")
        .ram(0x9200, &vsock_hdr(7, 7000, 1024, 0, 0))
        .chain(1, 2, &[(0x9200, 44, false)])
        .ram(0x9300, &vsock_hdr(4, 7000, 1024, 0, 3))
        .chain(1, 3, &[(0x9300, 44, false)])
        .ram(0x9400, &vsock_hdr(3, 7000, 1024, 0, 0))
        .chain(1, 4, &[(0x9400, 44, false)])
        .publish(1, &[2, 3, 4])
        .kick(1);
    let mut ops = Ops::new(4, 0);
    for i in 0..4u16 {
        ops = ops.desc(0, i, 0xa000 + 0x400 * u64::from(i), 0x400, F_WRITE, 0);
    }
    let refused = ops
        .publish(0, &[0, 1, 2, 3])
        .ram(0x9000, &vsock_hdr(1, 7001, 4444, 0, 0))
        .chain(1, 0, &[(0x9000, 44, false)])
        .ram(0x9100, &vsock_hdr(5, 7001, 4444, 100, 0))
        .chain(1, 1, &[(0x9100, 60, false)])
        .chain(1, 2, &[(0x9000, 30, false)])
        .publish(1, &[0, 1, 2])
        .kick(1)
        .host(b"\x01CONNECT 52\n");
    vec![("session", session.0), ("refused", refused.0)]
}

fn rng_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ops = Ops::new(4, 0)
        .chain(0, 0, &[(0x9000, 64, true), (0xbff0, 64, true)])
        .chain(0, 2, &[(0x9000, 64, false)])
        .chain(0, 3, &[(0x1_0ff0, 64, true)])
        .chain(0, 4, &[(0x9000, 0x1_0000, true)])
        .publish(0, &[0, 2, 3, 4])
        .kick(0);
    vec![("buffers", ops.0)]
}

fn console_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ops = Ops::new(4, 0)
        .host(b"early input")
        .chain(0, 0, &[(0x9000, 8, true), (0xa000, 8, true)])
        .publish(0, &[0])
        .kick(0)
        .ram(0xb000, b"guest output\n")
        .chain(1, 0, &[(0xb000, 13, false)])
        .chain(1, 1, &[(0x1_f000, 13, false)])
        .publish(1, &[0, 1])
        .kick(1)
        .host(&[b'x'; 300])
        .chain(0, 2, &[(0x9100, 512, true)])
        .publish(0, &[2])
        .kick(0);
    vec![("io", ops.0)]
}

/// Builds MMIO inputs (see [`mmio::run`]).
struct Mmio(Vec<u8>);

impl Mmio {
    fn new(device: u8, mode: u8) -> Self {
        Mmio(vec![device, mode])
    }
    fn w(mut self, offset: u16, value: u32) -> Self {
        self.0.push(0);
        self.0.extend(offset.to_le_bytes());
        self.0.push(2);
        self.0.extend(u64::from(value).to_le_bytes());
        self
    }
    fn r(mut self, offset: u16, width: u8) -> Self {
        self.0.push(1);
        self.0.extend(offset.to_le_bytes());
        self.0.push(width);
        self
    }
    fn ram(mut self, addr: u16, bytes: &[u8]) -> Self {
        self.0.push(2);
        self.0.extend(addr.to_le_bytes());
        self.0.push(bytes.len() as u8);
        self.0.extend(bytes);
        self
    }
    fn settle(mut self) -> Self {
        self.0.push(3);
        self
    }
    /// The driver's initialisation up to FEATURES_OK, accepting feature
    /// word 0 `f0` and VERSION_1.
    fn init(self, f0: u32) -> Self {
        self.w(0x70, 1)
            .w(0x70, 3)
            .w(0x24, 0)
            .w(0x20, f0)
            .w(0x24, 1)
            .w(0x20, 1)
            .w(0x70, 11)
            .r(0x70, 2)
    }
    /// Sets up queue `q` with `size` entries at the given addresses.
    fn queue(self, q: u32, size: u32, desc: u32, avail: u32, used: u32) -> Self {
        self.w(0x30, q)
            .r(0x34, 2)
            .w(0x38, size)
            .w(0x80, desc)
            .w(0x84, 0)
            .w(0x90, avail)
            .w(0x94, 0)
            .w(0xa0, used)
            .w(0xa4, 0)
            .w(0x44, 1)
    }
}

fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(addr.to_le_bytes());
    d.extend(len.to_le_bytes());
    d.extend(flags.to_le_bytes());
    d.extend(next.to_le_bytes());
    d
}

fn mmio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rng = Mmio::new(0, 0)
        .r(0, 2)
        .r(8, 2)
        .r(0x10, 2)
        .init(0)
        .queue(0, 16, 0x0, 0x1000, 0x1400)
        .w(0x70, 15)
        .ram(0, &desc_bytes(0x9000, 256, F_WRITE, 0))
        .ram(0x1004, &[0, 0])
        .ram(0x1002, &[1, 0])
        .w(0x50, 0)
        .settle()
        .r(0x60, 2)
        .w(0x64, 1)
        .r(0xfc, 2);
    let mut blk_desc = desc_bytes(0x9000, 16, F_NEXT, 1);
    blk_desc.extend(desc_bytes(0xa000, 20, F_NEXT | F_WRITE, 2));
    blk_desc.extend(desc_bytes(0xb000, 1, F_WRITE, 0));
    let blk = Mmio::new(1, 1)
        .r(0x100, 3)
        .r(0x10c, 2)
        .init(1 << 9)
        .queue(0, 8, 0x0, 0x1000, 0x1400)
        .queue(1, 8, 0x0, 0x1000, 0x1400)
        .w(0x70, 15)
        .ram(0, &blk_desc)
        .ram(0x9000, &blk_hdr(8, 0))
        .ram(0x1004, &[0, 0])
        .ram(0x1002, &[1, 0])
        .w(0x50, 0)
        .settle()
        .w(0x70, 0)
        .init(0)
        .w(0x38, 3)
        .w(0x70, 15)
        .r(0x70, 2);
    let net = Mmio::new(2, 0)
        .init(1 << 5)
        .queue(0, 256, 0x0, 0x1000, 0x1400)
        .queue(1, 256, 0x3000, 0x4000, 0x4400)
        .w(0x70, 15)
        .w(0x50, 1)
        .w(0x50, 7)
        .settle()
        .w(0x70, 0x80)
        .w(0x70, 1);
    let console = Mmio::new(3, 0)
        .init(0)
        .queue(0, 4, 0x0, 0x1000, 0x1401)
        .queue(1, 4, 0x2_0000, 0x2_0100, 0x2_0200)
        .w(0x70, 15)
        .r(0x70, 2)
        .r(0x100, 1)
        .w(0x104, 7);
    let vsock = Mmio::new(4, 0)
        .init(0)
        .queue(0, 16, 0x0, 0x1000, 0x1400)
        .queue(1, 16, 0x3000, 0x4000, 0x4400)
        .queue(2, 16, 0x6000, 0x7000, 0x7400)
        .w(0x70, 15)
        .w(0x50, 1)
        .settle()
        .r(0x100, 3);
    vec![
        ("rng", rng.0),
        ("block", blk.0),
        ("net", net.0),
        ("console", console.0),
        ("vsock", vsock.0),
    ]
}

/// A back-end reply: header (request, flags = version | reply, size) and
/// payload.
fn reply(request: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(request.to_le_bytes());
    m.extend(5u32.to_le_bytes());
    m.extend((payload.len() as u32).to_le_bytes());
    m.extend(payload);
    m
}

fn vhost_user_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ack = |r: u32| reply(r, &0u64.to_le_bytes());
    let features = (1u64 << 32) | (1 << 30) | 1;
    // Protocol features with REPLY_ACK and MQ, two queues.
    let mut full = vec![1u8 | (0x3f << 2)];
    full.extend(reply(1, &features.to_le_bytes()));
    full.extend(reply(15, &9u64.to_le_bytes()));
    full.extend(ack(16));
    full.extend(reply(17, &2u64.to_le_bytes()));
    full.extend(ack(3));
    full.extend(ack(2));
    full.extend(ack(5));
    for _ in 0..2 {
        for r in [8, 10, 9, 12, 13] {
            full.extend(ack(r));
        }
    }
    full.extend(ack(18));
    full.extend(ack(18));
    for i in 0..2u32 {
        full.extend(ack(18));
        let mut base = i.to_le_bytes().to_vec();
        base.extend(7u32.to_le_bytes());
        full.extend(reply(11, &base));
    }
    // No protocol features: only GET_FEATURES and GET_VRING_BASE answer.
    let mut plain = vec![0u8];
    plain.extend(reply(1, &(1u64 << 32).to_le_bytes()));
    plain.extend(reply(11, &[0, 0, 0, 0, 3, 0, 0, 0]));
    let mut bad = vec![2u8];
    bad.extend(reply(1, &(1u64 << 30).to_le_bytes()));
    bad.extend(reply(15, &[1, 2, 3]));
    let mut nack = vec![1u8];
    nack.extend(reply(1, &features.to_le_bytes()));
    nack.extend(reply(15, &8u64.to_le_bytes()));
    nack.extend(ack(16));
    nack.extend(reply(3, &1u64.to_le_bytes()));
    vec![
        ("full-session", full),
        ("no-protocol-features", plain),
        ("short-reply", bad),
        ("refused", nack),
    ]
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds of `target` are exactly `seeds` (or are rewritten
/// with ALTOVIRT_WRITE_SEEDS=1); returns every file of the corpus
/// directory (seeds and regression inputs).
fn corpus(target: &str, seeds: Vec<(&'static str, Vec<u8>)>) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let write = std::env::var_os("ALTOVIRT_WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in &seeds {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (ALTOVIRT_WRITE_SEEDS=1 writes it)", path.display())
            });
            assert!(
                &on_disk == bytes,
                "{} is stale (ALTOVIRT_WRITE_SEEDS=1 rewrites it)",
                path.display()
            );
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn replay(target: &str, device: Device, seeds: Vec<(&'static str, Vec<u8>)>) {
    let f = Fuzzer::new().unwrap();
    for input in corpus(target, seeds) {
        f.virtqueue(device, &input);
    }
}

#[test]
fn block_corpus() {
    replay("virtq_blk", Device::Block, blk_seeds());
}

#[test]
fn net_tx_corpus() {
    replay("virtq_net_tx", Device::NetTx, net_tx_seeds());
}

#[test]
fn net_rx_corpus() {
    replay("virtq_net_rx", Device::NetRx, net_rx_seeds());
}

#[test]
fn vsock_corpus() {
    replay("virtq_vsock", Device::Vsock, vsock_seeds());
}

#[test]
fn rng_corpus() {
    replay("virtq_rng", Device::Rng, rng_seeds());
}

#[test]
fn console_corpus() {
    replay("virtq_console", Device::Console, console_seeds());
}

#[test]
fn mmio_corpus() {
    let f = Fuzzer::new().unwrap();
    for input in corpus("mmio_ops", mmio_seeds()) {
        f.mmio(&input);
    }
    assert!(f.runs() >= 5);
}

/// A saved window: `queue` (16 entries at 0x0/0x1000/0x1400, positions
/// `next`) of a device of `device_type` with one queue.
fn saved_window(device_type: u32, status: u32, activated: bool, next: u16) -> Vec<u8> {
    use crate::snapshot::{DeviceExtra, QueueSnapshot, TransportState};
    let queue = QueueSnapshot {
        max_size: 256,
        next_avail: next,
        next_used: next,
        event_idx_enabled: false,
        size: 16,
        ready: activated,
        desc_table: 0,
        avail_ring: 0x1000,
        used_ring: 0x1400,
    };
    let state = TransportState {
        device_type,
        status,
        driver_features: 1 << 32,
        device_features_sel: 0,
        driver_features_sel: 1,
        queue_sel: 0,
        queues: vec![queue],
        queue_bad: vec![false],
        activated,
        interrupt_status: u32::from(activated),
        needs_reset: false,
        config_generation: 0,
        device: DeviceExtra::None,
    };
    serde_json::to_vec(&state).unwrap()
}

/// The snapshot-restore target's input: device, variant, the JSON, then
/// register reads of Status, InterruptStatus and QueueReady.
fn restore_input(device: u8, json: &[u8]) -> Vec<u8> {
    let mut v = vec![device, 1];
    v.extend((json.len() as u16).to_le_bytes());
    v.extend(json);
    for reg in [0x70u16, 0x60, 0x44] {
        v.push(1);
        v.extend(reg.to_le_bytes());
        v.push(2);
    }
    v
}

fn transport_state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "rng-active",
            restore_input(0, &saved_window(4, 15, true, 3)),
        ),
        (
            "block-active",
            restore_input(1, &saved_window(2, 15, true, 0)),
        ),
        (
            "rng-negotiating",
            restore_input(0, &saved_window(4, 3, false, 0)),
        ),
        (
            "wrong-device",
            restore_input(0, &saved_window(2, 15, true, 1)),
        ),
    ]
}

#[test]
fn transport_state_corpus() {
    let f = Fuzzer::new().unwrap();
    for input in corpus("transport_state", transport_state_seeds()) {
        f.transport_state(&input);
    }
    assert!(f.runs() >= 4);
}

#[test]
fn vhost_user_corpus() {
    for input in corpus("vhost_user_reply", vhost_user_seeds()) {
        vhost_user_reply(&input);
    }
}

#[test]
fn block_requests_reach_the_image() {
    let f = Fuzzer::new().unwrap();
    let seeds = blk_seeds();
    let r = f.run_virtqueue(Device::Block, &seeds[0].1).unwrap();
    assert_eq!(r.used, vec![2]);
    assert!(!r.needs_reset);
    let disk = std::fs::read(&f.host.disk).unwrap();
    assert!(disk[1024..1536].iter().all(|&b| b == 0x5a));
    // Five requests, each answered (the last with IOERR: beyond the disk).
    let r = f.run_virtqueue(Device::Block, &seeds[1].1).unwrap();
    assert_eq!(
        r,
        Report {
            used: vec![5],
            needs_reset: false
        }
    );
    // A descriptor loop makes the device give up on the queue.
    let r = f.run_virtqueue(Device::Block, &seeds[3].1).unwrap();
    assert!(r.needs_reset);
    assert_eq!(r.used, vec![0]);
}

#[test]
fn vsock_packets_reach_the_host_socket() {
    let f = Fuzzer::new().unwrap();
    let seeds = vsock_seeds();
    let r = f.run_virtqueue(Device::Vsock, &seeds[0].1).unwrap();
    // Every transmit chain is consumed; the RESPONSE and the host's data
    // (at least) reached receive buffers.
    assert_eq!(r.used[1], 5);
    assert!(r.used[0] >= 2, "{r:?}");
    assert!(!r.needs_reset);
}

#[test]
fn net_rx_and_tx_move_frames() {
    let f = Fuzzer::new().unwrap();
    let r = f
        .run_virtqueue(Device::NetRx, &net_rx_seeds()[0].1)
        .unwrap();
    // The 60-byte frame fills chain 0; the 1600-byte one fits none until
    // chain 4 comes (chain 2 is too small for any frame: returned empty).
    assert_eq!(r.used[0], 3, "{r:?}");
    let r = f
        .run_virtqueue(Device::NetTx, &net_tx_seeds()[0].1)
        .unwrap();
    assert_eq!(r.used[1], 4);
}

#[test]
fn rng_and_console_serve_their_queues() {
    let f = Fuzzer::new().unwrap();
    let r = f.run_virtqueue(Device::Rng, &rng_seeds()[0].1).unwrap();
    assert_eq!(r.used, vec![4]);
    let r = f
        .run_virtqueue(Device::Console, &console_seeds()[0].1)
        .unwrap();
    assert_eq!(r.used, vec![2, 2]);
}

#[test]
fn stray_device_write_is_caught() {
    let mem = guest_memory();
    let gq = GuestQueue::new(0, 4);
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&0x9000u64.to_le_bytes());
    d[8..12].copy_from_slice(&16u32.to_le_bytes());
    d[12..14].copy_from_slice(&F_WRITE.to_le_bytes());
    gq.set_desc(&mem, 0, d);
    // Descriptor 1: writable too, but no available chain leads to it.
    d[0..8].copy_from_slice(&0x9100u64.to_le_bytes());
    gq.set_desc(&mem, 1, d);
    gq.publish(&mem, &[0]);
    let mut allowed = Allowed::default();
    let before = snapshot(&mem);
    allowed.add_queue(&before, &gq);
    allowed.add_used_ring(gq.used, gq.size);
    mem.write_obj(7u8, GuestAddress(0x900f)).unwrap();
    mem.write_obj(7u16, GuestAddress(gq.used + 2)).unwrap();
    check_writes(&before, &snapshot(&mem), &allowed);
    for stray in [0x9010u64, 0x9100] {
        let before = snapshot(&mem);
        mem.write_obj(7u8, GuestAddress(stray)).unwrap();
        let after = snapshot(&mem);
        let r = std::panic::catch_unwind(|| check_writes(&before, &after, &allowed));
        assert!(r.is_err(), "a write at {stray:#x} went unnoticed");
    }
}
