//! virtio-blk: a block device backed by a host file.
//!
//! Requests (IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES) are served
//! synchronously on the device's event loop thread. The image is locked at
//! creation with QEMU's lock bytes (exclusive for read-write, shared for
//! read-only) so that no two VMs — altovirt or QEMU — write the same image, and flushed when the device is reset or
//! dropped.
//!
//! A device can also be created without a backend ([`Block::new_empty`]) and
//! have an image attached and detached later ([`Block::attach`],
//! [`Block::detach`]): hotplug into pre-created slots.

mod disk;
mod hotplug;
mod lock;
mod request;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use disk::{AlignedBuf, DiskFile, SECTOR_SIZE};

use crate::rate_limiter::{RateLimitConfig, Throttle};
use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use request::BlockWorker;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer (the serial number).
pub const SERIAL_LEN: usize = 20;
/// Most data segments per request (advertised as seg_max).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors per DISCARD segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most sectors per WRITE_ZEROES segment.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
/// Most segments per DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEGMENTS: u32 = 16;

/// Feature bit: read-only device.
pub const VIRTIO_BLK_F_RO: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
/// Feature bit: seg_max is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_SEG_MAX;
/// Feature bit: blk_size is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
/// Feature bit: FLUSH is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
/// Feature bit: DISCARD is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_DISCARD;
/// Feature bit: WRITE_ZEROES is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Request type: get the serial number.
pub const VIRTIO_BLK_T_GET_ID: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
/// Request type: discard ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_DISCARD;
/// Request type: zero ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES;
/// WRITE_ZEROES segment flag: the range may be deallocated.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 =
    virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Request status: success.
pub const VIRTIO_BLK_S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Request status: I/O error (or invalid request).
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Request status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Errors while creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process (or device) holds a conflicting lock on the image.
    #[error("disk image {path} is locked by another user (another VM or QEMU using it?): failed to get the \"{perm}\" lock")]
    Locked {
        /// The image path.
        path: String,
        /// The permission that conflicts (QEMU's name for it).
        perm: &'static str,
    },
    /// The path names something that is not a disk image.
    #[error("disk image {path} is a {kind}, not a regular file or block device")]
    NotAnImage {
        /// The image path.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The size of the image could not be determined.
    #[error("cannot get the size of disk image {path}: {source}")]
    Size {
        /// The image path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The serial number is longer than GET_ID can return.
    #[error("block serial '{0}' is longer than {SERIAL_LEN} bytes")]
    SerialTooLong(String),
    /// The I/O buffer could not be allocated.
    #[error("cannot allocate the block I/O buffer")]
    Buffer,
    /// `attach` on a device that already has an image.
    #[error("block slot already holds a disk image")]
    SlotBusy,
    /// `detach` on a device without an image.
    #[error("block slot holds no disk image")]
    SlotEmpty,
    /// `attach`/`detach` was called from the event loop thread while that
    /// thread is serving this very device (it cannot wait for itself).
    #[error("block device is busy serving requests on this thread")]
    Busy,
    /// Making written data durable failed while detaching; the image is
    /// detached and closed anyway.
    #[error("cannot flush disk image {path}: {source}")]
    Flush {
        /// The image path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Options of a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Host path of the image (regular file or block device).
    pub path: PathBuf,
    /// Refuse guest writes and open the image read-only.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT) where the filesystem allows.
    pub direct: bool,
    /// Serial number returned by GET_ID (at most 20 bytes).
    pub serial: Option<String>,
    /// I/O limits (bandwidth and operations); none by default.
    pub rate_limit: RateLimitConfig,
}

struct Active {
    // Dropped first: stops the handlers before the worker goes away.
    registrations: Registrations,
    worker: Arc<Mutex<BlockWorker>>,
    interrupt: Arc<Interrupt>,
}

/// A virtio-blk device.
pub struct Block {
    /// The image; `None` for an empty slot.
    disk: Option<Arc<DiskFile>>,
    serial: [u8; SERIAL_LEN],
    config_space: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
    event_loop: EventLoop,
    active: Option<Active>,
    /// I/O limits; kept across resets and image changes.
    rate_limit: RateLimitConfig,
}

impl Block {
    /// Opens and locks the image; queues will be served on `event_loop`.
    pub fn new(config: BlockConfig, event_loop: EventLoop) -> Result<Self, BlockError> {
        let serial = serial_bytes(config.serial.as_deref())?;
        let disk = DiskFile::open(&config.path, config.read_only, config.direct)?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config_space = build_config(disk.size() / SECTOR_SIZE);
        Ok(Block {
            disk: Some(Arc::new(disk)),
            serial,
            config_space,
            avail_features,
            acked_features: 0,
            event_loop,
            active: None,
            rate_limit: config.rate_limit,
        })
    }

    /// Capacity in 512-byte sectors (0 for an empty slot).
    pub fn capacity(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.size() / SECTOR_SIZE)
    }

    /// Host path of the image (an empty path for an empty slot; see
    /// [`Block::backend`]).
    pub fn path(&self) -> &Path {
        self.disk.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Whether the attached image is read-only (false for an empty slot).
    pub fn read_only(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.read_only())
    }

    /// The GET_ID serial number, if one was given.
    pub fn serial(&self) -> Option<String> {
        let end = self
            .serial
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SERIAL_LEN);
        let s = self.serial.get(..end)?;
        (!s.is_empty()).then(|| String::from_utf8_lossy(s).into_owned())
    }

    /// Whether the device is processing its queue.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The current I/O limits.
    pub fn rate_limit(&self) -> RateLimitConfig {
        self.rate_limit
    }

    /// Changes the I/O limits, at once if the device is running (buckets
    /// start full).
    pub fn set_rate_limit(&mut self, limits: RateLimitConfig) -> Result<(), BlockError> {
        if let Some(active) = &self.active {
            self.with_worker(&active.worker, |w| w.set_limits(limits))?;
        }
        self.rate_limit = limits;
        Ok(())
    }
}

