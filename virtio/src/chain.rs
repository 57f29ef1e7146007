//! Validated descriptor chains and byte cursors over their buffers.
//!
//! `virtio_queue::DescriptorChain` silently stops iterating on a loop, an
//! out-of-range index, an unreadable descriptor or a length overflow; here
//! such a chain is detected (its last descriptor still claims a successor)
//! and reported, so the device can refuse it instead of acting on a
//! truncated request.

use address_space::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// A well-formed descriptor chain taken from the available ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Index of the head descriptor (what goes into the used ring).
    pub head: u16,
    /// The buffers, indirect tables already expanded.
    pub descs: Vec<Desc>,
}

impl Chain {
    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }
}

/// Whether every buffer of `descs` lies entirely in guest RAM.
pub(crate) fn descs_in_memory(mem: &GuestMemoryMmap, descs: &[Desc]) -> bool {
    descs
        .iter()
        .all(|d| mem.check_range(d.addr, d.len as usize))
}

/// Errors that make a queue unusable until the device is reset.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    /// The available ring could not be read or its index is impossible.
    #[error("bad available ring: {0}")]
    Avail(virtio_queue::Error),
    /// The chain is empty or unterminated: a descriptor loop, an index
    /// beyond the table, an unreadable descriptor, a bad indirect table or
    /// more than 4 GiB of buffers.
    #[error("malformed descriptor chain at head {0}")]
    BrokenChain(u16),
    /// The used ring could not be written.
    #[error("cannot update the used ring: {0}")]
    Used(virtio_queue::Error),
}

/// Takes the next chain from `queue`, if any.
pub(crate) fn pop(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<Chain>, QueueError> {
    let mut iter = queue.iter(mem).map_err(QueueError::Avail)?;
    let Some(chain) = iter.next() else {
        return Ok(None);
    };
    let head = chain.head_index();
    let mut descs = Vec::new();
    let mut unterminated = true;
    for d in chain {
        unterminated = d.has_next();
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            writable: d.is_write_only(),
        });
    }
    if descs.is_empty() || unterminated {
        return Err(QueueError::BrokenChain(head));
    }
    Ok(Some(Chain { head, descs }))
}

/// Returns chain `head` to the driver with `len` bytes written.
pub(crate) fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue.add_used(mem, head, len).map_err(QueueError::Used)
}

