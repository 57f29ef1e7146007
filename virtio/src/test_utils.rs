//! Helpers shared by the unit tests: guest memory, a driver-side view of a
//! split queue, temporary directories and polling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use address_space::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

pub use vm_memory::Bytes;

/// Size of the test guest RAM (starting at 0).
pub const MEM_SIZE: u64 = 16 << 20;
/// Queue size used by the tests.
pub const QSIZE: u16 = 16;
/// Descriptor flags as u16.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Indirect table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Writes a chain at descriptor indices `first..` linking them in order.
pub fn write_chain(
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    first: u16,
    bufs: &[(u64, u32, bool)],
) {
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let idx = first + i as u16;
        let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        if i + 1 < bufs.len() {
            flags |= VRING_DESC_F_NEXT;
        }
        let d = SplitDescriptor::new(addr, len, flags, idx + 1);
        vq.desc_table().store(idx, RawDescriptor::from(d)).unwrap();
    }
}

/// Makes chains with the given heads available (and bumps avail.idx).
pub fn publish_sized(vq: &MockSplitQueue<'_, GuestMemoryMmap>, size: u16, heads: &[u16]) {
    let mut idx = vq.avail().idx().load();
    for &h in heads {
        let slot = (idx % size) as usize;
        vq.avail().ring().ref_at(slot).unwrap().store(h);
        idx = idx.wrapping_add(1);
    }
    vq.avail().idx().store(idx);
}

/// [`publish_sized`] for a queue of [`QSIZE`] entries.
pub fn publish(vq: &MockSplitQueue<'_, GuestMemoryMmap>, heads: &[u16]) {
    publish_sized(vq, QSIZE, heads)
}

/// The used ring entry `i` as (descriptor id, written length).
pub fn used_elem(vq: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let slot = (i % QSIZE) as usize;
    let e = vq.used().ring().ref_at(slot).unwrap().load();
    (e.id(), e.len())
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "altovirt-virtio-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `f` until it is true or 5 s pass; returns the last result.
pub fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
