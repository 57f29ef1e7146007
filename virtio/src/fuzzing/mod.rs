//! Entry points for fuzzing what a guest (or a vhost-user back-end) can
//! feed the virtio code. Built only with the `fuzzing` feature (the
//! cargo-fuzz crate in `virtio/fuzz` enables it) and in unit tests, which
//! replay the seed corpus of every target.
//!
//! - [`Fuzzer::virtqueue`]: a simulated guest builds descriptor chains
//!   (addresses, lengths, flags, `next` and buffer bytes all from the
//!   input) and kicks the queues of a real, activated device; the device's
//!   own queue handlers run on a real event loop. After every kick the
//!   harness checks that the device wrote no guest memory outside the
//!   device-writable buffers and used rings, and that it came back (no
//!   hang). Input format: see [`virtqueue`](Fuzzer::virtqueue).
//! - [`Fuzzer::mmio`]: register reads and writes on a virtio-mmio
//!   transport holding a real device, mixed with guest memory writes, so
//!   queue set-up, DRIVER_OK and notifies reach the device.
//! - [`vhost_user_reply`]: a vhost-user back-end's replies to the
//!   frontend's handshake, start and stop.

mod devices;
mod guest;
mod mmio;
mod vhost_user;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use util::event_loop::{EventLoop, Token};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{lock, Interrupt};
pub use devices::Device;
use devices::{make_device, HostSide};
use guest::{check_writes, guest_memory, map_addr, snapshot_into, Allowed, GuestQueue, Input};
pub use vhost_user::vhost_user_reply;

/// How long a device may take to come back after a kick before the run
/// is reported as a hang.
const HANG_TIMEOUT: Duration = Duration::from_secs(10);
/// Most kicks and host events of one input that reach the device (each
/// costs a round trip to the event loop and a RAM comparison); later ones
/// are skipped.
const MAX_SETTLES: usize = 32;
/// Most rounds a device may keep working after a kick (each round serves
/// at least one chain; a queue holds at most 256 of them).
const MAX_IDLE_ROUNDS: usize = 512;

/// A no-op job on the event loop: once it ran, every handler woken before
/// it has run too (epoll reports ready descriptors in the order they
/// became ready, and the loop runs them one after the other).
struct Barrier {
    evt: Arc<EventFd>,
    done: Arc<(Mutex<u64>, Condvar)>,
    token: Option<Token>,
}

