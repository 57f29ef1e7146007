//! Fixed guest-physical addresses used for direct kernel boot (x86_64).
//!
//! Everything the VMM writes for the guest lives below 1 MiB, except the
//! kernel (loaded at 1 MiB or its ELF addresses) and the initrd (placed as
//! high as the kernel allows). `0x1000..0x6000` is left free so a guest can
//! put an AP start-up trampoline there. The ACPI tables (when enabled) live
//! in the legacy BIOS area [`ACPI_START`]`..`[`ACPI_END`], which the e820
//! map reports as reserved.

/// GDT used at entry (4 descriptors: null, code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT loaded at entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map, after the module list.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4.
pub const PML4_START: u64 = 0x9000;
/// Identity-mapping page tables: PDPT.
pub const PDPTE_START: u64 = 0xa000;
/// Identity-mapping page tables: four page directories (4 GiB of 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Number of 1 GiB ranges identity-mapped at entry.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the area at [`CMDLINE_START`] holds.
pub const CMDLINE_AREA_SIZE: usize = 0x10000;
/// Command line limit for ELF kernels, which carry no `cmdline_size`
/// (Linux's x86 COMMAND_LINE_SIZE).
pub const ELF_CMDLINE_MAX: usize = 2048;
/// Extended BIOS data area: the MP table goes here, and RAM reported to the
/// guest below 1 MiB stops here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the legacy BIOS area, reserved in the e820 map: the ACPI RSDP
/// sits here (16-byte aligned, where a guest that scans for it looks) and
/// the other ACPI tables follow it.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the legacy BIOS area and of the ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;
/// Where high memory (and the kernel) starts.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The IOAPIC's id: the first one after the local APICs `0..nr_cpus` (the
/// MP table and the MADT both use it).
pub fn ioapic_id(nr_cpus: u8) -> u8 {
    nr_cpus
}
