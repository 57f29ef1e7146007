//! A vhost-user session with one backend, on the `vhost` crate's frontend:
//! the handshake, handing queues over, and taking them back.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use address_space::GuestMemoryMmap;
use util::event_loop::EventLoop;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Error as ProtocolError, Frontend as VuFrontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::deadline::Deadline;
use super::{RequestError, VhostUserError};

/// The vhost-user-only feature bit: the backend understands
/// GET/SET_PROTOCOL_FEATURES. Negotiated with the backend, never offered to
/// the guest.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Protocol features this frontend uses.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ
}

/// The guest RAM regions as SET_MEM_TABLE describes them (guest address,
/// size, this process's mapping, and the backing file with the region's
/// offset in it). Fails when a region has no backing file (guest RAM was
/// not created with `mem-share=on`).
pub fn mem_regions(
    mem: &GuestMemoryMmap,
) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r)
                .map_err(|_| VhostUserError::MemoryNotShared(r.start_addr().0))
        })
        .collect()
}

/// Host address of `len` bytes of guest memory at `addr`, which must lie in
/// one region.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let last = addr.checked_add(len.checked_sub(1)?)?;
    let start = mem.get_host_address(GuestAddress(addr)).ok()? as u64;
    let end = mem.get_host_address(GuestAddress(last)).ok()? as u64;
    (end.checked_sub(start) == Some(len - 1)).then_some(start)
}

/// The SET_VRING_ADDR argument of split ring `index`: this process's
/// addresses of its three parts.
fn vring_config(
    mem: &GuestMemoryMmap,
    index: usize,
    q: &Queue,
) -> Result<VringConfigData, VhostUserError> {
    let n = u64::from(q.size());
    let ring = |what, addr, len| {
        host_range(mem, addr, len).ok_or(VhostUserError::Ring { index, what, addr })
    };
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: ring("descriptor table", q.desc_table(), 16 * n)?,
        used_ring_addr: ring("used ring", q.used_ring(), 6 + 8 * n)?,
        avail_ring_addr: ring("available ring", q.avail_ring(), 6 + 2 * n)?,
        log_addr: None,
    })
}

