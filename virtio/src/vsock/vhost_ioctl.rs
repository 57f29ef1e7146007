//! The vhost requests (linux/vhost.h) a vhost-vsock device uses, and the
//! arguments built for them from guest memory and queues.

use std::io;
use std::os::fd::RawFd;

use address_space::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const VHOST_VIRTIO: u32 = 0xaf;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// An ioctl request number (asm-generic layout, used by x86 and arm64).
const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir as u64) << 30) | ((size as u64) << 16) | ((VHOST_VIRTIO as u64) << 8) | nr as u64
}

// Request numbers from linux/vhost.h.
/// Reads the features the kernel offers.
pub(crate) const VHOST_GET_FEATURES: u64 = ioc(IOC_READ, 0x00, 8);
/// Sets the negotiated features.
pub(crate) const VHOST_SET_FEATURES: u64 = ioc(IOC_WRITE, 0x00, 8);
/// Claims the device for this process.
pub(crate) const VHOST_SET_OWNER: u64 = ioc(IOC_NONE, 0x01, 0);
/// Tells the kernel the guest RAM layout.
pub(crate) const VHOST_SET_MEM_TABLE: u64 = ioc(IOC_WRITE, 0x03, 8);
/// Sets a ring's size.
pub(crate) const VHOST_SET_VRING_NUM: u64 = ioc(IOC_WRITE, 0x10, 8);
/// Sets a ring's addresses.
pub(crate) const VHOST_SET_VRING_ADDR: u64 = ioc(IOC_WRITE, 0x11, 40);
/// Sets where a ring's processing starts.
pub(crate) const VHOST_SET_VRING_BASE: u64 = ioc(IOC_WRITE, 0x12, 8);
/// Stops a ring and reads where its processing is.
pub(crate) const VHOST_GET_VRING_BASE: u64 = ioc(IOC_READ | IOC_WRITE, 0x12, 8);
/// Sets a ring's notification eventfd.
pub(crate) const VHOST_SET_VRING_KICK: u64 = ioc(IOC_WRITE, 0x20, 8);
/// Sets a ring's used-buffer eventfd.
pub(crate) const VHOST_SET_VRING_CALL: u64 = ioc(IOC_WRITE, 0x21, 8);
/// Sets the guest's CID.
pub(crate) const VHOST_VSOCK_SET_GUEST_CID: u64 = ioc(IOC_WRITE, 0x60, 8);
/// Starts or stops the device.
pub(crate) const VHOST_VSOCK_SET_RUNNING: u64 = ioc(IOC_WRITE, 0x61, 4);

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VringState {
    /// Ring index.
    pub index: u32,
    /// Size or position.
    pub num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VringFile {
    /// Ring index.
    pub index: u32,
    /// The eventfd.
    pub fd: i32,
}

/// `struct vhost_vring_addr` (host virtual addresses of the rings).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VringAddr {
    /// Ring index.
    pub index: u32,
    /// Flags (no dirty logging: 0).
    pub flags: u32,
    /// Host address of the descriptor table.
    pub desc_user_addr: u64,
    /// Host address of the used ring.
    pub used_user_addr: u64,
    /// Host address of the available ring.
    pub avail_user_addr: u64,
    /// Guest address for dirty logging (unused).
    pub log_guest_addr: u64,
}

/// `struct vhost_memory_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemRegion {
    /// Guest physical start.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Host virtual start.
    pub userspace_addr: u64,
    /// Unused.
    pub flags_padding: u64,
}

/// Why an argument could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ArgError {
    /// A guest RAM region has no host mapping.
    #[error("guest RAM region at {0:#x} has no host mapping")]
    Unmapped(u64),
    /// A ring lies outside guest RAM or across two regions.
    #[error("queue {index} {what} at {addr:#x} is not in one guest RAM region")]
    Ring {
        /// Queue index.
        index: u32,
        /// Which ring.
        what: &'static str,
        /// Its guest address.
        addr: u64,
    },
}

/// The regions of guest RAM as vhost sees them.
pub(crate) fn mem_regions(mem: &GuestMemoryMmap) -> Result<Vec<MemRegion>, ArgError> {
    mem.iter()
        .map(|r| {
            let start = r.start_addr().0;
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| ArgError::Unmapped(start))?;
            Ok(MemRegion {
                guest_phys_addr: start,
                memory_size: r.len(),
                userspace_addr: host as u64,
                flags_padding: 0,
            })
        })
        .collect()
}

/// The VHOST_SET_MEM_TABLE argument: `struct vhost_memory` (region count,
/// padding) followed by the regions, in native byte order.
pub(crate) fn mem_table(regions: &[MemRegion]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + regions.len() * 32);
    out.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    for r in regions {
        for v in [
            r.guest_phys_addr,
            r.memory_size,
            r.userspace_addr,
            r.flags_padding,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
    out
}

/// Host address of `len` guest bytes at `addr`, which must lie in one
/// region.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let last = addr.checked_add(len.checked_sub(1)?)?;
    let start = mem.get_host_address(GuestAddress(addr)).ok()? as u64;
    let end = mem.get_host_address(GuestAddress(last)).ok()? as u64;
    (end.checked_sub(start) == Some(len - 1)).then_some(start)
}

