//! Block hotplug over QMP into the pre-created slots, with Kata's argument
//! shapes, watched from inside the guest: the disk appears (capacity and a
//! marker sector's checksum) and disappears; errors leave the VM unchanged.

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

fn wait_line(rx: &Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
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

#[test]
fn block_disk_is_hotplugged_seen_by_the_guest_and_unplugged() {
    if !kvm_usable("hotplug_blk") {
        return;
    }
    let dir = scratch("hotplug");
    let sock = dir.join("qmp.sock");
    let img = dir.join("disk.img");
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().take(512).enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(5);
    }
    std::fs::write(&img, &data).unwrap();
    let mut child = altovirt_with_qmp(&sock)
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args([
            "-append",
            "guest.virtio=hotplug guest.exit=halt guest.hotplug.events=2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = channel();
    let console = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(wait_line(&rx, "hotplug: slots="), "hotplug: slots=4");
    wait_line(&rx, "hotplug: ready");
    let mut q = Client::negotiated(&sock);

    // Kata's blockdev-add shape.
    let add = json!({"driver": "raw", "node-name": "drive-vd1", "read-only": false,
        "file": {"driver": "file", "filename": img, "aio": "threads"},
        "cache": {"direct": false, "no-flush": false}});
    assert_eq!(q.cmd("blockdev-add", add.clone()), json!({"return": {}}));
    let dup = q.cmd("blockdev-add", add);
    assert_eq!(dup["error"]["class"], "GenericError", "{dup}");

    // Errors leave the VM unchanged.
    for (args, needle) in [
        (
            json!({"driver": "virtio-blk-mmio", "id": "vd1", "drive": "nope"}),
            "can't find value 'nope'",
        ),
        (
            json!({"driver": "virtio-blk-mmio", "id": "vd1", "drive": "drive-vd1", "addr": "9"}),
            "out of range",
        ),
    ] {
        let r = q.cmd("device_add", args);
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        assert!(r["error"]["desc"].as_str().unwrap().contains(needle), "{r}");
    }
    let r = q.cmd(
        "device_add",
        json!({"driver": "virtio-blk-mmio", "id": "vd1", "drive": "drive-vd1", "addr": "1",
               "bus": "virtio-mmio-bus.1", "romfile": "", "share-rw": false, "serial": "HP1"}),
    );
    assert_eq!(r, json!({"return": {}}));
    let added = wait_line(&rx, "hotplug: slot=");
    assert_eq!(
        added,
        format!(
            "hotplug: slot=1 added capacity=2048 sum=0x{:08x}",
            fnv1a32(&data[..512])
        )
    );
    let again = q.cmd(
        "device_add",
        json!({"driver": "virtio-blk-mmio", "id": "vd1", "drive": "drive-vd1"}),
    );
    assert!(
        again["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("Duplicate device ID"),
        "{again}"
    );
    let busy = q.cmd("blockdev-del", json!({"node-name": "drive-vd1"}));
    assert!(
        busy["error"]["desc"].as_str().unwrap().contains("busy"),
        "{busy}"
    );
    let blocks = q.cmd("query-block", json!({}));
    assert_eq!(blocks["return"][1]["device"], "vd1", "{blocks}");
    assert_eq!(
        blocks["return"][1]["inserted"]["file"],
        json!(img),
        "{blocks}"
    );

    // Unplug: the reply, then DEVICE_DELETED; the guest sees the disk go.
    q.stream
        .write_all(br#"{"execute":"device_del","arguments":{"id":"vd1"}}"#)
        .unwrap();
    assert_eq!(q.recv(), json!({"return": {}}));
    let ev = q.recv();
    assert_eq!(ev["event"], "DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "vd1", "path": "/machine/peripheral/vd1"})
    );
    assert_eq!(wait_line(&rx, "hotplug: slot="), "hotplug: slot=1 removed");
    wait_line(&rx, "hotplug: done");
    let missing = q.cmd("device_del", json!({"id": "vd1"}));
    assert_eq!(missing["error"]["class"], "DeviceNotFound", "{missing}");
    assert_eq!(
        q.cmd("blockdev-del", json!({"node-name": "drive-vd1"})),
        json!({"return": {}})
    );
    // The image's lock bytes are released: QEMU or another VM may take it.
    assert_eq!(
        image_lock_bytes(&img),
        Vec::<i64>::new(),
        "image still locked after device_del"
    );
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn two_hundred_hotplug_cycles_leak_nothing() {
    if !kvm_usable("hotplug_cycles") {
        return;
    }
    let dir = scratch("hotplug-cycles");
    let sock = dir.join("qmp.sock");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let mut child = altovirt_with_qmp(&sock)
        .args([
            "-kernel",
            GUEST_ELF64,
            "-serial",
            "none",
            "-append",
            "guest.exit=halt",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut q = Client::negotiated(&sock);
    let pid = child.id();
    let cycle = |q: &mut Client, i: usize| {
        let node = format!("n{i}");
        let add = json!({"driver": "raw", "node-name": node,
            "file": {"driver": "file", "filename": img}});
        assert_eq!(q.cmd("blockdev-add", add), json!({"return": {}}));
        let dev = json!({"driver": "virtio-blk-mmio", "id": format!("d{i}"), "drive": node});
        assert_eq!(q.cmd("device_add", dev), json!({"return": {}}));
        assert_eq!(
            q.cmd("device_del", json!({"id": format!("d{i}")})),
            json!({"return": {}})
        );
        assert_eq!(
            q.cmd("blockdev-del", json!({"node-name": node})),
            json!({"return": {}})
        );
    };
    // Warm up (allocator pools, first-use buffers), then measure.
    for i in 0..10 {
        cycle(&mut q, i);
    }
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));
    for i in 10..210 {
        cycle(&mut q, i);
    }
    let (fds1, rss1) = (fd_count(pid), rss_kib(pid));
    assert_eq!(fds1, fds0, "file descriptors leaked over 200 cycles");
    assert!(
        rss1 <= rss0 + 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB over 200 cycles"
    );
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}
