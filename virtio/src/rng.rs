//! virtio-rng: fills the guest's device-writable buffers with bytes read
//! from a host entropy source (by default `/dev/urandom`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{Chain, Cursor, Desc};
use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{ActivateError, Interrupt, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};

/// Default entropy source.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes delivered per request.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;
/// Requests served per handler call before yielding to other devices.
const BUDGET: usize = 64;

/// Errors while creating an rng device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The entropy source could not be opened.
    #[error("cannot open entropy source {path}: {source}")]
    Open {
        /// The source path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

struct RngWorker {
    qs: QueueSet,
    source: Arc<Mutex<File>>,
    buf: Vec<u8>,
}

impl RngWorker {
    fn process(&mut self) -> bool {
        let mut served = 0;
        while served < BUDGET {
            let Some(chain) = self.qs.pop(0) else {
                break;
            };
            let len = self.fill(&chain);
            if !self.qs.add_used(0, chain.head, len) {
                break;
            }
            served += 1;
        }
        if served > 0 {
            self.qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !self.qs.is_broken()
    }

    /// Fills the writable buffers of `chain`; returns the bytes written.
    fn fill(&mut self, chain: &Chain) -> u32 {
        let writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
        let want = usize::try_from(chain.writable_len())
            .unwrap_or(usize::MAX)
            .min(MAX_BYTES_PER_REQUEST);
        if want == 0 {
            return 0;
        }
        let buf = &mut self.buf[..want];
        let got = match crate::lock(&self.source).read(buf) {
            Ok(n) => n,
            Err(e) => {
                log::error!("virtio-rng: cannot read entropy: {e}");
                0
            }
        };
        let mut cursor = Cursor::new(&self.qs.mem, &writable);
        match cursor.write(&buf[..got]) {
            Ok(n) => n as u32,
            Err(e) => {
                log::warn!("virtio-rng: request buffer outside guest RAM: {e}");
                0
            }
        }
    }
}

/// A virtio-rng device.
pub struct Rng {
    path: PathBuf,
    source: Arc<Mutex<File>>,
    event_loop: EventLoop,
    active: Option<(Registrations, Arc<Mutex<RngWorker>>)>,
}

impl Rng {
    /// Opens the entropy source `path` (use [`DEFAULT_RNG_SOURCE`] when the
    /// user gave none); requests will be served on `event_loop`.
    pub fn new(path: &Path, event_loop: EventLoop) -> Result<Self, RngError> {
        let source = File::open(path).map_err(|source| RngError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Rng {
            path: path.to_path_buf(),
            source: Arc::new(Mutex::new(source)),
            event_loop,
            active: None,
        })
    }

    /// Path of the entropy source.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

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
        let worker = Arc::new(Mutex::new(RngWorker {
            qs: QueueSet::new("virtio-rng", mem, interrupt, queues),
            source: self.source.clone(),
            buf: vec![0u8; MAX_BYTES_PER_REQUEST],
        }));
        let mut registrations = Registrations::new(&self.event_loop);
        registrations.add_queues(&worker, evts, |w: &mut RngWorker, _| w.process())?;
        self.active = Some((registrations, worker));
        Ok(())
    }

    fn reset(&mut self) {
        if let Some((mut registrations, _worker)) = self.active.take() {
            registrations.clear();
        }
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|(_, w)| crate::lock(w).qs.states())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn start(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        path: &Path,
    ) -> (EventLoop, Rng, Arc<Interrupt>, EventFd) {
        let el = EventLoop::new("rng-test").unwrap();
        let mut rng = Rng::new(path, el.clone()).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        rng.activate(
            mem.clone(),
            irq.clone(),
            vec![(vq.create_queue().unwrap(), evt.try_clone().unwrap())],
        )
        .unwrap();
        (el, rng, irq, evt)
    }

    #[test]
    fn delivers_source_bytes_across_buffers() {
        let dir = temp_dir("rng");
        let src = dir.join("entropy");
        let pattern: Vec<u8> = (0..200u32).map(|i| (i * 13 + 1) as u8).collect();
        std::fs::write(&src, &pattern).unwrap();
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let (el, _rng, irq, evt) = start(&mem, &vq, &src);
        write_chain(&vq, 0, &[(0x10_0000, 64, true), (0x20_0000, 36, true)]);
        publish(&vq, &[0]);
        evt.write(1).unwrap();
        assert!(wait_for(|| vq.used().idx().load() == 1));
        assert_eq!(used_elem(&vq, 0), (0, 100));
        let mut a = [0u8; 64];
        let mut b = [0u8; 36];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&a[..], &pattern[..64]);
        assert_eq!(&b[..], &pattern[64..100]);
        assert_ne!(irq.status(), 0);
        el.stop();
    }

    #[test]
    fn urandom_requests_are_bounded() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let (el, _rng, _irq, evt) = start(&mem, &vq, Path::new(DEFAULT_RNG_SOURCE));
        // 1 MiB of buffer: only 64 KiB is filled.
        write_chain(&vq, 0, &[(0x10_0000, 1 << 20, true)]);
        // Read-only buffers get nothing.
        write_chain(&vq, 1, &[(0x10_0000, 64, false)]);
        // A buffer outside RAM gets nothing, without harm.
        write_chain(&vq, 2, &[(MEM_SIZE - 8, 64, true)]);
        publish(&vq, &[0, 1, 2]);
        evt.write(1).unwrap();
        assert!(wait_for(|| vq.used().idx().load() == 3));
        assert_eq!(used_elem(&vq, 0).1, MAX_BYTES_PER_REQUEST as u32);
        assert_eq!(used_elem(&vq, 1).1, 0);
        assert_eq!(used_elem(&vq, 2).1, 0);
        let mut got = vec![0u8; MAX_BYTES_PER_REQUEST];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
        el.stop();
    }

    #[test]
    fn missing_source_is_an_error_and_reset_unregisters() {
        let el = EventLoop::new("rng-test2").unwrap();
        assert!(Rng::new(Path::new("/nonexistent/entropy"), el.clone()).is_err());
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QSIZE);
        let (el2, mut rng, _irq, _evt) = start(&mem, &vq, Path::new(DEFAULT_RNG_SOURCE));
        assert_eq!(el2.registrations(), 1);
        rng.reset();
        assert_eq!(el2.registrations(), 0);
        el.stop();
        el2.stop();
    }
}
