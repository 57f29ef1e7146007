//! A guest cannot flood the VMM's log: a driver writing an invalid queue
//! size 5,000 times gets a handful of warning lines, the rest are counted
//! and reported (in the next line of that call site, in QMP
//! `__io.altovirt_query-log-stats`, and once at exit).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's LOG_FLOOD_WRITES.
const WRITES: u64 = 5000;
/// machine_manager::log_limit::{BURST, WINDOW}.
const BURST: u64 = 10;
const WINDOW_SECS: u64 = 5;

fn wait_for(path: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never showed {needle:?}", path.display());
}

/// The number in "(N similar lines suppressed)" of a line, or 0.
fn suppressed_in(line: &str) -> u64 {
    line.split(" (")
        .last()
        .and_then(|t| t.strip_suffix(" similar lines suppressed)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_guest_flooding_warnings_is_rate_limited_and_counted() {
    if !kvm_usable("log_limit") {
        return;
    }
    let dir = scratch("log-limit");
    let sock = dir.join("qmp.sock");
    let console = dir.join("console");
    let stderr = dir.join("stderr");
    let started = Instant::now();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_altovirt"))
            .args(["-kernel", GUEST_PVH, "-object"])
            .arg("rng-random,id=rng0,filename=/dev/urandom")
            .args(["-device", "virtio-rng-device,rng=rng0"])
            .args(["-append", "guest.virtio=log-flood guest.exit=spin"])
            .arg("-qmp")
            .arg(format!("unix:{},server,nowait", sock.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&console, "log-flood: writes=5000");
    let elapsed = started.elapsed().as_secs();

    let mut c = Client::negotiated(&sock);
    let stats = c.execute("__io.altovirt_query-log-stats");
    let warn = &stats["return"]["warn"];
    let dropped = warn["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stats}"));

    let log = std::fs::read_to_string(&stderr).unwrap();
    let flood: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("virtio-mmio: invalid queue size 3"))
        .collect();
    // Every write is either a line or a count, and the lines are at most a
    // burst per window that has begun since the VMM started.
    let reported: u64 = flood.iter().map(|l| suppressed_in(l)).sum();
    assert_eq!(
        flood.len() as u64 + dropped,
        WRITES,
        "{} lines + {dropped} dropped:\n{log}",
        flood.len()
    );
    assert!(
        flood.len() as u64 <= BURST * (elapsed / WINDOW_SECS + 2),
        "{} lines in {elapsed} s:\n{log}",
        flood.len()
    );
    assert!(
        reported <= dropped,
        "{reported} reported > {dropped} dropped"
    );
    assert!(
        warn["logged"].as_u64().unwrap() >= flood.len() as u64,
        "{stats}"
    );
    assert_eq!(stats["return"]["error"]["dropped"], json!(0), "{stats}");

    assert_eq!(c.execute("quit"), json!({"return": {}}));
    assert!(child.0.wait().unwrap().success());
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains(&format!(
            "{dropped} log lines were suppressed by rate limiting in all"
        )),
        "no exit summary of {dropped} dropped lines:\n{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn query_commands_lists_the_log_stats_extension() {
    if !kvm_usable("log_limit_listed") {
        return;
    }
    let dir = scratch("log-limit-listed");
    let sock = dir.join("qmp.sock");
    let mut child = altovirt_with_qmp(&sock)
        .args(["-S", "-serial", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut c = Client::negotiated(&sock);
    let names = c.execute("query-commands");
    assert!(
        names["return"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "__io.altovirt_query-log-stats"})),
        "{names}"
    );
    // A quiet VM: nothing dropped, and the reply has every level.
    let stats = c.execute("__io.altovirt_query-log-stats");
    for level in ["error", "warn", "info", "debug", "trace"] {
        assert_eq!(stats["return"][level]["dropped"], json!(0), "{stats}");
    }
    assert_eq!(c.execute("quit"), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}
