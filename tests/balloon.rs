//! virtio-balloon through the real binary: a tiny guest touches a region of
//! its RAM and gives it back when QMP `balloon` asks; the VMM's resident
//! memory drops by the inflated size, `query-balloon` and `BALLOON_CHANGE`
//! report the guest's new size, deflating gives the pages back (they read
//! as zero: the host discarded them), and free page reports discard memory
//! the same way. Also the errors QEMU gives without a balloon device.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Guest RAM of these tests.
const RAM: u64 = 128 * MIB;
/// The region the guest gives back (guest.balloon.mib default).
const REGION: u64 = 32 * MIB;
/// "Most of" the region: what the resident memory must drop by at least.
const MOST: u64 = REGION * 3 / 4;
const WAIT: Duration = Duration::from_secs(60);

/// The next console line containing `needle` (bounded wait).
fn wait_line(rx: &Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("guest never printed {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// Events up to the first `BALLOON_CHANGE` whose `actual` is `bytes`
/// (bounded wait); returns every `BALLOON_CHANGE` seen.
fn wait_balloon_change(q: &mut Client, bytes: u64) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no BALLOON_CHANGE with actual={bytes}: {seen:?}"
        );
        let v = q.recv();
        if v["event"] == "BALLOON_CHANGE" {
            seen.push(v["data"].clone());
            if v["data"]["actual"] == json!(bytes) {
                return seen;
            }
        }
    }
}

/// The VMM's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib << 10
}

struct Vm {
    child: Child,
    console: Receiver<String>,
    q: Client,
    dir: std::path::PathBuf,
}

