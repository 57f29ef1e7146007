//! virtio-console with a single port (no MULTIPORT feature): queue 0 is the
//! receive queue (host to guest), queue 1 the transmit queue (guest to host).
//!
//! Host input that arrives while the guest has posted no receive buffers is
//! kept (up to [`INPUT_BUFFER_LIMIT`] bytes, then dropped with a log line)
//! and delivered once buffers show up.

mod backend;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use backend::{ConsoleBackend, ConsoleError, FileBackend, InputSink, UnixSocketBackend};

use crate::chain::{descs_in_memory, Cursor, Desc};
use crate::snapshot::DeviceExtra;
use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{
    lock, read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_CONSOLE,
    VIRTIO_F_VERSION_1,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most host input kept while the guest has no receive buffers.
pub const INPUT_BUFFER_LIMIT: usize = 64 << 10;
/// Most bytes taken from one transmit chain (the rest is dropped).
pub const MAX_TX_PER_CHAIN: usize = 1 << 20;
/// Columns reported in the configuration space.
pub const DEFAULT_COLS: u16 = 80;
/// Rows reported in the configuration space.
pub const DEFAULT_ROWS: u16 = 25;

const RXQ: usize = 0;
const TXQ: usize = 1;
/// Chains served per handler call before yielding to other devices.
const BUDGET: usize = 256;

/// State shared by the queue handlers and the input sink.
struct Shared {
    pending: VecDeque<u8>,
    dropping: bool,
    active: Option<QueueSet>,
}

impl Shared {
    /// Queues host input, dropping what exceeds the limit.
    fn push_input(&mut self, data: &[u8]) {
        let room = INPUT_BUFFER_LIMIT.saturating_sub(self.pending.len());
        let take = room.min(data.len());
        self.pending.extend(&data[..take]);
        if take < data.len() {
            if !self.dropping {
                log::warn!(
                    "virtio-console: guest not reading input; dropping {} bytes (and more until it does)",
                    data.len() - take
                );
            }
            self.dropping = true;
        }
    }

    /// Moves pending input into the guest's receive buffers.
    fn deliver(&mut self) {
        let Some(qs) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while !self.pending.is_empty() {
            let Some(chain) = qs.pop(RXQ) else {
                break;
            };
            let writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
            let mut written = 0usize;
            if descs_in_memory(&qs.mem, &writable) {
                let mut cursor = Cursor::new(&qs.mem, &writable);
                let (a, b) = self.pending.as_slices();
                for part in [a, b] {
                    match cursor.write(part) {
                        Ok(n) => written += n,
                        Err(_) => break,
                    }
                    if cursor.remaining() == 0 {
                        break;
                    }
                }
            } else {
                log::warn!("virtio-console: receive buffer outside guest RAM");
            }
            self.pending.drain(..written);
            if !qs.add_used(RXQ, chain.head, written as u32) {
                break;
            }
            used = true;
        }
        if self.pending.is_empty() {
            self.dropping = false;
        }
        if used {
            qs.interrupt.signal_used_queue();
        }
    }
}

/// What the queue handlers work on.
struct ConsoleWorker {
    shared: Arc<Mutex<Shared>>,
    backend: Arc<Mutex<Box<dyn ConsoleBackend>>>,
}

impl ConsoleWorker {
    fn handle(&mut self, queue: usize) -> bool {
        let mut shared = lock(&self.shared);
        if queue == RXQ {
            shared.deliver();
            return false;
        }
        let Some(qs) = shared.active.as_mut() else {
            return false;
        };
        let mut served = 0;
        let mut buf = vec![0u8; 4096];
        while served < BUDGET {
            let Some(chain) = qs.pop(TXQ) else {
                break;
            };
            let readable: Vec<Desc> = chain
                .descs
                .iter()
                .filter(|d| !d.writable)
                .copied()
                .collect();
            if descs_in_memory(&qs.mem, &readable) {
                let mut cursor = Cursor::new(&qs.mem, &readable);
                let mut total = 0usize;
                while total < MAX_TX_PER_CHAIN {
                    match cursor.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            lock(&self.backend).write(&buf[..n]);
                            total += n;
                        }
                    }
                }
            } else {
                log::warn!("virtio-console: transmit buffer outside guest RAM");
            }
            if !qs.add_used(TXQ, chain.head, 0) {
                break;
            }
            served += 1;
        }
        if served > 0 {
            qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !qs.is_broken()
    }
}

