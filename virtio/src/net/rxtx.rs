//! Frame movement between the queues of an active virtio-net device and
//! its back-end, on the device's event loop thread.
//!
//! Transmit: every chain of the transmit queue is consumed; well-formed
//! ones (device-readable only, header plus a frame of at most
//! [`MAX_FRAME_LEN`] bytes, inside guest RAM) are sent, others dropped with
//! a log line.
//!
//! Receive: the back-end descriptor is watched only while it is useful. A
//! readable back-end with no receive buffer posted unregisters itself (the
//! frames stay in the kernel's queue); the next receive queue notification
//! registers it again. A receive chain taken from the ring while no frame
//! turned out to be waiting is kept for the next frame.
//!
//! Limits ([`DirLimit`]): a transmit chain the limiter refuses is kept and
//! the queue waits for the timer. On receive a frame's length is known
//! only once it is read: a frame the limiter refuses is held in the
//! receive buffer (with its chain), the back-end is no longer watched (the
//! following frames wait in the kernel's queue, nothing is dropped) and
//! the timer, when it fires, delivers the held frame and watches the
//! back-end again.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use util::event_loop::{EventLoop, Token};

use super::limit::{DirLimit, NetLimits};
use super::{FrameIo, ETH_HLEN, MAX_FRAME_LEN, MAX_TX_CHAIN_LEN, NET_HDR_LEN, RXQ, TXQ};
use crate::chain::{descs_in_memory, Chain, Cursor, Desc};
use crate::lock;
use crate::rate_limiter::Throttle;
use crate::worker::QueueSet;

/// Frames moved per handler call before yielding to other devices.
const BUDGET: usize = 256;

/// Counts dropped frames and unusable chains of one direction and logs the
/// 1st, 2nd, 4th, 8th... occurrence, so that a hostile or broken guest (or
/// a down host link) cannot flood the log.
struct DropLog {
    dir: &'static str,
    count: u64,
}

impl DropLog {
    fn hit(&mut self, name: &str, what: fmt::Arguments<'_>) {
        self.count = self.count.saturating_add(1);
        if self.count.is_power_of_two() {
            log::warn!(
                "virtio-net: {name}: {}: {what} ({} {} problems so far)",
                self.dir,
                self.count,
                self.dir
            );
        }
    }
}

/// Why a transmit chain was not sent.
#[derive(Debug, thiserror::Error)]
enum TxDrop {
    #[error("device-writable buffer in a transmit chain")]
    WritableBuffer,
    #[error("chain of {0} bytes is shorter than header plus Ethernet header")]
    TooShort(u64),
    #[error("chain of {0} bytes exceeds {MAX_TX_CHAIN_LEN}")]
    TooLong(u64),
    #[error("buffer outside guest RAM")]
    OutsideMemory,
    #[error("back-end refused the frame: {0}")]
    Backend(io::Error),
}

/// The queue-processing side of an active network device.
pub(super) struct NetWorker {
    qs: QueueSet,
    io: Arc<dyn FrameIo>,
    event_loop: EventLoop,
    /// This worker, for the receive handler registered on the loop.
    me: Weak<Mutex<NetWorker>>,
    /// Registration of the back-end descriptor while receiving.
    rx_token: Option<Token>,
    /// A receive chain taken from the ring and not used yet.
    rx_chain: Option<Chain>,
    /// Set by reset: nothing may register again.
    stopped: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    rx_drops: DropLog,
    tx_drops: DropLog,
    /// Limits on frames handed to the guest.
    rx_limit: DirLimit,
    /// Length of a frame in `rx_buf` the receive limit has not let through
    /// yet (it goes to `rx_chain`).
    rx_held: Option<usize>,
    /// Limits on transmitted frames and bytes.
    tx_limit: DirLimit,
    /// A transmit chain the limiter has not let through yet.
    tx_pending: Option<Chain>,
}

/// A direction of the device, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Receive.
    Rx,
    /// Transmit.
    Tx,
}