impl Barrier {
    fn new(event_loop: &EventLoop) -> io::Result<Self> {
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let done = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (e, d) = (evt.clone(), done.clone());
        let token = event_loop
            .add(
                evt.as_raw_fd(),
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    let _ = e.read();
                    *lock(&d.0) += 1;
                    d.1.notify_all();
                }),
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Barrier {
            evt,
            done,
            token: Some(token),
        })
    }

    /// Waits until the event loop ran everything woken so far.
    fn wait(&self) {
        let start = *lock(&self.done.0);
        let _ = self.evt.write(1);
        let mut n = lock(&self.done.0);
        let deadline = std::time::Instant::now() + HANG_TIMEOUT;
        while *n == start {
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "event loop did not come back within {HANG_TIMEOUT:?}: a device handler hangs"
            );
            n = self
                .done
                .1
                .wait_timeout(n, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Long-lived state of the virtio fuzz targets: an event loop the devices
/// run on and the host side of their back-ends. Create one per process
/// and reuse it for every input.
pub struct Fuzzer {
    event_loop: EventLoop,
    barrier: Barrier,
    host: HostSide,
    runs: AtomicU64,
}

impl Fuzzer {
    /// Starts the event loop and creates the back-ends' files under the
    /// system's shared-memory directory (or the temporary directory).
    pub fn new() -> io::Result<Self> {
        let event_loop =
            EventLoop::new("virtio-fuzz").map_err(|e| io::Error::other(e.to_string()))?;
        let barrier = Barrier::new(&event_loop)?;
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Ok(Fuzzer {
            host: HostSide::new(&base)?,
            event_loop,
            barrier,
            runs: AtomicU64::new(0),
        })
    }

    /// Inputs run so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs one virtqueue input against a fresh `device`.
    ///
    /// Byte 0: queue size `1 << min(b & 15, 8)`; byte 1: device variant
    /// (block: empty slot, read-write or read-only image; higher bits drop
    /// offered features). Then operations until the input ends, each an
    /// opcode byte (taken modulo 7) and its operands (little endian; `q`
    /// picks one of the queues the device kind drives):
    ///
    /// | op | operands | effect |
    /// |----|----------|--------|
    /// | 0 | q u8, idx u16, addr u64, len u32, flags u16, next u16 | writes a descriptor; `addr` with the top bit clear is taken modulo the RAM span |
    /// | 1 | addr u16, n u8, n bytes | writes guest RAM |
    /// | 2 | q u8, n u8, n × head u16 | appends heads to the available ring and publishes them |
    /// | 3 | q u8 | kicks the queue and waits for the device |
    /// | 4 | n u16, n bytes | host event: a received frame (net), console input, bytes on the vsock host sockets |
    /// | 5 | q u8, idx u16 | stores a raw available index |
    /// | 6 | addr u16, n u16, byte | fills guest RAM |
    ///
    /// Only the first 32 kicks and host events count. At the end every
    /// driven queue is kicked once more, then the device is reset. Panics when the device panics, hangs, or writes guest
    /// memory it was not given.
    pub fn virtqueue(&self, device: Device, data: &[u8]) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.run_virtqueue(device, data);
        // Host ends of connections the device made and nobody accepted.
        let mut rest = Vec::new();
        self.host.accept_vsock(&mut rest);
    }

    /// [`Fuzzer::virtqueue`], reporting the final ring state (`None` when
    /// the device could not be set up or refused activation).
    fn run_virtqueue(&self, device: Device, data: &[u8]) -> Option<Report> {
        let mut input = Input::new(data);
        let size = 1u16 << (input.u8() & 15).min(8);
        let mode = input.u8();
        let (mut dev, mut backend, features) =
            make_device(device, mode, &self.host, &self.event_loop).ok()?;
        let mem = guest_memory();
        let maxes = dev.queue_max_sizes().to_vec();
        let gqs: Vec<GuestQueue> = (0..maxes.len()).map(|i| GuestQueue::new(i, size)).collect();
        let irq = Arc::new(Interrupt::new().ok()?);
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for (gq, &max) in gqs.iter().zip(&maxes) {
            let q = gq.device_queue(max)?;
            let evt = EventFd::new(EFD_NONBLOCK).ok()?;
            let clone = evt.try_clone().ok()?;
            kicks.push(evt);
            queues.push((q, clone));
        }
        dev.ack_features(features);
        let mut allowed = Allowed::default();
        for gq in &gqs {
            allowed.add_used_ring(gq.used, gq.size);
        }
        if dev.activate(mem.clone(), irq.clone(), queues).is_err() {
            dev.reset();
            return None;
        }
        // Activation may already deliver (console input, host clients).
        self.barrier.wait();
        let driven = device.driven_queues();
        let mut run = Run {
            mem: &mem,
            gqs: &gqs,
            kicks: &kicks,
            irq: &irq,
            allowed,
            fuzzer: self,
            before: Vec::with_capacity(guest::RAM_BYTES),
            after: Vec::with_capacity(guest::RAM_BYTES),
            settles: 0,
        };
        while !input.is_empty() {
            let pick = |b: u8| driven[usize::from(b) % driven.len()];
            match input.u8() % 7 {
                0 => {
                    let q = pick(input.u8());
                    let idx = input.u16();
                    let mut d = [0u8; 16];
                    d[0..8].copy_from_slice(&map_addr(input.u64()).to_le_bytes());
                    d[8..12].copy_from_slice(&input.u32().to_le_bytes());
                    d[12..14].copy_from_slice(&input.u16().to_le_bytes());
                    d[14..16].copy_from_slice(&input.u16().to_le_bytes());
                    gqs[q].set_desc(&mem, idx, d);
                }
                1 => {
                    let addr = input.u16();
                    let n = input.u8();
                    write_ram(&mem, addr, input.bytes(usize::from(n)));
                }
                2 => {
                    let q = pick(input.u8());
                    let n = input.u8();
                    let heads: Vec<u16> = (0..n).map(|_| input.u16()).collect();
                    gqs[q].publish(&mem, &heads);
                }
                3 => {
                    let q = pick(input.u8());
                    run.kick(&[q]);
                }
                4 => {
                    let n = input.u16();
                    let bytes = input.bytes(usize::from(n));
                    run.settle(|| backend.host_event(&self.host, bytes));
                }
                5 => {
                    let q = pick(input.u8());
                    gqs[q].set_avail_idx(&mem, input.u16());
                }
                _ => {
                    let addr = input.u16();
                    let n = input.u16();
                    let byte = input.u8();
                    let end = (usize::from(addr) + usize::from(n)).min(0x1_0000);
                    let fill = vec![byte; end - usize::from(addr)];
                    write_ram(&mem, addr, &fill);
                }
            }
        }
        run.settles = run.settles.min(MAX_SETTLES - 1);
        run.kick(driven);
        dev.reset();
        drop(backend);
        Some(Report {
            used: gqs.iter().map(|gq| gq.used_idx(&mem)).collect(),
            needs_reset: irq.needs_reset(),
        })
    }

    /// Runs one MMIO input; see [`mmio::run`] for the format.
    pub fn mmio(&self, data: &[u8]) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        mmio::run(self, data);
    }

    /// Runs one snapshot-restore input (see `mmio::run_restore`): a
    /// window's saved state, as a state file holds it, restored into a
    /// fresh transport, then register accesses.
    pub fn transport_state(&self, data: &[u8]) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        mmio::run_restore(self, data);
    }
}

