//! Boot parameter blocks: the command line, the initrd, the e820 map, and
//! either the Linux zero page or the PVH start info that points at them
//! (and at the ACPI RSDP, when there are ACPI tables).

use address_space::memory::low_ram_end;
use address_space::GuestMemoryMmap;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::BootError;
use crate::kernel::LoadedKernel;
use crate::layout::*;
use crate::InitrdSource;

/// PVH start info magic ("xEn3" with the top bit set).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `type_of_loader` value for an unregistered boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Maximum e820 entries in the zero page.
const E820_MAX: usize = 128;

/// The memory map given to the guest: (start, size, type). Below 1 MiB:
/// RAM up to the EBDA, the EBDA (MP table) reserved, and the BIOS area
/// (ACPI tables) reserved; the VGA hole in between is not listed.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        if start == 0 {
            map.push((0, EBDA_START.min(end), E820_RAM));
            map.push((EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED));
            map.push((ACPI_START, ACPI_END - ACPI_START, E820_RESERVED));
            if end > HIGH_MEMORY_START {
                map.push((HIGH_MEMORY_START, end - HIGH_MEMORY_START, E820_RAM));
            }
        } else {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`].
///
/// Written by hand rather than with linux-loader's `Cmdline`, which accepts
/// printable ASCII only: Linux takes any byte but NUL, and QEMU passes
/// `-append` through unchanged.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() >= CMDLINE_AREA_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_AREA_SIZE - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "kernel command line",
            source,
        })
}

/// Places the initrd as high as the kernel allows, above the kernel, page
/// aligned, and copies it in. Returns its (start, end).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: &mut dyn InitrdSource,
) -> Result<(u64, u64), BootError> {
    let size = initrd.size().map_err(BootError::InitrdRead)?;
    let highest = low_ram_end(mem).min(kernel.initrd_addr_max.saturating_add(1));
    let lowest = (kernel.end + 0xfff) & !0xfff;
    let addr = highest.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(addr) if addr >= lowest && size > 0 => {
            initrd.copy_into(mem, GuestAddress(addr))?;
            Ok((addr, addr + size))
        }
        Some(addr) if size == 0 => Ok((addr, addr)),
        _ => Err(BootError::InitrdTooLarge {
            size,
            lowest,
            highest,
        }),
    }
}

/// Writes the Linux zero page and returns its address. `rsdp` goes to
/// `acpi_rsdp_addr` (offset 0x70, a zero-page field for every protocol
/// version; kernels from 5.0 on read it, older ones scan the BIOS area).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let mut params = boot_params {
        hdr: kernel.setup_header.unwrap_or_else(|| setup_header {
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            kernel_alignment: 0x0100_0000,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some((start, end)) = initrd {
        let size = end - start;
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (start >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem);
    for (i, &(addr, size, type_)) in map.iter().take(E820_MAX).enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len().min(E820_MAX) as u8;
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    let block = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&block, mem).map_err(|source| {
        BootError::BootParams {
            what: "zero page (boot_params)",
            source,
        }
    })?;
    Ok(ZERO_PAGE_START)
}

/// Writes the PVH start info, module list and memory map; returns the
/// start info's address. `rsdp` goes to `rsdp_paddr`.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<u64, BootError> {
    let map = e820_map(mem);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(start, end)| hvm_modlist_entry {
            paddr: start,
            size: end - start,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut block = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    block.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        block.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&block, mem).map_err(|source| BootError::BootParams {
        what: "PVH start info",
        source,
    })?;
    Ok(PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::EntryMode;
    use address_space::memory::{create_guest_memory, MemoryOptions};

    struct Blob(Vec<u8>);
    impl InitrdSource for Blob {
        fn size(&mut self) -> std::io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn copy_into(&mut self, mem: &GuestMemoryMmap, a: GuestAddress) -> Result<(), BootError> {
            mem.write_slice(&self.0, a)
                .map_err(|e| BootError::InitrdCopy(e.to_string()))
        }
    }

    fn kernel(end: u64, max: u64) -> LoadedKernel {
        LoadedKernel {
            entry: 0x100000,
            entry_mode: EntryMode::Long64,
            start: 0x100000,
            end,
            setup_header: None,
            cmdline_max: 2047,
            initrd_addr_max: max,
        }
    }

    #[test]
    fn e820_describes_low_and_high_ram() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
                (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
                (HIGH_MEMORY_START, (64 << 20) - HIGH_MEMORY_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        let (s, e) = load_initrd(
            &mem,
            &kernel(0x200000, u64::MAX - 1),
            &mut Blob(vec![7; 5000]),
        )
        .unwrap();
        assert_eq!(s % 4096, 0);
        assert_eq!(e - s, 5000);
        assert!(e <= 64 << 20 && s >= (64 << 20) - 0x2000);
        let mut buf = [0u8; 4];
        mem.read_slice(&mut buf, GuestAddress(s)).unwrap();
        assert_eq!(buf, [7; 4]);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        let (s, e) =
            load_initrd(&mem, &kernel(0x200000, 0x3f_ffff), &mut Blob(vec![1; 100])).unwrap();
        assert!(e <= 0x40_0000, "{s:#x}-{e:#x}");
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        let err = load_initrd(
            &mem,
            &kernel(0x200000, u64::MAX - 1),
            &mut Blob(vec![0; 15 << 20]),
        )
        .err()
        .unwrap();
        assert!(err
            .to_string()
            .starts_with("failed to load initrd: 15728640 bytes do not fit"));
    }

    #[test]
    fn zero_page_points_at_cmdline_initrd_and_e820() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        write_zero_page(
            &mem,
            &kernel(0x200000, 0),
            "console=ttyS0",
            Some((0x300000, 0x300010)),
            None,
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn zero_page_and_pvh_start_info_carry_the_rsdp() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        write_zero_page(&mem, &kernel(0x200000, 0), "", None, Some(ACPI_START)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        // Offset 0x70 of the zero page, as the boot protocol documents it.
        let raw: u64 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x70)).unwrap();
        assert_eq!(raw, ACPI_START);
        write_pvh_start_info(&mem, None, Some(ACPI_START)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.rsdp_paddr, ACPI_START);
        let raw: u64 = mem.read_obj(GuestAddress(PVH_INFO_START + 0x20)).unwrap();
        assert_eq!(raw, ACPI_START);
        write_pvh_start_info(&mem, None, None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.rsdp_paddr, 0);
    }

    #[test]
    fn pvh_start_info_has_magic_memmap_and_module() {
        let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
        write_pvh_start_info(&mem, Some((0x300000, 0x300100)), None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 4);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300000, 0x100));
    }

    #[test]
    fn cmdline_with_nul_is_refused() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        assert!(matches!(
            write_cmdline(&mem, "a\0b"),
            Err(BootError::CmdlineNul)
        ));
        write_cmdline(&mem, "hello").unwrap();
        let mut buf = [0u8; 6];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"hello\0");
    }
}
