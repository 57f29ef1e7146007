//! Device state across snapshot and restore, through the real binary: a
//! tiny guest keeps using a virtio-console transmit queue after
//! `-incoming` (each line reaches the host once: the queue positions came
//! back), and a restore onto a VM with different devices is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::console_vm::ConsoleVm;
use common::qmp_client::Client;
use common::{altovirt, kvm_usable, scratch, GUEST_ELF64};
use serde_json::json;

/// The console-steps guest's VM: the shared console-driven altovirt.
struct Vm(ConsoleVm);

impl Vm {
    fn start(sock: &Path, args: &[String]) -> Vm {
        Vm(ConsoleVm::start(sock, args, b""))
    }

    fn expect_line(&self, prefix: &str) -> String {
        self.0.expect_line(prefix)
    }

    /// One byte to the guest: it sends one console line and reports.
    fn step(&mut self) -> String {
        self.0.type_in(b"x");
        self.expect_line("console-steps: ")
    }

    fn quit(self, qmp: &mut Client) {
        assert_eq!(qmp.execute("quit"), json!({"return": {}}));
        self.0.wait_exit();
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
