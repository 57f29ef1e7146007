//! Rate limits of a NIC, one per direction.
//!
//! Each direction (receive: frames the device takes from the back-end for
//! the guest; transmit: frames the guest sends) has its own two buckets
//! ([`RateLimiter`]) and, once it has been limited, its own wake-up timer
//! ([`Throttle`]) on the device's event loop. A direction never limited
//! has no timer and costs nothing. A timer, once created, stays until the
//! device resets, so limits that come and go (hot-plugged back-ends) reuse
//! it instead of adding one each time.

use std::time::Duration;

use crate::rate_limiter::{RateLimitConfig, RateLimiter, Throttle};

/// Receive and transmit limits of a NIC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetLimits {
    /// Frames and bytes the device hands to the guest (taken from the
    /// back-end).
    pub rx: RateLimitConfig,
    /// Frames and bytes the guest sends.
    pub tx: RateLimitConfig,
}

impl NetLimits {
    /// Whether either direction is limited.
    pub fn is_limited(&self) -> bool {
        self.rx.is_limited() || self.tx.is_limited()
    }
}

/// One direction's buckets and timer.
#[derive(Default)]
pub(super) struct DirLimit {
    limiter: RateLimiter,
    throttle: Option<Throttle>,
}

impl DirLimit {
    /// Limits `cfg`, waking up through `throttle` (needed when `cfg`
    /// limits anything; without it the direction is not held back).
    pub fn new(cfg: RateLimitConfig, throttle: Option<Throttle>) -> Self {
        DirLimit {
            limiter: RateLimiter::new(cfg),
            throttle,
        }
    }

    /// Whether the direction waits for its timer.
    pub fn waiting(&self) -> bool {
        self.throttle.as_ref().is_some_and(Throttle::is_armed)
    }

    /// Whether the direction has a timer.
    pub fn has_timer(&self) -> bool {
        self.throttle.is_some()
    }

    /// Gives the direction its timer (already registered on the loop).
    pub fn install(&mut self, throttle: Throttle) {
        self.throttle = Some(throttle);
    }

    /// New limits with full buckets. A direction waiting for its timer is
    /// woken at once to try again under them.
    pub fn set(&mut self, cfg: RateLimitConfig) {
        self.limiter = RateLimiter::new(cfg);
        if self.waiting() {
            self.wake_now();
        }
    }

    /// Pays for one frame of `bytes` bytes. False when it must wait: the
    /// timer is then armed for when the buckets can pay.
    pub fn admit(&mut self, bytes: u64) -> bool {
        let Some(throttle) = self.throttle.as_mut() else {
            // No timer: never limited (see `new`).
            return true;
        };
        match self.limiter.consume(bytes) {
            Ok(()) => true,
            Err(wait) => {
                throttle.arm(wait);
                false
            }
        }
    }

    /// Consumes a timer expiry; true when the direction was waiting.
    pub fn expired(&mut self) -> bool {
        self.throttle.as_mut().is_some_and(Throttle::expired)
    }

    /// Makes the timer fire at once (work left over after a handler's
    /// budget, or new limits).
    pub fn wake_now(&mut self) {
        if let Some(t) = self.throttle.as_mut() {
            t.arm(Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::BucketConfig;

    fn one_op_per_hour() -> RateLimitConfig {
        RateLimitConfig {
            ops: BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 3_600_000,
            },
            ..Default::default()
        }
    }

    #[test]
    fn without_a_timer_nothing_is_held_back() {
        let mut d = DirLimit::new(one_op_per_hour(), None);
        for _ in 0..10 {
            assert!(d.admit(1500));
        }
        assert!(!d.waiting());
    }

    #[test]
    fn an_empty_bucket_arms_the_timer_and_new_limits_wake_it() {
        let t = Throttle::new().unwrap_or_else(|e| panic!("timerfd: {e}"));
        let mut d = DirLimit::new(one_op_per_hour(), Some(t));
        assert!(d.admit(60));
        assert!(!d.admit(60));
        assert!(d.waiting());
        // Lifting the limit wakes the direction (the timer fires at once).
        d.set(RateLimitConfig::default());
        assert!(d.waiting());
        let mut pfd = libc::pollfd {
            fd: d.throttle.as_ref().map(Throttle::fd).unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        assert!(d.expired());
        assert!(!d.waiting());
        assert!(d.admit(60) && d.admit(60));
    }
}
