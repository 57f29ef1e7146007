//! Hostile or odd host inputs, through the real binary: FIFOs and
//! character devices as disk images (at boot and over QMP), ELF kernels
//! with nothing to load, guest RAM above the host's, paths the user got
//! wrong, duplicate JSON keys, and image locks shared with real QEMU.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// altovirt paused (`-S`) with a QMP socket, plus `args`; returns once the
/// socket listens (the VM and its devices exist by then).
fn paused_vm(sock: &Path, args: &[&str]) -> Child {
    let child = altovirt_with_qmp(sock)
        .args(["-S", "-serial", "none"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_path(sock, Duration::from_secs(20)),
        "QMP never listened"
    );
    child
}

/// Sends `quit` and checks that altovirt exits with status 0.
fn quit(mut q: Client, child: Child) {
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    let out = wait_with_timeout(child, Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn fifos_and_character_devices_are_never_opened_as_disks() {
    if !kvm_usable("host_inputs_fifo") {
        return;
    }
    let dir = scratch("hi-fifo");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    // At boot: refused by type, before anything opens them.
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        assert_usage_error(
            &[
                "-drive",
                &format!("id=d,file={path}"),
                "-device",
                "virtio-blk-device,drive=d",
            ],
            path,
        );
    }

    // Over QMP: blockdev-add refuses them, and a path that turns into a
    // FIFO between blockdev-add and device_add is refused without
    // blocking; hotplug, query-block and quit keep working.
    let sock = dir.join("qmp.sock");
    let child = paused_vm(&sock, &[]);
    let mut q = Client::negotiated(&sock);
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let r = q.cmd(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "n0",
                   "file": {"driver": "file", "filename": path}}),
        );
        assert_eq!(
            r["error"]["desc"],
            json!(format!("'{path}' is not a regular file or block device")),
            "{r}"
        );
    }
    let img = dir.join("swapped.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let add = json!({"driver": "raw", "node-name": "n1",
                     "file": {"driver": "file", "filename": img}});
    assert_eq!(q.cmd("blockdev-add", add), json!({"return": {}}));
    std::fs::remove_file(&img).unwrap();
    mkfifo(&img);
    let r = q.cmd(
        "device_add",
        json!({"driver": "virtio-blk-mmio", "id": "vd1", "drive": "n1"}),
    );
    assert_eq!(
        r["error"]["desc"],
        json!(format!(
            "disk image {} is a FIFO, not a regular file or block device",
            img.display()
        )),
        "{r}"
    );
    // The slot stayed free: a real image goes in and out of it again.
    let blocks = q.cmd("query-block", json!({}));
    assert!(blocks["return"][0].get("inserted").is_none(), "{blocks}");
    let good = dir.join("good.img");
    std::fs::write(&good, vec![0u8; 1 << 20]).unwrap();
    let add = json!({"driver": "raw", "node-name": "n2",
                     "file": {"driver": "file", "filename": good}});
    assert_eq!(q.cmd("blockdev-add", add), json!({"return": {}}));
    let dev = json!({"driver": "virtio-blk-mmio", "id": "vd2", "drive": "n2", "addr": "0"});
    assert_eq!(q.cmd("device_add", dev), json!({"return": {}}));
    assert_eq!(
        q.cmd("device_del", json!({"id": "vd2"})),
        json!({"return": {}})
    );
    let blocks = q.cmd("query-block", json!({}));
    assert_eq!(blocks["return"][0]["device"], json!(""), "{blocks}");
    quit(q, child);
    let _ = std::fs::remove_dir_all(dir);
}

/// The program headers of an ELF64 image: (offset in the file, type,
/// filesz, memsz) of each.
fn program_headers(elf: &[u8]) -> Vec<(usize, u32, u64, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, size, count) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            let kind = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
            (at, kind, u64_at(at + 32), u64_at(at + 40))
        })
        .collect()
}

