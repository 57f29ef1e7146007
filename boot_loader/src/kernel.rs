//! Recognises and loads the kernel image: bzImage (boot protocol >= 2.06
//! with a 64-bit entry point), ELF64 with a 64-bit entry, or ELF64 with a
//! PVH note (preferred when present, as QEMU and cloud-hypervisor do).

use std::io::{Read, Seek, SeekFrom};

use address_space::memory::low_ram_end;
use address_space::GuestMemoryMmap;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, GuestAddress, ReadVolatile};

use crate::error::BootError;
use crate::layout::{ELF_CMDLINE_MAX, HIGH_MEMORY_START};

/// Offset of the 64-bit entry point from a bzImage's load address.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// `HdrS` magic at offset 0x202.
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// ELF machine number of x86-64.
const EM_X86_64: u16 = 62;

/// The mode the boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode with identity paging (Linux 64-bit boot protocol).
    Long64,
    /// 32-bit protected mode, paging off (PVH).
    Pvh32,
}

/// A kernel loaded into guest memory.
#[derive(Clone)]
pub struct LoadedKernel {
    /// Entry point.
    pub entry: u64,
    /// How to enter.
    pub entry_mode: EntryMode,
    /// Lowest address the kernel occupies.
    pub start: u64,
    /// End (exclusive) of the memory the kernel needs, including a
    /// bzImage's in-place decompression area (`init_size`).
    pub end: u64,
    /// The bzImage setup header, passed on in the zero page.
    pub setup_header: Option<setup_header>,
    /// Longest command line the kernel accepts, excluding the NUL.
    pub cmdline_max: usize,
    /// Highest address (inclusive) the initrd may occupy.
    pub initrd_addr_max: u64,
}

enum Format {
    BzImage,
    Elf,
}

fn detect<K: Read + Seek>(kernel: &mut K) -> Result<Format, BootError> {
    let mut head = [0u8; 0x206];
    kernel.rewind().map_err(BootError::KernelRead)?;
    let mut filled = 0;
    while filled < head.len() {
        match kernel
            .read(&mut head[filled..])
            .map_err(BootError::KernelRead)?
        {
            0 => break,
            n => filled += n,
        }
    }
    if filled >= 0x206 && &head[0x202..0x206] == HDRS_MAGIC {
        return Ok(Format::BzImage);
    }
    if filled >= 20 && head[..4] == *b"\x7fELF" {
        if head[4] != 2 {
            return Err(BootError::UnsupportedElf(
                "32-bit ELF (ELFCLASS32); an ELF64 image is required".into(),
            ));
        }
        let machine = u16::from_le_bytes([head[18], head[19]]);
        if machine != EM_X86_64 {
            return Err(BootError::UnsupportedElf(format!(
                "machine type {machine} is not x86-64"
            )));
        }
        return Ok(Format::Elf);
    }
    Err(BootError::NotAKernel)
}

/// Loads the kernel into `mem` and reports how to enter it.
pub fn load_kernel<K: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    kernel: &mut K,
) -> Result<LoadedKernel, BootError> {
    match detect(kernel)? {
        Format::BzImage => load_bzimage(mem, kernel),
        Format::Elf => load_elf(mem, kernel),
    }
}

fn read_setup_header<K: Read + Seek>(kernel: &mut K) -> Result<setup_header, BootError> {
    let mut hdr = setup_header::default();
    kernel
        .seek(SeekFrom::Start(0x1f1))
        .map_err(BootError::KernelRead)?;
    // SAFETY: setup_header is plain old data; any byte pattern is valid.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut hdr as *mut setup_header).cast::<u8>(),
            std::mem::size_of::<setup_header>(),
        )
    };
    kernel.read_exact(bytes).map_err(BootError::KernelRead)?;
    Ok(hdr)
}

