//! Saving and restoring a transport with its device (snapshots).

use virtio_queue::{Queue, QueueState, QueueT};

use super::MmioTransport;
use crate::lock;
use crate::snapshot::{QueueSnapshot, RestoreError, TransportState};
use crate::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
};

/// The status bits a driver can set (DEVICE_NEEDS_RESET is kept apart).
const STATUS_SETTABLE: u32 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED;

/// A saved status must be one the transport itself could have reached:
/// defined bits only, each negotiation step after the one before it, and
/// an active device only with DRIVER_OK (a state file is not trusted).
fn check_status(state: &TransportState) -> Result<(), RestoreError> {
    let s = state.status;
    let bad = |why: &str| Err(RestoreError::Mismatch(format!("status {s:#x}: {why}")));
    if s & !STATUS_SETTABLE != 0 {
        return bad("undefined bits");
    }
    if s & STATUS_DRIVER != 0 && s & STATUS_ACKNOWLEDGE == 0 {
        return bad("DRIVER without ACKNOWLEDGE");
    }
    if s & STATUS_FEATURES_OK != 0 && s & STATUS_DRIVER == 0 {
        return bad("FEATURES_OK without DRIVER");
    }
    if s & STATUS_DRIVER_OK != 0 && s & STATUS_FEATURES_OK == 0 {
        return bad("DRIVER_OK without FEATURES_OK");
    }
    // (A driver may report FAILED after DRIVER_OK: the device stays active.)
    if state.activated && s & STATUS_DRIVER_OK == 0 {
        return bad("an active device needs DRIVER_OK");
    }
    Ok(())
}

impl MmioTransport {
    /// Why the device cannot be snapshotted, if it cannot.
    pub fn snapshot_blocker(&self) -> Option<String> {
        lock(&self.device).snapshot_blocker()
    }

    /// The virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Captures registers, queues (with the positions the device's worker
    /// reached), interrupt state and device-specific state. The device's
    /// event loop must be parked (no handler running) for the positions to
    /// be consistent with guest memory.
    pub fn save(&self) -> TransportState {
        let device = lock(&self.device);
        let mut queues: Vec<QueueSnapshot> = self.queues.iter().map(|q| q.state().into()).collect();
        if self.activated {
            if let Some(live) = device.queue_states() {
                for (slot, state) in queues.iter_mut().zip(live) {
                    *slot = state.into();
                }
            }
        }
        TransportState {
            device_type: self.device_type,
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            queues,
            queue_bad: self.queue_bad.clone(),
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            config_generation: self.interrupt.config_generation(),
            device: device.save_extra(),
        }
    }

    /// Makes the guest's writes durable (block devices: fdatasync).
    pub fn sync(&self) -> std::io::Result<()> {
        lock(&self.device).sync()
    }

    /// Puts `state` into this freshly created transport: registers, queues,
    /// interrupt state, the driver's features and device-specific state;
    /// if the device was active, activates it with the saved queue
    /// positions. Call [`MmioTransport::resume_after_restore`] once the
    /// guest's memory and interrupt controllers are in place.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        if self.activated || self.status != 0 {
            return Err(RestoreError::Mismatch(
                "the device is already in use".to_string(),
            ));
        }
        if state.device_type != self.device_type {
            return Err(RestoreError::Mismatch(format!(
                "device type {} saved, {} here",
                state.device_type, self.device_type
            )));
        }
        check_status(state)?;
        if state.queues.len() != self.queues.len() || state.queue_bad.len() != self.queues.len() {
            return Err(RestoreError::Mismatch(format!(
                "{} queues saved, {} here",
                state.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, (saved, here)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != here.max_size() {
                return Err(RestoreError::Mismatch(format!(
                    "queue {i}: maximum size {} saved, {} here",
                    saved.max_size,
                    here.max_size()
                )));
            }
            let q = Queue::try_from(QueueState::from(*saved))
                .map_err(|e| RestoreError::Mismatch(format!("queue {i}: {e}")))?;
            queues.push(q);
        }
        {
            let mut device = lock(&self.device);
            let offered = device.features();
            if state.status & STATUS_FEATURES_OK != 0 {
                if state.driver_features & !offered != 0 {
                    return Err(RestoreError::Mismatch(format!(
                        "driver features {:#x} not offered here ({offered:#x})",
                        state.driver_features
                    )));
                }
                device.ack_features(state.driver_features);
            }
            device
                .restore_extra(&state.device)
                .map_err(RestoreError::Device)?;
        }
        self.queues = queues;
        self.queue_bad = state.queue_bad.clone();
        self.device_features_sel = state.device_features_sel;
        self.driver_features = state.driver_features;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.interrupt.restore(
            state.interrupt_status,
            state.needs_reset,
            state.config_generation,
        );
        if state.activated {
            self.activate().map_err(RestoreError::Activate)?;
            lock(&self.device).after_restore();
        }
        Ok(())
    }

    /// After a restore, once guest memory and the interrupt controllers
    /// hold their saved state: kicks every ready queue of an active device
    /// once (a notification pending at snapshot time is not lost) and
    /// re-raises a pending interrupt.
    pub fn resume_after_restore(&self) {
        if self.activated {
            for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
                if q.ready() {
                    if let Err(e) = evt.write(1) {
                        log::error!("virtio-mmio: cannot kick restored queue: {e}");
                    }
                }
            }
        }
        self.interrupt.reraise_pending();
    }
}
