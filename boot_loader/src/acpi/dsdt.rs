//! The DSDT's AML, built with the `acpi_tables` AML builders:
//!
//! ```text
//! Scope (\_SB) {
//!     Device (COM1) {                       // only with a serial port
//!         Name (_HID, EisaId ("PNP0501"))
//!         Name (_UID, 1)
//!         Name (_CRS, ResourceTemplate () {
//!             IO (Decode16, 0x3F8, 0x3F8, 0, 8)
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 4 }
//!         })
//!     }
//!     Device (V000) {                       // one per virtio-mmio window
//!         Name (_HID, "LNRO0005")
//!         Name (_UID, 0)
//!         Name (_CCA, One)
//!         Name (_CRS, ResourceTemplate () {
//!             Memory32Fixed (ReadWrite, base, size)
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }
//!         })
//!     }
//!     ...
//!     Device (GED_) {                       // with a GED (the power button)
//!         Name (_HID, "ACPI0013")
//!         Name (_UID, 0)
//!         Name (_CRS, ResourceTemplate () {
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }
//!         })
//!         OperationRegion (EREG, SystemMemory, base, 4)
//!         Field (EREG, DWordAcc, NoLock, WriteAsZeros) { ESEL, 32 }
//!         Method (_EVT, 1, Serialized) {
//!             Local0 = ESEL                     // reading clears the events
//!             If ((Local0 & 2) == 2) { Notify (\_SB.PWRB, 0x80) }
//!         }
//!     }
//!     Device (PWRB) {                       // with a GED
//!         Name (_HID, "PNP0C0C")
//!         Name (_UID, 0)
//!     }
//! }
//! ```
//!
//! Interrupts are edge-triggered, active high: the devices signal through
//! KVM irqfds, which pulse the IOAPIC input. A hardware-reduced ACPI guest
//! sets up no legacy ISA IRQs of its own, so COM1 is described here too or
//! its IRQ 4 would not be routed.

use acpi_tables::aml::{
    self, And, Device, EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name, Notify, OpRegion,
    OpRegionSpace, Package, Path, ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::Aml;

use super::{AcpiLayout, GedDesc, MmioDeviceDesc};

/// The ACPI hardware id Linux's virtio_mmio driver matches.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// COM1's I/O ports and IRQ.
const COM1_PORT: u16 = 0x3f8;
const COM1_PORT_LEN: u8 = 8;
pub(super) const COM1_GSI: u32 = 4;

fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    out
}

/// An edge-triggered, active-high, exclusive interrupt consumed by the device.
fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

pub(super) fn com1() -> Vec<u8> {
    let io = IO::new(COM1_PORT, COM1_PORT, 0, COM1_PORT_LEN);
    let irq = edge_interrupt(COM1_GSI);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let hid = EISAName::new("PNP0501");
    bytes_of(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// `Device (Vnnn)` for the window with index `index` (also its `_UID`).
pub(super) fn virtio_device(index: usize, d: &MmioDeviceDesc) -> Vec<u8> {
    // The caller checked that the window lies below 4 GiB.
    let mem = Memory32Fixed::new(true, d.base as u32, d.size as u32);
    let irq = edge_interrupt(d.gsi);
    let crs = ResourceTemplate::new(vec![&mem, &irq]);
    let uid = index as u32;
    let name = format!("V{index:03}");
    bytes_of(&Device::new(
        name.as_str().into(),
        vec![
            &Name::new("_HID".into(), &VIRTIO_MMIO_HID),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CCA".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// The ACPI hardware id of the Generic Event Device.
pub const GED_HID: &str = "ACPI0013";
/// The ACPI hardware id of a control-method power button.
pub const POWER_BUTTON_HID: &str = "PNP0C0C";
/// Bytes of the GED's event selector register.
const GED_SELECTOR_LEN: u8 = 4;
/// The selector bit `_EVT` turns into a power button notification.
const GED_EVT_POWER_DOWN: u8 = 2;
/// Notify value of a pressed button ("status change", ACPI 6.5 table 5.166).
const BUTTON_PRESSED: u8 = 0x80;

/// `Device (GED_)`: its interrupt, the event selector as an operation
/// region, and `_EVT` notifying `\_SB.PWRB` when the power-down bit is set.
pub(super) fn ged(g: &GedDesc) -> Vec<u8> {
    let irq = edge_interrupt(g.gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    // The caller checked that the register lies below 4 GiB.
    let base = g.base as u32;
    let region = OpRegion::new(
        "EREG".into(),
        OpRegionSpace::SystemMemory,
        &base,
        &GED_SELECTOR_LEN,
    );
    let field = Field::new(
        "EREG".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"ESEL", 32)],
    );
    let selector = Path::new("ESEL");
    let read = Store::new(&Local(0), &selector);
    // No target (NullName, the byte 0): the result is only compared.
    let masked = And::new(&aml::ZERO, &Local(0), &GED_EVT_POWER_DOWN);
    let is_power_down = Equal::new(&masked, &GED_EVT_POWER_DOWN);
    let button = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&button, &BUTTON_PRESSED);
    let on_power_down = If::new(&is_power_down, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &on_power_down]);
    bytes_of(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &GED_HID),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ))
}

/// `Device (PWRB)`: the power button the GED notifies.
pub(super) fn power_button() -> Vec<u8> {
    bytes_of(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &POWER_BUTTON_HID),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ))
}

/// SLP_TYP of S5 in `\_S5` (what the guest writes to the sleep control
/// register to power off).
pub const S5_SLP_TYP: u8 = 5;

/// `Name (\_S5, Package () { 5, 5, 0, 0 })`: SLP_TYPa, SLP_TYPb, reserved.
pub(super) fn s5() -> Vec<u8> {
    let typ = S5_SLP_TYP;
    let zero = 0u8;
    bytes_of(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&typ, &typ, &zero, &zero]),
    ))
}

/// The DSDT's definition block (the AML after the table header).
pub fn dsdt_aml(layout: &AcpiLayout) -> Vec<u8> {
    let mut children = Vec::new();
    if layout.com1 {
        children.extend(com1());
    }
    for (i, d) in layout.virtio_mmio.iter().enumerate() {
        children.extend(virtio_device(i, d));
    }
    if let Some(g) = &layout.ged {
        children.extend(ged(g));
        children.extend(power_button());
    }
    let mut aml = Scope::raw("\\_SB_".into(), children);
    if layout.sleep_port.is_some() {
        aml.extend(s5());
    }
    aml
}
