//! Hybrid (userspace) vsock under the real binary, Firecracker-style: the
//! guest connects out to a host port served on `<uds>_<port>`, and the host
//! connects in by writing `CONNECT <port>\n` on the device's unix socket.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn guest_and_host_connect_to_each_other() {
    if !kvm_usable("vsock_hybrid") {
        return;
    }
    let dir = scratch("vsock");
    let uds = dir.join("vsock.sock");
    // Host service on port 1234 for the guest-initiated connection.
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("guest connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (&stream).write_all(b"world-vsock\n").unwrap();
        // Keep the stream open until the guest closes its side.
        let mut rest = Vec::new();
        let _ = (&stream).read_to_end(&mut rest);
        line
    });
    let device = format!(
        "vsock-device,id=vsock0,guest-cid=3,uds-path={}",
        uds.display()
    );
    let mut child = altovirt()
        .args([
            "-kernel",
            GUEST_ELF64,
            "-serial",
            "stdio",
            "-device",
            &device,
        ])
        .args([
            "-append",
            "guest.virtio=vsock guest.vsockport=1234 guest.vsocklisten=5001",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Follow the console; connect in only once the guest's outgoing
    // connection is closed and it listens.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let console = child.stdout.take().unwrap();
    let follower = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(console).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("guest never closed its vsock connection");
        if line == "vsock: closed" {
            break;
        }
    }
    // Host-initiated connection to guest port 5001.
    let stream = UnixStream::connect(&uds).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (&stream).write_all(b"CONNECT 5001\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "CONNECT answer: {ok:?}");
    (&stream).write_all(b"ping\n").unwrap();
    let mut pong = String::new();
    reader.read_line(&mut pong).unwrap();
    assert_eq!(pong, "pong\n");
    drop(stream);

    let status = child.wait().unwrap();
    let stdout = follower.join().unwrap();
    assert!(status.success(), "{status:?}\n{stdout}");
    assert_eq!(server.join().unwrap(), "hello-vsock\n");
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("vsock: "))
        .collect();
    for expected in [
        "cid=3",
        "connected port=1234",
        "rx=world-vsock",
        "accepted rx=ping",
        "accepted done",
    ] {
        assert!(
            lines.contains(&expected),
            "missing 'vsock: {expected}' in {lines:?}"
        );
    }
    assert!(!uds.exists(), "vsock socket left behind");
    let _ = std::fs::remove_dir_all(dir);
}
