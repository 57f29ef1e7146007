//! SIGTERM, SIGINT and SIGHUP as a flag, for `altovirt-shim run`: the
//! handler only records the signal; the run loop notices it and stops the
//! VM cleanly.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: libc::c_int) {
    // An atomic store is async-signal-safe.
    PENDING.store(sig, Ordering::SeqCst);
}

/// The signals that stop a sandbox.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Installs the recording handler for [`STOP_SIGNALS`].
pub fn install() -> io::Result<()> {
    for sig in STOP_SIGNALS {
        // SAFETY: an all-zero sigaction is valid; the handler only stores
        // to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The last stop signal received, if any.
pub fn pending() -> Option<libc::c_int> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
