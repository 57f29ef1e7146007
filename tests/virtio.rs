//! virtio-mmio devices under the real binary, driven by the tiny guests'
//! minimal virtio drivers: block round trips checked on the host file,
//! read-only refusal, image locking, rng, console through a unix socket,
//! and malformed queues that must leave the VMM alive.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A 1 MiB disk image whose sector 0 holds a known pattern.
fn disk(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let mut data = vec![0u8; 1 << 20];
    for (i, b) in data.iter_mut().take(512).enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(11) as u8;
    }
    std::fs::write(&path, &data).unwrap();
    (path, data[..512].to_vec())
}

fn sector1_pattern() -> Vec<u8> {
    (0..512u32).map(|i| ((i * 7 + 3) & 0xff) as u8).collect()
}

#[test]
fn block_round_trip_reaches_the_host_file() {
    if !kvm_usable("virtio_blk") {
        return;
    }
    let dir = scratch("vblk");
    let (img, sector0) = disk(&dir);
    for kernel in [GUEST_ELF64, GUEST_PVH, GUEST_BZIMAGE] {
        std::fs::write(&img, {
            let mut d = std::fs::read(&img).unwrap();
            d[512..1024].fill(0);
            d
        })
        .unwrap();
        let drive = format!("id=d0,file={},readonly=off,direct=off", img.display());
        let out = boot(
            kernel,
            &[
                "-drive",
                &drive,
                "-device",
                "virtio-blk-device,drive=d0,id=blk0,serial=SER123",
                "-append",
                "guest.virtio=blk guest.blkwrite=1",
            ],
        );
        assert_eq!(out.code(), 0, "{out:?}");
        let virtio = out.lines("virtio: ");
        // The command-line disk is block slot 0 of the four default block
        // slots (the other three are empty virtio-blk devices), then come
        // the two network slots (virtio-net with the link down).
        let expected: Vec<String> = (0..6u64)
            .map(|i| {
                let id = if i < 4 { 2 } else { 1 };
                format!(
                    "base={:#x} irq={} id={id}",
                    0xd000_0000u64 + i * 0x1000,
                    5 + i
                )
            })
            .collect();
        assert_eq!(virtio, expected, "{}", out.stdout);
        let blk = out.lines("blk: ");
        assert_eq!(
            blk,
            vec![
                "capacity=2048 ro=0".to_string(),
                format!("sector0 sum=0x{:08x}", fnv1a32(&sector0)),
                "id=SER123".into(),
                "write status=0".into(),
                "flush status=0".into(),
                "readback ok".into(),
                "done".into(),
            ],
            "{kernel}: {}",
            out.stdout
        );
        let on_disk = std::fs::read(&img).unwrap();
        assert_eq!(
            &on_disk[512..1024],
            &sector1_pattern()[..],
            "{kernel}: write not on the host file"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn read_only_drive_refuses_writes_and_leaves_the_file_alone() {
    if !kvm_usable("virtio_blk_ro") {
        return;
    }
    let dir = scratch("vblk-ro");
    let (img, _) = disk(&dir);
    let before = std::fs::read(&img).unwrap();
    let drive = format!("id=d0,file={},readonly=on", img.display());
    let out = boot(
        GUEST_ELF64,
        &[
            "-drive",
            &drive,
            "-device",
            "virtio-blk-device,drive=d0",
            "-append",
            "guest.virtio=blk guest.blkwrite=1",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let blk = out.lines("blk: ");
    assert_eq!(blk[0], "capacity=2048 ro=1", "{}", out.stdout);
    assert!(
        blk.contains(&"write status=1".to_string()),
        "{}",
        out.stdout
    );
    assert!(
        blk.contains(&"readback mismatch".to_string()),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "read-only image modified"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_second_writer_is_refused_with_the_path() {
    if !kvm_usable("virtio_blk_lock") {
        return;
    }
    let dir = scratch("vblk-lock");
    let (img, _) = disk(&dir);
    let drive = format!("id=d0,file={}", img.display());
    // The QMP socket listens only once the devices (and the image lock)
    // exist: waiting for it, not for a while, orders the two VMs.
    let qmp = dir.join("qmp.sock");
    let mut first = altovirt_with_qmp(&qmp)
        .args([
            "-kernel",
            GUEST_ELF64,
            "-append",
            "guest.exit=halt",
            "-serial",
            "none",
        ])
        .args(["-drive", &drive, "-device", "virtio-blk-device,drive=d0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_path(&qmp, Duration::from_secs(20)),
        "first VM never listened"
    );
    let mut cmd = altovirt();
    cmd.args([
        "-kernel",
        GUEST_ELF64,
        "-serial",
        "none",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=d0",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_ne!(out.code(), 0, "second writer started: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains(img.to_str().unwrap()), "{}", out.stderr);
    let _ = first.kill();
    let _ = first.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rng_delivers_entropy_and_json_config_wires_devices() {
    if !kvm_usable("virtio_rng") {
        return;
    }
    let out = boot(
        GUEST_PVH,
        &[
            "-object",
            "rng-random,id=objrng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=objrng0,id=virtio-rng0",
            "-append",
            "guest.virtio=rng",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let rng = out.lines("rng: ");
    assert_eq!(rng.len(), 1, "{}", out.stdout);
    let nonzero: u32 = rng[0].split("nonzero=").nth(1).unwrap().parse().unwrap();
    assert!(rng[0].starts_with("len=64 "), "{}", rng[0]);
    assert!(nonzero >= 48, "64 random bytes with {nonzero} non-zero");

    let dir = scratch("vjson");
    let (img, sector0) = disk(&dir);
    let cfg = dir.join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": GUEST_ELF64, "boot_args": "guest.virtio=blk,rng"},
        "drive": [{"drive_id": "rootfs", "path_on_host": img, "direct": false, "read_only": true}],
        "rng": {"random_file": "/dev/urandom"},
        "serial": {"stdio": true}
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let mut cmd = altovirt();
    cmd.args(["-config", cfg.to_str().unwrap()]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    // The JSON drive fills block slot 0 of four, two network slots follow,
    // then the rng.
    let ids: Vec<String> = out
        .lines("virtio: ")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        ["id=2", "id=2", "id=2", "id=2", "id=1", "id=1", "id=4"],
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains(&format!("blk: sector0 sum=0x{:08x}", fnv1a32(&sector0))));
    assert!(out.stdout.contains("blk: capacity=2048 ro=1"));
    assert!(out.stdout.contains("rng: len=64"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn console_talks_through_a_unix_socket() {
    if !kvm_usable("virtio_console") {
        return;
    }
    let dir = scratch("vcons");
    let sock = dir.join("console.sock");
    let chardev = format!(
        "socket,id=charconsole0,path={},server,nowait",
        sock.display()
    );
    let child = altovirt()
        .args([
            "-kernel",
            GUEST_ELF64,
            "-serial",
            "stdio",
            "-append",
            "guest.virtio=console",
        ])
        .args([
            "-device",
            "virtio-serial-device,id=virtio-serial0",
            "-chardev",
            &chardev,
        ])
        .args([
            "-device",
            "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let stream = UnixStream::connect(&sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "hello-console\n");
    (&stream).write_all(b"echo-from-host\n").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.lines("console: "),
        vec!["tx done".to_string(), "rx=echo-from-host".to_string()],
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_queues_leave_the_vmm_alive_and_serving_qmp() {
    if !kvm_usable("virtio_malformed") {
        return;
    }
    let dir = scratch("vbad");
    let (img, sector0) = disk(&dir);
    let sock = dir.join("qmp.sock");
    let drive = format!("id=d0,file={}", img.display());
    let mut child = altovirt_with_qmp(&sock)
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-drive", &drive, "-device", "virtio-blk-device,drive=d0"])
        .args(["-append", "guest.virtio=blk-bad guest.exit=halt"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut bad = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            console.read_line(&mut line).unwrap() > 0,
            "console closed early: {bad:?}"
        );
        if line.trim() == "halting" {
            break;
        }
        if let Some(rest) = line.trim().strip_prefix("blk-bad: ") {
            bad.push(rest.to_string());
        }
    }
    assert_eq!(bad.len(), 4, "{bad:?}");
    for (line, kind) in bad.iter().zip(["loop", "oob", "huge"]) {
        assert!(line.starts_with(kind), "{line}");
    }
    assert_eq!(bad[3], format!("recovered sum=0x{:08x}", fnv1a32(&sector0)));
    // The VMM still answers QMP after the guest's attacks.
    let stream = UnixStream::connect(&sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (&stream)
        .write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status"}{"execute":"quit"}"#)
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        replies.push(l);
    }
    assert!(replies[1].contains(r#""status":"running""#), "{replies:?}");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_device_on_an_iothread_runs_there() {
    if !kvm_usable("virtio_iothread") {
        return;
    }
    let dir = scratch("viothread");
    let (img, sector0) = disk(&dir);
    let drive = format!("id=d0,file={},readonly=on", img.display());
    let mut child = altovirt()
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-object", "iothread,id=blkio0", "-drive", &drive])
        .args([
            "-device",
            "virtio-blk-device,drive=d0,id=blk0,iothread=blkio0",
        ])
        .args(["-append", "guest.virtio=blk guest.exit=halt"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("halting") {
        let mut line = String::new();
        assert!(
            console.read_line(&mut line).unwrap() > 0,
            "console closed: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(
        seen.contains(&format!("blk: sector0 sum=0x{:08x}", fnv1a32(&sector0))),
        "{seen}"
    );
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t == "blkio0"),
        "no iothread thread: {threads:?}"
    );
    assert!(threads.iter().any(|t| t == "virtio-io"), "{threads:?}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
