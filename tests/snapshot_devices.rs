//! Device state across snapshot and restore, through the real binary: a
//! tiny guest keeps using a virtio-console transmit queue after
//! `-incoming` (each line reaches the host once: the queue positions came
//! back), and a restore onto a VM with different devices is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::qmp_client::Client;
use common::{
    altovirt, altovirt_with_qmp, kvm_usable, scratch, wait_for_path, KillOnDrop, GUEST_ELF64,
};
use serde_json::json;

/// A running altovirt: console lines from stdout, stdin to the UART.
struct Vm {
    child: KillOnDrop,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Vm {
    fn start(sock: &Path, args: &[String]) -> Vm {
        let _ = std::fs::remove_file(sock);
        let mut cmd = altovirt_with_qmp(sock);
        cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn altovirt");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert!(
            wait_for_path(sock, Duration::from_secs(20)),
            "QMP socket never appeared"
        );
        Vm {
            child: KillOnDrop(child),
            stdin,
            lines,
        }
    }

    fn expect_line(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no console line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// One byte to the guest: it sends one console line and reports.
    fn step(&mut self) -> String {
        self.stdin.write_all(b"x").expect("write to the UART");
        self.stdin.flush().expect("flush");
        self.expect_line("console-steps: ")
    }

    fn quit(mut self, qmp: &mut Client) {
        assert_eq!(qmp.execute("quit"), json!({"return": {}}));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.0.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "altovirt did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The console output file (written by the device's back-end), waiting a
/// little for the last line.
fn console_output(path: &Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.lines().count() >= lines || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn console_args(out: &Path) -> Vec<String> {
    [
        "-m",
        "64",
        "-append",
        "guest.virtio=console-steps",
        "-device",
        "virtio-serial-device,id=virtio-serial0",
        "-chardev",
        &format!("file,id=charconsole0,path={}", out.display()),
        "-device",
        "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn restored_guest_keeps_using_its_virtio_queue() {
    if !kvm_usable("restored_guest_keeps_using_its_virtio_queue") {
        return;
    }
    let dir = scratch("snapdev-console");
    let snap = dir.join("snap");
    let out_a = dir.join("a.out");
    let sock = dir.join("a.sock");
    let mut vm = Vm::start(&sock, &console_args(&out_a));
    vm.expect_line("console-steps: ready");
    assert_eq!(vm.step(), "console-steps: 1 used=1 id=1");
    assert_eq!(vm.step(), "console-steps: 2 used=2 id=2");
    assert_eq!(console_output(&out_a, 2), "con 1\ncon 2\n");
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("stop"), json!({"return": {}}));
    let uri = format!("file:{}", snap.display());
    assert_eq!(
        qmp.cmd("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    vm.quit(&mut qmp);

    // Restored (the console writes to another file): the transmit queue
    // continues at entry 2; had the device started over at 0, the guest's
    // old chains would be sent again ("con 3" three times).
    let out_b = dir.join("b.out");
    let mut args = console_args(&out_b);
    args.extend(["-incoming".to_string(), uri.clone()]);
    let sock = dir.join("b.sock");
    let mut vm = Vm::start(&sock, &args);
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(vm.step(), "console-steps: 3 used=3 id=3");
    assert_eq!(vm.step(), "console-steps: 4 used=4 id=0");
    assert_eq!(vm.step(), "console-steps: 5 used=5 id=1");
    assert_eq!(console_output(&out_b, 3), "con 3\ncon 4\ncon 5\n");
    vm.quit(&mut qmp);

    // Without the console, or with an extra device, the snapshot does not
    // fit: one line says which device differs.
    let refuse = |extra: &[&str], needle: &str| {
        let mut cmd = altovirt();
        cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
            .args(["-m", "64", "-append", "guest.virtio=console-steps"])
            .args(extra)
            .args(["-incoming", &uri]);
        common::assert_command_usage_error(cmd, needle);
    };
    refuse(
        &[],
        "virtio-console 'virtio-console0' at 0xd0006000 is in the snapshot but not in this VM",
    );
    let chardev = format!("file,id=charconsole0,path={}", out_b.display());
    refuse(
        &[
            "-device",
            "virtio-serial-device,id=virtio-serial0",
            "-chardev",
            &chardev,
            "-device",
            "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=rng0,id=vrng0",
        ],
        "virtio-rng 'vrng0' at 0xd0007000 is in this VM but not in the snapshot",
    );
    let _ = std::fs::remove_dir_all(dir);
}