/// A sequential reader/writer over a list of buffers.
pub(crate) struct Cursor<'a> {
    mem: &'a GuestMemoryMmap,
    descs: &'a [Desc],
    idx: usize,
    off: u32,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `descs`.
    pub fn new(mem: &'a GuestMemoryMmap, descs: &'a [Desc]) -> Self {
        Cursor {
            mem,
            descs,
            idx: 0,
            off: 0,
        }
    }

    /// Bytes left before the end of the last buffer.
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self
            .descs
            .iter()
            .skip(self.idx)
            .map(|d| u64::from(d.len))
            .sum();
        rest - u64::from(self.off)
    }

    /// Runs `f(addr, range of buf)` over as many bytes as fit, advancing.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    ) -> Result<usize, GuestMemoryError> {
        let mut done = 0usize;
        while done < len {
            let Some(d) = self.descs.get(self.idx) else {
                break;
            };
            let avail = (d.len - self.off) as usize;
            if avail == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = avail.min(len - done);
            let addr = d
                .addr
                .0
                .checked_add(u64::from(self.off))
                .map(GuestAddress)
                .ok_or(GuestMemoryError::InvalidGuestAddress(d.addr))?;
            f(addr, done..done + n)?;
            done += n;
            // n <= avail <= u32::MAX - off
            self.off += n as u32;
        }
        Ok(done)
    }

    /// Copies guest bytes into `buf`; returns how many were available.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, GuestMemoryError> {
        let mem = self.mem;
        self.walk(buf.len(), |addr, r| mem.read_slice(&mut buf[r], addr))
    }

    /// Copies `buf` into guest buffers; returns how many bytes fitted.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, GuestMemoryError> {
        let mem = self.mem;
        self.walk(buf.len(), |addr, r| mem.write_slice(&buf[r], addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn cursor_spans_buffers() {
        let mem = guest_memory();
        let descs = [
            Desc {
                addr: GuestAddress(0x10000),
                len: 3,
                writable: true,
            },
            Desc {
                addr: GuestAddress(0x20000),
                len: 0,
                writable: true,
            },
            Desc {
                addr: GuestAddress(0x30000),
                len: 4,
                writable: true,
            },
        ];
        let mut w = Cursor::new(&mem, &descs);
        assert_eq!(w.remaining(), 7);
        assert_eq!(w.write(b"abcdefghij").unwrap(), 7);
        assert_eq!(w.remaining(), 0);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x30000)).unwrap();
        assert_eq!(&got, b"defg");
        let mut r = Cursor::new(&mem, &descs);
        let mut buf = [0u8; 5];
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf, b"abcde");
        assert_eq!(r.remaining(), 2);
    }

    #[test]
    fn cursor_reports_unmapped_memory() {
        let mem = guest_memory();
        let descs = [Desc {
            addr: GuestAddress(MEM_SIZE - 2),
            len: 8,
            writable: true,
        }];
        assert!(!descs_in_memory(&mem, &descs));
        assert!(Cursor::new(&mem, &descs).write(&[0; 8]).is_err());
    }

    #[test]
    fn pop_detects_descriptor_loop() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 -> 1 -> 0 -> ...
        let d0 = SplitDescriptor::new(0x10000, 16, VRING_DESC_F_NEXT, 1);
        let d1 = SplitDescriptor::new(0x10000, 16, VRING_DESC_F_NEXT, 0);
        vq.desc_table().store(0, RawDescriptor::from(d0)).unwrap();
        vq.desc_table().store(1, RawDescriptor::from(d1)).unwrap();
        publish(&vq, &[0]);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(pop(&mut q, &mem), Err(QueueError::BrokenChain(0))));
    }

    #[test]
    fn pop_detects_bad_next_index_and_head() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let d0 = SplitDescriptor::new(0x10000, 16, VRING_DESC_F_NEXT, 200);
        vq.desc_table().store(0, RawDescriptor::from(d0)).unwrap();
        publish(&vq, &[0, 300]);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(pop(&mut q, &mem), Err(QueueError::BrokenChain(0))));
        assert!(matches!(
            pop(&mut q, &mem),
            Err(QueueError::BrokenChain(300))
        ));
        assert!(pop(&mut q, &mem).unwrap().is_none());
    }

    #[test]
    fn pop_detects_impossible_avail_index() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().idx().store(100);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(pop(&mut q, &mem), Err(QueueError::Avail(_))));
    }

    #[test]
    fn pop_returns_good_chain_and_expands_indirect() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        write_chain(
            &vq,
            0,
            &[
                (0x10000, 16, false),
                (0x11000, 512, true),
                (0x12000, 1, true),
            ],
        );
        // Indirect table of two descriptors at 0x40000.
        let table = [
            SplitDescriptor::new(0x13000, 8, VRING_DESC_F_NEXT, 1),
            SplitDescriptor::new(0x14000, 4, VRING_DESC_F_WRITE, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            mem.write_obj(
                RawDescriptor::from(*d),
                GuestAddress(0x40000 + 16 * i as u64),
            )
            .unwrap();
        }
        let ind = SplitDescriptor::new(0x40000, 32, VRING_DESC_F_INDIRECT, 0);
        vq.desc_table().store(5, RawDescriptor::from(ind)).unwrap();
        publish(&vq, &[0, 5]);
        let mut q: Queue = vq.create_queue().unwrap();
        let c = pop(&mut q, &mem).unwrap().unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.descs.len(), 3);
        assert_eq!(c.writable_len(), 513);
        assert!(descs_in_memory(&mem, &c.descs));
        let c = pop(&mut q, &mem).unwrap().unwrap();
        assert_eq!(c.head, 5);
        assert_eq!(
            c.descs,
            vec![
                Desc {
                    addr: GuestAddress(0x13000),
                    len: 8,
                    writable: false
                },
                Desc {
                    addr: GuestAddress(0x14000),
                    len: 4,
                    writable: true
                }
            ]
        );
        add_used(&mut q, &mem, 5, 4).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
        assert!(add_used(&mut q, &mem, 16, 0).is_err());
    }
}