/// A virtio-console device with one port.
pub struct Console {
    shared: Arc<Mutex<Shared>>,
    backend: Arc<Mutex<Box<dyn ConsoleBackend>>>,
    event_loop: EventLoop,
    registrations: Option<Registrations>,
    config: [u8; 12],
}

impl Console {
    /// Creates the device and starts taking host input from `backend`
    /// (buffered until the guest driver is up); queues and back-end events
    /// are served on `event_loop`.
    pub fn new(
        backend: Box<dyn ConsoleBackend>,
        event_loop: EventLoop,
    ) -> Result<Self, ConsoleError> {
        let shared = Arc::new(Mutex::new(Shared {
            pending: VecDeque::new(),
            dropping: false,
            active: None,
        }));
        let backend = Arc::new(Mutex::new(backend));
        let weak: Weak<Mutex<Shared>> = Arc::downgrade(&shared);
        let sink: InputSink = Arc::new(move |data: &[u8]| {
            if let Some(shared) = weak.upgrade() {
                let mut s = lock(&shared);
                s.push_input(data);
                s.deliver();
            }
        });
        lock(&backend).start(&event_loop, sink)?;
        let mut config = [0u8; 12];
        config[0..2].copy_from_slice(&DEFAULT_COLS.to_le_bytes());
        config[2..4].copy_from_slice(&DEFAULT_ROWS.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes()); // max_nr_ports
        Ok(Console {
            shared,
            backend,
            event_loop,
            registrations: None,
            config,
        })
    }

    /// Bytes of host input waiting for guest receive buffers.
    pub fn pending_input(&self) -> usize {
        lock(&self.shared).pending.len()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered.
        log::debug!(
            "virtio-console: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        if self.registrations.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let (queues, evts) = split_queues(queues, 2)?;
        // Look at the receive queue once at start: input may be waiting.
        if let Some(rx) = evts.first() {
            rx.write(1)?;
        }
        lock(&self.shared).active = Some(QueueSet::new("virtio-console", mem, interrupt, queues));
        let worker = Arc::new(Mutex::new(ConsoleWorker {
            shared: self.shared.clone(),
            backend: self.backend.clone(),
        }));
        let mut registrations = Registrations::new(&self.event_loop);
        if let Err(e) =
            registrations.add_queues(&worker, evts, |w: &mut ConsoleWorker, q| w.handle(q))
        {
            drop(registrations);
            lock(&self.shared).active = None;
            return Err(e.into());
        }
        self.registrations = Some(registrations);
        Ok(())
    }

    fn reset(&mut self) {
        // Stop the handlers first (without holding `shared`, which they take).
        if let Some(mut r) = self.registrations.take() {
            r.clear();
        }
        lock(&self.shared).active = None;
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        lock(&self.shared).active.as_ref().map(QueueSet::states)
    }

    fn save_extra(&self) -> DeviceExtra {
        DeviceExtra::Console {
            pending: lock(&self.shared).pending.iter().copied().collect(),
        }
    }

    fn restore_extra(&mut self, extra: &DeviceExtra) -> Result<(), String> {
        match extra {
            DeviceExtra::Console { pending } => {
                let mut shared = lock(&self.shared);
                shared.pending.clear();
                shared.push_input(pending);
                Ok(())
            }
            other => Err(format!("virtio-console: unexpected state {other:?}")),
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.reset();
        lock(&self.backend).stop();
    }
}

#[cfg(test)]
mod tests;
