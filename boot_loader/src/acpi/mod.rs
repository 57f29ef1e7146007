//! ACPI tables for the microVM: RSDP (revision 2) → XSDT → FADT
//! (hardware-reduced) → DSDT, and MADT. The DSDT describes each virtio-mmio
//! window as an `LNRO0005` device with its memory range and interrupt, the
//! way QEMU's microvm and Firecracker do, so a kernel whose virtio_mmio
//! driver has no command-line device support still finds the devices.
//! With a Generic Event Device the DSDT also has the power button (`GED_`
//! and `PWRB`), as on QEMU's microvm.
//!
//! Everything lives in the legacy BIOS area
//! ([`ACPI_START`]`..`[`ACPI_END`], reserved in the e820 map): the RSDP at
//! its start, where a kernel that scans for it looks, then the tables.
//! The AML comes from the `acpi_tables` crate; the fixed tables are laid out
//! here (see `docs/acpi.md`).

mod dsdt;
mod sdt;
mod tables;
#[cfg(test)]
mod tests;

use address_space::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_END, ACPI_START};

pub use dsdt::dsdt_aml;
use dsdt::COM1_GSI;

/// Pins of the IOAPIC, hence the GSIs a device can use.
pub const IOAPIC_PINS: u32 = 24;
/// Most vCPUs the tables describe (xAPIC ids `0..254`; 254 is not used
/// because the MP table gives it to the IOAPIC at the most).
pub const MAX_CPUS: u8 = 254;

/// One virtio-mmio window as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceDesc {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// The IOAPIC input (GSI) its interrupt is wired to.
    pub gsi: u32,
}

/// The Generic Event Device (`ACPI0013`) as the DSDT describes it: the
/// interrupt it raises and its 32-bit event selector register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GedDesc {
    /// Guest-physical address of the event selector (system memory).
    pub base: u64,
    /// The IOAPIC input (GSI) of its interrupt.
    pub gsi: u32,
}

/// What the ACPI tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiLayout {
    /// vCPUs, with local APIC ids `0..vcpus`.
    pub vcpus: u8,
    /// The virtio-mmio windows, in slot order (the DSDT keeps this order,
    /// so the first block device is still `vda`).
    pub virtio_mmio: Vec<MmioDeviceDesc>,
    /// A 16550 UART at COM1 (0x3f8, IRQ 4) is present: describe it, since a
    /// hardware-reduced ACPI guest has no legacy IRQ routing without it.
    pub com1: bool,
    /// I/O port of the sleep control/status registers, if the platform has
    /// them: the FADT points at it and the DSDT gets `\_S5`, so the guest
    /// can power off.
    pub sleep_port: Option<u16>,
    /// A Generic Event Device carrying the power button: the DSDT gets
    /// `GED_` (its `_EVT` notifies the button) and `PWRB` (`PNP0C0C`).
    pub ged: Option<GedDesc>,
}

/// The ACPI tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU, or more than the tables can describe.
    #[error("{0} vCPUs cannot be described (1 to 254)")]
    BadCpuCount(u8),
    /// A window lies (partly) above 4 GiB; `Memory32Fixed` cannot hold it.
    #[error("virtio-mmio window {base:#x}+{size:#x} does not fit below 4 GiB")]
    WindowAbove4G {
        /// Base of the window.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// A window's GSI is not an IOAPIC pin.
    #[error("virtio-mmio window {base:#x} uses GSI {gsi}, but the IOAPIC has pins 0-23")]
    BadGsi {
        /// Base of the window.
        base: u64,
        /// The GSI asked for.
        gsi: u32,
    },
    /// The GED's register lies (partly) above 4 GiB.
    #[error("the GED register at {0:#x} does not fit below 4 GiB")]
    GedAbove4G(u64),
    /// The GED's GSI is not an IOAPIC pin, or another device uses it.
    #[error("the GED cannot use GSI {0}: not a free IOAPIC pin")]
    GedGsi(u32),
    /// More windows than device names `V000`..`V999`.
    #[error("{0} virtio-mmio windows; at most 1000 can be named in the DSDT")]
    TooManyDevices(usize),
    /// The tables do not fit in the BIOS area.
    #[error("the tables need {need} bytes but the area at {ACPI_START:#x} holds {room}")]
    TooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        room: u64,
    },
    /// Writing to guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestWrite {
        /// The table.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Where each table was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiAddresses {
    /// Root System Description Pointer.
    pub rsdp: u64,
    /// Extended System Description Table.
    pub xsdt: u64,
    /// Fixed ACPI Description Table.
    pub fadt: u64,
    /// Multiple APIC Description Table.
    pub madt: u64,
    /// Differentiated System Description Table.
    pub dsdt: u64,
}

