//! One driver suite, run against altovirt and against QEMU microvm, both
//! booting the tiny PVH test guest with `guest.exit=halt`: start,
//! readiness, pause/resume, thread ids, hotplug (altovirt: block into its
//! slots, network if the VMM build has it; QEMU: typed "unsupported"),
//! stop.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shim::config::{Flavour, HypervisorConfig};
use shim::driver::{DriverError, Hypervisor, QmpMode, Timeouts};
use shim::hotplug::{BlockDevice, DeviceKind, NetDevice, TapSource};
use shim::slots::SlotError;

mod common;
use common::{altovirt, guest};

fn run_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shim-drv-{}-{name}", std::process::id()))
}

fn kernel() -> PathBuf {
    guest()
}

fn hv_for(flavour: Flavour, vmm: &Path) -> HypervisorConfig {
    HypervisorConfig {
        path: vmm.display().to_string(),
        kernel: kernel().display().to_string(),
        kernel_params: "guest.exit=halt".into(),
        default_vcpus: 2,
        default_maxvcpus: 2,
        default_memory: 64,
        blk_slots: 2,
        vsock: if flavour == Flavour::Qemu {
            "none".into()
        } else {
            "hybrid".into()
        },
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
    }
}

fn disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn blk(id: &str, path: &Path) -> BlockDevice {
    BlockDevice {
        id: id.into(),
        path: path.to_path_buf(),
        read_only: false,
        direct: false,
        slot: None,
    }
}

/// The devices in altovirt's query-block, by slot ("" for empty).
fn query_block_devices(h: &mut Hypervisor) -> Vec<String> {
    let r = h.qmp_execute("query-block", None).unwrap();
    r.as_array()
        .unwrap()
        .iter()
        .map(|b| b["device"].as_str().unwrap_or("").to_string())
        .collect()
}

/// altovirt: block hotplug into two slots (lowest free, full, bounds,
/// unknown device, slot reuse); network hotplug as far as the VMM goes.
fn hotplug_altovirt(h: &mut Hypervisor, dir: &Path) {
    let caps = h.capabilities();
    assert!(
        caps.block_device_hotplug && caps.net_device_hotplug,
        "{caps:?}"
    );
    let (a, b, c) = (disk(dir, "a.img"), disk(dir, "b.img"), disk(dir, "c.img"));
    let p = h.hotplug_add_block(&blk("", &a)).unwrap();
    assert_eq!(
        (p.id.as_str(), p.kind, p.slot),
        ("virtio-blk-hp0", DeviceKind::Block, 0)
    );
    assert_eq!(h.hotplug_add_block(&blk("vd-b", &b)).unwrap().slot, 1);
    assert_eq!(query_block_devices(h), ["virtio-blk-hp0", "vd-b"]);
    match h.hotplug_add_block(&blk("vd-c", &c)) {
        Err(DriverError::Slot(SlotError::Full {
            kind: "blk",
            count: 2,
        })) => {}
        other => panic!("expected full slots, got {other:?}"),
    }
    let mut far = blk("vd-c", &c);
    far.slot = Some(2);
    assert!(matches!(
        h.hotplug_add_block(&far),
        Err(DriverError::Slot(SlotError::OutOfRange { index: 2, .. }))
    ));
    assert!(matches!(
        h.hotplug_add_block(&blk("vd-b", &c)),
        Err(DriverError::Slot(SlotError::Duplicate(_)))
    ));
    assert_eq!(h.hotplug_remove("virtio-blk-hp0").unwrap().slot, 0);
    assert!(matches!(
        h.hotplug_remove("virtio-blk-hp0"),
        Err(DriverError::Slot(SlotError::Unknown(_)))
    ));
    // The freed slot is the lowest free one again; the image of a removed
    // disk is released (a.img can be plugged again).
    assert_eq!(h.hotplug_add_block(&blk("vd-c", &c)).unwrap().slot, 0);
    assert_eq!(query_block_devices(h), ["vd-c", "vd-b"]);
    h.hotplug_remove_block("vd-b").unwrap();
    assert_eq!(h.hotplug_add_block(&blk("vd-a", &a)).unwrap().slot, 1);
    for d in ["vd-c", "vd-a"] {
        h.hotplug_remove(d).unwrap();
    }
    assert_eq!(query_block_devices(h), ["", ""]);
    assert_eq!(h.block_slots().used(), 0);
    // A failing device_add leaves no node behind: the image is missing.
    let e = h
        .hotplug_add_block(&blk("vd-x", &dir.join("missing.img")))
        .unwrap_err();
    assert!(matches!(e, DriverError::Qmp(_)), "{e}");
    assert_eq!(h.block_slots().used(), 0);

    // Network hotplug: tested for real only when this VMM build has it.
    if h.net_hotplug_supported().unwrap() {
        eprintln!(
            "network hotplug: this altovirt has it; tests/run.rs plugs a real tap in a netns"
        );
    } else {
        eprintln!(
            "SKIP network hotplug on altovirt: this build answers netdev_add with \
             'not supported yet'; checking the typed error instead"
        );
        let e = h
            .hotplug_add_net(&NetDevice {
                id: String::new(),
                tap: TapSource::Ifname("shimtest0"),
                mac: None,
                slot: None,
            })
            .unwrap_err();
        assert!(
            matches!(&e, DriverError::Unsupported { what, .. } if what == "network hotplug"),
            "{e}"
        );
        assert_eq!(h.net_slots().used(), 0);
    }
}