impl Drop for Fuzzer {
    fn drop(&mut self) {
        if let Some(t) = self.barrier.token.take() {
            let _ = self.event_loop.remove(t);
        }
        self.event_loop.stop();
    }
}

/// The state a virtqueue run ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    /// Used index of each queue.
    used: Vec<u16>,
    /// Whether the device gave up on its queues (DEVICE_NEEDS_RESET).
    needs_reset: bool,
}

/// One run's guest state while operations execute.
struct Run<'a> {
    mem: &'a address_space::GuestMemoryMmap,
    gqs: &'a [GuestQueue],
    kicks: &'a [EventFd],
    irq: &'a Interrupt,
    allowed: Allowed,
    fuzzer: &'a Fuzzer,
    /// Guest RAM before and after the device ran (reused buffers).
    before: Vec<u8>,
    after: Vec<u8>,
    /// Kicks and host events so far.
    settles: usize,
}

impl Run<'_> {
    /// Runs `f` (something that wakes the device) and waits for the
    /// device, checking what it wrote.
    fn settle(&mut self, f: impl FnOnce()) {
        if self.settles == MAX_SETTLES {
            return;
        }
        self.settles += 1;
        snapshot_into(self.mem, &mut self.before);
        self.allowed.begin();
        for gq in self.gqs {
            self.allowed.add_queue(&self.before, gq);
        }
        f();
        self.wait_idle();
        if !self.allowed.self_modifying() {
            snapshot_into(self.mem, &mut self.after);
            check_writes(&self.before, &self.after, &self.allowed);
        }
    }

    /// Waits until the device stopped working on its queues. A handler
    /// that served its budget re-arms its queue and runs again; the
    /// re-arm may land just behind a barrier, so the device counts as idle
    /// once every available chain was used, it gave up on its queues, or
    /// two barrier rounds in a row saw its used rings stand still.
    fn wait_idle(&mut self) {
        let used_now = |r: &Self| -> Vec<u16> { r.gqs.iter().map(|g| g.used_idx(r.mem)).collect() };
        let mut last = used_now(self);
        let mut still = 0;
        for _ in 0..MAX_IDLE_ROUNDS {
            self.fuzzer.barrier.wait();
            let used = used_now(self);
            let all_taken = self
                .gqs
                .iter()
                .zip(&used)
                .all(|(g, &u)| g.avail_idx(self.mem) == u);
            if all_taken || self.irq.needs_reset() {
                return;
            }
            if used == last {
                still += 1;
                if still == 2 {
                    return;
                }
            } else {
                still = 0;
            }
            last = used;
        }
        panic!("the device kept serving its queues for {MAX_IDLE_ROUNDS} rounds");
    }

    /// Notifies queues `qs` and waits for the device.
    fn kick(&mut self, qs: &[usize]) {
        let kicks = self.kicks;
        self.settle(|| {
            for &q in qs {
                if let Some(k) = kicks.get(q) {
                    let _ = k.write(1);
                }
            }
        });
    }
}

/// Writes `bytes` at `addr`, cut at the end of the first 64 KiB.
fn write_ram(mem: &address_space::GuestMemoryMmap, addr: u16, bytes: &[u8]) {
    use vm_memory::Bytes;
    let n = bytes.len().min(0x1_0000 - usize::from(addr));
    let _ = mem.write_slice(&bytes[..n], vm_memory::GuestAddress(u64::from(addr)));
}