fn load_bzimage<K: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    kernel: &mut K,
) -> Result<LoadedKernel, BootError> {
    let hdr = read_setup_header(kernel)?;
    let version = hdr.version;
    if version < 0x0206 {
        return Err(BootError::UnsupportedBzImage(format!(
            "boot protocol {}.{:02} is older than 2.06",
            version >> 8,
            version & 0xff
        )));
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::UnsupportedBzImage(
            "no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags)".into(),
        ));
    }
    if hdr.loadflags & 1 == 0 {
        return Err(BootError::UnsupportedBzImage(
            "not loadable high (LOADED_HIGH not set in loadflags)".into(),
        ));
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let file_len = kernel
        .seek(SeekFrom::End(0))
        .map_err(BootError::KernelRead)?;
    let payload = file_len.saturating_sub((setup_sects + 1) * 512);
    let load_addr = u64::from(hdr.code32_start);
    let init_size = if version >= 0x020a {
        u64::from(hdr.init_size)
    } else {
        0
    };
    let end = load_addr + payload.max(init_size);
    let ram_end = low_ram_end(mem);
    if end > ram_end {
        return Err(BootError::KernelTooLarge { end, ram_end });
    }
    if payload <= BZIMAGE_ENTRY64_OFFSET {
        return Err(BootError::UnsupportedBzImage(format!(
            "the protected-mode code ({payload} bytes) ends before the 64-bit entry point at +{BZIMAGE_ENTRY64_OFFSET:#x} (truncated image?)"
        )));
    }
    let result = BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START)))?;
    let loaded = result.kernel_load.raw_value();
    let hdr = result.setup_header.unwrap_or(hdr);
    Ok(LoadedKernel {
        entry: loaded + BZIMAGE_ENTRY64_OFFSET,
        entry_mode: EntryMode::Long64,
        start: loaded,
        end: end.max(result.kernel_end),
        cmdline_max: hdr.cmdline_size as usize,
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
        setup_header: Some(hdr),
    })
}

/// ELF program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Size of an ELF64 program header.
const PHDR64_LEN: usize = 56;

