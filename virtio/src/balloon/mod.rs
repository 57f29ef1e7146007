//! virtio-balloon (virtio 1.x, 5.5): the host asks the guest for memory
//! back and the guest hands over pages it no longer uses.
//!
//! The host sets `num_pages` (how many 4 KiB pages it wants in the balloon)
//! with [`Balloon::set_target_pages`], which raises a configuration change
//! interrupt; the driver allocates that many pages, sends their page frame
//! numbers on the inflate queue and writes `actual`. Inflated pages are
//! discarded on the host (`madvise`, see [`discard`]), so the VMM's
//! resident memory shrinks. Deflating needs no host action: without
//! VIRTIO_BALLOON_F_MUST_TELL_HOST (never offered) the guest may reuse the
//! pages at once, and reads zeros from them.
//!
//! Offered features: VERSION_1, DEFLATE_ON_OOM (with
//! [`BalloonConfig::deflate_on_oom`]) and REPORTING (with
//! [`BalloonConfig::free_page_reporting`]: the guest reports free memory,
//! which is discarded like inflated pages). No statistics queue and no free
//! page hinting. Queues are numbered as the driver finds them, absent
//! optional queues skipped: inflateq 0, deflateq 1, reporting_vq 2.
//!
//! Every page the guest names is checked: pages outside the usable RAM the
//! machine gives ([`BalloonConfig::usable`]) are refused, never discarded.

mod discard;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::DeviceExtra;
use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_BALLOON};
use crate::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC};
use discard::Discarder;
use worker::{BalloonWorker, Counters, QueueKind};

// virtio-bindings has no virtio_balloon module: the constants of
// linux/virtio_balloon.h this device uses.
/// Feature bit: the guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: the guest reports free pages on the reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// A page frame number on the inflate and deflate queues counts 4 KiB pages.
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// Size of a balloon page in bytes.
pub const BALLOON_PAGE_SIZE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;

/// Size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// Offset of `num_pages` (le32, set by the device) in configuration space.
const CONFIG_NUM_PAGES: usize = 0;
/// Offset of `actual` (le32, written by the driver) in configuration space.
const CONFIG_ACTUAL: usize = 4;
/// Size of the configuration space this device implements.
const CONFIG_SIZE: usize = 8;

/// What a balloon device is created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Offer VIRTIO_BALLOON_F_REPORTING (and its queue).
    pub free_page_reporting: bool,
    /// Guest-physical `(start, length)` ranges the guest may give back:
    /// its usable RAM (the e820 RAM entries). Anything else it names is
    /// refused.
    pub usable: Vec<(u64, u64)>,
}

/// Told when the driver changes `actual`, the number of pages in the
/// balloon (also when a device reset empties it).
pub trait BalloonListener: Send + Sync {
    /// `actual` is now `pages`.
    fn actual_changed(&self, pages: u32);
}

/// Counts of what the device did since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages discarded from the inflate queue.
    pub inflated_pages: u64,
    /// Pages the guest took back on the deflate queue.
    pub deflated_pages: u64,
    /// Bytes discarded from free page reports.
    pub reported_bytes: u64,
    /// Pages refused (outside usable RAM, or the host could not discard
    /// them).
    pub refused_pages: u64,
}

struct Active {
    registrations: Registrations,
    interrupt: Arc<Interrupt>,
    worker: Arc<Mutex<BalloonWorker>>,
}

/// A virtio-balloon device.
pub struct Balloon {
    config: BalloonConfig,
    acked_features: u64,
    num_pages: u32,
    actual: u32,
    listener: Option<Arc<dyn BalloonListener>>,
    counters: Arc<Counters>,
    queue_sizes: Vec<u16>,
    event_loop: EventLoop,
    active: Option<Active>,
}

impl Balloon {
    /// A balloon with an empty target; its queues will be served on
    /// `event_loop`.
    pub fn new(config: BalloonConfig, event_loop: EventLoop) -> Self {
        let queues = if config.free_page_reporting { 3 } else { 2 };
        Balloon {
            config,
            acked_features: 0,
            num_pages: 0,
            actual: 0,
            listener: None,
            counters: Arc::new(Counters::default()),
            queue_sizes: vec![QUEUE_SIZE; queues],
            event_loop,
            active: None,
        }
    }

