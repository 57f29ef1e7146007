//! vhost-vsock: the kernel serves the receive and transmit queues; the VMM
//! opens `/dev/vhost-vsock` (or takes a descriptor inherited from its
//! parent), claims it, gives it the guest's CID and, on activation, guest
//! memory, the rings and the notification eventfds.
//!
//! The requests are rust-vmm's `vhost` crate: its `VhostBackend`
//! implementation for any [`VhostKernBackend`] issues the generic vhost
//! ioctls, and the request numbers of the two vsock ones are its own. The
//! crate's `vhost_kern::vsock::Vsock` itself is not used because it can only
//! open `/dev/vhost-vsock` on its own, while Kata hands a jailed VMM an
//! already open descriptor (`vhostfd=N`); `KernelVsock` is the same
//! handle around a descriptor from either source.
//!
//! The kernel signals used buffers on a per-queue "call" eventfd; the device
//! watches those on its event loop and raises the transport's interrupt (so
//! that the InterruptStatus register shows the queue update).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use vhost::vhost_kern::vhost_binding::{VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING};
use vhost::vhost_kern::VhostKernBackend;
use vhost::vsock::VhostVsock as _;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::ioctl::ioctl_with_ref;

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

/// An open vhost-vsock descriptor as the `vhost` crate drives it.
struct KernelVsock {
    file: File,
    /// Guest memory, which the crate translates ring addresses with; set
    /// at activation.
    mem: Arc<GuestMemoryMmap>,
}

impl AsRawFd for KernelVsock {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl VhostKernBackend for KernelVsock {
    type AS = Arc<GuestMemoryMmap>;

    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl KernelVsock {
    fn set_running(&self, running: bool) -> vhost::Result<()> {
        let on = libc::c_int::from(running);
        // SAFETY: VHOST_VSOCK_SET_RUNNING reads one int, which `on` is; the
        // kernel checks the descriptor.
        let ret = unsafe { ioctl_with_ref(self, VHOST_VSOCK_SET_RUNNING(), &on) };
        ioctl_result(ret)
    }
}

impl vhost::vsock::VhostVsock for KernelVsock {
    fn set_guest_cid(&self, cid: u64) -> vhost::Result<()> {
        // SAFETY: VHOST_VSOCK_SET_GUEST_CID reads one u64, which `cid` is;
        // the kernel checks the descriptor.
        let ret = unsafe { ioctl_with_ref(self, VHOST_VSOCK_SET_GUEST_CID(), &cid) };
        ioctl_result(ret)
    }

    fn start(&self) -> vhost::Result<()> {
        self.set_running(true)
    }

