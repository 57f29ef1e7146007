//! The interrupt line of a virtio-mmio device: an irqfd plus the
//! InterruptStatus bits the driver reads and acknowledges.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit: a queue's used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device configuration (or status) changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Interrupt state shared by a transport and its device.
#[derive(Debug)]
pub struct Interrupt {
    irq_evt: EventFd,
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
}

impl Interrupt {
    /// Creates an interrupt with a fresh (non-blocking) irqfd.
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
        })
    }

    /// The eventfd to register with KVM as an irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq_evt.write(1) {
            log::error!("virtio: cannot signal interrupt: {e}");
        }
    }

    /// Reports that used buffers were added to a queue.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Reports a configuration change (bumps ConfigGeneration).
    pub fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Current InterruptStatus bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged InterruptStatus `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts the device in the DEVICE_NEEDS_RESET state and tells the
    /// driver through a configuration change interrupt.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// Whether the device entered DEVICE_NEEDS_RESET since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// ConfigGeneration as seen by the driver.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Sets the state saved in a snapshot, without signalling.
    pub(crate) fn restore(&self, status: u32, needs_reset: bool, config_generation: u32) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
    }

    /// Signals the irqfd again if an interrupt is pending (after a restore,
    /// where the pending edge was lost with the old process).
    pub(crate) fn reraise_pending(&self) {
        if self.status() != 0 {
            if let Err(e) = self.irq_evt.write(1) {
                log::error!("virtio: cannot signal interrupt: {e}");
            }
        }
    }

    /// Clears the status bits and the needs-reset state (device reset).
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        // Drop a pending, not yet delivered notification.
        let _ = self.irq_evt.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_set_and_acked() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.config_generation(), 1);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn needs_reset_signals_once_and_clears_on_reset() {
        let irq = Interrupt::new().unwrap();
        irq.set_needs_reset();
        irq.set_needs_reset();
        assert!(irq.needs_reset());
        assert_eq!(irq.config_generation(), 1);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
