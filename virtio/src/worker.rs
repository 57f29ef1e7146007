//! Plumbing shared by the devices: the queues of an active device and the
//! event loop registrations that drive them.

use std::fmt::Display;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use address_space::GuestMemoryMmap;
use util::event_loop::{EventLoop, EventLoopError, Token};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{self, Chain};
use crate::{lock, ActivateError, Interrupt};

/// The queues of an active device with what is needed to use them.
pub(crate) struct QueueSet {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    broken: bool,
    name: &'static str,
}

impl QueueSet {
    /// Wraps `queues`; `name` is used in log lines.
    pub fn new(
        name: &'static str,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Self {
        QueueSet {
            mem,
            interrupt,
            queues,
            broken: false,
            name,
        }
    }

    /// The live state of every queue (for snapshots).
    pub fn states(&self) -> Vec<virtio_queue::QueueState> {
        self.queues.iter().map(|q| q.state()).collect()
    }

    /// Whether the device gave up on its queues (DEVICE_NEEDS_RESET).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Stops using the queues until reset and tells the driver.
    pub fn fail(&mut self, what: &dyn Display) {
        log::error!("{}: {what}; device needs reset", self.name);
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// The driver's available index of queue `q` (how many buffers it has
    /// ever offered, modulo 2^16), read from guest memory.
    pub fn avail_idx(&self, q: usize) -> Option<u16> {
        let queue = self.queues.get(q)?;
        queue
            .avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
            .ok()
            .map(|w| w.0)
    }

    /// Takes the next chain of queue `q`; `None` when empty or broken
    /// (a broken queue marks the device as needing a reset).
    pub fn pop(&mut self, q: usize) -> Option<Chain> {
        if self.broken {
            return None;
        }
        let queue = self.queues.get_mut(q)?;
        match chain::pop(queue, &self.mem) {
            Ok(c) => c,
            Err(e) => {
                self.fail(&format_args!("queue {q}: {e}"));
                None
            }
        }
    }

    /// Puts chain `head` back on queue `q`'s used ring.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> bool {
        let Some(queue) = self.queues.get_mut(q) else {
            return false;
        };
        match chain::add_used(queue, &self.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.fail(&format_args!("queue {q}: {e}"));
                false
            }
        }
    }
}

/// Checks what a transport hands to `activate` and splits it.
pub(crate) fn split_queues(
    queues: Vec<(Queue, EventFd)>,
    expected: usize,
) -> Result<(Vec<Queue>, Vec<EventFd>), ActivateError> {
    if queues.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len(),
        });
    }
    if let Some(i) = queues.iter().position(|(q, _)| !q.ready()) {
        return Err(ActivateError::QueueNotReady(i));
    }
    Ok(queues.into_iter().unzip())
}

/// Event loop registrations, removed on drop.
pub(crate) struct Registrations {
    event_loop: EventLoop,
    tokens: Vec<Token>,
}

impl Registrations {
    /// No registrations yet.
    pub fn new(event_loop: &EventLoop) -> Self {
        Registrations {
            event_loop: event_loop.clone(),
            tokens: Vec::new(),
        }
    }

    /// Calls `f(worker, i)` on the event loop whenever `evts[i]` is
    /// signalled. When `f` returns true (work left over, yielding to other
    /// devices) the eventfd is re-armed.
    pub fn add_queues<W, F>(
        &mut self,
        worker: &Arc<Mutex<W>>,
        evts: Vec<EventFd>,
        f: F,
    ) -> Result<(), EventLoopError>
    where
        W: Send + 'static,
        F: Fn(&mut W, usize) -> bool + Send + Clone + 'static,
    {
        for (i, evt) in evts.into_iter().enumerate() {
            let fd = evt.as_raw_fd();
            let worker = worker.clone();
            let f = f.clone();
            let token = self.event_loop.add(
                fd,
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    // Clear first: a kick arriving meanwhile re-triggers us.
                    let _ = evt.read();
                    if f(&mut lock(&worker), i) {
                        let _ = evt.write(1);
                    }
                }),
            )?;
            self.tokens.push(token);
        }
        Ok(())
    }

    /// Calls `f(worker)` on the event loop whenever `fd` (owned by the
    /// worker, so open as long as this registration) is readable.
    pub fn add_fd<W, F>(
        &mut self,
        worker: &Arc<Mutex<W>>,
        fd: std::os::fd::RawFd,
        f: F,
    ) -> Result<(), EventLoopError>
    where
        W: Send + 'static,
        F: Fn(&mut W) + Send + 'static,
    {
        let worker = worker.clone();
        let token = self.event_loop.add(
            fd,
            libc::EPOLLIN as u32,
            Box::new(move |_| f(&mut lock(&worker))),
        )?;
        self.tokens.push(token);
        Ok(())
    }

    /// Removes every registration (waiting for running handlers).
    pub fn clear(&mut self) {
        for t in self.tokens.drain(..) {
            if let Err(e) = self.event_loop.remove(t) {
                log::debug!("virtio: {e}");
            }
        }
    }
}

impl Drop for Registrations {
    fn drop(&mut self) {
        self.clear();
    }
}