    fn stop(&self) -> vhost::Result<()> {
        self.set_running(false)
    }
}

fn ioctl_result(ret: libc::c_int) -> vhost::Result<()> {
    if ret < 0 {
        Err(vhost::Error::IoctlError(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// The OS error behind a `vhost` crate error (its own text otherwise).
fn os_error(e: vhost::Error) -> io::Error {
    match e {
        vhost::Error::IoctlError(e) | vhost::Error::VhostOpen(e) | vhost::Error::IOError(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

/// A claimed vhost-vsock kernel device with the guest's CID set.
pub struct VhostVsock {
    kernel: KernelVsock,
    guest_cid: u64,
    features: u64,
}

impl std::fmt::Debug for VhostVsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostVsock")
            .field("fd", &self.kernel.as_raw_fd())
            .field("guest_cid", &self.guest_cid)
            .field("features", &self.features)
            .finish()
    }
}

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> VsockError {
    move |e| VsockError::Vhost {
        op,
        source: os_error(e),
    }
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

    fn kernel(file: File) -> KernelVsock {
        KernelVsock {
            file,
            mem: Arc::new(GuestMemoryMmap::default()),
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
        let kernel = Self::kernel(file);
        let features = kernel
            .get_features()
            .map_err(vhost_err("VHOST_GET_FEATURES"))?;
        Self::claim(kernel, guest_cid, features)
    }

    fn from_fd(guest_cid: u64, file: File) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let kernel = Self::kernel(file);
        let features = kernel.get_features().map_err(|e| VsockError::VhostFd {
            fd: kernel.as_raw_fd(),
            op: "VHOST_GET_FEATURES",
            source: os_error(e),
        })?;
        Self::claim(kernel, guest_cid, features)
    }

    fn claim(kernel: KernelVsock, guest_cid: u64, features: u64) -> Result<Self, VsockError> {
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VsockError::Vhost {
                op: "VHOST_GET_FEATURES",
                source: io::Error::other("the kernel does not offer VIRTIO_F_VERSION_1"),
            });
        }
        kernel.set_owner().map_err(vhost_err("VHOST_SET_OWNER"))?;
        kernel
            .set_guest_cid(guest_cid)
            .map_err(vhost_err("VHOST_VSOCK_SET_GUEST_CID"))?;
        Ok(VhostVsock {
            kernel,
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
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        calls: &[EventFd],
        kicks: &[EventFd],
    ) -> Result<(), ActivateError> {
        let err = |op: &'static str| {
            move |e: vhost::Error| {
                let e = os_error(e);
                ActivateError::Io(io::Error::new(e.kind(), format!("{op}: {e}")))
            }
        };
        let features = self.acked & self.features_offered();
        let kernel = &mut self.vhost.kernel;
        kernel.mem = Arc::new(mem.clone());
        kernel
            .set_features(features)
            .map_err(err("VHOST_SET_FEATURES"))?;
        // The kernel reads guest RAM through this process's mappings; the
        // other fields (backing file, offset) are for vhost-user.
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                ..Default::default()
            })
            .collect();
        kernel
            .set_mem_table(&regions)
            .map_err(err("VHOST_SET_MEM_TABLE"))?;
        for (i, ((q, call), kick)) in queues.iter().zip(calls).zip(kicks).enumerate() {
            kernel
                .set_vring_num(i, q.size())
                .map_err(err("VHOST_SET_VRING_NUM"))?;
            kernel
                .set_vring_base(i, q.next_avail())
                .map_err(err("VHOST_SET_VRING_BASE"))?;
            // Guest addresses: the crate checks them against guest memory
            // and passes the kernel this process's addresses.
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: q.desc_table(),
                used_ring_addr: q.used_ring(),
                avail_ring_addr: q.avail_ring(),
                log_addr: None,
            };
            kernel
                .set_vring_addr(i, &ring)
                .map_err(err("VHOST_SET_VRING_ADDR"))?;
            kernel
                .set_vring_kick(i, kick)
                .map_err(err("VHOST_SET_VRING_KICK"))?;
            kernel
                .set_vring_call(i, call)
                .map_err(err("VHOST_SET_VRING_CALL"))?;
        }
        kernel.start().map_err(err("VHOST_VSOCK_SET_RUNNING"))
    }

    /// Stops the kernel's processing of the rings.
    fn stop_kernel(&self) {
        let kernel = &self.vhost.kernel;
        if let Err(e) = kernel.stop() {
            log::warn!("vhost-vsock: VHOST_VSOCK_SET_RUNNING(0): {}", os_error(e));
        }
        for index in 0..KERNEL_QUEUES {
            // Also detaches the ring from the kernel worker.
            let _ = kernel.get_vring_base(index);
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

    fn snapshot_blocker(&self) -> Option<String> {
        Some("kernel vhost-vsock cannot be snapshotted (the kernel owns its queues and connections); use the user-space vsock (uds-path)".to_string())
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
    fn rings_are_given_as_guest_addresses_and_checked_against_guest_memory() {
        let mut kernel = VhostVsock::kernel(File::open("/dev/null").unwrap());
        kernel.mem = Arc::new(crate::test_utils::guest_memory());
        let ring = |base: u64| VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: base,
            used_ring_addr: base + 0x2000,
            avail_ring_addr: base + 0x1000,
            log_addr: None,
        };
        // Inside guest RAM: translated and handed to the descriptor, which
        // is no vhost device.
        let e = os_error(kernel.set_vring_addr(0, &ring(0x10_0000)).unwrap_err());
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY));
        // Past the end of guest RAM: refused before any request.
        let past = crate::test_utils::MEM_SIZE - 0x1000;
        assert!(matches!(
            kernel.set_vring_addr(0, &ring(past)),
            Err(vhost::Error::InvalidQueue)
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
