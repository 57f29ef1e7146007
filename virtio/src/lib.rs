//! virtio devices of an altovirt microVM and their virtio-mmio transport.
//!
//! - [`MmioTransport`]: the virtio-mmio (version 2, modern only) register
//!   block; a [`address_space::BusDevice`] placed in a 4 KiB MMIO window.
//! - [`VirtioDevice`]: what a device model implements; devices process their
//!   queues on a [`util::event_loop::EventLoop`] thread, never on
//!   vCPU threads.
//! - Devices: [`block::Block`] (virtio-blk), [`rng::Rng`] (virtio-rng),
//!   [`console::Console`] (virtio-console, single port), [`fs::VhostUserFs`]
//!   (virtio-fs through a vhost-user backend, see [`vhost_user`]) and
//!   [`balloon::Balloon`] (virtio-balloon).
//!
//! Everything the guest writes (registers, rings, descriptors) is treated
//! as hostile: a misbehaving driver gets an error status or a device in the
//! DEVICE_NEEDS_RESET state, never a VMM panic or hang.

#![warn(missing_docs)]

pub mod balloon;
pub mod block;
mod chain;
pub mod console;
pub mod fs;
/// Fuzzing entry points (feature `fuzzing`, used by `virtio/fuzz`). A
/// harness reports a finding by panicking, so it may unwrap.
#[cfg(any(test, feature = "fuzzing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod fuzzing;
mod interrupt;
pub mod mmio;
pub mod net;
pub mod rate_limiter;
pub mod rng;
pub mod snapshot;
#[cfg(test)]
mod test_utils;
pub mod vhost_user;
pub mod vsock;
mod worker;

use std::sync::Arc;

pub use address_space::GuestMemoryMmap;
pub use interrupt::{Interrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
pub use mmio::{MmioError, MmioTransport, MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET};
pub use virtio_queue::{Queue, QueueState, QueueT};
pub use vmm_sys_util::eventfd::EventFd;

use util::event_loop::EventLoopError;

/// virtio device ID of a network card.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// virtio device ID of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// virtio device ID of a console.
pub const TYPE_CONSOLE: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
/// virtio device ID of an entropy source.
pub const TYPE_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// virtio device ID of a memory balloon.
pub const TYPE_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

/// Feature bit: the device complies with virtio 1.0 or later.
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 =
    virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
/// Device status bit: the guest knows how to drive the device.
pub const STATUS_DRIVER: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER;
/// Device status bit: the driver is set up and ready.
pub const STATUS_DRIVER_OK: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
/// Device status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 =
    virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
/// Device status bit: the guest gave up on the device.
pub const STATUS_FAILED: u32 = virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FAILED;

/// Errors raised while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the
    /// device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Number of queues of the device.
        expected: usize,
        /// Number handed over.
        got: usize,
    },
    /// The driver did not enable a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The queue handlers could not be registered on the event loop.
    #[error("cannot register queue handlers: {0}")]
    EventLoop(#[from] EventLoopError),
    /// The device is already active.
    #[error("device is already active")]
    AlreadyActive,
    /// A host resource (eventfd, back-end) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The device-model side of a virtio device, driven by a transport.
///
/// Methods run on vCPU threads (register accesses); queue processing starts
/// at [`activate`](VirtioDevice::activate) and runs on the device's event
/// loop thread.
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. [`TYPE_BLOCK`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (always including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Records the features the driver accepted (a subset of
    /// [`features`](VirtioDevice::features), checked by the transport).
    fn ack_features(&mut self, features: u64);
    /// Reads device configuration space at `offset`; bytes beyond the
    /// configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space at `offset`; read-only or
    /// out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device: `queues` holds one queue per entry of
    /// [`queue_max_sizes`](VirtioDevice::queue_max_sizes), each with the
    /// eventfd the guest's notifications for it arrive on.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError>;
    /// Stops queue processing and drops the queues. Safe at any time,
    /// including while the event loop is processing this device.
    fn reset(&mut self);

    /// Snapshots: why this device cannot be saved, or `None` if it can.
    /// Devices opt in by overriding this (and the methods below).
    fn snapshot_blocker(&self) -> Option<String> {
        Some("this device does not support snapshots".to_string())
    }
    /// Snapshots: the live state of the queues the device works on while
    /// active (positions reached by its worker), in queue order; it may
    /// cover only the first queues (the others keep the transport's copy).
    /// `None` when not active.
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        None
    }
    /// Snapshots: device-specific state.
    fn save_extra(&self) -> snapshot::DeviceExtra {
        snapshot::DeviceExtra::None
    }
    /// Snapshots: applies device-specific state, before activation.
    fn restore_extra(&mut self, extra: &snapshot::DeviceExtra) -> Result<(), String> {
        match extra {
            snapshot::DeviceExtra::None => Ok(()),
            other => Err(format!("unexpected device state {other:?}")),
        }
    }
    /// Snapshots: called once after a restored device was activated, before
    /// the guest runs again (vsock tells the guest its connections are gone).
    fn after_restore(&mut self) {}
    /// Snapshots: makes data the guest wrote durable (block: fdatasync).
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies the bytes of `config` at `offset` into `data`, zero-filling what
/// lies beyond `config`.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Locks `m`, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut buf = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 10, &mut buf);
        assert_eq!(buf, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
    }
}
