//! virtio-vsock (virtio 1.x "Socket Device", device type 19), stream
//! sockets only, in two flavours:
//!
//! - [`Vsock`]: served in userspace over unix sockets ("hybrid vsock", the
//!   protocol Firecracker documents). A host program connects to the
//!   device's socket `uds_path` and writes `CONNECT <port>\n`; once the
//!   guest accepts, it reads `OK <host port>\n` and the connection carries
//!   bytes both ways. A guest connection to the host (CID 2) port `N` is
//!   forwarded to the unix socket `<uds_path>_<N>`.
//! - [`VhostVsockDevice`]: the kernel's vhost-vsock serves the queues; the
//!   device only sets it up ([`VhostVsock`] opens and checks the kernel
//!   device).
//!
//! Queues: receive (0), transmit (1), event (2). The configuration space
//! holds the guest's CID as a little-endian u64.

mod conn;
mod host;
mod muxer;
mod packet;
mod vhost;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use conn::{BUF_ALLOC, MAX_CONNECT_LINE, STAGE_LIMIT};
pub use muxer::{CLOSE_TIMEOUT, CONNECT_TIMEOUT, FIRST_HOST_PORT, MAX_CONNECTIONS};
pub use packet::{HDR_LEN, HOST_CID, MAX_PAYLOAD};
pub use vhost::{VhostVsock, VhostVsockDevice, VHOST_VSOCK_PATH};

use crate::worker::{split_queues, QueueSet, Registrations};
use crate::{lock, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use muxer::{Muxer, RXQ};

/// virtio device ID of a socket device.
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Number of queues (receive, transmit, event).
pub const NUM_QUEUES: usize = 3;
/// Lowest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Highest CID a guest may have (`u32::MAX` means "any").
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Errors while creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or too large.
    #[error("vsock: guest CID {0} is out of range {MIN_GUEST_CID}..={MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// The socket path exists and is not a socket.
    #[error("vsock: socket path {path} exists and is not a socket")]
    PathInUse {
        /// The socket path.
        path: String,
    },
    /// The socket could not be created.
    #[error("vsock: cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// `/dev/vhost-vsock` could not be opened.
    #[error(
        "vhost-vsock-device: cannot open {path}: {}{}",
        os_error_text(.source),
        open_hint(.source)
    )]
    VhostOpen {
        /// The device path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The descriptor passed as `vhostfd` is not a usable vhost-vsock
    /// device.
    #[error(
        "vhost-vsock-device: vhostfd {fd} is not a usable vhost-vsock descriptor: {op} failed: {}",
        os_error_text(.source)
    )]
    VhostFd {
        /// The descriptor number.
        fd: i32,
        /// The request that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A vhost request failed.
    #[error("vhost-vsock-device: {op} failed: {}", os_error_text(.source))]
    Vhost {
        /// The request that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The text of an OS error without the " (os error N)" suffix.
fn os_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (load the vhost_vsock module)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => " (check the permissions of the device node)",
        _ => "",
    }
}

/// Checks that `cid` may be given to a guest.
pub(crate) fn check_cid(cid: u64) -> Result<(), VsockError> {
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(())
    } else {
        Err(VsockError::InvalidCid(cid))
    }
}

/// Options of a hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The unix socket host programs connect to; guest connections to host
    /// port N go to `<uds_path>_N`.
    pub uds_path: PathBuf,
}

/// A virtio-vsock device served in userspace over unix sockets.
pub struct Vsock {
    config: VsockConfig,
    config_space: [u8; 8],
    event_loop: EventLoop,
    muxer: Arc<Mutex<Muxer>>,
    registrations: Option<Registrations>,
}

impl Vsock {
    /// Listens on `config.uds_path` (replacing a stale socket there) for a
    /// guest of CID `config.guest_cid`; sockets and queues are served on
    /// `event_loop` once the driver activates the device. Host clients
    /// connecting earlier wait in the listening backlog.
    pub fn new(config: VsockConfig, event_loop: EventLoop) -> Result<Self, VsockError> {
        check_cid(config.guest_cid)?;
        let listener = host::bind_listener(&config.uds_path)?;
        let muxer = Muxer::new(
            config.guest_cid,
            config.uds_path.clone(),
            listener,
            event_loop.clone(),
        );
        Ok(Vsock {
            config_space: config.guest_cid.to_le_bytes(),
            config,
            event_loop,
            muxer,
            registrations: None,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.config.guest_cid
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.config.uds_path
    }

    /// Live connections (including host clients not yet past `CONNECT`).
    pub fn connections(&self) -> usize {
        lock(&self.muxer).connections()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vsock: ignored {}-byte config write at {offset:#x}",
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
        let (queues, evts) = split_queues(queues, NUM_QUEUES)?;
        let rx_kick = match evts.get(RXQ) {
            Some(e) => e.try_clone()?,
            None => {
                return Err(ActivateError::QueueCount {
                    expected: NUM_QUEUES,
                    got: evts.len(),
                })
            }
        };
        let qs = QueueSet::new("vsock", mem, interrupt, queues);
        let fds = lock(&self.muxer).activate(qs, rx_kick)?;
        // Register without holding the lock: a failing registration is
        // undone with `EventLoop::remove`, which waits for handlers that
        // may be waiting for the lock.
        let mut registrations = Registrations::new(&self.event_loop);
        let res = Muxer::watch_static(&self.muxer, &self.event_loop, fds).and_then(|tokens| {
            lock(&self.muxer).add_tokens(tokens);
            registrations.add_queues(&self.muxer, evts, |m: &mut Muxer, q| m.handle_queue(q))
        });
        if let Err(e) = res {
            drop(registrations);
            let teardown = lock(&self.muxer).deactivate();
            teardown.finish(&self.event_loop);
            return Err(e.into());
        }
        self.registrations = Some(registrations);
        Ok(())
    }

    fn reset(&mut self) {
        // Without holding the muxer's lock, which the handlers take.
        if let Some(mut r) = self.registrations.take() {
            r.clear();
        }
        let teardown = lock(&self.muxer).deactivate();
        teardown.finish(&self.event_loop);
    }

    /// Host connections do not survive a snapshot; the guest is told
    /// after the restore (transport reset event).
    fn snapshot_blocker(&self) -> Option<String> {
        None
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        lock(&self.muxer).queue_states()
    }

    fn after_restore(&mut self) {
        lock(&self.muxer).send_transport_reset();
    }

    fn save_extra(&self) -> crate::snapshot::DeviceExtra {
        crate::snapshot::DeviceExtra::Vsock {
            next_host_port: lock(&self.muxer).next_host_port(),
        }
    }

    fn restore_extra(&mut self, extra: &crate::snapshot::DeviceExtra) -> Result<(), String> {
        match extra {
            crate::snapshot::DeviceExtra::Vsock { next_host_port } => {
                lock(&self.muxer).set_next_host_port(*next_host_port);
                Ok(())
            }
            // A snapshot taken before the port was saved.
            crate::snapshot::DeviceExtra::None => Ok(()),
            other => Err(format!("vsock: unexpected state {other:?}")),
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        let _ = std::fs::remove_file(&self.config.uds_path);
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_flow;
