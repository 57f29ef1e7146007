//! A bound on how long one request to the backend may take.
//!
//! Kept by hand because the `vhost` crate cannot express it: its frontend
//! retries a read or write that fails with EAGAIN, which is what a socket
//! timeout (SO_RCVTIMEO/SO_SNDTIMEO) produces, so such a timeout would not
//! end the wait on a backend that stays connected but never answers; the
//! thread that made the request (a vCPU, or the main thread) would hang.
//!
//! Instead, [`Deadline::run`] arms a timerfd for [`IO_TIMEOUT`] around each
//! request. The device's event loop watches the timerfd; if it expires
//! while the request is still running, the handler shuts the socket down,
//! which ends the blocked read or write at once, and the request reports a
//! timeout. The session is dead afterwards, as after any failed request.

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use util::event_loop::{EventLoop, Token};
use vmm_sys_util::timerfd::TimerFd;

use super::VhostUserError;

/// How long the backend may take to take a request and answer it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct State {
    /// Non-blocking, so the handler never waits on a timer the requester
    /// disarmed after epoll reported it.
    timer: TimerFd,
    /// A request is running.
    armed: bool,
    /// The running request's time ran out and the socket was shut down.
    fired: bool,
    /// A duplicate of the backend socket, to shut it down.
    sock: UnixStream,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The request deadline of one backend socket.
pub struct Deadline {
    state: Arc<Mutex<State>>,
    event_loop: EventLoop,
    token: Option<Token>,
}

impl Deadline {
    /// Watches a new timer for the socket `sock` on `event_loop`.
    pub fn new(sock: &UnixStream, event_loop: &EventLoop) -> Result<Self, VhostUserError> {
        let timer = TimerFd::new().map_err(|e| VhostUserError::Socket(e.into()))?;
        // SAFETY: F_SETFL on a descriptor this function owns; no memory is
        // passed.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(VhostUserError::Socket(std::io::Error::last_os_error()));
        }
        let timer_fd = timer.as_raw_fd();
        let state = Arc::new(Mutex::new(State {
            timer,
            armed: false,
            fired: false,
            sock: sock.try_clone().map_err(VhostUserError::Socket)?,
        }));
        let handler_state = state.clone();
        let token = event_loop.add(
            timer_fd,
            libc::EPOLLIN as u32,
            Box::new(move |_| {
                let mut s = lock(&handler_state);
                // Read first: it also clears the readiness of a timer that
                // expired just as its request finished.
                let expired = matches!(s.timer.wait(), Ok(n) if n > 0);
                if expired && s.armed && !s.fired {
                    s.fired = true;
                    let _ = s.sock.shutdown(Shutdown::Both);
                }
            }),
        )?;
        Ok(Deadline {
            state,
            event_loop: event_loop.clone(),
            token: Some(token),
        })
    }

    /// Runs `request` under the deadline; returns its result and whether
    /// its time ran out (the socket is then shut down, and the result is an
    /// error, or a success the session cannot build on).
    ///
    /// On the event loop's own thread the timer could not fire while the
    /// request waits, so the request runs unbounded there (no request is
    /// made from it today).
    pub fn run<T>(&self, request: impl FnOnce() -> T) -> (T, bool) {
        if !self.event_loop.on_loop_thread() {
            let mut s = lock(&self.state);
            s.fired = false;
            match s.timer.reset(IO_TIMEOUT, None) {
                Ok(()) => s.armed = true,
                Err(e) => log::warn!("vhost-user: cannot arm the request deadline: {e}"),
            }
        }
        let result = request();
        let mut s = lock(&self.state);
        if std::mem::replace(&mut s.armed, false) {
            let _ = s.timer.clear();
        }
        (result, s.fired)
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            let _ = self.event_loop.remove(t);
        }
    }
}
