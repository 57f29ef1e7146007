//! QMP queries answer what is true of the running VM, through the real
//! binary: `query-cpus` gives `halted` and `pc` only for stopped vCPUs (read
//! from KVM), `query-kvm` reads `/dev/kvm`, `query-block` lists the boot
//! disks with their own `readonly`/`direct` settings, and
//! `query-hotpluggable-cpus` fails as on QEMU's microvm (no CPU hotplug)
//! and is not listed by `query-commands`.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// altovirt with a QMP socket and the console in a file, in `dir`.
struct Vm {
    child: Child,
    sock: PathBuf,
    console: PathBuf,
}

impl Vm {
    /// Starts `cmd` (altovirt, or a wrapper that execs it) with the QMP
    /// socket and console of `dir` and `args`.
    fn spawn(mut cmd: Command, dir: &Path, args: &[&str]) -> Vm {
        let sock = dir.join("qmp.sock");
        let console = dir.join("console");
        let child = cmd
            .arg(env!("CARGO_BIN_EXE_altovirt"))
            .arg("-qmp")
            .arg(format!("unix:{},server,nowait", sock.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn altovirt");
        assert!(
            wait_for_path(&sock, Duration::from_secs(20)),
            "no QMP socket"
        );
        Vm {
            child,
            sock,
            console,
        }
    }

    fn start(dir: &Path, args: &[&str]) -> Vm {
        Vm::spawn(Command::new("env"), dir, args)
    }

    /// Waits until the console shows `needle` (30 s at most).
    fn wait_console(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&self.console).is_ok_and(|s| s.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the guest never printed {needle:?}");
    }

    fn quit(mut self, c: &mut Client) {
        assert_eq!(c.execute("quit"), json!({"return": {}}));
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `query-cpus` while running and while stopped.
fn query_cpus(c: &mut Client) -> Vec<Value> {
    let r = c.execute("query-cpus");
    r["return"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{r}"))
}

#[test]
fn query_cpus_gives_pc_and_halted_only_for_stopped_vcpus_as_kvm_reports_them() {
    if !kvm_usable("qmp_query_cpus") {
        return;
    }
    // The boot vCPU ends in HLT (halt) or in a busy loop (spin); the second
    // vCPU parks in HLT in the AP trampoline at 0x1000 either way.
    for (exit, printed, bsp_halted) in [("halt", "halting", true), ("spin", "spinning", false)] {
        let dir = scratch(&format!("qmp-cpus-{exit}"));
        let append = format!("guest.exit={exit}");
        let vm = Vm::start(
            &dir,
            &["-kernel", GUEST_ELF64, "-smp", "2", "-append", &append],
        );
        vm.wait_console(printed);
        let mut c = Client::negotiated(&vm.sock);
        // Running: what Kata reads (CPU, thread_id) and nothing guessed.
        for (i, cpu) in query_cpus(&mut c).iter().enumerate() {
            assert_eq!(cpu["CPU"], json!(i));
            assert_eq!(cpu["current"], json!(i == 0), "QEMU's current = first CPU");
            assert!(cpu["thread_id"].as_i64().unwrap() > 0, "{cpu}");
            assert_eq!(cpu["arch"], json!("x86"));
            assert!(
                cpu.get("pc").is_none() && cpu.get("halted").is_none(),
                "a running vCPU's pc/halted cannot be known: {cpu}"
            );
        }
        assert_eq!(c.execute("stop"), json!({"return": {}}));
        let stopped = query_cpus(&mut c);
        assert_eq!(stopped.len(), 2);
        assert_eq!(
            stopped[0]["halted"],
            json!(bsp_halted),
            "{exit}: {stopped:?}"
        );
        assert_eq!(stopped[1]["halted"], json!(true), "{exit}: {stopped:?}");
        let bsp_pc = stopped[0]["pc"].as_u64().unwrap();
        let ap_pc = stopped[1]["pc"].as_u64().unwrap();
        assert!(
            (0x10_0200..0x11_0000).contains(&bsp_pc),
            "{exit}: boot vCPU pc {bsp_pc:#x} outside the guest's code"
        );
        assert!(
            (0x1000..0x2000).contains(&ap_pc),
            "{exit}: AP pc {ap_pc:#x} outside the trampoline"
        );
        // Stopped means stopped: the same answer again.
        assert_eq!(query_cpus(&mut c), stopped);
        assert_eq!(c.execute("cont"), json!({"return": {}}));
        assert!(query_cpus(&mut c)[0].get("pc").is_none());
        vm.quit(&mut c);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn query_kvm_reports_dev_kvm_as_it_is_now() {
    if !kvm_usable("qmp_query_kvm") {
        return;
    }
    let dir = scratch("qmp-kvm");
    // altovirt in a mount namespace of its own, where /dev/kvm can be
    // replaced after it opened the device without touching the host's.
    let mut unshare = Command::new("unshare");
    unshare.args(["--mount", "--propagation", "private", "--"]);
    let vm = Vm::spawn(
        unshare,
        &dir,
        &["-kernel", GUEST_ELF64, "-append", "guest.exit=halt"],
    );
    let mut c = Client::negotiated(&vm.sock);
    assert_eq!(
        c.execute("query-kvm"),
        json!({"return": {"enabled": true, "present": true}})
    );
    let not_kvm = dir.join("not-kvm");
    std::fs::write(&not_kvm, b"").unwrap();
    let st = Command::new("nsenter")
        .arg(format!("--target={}", vm.child.id()))
        .args(["--mount", "--", "mount", "--bind"])
        .arg(&not_kvm)
        .arg("/dev/kvm")
        .status()
        .expect("run nsenter");
    assert!(
        st.success(),
        "bind-mounting over /dev/kvm in altovirt's namespace"
    );
    // The VM keeps running on the descriptor it holds; the device is gone.
    assert_eq!(
        c.execute("query-kvm"),
        json!({"return": {"enabled": true, "present": false}})
    );
    assert_eq!(
        c.execute("query-status")["return"]["status"],
        json!("running")
    );
    vm.quit(&mut c);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn query_block_lists_boot_disks_in_their_slots_with_their_own_settings() {
    if !kvm_usable("qmp_query_block") {
        return;
    }
    let dir = scratch("qmp-block");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let drive_a = format!("id=root,file={},readonly=on,direct=on", a.display());
    let drive_b = format!("id=data,file={},readonly=off,direct=off", b.display());
    let vm = Vm::start(
        &dir,
        &[
            "-kernel",
            GUEST_ELF64,
            "-append",
            "guest.exit=halt",
            "-machine",
            "microvm,blk-slots=3,net-slots=0",
            "-drive",
            &drive_a,
            "-device",
            "virtio-blk-device,drive=root,id=virtio-blk0",
            "-drive",
            &drive_b,
            "-device",
            "virtio-blk-device,drive=data,id=virtio-blk1",
        ],
    );
    let mut c = Client::negotiated(&vm.sock);
    let r = c.execute("query-block");
    let cache = |direct: bool| json!({"writeback": true, "direct": direct, "no-flush": false});
    assert_eq!(
        r["return"],
        json!([
            {"device": "virtio-blk0", "slot": 0, "qdev": "/machine/peripheral/virtio-blk0",
             "locked": false, "removable": true, "type": "unknown",
             "inserted": {"file": a.display().to_string(), "ro": true, "drv": "raw",
                          "node-name": "root", "cache": cache(true)}},
            {"device": "virtio-blk1", "slot": 1, "qdev": "/machine/peripheral/virtio-blk1",
             "locked": false, "removable": true, "type": "unknown",
             "inserted": {"file": b.display().to_string(), "ro": false, "drv": "raw",
                          "node-name": "data", "cache": cache(false)}},
            {"device": "", "slot": 2, "locked": false, "removable": true, "type": "unknown"},
        ]),
        "{r}"
    );
    // A hot-plugged node keeps its own cache.direct.
    let add = c.cmd(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "hp", "read-only": true,
               "file": {"driver": "file", "filename": a.display().to_string()},
               "cache": {"direct": true, "no-flush": false}}),
    );
    assert_eq!(add, json!({"return": {}}));
    let add = c.cmd(
        "device_add",
        json!({"driver": "virtio-blk-mmio", "id": "hp0", "drive": "hp"}),
    );
    assert_eq!(add, json!({"return": {}}));
    let r = c.execute("query-block");
    assert_eq!(
        r["return"][2]["inserted"],
        json!({"file": a.display().to_string(), "ro": true, "drv": "raw", "node-name": "hp",
               "cache": cache(true)}),
        "{r}"
    );
    vm.quit(&mut c);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn query_hotpluggable_cpus_fails_as_on_qemus_microvm_and_is_not_listed() {
    if !kvm_usable("qmp_hotpluggable_cpus") {
        return;
    }
    let dir = scratch("qmp-hotpluggable");
    let vm = Vm::start(
        &dir,
        &[
            "-kernel",
            GUEST_ELF64,
            "-smp",
            "cpus=2,maxcpus=4",
            "-append",
            "guest.exit=halt",
        ],
    );
    let mut c = Client::negotiated(&vm.sock);
    assert_eq!(
        c.execute("query-hotpluggable-cpus"),
        json!({"error": {"class": "GenericError",
                         "desc": "machine does not support hot-plugging CPUs"}})
    );
    let names: Vec<String> = c.execute("query-commands")["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n == "query-hotpluggable-cpus"),
        "{names:?}"
    );
    for listed in [
        "query-cpus",
        "query-cpus-fast",
        "query-kvm",
        "system_powerdown",
    ] {
        assert!(
            names.iter().any(|n| n == listed),
            "{listed} missing: {names:?}"
        );
    }
    // The vCPUs that exist are the ones query-cpus-fast lists (QMP serves
    // before the vCPU threads are started: wait for them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fast = loop {
        let fast = c.execute("query-cpus-fast");
        if fast["return"].as_array().is_some_and(|a| !a.is_empty())
            || std::time::Instant::now() > deadline
        {
            break fast;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(fast["return"].as_array().unwrap().len(), 2, "{fast}");
    vm.quit(&mut c);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn query_cpus_fast_lists_every_vcpu_even_as_the_first_command() {
    if !kvm_usable("qmp_query_cpus_first") {
        return;
    }
    // QMP serves before the vCPU threads exist: a client that asks at once
    // (as Kata does, to place the threads in cgroups) must still get every
    // vCPU with its thread id, never an empty or partial list.
    for round in 0..5 {
        let dir = scratch(&format!("qmp-cpus-first-{round}"));
        let vm = Vm::start(
            &dir,
            &[
                "-kernel",
                GUEST_ELF64,
                "-smp",
                "32",
                "-append",
                "guest.exit=halt",
            ],
        );
        let mut c = Client::negotiated(&vm.sock);
        let r = c.execute("query-cpus-fast");
        let cpus = r["return"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert_eq!(cpus.len(), 32, "round {round}: {r}");
        for cpu in cpus {
            assert!(cpu["thread-id"].as_i64().unwrap() > 0, "{r}");
        }
        vm.quit(&mut c);
        let _ = std::fs::remove_dir_all(dir);
    }
}
