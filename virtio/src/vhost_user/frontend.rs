//! A vhost-user session with one backend: the handshake, handing queues
//! over, and taking them back.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use address_space::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::channel::{Channel, RequestError};
use super::message::{self as msg, req, MemRegion, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK};
use super::VhostUserError;

/// Feature bit 30: the backend understands GET/SET_PROTOCOL_FEATURES. It
/// is negotiated with the backend only, never offered to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;
/// Timeout of every read and write on the backend socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Protocol features this frontend implements.
const WANTED_PROTOCOL_FEATURES: u64 = PROTOCOL_F_REPLY_ACK | PROTOCOL_F_MQ;

/// The guest RAM regions as SET_MEM_TABLE describes them (guest address,
/// size, this process's mapping, offset in the backing file), each with
/// the backing file's descriptor. Fails when a region has no backing file
/// (guest RAM was not created with `mem-share=on`).
pub fn mem_regions(mem: &GuestMemoryMmap) -> Result<Vec<(MemRegion, RawFd)>, VhostUserError> {
    mem.iter()
        .map(|r| {
            let start = r.start_addr().0;
            let file = r
                .file_offset()
                .ok_or(VhostUserError::MemoryNotShared(start))?;
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VhostUserError::MemoryNotShared(start))?;
            Ok((
                MemRegion {
                    guest_phys_addr: start,
                    memory_size: r.len(),
                    userspace_addr: host as u64,
                    mmap_offset: file.start(),
                },
                file.file().as_raw_fd(),
            ))
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

/// The SET_VRING_ADDR payload of split ring `index`: this process's
/// addresses of its three parts.
fn vring_addr(mem: &GuestMemoryMmap, index: usize, q: &Queue) -> Result<[u8; 40], VhostUserError> {
    let n = u64::from(q.size());
    let ring = |what, addr, len| {
        host_range(mem, addr, len).ok_or(VhostUserError::Ring { index, what, addr })
    };
    Ok(msg::vring_addr(
        index as u32,
        ring("descriptor table", q.desc_table(), 16 * n)?,
        ring("used ring", q.used_ring(), 6 + 8 * n)?,
        ring("available ring", q.avail_ring(), 6 + 2 * n)?,
    ))
}

/// One vhost-user session, set up by [`Frontend::new`].
pub struct Frontend {
    channel: Channel,
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
    /// ownership.
    pub fn new(stream: UnixStream, num_queues: usize) -> Result<Self, VhostUserError> {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(VhostUserError::Socket)?;
        let mut fe = Frontend {
            channel: Channel::new(stream),
            backend_features: 0,
            protocol: false,
            started: 0,
            broken: false,
        };
        fe.backend_features = fe.query_u64(req::GET_FEATURES)?;
        fe.protocol = fe.backend_features & (1 << VHOST_USER_F_PROTOCOL_FEATURES) != 0;
        if fe.protocol {
            let offered = fe.query_u64(req::GET_PROTOCOL_FEATURES)?;
            let acked = offered & WANTED_PROTOCOL_FEATURES;
            fe.request(req::SET_PROTOCOL_FEATURES, &msg::u64_payload(acked), &[])?;
            if acked & PROTOCOL_F_REPLY_ACK != 0 {
                // Every request without a reply of its own gets an ack, so
                // a backend's refusal surfaces at the request it concerns.
                fe.channel.set_need_reply(true);
            }
            if acked & PROTOCOL_F_MQ != 0 {
                let n = fe.query_u64(req::GET_QUEUE_NUM)?;
                if n < num_queues as u64 {
                    return Err(VhostUserError::QueueCount {
                        backend: n,
                        needed: num_queues,
                    });
                }
            }
        }
        fe.request(req::SET_OWNER, &[], &[])?;
        Ok(fe)
    }

    /// Virtio features the backend offers, without the vhost-user-only
    /// protocol-features bit.
    pub fn virtio_features(&self) -> u64 {
        self.backend_features & !(1 << VHOST_USER_F_PROTOCOL_FEATURES)
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

    fn fail(&mut self, request: u32) -> impl FnOnce(RequestError) -> VhostUserError + '_ {
        move |source| {
            self.broken = true;
            VhostUserError::Request {
                op: req::name(request),
                source,
            }
        }
    }

    fn request(&mut self, request: u32, body: &[u8], fds: &[RawFd]) -> Result<(), VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let r = self.channel.request(request, body, fds);
        r.map_err(self.fail(request))
    }

    fn query_u64(&mut self, request: u32) -> Result<u64, VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let r = self.channel.query_u64(request);
        r.map_err(self.fail(request))
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
            acked |= 1 << VHOST_USER_F_PROTOCOL_FEATURES;
        }
        let regions = mem_regions(mem)?;
        let addrs = queues
            .iter()
            .enumerate()
            .map(|(i, q)| vring_addr(mem, i, q))
            .collect::<Result<Vec<_>, _>>()?;
        self.request(req::SET_FEATURES, &msg::u64_payload(acked), &[])?;
        let table: Vec<MemRegion> = regions.iter().map(|(r, _)| *r).collect();
        let fds: Vec<RawFd> = regions.iter().map(|(_, fd)| *fd).collect();
        self.request(req::SET_MEM_TABLE, &msg::mem_table(&table), &fds)?;
        for (i, (((q, kick), call), addr)) in
            queues.iter().zip(kicks).zip(calls).zip(&addrs).enumerate()
        {
            let index = i as u32;
            self.started = i + 1;
            let num = msg::vring_state(index, u32::from(q.size()));
            self.request(req::SET_VRING_NUM, &num, &[])?;
            let base = msg::vring_state(index, u32::from(q.next_avail()));
            self.request(req::SET_VRING_BASE, &base, &[])?;
            self.request(req::SET_VRING_ADDR, addr, &[])?;
            self.request(
                req::SET_VRING_KICK,
                &msg::vring_fd(index),
                &[kick.as_raw_fd()],
            )?;
            self.request(
                req::SET_VRING_CALL,
                &msg::vring_fd(index),
                &[call.as_raw_fd()],
            )?;
        }
        if self.protocol {
            // With protocol features, rings start disabled (spec: "Ring
            // states").
            for i in 0..self.started as u32 {
                self.request(req::SET_VRING_ENABLE, &msg::vring_state(i, 1), &[])?;
            }
        }
        Ok(())
    }

    /// Takes the rings back: disables each started ring and reads where the
    /// backend stopped (GET_VRING_BASE, which also stops the ring). Returns
    /// the next available index of each ring.
    pub fn stop(&mut self) -> Result<Vec<u32>, VhostUserError> {
        let n = std::mem::take(&mut self.started) as u32;
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        let mut bases = Vec::with_capacity(n as usize);
        for i in 0..n {
            if self.protocol {
                self.request(req::SET_VRING_ENABLE, &msg::vring_state(i, 0), &[])?;
            }
            if self.broken {
                return Err(VhostUserError::Broken);
            }
            let r = self
                .channel
                .query(req::GET_VRING_BASE, &msg::vring_state(i, 0), 8);
            let reply = r.map_err(self.fail(req::GET_VRING_BASE))?;
            let index = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
            if index != i {
                self.broken = true;
                return Err(VhostUserError::Request {
                    op: "GET_VRING_BASE",
                    source: RequestError::BadReply(format!("ring {index} instead of {i}")),
                });
            }
            bases.push(u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]));
        }
        Ok(bases)
    }
}
