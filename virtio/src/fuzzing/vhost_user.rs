//! The vhost-user fuzz target: whatever a back-end sends back.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use address_space::memory::{create_guest_memory, MemoryOptions};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use util::event_loop::EventLoop;

use crate::vhost_user::{Frontend, VhostUserError};

/// VHOST_USER_F_PROTOCOL_FEATURES: negotiated with the back-end, never
/// offered to the guest.
const PROTOCOL_FEATURES_BIT: u32 = 30;

/// Runs a vhost-user session whose back-end answers with `data`.
///
/// Byte 0: the device's queue count (1 to 4, low bits) and the features
/// the driver accepted (the other bits, spread over the feature word).
/// The rest is the byte stream the back-end sends: it is queued on the
/// socket before the frontend starts, and the back-end's side is then
/// shut down, so a short stream ends in end-of-file instead of a timeout.
/// The frontend runs the handshake, then (if it succeeded) starts the
/// rings on shared guest memory and stops them again.
///
/// Panics on a frontend panic, an error message spanning several lines,
/// or a successful session that contradicts what was negotiated.
pub fn vhost_user_reply(data: &[u8]) {
    let Some((&ctl, reply)) = data.split_first() else {
        return;
    };
    let nq = usize::from(ctl & 3) + 1;
    let features = u64::from(ctl >> 2).wrapping_mul(0x0101_0101_0101_0101) | 1 << 32;
    let Ok((ours, mut backend)) = UnixStream::pair() else {
        return;
    };
    // A reply longer than the socket buffer would block this thread.
    let reply = &reply[..reply.len().min(64 << 10)];
    if backend.write_all(reply).is_err() || backend.shutdown(Shutdown::Write).is_err() {
        return;
    }
    // The frontend's reply deadline runs on an event loop, as in a device.
    let Ok(event_loop) = EventLoop::new("fuzz-vhost-user") else {
        return;
    };
    let mut fe = match Frontend::new(ours, nq, &event_loop) {
        Ok(fe) => fe,
        Err(e) => return check_error(&e),
    };
    assert_eq!(
        fe.virtio_features() & (1 << PROTOCOL_FEATURES_BIT),
        0,
        "protocol-features bit offered to the guest"
    );
    let Ok(mem) = create_guest_memory(
        0x10000,
        MemoryOptions {
            shared: true,
            no_dump: false,
        },
    ) else {
        return;
    };
    let mut queues = Vec::new();
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    for i in 0..nq as u64 {
        let Ok(mut q) = Queue::new(16) else { return };
        let base = 0x1000 * i;
        let set = q
            .try_set_desc_table_address(GuestAddress(base))
            .and_then(|()| q.try_set_avail_ring_address(GuestAddress(base + 0x100)))
            .and_then(|()| q.try_set_used_ring_address(GuestAddress(base + 0x200)));
        let (Ok(()), Ok(k), Ok(c)) = (set, EventFd::new(EFD_NONBLOCK), EventFd::new(EFD_NONBLOCK))
        else {
            return;
        };
        q.set_ready(true);
        queues.push(q);
        kicks.push(k);
        calls.push(c);
    }
    match fe.start(features, &mem, &queues, &kicks, &calls) {
        Ok(()) => {}
        Err(e) => {
            check_error(&e);
            assert!(fe.is_broken() || matches!(e, VhostUserError::Broken));
        }
    }
    match fe.stop() {
        Ok(bases) => assert!(
            bases.len() <= nq,
            "{} ring bases for {nq} rings",
            bases.len()
        ),
        Err(e) => check_error(&e),
    }
    drop(backend);
}

/// Every error prints as one non-empty line.
fn check_error(e: &VhostUserError) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty error message");
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
}
