//! Direct kernel boot for x86_64 microVMs.
//!
//! [`load_boot_source`] runs the whole sequence: load the kernel image
//! (bzImage, ELF with a 64-bit entry, or ELF with a PVH note), check and
//! write the command line, place the initrd, write the ACPI tables (unless
//! ACPI is off), the boot parameters (Linux zero page or PVH start info,
//! both with the e820 map and the RSDP address), the MP table, the GDT and
//! the identity page tables. Every step's error names the step.

pub mod acpi;
pub mod error;
/// Fuzzing entry points (feature `fuzzing`, used by `boot_loader/fuzz`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod params;

use std::io::{Read, Seek};

use address_space::GuestMemoryMmap;
use vm_memory::{GuestAddress, ReadVolatile};

pub use acpi::{AcpiError, AcpiLayout, GedDesc, MmioDeviceDesc};
pub use error::BootError;
pub use kernel::{EntryMode, LoadedKernel};

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 {
        /// Address of `boot_params`.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode without paging, EBX = start info.
    Pvh {
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
}

/// Everything the vCPU set-up needs to know after the guest is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// Guest-physical entry point.
    pub entry: u64,
    /// Entry protocol and its parameter block.
    pub protocol: BootProtocol,
    /// Guest-physical range the kernel occupies (start, end exclusive).
    pub kernel: (u64, u64),
    /// Guest-physical range of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// GDT base address.
    pub gdt_base: u64,
    /// IDT base address.
    pub idt_base: u64,
    /// CR3 for a 64-bit entry (identity-mapped page tables).
    pub cr3: u64,
    /// Initial stack pointer.
    pub stack_pointer: u64,
}

/// What to boot.
pub struct BootSource<'a, K: Read + ReadVolatile + Seek> {
    /// The kernel image.
    pub kernel: &'a mut K,
    /// The initrd contents, if any.
    pub initrd: Option<&'a mut dyn InitrdSource>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Number of vCPUs to list in the MP table.
    pub nr_cpus: u8,
    /// What the ACPI tables describe; `None` writes no ACPI tables.
    pub acpi: Option<&'a AcpiLayout>,
}

/// An initrd that can be copied into guest memory.
pub trait InitrdSource {
    /// Size in bytes.
    fn size(&mut self) -> std::io::Result<u64>;
    /// Copies the whole initrd into guest memory at `addr`.
    fn copy_into(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<(), BootError>;
}

impl InitrdSource for std::fs::File {
    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn copy_into(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<(), BootError> {
        use vm_memory::Bytes;
        let len = self.size().map_err(BootError::InitrdRead)? as usize;
        self.rewind().map_err(BootError::InitrdRead)?;
        mem.read_exact_volatile_from(addr, self, len)
            .map_err(|e| BootError::InitrdCopy(e.to_string()))
    }
}

/// Loads `source` into `mem` and writes every boot structure.
pub fn load_boot_source<K: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    source: BootSource<'_, K>,
) -> Result<BootInfo, BootError> {
    let kernel = kernel::load_kernel(mem, source.kernel)?;
    if source.cmdline.len() > kernel.cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: source.cmdline.len(),
            max: kernel.cmdline_max,
        });
    }
    params::write_cmdline(mem, source.cmdline)?;
    let initrd = match source.initrd {
        Some(initrd) => Some(params::load_initrd(mem, &kernel, initrd)?),
        None => None,
    };
    let rsdp = match source.acpi {
        Some(layout) => Some(acpi::write_tables(mem, layout)?.0),
        None => None,
    };
    let protocol = match kernel.entry_mode {
        EntryMode::Long64 => BootProtocol::Linux64 {
            zero_page: params::write_zero_page(mem, &kernel, source.cmdline, initrd, rsdp)?,
        },
        EntryMode::Pvh32 => BootProtocol::Pvh {
            start_info: params::write_pvh_start_info(mem, initrd, rsdp)?,
        },
    };
    mptable::write_mptable(mem, source.nr_cpus)?;
    let long_mode = kernel.entry_mode == EntryMode::Long64;
    paging::write_gdt(mem, long_mode)?;
    let cr3 = if long_mode {
        paging::write_identity_page_tables(mem)?
    } else {
        0
    };
    Ok(BootInfo {
        entry: kernel.entry,
        protocol,
        kernel: (kernel.start, kernel.end),
        initrd,
        gdt_base: layout::BOOT_GDT_START,
        idt_base: layout::BOOT_IDT_START,
        cr3,
        stack_pointer: layout::BOOT_STACK_POINTER,
    })
}
