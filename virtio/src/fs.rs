//! virtio-fs (virtio 1.x "File System Device", device type 26) served by a
//! vhost-user backend such as virtiofsd.
//!
//! The VMM only owns the configuration space (the mount tag and the number
//! of request queues) and the plumbing: on activation it gives the backend
//! guest memory, the rings, each queue's notification eventfd (the KVM
//! ioeventfd the transport registered) and a "call" eventfd per queue that
//! the event loop turns into the device interrupt. Queue 0 is the
//! high-priority queue, queues 1.. are request queues; FUSE requests never
//! pass through the VMM.
//!
//! If the backend hangs up, the device enters DEVICE_NEEDS_RESET (when the
//! guest is driving it) and every later activation fails; the VM goes on.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use address_space::GuestMemoryMmap;
use util::event_loop::{EventLoop, Token};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vhost_user::{self, Frontend, RequestError, VhostUserError};
use crate::worker::{split_queues, Registrations};
use crate::{
    lock, read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// virtio device ID of a file system device.
pub const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// Longest mount tag (bytes of the configuration field).
pub const MAX_TAG_LEN: usize = 36;
/// Default size of every queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 128;
/// Largest queue size accepted.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most request queues (the transport has 64 queues, one is hiprio).
pub const MAX_REQUEST_QUEUES: u16 = 63;

/// Errors while creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or too long.
    #[error("tag '{0}' must be 1 to {MAX_TAG_LEN} bytes")]
    Tag(String),
    /// Queue count or size out of range.
    #[error("{0}")]
    Queues(String),
    /// The vhost-user session failed.
    #[error("{0}")]
    VhostUser(#[from] VhostUserError),
    /// The backend lacks VIRTIO_F_VERSION_1.
    #[error("the vhost-user backend does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// The hang-up watch could not be registered.
    #[error("cannot watch the backend socket: {0}")]
    EventLoop(#[from] util::event_loop::EventLoopError),
    /// The socket could not be duplicated for the hang-up watch.
    #[error("cannot watch the backend socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What a virtio-fs device is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// Mount tag the guest mounts (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// The backend's listening socket.
    pub socket: PathBuf,
    /// Request queues (besides the high-priority queue).
    pub num_request_queues: u16,
    /// Size of every queue.
    pub queue_size: u16,
}

/// State shared with the hang-up handler.
struct Shared {
    frontend: Frontend,
    /// The interrupt of the active device, to report the hang-up.
    interrupt: Option<Arc<Interrupt>>,
    /// The loss of the backend was logged (once, by whichever noticed it
    /// first: the hang-up watch or a failed request).
    loss_reported: bool,
}

impl Shared {
    /// Records that the backend is gone and logs it once. The socket
    /// hang-up and a request failing on the closed socket race; both end
    /// here, so the log says the same whichever comes first.
    fn backend_lost(&mut self, name: &str, cause: Option<&VhostUserError>) {
        self.frontend.mark_broken();
        if std::mem::replace(&mut self.loss_reported, true) {
            return;
        }
        match cause {
            None
            | Some(VhostUserError::Request {
                source: RequestError::Disconnected,
                ..
            }) => {
                log::error!("vhost-user-fs '{name}': the backend hung up; the device needs a reset")
            }
            Some(e) => log::error!(
                "vhost-user-fs '{name}': the backend failed ({e}); the device needs a reset"
            ),
        }
        if let Some(irq) = &self.interrupt {
            irq.set_needs_reset();
        }
    }
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct VhostUserFs {
    shared: Arc<Mutex<Shared>>,
    event_loop: EventLoop,
    config_space: Vec<u8>,
    queue_sizes: Vec<u16>,
    offered: u64,
    acked: u64,
    hangup: Option<Token>,
    active: Option<Active>,
    name: String,
}

/// What an active device holds.
struct Active {
    /// Call eventfd handlers raising the interrupt.
    registrations: Registrations,
    /// Notification eventfds (the backend has its own copies).
    _kicks: Vec<EventFd>,
}

/// The configuration space: tag[36] (UTF-8, NUL-padded), then
/// num_request_queues as le32.
fn config_space(tag: &str, num_request_queues: u16) -> Vec<u8> {
    let mut c = vec![0u8; MAX_TAG_LEN + 4];
    c[..tag.len()].copy_from_slice(tag.as_bytes());
    c[MAX_TAG_LEN..].copy_from_slice(&u32::from(num_request_queues).to_le_bytes());
    c
}

impl VhostUserFs {
    /// Checks `cfg`, that `mem` can be shared, connects to the backend
    /// (retrying for [`vhost_user::CONNECT_TIMEOUT`]) and runs the
    /// handshake. `name` (the device id) prefixes log lines.
    pub fn new(
        name: &str,
        cfg: &FsConfig,
        mem: &GuestMemoryMmap,
        event_loop: EventLoop,
    ) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > MAX_TAG_LEN {
            return Err(FsError::Tag(cfg.tag.clone()));
        }
        if !(1..=MAX_REQUEST_QUEUES).contains(&cfg.num_request_queues) {
            return Err(FsError::Queues(format!(
                "num-request-queues {} must be 1 to {MAX_REQUEST_QUEUES}",
                cfg.num_request_queues
            )));
        }
        if !cfg.queue_size.is_power_of_two() || !(2..=MAX_QUEUE_SIZE).contains(&cfg.queue_size) {
            return Err(FsError::Queues(format!(
                "queue-size {} must be a power of two from 2 to {MAX_QUEUE_SIZE}",
                cfg.queue_size
            )));
        }
        // Before connecting: a private RAM mapping can never work.
        vhost_user::mem_regions(mem)?;
        let num_queues = 1 + usize::from(cfg.num_request_queues);
        let stream = vhost_user::connect(&cfg.socket, vhost_user::CONNECT_TIMEOUT)?;
        let watched = stream.try_clone()?;
        let frontend = Frontend::new(stream, num_queues, &event_loop)?;
        if frontend.virtio_features() & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NotModern);
        }
        let wanted = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        let offered = frontend.virtio_features() & wanted;
        let shared = Arc::new(Mutex::new(Shared {
            frontend,
            interrupt: None,
            loss_reported: false,
        }));
        let mut dev = VhostUserFs {
            shared,
            event_loop,
            config_space: config_space(&cfg.tag, cfg.num_request_queues),
            queue_sizes: vec![cfg.queue_size; num_queues],
            offered,
            acked: 0,
            hangup: None,
            active: None,
            name: name.to_string(),
        };
        dev.watch_hangup(watched)?;
        Ok(dev)
    }

    /// Logs and records the backend's hang-up once, on the event loop;
    /// `watched` is a duplicate of the backend socket, which the handler
    /// owns (and closes when it is removed, after the fd left the loop).
    fn watch_hangup(&mut self, watched: UnixStream) -> Result<(), FsError> {
        let shared = self.shared.clone();
        let name = self.name.clone();
        let fd = watched.as_raw_fd();
        let token = self.event_loop.add(
            fd,
            (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            Box::new(move |_| {
                // Our side too, first: a request still blocked on the
                // socket (holding `shared`) then fails at once instead of
                // waiting for its deadline, which this loop serves.
                let _ = watched.shutdown(std::net::Shutdown::Both);
                lock(&shared).backend_lost(&name, None)
            }),
        )?;
        self.hangup = Some(token);
        Ok(())
    }

    /// Whether the backend session is gone.
    pub fn backend_lost(&self) -> bool {
        lock(&self.shared).frontend.is_broken()
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
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
        let (queues, kicks) = split_queues(queues, self.queue_sizes.len())?;
        let calls = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        {
            let mut s = lock(&self.shared);
            if let Err(e) =
                s.frontend
                    .start(self.acked & self.offered, &mem, &queues, &kicks, &calls)
            {
                let _ = s.frontend.stop();
                if !matches!(e, VhostUserError::Broken) {
                    s.backend_lost(&self.name, Some(&e));
                }
                return Err(ActivateError::Io(std::io::Error::other(e.to_string())));
            }
            s.interrupt = Some(interrupt.clone());
        }
        let mut registrations = Registrations::new(&self.event_loop);
        let irq = Arc::new(Mutex::new(interrupt));
        if let Err(e) = registrations.add_queues(&irq, calls, |irq: &mut Arc<Interrupt>, _| {
            irq.signal_used_queue();
            false
        }) {
            drop(registrations);
            let mut s = lock(&self.shared);
            s.interrupt = None;
            let _ = s.frontend.stop();
            return Err(e.into());
        }
        self.active = Some(Active {
            registrations,
            _kicks: kicks,
        });
        Ok(())
    }

    fn snapshot_blocker(&self) -> Option<String> {
        Some(
            "vhost-user-fs cannot be snapshotted (the back-end process owns its queues and state)"
                .to_string(),
        )
    }

    fn reset(&mut self) {
        if let Some(mut a) = self.active.take() {
            {
                let mut s = lock(&self.shared);
                s.interrupt = None;
                match s.frontend.stop() {
                    Ok(_) | Err(VhostUserError::Broken) => {}
                    Err(e) => s.backend_lost(&self.name, Some(&e)),
                }
            }
            a.registrations.clear();
        }
    }
}

impl Drop for VhostUserFs {
    fn drop(&mut self) {
        self.reset();
        if let Some(t) = self.hangup.take() {
            let _ = self.event_loop.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_the_tag_and_the_queue_count() {
        let c = config_space("kataShared", 1);
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..10], b"kataShared");
        assert!(c[10..36].iter().all(|&b| b == 0));
        assert_eq!(&c[36..], &[1, 0, 0, 0]);
        let full = "x".repeat(MAX_TAG_LEN);
        assert_eq!(&config_space(&full, 3)[..36], full.as_bytes());
    }

    #[test]
    fn bad_options_and_private_memory_fail_before_connecting() {
        let el = EventLoop::new("fs-test").unwrap();
        let private =
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let cfg = FsConfig {
            tag: "t".into(),
            // Nobody listens: reaching connect() would take seconds.
            socket: "/nonexistent/fs.sock".into(),
            num_request_queues: 1,
            queue_size: 128,
        };
        let err = |cfg: &FsConfig| {
            VhostUserFs::new("fs0", cfg, &private, el.clone())
                .err()
                .unwrap()
                .to_string()
        };
        let start = std::time::Instant::now();
        assert_eq!(
            err(&cfg),
            "guest RAM at 0x0 is not shareable with a vhost-user backend \
             (add mem-share=on to -machine)"
        );
        let long = FsConfig {
            tag: "y".repeat(37),
            ..cfg.clone()
        };
        assert!(err(&long).ends_with("must be 1 to 36 bytes"));
        let q = FsConfig {
            queue_size: 100,
            ..cfg.clone()
        };
        assert_eq!(
            err(&q),
            "queue-size 100 must be a power of two from 2 to 1024"
        );
        let n = FsConfig {
            num_request_queues: 0,
            ..cfg
        };
        assert_eq!(err(&n), "num-request-queues 0 must be 1 to 63");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        el.stop();
    }
}
