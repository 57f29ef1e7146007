//! The virtio-mmio transport, version 2 (modern devices only), as laid out
//! in the virtio 1.x specification ("Virtio Over MMIO").
//!
//! Registers are 32 bits wide and only 32-bit aligned accesses reach them
//! (anything else reads as zero and is ignored on write); the device
//! configuration space starts at [`CONFIG_SPACE_OFFSET`] and accepts any
//! access width. The VMM should register each [`MmioTransport::queue_evts`]
//! entry as a KVM ioeventfd on `base + NOTIFY_REG_OFFSET` (4 bytes, datamatch
//! = queue index) and [`MmioTransport::interrupt_evt`] as an irqfd; writes to
//! QueueNotify that still reach the transport signal the same eventfds.

use std::sync::{Arc, Mutex};

use address_space::{BusDevice, GuestMemoryMmap};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{
    lock, Interrupt, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};

/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (for ioeventfd registration).
pub const NOTIFY_REG_OFFSET: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
/// Offset of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_CONFIG);
/// MagicValue: "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Version of the register layout (2 = virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// VendorID: "AVRT" in little endian.
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"AVRT");

/// Most queues a device may have.
const MAX_QUEUES: usize = 64;

// Register offsets (virtio 1.x, 4.2.2).
/// A register offset of linux/virtio_mmio.h (virtio-bindings) as a bus offset.
const fn mmio_reg(offset: u32) -> u64 {
    offset as u64
}

const REG_MAGIC: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_MAGIC_VALUE);
const REG_VERSION: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_VERSION);
const REG_DEVICE_ID: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_DEVICE_ID);
const REG_VENDOR_ID: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_VENDOR_ID);
const REG_DEVICE_FEATURES: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES);
const REG_DEVICE_FEATURES_SEL: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL);
const REG_DRIVER_FEATURES: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES);
const REG_DRIVER_FEATURES_SEL: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL);
const REG_QUEUE_SEL: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_SEL);
const REG_QUEUE_NUM_MAX: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NUM_MAX);
const REG_QUEUE_NUM: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NUM);
const REG_QUEUE_READY: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_READY);
const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INTERRUPT_STATUS);
const REG_INTERRUPT_ACK: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INTERRUPT_ACK);
const REG_STATUS: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS);
const REG_QUEUE_DESC_LOW: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_LOW);
const REG_QUEUE_DESC_HIGH: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH);
const REG_QUEUE_DRIVER_LOW: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW);
const REG_QUEUE_DRIVER_HIGH: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH);
const REG_QUEUE_DEVICE_LOW: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_USED_LOW);
const REG_QUEUE_DEVICE_HIGH: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_USED_HIGH);
const REG_SHM_SEL: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_SHM_SEL);
const REG_SHM_LEN_LOW: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_SHM_LEN_LOW);
const REG_SHM_LEN_HIGH: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_SHM_LEN_HIGH);
const REG_SHM_BASE_LOW: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_SHM_BASE_LOW);
const REG_SHM_BASE_HIGH: u64 = mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_SHM_BASE_HIGH);
const REG_CONFIG_GENERATION: u64 =
    mmio_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_CONFIG_GENERATION);

/// Errors while creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device declares no queue, or more than the transport supports.
    #[error("device declares {0} queues (must be 1..={MAX_QUEUES})")]
    QueueCount(usize),
    /// A queue's maximum size is not a power of two in 1..=32768.
    #[error("queue {index} has an invalid maximum size {size}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// The size declared by the device.
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

/// Which half of a 64-bit queue address a register holds.
#[derive(Clone, Copy)]
enum Half {
    Low,
    High,
}

