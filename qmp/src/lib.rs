//! QMP (QEMU Machine Protocol) for altovirt: the wire protocol and a
//! unix-socket server, with the VM behind the [`QmpHandler`] trait.
//!
//! The crate knows nothing about the VM. The VMM:
//! 1. creates one [`EventHub`] and hands [`EventEmitter`]s to the code that
//!    raises events (`STOP`, `RESUME`, `SHUTDOWN`, `DEVICE_DELETED`, ...);
//! 2. implements [`QmpHandler`] for its VM;
//! 3. calls [`QmpServer::bind`] for each `-qmp` socket (the socket is
//!    listening when it returns), then [`QmpServer::start`];
//! 4. drops the [`QmpServerHandle`] on exit, which stops the threads and
//!    removes the socket file.
//!
//! Protocol details, limits and examples are in `docs/qmp.md`.

#![deny(missing_docs)]

mod args;
mod command;
mod conn;
mod error;
mod events;
mod fds;
mod framer;
/// Fuzzing entry points (feature `fuzzing`, used by `qmp/fuzz`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hotplug;
mod protocol;
mod server;
mod throttle;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use command::{QmpCapability, QmpCommand, COMMAND_NAMES, QUERY_LOG_STATS};
pub use conn::{MAX_QUEUED_LINES, NEGOTIATION_TIMEOUT};
pub use error::{ErrorClass, QmpError, QmpServerError};
pub use events::{event_line, EventEmitter, EventHub, Timestamp};
pub use fds::{FdLookup, FdStore, MAX_PENDING_FDS, MAX_STORED_FDS};
pub use framer::{Frame, FrameError, Framer, MAX_MESSAGE_SIZE, MAX_NESTING};
pub use hotplug::{
    BlockdevAddArgs, BlockdevAio, BlockdevCache, BlockdevCommon, BlockdevDiscard, BlockdevDriver,
    BlockdevFile, BlockdevOptions, BlockdevRaw, BlockdevRef, DeviceAddArgs, NetdevAddArgs,
    NetdevBackend, TapNetdevArgs, TapRateLimits,
};
pub use protocol::{greeting_line, QmpHandler, QmpVersion, Response};
pub use server::{QmpServer, QmpServerHandle, QmpThreadFilters, MAX_CLIENTS};
pub use throttle::{BlockSetIoThrottleArgs, THROTTLE_VALUE_MAX};

/// Locks a mutex, ignoring poisoning (the data stays usable: every critical
/// section here leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
