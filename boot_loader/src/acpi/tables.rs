//! The fixed tables: RSDP, XSDT, FADT, MADT, and the DSDT's header.

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::sdt::{table, HEADER_LEN, OEM_ID, OEM_REVISION};
use super::AcpiLayout;
use crate::layout::{ioapic_id, APIC_START, IOAPIC_START};

/// Size of a revision 2 RSDP.
pub(crate) const RSDP_LEN: usize = 36;
/// Size of the FADT (ACPI 6.5 layout, revision 6 minor 5).
pub(crate) const FADT_LEN: usize = 276;

/// Size of an XSDT with `entries` pointers.
pub(crate) fn xsdt_len(entries: usize) -> usize {
    HEADER_LEN + 8 * entries
}

fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    out
}

/// RSDP revision 2: both checksums, the XSDT address, no RSDT.
pub(crate) fn rsdp(xsdt: u64) -> Vec<u8> {
    bytes_of(&Rsdp::new(OEM_ID, xsdt))
}

/// XSDT pointing at `tables`.
pub(crate) fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, *b"AVXSDT  ", OEM_REVISION);
    for &t in tables {
        xsdt.add_entry(t);
    }
    bytes_of(&xsdt)
}

/// IA-PC boot architecture flags (FADT offset 109): no VGA, no MSI (there
/// is no PCI), no CMOS RTC. The 8042 bit stays clear: the i8042 here only
/// resets the machine, and Linux still resets through port 0x64 without it.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// FADT for a hardware-reduced platform (no PM timer, SCI, GPE or fixed
/// feature registers; no FACS) with the DSDT at `dsdt`. The power and sleep
/// buttons are flagged as control-method devices, i.e. there is no fixed
/// one for the guest to look for. With `sleep_port`, the sleep control
/// and status registers are that one-byte I/O port.
pub(crate) fn fadt(dsdt: u64, sleep_port: Option<u16>) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, *b"AVFACP  ", OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    if let Some(port) = sleep_port {
        let reg = GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        );
        builder.sleep_control_reg = reg;
        builder.sleep_status_reg = reg;
    }
    let fadt: FADT = builder.finalize();
    let bytes = bytes_of(&fadt);
    debug_assert_eq!(bytes.len(), FADT_LEN);
    bytes
}

const MADT_REVISION: u8 = 5;
/// MADT flag: dual 8259 PICs are present (KVM's irqchip has them).
const PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_ENABLED: u32 = 1;

/// MADT: one enabled local APIC per vCPU (APIC id = ACPI processor UID =
/// vCPU index), the IOAPIC (same id as in the MP table, GSIs 0-23), and
/// LINT1 as NMI on every processor. No interrupt source override: KVM's
/// default routing sends ISA IRQ n (the PIT's 0 included) to GSI n, which
/// is what a guest assumes without one.
pub(crate) fn madt(layout: &AcpiLayout) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    body.extend_from_slice(&PCAT_COMPAT.to_le_bytes());
    for cpu in 0..layout.vcpus {
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        body.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, ioapic_id(layout.vcpus), 0]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                                 // Every processor (UID 0xff), flags 0 (conforming), LINT1.
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    table(*b"APIC", MADT_REVISION, *b"AVMADT  ", &body)
}

/// DSDT revision 2: integers in its AML are 64 bits wide.
const DSDT_REVISION: u8 = 2;

/// DSDT: header and the AML of [`super::dsdt_aml`].
pub(crate) fn dsdt(layout: &AcpiLayout) -> Vec<u8> {
    table(
        *b"DSDT",
        DSDT_REVISION,
        *b"AVDSDT  ",
        &super::dsdt_aml(layout),
    )
}
