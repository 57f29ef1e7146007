//! Rate limiting of log lines, per call site.
//!
//! A guest can make the VMM log at will (a bad queue size written in a loop,
//! a stream of malformed requests), so every warning and error line passes a
//! limiter keyed by the `log!` call site (source file and line): at most
//! [`BURST`] lines from one site per [`WINDOW`]; further lines from that site
//! are counted and dropped. The first line a site logs in a later window
//! says how many were dropped before it, and the totals are kept in
//! [`LogStats`] for metrics (QMP `__io.altovirt_query-log-stats`). Sites are
//! independent: a flood from one device never hides another's message.
//! Debug and trace lines are not limited: they are asked for explicitly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::Level;

/// Lines one call site may log per window.
pub const BURST: u32 = 10;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// A call site: source file and line of the `log!` macro.
pub type Site = (&'static str, u32);

/// What the limiter decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `dropped_before` lines of this site were dropped since the
    /// last one logged.
    Log {
        /// Lines dropped since this site last logged.
        dropped_before: u64,
    },
    /// Drop it (counted).
    Drop,
}

#[derive(Debug)]
struct SiteState {
    window_start: Instant,
    logged_in_window: u32,
    dropped: u64,
}

/// Per-site windows of [`BURST`] lines.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    sites: HashMap<Site, SiteState>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(BURST, WINDOW)
    }
}

impl RateLimiter {
    /// A limiter letting `burst` lines per site through per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            sites: HashMap::new(),
        }
    }

    /// Decides whether a line from `site` at time `now` is logged.
    pub fn check(&mut self, site: Site, now: Instant) -> Verdict {
        let state = self.sites.entry(site).or_insert(SiteState {
            window_start: now,
            logged_in_window: 0,
            dropped: 0,
        });
        if now.saturating_duration_since(state.window_start) >= self.window {
            state.window_start = now;
            state.logged_in_window = 0;
        }
        if state.logged_in_window >= self.burst {
            state.dropped += 1;
            return Verdict::Drop;
        }
        state.logged_in_window += 1;
        Verdict::Log {
            dropped_before: std::mem::take(&mut state.dropped),
        }
    }
}

/// Counts of log lines by level: written and dropped by the limiter.
#[derive(Debug, Default)]
pub struct LogStats {
    logged: [AtomicU64; 5],
    dropped: [AtomicU64; 5],
}

/// The counts of one level, as [`LogStats::snapshot`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelCounts {
    /// Lines written.
    pub logged: u64,
    /// Lines dropped by the rate limiter.
    pub dropped: u64,
}

fn slot(level: Level) -> usize {
    level as usize - 1
}

impl LogStats {
    /// Counts a line written at `level`.
    pub fn count_logged(&self, level: Level) {
        self.logged[slot(level)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a line dropped at `level`.
    pub fn count_dropped(&self, level: Level) {
        self.dropped[slot(level)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of `level`.
    pub fn get(&self, level: Level) -> LevelCounts {
        LevelCounts {
            logged: self.logged[slot(level)].load(Ordering::Relaxed),
            dropped: self.dropped[slot(level)].load(Ordering::Relaxed),
        }
    }

    /// Lines dropped at every level.
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// `(level name, counts)` for error, warn, info, debug and trace.
    pub fn snapshot(&self) -> Vec<(&'static str, LevelCounts)> {
        [
            (Level::Error, "error"),
            (Level::Warn, "warn"),
            (Level::Info, "info"),
            (Level::Debug, "debug"),
            (Level::Trace, "trace"),
        ]
        .into_iter()
        .map(|(level, name)| (name, self.get(level)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Site = ("a.rs", 1);
    const B: Site = ("a.rs", 2);

    #[test]
    fn a_site_logs_a_burst_then_drops_until_the_window_ends() {
        let mut l = RateLimiter::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(A, t0), Verdict::Log { dropped_before: 0 });
        }
        for i in 1..=7u64 {
            assert_eq!(
                l.check(A, t0 + Duration::from_millis(i * 100)),
                Verdict::Drop
            );
        }
        // A new window: the first line reports what was dropped, once.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(l.check(A, t1), Verdict::Log { dropped_before: 7 });
        assert_eq!(l.check(A, t1), Verdict::Log { dropped_before: 0 });
    }

    #[test]
    fn sites_are_limited_independently() {
        let mut l = RateLimiter::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.check(A, t0), Verdict::Log { dropped_before: 0 });
        assert_eq!(l.check(A, t0), Verdict::Drop);
        assert_eq!(l.check(B, t0), Verdict::Log { dropped_before: 0 });
    }

    #[test]
    fn a_clock_going_backwards_does_not_reopen_the_window() {
        let mut l = RateLimiter::new(1, Duration::from_secs(5));
        let t0 = Instant::now() + Duration::from_secs(10);
        assert_eq!(l.check(A, t0), Verdict::Log { dropped_before: 0 });
        assert_eq!(l.check(A, t0 - Duration::from_secs(9)), Verdict::Drop);
    }

    #[test]
    fn stats_count_by_level() {
        let s = LogStats::default();
        s.count_logged(Level::Warn);
        s.count_logged(Level::Warn);
        s.count_dropped(Level::Warn);
        s.count_dropped(Level::Error);
        assert_eq!(
            s.get(Level::Warn),
            LevelCounts {
                logged: 2,
                dropped: 1
            }
        );
        assert_eq!(s.total_dropped(), 2);
        let snap = s.snapshot();
        assert_eq!(snap[0].0, "error");
        assert_eq!(snap[0].1.dropped, 1);
        assert_eq!(snap.len(), 5);
    }
}
