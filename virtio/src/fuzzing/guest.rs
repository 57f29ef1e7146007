//! The simulated guest of the virtqueue and MMIO fuzz targets: a small
//! guest RAM with a hole, split rings laid out by the guest, and the
//! check that a device only writes where the driver let it.

use address_space::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM regions: two adjacent ones (a buffer may straddle them), a
/// hole, then a small one.
pub(super) const REGIONS: [(u64, usize); 3] = [(0, 0xc000), (0xc000, 0x4000), (0x2_0000, 0x1000)];
/// End of the highest region: addresses below it are "near" RAM.
pub(super) const MEM_SPAN: u64 = 0x2_1000;
/// Distance between the ring areas of consecutive queues.
const QUEUE_STRIDE: u64 = 0x3000;
/// Offset of the available ring inside a queue's area.
const AVAIL_OFF: u64 = 0x1000;
/// Offset of the used ring inside a queue's area.
const USED_OFF: u64 = 0x1400;
/// Descriptor flag: the chain continues at `next`.
pub(super) const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub(super) const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub(super) const F_INDIRECT: u16 = 4;

/// Fresh guest RAM laid out as [`REGIONS`].
pub(super) fn guest_memory() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> =
        REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    // Fixed, valid, non-overlapping ranges: only an mmap failure (out of
    // memory) can make this fail, which is no finding of the fuzzer.
    GuestMemoryMmap::from_ranges(&ranges).expect("cannot map the fuzzing guest RAM")
}

/// Maps an address from the fuzz input: with the top bit clear it lands
/// in or near guest RAM, with it set it is used as it is (huge addresses,
/// overflow at the end of the address space).
pub(super) fn map_addr(raw: u64) -> u64 {
    if raw >> 63 == 0 {
        raw % MEM_SPAN
    } else {
        raw
    }
}

/// One split queue as the guest laid it out.
pub(super) struct GuestQueue {
    /// Number of entries.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl GuestQueue {
    /// Queue `index` with `size` entries in its fixed area.
    pub fn new(index: usize, size: u16) -> Self {
        let base = QUEUE_STRIDE * index as u64;
        GuestQueue {
            size,
            desc: base,
            avail: base + AVAIL_OFF,
            used: base + USED_OFF,
        }
    }

    /// The device's view of this queue, ready (`max` is the device's
    /// maximum size).
    pub fn device_queue(&self, max: u16) -> Option<Queue> {
        let mut q = Queue::new(max).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_ready(true);
        Some(q)
    }

    /// Writes descriptor `idx` (taken modulo the size).
    pub fn set_desc(&self, mem: &GuestMemoryMmap, idx: u16, d: [u8; 16]) {
        let at = self.desc + 16 * u64::from(idx % self.size);
        let _ = mem.write_slice(&d, GuestAddress(at));
    }

    /// Appends `heads` to the available ring and publishes them.
    pub fn publish(&self, mem: &GuestMemoryMmap, heads: &[u16]) {
        let mut idx: u16 = mem.read_obj(GuestAddress(self.avail + 2)).unwrap_or(0);
        for &h in heads {
            let slot = u64::from(idx % self.size);
            let _ = mem.write_obj(h, GuestAddress(self.avail + 4 + 2 * slot));
            idx = idx.wrapping_add(1);
        }
        let _ = mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// Stores a raw available index (possibly an impossible one).
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        let _ = mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// The available index the guest published.
    pub fn avail_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2)).unwrap_or(0)
    }

    /// The used index the device published.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }
}

/// Guest memory ranges `[start, end)` the device may write: the used
/// rings, and the device-writable buffers of every chain the device could
/// have taken so far (chains stay the device's until it returns them, so
/// ranges are only ever added).
#[derive(Default)]
pub(super) struct Allowed {
    ranges: Vec<(u64, u64)>,
    /// What the device reads to find buffers (descriptor tables, available
    /// rings, indirect tables), from the last [`Allowed::begin`] on.
    control: Vec<(u64, u64)>,
}

