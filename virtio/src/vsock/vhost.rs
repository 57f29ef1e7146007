//! vhost-vsock: the kernel serves the receive and transmit queues; the VMM
//! opens `/dev/vhost-vsock` (or takes a descriptor inherited from its
//! parent), claims it, gives it the guest's CID and, on activation, guest
//! memory, the rings and the notification eventfds.
//!
//! The kernel signals used buffers on a per-queue "call" eventfd; the device
//! watches those on its event loop and raises the transport's interrupt (so
//! that the InterruptStatus register shows the queue update).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vhost_ioctl::*;
use super::{check_cid, VsockError, NUM_QUEUES, QUEUE_SIZE, TYPE_VSOCK};
use crate::worker::{split_queues, Registrations};
use crate::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// The kernel's vhost-vsock device node.
pub const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";
/// Queues served by the kernel (receive, transmit); the event queue stays
/// with the VMM, which never posts events.
const KERNEL_QUEUES: usize = 2;

/// A claimed vhost-vsock kernel device with the guest's CID set.
#[derive(Debug)]
pub struct VhostVsock {
    file: File,
    guest_cid: u64,
    features: u64,
}

fn vhost_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VsockError {
    move |source| VsockError::Vhost { op, source }
}

impl VhostVsock {
    /// Opens [`VHOST_VSOCK_PATH`], or checks `vhostfd` (a descriptor the
    /// parent opened, e.g. Kata's `vhostfd=3`) with VHOST_GET_FEATURES, then
    /// claims the device (VHOST_SET_OWNER) and gives the guest `guest_cid`
    /// (VHOST_VSOCK_SET_GUEST_CID).
    pub fn open(guest_cid: u64, vhostfd: Option<OwnedFd>) -> Result<Self, VsockError> {
        match vhostfd {
            Some(fd) => Self::from_fd(guest_cid, File::from(fd)),
            None => Self::open_path(guest_cid, Path::new(VHOST_VSOCK_PATH)),
        }
    }

