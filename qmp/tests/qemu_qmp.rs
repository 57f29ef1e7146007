//! QEMU's own Python client library (qemu.qmp) against the server. Skipped
//! (with a message) when python3 or qemu.qmp is not installed.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Setup;

fn have_qemu_qmp() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn qemu_qmp_python_library() {
    if !have_qemu_qmp() {
        eprintln!("skipped: python3 with qemu.qmp is not installed");
        return;
    }
    let s = Setup::new("pyqmp");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/qemu_qmp_client.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(s.sock())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qemu.qmp client timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("qemu.qmp: all checks passed"),
        "{stdout}\n{stderr}"
    );
    print!("{stdout}");
    let calls = s.fake.calls();
    assert!(calls.contains(&"netdev_add".to_string()), "{calls:?}");
    let fds = s.fake.fds.lock().unwrap();
    assert_eq!(fds.len(), 1);
    assert_eq!(fds[0].0, "tap0");
}
