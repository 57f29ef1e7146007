//! The frontend (VMM) side of the vhost-user protocol (QEMU's
//! docs/interop/vhost-user.rst): another process, the backend, serves a
//! device's virtqueues directly out of guest RAM, which it maps from the
//! memory file descriptors the frontend sends.
//!
//! The protocol itself (message encoding, SCM_RIGHTS, replies and acks) is
//! rust-vmm's `vhost` crate ([`vhost::vhost_user::Frontend`]); this module
//! drives it for a virtio-fs device and turns every failure into a
//! [`VhostUserError`] naming the request that failed:
//!
//! - [`connect`]: connects to the backend's listening socket, retrying for a
//!   bounded time while the socket does not exist yet or refuses.
//! - [`Frontend::new`]: GET_FEATURES, then (if the backend offers
//!   `VHOST_USER_F_PROTOCOL_FEATURES`) GET/SET_PROTOCOL_FEATURES keeping only
//!   REPLY_ACK and MQ, GET_QUEUE_NUM with MQ, and SET_OWNER.
//! - [`Frontend::start`]: SET_FEATURES, SET_MEM_TABLE (one region per guest
//!   RAM region, with its memfd and offset), and per ring SET_VRING_NUM,
//!   SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL and
//!   SET_VRING_ENABLE.
//! - [`Frontend::stop`]: SET_VRING_ENABLE(0) and GET_VRING_BASE per started
//!   ring (the backend stops the ring when it answers).
//!
//! Every request is bounded in time ([`IO_TIMEOUT`], see `deadline`), and
//! after the first error the session is considered dead
//! ([`VhostUserError::Broken`]): a backend that crashes or misbehaves costs
//! the device, never the VMM.

mod connect;
mod deadline;
mod frontend;

#[cfg(test)]
mod fake_backend;
#[cfg(test)]
mod tests;

pub use connect::{connect, CONNECT_TIMEOUT};
pub use deadline::IO_TIMEOUT;
pub use frontend::{mem_regions, Frontend};

use std::path::PathBuf;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The backend closed the connection.
    #[error("the backend closed the connection")]
    Disconnected,
    /// The backend did not answer in time.
    #[error("no answer from the backend within the timeout")]
    Timeout,
    /// The backend refused the request (REPLY_ACK with a non-zero code).
    #[error("the backend refused it")]
    Refused,
    /// Anything else the `vhost` crate reports (bad reply, socket error).
    #[error("{0}")]
    Protocol(#[source] vhost::Error),
}

/// Errors of the vhost-user frontend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The backend's socket could not be connected to.
    #[error(
        "cannot connect to vhost-user backend socket {path} (tried for {waited_ms} ms): {source}"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// How long connection attempts went on.
        waited_ms: u128,
        /// The last connect error.
        source: std::io::Error,
    },
    /// A request failed (backend error, disconnection, timeout, bad reply).
    #[error("vhost-user {op} failed: {source}")]
    Request {
        /// The request that failed (e.g. `SET_MEM_TABLE`).
        op: &'static str,
        /// What went wrong.
        source: RequestError,
    },
    /// An earlier error or a hang-up ended the session.
    #[error("vhost-user backend is disconnected or failed earlier")]
    Broken,
    /// The backend serves fewer queues than the device has.
    #[error("vhost-user backend serves {backend} queues, the device needs {needed}")]
    QueueCount {
        /// Queues the backend supports (GET_QUEUE_NUM).
        backend: u64,
        /// Queues of the device.
        needed: usize,
    },
    /// A guest RAM region has no file descriptor to share.
    #[error(
        "guest RAM at {0:#x} is not shareable with a vhost-user backend \
         (add mem-share=on to -machine)"
    )]
    MemoryNotShared(u64),
    /// A ring does not lie inside one guest RAM region.
    #[error("queue {index} {what} at {addr:#x} is not inside guest RAM")]
    Ring {
        /// Queue index.
        index: usize,
        /// Which part of the ring.
        what: &'static str,
        /// Its guest physical address.
        addr: u64,
    },
    /// The request deadline could not be set up.
    #[error("vhost-user socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The request deadline could not be watched on the event loop.
    #[error("vhost-user socket: {0}")]
    EventLoop(#[from] util::event_loop::EventLoopError),
}