/// Refuses an ELF64 image that would boot into zeroed memory: no loadable
/// segment with bytes in the file (the loader skips segments without
/// any), or a segment whose file part is larger than its memory part (the
/// loader would copy nothing sensible), or a segment whose file part lies
/// outside the file. Also refuses segments below [`HIGH_MEMORY_START`]:
/// the boot structures written after the kernel would overwrite them.
/// Returns the end of the memory the segments occupy, `memsz` included
/// (the loader's own end skips segments without file bytes, e.g. a
/// separate bss segment).
fn check_elf_segments<K: Read + Seek>(kernel: &mut K) -> Result<u64, BootError> {
    let mut ehdr = [0u8; 64];
    kernel.rewind().map_err(BootError::KernelRead)?;
    kernel
        .read_exact(&mut ehdr)
        .map_err(|_| BootError::UnsupportedElf("the ELF header is truncated".into()))?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = usize::from(u16_at(&ehdr, 0x36));
    let phnum = usize::from(u16_at(&ehdr, 0x38));
    let file_len = kernel
        .seek(SeekFrom::End(0))
        .map_err(BootError::KernelRead)?;
    if phnum > 0 && phentsize < PHDR64_LEN {
        return Err(BootError::UnsupportedElf(format!(
            "program header size {phentsize} is smaller than {PHDR64_LEN}"
        )));
    }
    let mut loadable = 0;
    let mut end = 0u64;
    for i in 0..phnum {
        let at = phoff.saturating_add((i * phentsize) as u64);
        kernel
            .seek(SeekFrom::Start(at))
            .map_err(BootError::KernelRead)?;
        let mut ph = [0u8; PHDR64_LEN];
        kernel.read_exact(&mut ph).map_err(|_| {
            BootError::UnsupportedElf(format!("program header {i} lies outside the file"))
        })?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_LOAD {
            continue;
        }
        let (offset, filesz, memsz) = (u64_at(&ph, 8), u64_at(&ph, 32), u64_at(&ph, 40));
        if filesz > 0 {
            loadable += 1;
        }
        if filesz > memsz {
            return Err(BootError::UnsupportedElf(format!(
                "segment {i}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            )));
        }
        if offset.checked_add(filesz).is_none_or(|end| end > file_len) {
            return Err(BootError::UnsupportedElf(format!(
                "segment {i}: bytes {offset:#x}+{filesz:#x} lie outside the file ({file_len:#x} bytes)"
            )));
        }
        let paddr = u64_at(&ph, 24);
        if paddr < HIGH_MEMORY_START {
            return Err(BootError::UnsupportedElf(format!(
                "segment {i}: physical address {paddr:#x} lies below {HIGH_MEMORY_START:#x}"
            )));
        }
        let seg_end = paddr.checked_add(memsz).ok_or_else(|| {
            BootError::UnsupportedElf(format!(
                "segment {i}: {paddr:#x}+{memsz:#x} overflows the address space"
            ))
        })?;
        end = end.max(seg_end);
    }
    if loadable == 0 {
        return Err(BootError::UnsupportedElf(
            "no loadable (PT_LOAD) segment with bytes in the file".into(),
        ));
    }
    Ok(end)
}

fn load_elf<K: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    kernel: &mut K,
) -> Result<LoadedKernel, BootError> {
    let segments_end = check_elf_segments(kernel)?;
    let ram_end = low_ram_end(mem);
    if segments_end > ram_end {
        return Err(BootError::KernelTooLarge {
            end: segments_end,
            ram_end,
        });
    }
    let result = Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY_START)))?;
    let kernel_end = result.kernel_end.max(segments_end);
    let (entry, entry_mode) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (addr.raw_value(), EntryMode::Pvh32),
        _ => (result.kernel_load.raw_value(), EntryMode::Long64),
    };
    if entry < HIGH_MEMORY_START || entry >= kernel_end {
        return Err(BootError::UnsupportedElf(format!(
            "entry point {entry:#x} lies outside the loaded segments"
        )));
    }
    Ok(LoadedKernel {
        entry,
        entry_mode,
        start: HIGH_MEMORY_START,
        end: kernel_end,
        setup_header: None,
        cmdline_max: ELF_CMDLINE_MAX - 1,
        initrd_addr_max: ram_end - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use address_space::memory::{create_guest_memory, MemoryOptions};
    use std::io::Cursor;

    fn mem() -> GuestMemoryMmap {
        create_guest_memory(32 << 20, MemoryOptions::default()).unwrap()
    }

    fn bzimage(version: u16, xloadflags: u16, payload: usize, init_size: u32) -> Vec<u8> {
        let mut img = vec![0u8; 1024 + payload];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        img[1024] = 0xf4;
        img
    }

    #[test]
    fn bzimage_loads_with_64bit_entry() {
        let m = mem();
        let k = load_kernel(&m, &mut Cursor::new(bzimage(0x020f, 1, 4096, 0x20000))).unwrap();
        assert_eq!(k.entry, 0x10_0200);
        assert_eq!(k.entry_mode, EntryMode::Long64);
        assert_eq!(k.end, 0x10_0000 + 0x20000);
        assert_eq!(k.cmdline_max, 2047);
        assert_eq!(k.initrd_addr_max, 0x37ff_ffff);
    }

    #[test]
    fn old_or_32bit_bzimage_is_refused() {
        let m = mem();
        let e = load_kernel(&m, &mut Cursor::new(bzimage(0x0205, 1, 512, 0)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("2.05 is older than 2.06"), "{e}");
        let e = load_kernel(&m, &mut Cursor::new(bzimage(0x020f, 0, 512, 0)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no 64-bit entry point"), "{e}");
    }

    #[test]
    fn bzimage_larger_than_ram_is_refused() {
        let m = mem();
        let e = load_kernel(&m, &mut Cursor::new(bzimage(0x020f, 1, 512, 64 << 20)))
            .err()
            .unwrap();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
    }

    /// An ELF64 x86-64 image with one program header.
    fn elf(p_type: u32, filesz: u64, memsz: u64) -> Vec<u8> {
        let mut img = vec![0u8; 0x2000];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 2; // ELFCLASS64
        img[5] = 1; // little endian
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        img[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        img[20..24].copy_from_slice(&1u32.to_le_bytes());
        img[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
        img[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        img[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        img[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        img[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut img[64..120];
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        img[0x1000] = 0xf4;
        img
    }

    #[test]
    fn elf_without_sane_loadable_segments_is_refused() {
        let m = mem();
        let ok = load_kernel(&m, &mut Cursor::new(elf(PT_LOAD, 0x1000, 0x2000))).unwrap();
        assert_eq!(ok.entry, 0x10_0000);
        let e = load_kernel(&m, &mut Cursor::new(elf(4, 0x1000, 0x1000)))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("no loadable (PT_LOAD) segment"),
            "{e}"
        );
        let e = load_kernel(&m, &mut Cursor::new(elf(PT_LOAD, 0x1000, 0x800)))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("segment 0: file size 0x1000 exceeds memory size 0x800"),
            "{e}"
        );
        let e = load_kernel(&m, &mut Cursor::new(elf(PT_LOAD, 0x10_0000, 0x10_0000)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("lie outside the file"), "{e}");
    }

    /// Found by the kernel_image fuzz target: a bzImage whose
    /// protected-mode code is too short to hold the 64-bit entry point was
    /// loaded with an entry outside the kernel.
    #[test]
    fn truncated_bzimage_is_refused() {
        let m = mem();
        let e = load_kernel(&m, &mut Cursor::new(bzimage(0x020f, 1, 0x180, 0)))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("ends before the 64-bit entry point at +0x200"),
            "{e}"
        );
    }

    /// Found by the kernel_image fuzz target: an ELF whose only PT_LOAD
    /// segment has no file bytes loaded nothing, yet was accepted with a
    /// kernel range of 0x100000..0.
    #[test]
    fn elf_segment_without_file_bytes_is_no_kernel() {
        let m = mem();
        let e = load_kernel(&m, &mut Cursor::new(elf(PT_LOAD, 0, 0)))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("no loadable (PT_LOAD) segment with bytes in the file"),
            "{e}"
        );
    }

    #[test]
    fn elf_segment_below_1mib_is_refused() {
        let m = mem();
        let mut img = elf(PT_LOAD, 0x1000, 0x1000);
        img[64 + 24..64 + 32].copy_from_slice(&0x7000u64.to_le_bytes());
        let e = load_kernel(&m, &mut Cursor::new(img)).err().unwrap();
        assert!(
            e.to_string()
                .contains("segment 0: physical address 0x7000 lies below 0x100000"),
            "{e}"
        );
    }

    /// A bss-only segment (no file bytes) still counts for the kernel's
    /// end, so nothing (e.g. the initrd) is placed over it.
    #[test]
    fn elf_bss_segment_extends_the_kernel() {
        let m = mem();
        let mut img = elf(PT_LOAD, 0x1000, 0x1000);
        img[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = &mut img[120..176];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[40..48].copy_from_slice(&0x1_0000u64.to_le_bytes());
        let k = load_kernel(&m, &mut Cursor::new(img)).unwrap();
        assert_eq!((k.start, k.end), (0x10_0000, 0x21_0000));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let m = mem();
        let e = load_kernel(&m, &mut Cursor::new(vec![0x55u8; 4096]))
            .err()
            .unwrap();
        assert!(matches!(e, BootError::NotAKernel));
        let e = load_kernel(&m, &mut Cursor::new(Vec::new())).err().unwrap();
        assert!(matches!(e, BootError::NotAKernel));
        let mut elf32 = vec![0u8; 64];
        elf32[..5].copy_from_slice(b"\x7fELF\x01");
        let e = load_kernel(&m, &mut Cursor::new(elf32)).err().unwrap();
        assert!(e.to_string().contains("ELFCLASS32"), "{e}");
    }
}