impl NetWorker {
    /// The live queue state (snapshots).
    pub fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.qs.states()
    }

    pub fn new(
        qs: QueueSet,
        io: Arc<dyn FrameIo>,
        event_loop: EventLoop,
        limits: NetLimits,
        rx_throttle: Option<Throttle>,
        tx_throttle: Option<Throttle>,
    ) -> Arc<Mutex<Self>> {
        Arc::new_cyclic(|me| {
            Mutex::new(NetWorker {
                qs,
                io,
                event_loop,
                me: me.clone(),
                rx_token: None,
                rx_chain: None,
                stopped: false,
                rx_buf: vec![0u8; MAX_FRAME_LEN],
                tx_buf: vec![0u8; MAX_TX_CHAIN_LEN],
                rx_drops: DropLog {
                    dir: "rx",
                    count: 0,
                },
                tx_drops: DropLog {
                    dir: "tx",
                    count: 0,
                },
                rx_limit: DirLimit::new(limits.rx, rx_throttle),
                rx_held: None,
                tx_limit: DirLimit::new(limits.tx, tx_throttle),
                tx_pending: None,
            })
        })
    }

    /// Queue notification handler; true when transmit work is left over.
    pub fn handle_queue(&mut self, q: usize) -> bool {
        match q {
            RXQ => {
                self.start_reading();
                if self.rx_held.is_some() {
                    // A frame read earlier waits for this buffer.
                    self.process_rx();
                }
                false
            }
            TXQ => self.process_tx(),
            _ => false,
        }
    }

    /// Watches the back-end for frames (if not already watching).
    pub fn start_reading(&mut self) {
        if self.stopped || self.qs.is_broken() || self.rx_token.is_some() || self.rx_limit.waiting()
        {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let fd = self.io.as_raw_fd();
        let handler = Box::new(move |_| lock(&me).process_rx());
        match self.event_loop.add(fd, libc::EPOLLIN as u32, handler) {
            Ok(token) => self.rx_token = Some(token),
            Err(e) => log::error!("virtio-net: {}: cannot watch back-end: {e}", self.io.name()),
        }
    }

    /// Stops watching the back-end; only on the loop thread (a handler),
    /// where removal does not wait.
    fn stop_reading(&mut self) {
        if let Some(token) = self.rx_token.take() {
            if let Err(e) = self.event_loop.remove(token) {
                log::debug!("virtio-net: {}: {e}", self.io.name());
            }
        }
    }

    /// Replaces the back-end (hotplug). Returns the receive registration
    /// of the old one for the caller to remove outside the worker lock;
    /// the caller then calls [`NetWorker::start_reading`] again.
    pub fn set_io(&mut self, io: Arc<dyn FrameIo>) -> Option<Token> {
        self.io = io;
        // A frame of the old back-end's network is not delivered.
        self.rx_held = None;
        self.rx_token.take()
    }

    /// Which directions need a timer for `limits` and have none yet.
    pub fn missing_timers(&self, limits: &NetLimits) -> (bool, bool) {
        (
            limits.rx.is_limited() && !self.rx_limit.has_timer(),
            limits.tx.is_limited() && !self.tx_limit.has_timer(),
        )
    }

    /// Gives direction `dir` its timer (registered on the loop already).
    pub fn install_timer(&mut self, dir: Dir, throttle: Throttle) {
        match dir {
            Dir::Rx => self.rx_limit.install(throttle),
            Dir::Tx => self.tx_limit.install(throttle),
        }
    }

    /// New limits, with full buckets; a direction held back tries again
    /// at once under them. A limited direction must have its timer.
    pub fn set_limits(&mut self, limits: NetLimits) {
        self.rx_limit.set(limits.rx);
        self.tx_limit.set(limits.tx);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.qs.interrupt.signal_config_change();
    }

    /// Marks the worker stopped (device reset) and hands back the receive
    /// registration for the caller to remove outside the worker lock.
    pub fn stop(&mut self) -> Option<Token> {
        self.stopped = true;
        self.rx_chain = None;
        self.rx_held = None;
        self.rx_token.take()
    }

    /// The transmit throttle timer fired: sends what it held back.
    pub fn resume_tx(&mut self) {
        if self.tx_limit.expired() && self.process_tx() {
            self.tx_limit.wake_now();
        }
    }

    /// The receive throttle timer fired: delivers the held frame and
    /// watches the back-end again.
    pub fn resume_rx(&mut self) {
        if self.rx_limit.expired() {
            self.start_reading();
            self.process_rx();
        }
    }

    /// The next transmit chain the limiter lets through; `None` when the
    /// queue is empty or the limiter said to wait (the timer is armed).
    fn next_tx(&mut self) -> Option<Chain> {
        if self.tx_limit.waiting() {
            return None;
        }
        let chain = self.tx_pending.take().or_else(|| self.qs.pop(TXQ))?;
        let total: u64 = chain.descs.iter().map(|d| u64::from(d.len)).sum();
        if !self
            .tx_limit
            .admit(total.saturating_sub(NET_HDR_LEN as u64))
        {
            self.tx_pending = Some(chain);
            return None;
        }
        Some(chain)
    }

    /// Serves the transmit queue; true if chains were left for later.
    fn process_tx(&mut self) -> bool {
        let mut served = 0;
        while served < BUDGET {
            let Some(chain) = self.next_tx() else {
                break;
            };
            if let Err(why) = self.transmit(&chain) {
                self.tx_drops.hit(
                    self.io.name(),
                    format_args!("chain {} dropped: {why}", chain.head),
                );
            }
            if !self.qs.add_used(TXQ, chain.head, 0) {
                break;
            }
            served += 1;
        }
        if served > 0 {
            self.qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !self.qs.is_broken()
    }

    /// Sends the frame of one transmit chain.
    fn transmit(&mut self, chain: &Chain) -> Result<(), TxDrop> {
        if chain.descs.iter().any(|d| d.writable) {
            return Err(TxDrop::WritableBuffer);
        }
        let total: u64 = chain.descs.iter().map(|d| u64::from(d.len)).sum();
        if total < (NET_HDR_LEN + ETH_HLEN) as u64 {
            return Err(TxDrop::TooShort(total));
        }
        if total > MAX_TX_CHAIN_LEN as u64 {
            return Err(TxDrop::TooLong(total));
        }
        if !descs_in_memory(&self.qs.mem, &chain.descs) {
            return Err(TxDrop::OutsideMemory);
        }
        let Some(buf) = self.tx_buf.get_mut(..total as usize) else {
            return Err(TxDrop::TooLong(total));
        };
        let got = Cursor::new(&self.qs.mem, &chain.descs)
            .read(buf)
            .map_err(|_| TxDrop::OutsideMemory)?;
        // The header is ignored: no offload was negotiated.
        let frame = buf.get(NET_HDR_LEN..got).unwrap_or_default();
        self.io.send(frame).map_err(TxDrop::Backend)
    }

    /// Back-end readable: moves waiting frames into receive buffers.
    fn process_rx(&mut self) {
        if self.stopped {
            self.stop_reading();
            return;
        }
        let mut used = false;
        for _ in 0..BUDGET {
            if self.rx_limit.waiting() {
                // The timer watches the back-end again.
                self.stop_reading();
                break;
            }
            let chain = match self.rx_chain.take() {
                Some(c) => c,
                None => match self.qs.pop(RXQ) {
                    Some(c) => c,
                    None => {
                        // No buffer (or a broken queue): leave the frames
                        // in the kernel until the guest posts buffers.
                        self.stop_reading();
                        break;
                    }
                },
            };
            let writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
            let capacity = chain.writable_len();
            if capacity < (NET_HDR_LEN + ETH_HLEN) as u64
                || !descs_in_memory(&self.qs.mem, &writable)
            {
                self.rx_drops.hit(
                    self.io.name(),
                    format_args!(
                        "receive chain {} returned empty: {capacity} writable bytes, or outside guest RAM",
                        chain.head
                    ),
                );
                if !self.qs.add_used(RXQ, chain.head, 0) {
                    break;
                }
                used = true;
                continue;
            }
            let received = match self.rx_held.take() {
                Some(len) => Ok(len),
                None => self.io.recv(&mut self.rx_buf),
            };
            let len = match received {
                Ok(0) => {
                    log::warn!("virtio-net: {}: back-end closed", self.io.name());
                    self.rx_chain = Some(chain);
                    self.stop_reading();
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rx_chain = Some(chain);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.rx_chain = Some(chain);
                    continue;
                }
                Err(e) => {
                    // Stop rather than spin on a persistent error; the next
                    // receive notification tries again.
                    log::error!("virtio-net: {}: cannot read frame: {e}", self.io.name());
                    self.rx_chain = Some(chain);
                    self.stop_reading();
                    break;
                }
            };
            if len > self.rx_buf.len() || (NET_HDR_LEN + len) as u64 > capacity {
                self.rx_drops.hit(
                    self.io.name(),
                    format_args!(
                        "{len}-byte frame dropped: does not fit receive chain {} ({capacity} bytes)",
                        chain.head
                    ),
                );
                self.rx_chain = Some(chain);
                continue;
            }
            if !self.rx_limit.admit(len as u64) {
                // Held with its chain until the timer fires; the frames
                // behind it stay in the kernel's queue.
                self.rx_held = Some(len);
                self.rx_chain = Some(chain);
                self.stop_reading();
                break;
            }
            let written = self.deliver(&writable, len);
            if !self.qs.add_used(RXQ, chain.head, written) {
                break;
            }
            used = true;
        }
        if used {
            self.qs.interrupt.signal_used_queue();
        }
    }

    /// Writes the header and `rx_buf[..len]` (known to fit) into
    /// `writable`; returns the used length.
    fn deliver(&mut self, writable: &[Desc], len: usize) -> u32 {
        let mut hdr = [0u8; NET_HDR_LEN];
        // num_buffers: always one without VIRTIO_NET_F_MRG_RXBUF.
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut cursor = Cursor::new(&self.qs.mem, writable);
        let frame = self.rx_buf.get(..len).unwrap_or_default();
        match cursor
            .write(&hdr)
            .and_then(|a| Ok(a + cursor.write(frame)?))
        {
            // At most NET_HDR_LEN + MAX_FRAME_LEN.
            Ok(n) => n as u32,
            Err(e) => {
                self.rx_drops.hit(
                    self.io.name(),
                    format_args!("frame dropped: cannot write guest RAM: {e}"),
                );
                0
            }
        }
    }
}
