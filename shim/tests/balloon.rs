//! Kata's `reclaim_guest_freed_memory`: both flavours start with a
//! free-page-reporting balloon that answers QMP `query-balloon` (altovirt
//! and QEMU microvm booting the tiny test guest).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use shim::config::{Flavour, HypervisorConfig};
use shim::driver::{Hypervisor, Timeouts};

mod common;
use common::{altovirt, guest};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn run_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shim-balloon-{}-{name}", std::process::id()))
}

/// Starts `vmm` with `reclaim_guest_freed_memory = true` and checks the
/// balloon over QMP: present, empty (the guest keeps its 64 MiB).
fn reclaiming_vm_has_a_balloon(flavour: Flavour, vmm: &Path, name: &str) {
    let qemu = flavour == Flavour::Qemu;
    let hv = HypervisorConfig {
        path: vmm.display().to_string(),
        kernel: guest().display().to_string(),
        kernel_params: "guest.exit=halt".into(),
        default_memory: 64,
        vsock: "none".into(),
        cpu_features: if qemu {
            "-arch-capabilities".into()
        } else {
            String::new()
        },
        machine_accelerators: if qemu {
            "pic=on,pit=on".into()
        } else {
            String::new()
        },
        reclaim_guest_freed_memory: true,
        ..Default::default()
    };
    let dir = run_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut h = Hypervisor::with_hypervisor(flavour, hv, name, &dir);
    h.set_timeouts(Timeouts {
        start: Duration::from_secs(10),
        command: Duration::from_secs(5),
        stop: Duration::from_secs(5),
        event: Duration::from_secs(5),
    });
    h.start().unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default();
        panic!("start: {e}\n{log}")
    });
    let pid = h.pids()[0];
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.contains("virtio-balloon-device,id=balloon0,free-page-reporting=on"),
        "{cmdline:?}"
    );
    assert_eq!(
        h.qmp_execute("query-balloon", None).unwrap(),
        json!({"actual": 64 << 20})
    );
    assert!(h.stop().unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reclaim_guest_freed_memory_gives_altovirt_a_reporting_balloon() {
    let Some(alto) = altovirt() else { return };
    reclaiming_vm_has_a_balloon(Flavour::StratoVirt, &alto, "alto");
}

#[test]
fn reclaim_guest_freed_memory_gives_qemu_a_reporting_balloon() {
    if !Path::new(QEMU).is_file() {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    reclaiming_vm_has_a_balloon(Flavour::Qemu, Path::new(QEMU), "qemu");
}
