//! Guest RAM: where it sits in the guest physical address space, how it is
//! mapped on the host, and how it is handed to KVM.
//!
//! Layout (x86_64): RAM starts at 0. The range `[MMIO_GAP_START, 4 GiB)` is
//! kept free for device MMIO (virtio-mmio windows, IOAPIC, LAPIC), so RAM
//! beyond `MMIO_GAP_START` continues at 4 GiB.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

/// The guest memory type used across altovirt.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO gap (3 GiB).
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// Errors while creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero, not page aligned, or too large.
    #[error("invalid guest memory size {0:#x}")]
    InvalidSize(u64),
    /// memfd_create failed (needed for mem-share=on).
    #[error("cannot create shared memory file: {0}")]
    Memfd(std::io::Error),
    /// The snapshot's RAM file could not be used.
    #[error("cannot use the RAM file: {0}")]
    RamFile(std::io::Error),
    /// mmap of a RAM region failed.
    #[error("cannot map {size:#x} bytes of guest RAM: {source}")]
    Mmap {
        /// Size of the failed mapping.
        size: u64,
        /// The underlying error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions could not be assembled.
    #[error("cannot assemble guest memory: {0}")]
    Collection(#[from] vm_memory::GuestRegionCollectionError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    Register {
        /// Memory slot number.
        slot: u32,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
}

/// How guest RAM is mapped on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Back RAM with a shared memfd (`mem-share=on`) so another process
    /// (a vhost-user backend) can map it.
    pub shared: bool,
    /// Exclude guest RAM from host core dumps (`dump-guest-core=off`).
    pub no_dump: bool,
}

/// Splits `mem_size` bytes of RAM around the MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, u64)>, MemoryError> {
    if mem_size == 0 || !mem_size.is_multiple_of(4096) || mem_size > (1u64 << 46) {
        return Err(MemoryError::InvalidSize(mem_size));
    }
    if mem_size <= MMIO_GAP_START {
        Ok(vec![(GuestAddress(0), mem_size)])
    } else {
        Ok(vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ])
    }
}

/// Creates guest RAM of `mem_size` bytes laid out by [`ram_ranges`].
pub fn create_guest_memory(
    mem_size: u64,
    options: MemoryOptions,
) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(mem_size)?;
    let memfd = if options.shared {
        Some(create_memfd(mem_size)?)
    } else {
        None
    };
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for (start, size) in ranges {
        let region = match &memfd {
            Some(file) => {
                let file = file.try_clone().map_err(MemoryError::Memfd)?;
                map_region(
                    start,
                    size,
                    Some(FileOffset::new(file, file_offset)),
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                    options.no_dump,
                )?
            }
            None => map_region(
                start,
                size,
                None,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                options.no_dump,
            )?,
        };
        regions.push(region);
        file_offset += size;
    }
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

/// Maps one RAM region of `size` bytes at guest address `start`, from
/// `file` or anonymous memory with mmap `flags`, readable and writable;
/// `no_dump` keeps it out of core dumps.
pub(crate) fn map_region(
    start: GuestAddress,
    size: u64,
    file: Option<FileOffset>,
    flags: libc::c_int,
    no_dump: bool,
) -> Result<GuestRegionMmap, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::InvalidSize(size))?;
    let map = MmapRegion::build(file, len, libc::PROT_READ | libc::PROT_WRITE, flags)
        .map_err(|source| MemoryError::Mmap { size, source })?;
    if no_dump {
        // SAFETY: the range is a mapping we own for its whole length.
        let ret = unsafe { libc::madvise(map.as_ptr().cast(), len, libc::MADV_DONTDUMP) };
        if ret != 0 {
            log::warn!(
                "madvise(MADV_DONTDUMP) on guest RAM failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // A fresh, non-overlapping mapping at a valid address cannot fail here,
    // but report rather than panic.
    GuestRegionMmap::new(map, start).ok_or(MemoryError::InvalidSize(size))
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let name = CString::new("altovirt-guest-ram").map_err(|e| MemoryError::Memfd(e.into()))?;
    // SAFETY: `name` is a valid NUL-terminated string; the fd is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

/// Registers every RAM region with KVM, one memory slot per region.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = region.as_ptr() as u64;
        let table = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the mapping is valid for `memory_size` bytes and outlives
        // the VM because the machine keeps `mem` alive as long as the VmFd.
        unsafe { vm.set_user_memory_region(table) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// Total RAM size in bytes.
pub fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// End (exclusive) of the RAM that sits below the MMIO gap.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_GAP_START)
        .map(|r| r.start_addr().raw_value() + r.len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(
            ram_ranges(256 << 20).unwrap(),
            vec![(GuestAddress(0), 256 << 20)]
        );
        assert_eq!(
            ram_ranges(MMIO_GAP_START).unwrap(),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn large_memory_skips_the_gap() {
        let r = ram_ranges(4 << 30).unwrap();
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(ram_ranges(0).is_err());
        assert!(ram_ranges(4097).is_err());
    }

    #[test]
    fn shared_memory_is_usable_and_sized() {
        let mem = create_guest_memory(
            16 << 20,
            MemoryOptions {
                shared: true,
                no_dump: true,
            },
        )
        .unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(ram_size(&mem), 16 << 20);
        assert_eq!(low_ram_end(&mem), 16 << 20);
    }

    #[test]
    fn private_memory_above_the_gap() {
        // Mapped with MAP_NORESERVE, so a large size costs nothing until touched.
        let mem =
            create_guest_memory(MMIO_GAP_START + (64 << 20), MemoryOptions::default()).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(low_ram_end(&mem), MMIO_GAP_START);
        assert!(mem.read_obj::<u8>(GuestAddress(MMIO_GAP_START)).is_err());
        mem.write_obj(7u8, GuestAddress(MMIO_GAP_END)).unwrap();
    }
}
