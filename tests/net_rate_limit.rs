//! Receive limits of virtio-net under the real binary: the host floods a
//! tap (tests/guests/net_flood.py, inside a network namespace) with
//! numbered frames and the tiny guest (`guest.virtio=net-rx`) counts them.
//!
//! Only lower bounds on time are asserted (a limit that holds can only make
//! a run slower). The frames are fewer than a tap queues for its reader, so
//! the kernel drops none: every one must reach the guest, in order, however
//! long the limit holds them back. That the device waits on a timer rather
//! than spinning is checked through the CPU time of the `virtio-io` thread.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cpu::{ticks_per_second, watch_virtio_io};
use common::netns::{netns_usable, Netns};
use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const FLOOD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guests/net_flood.py");

/// The guest's command line: count `frames` sequence frames.
fn guest_args(frames: u32) -> String {
    format!("guest.virtio=net-rx guest.netrx={frames} guest.hotplug.wait=120")
}

/// A running altovirt and its console lines as they come.
struct Vm {
    child: KillOnDrop,
    lines: Receiver<String>,
}

impl Vm {
    fn start(mut cmd: Command) -> Vm {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().expect("spawn altovirt"));
        let console = child.0.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(console).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Vm { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The next console line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("guest never printed {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the exit; the status must be success.
    fn finish(mut self) {
        let status = self.child.0.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "{status:?}: {err}");
    }
}

/// Sends `count` numbered frames with `payload` bytes each out of `tap0`.
fn flood(ns: &Netns, count: u32, payload: usize) {
    let out = ns
        .exec("python3")
        .args([FLOOD, "tap0", &count.to_string(), &payload.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "net_flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Floods `count` frames (the guest is ready) and waits for its count;
/// returns the time from the first frame sent to the count, after checking
/// that every frame arrived, in order.
fn flood_and_count(vm: &Vm, ns: &Netns, count: u32, payload: usize) -> Duration {
    let t0 = Instant::now();
    flood(ns, count, payload);
    let line = vm.wait_line("netrx: frames=");
    let took = t0.elapsed();
    let want = format!("netrx: frames={count} lost=0 misordered=0 ");
    assert!(line.starts_with(&want), "want '{want}…', got '{line}'");
    assert_eq!(vm.wait_line("netrx: "), "netrx: done");
    took
}

#[test]
fn rx_iops_limit_holds_frames_in_the_tap_without_loss_or_spinning() {
    let Some(ns) = netns_usable("netrx_iops") else {
        return;
    };
    let count = 300;
    let mut cmd = ns.exec(env!("CARGO_BIN_EXE_altovirt"));
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-append", &guest_args(count)])
        .args(["-netdev", "tap,id=n0,ifname=tap0,rx_iops=100"])
        .args(["-device", "virtio-net-device,netdev=n0,id=net0"]);
    let vm = Vm::start(cmd);
    let (ticks, watcher) = watch_virtio_io(vm.pid());
    // 100 frames/s with at most a full bucket (100) left when the flood
    // starts: 300 frames need at least 2 s however fast the host is.
    vm.wait_line("netrx: ready");
    let took = flood_and_count(&vm, &ns, count, 100);
    vm.finish();
    watcher.join().unwrap();
    assert!(
        took >= Duration::from_millis(1900),
        "rx_iops=100: {count} frames arrived in {took:?}"
    );
    // Timer-driven, the thread wakes about 200 times (plus the guest's
    // buffer notifications); a loop polling the tap would burn most of
    // the 2 s. 0.4 s leaves room for a loaded host.
    let cpu = ticks.load(Ordering::Relaxed) as f64 / ticks_per_second() as f64;
    assert!(
        cpu < 0.4,
        "virtio-io used {cpu:.2} s of CPU during a {took:?} run: is it spinning?"
    );
    eprintln!("rx_iops=100: {count} frames in {took:?} (virtio-io CPU {cpu:.2} s)");
}

#[test]
fn rx_bandwidth_limit_from_the_json_config() {
    let Some(ns) = netns_usable("netrx_json") else {
        return;
    };
    let dir = scratch("netrx-json");
    let count = 200;
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        json!({
            "boot-source": {"kernel_image_path": GUEST_ELF64, "boot_args": guest_args(count)},
            "serial": {"stdio": true},
            "net": [{
                "iface_id": "net0",
                "host_dev_name": "tap0",
                "rx_rate_limiter": {"bandwidth": {"size": 30000, "refill_time": 500}}
            }]
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = ns.exec(env!("CARGO_BIN_EXE_altovirt"));
    cmd.args(["-config", config.to_str().unwrap()]);
    let vm = Vm::start(cmd);
    // 200 frames of 614 bytes (122 800) at 60 000 bytes/s with at most a
    // full bucket (30 000) left at the start: at least 1.54 s.
    vm.wait_line("netrx: ready");
    let took = flood_and_count(&vm, &ns, count, 600);
    vm.finish();
    assert!(
        took >= Duration::from_millis(1450),
        "60 kB/s: {count} frames of 614 bytes arrived in {took:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Open descriptors of `pid`: all, timerfds, taps.
fn fds(pid: u32) -> (usize, usize, usize) {
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    let timers = links.iter().filter(|l| l.contains("timerfd")).count();
    let taps = links.iter().filter(|l| *l == "/dev/net/tun").count();
    (links.len(), timers, taps)
}

#[test]
fn netdev_add_limits_a_hot_plugged_nic_and_replugs_leak_nothing() {
    let Some(ns) = netns_usable("netrx_hotplug") else {
        return;
    };
    let dir = scratch("netrx-hotplug");
    let sock = dir.join("qmp.sock");
    let count = 300;
    let mut cmd = ns.exec(env!("CARGO_BIN_EXE_altovirt"));
    cmd.arg("-qmp")
        .arg(format!("unix:{},server,nowait", sock.display()))
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-machine", "microvm,net-slots=1"])
        .args(["-append", &format!("{} guest.exit=halt", guest_args(count))]);
    let vm = Vm::start(cmd);
    // The guest drives the empty slot (link down) and waits for frames.
    vm.wait_line("netrx: ready");
    let mut q = Client::negotiated(&sock);
    let pid = vm.pid();

    let bad = q.cmd(
        "netdev_add",
        json!({"type": "tap", "id": "hp", "ifname": "tap0", "rx_iops_max": 5}),
    );
    assert_eq!(
        bad["error"]["desc"], "netdev 'hp': rx_iops_max needs rx_iops too",
        "{bad}"
    );
    let add = |q: &mut Client| {
        let r = q.cmd(
            "netdev_add",
            json!({"type": "tap", "id": "hp", "ifname": "tap0",
                   "rx_iops": 100, "tx_iops": 100, "tx_bps": 1000000}),
        );
        assert_eq!(r, json!({"return": {}}));
        let r = q.cmd(
            "device_add",
            json!({"driver": "virtio-net-mmio", "id": "nic0", "netdev": "hp", "addr": "0"}),
        );
        assert_eq!(r, json!({"return": {}}));
    };
    // Plug and unplug a few times: the slot's timers are made once, and
    // each unplug closes the tap.
    let before = fds(pid);
    let mut plugged = None;
    let mut unplugged = None;
    for round in 0..4 {
        add(&mut q);
        let now = fds(pid);
        assert_eq!(*plugged.get_or_insert(now), now, "round {round} plugged");
        assert_eq!(
            q.cmd("device_del", json!({"id": "nic0"})),
            json!({"return": {}})
        );
        assert_eq!(
            q.cmd("netdev_del", json!({"id": "hp"})),
            json!({"return": {}})
        );
        let now = fds(pid);
        assert_eq!(
            *unplugged.get_or_insert(now),
            now,
            "round {round} unplugged"
        );
    }
    let (plugged, unplugged) = (plugged.unwrap(), unplugged.unwrap());
    // The first plug made the two timers (rx, tx); they stay, and only
    // the tap comes and goes (an empty slot's placeholder back-end takes
    // its place).
    assert_eq!((plugged.1, plugged.2), (before.1 + 2, 1));
    assert_eq!(unplugged, (before.0 + 2, before.1 + 2, 0));

    add(&mut q);
    let took = flood_and_count(&vm, &ns, count, 100);
    assert!(
        took >= Duration::from_millis(1900),
        "netdev_add rx_iops=100: {count} frames arrived in {took:?}"
    );
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    vm.finish();
    let _ = std::fs::remove_dir_all(dir);
}