    /// Tells `listener` about every later change of `actual`.
    pub fn set_listener(&mut self, listener: Arc<dyn BalloonListener>) {
        self.listener = Some(listener);
    }

    /// Sets `num_pages`, the number of 4 KiB pages the guest should put in
    /// the balloon, and tells an active driver with a configuration change
    /// interrupt (sent even when the value does not change, as QEMU does).
    /// A driver that is not running yet reads it when it starts.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.num_pages = pages;
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }

    /// The target (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// The pages the driver says are in the balloon (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// What the device did so far.
    pub fn stats(&self) -> BalloonStats {
        let c = &self.counters;
        BalloonStats {
            inflated_pages: c.inflated.load(Ordering::Relaxed),
            deflated_pages: c.deflated.load(Ordering::Relaxed),
            reported_bytes: c.reported.load(Ordering::Relaxed),
            refused_pages: c.refused.load(Ordering::Relaxed),
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[CONFIG_NUM_PAGES..CONFIG_NUM_PAGES + 4].copy_from_slice(&self.num_pages.to_le_bytes());
        c[CONFIG_ACTUAL..CONFIG_ACTUAL + 4].copy_from_slice(&self.actual.to_le_bytes());
        c
    }

    fn set_actual(&mut self, pages: u32) {
        if pages != self.actual {
            self.actual = pages;
            if let Some(l) = &self.listener {
                l.actual_changed(pages);
            }
        }
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC);
        if self.config.deflate_on_oom {
            f |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.config.free_page_reporting {
            f |= 1 << VIRTIO_BALLOON_F_REPORTING;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` is writable; writes elsewhere are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.actual.to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|a| usize::try_from(a).ok())
                .and_then(|a| a.checked_sub(CONFIG_ACTUAL))
                .filter(|&a| a < 4);
            match at {
                Some(a) => actual[a] = b,
                None => log::debug!("virtio-balloon: write to read-only config byte ignored"),
            }
        }
        self.set_actual(u32::from_le_bytes(actual));
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
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        let mut kinds = vec![QueueKind::Inflate, QueueKind::Deflate];
        if self.acked(VIRTIO_BALLOON_F_REPORTING) {
            kinds.push(QueueKind::Report);
        }
        // Queues the driver does not use (reporting without the feature)
        // are left alone.
        let mut queues = queues;
        queues.truncate(kinds.len());
        let (used_queues, evts) = split_queues(queues, kinds.len())?;
        let worker = Arc::new(Mutex::new(BalloonWorker {
            discarder: Discarder::new(mem.clone(), &self.config.usable),
            qs: QueueSet::new("virtio-balloon", mem, interrupt.clone(), used_queues),
            kinds,
            counters: self.counters.clone(),
        }));
        let mut registrations = Registrations::new(&self.event_loop);
        registrations.add_queues(&worker, evts, |w: &mut BalloonWorker, q| w.process(q))?;
        self.active = Some(Active {
            registrations,
            interrupt,
            worker,
        });
        Ok(())
    }

    /// Stops the queues; the balloon is empty for a reset driver (`actual`
    /// becomes 0), the target stays.
    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            active.registrations.clear();
        }
        self.acked_features = 0;
        self.set_actual(0);
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| crate::lock(&a.worker).qs.states())
    }

    fn save_extra(&self) -> DeviceExtra {
        DeviceExtra::Balloon {
            num_pages: self.num_pages,
            actual: self.actual,
        }
    }

    fn restore_extra(&mut self, extra: &DeviceExtra) -> Result<(), String> {
        match extra {
            DeviceExtra::Balloon { num_pages, actual } => {
                self.num_pages = *num_pages;
                self.set_actual(*actual);
                Ok(())
            }
            other => Err(format!("virtio-balloon: unexpected state {other:?}")),
        }
    }
}