/// QEMU microvm: no hotplug capability, and every hotplug call is refused
/// with the typed error.
fn hotplug_qemu(h: &mut Hypervisor, dir: &Path) {
    let caps = h.capabilities();
    assert!(
        !caps.block_device_hotplug && !caps.net_device_hotplug,
        "{caps:?}"
    );
    let a = disk(dir, "a.img");
    let unsupported = |e: DriverError| {
        assert!(
            matches!(&e, DriverError::Unsupported { flavour, .. } if flavour.contains("QEMU")),
            "{e}"
        );
        assert!(e.to_string().contains("not supported"), "{e}");
    };
    unsupported(h.hotplug_add_block(&blk("vd", &a)).unwrap_err());
    unsupported(h.hotplug_remove("vd").unwrap_err());
    unsupported(
        h.hotplug_add_net(&NetDevice {
            id: String::new(),
            tap: TapSource::Ifname("shimtest0"),
            mac: None,
            slot: None,
        })
        .unwrap_err(),
    );
    assert!(!h.net_hotplug_supported().unwrap());
    // QEMU's own query-block still answers (no slots in it).
    assert!(h.qmp_execute("query-block", None).unwrap().is_array());
}

fn suite(flavour: Flavour, vmm: &Path, name: &str, mode: QmpMode) {
    let mut hv = hv_for(flavour, vmm);
    if flavour == Flavour::StratoVirt {
        // Kata's disk limits: every hot-plugged disk then gets
        // block_set_io_throttle, which must succeed for the plug to.
        hv.disk_rate_limiter_ops_max_rate = 100_000;
        hv.disk_rate_limiter_bw_max_rate = 8 << 30;
    }
    let dir = run_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut h = Hypervisor::with_hypervisor(flavour, hv, name, &dir);
    h.set_qmp_mode(mode);
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
    assert_eq!(h.pids().len(), 1);
    assert!(dir.join("qmp.socket").exists());
    // Kata's virtio console socket, and altovirt's hybrid vsock socket.
    assert!(dir.join("console.sock").exists());
    assert_eq!(
        dir.join("kata.hvsock").exists(),
        flavour == Flavour::StratoVirt
    );
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
    match flavour {
        Flavour::StratoVirt => hotplug_altovirt(&mut h, &dir),
        Flavour::Qemu => hotplug_qemu(&mut h, &dir),
    }
    assert_eq!(h.status().unwrap(), "running");
    let status = h.stop().unwrap();
    assert!(status.is_some());
    assert!(h.pids().is_empty());
    for f in ["qmp.socket", "console.sock", "kata.hvsock", "pid"] {
        assert!(!dir.join(f).exists(), "{f} left behind");
    }
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

#[test]
fn qemu_hotplug_is_refused_without_asking_the_vmm() {
    // Never started: an "unsupported" answer (not "not running") shows the
    // VMM is not consulted.
    let dir = run_dir("qemu-nohp");
    let hv = HypervisorConfig {
        path: "/nonexistent/qemu".into(),
        ..Default::default()
    };
    let mut h = Hypervisor::with_hypervisor(Flavour::Qemu, hv, "qemu-nohp", &dir);
    let e = h
        .hotplug_add_block(&blk("vd", Path::new("/x.img")))
        .unwrap_err();
    assert!(matches!(e, DriverError::Unsupported { .. }), "{e}");
    assert!(!h.capabilities().block_device_hotplug);
    assert!(!dir.exists());
}

#[test]
fn altovirt_serves_virtio_fs_from_a_running_backend() {
    // shared_fs = "virtio-fs" adds Kata's vhost-user-fs device. Like Kata,
    // the shim does not start virtiofsd: without one listening, start fails
    // with altovirt's one-line reason naming the socket.
    let vmm = altovirt().expect("altovirt not built");
    let mut hv = hv_for(Flavour::StratoVirt, &vmm);
    hv.shared_fs = "virtio-fs".into();
    let dir = run_dir("virtiofs");
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv.clone(), "virtiofs", &dir);
    assert!(h
        .args()
        .contains(&"vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0".into()));
    let e = h.start().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cannot connect to vhost-user backend socket")
            && msg.contains("vhost-fs.sock"),
        "{msg}"
    );
    assert!(h.pids().is_empty());
    let _ = std::fs::remove_dir_all(&dir);

    // With a back-end listening (a stand-in for virtiofsd), the VM starts.
    let dir = run_dir("virtiofs-up");
    std::fs::create_dir_all(&dir).unwrap();
    let mut backend = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/guests/vhost_user_fs_backend.py"
        ))
        .arg(dir.join("vhost-fs.sock"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the vhost-user-fs back-end");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(backend.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening"), "back-end: {line}");
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv, "virtiofs-up", &dir);
    h.start().expect("start with virtio-fs");
    assert_eq!(h.pids().len(), 1);
    h.stop().expect("stop");
    let _ = backend.kill();
    let _ = backend.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vhost_vsock_needs_the_host_device() {
    // vsock = "vhost" opens /dev/vhost-vsock for the VMM to inherit, as
    // Kata does; without it start fails before launching anything.
    let vmm = altovirt().expect("altovirt not built");
    let mut hv = hv_for(Flavour::StratoVirt, &vmm);
    hv.vsock = "vhost".into();
    let dir = run_dir("vhostvsock");
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv, "vhostvsock", &dir);
    if Path::new("/dev/vhost-vsock").exists() {
        h.start().unwrap();
        let pid = h.pids()[0];
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            cmdline.contains("vhost-vsock-device,id=vsock-3,guest-cid=3,vhostfd="),
            "{cmdline}"
        );
        h.stop().unwrap();
    } else {
        let e = h.start().unwrap_err();
        assert!(
            matches!(&e, DriverError::HostDevice { path, .. } if path == "/dev/vhost-vsock"),
            "{e}"
        );
        assert!(e.to_string().contains("vsock = \"vhost\""), "{e}");
        assert!(h.pids().is_empty());
    }
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