impl Allowed {
    fn add(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.ranges.push((start, start.saturating_add(len)));
        }
    }

    /// Adds the used ring of a queue (`size` entries at `used`).
    pub fn add_used_ring(&mut self, used: u64, size: u16) {
        self.add(used, 6 + 8 * u64::from(size));
        self.merge();
    }

    /// Starts a new round of [`Allowed::add_queue`] calls.
    pub fn begin(&mut self) {
        self.control.clear();
    }

    /// Whether a buffer the device may write overlaps what the device
    /// reads to find buffers. Then the driver let the device rewrite its
    /// own descriptors, and where it writes next follows from what it
    /// wrote: no snapshot taken beforehand can tell, so such a round is
    /// not checked.
    pub fn self_modifying(&self) -> bool {
        self.control.iter().any(|&(cs, ce)| {
            let i = self.ranges.partition_point(|&(_, e)| e <= cs);
            self.ranges.get(i).is_some_and(|&(s, _)| s < ce)
        })
    }

    /// Adds the writable buffers of every chain that starts at a head in
    /// `gq`'s available ring, as guest RAM `snap` (a [`snapshot`]) holds
    /// them. Follows `next` links and indirect tables the way
    /// `virtio_queue` does, but without its length limits (a superset).
    pub fn add_queue(&mut self, snap: &[u8], gq: &GuestQueue) {
        let size = usize::from(gq.size);
        let n = u64::from(gq.size);
        self.control.push((gq.desc, gq.desc + 16 * n));
        self.control.push((gq.avail, gq.avail + 6 + 2 * n));
        let mut visited = vec![false; size];
        let mut tables: Vec<(u64, u32)> = Vec::new();
        for slot in 0..u64::from(gq.size) {
            let Some(h) = snap_bytes(snap, gq.avail + 4 + 2 * slot, 2) else {
                continue;
            };
            let mut i = usize::from(u16::from_le_bytes([h[0], h[1]]));
            while i < size && !visited[i] {
                visited[i] = true;
                let Some((addr, len, flags, next)) = snap_desc(snap, gq.desc + 16 * i as u64)
                else {
                    break;
                };
                if flags & F_INDIRECT != 0 {
                    if !tables.contains(&(addr, len)) {
                        tables.push((addr, len));
                        self.add_indirect(snap, addr, len);
                    }
                    break;
                }
                if flags & F_WRITE != 0 {
                    self.add(addr, u64::from(len));
                }
                if flags & F_NEXT == 0 {
                    break;
                }
                i = usize::from(next);
            }
        }
        self.merge();
    }

    /// Adds the writable buffers of the chain in the indirect table at
    /// `addr` (`len` bytes), which starts at its entry 0.
    fn add_indirect(&mut self, snap: &[u8], addr: u64, len: u32) {
        if !len.is_multiple_of(16) || len / 16 > u32::from(u16::MAX) {
            return;
        }
        self.control
            .push((addr, addr.saturating_add(u64::from(len))));
        let n = (len / 16) as usize;
        let mut visited = vec![false; n];
        let mut i = 0usize;
        while i < n && !visited[i] {
            visited[i] = true;
            let Some((a, l, flags, next)) = snap_desc(snap, addr.wrapping_add(16 * i as u64))
            else {
                break;
            };
            if flags & F_INDIRECT != 0 {
                break;
            }
            if flags & F_WRITE != 0 {
                self.add(a, u64::from(l));
            }
            if flags & F_NEXT == 0 {
                break;
            }
            i = usize::from(next);
        }
    }

    fn merge(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.ranges = out;
    }

    /// Whether `addr` is allowed (ranges must be merged).
    fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|&(s, _)| s <= addr);
        i > 0 && addr < self.ranges[i - 1].1
    }
}

/// `len` bytes at guest address `addr` in a [`snapshot`], if they are all
/// inside one contiguous stretch of RAM.
fn snap_bytes(snap: &[u8], addr: u64, len: usize) -> Option<&[u8]> {
    let mut base = 0usize;
    // Adjacent regions are adjacent in the snapshot too.
    let mut run_start = 0u64;
    let mut run_base = 0usize;
    let mut run_end = 0u64;
    for &(start, size) in &REGIONS {
        if start != run_end {
            run_start = start;
            run_base = base;
        }
        run_end = start + size as u64;
        base += size;
        if (run_start..run_end).contains(&addr) {
            let off = run_base + usize::try_from(addr - run_start).ok()?;
            let avail = usize::try_from(run_end - addr).ok()?;
            // The run may go on in the next region: only stop when it ends.
            if len <= avail {
                return snap.get(off..off + len);
            }
        }
    }
    None
}

/// (addr, len, flags, next) of the descriptor at `at` in a [`snapshot`].
fn snap_desc(snap: &[u8], at: u64) -> Option<(u64, u32, u16, u16)> {
    let b = snap_bytes(snap, at, 16)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    Some((
        u64::from_le_bytes(a),
        u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        u16::from_le_bytes([b[12], b[13]]),
        u16::from_le_bytes([b[14], b[15]]),
    ))
}

/// Bytes of guest RAM, all regions one after the other.
pub(super) const RAM_BYTES: usize = REGIONS[0].1 + REGIONS[1].1 + REGIONS[2].1;

/// Copies all guest RAM into `out` (resized to [`RAM_BYTES`]).
pub(super) fn snapshot_into(mem: &GuestMemoryMmap, out: &mut Vec<u8>) {
    out.resize(RAM_BYTES, 0);
    let mut base = 0usize;
    for &(start, len) in &REGIONS {
        let _ = mem.read_slice(&mut out[base..base + len], GuestAddress(start));
        base += len;
    }
}

/// A copy of all guest RAM.
#[cfg(test)]
pub(super) fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut out = Vec::new();
    snapshot_into(mem, &mut out);
    out
}

/// Panics if a byte differs between the snapshots `before` and `after`
/// outside `allowed`: the device wrote guest memory the driver did not
/// hand it.
pub(super) fn check_writes(before: &[u8], after: &[u8], allowed: &Allowed) {
    if before == after {
        return;
    }
    let mut base = 0usize;
    for &(start, len) in &REGIONS {
        let (b, a) = (&before[base..base + len], &after[base..base + len]);
        // Compare in 256-byte chunks; look at single bytes only where a
        // chunk differs.
        for (c, (bc, ac)) in b.chunks(256).zip(a.chunks(256)).enumerate() {
            if bc == ac {
                continue;
            }
            for (i, (x, y)) in bc.iter().zip(ac).enumerate() {
                let addr = start + (c * 256 + i) as u64;
                assert!(
                    x == y || allowed.contains(addr),
                    "device wrote guest memory at {addr:#x} ({x:#04x} -> {y:#04x}) outside every device-writable buffer and used ring"
                );
            }
        }
        base += len;
    }
}

/// Reads fuzz input front to back; past the end everything reads as zero.
pub(super) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
