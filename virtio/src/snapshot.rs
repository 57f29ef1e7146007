//! Device state for snapshots: what a virtio-mmio transport and its device
//! need to continue after a restore into a freshly built device. Plain,
//! serializable types; the machine decides how they are stored.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// One virtqueue: its configuration and the positions the device reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx_enabled: bool,
    /// Size chosen by the driver.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Driver area (available ring) address.
    pub avail_ring: u64,
    /// Device area (used ring) address.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// Device-specific state beyond features and queues.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeviceExtra {
    /// Nothing beyond features and queues (block, net, rng, vsock).
    #[default]
    None,
    /// virtio-balloon: the target and the driver's `actual`.
    Balloon {
        /// `num_pages`, the target.
        num_pages: u32,
        /// `actual`, as the driver last wrote it.
        actual: u32,
    },
    /// virtio-console: host input not yet delivered to the guest.
    Console {
        /// The pending bytes.
        pending: Vec<u8>,
    },
    /// Hybrid vsock: the next host port for host-initiated connections, so
    /// a restored device does not reuse the port of a connection the guest
    /// may still hold (a reset socket lingers until its owner closes it,
    /// and a new request with the same addresses would hit it).
    Vsock {
        /// Next host port to hand out.
        next_host_port: u32,
    },
}

/// A virtio-mmio transport with its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// virtio device ID.
    pub device_type: u32,
    /// Device status (without DEVICE_NEEDS_RESET, kept in `needs_reset`).
    pub status: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue, in order, with the device's live positions.
    pub queues: Vec<QueueSnapshot>,
    /// Queues the driver gave an invalid size or address.
    pub queue_bad: Vec<bool>,
    /// Whether the device was activated (DRIVER_OK accepted).
    pub activated: bool,
    /// InterruptStatus bits.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Device-specific state.
    pub device: DeviceExtra,
}

/// Why a transport state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved state is for another kind of device or queue layout.
    #[error("{0}")]
    Mismatch(String),
    /// The device refuses the saved state.
    #[error("{0}")]
    Device(String),
    /// The device could not be activated with the saved queues.
    #[error("cannot activate: {0}")]
    Activate(String),
}