/// A fake VMM speaking the network hotplug protocol altovirt is getting:
/// logs every command to `commands.log` beside its QMP socket, answers
/// `{}`, emits `DEVICE_DELETED` after `device_del` (unless a file named
/// `silent` is there) and exits on `quit`.
const NET_HOTPLUG_VMM: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, time
args = sys.argv[1:]
path = args[args.index("-qmp") + 1].split(",")[0][len("unix:"):]
d = os.path.dirname(path)
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)
log = open(os.path.join(d, "commands.log"), "a")
while True:
    conn, _ = srv.accept()
    conn.sendall(b'{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":"fake"},"capabilities":[]}}\r\n')
    f = conn.makefile("rb")
    for line in f:
        msg = json.loads(line)
        log.write(json.dumps({"execute": msg["execute"], "arguments": msg.get("arguments", {})}) + "\n")
        log.flush()
        conn.sendall((json.dumps({"return": {}, "id": msg.get("id")}) + "\r\n").encode())
        if msg["execute"] == "device_del" and not os.path.exists(os.path.join(d, "silent")):
            ev = {"event": "DEVICE_DELETED", "data": {"device": msg["arguments"]["id"], "path": "/x"},
                  "timestamp": {"seconds": 1, "microseconds": 2}}
            conn.sendall((json.dumps(ev) + "\r\n").encode())
        if msg["execute"] == "quit":
            sys.exit(0)
"#;