/// Boots the balloon test guest with `extra` flags; returns once it is
/// ready (every page of its region touched).
fn boot(name: &str, extra: &[&str], append: &str) -> Vm {
    let dir = scratch(name);
    let sock = dir.join("qmp.sock");
    let mut child = altovirt_with_qmp(&sock)
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio", "-m", "128"])
        .args(extra)
        .args([
            "-append",
            &format!("guest.virtio=balloon guest.exit=halt {append}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, console) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let q = Client::negotiated(&sock);
    Vm {
        child,
        console,
        q,
        dir,
    }
}

impl Vm {
    fn finish(mut self) {
        wait_line(&self.console, "balloon: done");
        assert_eq!(self.q.execute("quit"), json!({"return": {}}));
        assert!(self.child.wait().unwrap().success());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Inflate, deflate and free page reporting, with RSS measured around
/// each; `extra` adds flags (shared memory).
fn balloon_round_trip(name: &str, extra: &[&str]) {
    let mut flags = vec![
        "-device",
        "virtio-balloon-device,id=bal0,deflate-on-oom=on,free-page-reporting=on",
    ];
    flags.extend_from_slice(extra);
    let mut vm = boot(name, &flags, "");
    let pid = vm.child.id();
    let ready = wait_line(&vm.console, "balloon: ready");
    assert_eq!(
        ready,
        "balloon: ready pages=8192 num_pages=0 actual=0 deflate-on-oom=1 reporting=1"
    );
    assert_eq!(
        vm.q.execute("query-balloon"),
        json!({"return": {"actual": RAM}})
    );
    let bad = vm.q.cmd("balloon", json!({"value": 0}));
    assert_eq!(
        bad,
        json!({"error": {"class": "GenericError", "desc": "Parameter 'target' expects a size"}})
    );

    // Inflate: the guest keeps RAM - REGION; the host frees the region.
    let before = rss(pid);
    assert_eq!(
        vm.q.cmd("balloon", json!({"value": RAM - REGION})),
        json!({"return": {}})
    );
    assert_eq!(
        wait_line(&vm.console, "balloon: inflated"),
        "balloon: inflated actual=8192"
    );
    let events = wait_balloon_change(&mut vm.q, RAM - REGION);
    let after = rss(pid);
    assert!(
        before.saturating_sub(after) >= MOST,
        "RSS went from {} to {} KiB after inflating {} KiB",
        before >> 10,
        after >> 10,
        REGION >> 10
    );
    assert_eq!(events, vec![json!({"actual": RAM - REGION})]);
    assert_eq!(
        vm.q.execute("query-balloon"),
        json!({"return": {"actual": RAM - REGION}})
    );

    // Deflate: the pages come back empty (the host discarded them).
    assert_eq!(
        vm.q.cmd("balloon", json!({"value": RAM})),
        json!({"return": {}})
    );
    assert_eq!(
        wait_line(&vm.console, "balloon: deflated"),
        "balloon: deflated actual=0 zeroed=8192"
    );
    wait_balloon_change(&mut vm.q, RAM);
    assert_eq!(
        vm.q.execute("query-balloon"),
        json!({"return": {"actual": RAM}})
    );

    // Free page reporting: the guest touched the region again and reports
    // it free after one more balloon command (a configuration change).
    wait_line(&vm.console, "balloon: report-ready");
    let before = rss(pid);
    assert_eq!(
        vm.q.cmd("balloon", json!({"value": RAM})),
        json!({"return": {}})
    );
    assert_eq!(
        wait_line(&vm.console, "balloon: reported"),
        format!("balloon: reported bytes={REGION} zeroed=32/32")
    );
    let after = rss(pid);
    assert!(
        before.saturating_sub(after) >= MOST,
        "RSS went from {} to {} KiB after reporting {} KiB free",
        before >> 10,
        after >> 10,
        REGION >> 10
    );
    vm.finish();
}

#[test]
fn balloon_inflates_deflates_and_reports_with_private_ram() {
    if !kvm_usable("balloon_private") {
        return;
    }
    balloon_round_trip("balloon-private", &[]);
}

#[test]
fn balloon_punches_shared_ram_out_of_its_memfd() {
    if !kvm_usable("balloon_shared") {
        return;
    }
    balloon_round_trip("balloon-shared", &["-machine", "microvm,mem-share=on"]);
}

#[test]
fn json_amount_mib_is_inflated_at_boot_without_options() {
    if !kvm_usable("balloon_json") {
        return;
    }
    let cfg = scratch("balloon-json-cfg").join("vm.json");
    std::fs::write(&cfg, r#"{"balloon": {"amount_mib": 16}}"#).unwrap();
    let mut vm = boot(
        "balloon-json",
        &["-config", cfg.to_str().unwrap()],
        "guest.balloon.events=1",
    );
    // No option offered: neither feature, no reporting queue.
    assert_eq!(
        wait_line(&vm.console, "balloon: ready"),
        "balloon: ready pages=8192 num_pages=4096 actual=0 deflate-on-oom=0 reporting=0"
    );
    assert_eq!(
        wait_line(&vm.console, "balloon: inflated"),
        "balloon: inflated actual=4096"
    );
    wait_balloon_change(&mut vm.q, RAM - 16 * MIB);
    assert_eq!(
        vm.q.execute("query-balloon"),
        json!({"return": {"actual": RAM - 16 * MIB}})
    );
    vm.finish();
}

#[test]
fn without_a_balloon_both_commands_fail_as_on_qemu() {
    if !kvm_usable("balloon_none") {
        return;
    }
    let dir = scratch("balloon-none");
    let sock = dir.join("qmp.sock");
    let mut child = altovirt_with_qmp(&sock)
        .args(["-S", "-serial", "none"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut q = Client::negotiated(&sock);
    let inactive = json!({"error": {"class": "DeviceNotActive",
                                    "desc": "No balloon device has been activated"}});
    assert_eq!(q.execute("query-balloon"), inactive);
    // The device is checked before the value, as QEMU does.
    assert_eq!(q.cmd("balloon", json!({"value": -1})), inactive);
    assert_eq!(
        q.cmd("balloon", json!({"value": "1G"}))["error"]["desc"],
        "Invalid parameter type for 'value', expected: integer"
    );
    let names = q.execute("query-commands");
    for name in ["balloon", "query-balloon"] {
        assert!(
            names["return"]
                .as_array()
                .unwrap()
                .contains(&json!({ "name": name })),
            "{name} not listed: {names}"
        );
    }
    assert_eq!(q.execute("quit"), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}
