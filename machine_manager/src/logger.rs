//! The VMM's logger (`-D [LOGFILE]`): lines of
//! `[seconds.micros] LEVEL target: message`, timed from VMM start.
//!
//! Without `-D`, warnings and errors still go to stderr. With `-D`, the
//! level is `info`; `ALTOVIRT_LOG=error|warn|info|debug|trace` overrides it.
//! Error, warning and info lines are rate-limited per call site
//! ([`crate::log_limit`]), so a guest cannot flood the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogTarget;
use crate::log_limit::{LogStats, RateLimiter, Verdict};

/// Errors while setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file could not be opened.
    #[error("-D: cannot open log file '{path}': {source}")]
    Open {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A logger was already installed.
    #[error("logger already initialised")]
    AlreadySet,
}

enum Sink {
    Stderr,
    File(Mutex<File>),
}

struct Logger {
    start: Instant,
    sink: Sink,
    level: LevelFilter,
    limiter: Mutex<RateLimiter>,
    stats: Arc<LogStats>,
}

impl Logger {
    /// Whether a line passes the per-site limiter (debug and trace always
    /// do), and how many of its site's lines were dropped before it.
    fn admit(&self, record: &Record<'_>) -> Option<u64> {
        if record.level() > Level::Info {
            return Some(0);
        }
        let site = (
            record.file_static().unwrap_or("?"),
            record.line().unwrap_or(0),
        );
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(site, Instant::now());
        match verdict {
            Verdict::Log { dropped_before } => Some(dropped_before),
            Verdict::Drop => {
                self.stats.count_dropped(record.level());
                None
            }
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(dropped_before) = self.admit(record) else {
            return;
        };
        self.stats.count_logged(record.level());
        let t = self.start.elapsed();
        let dropped = match dropped_before {
            0 => String::new(),
            n => format!(" ({n} similar lines suppressed)"),
        };
        let line = format!(
            "[{:>5}.{:06}] {:<5} {}: {}{dropped}\n",
            t.as_secs(),
            t.subsec_micros(),
            record.level(),
            record.target(),
            record.args()
        );
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Sink::File(f) = &self.sink {
            let _ = f.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }
}

fn level_from_env(default: LevelFilter) -> LevelFilter {
    match std::env::var("ALTOVIRT_LOG").ok().as_deref() {
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("info") => LevelFilter::Info,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some("off") => LevelFilter::Off,
        _ => default,
    }
}

/// Installs the process logger for `target`; `start` is the VMM start time.
/// Returns the counts of lines it writes and drops.
pub fn init(target: &LogTarget, start: Instant) -> Result<Arc<LogStats>, LoggerError> {
    let (sink, default) = match target {
        LogTarget::None => (Sink::Stderr, LevelFilter::Warn),
        LogTarget::Stderr => (Sink::Stderr, LevelFilter::Info),
        LogTarget::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggerError::Open {
                    path: path.display().to_string(),
                    source,
                })?;
            (Sink::File(Mutex::new(file)), LevelFilter::Info)
        }
    };
    let level = level_from_env(default);
    let stats = Arc::new(LogStats::default());
    let logger = Logger {
        start,
        sink,
        level,
        limiter: Mutex::new(RateLimiter::default()),
        stats: stats.clone(),
    };
    log::set_boxed_logger(Box::new(logger)).map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(stats)
}