/// Whether the peer of `sock` has hung up (checked without waiting).
fn peer_hung_up(sock: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: sock,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// What went wrong with a request, from the crate's error, whether the
/// deadline fired, and the socket's state (the crate reports a reply cut
/// short by a hang-up as a partial message).
fn classify(e: vhost::Error, timed_out: bool, sock: RawFd) -> RequestError {
    if timed_out {
        return RequestError::Timeout;
    }
    match e {
        vhost::Error::VhostUserProtocol(ProtocolError::BackendInternalError) => {
            RequestError::Refused
        }
        vhost::Error::VhostUserProtocol(
            ProtocolError::Disconnected | ProtocolError::SocketBroken(_),
        ) => RequestError::Disconnected,
        _ if peer_hung_up(sock) => RequestError::Disconnected,
        e => RequestError::Protocol(e),
    }
}

/// One vhost-user session, set up by [`Frontend::new`].
pub struct Frontend {
    vu: VuFrontend,
    deadline: Deadline,
    /// Virtio features the backend offers (GET_FEATURES), protocol bit
    /// included.
    backend_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was negotiated.
    protocol: bool,
    /// Rings handed to the backend by the last [`Frontend::start`].
    started: usize,
    /// Set by the first failed request.
    broken: bool,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("backend_features", &self.backend_features)
            .field("protocol", &self.protocol)
            .field("started", &self.started)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Frontend {
    /// Runs the handshake on a connected `stream` for a device with
    /// `num_queues` queues: features, protocol features, queue count,
    /// ownership. `event_loop` (not the caller's thread) bounds each
    /// request in time.
    pub fn new(
        stream: UnixStream,
        num_queues: usize,
        event_loop: &EventLoop,
    ) -> Result<Self, VhostUserError> {
        let deadline = Deadline::new(&stream, event_loop)?;
        let mut fe = Frontend {
            vu: VuFrontend::from_stream(stream, num_queues as u64),
            deadline,
            backend_features: 0,
            protocol: false,
            started: 0,
            broken: false,
        };
        fe.backend_features = fe.call("GET_FEATURES", |vu| vu.get_features())?;
        fe.protocol = fe.backend_features & PROTOCOL_FEATURES != 0;
        if fe.protocol {
            let offered = fe.call("GET_PROTOCOL_FEATURES", |vu| vu.get_protocol_features())?;
            let acked = offered & wanted_protocol_features();
            fe.call("SET_PROTOCOL_FEATURES", |vu| {
                vu.set_protocol_features(acked)
            })?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request without a reply of its own gets an ack, so
                // a backend's refusal surfaces at the request it concerns.
                fe.vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = fe.call("GET_QUEUE_NUM", |vu| vu.get_queue_num())?;
                if n < num_queues as u64 {
                    return Err(VhostUserError::QueueCount {
                        backend: n,
                        needed: num_queues,
                    });
                }
            }
        }
        fe.call("SET_OWNER", |vu| vu.set_owner())?;
        Ok(fe)
    }

    /// Virtio features the backend offers, without the vhost-user-only
    /// protocol-features bit.
    pub fn virtio_features(&self) -> u64 {
        self.backend_features & !PROTOCOL_FEATURES
    }

    /// Whether the session failed (a request failed or the backend hung
    /// up, see [`Frontend::mark_broken`]).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Records that the backend is gone: later requests fail at once with
    /// [`VhostUserError::Broken`] instead of touching the socket.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Runs one request of the crate's frontend under the deadline; the
    /// first failure breaks the session.
    fn call<T>(
        &mut self,
        op: &'static str,
        request: impl FnOnce(&mut VuFrontend) -> vhost::Result<T>,
    ) -> Result<T, VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let vu = &mut self.vu;
        let (result, timed_out) = self.deadline.run(|| request(vu));
        let result = match result {
            Ok(_) if timed_out => Err(RequestError::Timeout),
            Ok(v) => Ok(v),
            Err(e) => Err(classify(e, timed_out, self.vu.as_raw_fd())),
        };
        result.map_err(|source| {
            self.broken = true;
            VhostUserError::Request { op, source }
        })
    }

    /// Hands the device to the backend: the driver's `features` (only bits
    /// the backend offered are kept), guest memory, and for each queue its
    /// ring, the eventfd the guest's notifications arrive on (`kicks`) and
    /// the one the backend signals used buffers on (`calls`).
    pub fn start(
        &mut self,
        features: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let mut acked = features & self.virtio_features();
        if self.protocol {
            acked |= PROTOCOL_FEATURES;
        }
        let regions = mem_regions(mem)?;
        let configs = queues
            .iter()
            .enumerate()
            .map(|(i, q)| vring_config(mem, i, q))
            .collect::<Result<Vec<_>, _>>()?;
        self.call("SET_FEATURES", |vu| vu.set_features(acked))?;
        self.call("SET_MEM_TABLE", |vu| vu.set_mem_table(&regions).map(drop))?;
        for (i, (((q, kick), call), config)) in queues
            .iter()
            .zip(kicks)
            .zip(calls)
            .zip(&configs)
            .enumerate()
        {
            self.started = i + 1;
            self.call("SET_VRING_NUM", |vu| vu.set_vring_num(i, q.size()))?;
            self.call("SET_VRING_BASE", |vu| vu.set_vring_base(i, q.next_avail()))?;
            self.call("SET_VRING_ADDR", |vu| vu.set_vring_addr(i, config))?;
            self.call("SET_VRING_KICK", |vu| vu.set_vring_kick(i, kick))?;
            self.call("SET_VRING_CALL", |vu| vu.set_vring_call(i, call))?;
        }
        if self.protocol {
            // With protocol features, rings start disabled (spec: "Ring
            // states").
            for i in 0..self.started {
                self.call("SET_VRING_ENABLE", |vu| vu.set_vring_enable(i, true))?;
            }
        }
        Ok(())
    }

    /// Takes the rings back: disables each started ring and reads where the
    /// backend stopped (GET_VRING_BASE, which also stops the ring). Returns
    /// the next available index of each ring.
    pub fn stop(&mut self) -> Result<Vec<u32>, VhostUserError> {
        let n = std::mem::take(&mut self.started);
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let mut bases = Vec::with_capacity(n);
        for i in 0..n {
            if self.protocol {
                self.call("SET_VRING_ENABLE", |vu| vu.set_vring_enable(i, false))?;
            }
            bases.push(self.call("GET_VRING_BASE", |vu| vu.get_vring_base(i))?);
        }
        Ok(bases)
    }
}