#[test]
fn net_hotplug_protocol_against_a_fake_vmm() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir("fakenet");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("fake-vmm.py");
    std::fs::write(&script, NET_HOTPLUG_VMM).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hv = HypervisorConfig {
        path: script.display().to_string(),
        kernel: "/nonexistent".into(),
        vsock: "none".into(),
        net_slots: 2,
        // Kata's network limits go with every hot-plugged tap, both ways.
        net_rate_limiter_ops_max_rate: 500,
        net_rate_limiter_bw_max_rate: 8_000_000,
        ..Default::default()
    };
    let mut h = Hypervisor::with_hypervisor(Flavour::StratoVirt, hv, "fakenet", &dir);
    h.set_timeouts(Timeouts {
        event: Duration::from_millis(300),
        ..Timeouts::default()
    });
    h.start().unwrap();
    assert!(h.net_hotplug_supported().unwrap());
    let tap = std::fs::File::open("/dev/null").unwrap();
    let p = h
        .hotplug_add_net(&NetDevice {
            id: String::new(),
            tap: TapSource::Fd(tap.as_fd()),
            mac: Some("02:00:00:00:00:09".into()),
            slot: None,
        })
        .unwrap();
    assert_eq!(
        (p.id.as_str(), p.kind, p.slot),
        ("virtio-net-hp0", DeviceKind::Net, 0)
    );
    let named = NetDevice {
        id: "eth9".into(),
        tap: TapSource::Ifname("tap9"),
        mac: None,
        slot: None,
    };
    assert_eq!(h.hotplug_add_net(&named).unwrap().slot, 1);
    assert!(matches!(
        h.hotplug_add_net(&NetDevice {
            id: "eth10".into(),
            ..named.clone()
        }),
        Err(DriverError::Slot(SlotError::Full {
            kind: "net",
            count: 2
        }))
    ));
    assert_eq!(
        h.hotplug_remove("virtio-net-hp0").unwrap().kind,
        DeviceKind::Net
    );
    // No DEVICE_DELETED: the wait ends at the event timeout (Kata's has
    // none) and the slot stays taken, since the device may still be there.
    std::fs::write(dir.join("silent"), b"").unwrap();
    let t0 = std::time::Instant::now();
    let e = h.hotplug_remove("eth9").unwrap_err();
    assert!(
        e.to_string().contains("event DEVICE_DELETED timed out"),
        "{e}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.net_slots().find("eth9").map(|(i, _)| i), Some(1));
    h.stop().unwrap();
    let log = std::fs::read_to_string(dir.join("commands.log")).unwrap();
    let got: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["execute"] != "qmp_capabilities")
        .collect();
    let mac = shim::cmdline::mac_for("fakenet/eth9");
    let want: Vec<Value> = [
        r#"{"execute":"netdev_add","arguments":{"type":"tap","id":"altovirt-shim-probe","fds":"altovirt-shim-probe-none"}}"#,
        r#"{"execute":"netdev_del","arguments":{"id":"altovirt-shim-probe"}}"#,
        r#"{"execute":"getfd","arguments":{"fdname":"fd-virtio-net-hp0"}}"#,
        r#"{"execute":"netdev_add","arguments":{"type":"tap","id":"netdev-virtio-net-hp0","fds":"fd-virtio-net-hp0","rx_iops":500,"rx_bps":1000000,"tx_iops":500,"tx_bps":1000000}}"#,
        r#"{"execute":"device_add","arguments":{"driver":"virtio-net-mmio","id":"virtio-net-hp0","netdev":"netdev-virtio-net-hp0","mac":"02:00:00:00:00:09","addr":"0"}}"#,
        r#"{"execute":"netdev_add","arguments":{"type":"tap","id":"netdev-eth9","ifname":"tap9","rx_iops":500,"rx_bps":1000000,"tx_iops":500,"tx_bps":1000000}}"#,
        &format!(r#"{{"execute":"device_add","arguments":{{"driver":"virtio-net-mmio","id":"eth9","netdev":"netdev-eth9","mac":"{mac}","addr":"1"}}}}"#),
        r#"{"execute":"device_del","arguments":{"id":"virtio-net-hp0"}}"#,
        r#"{"execute":"netdev_del","arguments":{"id":"netdev-virtio-net-hp0"}}"#,
        r#"{"execute":"device_del","arguments":{"id":"eth9"}}"#,
        r#"{"execute":"quit","arguments":{}}"#,
    ]
    .iter()
    .map(|s| serde_json::from_str(s).unwrap())
    .collect();
    assert_eq!(got, want, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
