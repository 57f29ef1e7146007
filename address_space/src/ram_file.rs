//! Guest RAM to and from a file, for snapshots: the RAM regions are written
//! one after the other (pages that are all zeros become holes, so the file
//! is sparse), and a restore maps that file privately (copy-on-write), so a
//! restored guest costs only the pages it touches.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{map_region, ram_ranges, GuestMemoryMmap, MemoryError};

/// Granularity of the zero-page check when writing RAM.
const PAGE: usize = 4096;

/// Writes every RAM region of `mem` to `file`, region after region from
/// offset 0; all-zero pages are skipped (left as holes). Returns the number
/// of bytes actually written. The guest must not run meanwhile.
pub fn save_ram(mem: &GuestMemoryMmap, file: &File) -> std::io::Result<u64> {
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = usize::try_from(region.len())
            .map_err(|_| std::io::Error::other("RAM region too large"))?;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`, which outlives this slice; the vCPUs and devices are
        // stopped by the caller, so nothing writes to it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr().cast_const(), len) };
        let mut start = 0;
        while start < len {
            // Skip zero pages, then write the run of non-zero pages after them.
            while start < len && is_zero(&bytes[start..(start + PAGE).min(len)]) {
                start += PAGE;
            }
            let mut end = start;
            while end < len && !is_zero(&bytes[end..(end + PAGE).min(len)]) {
                end += PAGE;
            }
            let end = end.min(len);
            if end > start {
                file.write_all_at(&bytes[start..end], offset + start as u64)?;
                written += (end - start) as u64;
            }
            start = end;
        }
        offset += region.len();
    }
    file.set_len(offset)?;
    Ok(written)
}

fn is_zero(page: &[u8]) -> bool {
    // Compare in 8-byte words: fast enough to write 128 MiB in a few ms.
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Maps guest RAM of `mem_size` bytes (laid out as
/// [`crate::memory::create_guest_memory`] does) privately from `file`,
/// which must be exactly `mem_size` bytes long (what [`save_ram`] wrote).
/// Writes by the guest go to private copies; the file is never modified.
pub fn map_ram_file(
    mem_size: u64,
    file: &File,
    no_dump: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(mem_size)?;
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for (start, size) in ranges {
        let file = file.try_clone().map_err(MemoryError::RamFile)?;
        regions.push(map_region(
            start,
            size,
            Some(FileOffset::new(file, file_offset)),
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            no_dump,
        )?);
        file_offset += size;
    }
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryOptions};
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress};

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("altovirt-ramfile-{}-{name}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn round_trip_is_sparse_and_private() {
        let mem = create_guest_memory(8 << 20, MemoryOptions::default()).unwrap();
        mem.write_obj(0x1122_3344u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x55u8, GuestAddress((8 << 20) - 1)).unwrap();
        let (path, file) = temp_file("rt");
        let written = save_ram(&mem, &file).unwrap();
        assert_eq!(written, 2 * 4096, "only the two touched pages are written");
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 8 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "the file is sparse");

        let restored = map_ram_file(8 << 20, &file, true).unwrap();
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress((8 << 20) - 1))
                .unwrap(),
            0x55
        );
        assert_eq!(restored.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
        // The guest's writes stay private: the file keeps the saved bytes.
        restored.write_obj(0u32, GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 4];
        file.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1122_3344);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn memory_above_the_gap_follows_the_low_part() {
        use crate::memory::MMIO_GAP_START;
        let size = MMIO_GAP_START + (4 << 20);
        let mem = create_guest_memory(size, MemoryOptions::default()).unwrap();
        mem.write_obj(0xabu8, GuestAddress(crate::memory::MMIO_GAP_END))
            .unwrap();
        let (path, file) = temp_file("gap");
        assert_eq!(save_ram(&mem, &file).unwrap(), 4096);
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, MMIO_GAP_START).unwrap();
        assert_eq!(b[0], 0xab);
        let restored = map_ram_file(size, &file, false).unwrap();
        assert_eq!(
            restored
                .read_obj::<u8>(GuestAddress(crate::memory::MMIO_GAP_END))
                .unwrap(),
            0xab
        );
        std::fs::remove_file(path).unwrap();
    }
}
