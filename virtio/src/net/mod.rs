//! virtio-net with one queue pair (queue 0 receive, queue 1 transmit) over
//! a host frame back-end, normally a [`Tap`].
//!
//! No offloads are offered (no checksum, GSO or mergeable receive buffers):
//! every frame travels whole, preceded by a 12-byte virtio-net header that
//! the device writes as zeros (with `num_buffers` = 1) and ignores on
//! transmit. Received frames are only read from the back-end while the
//! guest has a receive buffer posted; otherwise they wait in the kernel's
//! queue (which drops on overflow like any NIC), so the device never
//! buffers without bound nor spins.

mod hotplug;
mod limit;
mod rxtx;
mod tap;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use hotplug::{Unplugged, UNPLUGGED_NAME};
pub use limit::NetLimits;
pub use tap::{Tap, TapError, MAX_IFNAME_LEN, TUN_DEVICE};

use crate::rate_limiter::Throttle;
use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{
    lock, read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use rxtx::{Dir, NetWorker};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the virtio-net header preceding every frame (virtio 1.x:
/// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers).
pub const NET_HDR_LEN: usize = 12;
/// Length of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Longest frame exchanged (64 KiB of payload plus the Ethernet header);
/// longer ones are dropped.
pub const MAX_FRAME_LEN: usize = 65_536 + ETH_HLEN;
/// Longest transmit chain (header plus frame); longer ones are dropped.
pub const MAX_TX_CHAIN_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
/// Length of the configuration space (mac, status, max_virtqueue_pairs).
pub const CONFIG_LEN: usize = 10;

/// Feature bit: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// Feature bit: the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
/// Link status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP as u16;

/// Index of the receive queue.
pub(crate) const RXQ: usize = 0;
/// Index of the transmit queue.
pub(crate) const TXQ: usize = 1;

/// A host back-end exchanging whole Ethernet frames (no virtio-net
/// header). Implemented by [`Tap`]; anything else (e.g. a datagram socket)
/// can stand in for it. Its descriptor ([`AsRawFd`]) must poll readable
/// (EPOLLIN) when a frame is waiting.
pub trait FrameIo: AsRawFd + Send + Sync {
    /// Name used in log lines (the interface name for a TAP).
    fn name(&self) -> &str;
    /// Sends one frame. Must not block; a back-end that cannot take the
    /// frame now returns an error (the frame is dropped).
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Receives one frame into `buf` without blocking (`WouldBlock` when
    /// none is waiting). Returns the frame's full length, which exceeds
    /// `buf.len()` when the frame was truncated; 0 means the back-end is
    /// gone.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Errors while creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A MAC address is malformed or not usable by a NIC.
    #[error("invalid MAC address '{value}': {reason}")]
    InvalidMac {
        /// The address as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TAP back-end could not be set up (for callers chaining
    /// [`Tap::open_named`] or [`Tap::from_fd`] with [`Net::new`]).
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A back-end is already plugged into this slot.
    #[error("the slot already has a network back-end")]
    SlotBusy,
    /// No back-end is plugged into this slot.
    #[error("the slot has no network back-end")]
    SlotEmpty,
    /// The placeholder back-end of an empty slot could not be created.
    #[error("cannot create the empty-slot back-end: {0}")]
    Backend(io::Error),
    /// A rate limit's timer could not be created or watched.
    #[error("cannot set up the rate-limit timer: {0}")]
    Timer(String),
}

/// Options of a network device.
#[derive(Debug)]
pub struct NetConfig {
    /// The host end.
    pub tap: Tap,
    /// The guest's MAC address; when `None`, a locally administered one is
    /// derived from the interface name.
    pub mac: Option<[u8; 6]>,
}

/// Parses a MAC address written as six colon-separated pairs of hex digits
/// (`52:54:00:12:34:56`, either case). Multicast (including broadcast) and
/// all-zero addresses are refused: a guest NIC cannot use them.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let invalid = |reason| NetError::InvalidMac {
        value: s.to_string(),
        reason,
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts
            .next()
            .ok_or_else(|| invalid("expected six colon-separated octets"))?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("each octet must be two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid("bad hex digit"))?;
    }
    if parts.next().is_some() {
        return Err(invalid("expected six colon-separated octets"));
    }
    check_mac(&mac).map_err(invalid)?;
    Ok(mac)
}

/// Refuses addresses a NIC cannot own.
fn check_mac(mac: &[u8; 6]) -> Result<(), &'static str> {
    if mac[0] & 1 != 0 {
        return Err("multicast/broadcast address");
    }
    if mac.iter().all(|&b| b == 0) {
        return Err("all-zero address");
    }
    Ok(())
}

/// `mac` if a NIC can own it, or (for `None`) the address derived from the
/// back-end's `name`.
fn mac_or_derived(mac: Option<[u8; 6]>, name: &str) -> Result<[u8; 6], NetError> {
    match mac {
        Some(m) => {
            check_mac(&m).map_err(|reason| NetError::InvalidMac {
                value: format_mac(&m),
                reason,
            })?;
            Ok(m)
        }
        None => Ok(derived_mac(name)),
    }
}

/// Formats `mac` as `aa:bb:cc:dd:ee:ff`.
fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// A locally administered unicast address derived from `name` (FNV-1a),
/// stable across restarts of the same configuration.
fn derived_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    // Clear the multicast bit, set the locally administered bit.
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

struct Active {
    // Cleared first: stops the queue handlers before the worker goes.
    registrations: Registrations,
    worker: Arc<Mutex<NetWorker>>,
}

/// A virtio-net device.
pub struct Net {
    io: Arc<dyn FrameIo>,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    event_loop: EventLoop,
    active: Option<Active>,
    /// False for an empty hotplug slot.
    plugged: bool,
    /// Limits on what the guest receives and sends.
    limits: NetLimits,
}

impl Net {
    /// Creates the device on `config.tap`; frames are exchanged on
    /// `event_loop` once the driver activates the device.
    pub fn new(config: NetConfig, event_loop: EventLoop) -> Result<Net, NetError> {
        Self::with_backend(Box::new(config.tap), config.mac, event_loop)
    }

    /// Creates the device on any frame back-end (see [`Net::new`]).
    pub fn with_backend(
        io: Box<dyn FrameIo>,
        mac: Option<[u8; 6]>,
        event_loop: EventLoop,
    ) -> Result<Net, NetError> {
        let mac = mac_or_derived(mac, io.name())?;
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        let avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS);
        Ok(Net {
            io: Arc::from(io),
            mac,
            config,
            avail_features,
            acked_features: 0,
            event_loop,
            active: None,
            plugged: true,
            limits: NetLimits::default(),
        })
    }

    /// Limits the frames and bytes the guest may receive and send (set
    /// before the device is activated; see [`Net::set_limits`] after).
    pub fn with_limits(mut self, limits: NetLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> NetLimits {
        self.limits
    }

    /// Changes the limits, at once on an active device (buckets start
    /// full; a direction held back tries again under the new limits). A
    /// direction limited for the first time since activation gets its
    /// timer here; timers stay until the device resets, so limits that
    /// come and go reuse them. Errors leave the limits unchanged.
    pub fn set_limits(&mut self, limits: NetLimits) -> Result<(), NetError> {
        if let Some(active) = &mut self.active {
            let (rx, tx) = lock(&active.worker).missing_timers(&limits);
            for (dir, missing) in [(Dir::Rx, rx), (Dir::Tx, tx)] {
                if !missing {
                    continue;
                }
                let throttle = Throttle::new().map_err(|e| NetError::Timer(e.to_string()))?;
                // Registered before the worker can arm it: an expiry is
                // never missed, and a failure changes nothing.
                let handler = match dir {
                    Dir::Rx => NetWorker::resume_rx,
                    Dir::Tx => NetWorker::resume_tx,
                };
                active
                    .registrations
                    .add_fd(&active.worker, throttle.fd(), handler)
                    .map_err(|e| NetError::Timer(e.to_string()))?;
                lock(&active.worker).install_timer(dir, throttle);
            }
            lock(&active.worker).set_limits(limits);
        }
        self.limits = limits;
        Ok(())
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Name of the back-end (the TAP interface name).
    pub fn if_name(&self) -> &str {
        self.io.name()
    }

    /// Whether the device is processing its queues.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable without VIRTIO_NET_F_CTRL_MAC_ADDR & co.
        log::debug!(
            "virtio-net: {}: ignored {}-byte config write at {offset:#x}",
            self.io.name(),
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
        let (queues, evts) = split_queues(queues, 2)?;
        let qs = QueueSet::new("virtio-net", mem, interrupt, queues);
        // A direction's timer exists only with a limit: no cost otherwise.
        let timer = |limited: bool| limited.then(Throttle::new).transpose();
        let rx_throttle = timer(self.limits.rx.is_limited())?;
        let tx_throttle = timer(self.limits.tx.is_limited())?;
        let rx_fd = rx_throttle.as_ref().map(Throttle::fd);
        let tx_fd = tx_throttle.as_ref().map(Throttle::fd);
        let worker = NetWorker::new(
            qs,
            self.io.clone(),
            self.event_loop.clone(),
            self.limits,
            rx_throttle,
            tx_throttle,
        );
        let mut registrations = Registrations::new(&self.event_loop);
        registrations.add_queues(&worker, evts, |w: &mut NetWorker, q| w.handle_queue(q))?;
        // The worker owns the timers and outlives these registrations.
        if let Some(fd) = rx_fd {
            registrations.add_fd(&worker, fd, NetWorker::resume_rx)?;
        }
        if let Some(fd) = tx_fd {
            registrations.add_fd(&worker, fd, NetWorker::resume_tx)?;
        }
        // Frames may already be waiting; the receive handler stops itself
        // at once if the guest has no buffers yet.
        lock(&worker).start_reading();
        self.active = Some(Active {
            registrations,
            worker,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(Active {
            mut registrations,
            worker,
        }) = self.active.take()
        {
            // No queue handler runs after this, so none re-arms receive.
            registrations.clear();
            let token = lock(&worker).stop();
            // Not under the worker lock: remove() waits for a running
            // receive handler, which takes it.
            if let Some(token) = token {
                if let Err(e) = self.event_loop.remove(token) {
                    log::debug!("virtio-net: {}: {e}", self.io.name());
                }
            }
        }
        self.acked_features = 0;
    }

    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| lock(&a.worker).queue_states())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;
