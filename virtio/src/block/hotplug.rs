//! Hotplug of disk images into pre-created virtio-blk slots.
//!
//! An empty slot ([`Block::new_empty`]) offers, from its creation on, the
//! features any image attached later can live with: VERSION_1,
//! INDIRECT_DESC, SEG_MAX, BLK_SIZE and FLUSH. Features cannot change once
//! the guest negotiated them, so neither RO nor DISCARD/WRITE_ZEROES is
//! offered: a read-only image attached later is not announced as such to the
//! guest, its writes simply complete with VIRTIO_BLK_S_IOERR.
//!
//! The image lives in the queue worker as an `Option<Arc<DiskFile>>` and is
//! swapped under the worker lock. Requests are served synchronously while
//! that lock is held (on the event loop thread), so taking it is enough to
//! know no request is in progress: the hot path costs one reference count
//! per request and no extra lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use util::event_loop::EventLoop;

use super::request::BlockWorker;
use super::{
    build_config, serial_bytes, Block, BlockConfig, BlockError, DiskFile, SECTOR_SIZE, SERIAL_LEN,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX,
};
use crate::rate_limiter::RateLimitConfig;
use crate::{lock, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC};

/// Features of an empty slot (fixed for whatever gets attached later).
pub(super) const EMPTY_SLOT_FEATURES: u64 = (1u64 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_BLK_F_SEG_MAX)
    | (1 << VIRTIO_BLK_F_BLK_SIZE)
    | (1 << VIRTIO_BLK_F_FLUSH);

impl Block {
    /// Creates a virtio-blk device without an image (capacity 0): a slot an
    /// image can be attached to later with [`Block::attach`]. Every data
    /// request completes with VIRTIO_BLK_S_IOERR until then, and GET_ID
    /// returns an empty serial.
    pub fn new_empty(event_loop: EventLoop) -> Block {
        Block {
            disk: None,
            serial: [0; SERIAL_LEN],
            config_space: build_config(0),
            avail_features: EMPTY_SLOT_FEATURES,
            acked_features: 0,
            event_loop,
            active: None,
            rate_limit: RateLimitConfig::default(),
        }
    }

    /// Whether no image is attached.
    pub fn is_empty(&self) -> bool {
        self.disk.is_none()
    }

    /// Path of the attached image and whether it is read-only.
    pub fn backend(&self) -> Option<(PathBuf, bool)> {
        self.disk
            .as_ref()
            .map(|d| (d.path().to_path_buf(), d.read_only()))
    }

    /// Attaches an image to an empty slot: opens and locks it exactly like
    /// [`Block::new`], sets the serial and the capacity in configuration
    /// space. When the device is active, requests served after this call
    /// use the image and the guest gets a configuration change interrupt.
    ///
    /// The feature set cannot change after negotiation: a read-only image
    /// is not announced with VIRTIO_BLK_F_RO (unless the device offered it
    /// from its creation); guest writes to it complete with IOERR.
    ///
    /// Errors: [`BlockError::SlotBusy`] if an image is attached, the errors
    /// of [`Block::new`] (the slot then stays empty), and
    /// [`BlockError::Busy`] when called from inside this device's own
    /// request handler on the event loop thread.
    pub fn attach(&mut self, config: BlockConfig) -> Result<(), BlockError> {
        if self.disk.is_some() {
            return Err(BlockError::SlotBusy);
        }
        let serial = serial_bytes(config.serial.as_deref())?;
        let disk = Arc::new(DiskFile::open(
            &config.path,
            config.read_only,
            config.direct,
        )?);
        if let Some(active) = &self.active {
            let worker = active.worker.clone();
            let new = disk.clone();
            self.with_worker(&worker, move |w| w.set_disk(Some(new), serial))?;
        }
        let capacity = disk.size() / SECTOR_SIZE;
        self.disk = Some(disk);
        self.serial = serial;
        self.set_capacity(capacity);
        Ok(())
    }

    /// Detaches the image: waits until no request is in progress, makes
    /// written data durable (fdatasync), releases the lock and closes the
    /// file; capacity becomes 0 and, if the device is active, the guest gets
    /// a configuration change interrupt. Later requests complete with IOERR.
    /// Returns the path of the detached image.
    ///
    /// Errors: [`BlockError::SlotEmpty`] if nothing is attached,
    /// [`BlockError::Busy`] when called from inside this device's own
    /// request handler on the event loop thread (nothing changes then), and
    /// [`BlockError::Flush`] if the final fdatasync failed (the image is
    /// detached and closed anyway).
    pub fn detach(&mut self) -> Result<PathBuf, BlockError> {
        if self.disk.is_none() {
            return Err(BlockError::SlotEmpty);
        }
        if let Some(active) = &self.active {
            let worker = active.worker.clone();
            // Holding the worker lock: no request is in progress.
            self.with_worker(&worker, |w| w.set_disk(None, [0; SERIAL_LEN]))?;
        }
        let Some(disk) = self.disk.take() else {
            return Err(BlockError::SlotEmpty);
        };
        self.serial = [0; SERIAL_LEN];
        self.set_capacity(0);
        let path = disk.path().to_path_buf();
        let flushed = disk.flush();
        // The last reference: closing the file releases its lock.
        if Arc::strong_count(&disk) != 1 {
            log::warn!(
                "virtio-blk: {}: image still referenced after detach",
                path.display()
            );
        }
        drop(disk);
        flushed.map_err(|source| BlockError::Flush {
            path: path.display().to_string(),
            source,
        })?;
        Ok(path)
    }

    /// Runs `f` on the worker once no request is in progress. On the event
    /// loop thread only the lock's holder could be a caller further up this
    /// very stack, so it is tried rather than waited for (as `reset` does).
    pub(super) fn with_worker<R>(
        &self,
        worker: &Arc<Mutex<BlockWorker>>,
        f: impl FnOnce(&mut BlockWorker) -> R,
    ) -> Result<R, BlockError> {
        if self.event_loop.on_loop_thread() {
            match worker.try_lock() {
                Ok(mut w) => Ok(f(&mut w)),
                Err(std::sync::TryLockError::Poisoned(p)) => Ok(f(&mut p.into_inner())),
                Err(std::sync::TryLockError::WouldBlock) => Err(BlockError::Busy),
            }
        } else {
            Ok(f(&mut lock(worker)))
        }
    }

    /// Updates the capacity field and tells an active driver.
    fn set_capacity(&mut self, sectors: u64) {
        self.config_space[0..8].copy_from_slice(&sectors.to_le_bytes());
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }
}
