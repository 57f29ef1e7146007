//! CPU time of altovirt's threads, read from /proc: how the rate-limit
//! tests check that a throttled device waits on a timer instead of
//! spinning.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Clock ticks per second of /proc's utime/stime.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

/// utime + stime (ticks) of `pid`'s thread named `name`, if it exists.
pub fn thread_cpu_ticks(pid: u32, name: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." — comm may hold spaces: split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 3 of stat(5), utime 14, stime 15.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// Samples the `virtio-io` thread's CPU time until the process is gone;
/// the last value read is kept in the returned counter.
pub fn watch_virtio_io(pid: u32) -> (Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let h = std::thread::spawn(move || {
        while Path::new(&format!("/proc/{pid}/task")).exists() {
            if let Some(n) = thread_cpu_ticks(pid, "virtio-io") {
                t.store(n, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (ticks, h)
}