/// The GET_ID answer for `serial` (zero-padded).
fn serial_bytes(serial: Option<&str>) -> Result<[u8; SERIAL_LEN], BlockError> {
    let mut out = [0u8; SERIAL_LEN];
    if let Some(s) = serial {
        let bytes = s.as_bytes();
        if bytes.len() > SERIAL_LEN {
            return Err(BlockError::SerialTooLong(s.to_string()));
        }
        out[..bytes.len()].copy_from_slice(bytes);
    }
    Ok(out)
}

/// struct virtio_blk_config, little endian, up to write_zeroes_may_unmap.
fn build_config(capacity: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment
    c[48..52].copy_from_slice(&MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` (with CONFIG_WCE) is writable; not offered.
        log::debug!(
            "virtio-blk: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let (queues, evts) = split_queues(queues, 1)?;
        let worker = BlockWorker::new(
            QueueSet::new("virtio-blk", mem, interrupt.clone(), queues),
            self.disk.clone(),
            self.serial,
            self.acked_features,
            self.rate_limit,
            Throttle::new()?,
        )
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        let throttle_fd = worker.throttle_fd();
        let worker = Arc::new(Mutex::new(worker));
        let mut registrations = Registrations::new(&self.event_loop);
        registrations.add_queues(&worker, evts, |w: &mut BlockWorker, _| w.process())?;
        // The worker owns the timer and outlives this registration.
        registrations.add_fd(&worker, throttle_fd, BlockWorker::resume)?;
        self.active = Some(Active {
            registrations,
            worker,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            active.registrations.clear();
            // A handler removed from the loop thread itself may be dropped
            // later: make sure it no longer keeps the image open.
            let _ = self.with_worker(&active.worker, |w| w.set_disk(None, [0; SERIAL_LEN]));
        }
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.flush() {
                log::error!(
                    "virtio-blk: {}: flush on reset failed: {e}",
                    disk.path().display()
                );
            }
        }
        self.acked_features = 0;
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| crate::lock(&a.worker).queue_states())
    }

    fn sync(&self) -> std::io::Result<()> {
        self.disk.as_ref().map_or(Ok(()), |d| d.flush())
    }
}

#[cfg(test)]
mod hotplug_tests;
#[cfg(test)]
mod tests;
