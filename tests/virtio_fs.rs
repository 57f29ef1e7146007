//! virtio-fs through a vhost-user backend, under the real binary: Kata's
//! StratoVirt flags verbatim with a Python backend (stdlib only) serving
//! FUSE_INIT to the tiny guest; refusals for private RAM and a missing
//! backend; a backend that dies, or stops answering, while the VM runs.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fs_backend::Backend;
use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn python_usable(test: &str) -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import socket; socket.recv_fds")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP {test}: python3 >= 3.9 (socket.recv_fds) is needed");
    }
    ok
}

/// Kata's `-chardev`/`-device` pair for the socket at `sock`.
fn kata_fs_flags(sock: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=virtio_fs,path={},server,nowait", sock.display()),
        "-device".into(),
        "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0".into(),
    ]
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("virtiofs_kata.socket")
}

#[test]
fn kata_virtio_fs_line_serves_fuse_init_to_the_guest() {
    if !kvm_usable("virtio_fs_kata") || !python_usable("virtio_fs_kata") {
        return;
    }
    let dir = scratch("vfs-kata");
    let sock = socket_path(&dir);
    let mut backend = Backend::start(&sock);
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-machine", "type=microvm,dump-guest-core=off,mem-share=on"])
        .args(kata_fs_flags(&sock))
        .args(["-append", "guest.virtio=fs"]);
    let out = run_with_timeout(cmd, Duration::from_secs(90));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.lines("fs: "),
        vec!["tag=kataShared queues=1", "init major=7 minor=31", "done"],
        "{}",
        out.stdout
    );
    // The virtio-fs device is the only command-line device: the first
    // window after the four block and two network slots.
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "virtio: base=0xd0006000 irq=11 id=26"),
        "{}",
        out.stdout
    );
    // What the backend saw: guest RAM, both rings enabled, the guest's
    // FUSE_INIT (7.31, unique 0x1234), and the rings taken back at reset
    // (the request ring after one request).
    let seen = backend.drain_until("disconnected", Duration::from_secs(10));
    for want in [
        "connected",
        "mem regions=1",
        "vring 0 enabled",
        "vring 1 enabled",
        "fuse init 7.31 unique=4660",
        "vring 0 base=0",
        "vring 1 base=1",
    ] {
        assert!(seen.iter().any(|l| l == want), "{want:?} not in {seen:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn private_guest_ram_is_refused_naming_the_device() {
    if !kvm_usable("virtio_fs_private") || !python_usable("virtio_fs_private") {
        return;
    }
    let dir = scratch("vfs-private");
    let sock = socket_path(&dir);
    let backend = Backend::start(&sock);
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-machine", "microvm"])
        .args(kata_fs_flags(&sock));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code(), 2, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        "altovirt: device 'virtio-fs0': guest RAM at 0x0 is not shareable with a \
         vhost-user backend (add mem-share=on to -machine)"
    );
    assert!(out.stdout.is_empty());
    drop(backend);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_backend_is_reported_with_the_socket_path_after_a_bounded_wait() {
    if !kvm_usable("virtio_fs_missing") {
        return;
    }
    let dir = scratch("vfs-missing");
    let sock = socket_path(&dir);
    let start = Instant::now();
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-machine", "microvm,mem-share=on"])
        .args(kata_fs_flags(&sock));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    let waited = start.elapsed();
    assert_eq!(out.code(), 2, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    let prefix = format!(
        "altovirt: device 'virtio-fs0': cannot connect to vhost-user backend socket {} (tried for ",
        sock.display()
    );
    assert!(lines[0].starts_with(&prefix), "{}", lines[0]);
    assert!(lines[0].ends_with("No such file or directory (os error 2)"));
    // The retry is bounded (5 s) but real.
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn backend_death_leaves_the_vm_running_and_answering_qmp() {
    if !kvm_usable("virtio_fs_death") || !python_usable("virtio_fs_death") {
        return;
    }
    let dir = scratch("vfs-death");
    let sock = socket_path(&dir);
    let qmp = dir.join("qmp.sock");
    let mut backend = Backend::start(&sock);
    let mut child = altovirt_with_qmp(&qmp)
        .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(["-machine", "microvm,mem-share=on"])
        .args(kata_fs_flags(&sock))
        .args(["-append", "guest.virtio=fs guest.exit=halt"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest's FUSE_INIT went through and the device was reset.
    backend.wait_for("vring 1 base=1", Duration::from_secs(60));
    backend.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VMM died with its backend"
    );
    assert!(wait_for_path(&qmp, Duration::from_secs(10)));
    let mut q = Client::negotiated(&qmp);
    let status = q.execute("query-status");
    assert_eq!(status["return"]["status"], json!("running"), "{status}");
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    let out = wait_with_timeout(child, Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr
            .contains("vhost-user-fs 'virtio-fs0': the backend hung up"),
        "{}",
        out.stderr
    );
    assert_eq!(out.lines("fs: ").last().map(String::as_str), Some("done"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The VMM of a test that may fail before it waits for it (without the
/// deadline, its vCPU would never come back).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn wedged_backend_times_out_and_leaves_the_vm_running() {
    if !kvm_usable("virtio_fs_wedged") || !python_usable("virtio_fs_wedged") {
        return;
    }
    let dir = scratch("vfs-wedged");
    let sock = socket_path(&dir);
    let qmp = dir.join("qmp.sock");
    // Answers the handshake, then never answers SET_MEM_TABLE (5), which
    // the vCPU sends when the guest sets DRIVER_OK.
    let mut backend = Backend::start_with(&sock, &["--stall-at=5"]);
    let mut vmm = KillOnDrop(Some(
        altovirt_with_qmp(&qmp)
            .args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
            .args(["-machine", "microvm,mem-share=on"])
            .args(kata_fs_flags(&sock))
            .args(["-append", "guest.virtio=fs guest.exit=halt"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    backend.wait_for("stalled 5", Duration::from_secs(60));
    let stalled = Instant::now();
    // The request's deadline (5 s) shuts the socket down: the backend
    // reads end of file.
    backend.wait_for("disconnected", Duration::from_secs(20));
    let waited = stalled.elapsed();
    assert!(waited >= Duration::from_millis(4500), "{waited:?}");
    assert!(wait_for_path(&qmp, Duration::from_secs(10)));
    let mut q = Client::negotiated(&qmp);
    let status = q.execute("query-status");
    assert_eq!(status["return"]["status"], json!("running"), "{status}");
    assert_eq!(q.cmd("quit", json!({})), json!({"return": {}}));
    let out = wait_with_timeout(vmm.0.take().unwrap(), Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains(
            "vhost-user-fs 'virtio-fs0': the backend failed (vhost-user SET_MEM_TABLE \
             failed: no answer from the backend within the timeout); the device needs a reset"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// virtiofsd, the back-end Kata runs (crates.io; scripts/test.sh installs
/// it with `cargo install`): on the PATH or in cargo's bin directory.
fn virtiofsd() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        dirs.push(Path::new(&home).join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

#[test]
fn real_virtiofsd_serves_the_kata_line() {
    if !kvm_usable("virtio_fs_virtiofsd") {
        return;
    }
    let Some(bin) = virtiofsd() else {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(
            !must,
            "virtiofsd is not installed (scripts/test.sh installs it: cargo install virtiofsd)"
        );
        eprintln!("SKIP virtio_fs_virtiofsd: virtiofsd is not installed (cargo install virtiofsd)");
        return;
    };
    let dir = scratch("vfs-virtiofsd");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sock = socket_path(&dir);
    // As Kata starts it (minus the sandboxing this test host may not allow).
    let mut daemon = Command::new(&bin)
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .args(["--sandbox=none", "--seccomp=none", "--cache=never"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start virtiofsd");
    assert!(
        wait_for_path(&sock, Duration::from_secs(20)),
        "virtiofsd never created {}",
        sock.display()
    );
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_PVH, "-serial", "stdio"])
        .args(["-machine", "type=microvm,dump-guest-core=off,mem-share=on"])
        .args(kata_fs_flags(&sock))
        .args(["-append", "guest.virtio=fs"]);
    let out = run_with_timeout(cmd, Duration::from_secs(90));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(out.code(), 0, "{out:?}");
    let fs = out.lines("fs: ");
    assert_eq!(fs.len(), 3, "{}", out.stdout);
    assert_eq!(fs[0], "tag=kataShared queues=1");
    // virtiofsd answers with its own protocol version: 7.x.
    assert!(fs[1].starts_with("init major=7 minor="), "{}", out.stdout);
    assert_eq!(fs[2], "done");
    let _ = std::fs::remove_dir_all(dir);
}
