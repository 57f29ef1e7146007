//! An epoll-driven event loop running on its own named thread.
//!
//! Device back-ends register file descriptors (queue notification eventfds,
//! sockets) together with a handler; the handler then runs on the loop thread
//! whenever the descriptor becomes ready, so device work never runs on vCPU
//! threads.
//!
//! Guarantees:
//! - handlers run one at a time, on the loop thread only;
//! - once [`EventLoop::remove`] returns, the handler is not running and will
//!   never run again (when called from the loop thread itself, e.g. by a
//!   handler removing itself, the current invocation simply finishes);
//! - a handler that panics is logged and removed; the loop keeps serving the
//!   other handlers.
//!
//! Callers must not hold a lock that a handler takes while calling
//! [`EventLoop::remove`] from another thread, since `remove` waits for a
//! running invocation of that handler to finish.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};

/// Identifies one registration on an [`EventLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

/// A handler called with the epoll event bits (`EPOLLIN`, `EPOLLHUP`, ...).
pub type Handler = Box<dyn FnMut(u32) + Send>;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll_create1 or eventfd failed.
    #[error("cannot create event loop '{name}': {source}")]
    Create {
        /// Name of the loop.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// The loop thread could not be spawned.
    #[error("cannot spawn event loop thread '{name}': {source}")]
    Spawn {
        /// Name of the loop.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// epoll_ctl(EPOLL_CTL_ADD) failed for `fd`.
    #[error("cannot watch fd {fd}: {source}")]
    Add {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
    /// The token is not (or no longer) registered.
    #[error("unknown event loop token {0:?}")]
    UnknownToken(Token),
    /// The loop has been stopped.
    #[error("event loop is stopped")]
    Stopped,
    /// [`EventLoop::freeze`]: the loop did not park in time (a handler
    /// is still running).
    #[error("event loop '{name}' did not park within {ms} ms")]
    NotParked {
        /// Name of the loop.
        name: String,
        /// How long it was given.
        ms: u128,
    },
}

/// Token value reserved for the internal wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;
/// Events fetched per epoll_wait call.
const MAX_EVENTS: usize = 32;

struct Registration {
    fd: RawFd,
    /// Set (under `handler`'s lock, or on the loop thread) once removed.
    removed: Arc<AtomicBool>,
    handler: Arc<Mutex<Handler>>,
}

struct Inner {
    name: String,
    epoll: OwnedFd,
    wake: OwnedFd,
    handlers: Mutex<HashMap<u64, Registration>>,
    next_token: AtomicU64,
    stopped: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: Mutex<Option<ThreadId>>,
}

/// A handle on an event loop thread. Clones share the same loop.
#[derive(Clone)]
pub struct EventLoop {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("name", &self.inner.name)
            .finish()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl EventLoop {
    /// Creates the loop and spawns its thread, named `name`.
    pub fn new(name: &str) -> Result<Self, EventLoopError> {
        let create_err = |source| EventLoopError::Create {
            name: name.to_string(),
            source,
        };
        // SAFETY: plain syscall; the result is checked.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(create_err)?;
        // SAFETY: `epfd` is a new descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: plain syscall; the result is checked.
        let wfd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
            .map_err(create_err)?;
        // SAFETY: `wfd` is a new descriptor owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(wfd) };
        epoll_add(
            epoll.as_raw_fd(),
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )
        .map_err(create_err)?;

        let inner = Arc::new(Inner {
            name: name.to_string(),
            epoll,
            wake,
            handlers: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
            thread_id: Mutex::new(None),
        });
        let thread_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(&thread_inner))
            .map_err(|source| EventLoopError::Spawn {
                name: name.to_string(),
                source,
            })?;
        *lock(&inner.thread_id) = Some(handle.thread().id());
        *lock(&inner.thread) = Some(handle);
        Ok(EventLoop { inner })
    }

    /// Name of the loop (and of its thread).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Watches `fd` for `events` (level-triggered unless `EPOLLET` is given)
    /// and calls `handler` with the ready event bits on the loop thread.
    ///
    /// The caller keeps ownership of `fd` and must keep it open until the
    /// registration is removed.
    pub fn add(&self, fd: RawFd, events: u32, handler: Handler) -> Result<Token, EventLoopError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EventLoopError::Stopped);
        }
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        // Insert before arming so an event that fires at once finds its handler.
        let mut handlers = lock(&self.inner.handlers);
        handlers.insert(
            token,
            Registration {
                fd,
                removed: Arc::new(AtomicBool::new(false)),
                handler: Arc::new(Mutex::new(handler)),
            },
        );
        if let Err(source) = epoll_add(self.inner.epoll.as_raw_fd(), fd, events, token) {
            handlers.remove(&token);
            return Err(EventLoopError::Add { fd, source });
        }
        Ok(Token(token))
    }

    /// Stops watching the descriptor registered under `token` and drops its
    /// handler. May be called from inside a handler (including for itself).
    /// From any other thread it waits for a running invocation to finish.
    pub fn remove(&self, token: Token) -> Result<(), EventLoopError> {
        let reg = {
            let mut handlers = lock(&self.inner.handlers);
            let reg = handlers
                .remove(&token.0)
                .ok_or(EventLoopError::UnknownToken(token))?;
            // Only unregister the fd if no other live registration uses the
            // same number (the caller may have closed and reused it).
            if !handlers.values().any(|r| r.fd == reg.fd) {
                let ret = epoll_del(self.inner.epoll.as_raw_fd(), reg.fd);
                if let Err(e) = ret {
                    // ENOENT/EBADF: the fd was already closed; nothing to do.
                    log::debug!("event loop {}: EPOLL_CTL_DEL: {e}", self.inner.name);
                }
            }
            reg
        };
        let noop: Handler = Box::new(|_| {});
        if self.on_loop_thread() {
            // Handlers run sequentially here: the only one that can be
            // running is the caller itself, which finishes normally and is
            // dropped by the dispatcher afterwards.
            reg.removed.store(true, Ordering::Release);
            if let Ok(mut handler) = reg.handler.try_lock() {
                *handler = noop;
            }
        } else {
            // Wait for a running invocation, then make sure none follows and
            // drop the handler (and what it captured) right here.
            let mut handler = lock(&reg.handler);
            reg.removed.store(true, Ordering::Release);
            *handler = noop;
        }
        Ok(())
    }

    /// Stops the loop: wakes its thread, joins it (unless called from the
    /// loop thread itself) and drops every remaining handler. Idempotent.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        wake(&self.inner);
        if !self.on_loop_thread() {
            let handle = lock(&self.inner.thread).take();
            if let Some(handle) = handle {
                if handle.join().is_err() {
                    log::error!("event loop {} thread panicked", self.inner.name);
                }
            }
            let drained: Vec<Registration> =
                lock(&self.inner.handlers).drain().map(|(_, r)| r).collect();
            drop(drained);
        }
    }

    /// Whether the caller runs on this loop's thread.
    pub fn on_loop_thread(&self) -> bool {
        *lock(&self.inner.thread_id) == Some(std::thread::current().id())
    }

    /// Number of live registrations (for tests and diagnostics).
    pub fn registrations(&self) -> usize {
        lock(&self.inner.handlers).len()
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event; the kernel validates the fds.
    cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(|_| ())
}

