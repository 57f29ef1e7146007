//! Token-bucket I/O limits shared by the devices.
//!
//! A [`RateLimiter`] holds two buckets: one counted in bytes, one in
//! operations. Each bucket has a size (the tokens it holds when full), a
//! refill time (how long an empty bucket takes to become full again, so the
//! sustained rate is `size / refill_time`) and a one-time burst: extra tokens
//! spent before the regular budget and never refilled.
//!
//! A request is admitted only when both buckets can pay for it. When one
//! cannot, nothing is taken from either and the caller learns how long to
//! wait; devices then stop taking requests from their queue and arm a timer
//! (see [`Throttle`]) instead of polling. A request costing more than a
//! bucket's size is admitted once the bucket is full, and the bucket goes
//! into debt so the long-run rate still holds.
//!
//! Time is passed in explicitly ([`RateLimiter::consume_at`]), so the
//! arithmetic is tested without sleeping.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The limits of one bucket, in tokens (bytes or operations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketConfig {
    /// Tokens of a full bucket; 0 means no limit.
    pub size: u64,
    /// Extra tokens available once, before the regular budget.
    pub one_time_burst: u64,
    /// Time for an empty bucket to refill completely, in milliseconds
    /// (0 with a non-zero size is read as 1000 ms).
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// A bucket allowing `rate` tokens per second, holding one second's
    /// worth; `burst` extra tokens once. `rate` 0 means no limit.
    pub fn per_second(rate: u64, burst: u64) -> Self {
        BucketConfig {
            size: rate,
            one_time_burst: burst,
            refill_time_ms: 1000,
        }
    }

    /// Whether the bucket limits anything.
    pub fn is_limited(&self) -> bool {
        self.size > 0
    }
}

/// The limits of a device: bandwidth (bytes) and operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimitConfig {
    /// Bytes bucket.
    pub bandwidth: BucketConfig,
    /// Operations bucket.
    pub ops: BucketConfig,
}

impl RateLimitConfig {
    /// Whether either bucket limits anything.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_limited() || self.ops.is_limited()
    }
}

/// One token bucket. `budget` may be negative after an oversized request.
#[derive(Debug, Clone)]
struct Bucket {
    size: u64,
    refill_ns: u64,
    burst: u64,
    budget: i128,
    last: Instant,
}

impl Bucket {
    fn new(cfg: BucketConfig, now: Instant) -> Option<Self> {
        if !cfg.is_limited() {
            return None;
        }
        let ms = if cfg.refill_time_ms == 0 {
            1000
        } else {
            cfg.refill_time_ms
        };
        Some(Bucket {
            size: cfg.size,
            refill_ns: ms.saturating_mul(1_000_000),
            burst: cfg.one_time_burst,
            budget: i128::from(cfg.size),
            last: now,
        })
    }

    /// Adds the tokens earned since the last refill, up to `size`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        let earned = elapsed.saturating_mul(u128::from(self.size)) / u128::from(self.refill_ns);
        if earned == 0 {
            // Keep `last`: the fraction is not lost.
            return;
        }
        // Advance `last` only by the time the whole tokens cost.
        let used_ns = earned.saturating_mul(u128::from(self.refill_ns)) / u128::from(self.size);
        let used = Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        self.last = self.last.checked_add(used).unwrap_or(now).min(now);
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        self.budget = self
            .budget
            .saturating_add(earned)
            .min(i128::from(self.size));
        if self.budget == i128::from(self.size) {
            self.last = now;
        }
    }

    /// What `tokens` still need from the regular budget after the burst,
    /// and the burst left.
    fn split(&self, tokens: u64) -> (u64, u64) {
        let from_burst = tokens.min(self.burst);
        (tokens - from_burst, self.burst - from_burst)
    }

    /// Time from `now` until the bucket can pay for `tokens` (zero if it
    /// can now); call after [`Bucket::refill`].
    fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let (need, _) = self.split(tokens);
        // An oversized request waits for a full bucket only.
        let need = i128::from(need.min(self.size));
        if self.budget >= need {
            return Duration::ZERO;
        }
        let missing = u128::try_from(need - self.budget).unwrap_or(u128::MAX);
        let ns = missing
            .saturating_mul(u128::from(self.refill_ns))
            .div_ceil(u128::from(self.size));
        // The part of a token already earned since the last refill.
        let ns = ns.saturating_sub(now.saturating_duration_since(self.last).as_nanos());
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_nanos(1))
    }

    fn take(&mut self, tokens: u64) {
        let (need, burst_left) = self.split(tokens);
        self.burst = burst_left;
        self.budget -= i128::from(need);
    }
}

/// Two token buckets (bytes, operations); see the module docs. The
/// default limits nothing.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
}

impl RateLimiter {
    /// A limiter with full buckets at `now`.
    pub fn new_at(cfg: RateLimitConfig, now: Instant) -> Self {
        RateLimiter {
            bandwidth: Bucket::new(cfg.bandwidth, now),
            ops: Bucket::new(cfg.ops, now),
        }
    }

    /// A limiter with full buckets now.
    pub fn new(cfg: RateLimitConfig) -> Self {
        Self::new_at(cfg, Instant::now())
    }

    /// Whether the limiter limits anything (if not, requests are never
    /// delayed and the clock is not read).
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Pays for one operation of `bytes` bytes at `now`; when a bucket
    /// cannot pay, nothing is taken and the time to wait is returned.
    pub fn consume_at(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for (bucket, tokens) in [(&mut self.bandwidth, bytes), (&mut self.ops, 1)] {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait_for(tokens, now));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (bucket, tokens) in [(&mut self.bandwidth, bytes), (&mut self.ops, 1)] {
            if let Some(b) = bucket {
                b.take(tokens);
            }
        }
        Ok(())
    }

