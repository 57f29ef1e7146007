//! The ACPI Generic Event Device (GED, `ACPI0013`, ACPI 6.5 section 5.6.9)
//! of a hardware-reduced platform, carrying the power button: one
//! interrupt and a 32-bit event selector register, laid out as QEMU's
//! `acpi-ged` on its microvm machine does it.
//!
//! Pressing the button ([`AcpiGed::press_power_button`]) sets
//! [`GED_EVT_POWER_DOWN`] in the selector and pulses the interrupt. The
//! guest's GED driver runs the DSDT's `_EVT` method, which reads the
//! selector (the read returns the pending events and clears them) and, for
//! the power-down bit, notifies the `PNP0C0C` power button device with
//! 0x80; Linux turns that into a `KEY_POWER` input event. The DSDT side is
//! in `boot_loader::acpi`.

use address_space::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Size of the register window: the 32-bit event selector at offset 0.
pub const GED_MMIO_LEN: u64 = 4;
/// Event selector bit: the power button was pressed (QEMU's
/// `ACPI_GED_PWR_DOWN_EVT`).
pub const GED_EVT_POWER_DOWN: u32 = 1 << 1;

/// The GED: pending events and the interrupt that announces them.
pub struct AcpiGed {
    /// Events raised and not yet read by the guest.
    selector: u32,
    /// Pulsed (written) once per raised event; an irqfd in KVM.
    irq: EventFd,
}

impl AcpiGed {
    /// A GED whose interrupt is `irq` (registered as a KVM irqfd by the
    /// caller); nothing pending.
    pub fn new(irq: EventFd) -> Self {
        AcpiGed { selector: 0, irq }
    }

    /// Presses the power button: records the event and interrupts the
    /// guest. Fails only if the interrupt cannot be signalled.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.selector |= GED_EVT_POWER_DOWN;
        self.irq.write(1)
    }

    /// Events pending, without clearing them (for logs and tests).
    pub fn pending(&self) -> u32 {
        self.selector
    }

    /// Back to the power-on state (machine reset): nothing pending.
    pub fn reset(&mut self) {
        self.selector = 0;
    }
}

impl BusDevice for AcpiGed {
    /// A 4-byte read of the selector returns the pending events and clears
    /// them (the AML reads it once per interrupt, with DWord access). Other
    /// reads return zeros and change nothing.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.selector.to_le_bytes());
            self.selector = 0;
        } else {
            data.fill(0);
        }
    }

    /// The selector is read-only; writes are ignored.
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(ged: &mut AcpiGed, offset: u64) -> u32 {
        let mut b = [0xffu8; 4];
        ged.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn press_latches_the_event_and_pulses_the_interrupt() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = AcpiGed::new(irq.try_clone().unwrap());
        assert_eq!(read32(&mut ged, 0), 0);
        assert!(irq.read().is_err(), "no interrupt before a press");
        ged.press_power_button().unwrap();
        ged.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 2, "one pulse per press");
        // Presses accumulate into one bit; the read clears it.
        assert_eq!(ged.pending(), GED_EVT_POWER_DOWN);
        assert_eq!(read32(&mut ged, 0), GED_EVT_POWER_DOWN);
        assert_eq!(read32(&mut ged, 0), 0);
    }

    #[test]
    fn odd_accesses_and_writes_change_nothing_and_reset_clears() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = AcpiGed::new(irq);
        ged.press_power_button().unwrap();
        let mut byte = [0xffu8];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0]);
        assert_eq!(read32(&mut ged, 4), 0);
        ged.write(0, &[0, 0, 0, 0]);
        assert_eq!(ged.pending(), GED_EVT_POWER_DOWN);
        ged.reset();
        assert_eq!(read32(&mut ged, 0), 0);
    }
}
