//! The machine's own hotplug vocabulary: what a request to add a block
//! node, a device or a network back-end says, what `query-block` returns,
//! and how a request fails. The QMP bridge (`crate::qmp_bridge`) converts
//! QMP arguments into these and these into QMP replies and error classes;
//! the hotplug code itself knows nothing of QMP.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Why a hotplug request failed. The message is the one the client sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    /// No device or back-end has the id given (QMP `DeviceNotFound`).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out (QMP `GenericError`).
    #[error("{0}")]
    Refused(String),
}

impl HotplugError {
    /// A refusal with `desc` as its message.
    pub fn refused(desc: impl Into<String>) -> Self {
        HotplugError::Refused(desc.into())
    }
}

/// Where a block node's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A regular file or block device.
    Path(PathBuf),
    /// The image of another node, by node name; its read-only and
    /// O_DIRECT settings are the defaults of this one.
    Node(String),
    /// A node defined inline, whose own settings are the defaults.
    Nested {
        /// Its image.
        source: Box<ImageSource>,
        /// Its `read-only`.
        read_only: Option<bool>,
        /// Its `cache.direct`.
        direct: Option<bool>,
    },
}

/// A new block node (`blockdev-add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevRequest {
    /// The node's name.
    pub node_name: String,
    /// Its image.
    pub source: ImageSource,
    /// Read-only, if said.
    pub read_only: Option<bool>,
    /// O_DIRECT, if said.
    pub direct: Option<bool>,
}

/// A device to plug into a slot (`device_add`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The driver name (e.g. `virtio-blk-mmio`).
    pub driver: String,
    /// The device id.
    pub id: Option<String>,
    /// The slot, decimal or `0x` hex.
    pub addr: Option<String>,
    /// The block node (block devices).
    pub drive: Option<String>,
    /// The network back-end (network devices).
    pub netdev: Option<String>,
    /// The MAC address (network devices).
    pub mac: Option<String>,
    /// The serial the guest reads (block devices).
    pub serial: Option<String>,
    /// `logical_block_size`, if given.
    pub logical_block_size: Option<u32>,
    /// `physical_block_size`, if given.
    pub physical_block_size: Option<u32>,
    /// The first property given that no device here has.
    pub unknown_property: Option<String>,
}

/// A TAP network back-end (`netdev_add`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapRequest {
    /// The back-end id.
    pub id: String,
    /// Names of received descriptors for the TAP queues (`fd`, `fds`).
    pub fd_names: Vec<String>,
    /// An interface to open by name.
    pub ifname: Option<String>,
    /// Whether vhost-net was asked for (`vhost=on` or vhost descriptors).
    pub vhost: bool,
    /// Queue pairs asked for.
    pub queues: Option<u32>,
    /// `script`, if given.
    pub script: Option<String>,
    /// `downscript`, if given.
    pub downscript: Option<String>,
    /// Rate limits of the NIC the back-end is plugged into (altovirt's
    /// `rx_…`/`tx_…` keys).
    pub limits: virtio::net::NetLimits,
}

/// Descriptors a client passed beforehand, by name.
pub trait FdSource {
    /// Removes and returns the descriptor stored under `name`.
    fn take_fd(&mut self, name: &str) -> Option<OwnedFd>;
}

/// An image in use, as `query-block` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its path.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// Opened with O_DIRECT.
    pub direct: bool,
}

/// One entry of `query-block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEntry {
    /// A disk created at boot in a fixed window (not a slot).
    Boot {
        /// Device id.
        device: String,
        /// Drive id.
        drive: String,
        /// The image.
        image: ImageInfo,
    },
    /// A slot, filled or not.
    Slot {
        /// The slot's index.
        index: usize,
        /// Device id, node name and image while filled.
        filled: Option<(String, String, Option<ImageInfo>)>,
    },
}