fn epoll_del(epfd: RawFd, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: as above; `ev` is ignored by EPOLL_CTL_DEL on modern kernels.
    cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) }).map(|_| ())
}

fn wake(inner: &Inner) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
    let ret = unsafe {
        libc::write(
            inner.wake.as_raw_fd(),
            (&one as *const u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        // EAGAIN means the counter is already non-zero: the loop will wake.
        if e.kind() != io::ErrorKind::WouldBlock {
            log::error!("event loop {}: cannot wake: {e}", inner.name);
        }
    }
}

fn drain_wake(inner: &Inner) {
    let mut buf: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
    unsafe {
        libc::read(
            inner.wake.as_raw_fd(),
            (&mut buf as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
}

fn run(inner: &Inner) {
    let empty = libc::epoll_event { events: 0, u64: 0 };
    let mut events = [empty; MAX_EVENTS];
    while !inner.stopped.load(Ordering::Acquire) {
        // SAFETY: `events` is a valid buffer of MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                inner.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("event loop {}: epoll_wait failed: {e}", inner.name);
            break;
        }
        for ev in events.iter().take(n as usize) {
            let (bits, token) = (ev.events, ev.u64);
            if token == WAKE_TOKEN {
                drain_wake(inner);
                continue;
            }
            if inner.stopped.load(Ordering::Acquire) {
                break;
            }
            dispatch(inner, token, bits);
        }
    }
    log::debug!("event loop {} exiting", inner.name);
}

fn dispatch(inner: &Inner, token: u64, bits: u32) {
    let (handler, removed) = match lock(&inner.handlers).get(&token) {
        Some(reg) => (reg.handler.clone(), reg.removed.clone()),
        // Removed earlier in this batch.
        None => return,
    };
    let mut guard = lock(&handler);
    if removed.load(Ordering::Acquire) {
        return;
    }
    let result = catch_unwind(AssertUnwindSafe(|| (*guard)(bits)));
    drop(guard);
    if result.is_err() {
        log::error!(
            "event loop {}: handler {token} panicked; removing it",
            inner.name
        );
        let reg = {
            let mut handlers = lock(&inner.handlers);
            let reg = handlers.remove(&token);
            if let Some(r) = &reg {
                if !handlers.values().any(|o| o.fd == r.fd) {
                    let _ = epoll_del(inner.epoll.as_raw_fd(), r.fd);
                }
            }
            reg
        };
        if let Some(reg) = reg {
            reg.removed.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Efd(OwnedFd);
    impl Efd {
        fn new() -> Self {
            // SAFETY: test helper; checked below.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            assert!(fd >= 0);
            // SAFETY: fresh descriptor.
            Efd(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        fn fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    fn write_fd(fd: RawFd, v: u64) {
        // SAFETY: valid buffer.
        let r = unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
        assert_eq!(r, 8);
    }
    fn read_fd(fd: RawFd) -> u64 {
        let mut v = 0u64;
        // SAFETY: valid buffer.
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        v
    }

    #[test]
    fn handler_runs_on_loop_thread_when_eventfd_written() {
        let el = EventLoop::new("test-el-1").unwrap();
        let efd = Efd::new();
        let fd = efd.fd();
        let (tx, rx) = mpsc::channel();
        el.add(
            fd,
            libc::EPOLLIN as u32,
            Box::new(move |bits| {
                let v = read_fd(fd);
                let name = std::thread::current().name().map(String::from);
                tx.send((bits, v, name)).unwrap();
            }),
        )
        .unwrap();
        write_fd(fd, 3);
        let (bits, v, name) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(bits & libc::EPOLLIN as u32, 0);
        assert_eq!(v, 3);
        assert_eq!(name.as_deref(), Some("test-el-1"));
        el.stop();
    }

    #[test]
    fn remove_stops_calls_and_drops_handler() {
        let el = EventLoop::new("test-el-2").unwrap();
        let efd = Efd::new();
        let fd = efd.fd();
        let (tx, rx) = mpsc::channel::<u64>();
        let dropped = Arc::new(AtomicBool::new(false));
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let guard = OnDrop(dropped.clone());
        let token = el
            .add(
                fd,
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    let _keep = &guard;
                    tx.send(read_fd(fd)).unwrap();
                }),
            )
            .unwrap();
        write_fd(fd, 1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        el.remove(token).unwrap();
        assert!(dropped.load(Ordering::SeqCst), "handler dropped on remove");
        assert_eq!(el.registrations(), 0);
        write_fd(fd, 1);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        assert!(matches!(
            el.remove(token),
            Err(EventLoopError::UnknownToken(_))
        ));
        el.stop();
    }

    #[test]
    fn handler_can_remove_itself() {
        let el = EventLoop::new("test-el-3").unwrap();
        let efd = Efd::new();
        let fd = efd.fd();
        let (tx, rx) = mpsc::channel::<u32>();
        let slot: Arc<Mutex<Option<Token>>> = Arc::new(Mutex::new(None));
        let (el2, slot2) = (el.clone(), slot.clone());
        let mut calls = 0u32;
        let token = el
            .add(
                fd,
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    // Never drain: level-triggered would call us forever.
                    calls += 1;
                    if let Some(t) = *slot2.lock().unwrap() {
                        el2.remove(t).unwrap();
                    }
                    tx.send(calls).unwrap();
                }),
            )
            .unwrap();
        *slot.lock().unwrap() = Some(token);
        write_fd(fd, 1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(el.registrations(), 0);
        el.stop();
    }

    #[test]
    fn panicking_handler_is_removed_and_loop_survives() {
        let el = EventLoop::new("test-el-4").unwrap();
        let bad = Efd::new();
        let good = Efd::new();
        el.add(bad.fd(), libc::EPOLLIN as u32, Box::new(|_| panic!("boom")))
            .unwrap();
        let gfd = good.fd();
        let (tx, rx) = mpsc::channel();
        el.add(
            gfd,
            libc::EPOLLIN as u32,
            Box::new(move |_| {
                tx.send(read_fd(gfd)).unwrap();
            }),
        )
        .unwrap();
        write_fd(bad.fd(), 1);
        // Give the loop time to run (and drop) the bad handler.
        for _ in 0..100 {
            if el.registrations() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(el.registrations(), 1);
        write_fd(gfd, 7);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        el.stop();
    }

    #[test]
    fn stop_joins_thread_and_refuses_new_work() {
        let el = EventLoop::new("test-el-5").unwrap();
        let efd = Efd::new();
        el.add(efd.fd(), libc::EPOLLIN as u32, Box::new(|_| {}))
            .unwrap();
        el.stop();
        assert!(lock(&el.inner.thread).is_none(), "thread joined");
        assert_eq!(el.registrations(), 0, "handlers dropped");
        assert!(matches!(
            el.add(efd.fd(), libc::EPOLLIN as u32, Box::new(|_| {})),
            Err(EventLoopError::Stopped)
        ));
        el.stop(); // idempotent
    }

    #[test]
    fn remove_from_other_thread_waits_for_running_handler() {
        let el = EventLoop::new("test-el-6").unwrap();
        let efd = Efd::new();
        let fd = efd.fd();
        let (started_tx, started_rx) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let f2 = finished.clone();
        let token = el
            .add(
                fd,
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    read_fd(fd);
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    f2.store(true, Ordering::SeqCst);
                }),
            )
            .unwrap();
        write_fd(fd, 1);
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        el.remove(token).unwrap();
        assert!(finished.load(Ordering::SeqCst));
        el.stop();
    }

    #[test]
    fn adding_a_bad_fd_fails() {
        let el = EventLoop::new("test-el-7").unwrap();
        assert!(matches!(
            el.add(-1, libc::EPOLLIN as u32, Box::new(|_| {})),
            Err(EventLoopError::Add { fd: -1, .. })
        ));
        assert_eq!(el.registrations(), 0);
        el.stop();
    }
}