    fn open_path(guest_cid: u64, path: &Path) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| VsockError::VhostOpen {
                path: path.display().to_string(),
                source,
            })?;
        let features = get_features(file.as_raw_fd()).map_err(vhost_err("VHOST_GET_FEATURES"))?;
        Self::claim(file, guest_cid, features)
    }

    fn from_fd(guest_cid: u64, file: File) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let fd = file.as_raw_fd();
        let features = get_features(fd).map_err(|source| VsockError::VhostFd {
            fd,
            op: "VHOST_GET_FEATURES",
            source,
        })?;
        Self::claim(file, guest_cid, features)
    }

    fn claim(file: File, guest_cid: u64, features: u64) -> Result<Self, VsockError> {
        let fd = file.as_raw_fd();
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VsockError::Vhost {
                op: "VHOST_GET_FEATURES",
                source: std::io::Error::other("the kernel does not offer VIRTIO_F_VERSION_1"),
            });
        }
        ioctl_none(fd, VHOST_SET_OWNER).map_err(vhost_err("VHOST_SET_OWNER"))?;
        ioctl_ptr(fd, VHOST_VSOCK_SET_GUEST_CID, &guest_cid as *const u64)
            .map_err(vhost_err("VHOST_VSOCK_SET_GUEST_CID"))?;
        Ok(VhostVsock {
            file,
            guest_cid,
            features,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Features the kernel offers (VHOST_GET_FEATURES).
    pub fn kernel_features(&self) -> u64 {
        self.features
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_running(&self, running: bool) -> std::io::Result<()> {
        let v = libc::c_int::from(running);
        ioctl_ptr(self.fd(), VHOST_VSOCK_SET_RUNNING, &v as *const libc::c_int)
    }
}

/// What an active vhost-vsock device holds.
struct Active {
    /// Call eventfd handlers raising the interrupt.
    registrations: Registrations,
    /// Notification eventfds of all queues (the kernel has its own
    /// references to the first two; the event queue's is never read).
    _kicks: Vec<EventFd>,
}

/// A virtio-vsock device whose queues the kernel's vhost-vsock serves.
pub struct VhostVsockDevice {
    vhost: VhostVsock,
    event_loop: EventLoop,
    config_space: [u8; 8],
    acked: u64,
    active: Option<Active>,
}

impl VhostVsockDevice {
    /// The device model for `vhost`; call notifications are handled on
    /// `event_loop`.
    pub fn new(vhost: VhostVsock, event_loop: EventLoop) -> Self {
        VhostVsockDevice {
            config_space: vhost.guest_cid.to_le_bytes(),
            vhost,
            event_loop,
            acked: 0,
            active: None,
        }
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.vhost.guest_cid
    }

    fn setup(
        &self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        calls: &[EventFd],
        kicks: &[EventFd],
    ) -> Result<(), ActivateError> {
        let fd = self.vhost.fd();
        let err = |op: &'static str| {
            move |e: std::io::Error| {
                ActivateError::Io(std::io::Error::new(e.kind(), format!("{op}: {e}")))
            }
        };
        let arg_err = |e: ArgError| ActivateError::Io(std::io::Error::other(e.to_string()));
        let features = self.acked & self.features_offered();
        ioctl_ptr(fd, VHOST_SET_FEATURES, &features as *const u64)
            .map_err(err("VHOST_SET_FEATURES"))?;
        let table = mem_table(&mem_regions(mem).map_err(arg_err)?);
        ioctl_ptr(fd, VHOST_SET_MEM_TABLE, table.as_ptr()).map_err(err("VHOST_SET_MEM_TABLE"))?;
        for (i, ((q, call), kick)) in queues.iter().zip(calls).zip(kicks).enumerate() {
            let index = i as u32;
            let num = VringState {
                index,
                num: u32::from(q.size()),
            };
            ioctl_ptr(fd, VHOST_SET_VRING_NUM, &num).map_err(err("VHOST_SET_VRING_NUM"))?;
            let base = VringState {
                index,
                num: u32::from(q.next_avail()),
            };
            ioctl_ptr(fd, VHOST_SET_VRING_BASE, &base).map_err(err("VHOST_SET_VRING_BASE"))?;
            let addr = vring_addr(mem, index, q).map_err(arg_err)?;
            ioctl_ptr(fd, VHOST_SET_VRING_ADDR, &addr).map_err(err("VHOST_SET_VRING_ADDR"))?;
            let kick = VringFile {
                index,
                fd: kick.as_raw_fd(),
            };
            ioctl_ptr(fd, VHOST_SET_VRING_KICK, &kick).map_err(err("VHOST_SET_VRING_KICK"))?;
            let call = VringFile {
                index,
                fd: call.as_raw_fd(),
            };
            ioctl_ptr(fd, VHOST_SET_VRING_CALL, &call).map_err(err("VHOST_SET_VRING_CALL"))?;
        }
        self.vhost
            .set_running(true)
            .map_err(err("VHOST_VSOCK_SET_RUNNING"))
    }

    /// Stops the kernel's processing of the rings.
    fn stop_kernel(&self) {
        if let Err(e) = self.vhost.set_running(false) {
            log::warn!("vhost-vsock: VHOST_VSOCK_SET_RUNNING(0): {e}");
        }
        for index in 0..KERNEL_QUEUES as u32 {
            let mut state = VringState { index, num: 0 };
            // Also detaches the ring from the kernel worker.
            let _ = ioctl_ptr(self.vhost.fd(), VHOST_GET_VRING_BASE, &mut state as *mut _);
        }
    }

    fn features_offered(&self) -> u64 {
        let wanted = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        self.vhost.features & wanted
    }
}

impl VirtioDevice for VhostVsockDevice {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.features_offered()
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
        let (queues, kicks) = split_queues(queues, NUM_QUEUES)?;
        let calls = (0..KERNEL_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let kernel_queues = queues.get(..KERNEL_QUEUES).unwrap_or(&[]);
        if let Err(e) = self.setup(&mem, kernel_queues, &calls, &kicks) {
            self.stop_kernel();
            return Err(e);
        }
        let mut registrations = Registrations::new(&self.event_loop);
        let irq = Arc::new(Mutex::new(interrupt));
        if let Err(e) = registrations.add_queues(&irq, calls, |irq: &mut Arc<Interrupt>, _| {
            irq.signal_used_queue();
            false
        }) {
            drop(registrations);
            self.stop_kernel();
            return Err(e.into());
        }
        self.active = Some(Active {
            registrations,
            _kicks: kicks,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut a) = self.active.take() {
            self.stop_kernel();
            a.registrations.clear();
        }
    }
}

impl Drop for VhostVsockDevice {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_node_gives_a_clear_error() {
        let e = VhostVsock::open_path(3, Path::new("/nonexistent/vhost-vsock")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vhost-vsock-device: cannot open /nonexistent/vhost-vsock: \
             No such file or directory (load the vhost_vsock module)"
        );
        if !Path::new(VHOST_VSOCK_PATH).exists() {
            // This host: no vhost_vsock module loaded.
            let e = VhostVsock::open(3, None).unwrap_err();
            assert_eq!(
                e.to_string(),
                "vhost-vsock-device: cannot open /dev/vhost-vsock: \
                 No such file or directory (load the vhost_vsock module)"
            );
        }
    }

    #[test]
    fn vhostfd_that_is_not_vhost_is_refused_by_number() {
        let f = File::open("/dev/null").unwrap();
        let n = f.as_raw_fd();
        let e = VhostVsock::open(3, Some(OwnedFd::from(f))).unwrap_err();
        assert!(matches!(e, VsockError::VhostFd { fd, .. } if fd == n));
        assert_eq!(
            e.to_string(),
            format!(
                "vhost-vsock-device: vhostfd {n} is not a usable vhost-vsock descriptor: \
                 VHOST_GET_FEATURES failed: Inappropriate ioctl for device"
            )
        );
        // A socket is not vhost either.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            VhostVsock::open(3, Some(OwnedFd::from(a))),
            Err(VsockError::VhostFd { .. })
        ));
    }

    #[test]
    fn reserved_cids_are_refused() {
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let f = File::open("/dev/null").unwrap();
            assert!(matches!(
                VhostVsock::open(cid, Some(OwnedFd::from(f))),
                Err(VsockError::InvalidCid(c)) if c == cid
            ));
        }
    }
}
