//! Parking an event loop: [`EventLoop::freeze`] makes the loop thread wait
//! inside a handler of its own, so no other handler runs (and no device
//! touches guest memory) until the returned guard is dropped. Used to take
//! a consistent snapshot of the devices.
//!
//! The parked thread waits on a condition variable (futex) and the wake-up
//! goes through an eventfd, so the loop thread needs no system call beyond
//! what its seccomp filter already allows.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::event_loop::{EventLoop, EventLoopError, Token};

#[derive(Default)]
struct Park {
    parked: bool,
    released: bool,
}

struct Shared {
    state: Mutex<Park>,
    cond: Condvar,
}

fn lock(m: &Mutex<Park>) -> MutexGuard<'_, Park> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A parked event loop; dropping it lets the loop run again.
pub struct FreezeGuard {
    event_loop: EventLoop,
    token: Option<Token>,
    shared: Arc<Shared>,
    // Closed last: the registration watches it.
    _evt: OwnedFd,
}

impl std::fmt::Debug for FreezeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreezeGuard")
            .field("event_loop", &self.event_loop.name())
            .finish()
    }
}

impl FreezeGuard {
    fn release(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.released = true;
            self.shared.cond.notify_all();
        }
        if let Some(token) = self.token.take() {
            // The parking handler returns at once now; remove waits for it.
            if let Err(e) = self.event_loop.remove(token) {
                log::debug!("event loop {}: thaw: {e}", self.event_loop.name());
            }
        }
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        self.release();
    }
}

impl EventLoop {
    /// Parks the loop thread: returns once the loop is waiting inside a
    /// handler of its own (so no other handler runs) and keeps it there
    /// until the guard drops. Fails if the loop does not park within
    /// `timeout` (a handler is blocked), leaving the loop running. Must not
    /// be called on the loop thread itself.
    pub fn freeze(&self, timeout: Duration) -> Result<FreezeGuard, EventLoopError> {
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(EventLoopError::Create {
                name: self.name().to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let evt = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            state: Mutex::new(Park::default()),
            cond: Condvar::new(),
        });
        let sh = shared.clone();
        let raw = evt.as_raw_fd();
        let token = self.add(
            raw,
            libc::EPOLLIN as u32,
            Box::new(move |_| {
                let mut buf = 0u64;
                // SAFETY: reads 8 bytes into a valid u64 (non-blocking fd).
                unsafe { libc::read(raw, (&mut buf as *mut u64).cast(), 8) };
                let mut st = lock(&sh.state);
                st.parked = true;
                sh.cond.notify_all();
                while !st.released {
                    st = sh.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }),
        )?;
        let mut guard = FreezeGuard {
            event_loop: self.clone(),
            token: Some(token),
            shared,
            _evt: evt,
        };
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(raw, (&one as *const u64).cast(), 8) };
        let deadline = Instant::now() + timeout;
        let mut st = lock(&guard.shared.state);
        while !st.parked {
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                guard.release();
                return Err(EventLoopError::NotParked {
                    name: self.name().to_string(),
                    ms: timeout.as_millis(),
                });
            }
            st = guard
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(st);
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;

    fn efd() -> OwnedFd {
        // SAFETY: test helper; checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn kick(fd: &OwnedFd) {
        let v = 1u64;
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
        assert_eq!(n, 8);
    }

    #[test]
    fn no_handler_runs_while_frozen_and_work_resumes_after() {
        let el = EventLoop::new("test-freeze").unwrap();
        let work = efd();
        let raw = work.as_raw_fd();
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        el.add(
            raw,
            libc::EPOLLIN as u32,
            Box::new(move |_| {
                let mut v = 0u64;
                // SAFETY: valid buffer.
                unsafe { libc::read(raw, (&mut v as *mut u64).cast(), 8) };
                c.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let guard = el.freeze(Duration::from_secs(5)).unwrap();
        kick(&work);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count.load(Ordering::SeqCst), 0, "handler ran while frozen");
        drop(guard);
        for _ in 0..200 {
            if count.load(Ordering::SeqCst) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(el.registrations(), 1, "parking handler removed");
        el.stop();
    }

    #[test]
    fn a_busy_loop_is_reported_not_parked() {
        let el = EventLoop::new("test-freeze-2").unwrap();
        let busy = efd();
        let (tx, rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let raw = busy.as_raw_fd();
        el.add(
            raw,
            libc::EPOLLIN as u32,
            Box::new(move |_| {
                let mut v = 0u64;
                // SAFETY: valid buffer.
                unsafe { libc::read(raw, (&mut v as *mut u64).cast(), 8) };
                let _ = started_tx.send(());
                let _ = rx.lock().unwrap().recv();
            }),
        )
        .unwrap();
        kick(&busy);
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let err = el.freeze(Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not park"), "{err}");
        tx.send(()).unwrap();
        el.stop();
    }
}