    /// [`RateLimiter::consume_at`] with the current time; free when not
    /// limited.
    pub fn consume(&mut self, bytes: u64) -> Result<(), Duration> {
        if !self.is_limited() {
            return Ok(());
        }
        self.consume_at(bytes, Instant::now())
    }
}

/// The wake-up timer of a throttled queue: a non-blocking one-shot timerfd
/// the device registers on its event loop.
pub struct Throttle {
    timer: TimerFd,
    armed: bool,
}

impl Throttle {
    /// A disarmed timer.
    pub fn new() -> std::io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: F_SETFL on a descriptor this function owns; no memory is
        // passed.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Throttle {
            timer,
            armed: false,
        })
    }

    /// The descriptor to watch for EPOLLIN.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Whether the queue is waiting for the timer.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Fires once after `after` (at least 1 ns).
    pub fn arm(&mut self, after: Duration) {
        let after = after.max(Duration::from_nanos(1));
        match self.timer.reset(after, None) {
            Ok(()) => self.armed = true,
            Err(e) => log::error!("rate limiter: cannot arm timer: {e}"),
        }
    }

    /// Consumes an expiry; called by the timer's handler. Returns whether
    /// the queue was waiting for it.
    pub fn expired(&mut self) -> bool {
        let _ = self.timer.wait();
        std::mem::replace(&mut self.armed, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unlimited_never_waits() {
        let mut l = RateLimiter::new(RateLimitConfig::default());
        assert!(!l.is_limited());
        for _ in 0..10_000 {
            assert_eq!(l.consume(1 << 30), Ok(()));
        }
    }

    #[test]
    fn ops_bucket_holds_the_rate() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            ops: BucketConfig::per_second(100, 0),
            ..Default::default()
        };
        let mut l = RateLimiter::new_at(cfg, t0);
        for _ in 0..100 {
            assert_eq!(l.consume_at(4096, t0), Ok(()));
        }
        // Empty: the next op needs 10 ms.
        assert_eq!(l.consume_at(4096, t0), Err(ms(10)));
        assert_eq!(l.consume_at(4096, t0 + ms(5)), Err(ms(5)));
        assert_eq!(l.consume_at(4096, t0 + ms(10)), Ok(()));
        // Over one simulated second after that, exactly 100 more ops fit.
        let mut admitted = 0;
        let mut now = t0 + ms(10);
        while now <= t0 + ms(1010) {
            match l.consume_at(0, now) {
                Ok(()) => admitted += 1,
                Err(w) => now += w,
            }
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn bandwidth_bucket_and_refill_cap() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            bandwidth: BucketConfig {
                size: 1000,
                one_time_burst: 0,
                refill_time_ms: 100,
            },
            ..Default::default()
        };
        let mut l = RateLimiter::new_at(cfg, t0);
        assert_eq!(l.consume_at(600, t0), Ok(()));
        // 400 left; 600 more need 200 tokens = 20 ms.
        assert_eq!(l.consume_at(600, t0), Err(ms(20)));
        // A long idle time refills only up to the size.
        assert_eq!(l.consume_at(1000, t0 + ms(10_000)), Ok(()));
        assert_eq!(
            l.consume_at(1, t0 + ms(10_000)),
            Err(Duration::from_micros(100))
        );
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            ops: BucketConfig::per_second(10, 5),
            ..Default::default()
        };
        let mut l = RateLimiter::new_at(cfg, t0);
        for _ in 0..15 {
            assert_eq!(l.consume_at(0, t0), Ok(()));
        }
        assert!(l.consume_at(0, t0).is_err());
        // After a full refill only the regular size is there.
        let later = t0 + ms(5000);
        for _ in 0..10 {
            assert_eq!(l.consume_at(0, later), Ok(()));
        }
        assert!(l.consume_at(0, later).is_err());
    }

    #[test]
    fn both_buckets_must_pay_and_a_refusal_takes_nothing() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            bandwidth: BucketConfig::per_second(1000, 0),
            ops: BucketConfig::per_second(1000, 0),
        };
        let mut l = RateLimiter::new_at(cfg, t0);
        assert_eq!(l.consume_at(900, t0), Ok(()));
        // Bytes refuse; the ops bucket must not have been charged.
        assert!(l.consume_at(200, t0).is_err());
        assert!(l.consume_at(200, t0).is_err());
        for _ in 0..999 {
            assert_eq!(l.consume_at(0, t0), Ok(()));
        }
        assert!(l.consume_at(0, t0).is_err());
    }

    #[test]
    fn oversized_request_waits_for_a_full_bucket_then_goes_into_debt() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            bandwidth: BucketConfig::per_second(1000, 0),
            ..Default::default()
        };
        let mut l = RateLimiter::new_at(cfg, t0);
        assert_eq!(l.consume_at(3000, t0), Ok(()));
        // 2000 tokens of debt plus one token: just over 2 s.
        assert_eq!(l.consume_at(1, t0), Err(ms(2001)));
        assert_eq!(l.consume_at(1, t0 + ms(2001)), Ok(()));
    }

    #[test]
    fn throttle_timer_fires_once() {
        let mut t = Throttle::new().unwrap_or_else(|e| panic!("timerfd: {e}"));
        assert!(!t.is_armed());
        assert!(!t.expired());
        t.arm(Duration::from_nanos(1));
        assert!(t.is_armed());
        let mut pfd = libc::pollfd {
            fd: t.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1);
        assert!(t.expired());
        assert!(!t.expired());
    }
}
