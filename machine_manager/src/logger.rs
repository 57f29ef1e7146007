//! The VMM's logger (`-D [LOGFILE]`): lines of
//! `[seconds.micros] LEVEL target: message`, timed from VMM start.
//!
//! Without `-D`, warnings and errors still go to stderr. With `-D`, the
//! level is `info`; `ALTOVIRT_LOG=error|warn|info|debug|trace` overrides it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::LogTarget;

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
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        let line = format!(
            "[{:>5}.{:06}] {:<5} {}: {}\n",
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
pub fn init(target: &LogTarget, start: Instant) -> Result<(), LoggerError> {
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
    log::set_boxed_logger(Box::new(Logger { start, sink, level }))
        .map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}
