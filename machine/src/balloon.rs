//! The memory balloon as the control plane sees it: a target size for the
//! guest in bytes (QMP `balloon`), the size the guest reports (`actual`,
//! QMP `query-balloon`) and the rate-limited `BALLOON_CHANGE` event.
//!
//! QEMU's semantics: the target is the memory the guest should keep, so
//! the device is asked for `(ram - target) / 4 KiB` pages (a target above
//! RAM is RAM: an empty balloon); the guest's size is RAM minus the pages
//! the driver says it holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio::balloon::{Balloon, BalloonListener, BALLOON_PAGE_SIZE};

use crate::events::{EventSender, VmEvent};

/// At most one `BALLOON_CHANGE` event per second, as QEMU rate-limits it:
/// the driver writes `actual` after every 256 pages, and a guest could
/// write it in a loop.
pub const BALLOON_EVENT_PERIOD: Duration = Duration::from_secs(1);

/// The balloon device of a VM, for QMP.
pub struct BalloonHandle {
    device: Arc<Mutex<Balloon>>,
    ram_size: u64,
}

impl BalloonHandle {
    /// `device` in a guest with `ram_size` bytes of RAM.
    pub fn new(device: Arc<Mutex<Balloon>>, ram_size: u64) -> Self {
        BalloonHandle { device, ram_size }
    }

    fn device(&self) -> std::sync::MutexGuard<'_, Balloon> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the guest to shrink (or grow back) to `target` bytes of RAM;
    /// the guest gets a configuration change interrupt.
    pub fn set_target(&self, target: u64) {
        let target = target.min(self.ram_size);
        let pages = (self.ram_size - target) / BALLOON_PAGE_SIZE;
        self.device()
            .set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
    }

    /// The guest's RAM when `pages` are in the balloon.
    pub fn guest_bytes(&self, pages: u32) -> u64 {
        self.ram_size
            .saturating_sub(u64::from(pages) * BALLOON_PAGE_SIZE)
    }

    /// The guest's RAM now: RAM minus what the driver reports in the
    /// balloon.
    pub fn actual_bytes(&self) -> u64 {
        let pages = self.device().actual_pages();
        self.guest_bytes(pages)
    }
}

/// The device reports `actual` changes to the control loop.
impl BalloonListener for EventSender {
    fn actual_changed(&self, pages: u32) {
        self.send(VmEvent::BalloonActual(pages));
    }
}

/// Rate limit of one event kind: the first change in a quiet period goes
/// out at once, later ones in the period are merged and the last value
/// goes out when the period ends.
#[derive(Debug)]
pub struct EventThrottle {
    period: Duration,
    /// When the current period ends (None: quiet, the next event goes out).
    until: Option<Instant>,
    pending: Option<u64>,
}

impl EventThrottle {
    /// A throttle letting one event through per `period`.
    pub fn new(period: Duration) -> Self {
        EventThrottle {
            period,
            until: None,
            pending: None,
        }
    }

    /// A new value at `now`: returns it when it may go out now; otherwise
    /// it is kept (replacing an older one) for [`EventThrottle::expire`].
    pub fn offer(&mut self, value: u64, now: Instant) -> Option<u64> {
        match self.until {
            Some(until) if now < until => {
                self.pending = Some(value);
                None
            }
            _ => {
                self.until = Some(now + self.period);
                self.pending = None;
                Some(value)
            }
        }
    }

    /// When [`EventThrottle::expire`] has something to send (None: nothing
    /// pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.and(self.until)
    }

    /// At the end of the period: the value kept, which starts a new period.
    pub fn expire(&mut self, now: Instant) -> Option<u64> {
        match (self.until, self.pending) {
            (Some(until), Some(value)) if now >= until => {
                self.until = Some(now + self.period);
                self.pending = None;
                Some(value)
            }
            (Some(until), None) if now >= until => {
                self.until = None;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use util::event_loop::EventLoop;
    use virtio::balloon::BalloonConfig;

    #[test]
    fn target_and_actual_follow_qemu() {
        let el = EventLoop::new("balloon-handle").unwrap();
        let dev = Arc::new(Mutex::new(Balloon::new(
            BalloonConfig::default(),
            el.clone(),
        )));
        let h = BalloonHandle::new(dev.clone(), 256 << 20);
        h.set_target(192 << 20);
        assert_eq!(dev.lock().unwrap().target_pages(), (64 << 20) / 4096);
        h.set_target(1 << 40);
        assert_eq!(dev.lock().unwrap().target_pages(), 0);
        h.set_target(1);
        assert_eq!(dev.lock().unwrap().target_pages(), (256 << 20) / 4096 - 1);
        assert_eq!(h.actual_bytes(), 256 << 20);
        assert_eq!(h.guest_bytes(256), (256 << 20) - (1 << 20));
        assert_eq!(h.guest_bytes(u32::MAX), 0);
        el.stop();
    }

    #[test]
    fn throttle_sends_the_first_at_once_and_the_last_at_the_end() {
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        let mut t = EventThrottle::new(p);
        assert_eq!(t.offer(1, t0), Some(1));
        assert_eq!(t.deadline(), None);
        assert_eq!(t.offer(2, t0 + p / 4), None);
        assert_eq!(t.offer(3, t0 + p / 2), None);
        assert_eq!(t.deadline(), Some(t0 + p));
        assert_eq!(t.expire(t0 + p / 2), None);
        assert_eq!(t.expire(t0 + p), Some(3));
        // A new period started: a change inside it waits again.
        assert_eq!(t.offer(4, t0 + p + p / 2), None);
        assert_eq!(t.expire(t0 + 2 * p), Some(4));
        // A quiet period ends the throttling.
        assert_eq!(t.expire(t0 + 3 * p), None);
        assert_eq!(t.offer(5, t0 + 3 * p), Some(5));
    }
}
