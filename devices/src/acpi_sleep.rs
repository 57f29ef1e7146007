//! The ACPI sleep control and status registers of a hardware-reduced
//! platform (ACPI 6.5, 4.8.3.7 and 4.8.3.8), one I/O port each side of the
//! same byte: the FADT points both at [`crate::ACPI_SLEEP_PORT`]. Writing
//! SLP_EN with SLP_TYP = S5 (the value of the DSDT's `\_S5` package) is the
//! guest powering off, as Linux's `poweroff` does once it finds both
//! registers and `\_S5`. Other sleep states are not supported and are
//! ignored (the guest keeps running, as if woken at once).

use address_space::BusDevice;

/// SLP_EN: bit 5 of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;
/// SLP_TYP occupies bits 2..=4 of the sleep control register.
pub const SLP_TYP_SHIFT: u8 = 2;
/// The SLP_TYP value for S5 (soft off); the DSDT's `\_S5` package says it.
pub const S5_SLP_TYP: u8 = 5;

/// Something to call when the guest powers off.
pub trait PowerOffNotifier: Send {
    /// The guest entered S5.
    fn power_off(&self);
}

/// The sleep control/status register pair.
pub struct AcpiSleep {
    notifier: Box<dyn PowerOffNotifier>,
}

impl AcpiSleep {
    /// Creates the registers; `notifier` runs when the guest enters S5.
    pub fn new(notifier: Box<dyn PowerOffNotifier>) -> Self {
        AcpiSleep { notifier }
    }
}

impl BusDevice for AcpiSleep {
    /// Sleep status: WAK_STS (bit 7) is never set: nothing sleeps.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, [value]) = (offset, data) else {
            return;
        };
        if value & SLP_EN != 0 {
            let typ = (value >> SLP_TYP_SHIFT) & 0x7;
            if typ == S5_SLP_TYP {
                self.notifier.power_off();
            } else {
                log::warn!("acpi: guest asked for sleep type {typ}; only S5 (off) is supported");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicUsize>);
    impl PowerOffNotifier for Count {
        fn power_off(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn only_slp_en_with_s5_powers_off() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut dev = AcpiSleep::new(Box::new(Count(n.clone())));
        // S5 type without SLP_EN, SLP_EN with S3, a word-sized write.
        dev.write(0, &[S5_SLP_TYP << SLP_TYP_SHIFT]);
        dev.write(0, &[SLP_EN | (3 << SLP_TYP_SHIFT)]);
        dev.write(0, &[SLP_EN | (S5_SLP_TYP << SLP_TYP_SHIFT), 0]);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // What Linux writes for S5: (5 << 2) | SLP_EN = 0x34.
        dev.write(0, &[0x34]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let mut status = [0xffu8];
        dev.read(0, &mut status);
        assert_eq!(status, [0]);
    }
}