#[test]
fn elf_kernels_with_nothing_sane_to_load_are_refused() {
    if !kvm_usable("host_inputs_elf") {
        return;
    }
    let dir = scratch("hi-elf");
    let good = std::fs::read(GUEST_ELF64).unwrap();
    let loads: Vec<_> = program_headers(&good)
        .into_iter()
        .filter(|p| p.1 == 1)
        .collect();
    assert!(!loads.is_empty(), "the test guest has PT_LOAD segments");

    let mut no_load = good.clone();
    for (at, ..) in &loads {
        no_load[*at..*at + 4].copy_from_slice(&0u32.to_le_bytes()); // PT_NULL
    }
    let no_load_path = dir.join("no-load.elf");
    std::fs::write(&no_load_path, &no_load).unwrap();
    let shown = no_load_path.to_str().unwrap();
    assert_usage_error(
        &["-kernel", shown],
        &format!("-kernel {shown}: failed to load kernel: unsupported ELF image: no loadable (PT_LOAD) segment"),
    );

    let mut oversized = good.clone();
    let (at, _, filesz, _) = *loads.iter().find(|p| p.2 > 0).unwrap();
    oversized[at + 40..at + 48].copy_from_slice(&(filesz - 1).to_le_bytes());
    let oversized_path = dir.join("filesz.elf");
    std::fs::write(&oversized_path, &oversized).unwrap();
    let shown = oversized_path.to_str().unwrap();
    assert_usage_error(
        &["-kernel", shown],
        &format!("-kernel {shown}: failed to load kernel: unsupported ELF image: segment"),
    );
    assert_usage_error(&["-kernel", shown], "exceeds memory size");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn guest_ram_above_the_hosts_is_refused_unless_overcommit_is_asked_for() {
    // Refused before KVM is touched, so this runs anywhere.
    let start = std::time::Instant::now();
    assert_usage_error(
        &["-m", "4T"],
        "-m: 4194304 MiB of guest RAM is more than this host's",
    );
    assert_usage_error(&["-m", "4T"], "add -machine mem-overcommit=on");
    assert!(start.elapsed() < Duration::from_secs(10), "refused at once");
    // The override is parsed (and mistakes in it are named).
    assert_usage_error(
        &["-machine", "mem-overcommit=maybe"],
        "-machine mem-overcommit",
    );
    if kvm_usable("host_inputs_ram") {
        let out = boot(
            GUEST_ELF64,
            &["-m", "64", "-machine", "microvm,mem-overcommit=on"],
        );
        assert_eq!(out.code(), 0, "{out:?}");
    }
}

#[test]
fn paths_the_user_got_wrong_exit_2_naming_flag_and_path() {
    let dir = scratch("hi-paths");
    let d = dir.to_str().unwrap();
    assert_usage_error(&["-pidfile", d], &format!("-pidfile: cannot write '{d}'"));
    assert_usage_error(&["-D", d], &format!("-D: cannot open log file '{d}'"));
    assert_usage_error(
        &["-pidfile", "/nonexistent/dir/vm.pid"],
        "'/nonexistent/dir/vm.pid'",
    );
    if kvm_usable("host_inputs_paths") {
        assert_usage_error(
            &["-serial", &format!("file:{d}")],
            &format!("-serial: cannot open '{d}'"),
        );
        assert_usage_error(
            &["-qmp", "unix:/nonexistent/dir/q.sock,server,nowait"],
            "-qmp: cannot create QMP socket \"/nonexistent/dir/q.sock\"",
        );
        let long = format!("{d}/{}", "q".repeat(120));
        assert_usage_error(
            &["-qmp", &format!("unix:{long},server,nowait")],
            "is too long (at most 107 bytes)",
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn duplicate_json_keys_are_refused_with_their_path() {
    let dir = scratch("hi-json");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        "{\"machine-config\": {\"mem_size\": 134217728,\n \"mem_size\": 268435456}}",
    )
    .unwrap();
    assert_usage_error(
        &["-config", cfg.to_str().unwrap()],
        "duplicate key 'machine-config.mem_size'",
    );
    std::fs::write(&cfg, r#"{"drive": [], "drive": []}"#).unwrap();
    assert_usage_error(&["-config", cfg.to_str().unwrap()], "duplicate key 'drive'");
    let _ = std::fs::remove_dir_all(dir);
}

// ---- image locks shared with QEMU ----

/// QEMU's microvm with `img` on a virtio-blk device, paused, with a QMP
/// socket; returns once QEMU answered `query-block` (its devices are
/// realized and the image locked by then), or its failure.
struct Qemu {
    child: Child,
}

fn qemu_available(test: &str) -> bool {
    let found = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(
            !must,
            "{test}: qemu-system-x86_64 is required (scripts/test.sh installs it)"
        );
        eprintln!("SKIP {test}: qemu-system-x86_64 is not installed");
    }
    found
}

impl Qemu {
    /// Starts QEMU; `Err(stderr)` when it refuses to start.
    fn start(dir: &Path, img: &Path, read_only: bool) -> Result<Qemu, String> {
        let sock = dir.join(format!("qemu-{}.sock", read_only));
        let _ = std::fs::remove_file(&sock);
        let ro = if read_only { ",readonly=on" } else { "" };
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-M", "microvm", "-S", "-nographic", "-serial", "none"])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d{ro}",
                img.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-system-x86_64");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
                return Err(err);
            }
            // The socket listens before the devices are realized; QMP is
            // served from the main loop, after that (a QEMU that fails to
            // realize one closes the connection and exits).
            if let Ok(stream) = UnixStream::connect(&sock) {
                if let Ok(reply) = raw_qmp(stream, "query-block") {
                    assert!(reply.get("return").is_some(), "{reply}");
                    return Ok(Qemu { child });
                }
                let status = child.wait().unwrap();
                assert!(!status.success(), "QEMU closed QMP and exited 0");
                continue;
            }
            assert!(std::time::Instant::now() < deadline, "QEMU never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Negotiates and runs one command on a QEMU QMP socket (QEMU's greeting
/// offers `oob`, which the test client does not expect).
fn raw_qmp(stream: UnixStream, command: &str) -> std::io::Result<Value> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    w.write_all(br#"{"execute":"qmp_capabilities"}"#)?;
    w.write_all(format!(r#"{{"execute":"{command}"}}"#).as_bytes())?;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("event").is_none() {
            replies.push(v);
        }
    }
    Ok(replies.pop().unwrap_or_default())
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(name);
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    img
}

/// `-drive` and `-device` flags for `img`.
fn drive_args(img: &Path, read_only: bool) -> Vec<String> {
    let ro = if read_only { ",readonly=on" } else { "" };
    vec![
        "-drive".into(),
        format!("id=d0,file={}{ro}", img.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn altovirt_refuses_an_image_qemu_writes_and_readers_coexist() {
    if !kvm_usable("locks_qemu_holds") || !qemu_available("locks_qemu_holds") {
        return;
    }
    let dir = scratch("hi-lock-q");
    let img = image(&dir, "disk.img");
    let qemu = Qemu::start(&dir, &img, false).expect("QEMU starts on a free image");
    // QEMU's writer holds 100 (consistent read), 101 (write), 201 (write
    // not shared) — the bytes altovirt takes too.
    assert_eq!(image_lock_bytes(&img), vec![100, 101, 201]);
    let shown = img.to_str().unwrap();
    for read_only in [false, true] {
        let args = drive_args(&img, read_only);
        assert_usage_error(&strs(&args), &format!("disk image {shown} is locked"));
    }
    drop(qemu);

    // Two readers: QEMU's and altovirt's share the image.
    let qemu = Qemu::start(&dir, &img, true).expect("QEMU reader starts");
    let sock = dir.join("qmp.sock");
    let child = paused_vm(&sock, &strs(&drive_args(&img, true)));
    let q = Client::negotiated(&sock);
    // ... and a writer is refused while they read.
    let args = drive_args(&img, false);
    assert_usage_error(&strs(&args), "failed to get the \"write\" lock");
    quit(q, child);
    drop(qemu);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn qemu_and_a_second_altovirt_refuse_an_image_altovirt_writes() {
    if !kvm_usable("locks_altovirt_holds") || !qemu_available("locks_altovirt_holds") {
        return;
    }
    let dir = scratch("hi-lock-a");
    let img = image(&dir, "disk.img");
    let sock = dir.join("qmp.sock");
    let child = paused_vm(&sock, &strs(&drive_args(&img, false)));
    let q = Client::negotiated(&sock);
    assert_eq!(image_lock_bytes(&img), vec![100, 101, 201]);
    for read_only in [false, true] {
        let err = Qemu::start(&dir, &img, read_only)
            .err()
            .unwrap_or_else(|| panic!("QEMU (read_only={read_only}) took a written image"));
        assert!(err.contains("\"write\" lock"), "{err}");
        assert!(err.contains("Is another process using the image"), "{err}");
    }
    // QEMU's tools see the same locks (`qemu-img info` shares everything,
    // with QEMU as with altovirt; qemu-io reading or writing does not).
    for io in ["read 0 512", "write 0 512"] {
        if let Ok(out) = Command::new("qemu-io")
            .args(["-f", "raw", "-c", io])
            .arg(&img)
            .output()
        {
            assert!(
                !out.status.success(),
                "qemu-io did '{io}' on an image being written"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Failed to get \"write\" lock"), "{err}");
        }
    }
    // Another altovirt, writer or reader, is refused too.
    for read_only in [false, true] {
        let args = drive_args(&img, read_only);
        assert_usage_error(&strs(&args), "failed to get the \"write\" lock");
    }
    quit(q, child);
    // Released at exit: QEMU may write it now.
    assert_eq!(image_lock_bytes(&img), Vec::<i64>::new());
    drop(Qemu::start(&dir, &img, false).expect("QEMU starts once altovirt is gone"));
    let _ = std::fs::remove_dir_all(dir);
}
