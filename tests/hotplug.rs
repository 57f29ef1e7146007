//! Block hotplug over QMP into the pre-created slots, with Kata's argument
//! shapes, watched from inside the guest: the disk appears (capacity and a
//! marker sector's checksum) and disappears; errors leave the VM unchanged.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// Spawns altovirt with the hotplug test guest and a console reader.
fn spawn_watched(cmd: &mut std::process::Command) -> (std::process::Child, Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = channel();
    let console = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A raw image of `sectors` 512-byte sectors whose first sector is `fill`.
fn image(dir: &std::path::Path, name: &str, sectors: usize, fill: u8) -> (std::path::PathBuf, u32) {
    let path = dir.join(name);
    let mut data = vec![0u8; sectors * 512];
    data[..512].fill(fill);
    std::fs::write(&path, &data).unwrap();
    (path, fnv1a32(&data[..512]))
}

/// Kata's stratovirt.go: blockdev-add (govmm's map, keys sorted, aio
/// native), then device_add with addr = the index of the /dev/vdX letter
/// it promised the agent.
fn kata_plug(q: &mut Client, node: &str, path: &std::path::Path, addr: &str) -> serde_json::Value {
    let add = format!(
        "{{\"arguments\":{{\"driver\":\"raw\",\"file\":{{\"aio\":\"native\",\"driver\":\"file\",\
         \"filename\":\"{}\"}},\"node-name\":\"{node}\",\"read-only\":false}},\
         \"execute\":\"blockdev-add\"}}\n",
        path.display()
    );
    q.send(add.as_bytes());
    assert_eq!(q.reply(), json!({"return": {}}));
    let dev = format!(
        "{{\"arguments\":{{\"addr\":\"{addr}\",\"driver\":\"virtio-blk-mmio\",\
         \"drive\":\"{node}\",\"id\":\"{node}\"}},\"execute\":\"device_add\"}}\n"
    );
    q.send(dev.as_bytes());
    q.reply()
}

#[test]
fn with_a_rootfs_disk_kata_addr_1_is_the_second_disk_and_the_boot_disk_is_a_slot() {
    if !kvm_usable("hotplug_rootfs_layout") {
        return;
    }
    let dir = scratch("hotplug-rootfs");
    let sock = dir.join("qmp.sock");
    let (rootfs, root_sum) = image(&dir, "rootfs.img", 4096, 0x11);
    let (a, a_sum) = image(&dir, "a.img", 2048, 0x22);
    let (b, b_sum) = image(&dir, "b.img", 1024, 0x33);
    let (c, c_sum) = image(&dir, "c.img", 512, 0x44);
    let drive = format!("id=rootfs,file={},readonly=on,direct=off", rootfs.display());
    let (mut child, rx) = spawn_watched(altovirt_with_qmp(&sock).args([
        "-kernel",
        GUEST_ELF64,
        "-serial",
        "stdio",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=rootfs,id=virtio-blk0",
        "-append",
        "guest.virtio=hotplug guest.exit=halt guest.hotplug.events=4",
    ]));
    // Four block slots in all (blk-slots is the total): the rootfs disk is
    // slot 0, i.e. the guest's first virtio-blk device (/dev/vda).
    assert_eq!(
        wait_line(&rx, "hotplug: at boot"),
        format!("hotplug: at boot slot=0 capacity=4096 sum=0x{root_sum:08x}")
    );
    assert_eq!(wait_line(&rx, "hotplug: slots="), "hotplug: slots=4");
    wait_line(&rx, "hotplug: ready");
    let mut q = Client::negotiated(&sock);
    // Slot 0 is taken by the boot disk.
    let r = kata_plug(&mut q, "drive-x", &a, "0");
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("Slot 0 is already in use"),
        "{r}"
    );
    assert_eq!(
        q.cmd("blockdev-del", json!({"node-name": "drive-x"})),
        json!({"return": {}})
    );
    // Kata's /dev/vdb is addr "1": the second block device; /dev/vdc is "2".
    assert_eq!(kata_plug(&mut q, "drive-a", &a, "1"), json!({"return": {}}));
    assert_eq!(
        wait_line(&rx, "hotplug: slot="),
        format!("hotplug: slot=1 added capacity=2048 sum=0x{a_sum:08x}")
    );
    assert_eq!(kata_plug(&mut q, "drive-b", &b, "2"), json!({"return": {}}));
    assert_eq!(
        wait_line(&rx, "hotplug: slot="),
        format!("hotplug: slot=2 added capacity=1024 sum=0x{b_sum:08x}")
    );
    let blocks = q.cmd("query-block", json!({}));
    let devices: Vec<&str> = blocks["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["device"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        ["virtio-blk0", "drive-a", "drive-b", ""],
        "{blocks}"
    );
    assert_eq!(blocks["return"][0]["inserted"]["node-name"], "rootfs");
    assert_eq!(blocks["return"][0]["inserted"]["ro"], true);
    // The -drive is a node: in use, so neither defined again nor deleted.
    let dup = q.cmd(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "rootfs", "file": {"driver": "file", "filename": c}}),
    );
    assert!(
        dup["error"]["desc"].as_str().unwrap().contains("Duplicate"),
        "{dup}"
    );
    let busy = q.cmd("blockdev-del", json!({"node-name": "rootfs"}));
    assert!(
        busy["error"]["desc"].as_str().unwrap().contains("busy"),
        "{busy}"
    );

    // The boot disk can be unplugged like StratoVirt's: its slot is free
    // again, its -drive goes with it (as QEMU does with -drive) and the
    // image is released.
    q.send(br#"{"execute":"device_del","arguments":{"id":"virtio-blk0"}}"#);
    assert_eq!(q.recv(), json!({"return": {}}));
    let ev = q.recv();
    assert_eq!(ev["event"], "DEVICE_DELETED", "{ev}");
    assert_eq!(ev["data"]["device"], "virtio-blk0");
    assert_eq!(wait_line(&rx, "hotplug: slot="), "hotplug: slot=0 removed");
    let gone = q.cmd("blockdev-del", json!({"node-name": "rootfs"}));
    assert!(
        gone["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("Failed to find node"),
        "{gone}"
    );
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&rootfs)
        .unwrap();
    // SAFETY: flock on a file we opened.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0, "boot image still locked after device_del");
    drop(f);
    // The lowest free slot is 0 again.
    let add = json!({"driver": "raw", "node-name": "drive-c",
        "file": {"driver": "file", "filename": c}});
    assert_eq!(q.cmd("blockdev-add", add), json!({"return": {}}));
    assert_eq!(
        q.cmd(
            "device_add",
            json!({"driver": "virtio-blk-mmio", "id": "drive-c", "drive": "drive-c"})
        ),
        json!({"return": {}})
    );
    assert_eq!(
        wait_line(&rx, "hotplug: slot="),
        format!("hotplug: slot=0 added capacity=512 sum=0x{c_sum:08x}")
    );
    wait_line(&rx, "hotplug: done");
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_disk_plugged_while_prelaunch_is_there_when_the_guest_starts() {
    if !kvm_usable("hotplug_prelaunch") {
        return;
    }
    let dir = scratch("hotplug-prelaunch");
    let sock = dir.join("qmp.sock");
    let (a, a_sum) = image(&dir, "a.img", 2048, 0x5a);
    let (mut child, rx) = spawn_watched(altovirt_with_qmp(&sock).args([
        "-S",
        "-kernel",
        GUEST_ELF64,
        "-serial",
        "stdio",
        "-append",
        "guest.virtio=hotplug guest.exit=halt guest.hotplug.events=1",
    ]));
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut q = Client::negotiated(&sock);
    assert_eq!(q.execute("query-status")["return"]["status"], "prelaunch");
    // As QEMU allows with -S: plug before the guest ever ran.
    assert_eq!(kata_plug(&mut q, "drive-a", &a, "1"), json!({"return": {}}));
    assert_eq!(q.execute("query-status")["return"]["status"], "prelaunch");
    assert_eq!(q.execute("cont"), json!({"return": {}}));
    assert_eq!(
        wait_line(&rx, "hotplug: at boot"),
        format!("hotplug: at boot slot=1 capacity=2048 sum=0x{a_sum:08x}")
    );
    wait_line(&rx, "hotplug: ready");
    assert_eq!(
        q.cmd("device_del", json!({"id": "drive-a"})),
        json!({"return": {}})
    );
    assert_eq!(wait_line(&rx, "hotplug: slot="), "hotplug: slot=1 removed");
    wait_line(&rx, "hotplug: done");
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}
