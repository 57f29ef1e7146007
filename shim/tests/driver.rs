//! One driver suite, run against altovirt and against QEMU microvm, both
//! booting the tiny PVH test guest with `guest.exit=halt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shim::config::{Flavour, HypervisorConfig};
use shim::driver::{Hypervisor, QmpMode, Timeouts};

fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn altovirt() -> Option<PathBuf> {
    let p = target_debug().join("altovirt");
    p.is_file().then_some(p)
}

fn guest() -> Option<PathBuf> {
    let build = target_debug().join("build");
    std::fs::read_dir(build)
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let p = e.path().join("out/guest-pvh.elf");
            (e.file_name().to_string_lossy().starts_with("altovirt-") && p.is_file()).then_some(p)
        })
}

fn run_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shim-drv-{}-{name}", std::process::id()))
}

fn suite(flavour: Flavour, vmm: &Path, name: &str, mode: QmpMode) {
    let Some(kernel) = guest() else {
        panic!("test guest not built: run `cargo build -p altovirt` with the same target dir");
    };
    let hv = HypervisorConfig {
        path: vmm.display().to_string(),
        kernel: kernel.display().to_string(),
        kernel_params: "guest.exit=halt".into(),
        default_vcpus: 2,
        default_maxvcpus: 2,
        default_memory: 64,
        cpu_features: if flavour == Flavour::Qemu {
            "-arch-capabilities".into()
        } else {
            String::new()
        },
        machine_accelerators: if flavour == Flavour::Qemu {
            "pic=on,pit=on".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let dir = run_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut h = Hypervisor::with_hypervisor(flavour, hv, name, &dir);
    h.set_qmp_mode(mode);
    h.set_timeouts(Timeouts {
        start: Duration::from_secs(10),
        command: Duration::from_secs(5),
        stop: Duration::from_secs(5),
    });
    h.start().unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default();
        panic!("start: {e}\n{log}")
    });
    assert_eq!(h.pids().len(), 1);
    assert!(dir.join("qmp.socket").exists());
    h.check().unwrap();
    assert_eq!(h.status().unwrap(), "running");
    h.pause().unwrap();
    assert_eq!(h.status().unwrap(), "paused");
    h.resume().unwrap();
    assert_eq!(h.status().unwrap(), "running");
    let tids = h.thread_ids().unwrap();
    assert_eq!(tids.len(), 2, "{tids:?}");
    // The guest really runs: it prints on the serial port (console.log).
    let console = h.spec().console_log();
    let t = std::time::Instant::now();
    while std::fs::metadata(&console).map_or(0, |m| m.len()) == 0
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::metadata(&console).map_or(0, |m| m.len()) > 0,
        "no guest output in {}",
        console.display()
    );
    let pid = h.pids()[0];
    for tid in tids.values() {
        assert!(
            Path::new(&format!("/proc/{pid}/task/{tid}")).exists(),
            "thread {tid} of {pid}"
        );
    }
    let status = h.stop().unwrap();
    assert!(status.is_some());
    assert!(h.pids().is_empty());
    assert!(!dir.join("qmp.socket").exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // A reaped pid may be reused only by an unrelated process.
            !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains(name)
        }
    );
    assert!(h.pause().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn altovirt_persistent() {
    let vmm =
        altovirt().expect("altovirt not built: cargo build -p altovirt with the same target dir");
    suite(Flavour::StratoVirt, &vmm, "alto-p", QmpMode::Persistent);
}

#[test]
fn altovirt_reconnect_per_operation() {
    let vmm = altovirt().expect("altovirt not built");
    suite(
        Flavour::StratoVirt,
        &vmm,
        "alto-r",
        QmpMode::ReconnectPerOperation,
    );
}

#[test]
fn qemu_microvm_persistent() {
    let q = Path::new("/usr/bin/qemu-system-x86_64");
    if !q.is_file() {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    suite(Flavour::Qemu, q, "qemu-p", QmpMode::Persistent);
}

#[test]
fn qemu_microvm_reconnect_per_operation() {
    let q = Path::new("/usr/bin/qemu-system-x86_64");
    if !q.is_file() {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    suite(Flavour::Qemu, q, "qemu-r", QmpMode::ReconnectPerOperation);
}

#[test]
fn start_fails_when_vmm_exits_early() {
    let dir = run_dir("early");
    let hv = HypervisorConfig {
        path: "/bin/false".into(),
        kernel: "/nonexistent".into(),
        ..Default::default()
    };
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv, "early", &dir);
    let e = h.start().unwrap_err();
    assert!(e.to_string().contains("exited during start-up"), "{e}");
    assert!(h.pids().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fake VMM: serves QMP on the `-qmp unix:PATH,...` socket, answers every
/// command with an empty return (echoing ids), and ignores `quit`.
const STUBBORN_VMM: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, time
args = sys.argv[1:]
path = args[args.index("-qmp") + 1].split(",")[0][len("unix:"):]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)
while True:
    conn, _ = srv.accept()
    conn.sendall(b'{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":"stub"},"capabilities":[]}}\r\n')
    f = conn.makefile("rb")
    for line in f:
        for part in line.decode().replace("}{", "}\n{").splitlines():
            if not part.strip():
                continue
            msg = json.loads(part)
            reply = {"return": {}}
            if "id" in msg:
                reply["id"] = msg["id"]
            conn.sendall((json.dumps(reply) + "\r\n").encode())
"#;

#[test]
fn stop_kills_a_vmm_that_ignores_quit() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let dir = run_dir("stubborn");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("stubborn-vmm.py");
    std::fs::write(&script, STUBBORN_VMM).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hv = HypervisorConfig {
        path: script.display().to_string(),
        kernel: "/nonexistent".into(),
        ..Default::default()
    };
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv, "stubborn", &dir);
    h.set_timeouts(Timeouts {
        stop: Duration::from_millis(300),
        ..Timeouts::default()
    });
    h.start().expect("the fake VMM starts and negotiates");
    let pid = h.pids()[0];
    let t0 = std::time::Instant::now();
    let status = h.stop().unwrap().expect("an exit status");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "killed before the timeout"
    );
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(h.pids().is_empty());
    // Reaped: no zombie left under that pid.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