/// Tables are placed on this boundary.
const TABLE_ALIGN: u64 = 16;

fn align(addr: u64) -> u64 {
    addr.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

fn check(layout: &AcpiLayout) -> Result<(), AcpiError> {
    if layout.vcpus == 0 || layout.vcpus > MAX_CPUS {
        return Err(AcpiError::BadCpuCount(layout.vcpus));
    }
    if layout.virtio_mmio.len() > 1000 {
        return Err(AcpiError::TooManyDevices(layout.virtio_mmio.len()));
    }
    for d in &layout.virtio_mmio {
        if d.base.checked_add(d.size).is_none_or(|end| end > 1 << 32) {
            return Err(AcpiError::WindowAbove4G {
                base: d.base,
                size: d.size,
            });
        }
        if d.gsi >= IOAPIC_PINS {
            return Err(AcpiError::BadGsi {
                base: d.base,
                gsi: d.gsi,
            });
        }
    }
    if let Some(g) = &layout.ged {
        if g.base.checked_add(4).is_none_or(|end| end > 1 << 32) {
            return Err(AcpiError::GedAbove4G(g.base));
        }
        let taken =
            (layout.com1 && g.gsi == COM1_GSI) || layout.virtio_mmio.iter().any(|d| d.gsi == g.gsi);
        if g.gsi >= IOAPIC_PINS || taken {
            return Err(AcpiError::GedGsi(g.gsi));
        }
    }
    Ok(())
}

/// Tables and where they go: (guest-physical address, bytes).
pub type PlacedTables = Vec<(u64, Vec<u8>)>;

/// Builds every table for `layout`: their addresses, and the tables in the
/// order they are written.
pub fn build_tables(layout: &AcpiLayout) -> Result<(AcpiAddresses, PlacedTables), AcpiError> {
    check(layout)?;
    let dsdt_bytes = tables::dsdt(layout);
    let madt_bytes = tables::madt(layout);
    let rsdp = ACPI_START;
    let xsdt = align(rsdp + tables::RSDP_LEN as u64);
    let fadt = align(xsdt + tables::xsdt_len(2) as u64);
    let madt = align(fadt + tables::FADT_LEN as u64);
    let dsdt = align(madt + madt_bytes.len() as u64);
    let end = dsdt + dsdt_bytes.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            need: end - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }
    let addrs = AcpiAddresses {
        rsdp,
        xsdt,
        fadt,
        madt,
        dsdt,
    };
    let out = vec![
        (dsdt, dsdt_bytes),
        (madt, madt_bytes),
        (fadt, tables::fadt(dsdt, layout.sleep_port)),
        (xsdt, tables::xsdt(&[fadt, madt])),
        (rsdp, tables::rsdp(xsdt)),
    ];
    Ok((addrs, out))
}

/// Writes the tables describing `layout` into the BIOS area of `mem` and
/// returns the RSDP's address (for `boot_params.acpi_rsdp_addr` and the PVH
/// start info's `rsdp_paddr`).
pub fn write_tables(mem: &GuestMemoryMmap, layout: &AcpiLayout) -> Result<GuestAddress, AcpiError> {
    let (addrs, tables) = build_tables(layout)?;
    // The whole area is cleared first, so nothing a previous boot left
    // there looks like a table.
    let zero = vec![0u8; (ACPI_END - ACPI_START) as usize];
    mem.write_slice(&zero, GuestAddress(ACPI_START))
        .map_err(|source| AcpiError::GuestWrite {
            what: "BIOS area",
            source,
        })?;
    for (addr, bytes) in &tables {
        let what = sdt::name_of(bytes);
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| AcpiError::GuestWrite { what, source })?;
    }
    log::info!(
        "ACPI tables: RSDP {:#x}, XSDT {:#x}, FADT {:#x}, MADT {:#x}, DSDT {:#x} ({} virtio-mmio devices{})",
        addrs.rsdp,
        addrs.xsdt,
        addrs.fadt,
        addrs.madt,
        addrs.dsdt,
        layout.virtio_mmio.len(),
        if layout.ged.is_some() {
            ", GED power button"
        } else {
            ""
        }
    );
    Ok(GuestAddress(addrs.rsdp))
}

/// True when the kernel command line turns ACPI off (`acpi=off`; the last
/// `acpi=` word wins, as in Linux): the guest will then ignore the tables
/// and needs its virtio-mmio devices on the command line.
pub fn cmdline_disables_acpi(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("acpi="))
        .next_back()
        == Some("off")
}