/// A virtio device behind a virtio-mmio register block.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    device_type: u32,
    queues: Vec<Queue>,
    /// Set when the driver wrote an invalid size or misaligned address.
    queue_bad: Vec<bool>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register block; `mem` is the
    /// guest RAM its queues live in.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, sizes, features) = {
            let d = lock(&device);
            (d.device_type(), d.queue_max_sizes().to_vec(), d.features())
        };
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(MmioError::QueueCount(sizes.len()));
        }
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NotModern);
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize { index, size })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            device_type,
            queue_bad: vec![false; queues.len()],
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
        })
    }

    /// One notification eventfd per queue, in queue order: register each as
    /// a KVM ioeventfd at `base + NOTIFY_REG_OFFSET` with datamatch = index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The eventfd to register as the device's KVM irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.irq_evt()
    }

    /// The interrupt state shared with the device.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The device model.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device has been activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<(&mut Queue, &mut bool)> {
        let i = self.queue_sel as usize;
        self.queues.get_mut(i).zip(self.queue_bad.get_mut(i))
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = lock(&self.device).features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |(q, _)| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |(q, _)| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: their length reads as all ones.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                log::debug!("virtio-mmio: read of write-only/unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.write_queue(|q, bad| {
                let size = u16::try_from(value).ok();
                if size.is_none_or(|s| q.try_set_size(s).is_err()) {
                    log::warn!("virtio-mmio: invalid queue size {value}");
                    *bad = true;
                }
            }),
            REG_QUEUE_READY => self.write_queue(|q, _| q.set_ready(value == 1)),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            REG_QUEUE_DESC_LOW => self.write_queue(|q, bad| set_desc(q, bad, Half::Low, value)),
            REG_QUEUE_DESC_HIGH => self.write_queue(|q, bad| set_desc(q, bad, Half::High, value)),
            REG_QUEUE_DRIVER_LOW => self.write_queue(|q, bad| set_avail(q, bad, Half::Low, value)),
            REG_QUEUE_DRIVER_HIGH => {
                self.write_queue(|q, bad| set_avail(q, bad, Half::High, value))
            }
            REG_QUEUE_DEVICE_LOW => self.write_queue(|q, bad| set_used(q, bad, Half::Low, value)),
            REG_QUEUE_DEVICE_HIGH => self.write_queue(|q, bad| set_used(q, bad, Half::High, value)),
            REG_SHM_SEL => {}
            _ => log::debug!("virtio-mmio: write to read-only/unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
            log::warn!("virtio-mmio: DriverFeatures written outside feature negotiation");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            // Higher words: no device offers such features; a set bit there
            // is a request for an unoffered feature.
            sel => {
                if value != 0 {
                    log::warn!("virtio-mmio: driver features word {sel} = {value:#x} refused");
                    self.driver_features |= 1 << 63;
                }
            }
        }
    }

    /// Applies `f` to the selected queue while the driver may configure it.
    fn write_queue(&mut self, f: impl FnOnce(&mut Queue, &mut bool)) {
        if self.status & (STATUS_DRIVER_OK | STATUS_FAILED) != 0 {
            log::warn!("virtio-mmio: queue configured after DRIVER_OK; ignored");
            return;
        }
        match self.selected_queue() {
            Some((q, bad)) => f(q, bad),
            None => log::debug!("virtio-mmio: write to non-existent queue"),
        }
    }

    fn notify(&self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => log::debug!("virtio-mmio: notify for non-existent queue {index}"),
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let value = value & !STATUS_DEVICE_NEEDS_RESET;
        if value & self.status != self.status {
            log::warn!(
                "virtio-mmio: driver tried to clear status bits ({:#x} -> {value:#x}); ignored",
                self.status
            );
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FAILED != 0 {
            log::warn!(
                "virtio-mmio: driver reported FAILED for device {}",
                self.device_type
            );
            self.status |= STATUS_FAILED;
        }
        if new & STATUS_ACKNOWLEDGE != 0 {
            self.status |= STATUS_ACKNOWLEDGE;
        }
        if new & STATUS_DRIVER != 0 && self.status & STATUS_ACKNOWLEDGE != 0 {
            self.status |= STATUS_DRIVER;
        }
        if new & STATUS_FEATURES_OK != 0 {
            self.negotiate_features();
        }
        if new & STATUS_DRIVER_OK != 0 {
            self.driver_ok();
        }
    }

    fn negotiate_features(&mut self) {
        if self.status & STATUS_DRIVER == 0 {
            log::warn!("virtio-mmio: FEATURES_OK before DRIVER; ignored");
            return;
        }
        let mut device = lock(&self.device);
        let offered = device.features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 {
            log::warn!("virtio-mmio: driver accepted features not offered: {unknown:#x}");
            return;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            log::warn!("virtio-mmio: legacy drivers are not supported (no VERSION_1)");
            return;
        }
        device.ack_features(self.driver_features);
        self.status |= STATUS_FEATURES_OK;
    }

    fn driver_ok(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_FAILED != 0 {
            log::warn!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored");
            return;
        }
        self.status |= STATUS_DRIVER_OK;
        if let Err(e) = self.activate() {
            log::error!(
                "virtio-mmio: cannot activate device type {}: {e}",
                self.device_type
            );
            self.interrupt.set_needs_reset();
        }
    }

    fn activate(&mut self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            if self.queue_bad[i] {
                return Err(format!("queue {i} was given an invalid size or address"));
            }
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {i} lies outside guest memory"));
            }
        }
        let mut handed = Vec::with_capacity(self.queues.len());
        for (q, evt) in self.queues.iter().zip(&self.queue_evts) {
            let copy = Queue::try_from(q.state()).map_err(|e| e.to_string())?;
            handed.push((copy, evt.try_clone().map_err(|e| e.to_string())?));
        }
        lock(&self.device)
            .activate(self.mem.clone(), self.interrupt.clone(), handed)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_bad.fill(false);
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.activated = false;
    }
}

fn compose(old: u64, half: Half, value: u32) -> GuestAddress {
    GuestAddress(match half {
        Half::Low => (old & !0xffff_ffff) | u64::from(value),
        Half::High => (old & 0xffff_ffff) | (u64::from(value) << 32),
    })
}

fn set_desc(q: &mut Queue, bad: &mut bool, half: Half, value: u32) {
    if q.try_set_desc_table_address(compose(q.desc_table(), half, value))
        .is_err()
    {
        log::warn!("virtio-mmio: misaligned descriptor table address");
        *bad = true;
    }
}

fn set_avail(q: &mut Queue, bad: &mut bool, half: Half, value: u32) {
    if q.try_set_avail_ring_address(compose(q.avail_ring(), half, value))
        .is_err()
    {
        log::warn!("virtio-mmio: misaligned driver area address");
        *bad = true;
    }
}

fn set_used(q: &mut Queue, bad: &mut bool, half: Half, value: u32) {
    if q.try_set_used_ring_address(compose(q.used_ring(), half, value))
        .is_err()
    {
        log::warn!("virtio-mmio: misaligned device area address");
        *bad = true;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

mod snapshot;
#[cfg(test)]
mod tests;
