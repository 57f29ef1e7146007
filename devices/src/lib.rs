//! Legacy devices of the microVM, each a [`address_space::BusDevice`] on
//! the port-I/O bus:
//! - [`serial::SerialDevice`]: 16550A UART (COM1 at 0x3F8, IRQ 4), from vm-superio;
//! - [`i8042::I8042`]: keyboard controller (IRQ 1): the reset command and the
//!   probe replies a Linux guest waits for, with a keyboard that never types;
//! - [`acpi_sleep::AcpiSleep`]: the ACPI sleep control/status port (S5 = off);
//! - [`acpi_ged::AcpiGed`]: the ACPI Generic Event Device (the power button),
//!   on the MMIO bus;
//! - [`cmos_rtc::CmosRtc`]: CMOS real-time clock at 0x70/0x71, without interrupts;
//! - [`boot_complete::BootCompletePort`]: a port the guest writes to when it
//!   has booted, so boot time can be measured without parsing the console.

pub mod acpi_ged;
pub mod acpi_sleep;
pub mod boot_complete;
pub mod cmos_rtc;
pub mod i8042;
pub mod serial;

/// I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports a 16550A occupies.
pub const COM1_PORT_LEN: u64 = 8;
/// GSI (IRQ line) of COM1.
pub const COM1_IRQ: u32 = 4;
/// First I/O port of the i8042 (data port; the command port is +4).
pub const I8042_PORT: u64 = 0x60;
/// Ports covered by the i8042.
pub const I8042_PORT_LEN: u64 = 5;
/// IRQ line of the i8042's keyboard.
pub const I8042_IRQ: u32 = 1;
/// Index port of the CMOS RTC (the data port is +1).
pub const CMOS_RTC_PORT: u64 = 0x70;
/// Ports covered by the CMOS RTC.
pub const CMOS_RTC_PORT_LEN: u64 = 2;
/// The boot-complete port.
pub const BOOT_COMPLETE_PORT: u64 = 0x3f0;
/// I/O port of the ACPI sleep control and status registers (the FADT of
/// `boot_loader::acpi` points at it).
pub const ACPI_SLEEP_PORT: u64 = 0x600;
/// Guest-physical address of the ACPI GED's event selector register (the
/// address QEMU's microvm uses; inside the MMIO gap below the IOAPIC).
pub const ACPI_GED_MMIO_BASE: u64 = 0xfea0_0000;
/// GSI of the ACPI GED's interrupt: IRQ 3 (COM2's, unused here), as the
/// virtio-mmio devices take 5 and up and COM1 has 4.
pub const ACPI_GED_IRQ: u32 = 3;
/// Byte the guest writes to [`BOOT_COMPLETE_PORT`] to signal boot completion
/// (the same convention as Firecracker's boot timer).
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// Errors of legacy device set-up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Creating an eventfd failed.
    #[error("cannot create eventfd for {what}: {source}")]
    EventFd {
        /// Which device.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Opening the serial output file failed.
    #[error("-serial: cannot open '{path}': {source}")]
    SerialFile {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A saved device state cannot be applied.
    #[error("{0}")]
    BadState(String),
    /// Spawning the serial input thread failed.
    #[error("cannot start the serial input thread: {0}")]
    InputThread(std::io::Error),
}