/// The VHOST_SET_VRING_ADDR argument for `queue` (split ring layout).
pub(crate) fn vring_addr(
    mem: &GuestMemoryMmap,
    index: u32,
    queue: &Queue,
) -> Result<VringAddr, ArgError> {
    let n = u64::from(queue.size());
    let ring =
        |what, addr, len| host_range(mem, addr, len).ok_or(ArgError::Ring { index, what, addr });
    Ok(VringAddr {
        index,
        flags: 0,
        desc_user_addr: ring("descriptor table", queue.desc_table(), 16 * n)?,
        avail_user_addr: ring("available ring", queue.avail_ring(), 6 + 2 * n)?,
        used_user_addr: ring("used ring", queue.used_ring(), 6 + 8 * n)?,
        log_guest_addr: 0,
    })
}

/// Issues `req` with a pointer argument.
pub(crate) fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: *const T) -> io::Result<()> {
    // SAFETY: `arg` points to a live value of the layout `req` expects
    // (callers pass the structs above or integers); the kernel validates
    // the descriptor.
    let ret = unsafe { libc::ioctl(fd, req as _, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Issues `req` without an argument.
pub(crate) fn ioctl_none(fd: RawFd, req: u64) -> io::Result<()> {
    // SAFETY: the request takes no argument; the kernel validates the fd.
    let ret = unsafe { libc::ioctl(fd, req as _, 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// VHOST_GET_FEATURES.
pub(crate) fn get_features(fd: RawFd) -> io::Result<u64> {
    let mut features = 0u64;
    ioctl_ptr(fd, VHOST_GET_FEATURES, &mut features as *mut u64)?;
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::*;
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn request_numbers_match_linux() {
        assert_eq!(VHOST_GET_FEATURES, 0x8008_af00);
        assert_eq!(VHOST_SET_FEATURES, 0x4008_af00);
        assert_eq!(VHOST_SET_OWNER, 0xaf01);
        assert_eq!(VHOST_SET_MEM_TABLE, 0x4008_af03);
        assert_eq!(VHOST_SET_VRING_NUM, 0x4008_af10);
        assert_eq!(VHOST_SET_VRING_ADDR, 0x4028_af11);
        assert_eq!(VHOST_SET_VRING_BASE, 0x4008_af12);
        assert_eq!(VHOST_GET_VRING_BASE, 0xc008_af12);
        assert_eq!(VHOST_SET_VRING_KICK, 0x4008_af20);
        assert_eq!(VHOST_SET_VRING_CALL, 0x4008_af21);
        assert_eq!(VHOST_VSOCK_SET_GUEST_CID, 0x4008_af60);
        assert_eq!(VHOST_VSOCK_SET_RUNNING, 0x4004_af61);
        assert_eq!(std::mem::size_of::<VringAddr>(), 40);
        assert_eq!(std::mem::size_of::<VringState>(), 8);
        assert_eq!(std::mem::size_of::<VringFile>(), 8);
        assert_eq!(std::mem::size_of::<MemRegion>(), 32);
    }

    #[test]
    fn memory_table_lists_every_region_with_its_mapping() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 32), 2 << 20),
        ])
        .unwrap();
        let regions = mem_regions(&mem).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].guest_phys_addr, 1 << 32);
        assert_eq!(regions[1].memory_size, 2 << 20);
        assert_eq!(
            regions[1].userspace_addr,
            mem.get_host_address(GuestAddress(1 << 32)).unwrap() as u64
        );
        let table = mem_table(&regions);
        assert_eq!(table.len(), 8 + 2 * 32);
        assert_eq!(&table[0..4], &2u32.to_ne_bytes());
        assert_eq!(&table[4..8], &[0; 4]);
        assert_eq!(&table[40..48], &(1u64 << 32).to_ne_bytes());
        assert_eq!(&table[48..56], &(2u64 << 20).to_ne_bytes());
        assert_eq!(&table[56..64], &regions[1].userspace_addr.to_ne_bytes());
    }

    #[test]
    fn vring_addresses_are_host_addresses_of_the_rings() {
        let mem = guest_memory();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), QSIZE);
        let q: Queue = vq.create_queue().unwrap();
        let a = vring_addr(&mem, 1, &q).unwrap();
        let host = |g: u64| mem.get_host_address(GuestAddress(g)).unwrap() as u64;
        assert_eq!(a.index, 1);
        assert_eq!(a.desc_user_addr, host(q.desc_table()));
        assert_eq!(a.avail_user_addr, host(q.avail_ring()));
        assert_eq!(a.used_user_addr, host(q.used_ring()));
        assert_eq!((a.flags, a.log_guest_addr), (0, 0));

        // A used ring running past the end of RAM is refused.
        let mut q2: Queue = vq.create_queue().unwrap();
        q2.set_used_ring_address(Some((MEM_SIZE - 8) as u32), Some(0));
        assert!(matches!(
            vring_addr(&mem, 0, &q2),
            Err(ArgError::Ring {
                what: "used ring",
                ..
            })
        ));
    }

    #[test]
    fn get_features_on_a_non_vhost_fd_fails() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = get_features(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
    }
}
