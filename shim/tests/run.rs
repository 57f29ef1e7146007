//! `altovirt-shim run` as a child process, reached by `status`, `hotplug`,
//! `metrics` and `stop` from other processes, against altovirt and against
//! QEMU microvm; then SIGTERM stops it cleanly (exit 0, VMM reaped, state
//! directory removed).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{guest, parse_prometheus, target_debug, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_altovirt-shim");

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("shim-run-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    /// A configuration with both sections (`run --hypervisor` picks one).
    fn config(&self) -> PathBuf {
        let k = guest();
        let f = self.0.join("configuration.toml");
        std::fs::write(
            &f,
            format!(
                r#"[hypervisor.stratovirt]
path = "{alto}"
kernel = "{k}"
kernel_params = "guest.exit=halt"
default_memory = 64
blk_slots = 2

[hypervisor.qemu]
path = "{QEMU}"
kernel = "{k}"
kernel_params = "guest.exit=halt"
default_memory = 64
cpu_features = "-arch-capabilities"
machine_accelerators = "pic=on,pit=on"
"#,
                alto = target_debug().join("altovirt").display(),
                k = k.display()
            ),
        )
        .unwrap();
        f
    }

    fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }

    fn disk(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `altovirt-shim --run-dir RD ARGS...`, optionally through a prefix
/// (`ip netns exec NS`).
fn shim(prefix: &[&str], rd: &Path, args: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("--run-dir").arg(rd).args(args);
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A running `altovirt-shim run`, with the socket path it printed.
struct Running {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

fn start_run(prefix: &[&str], s: &Scratch, cfg: &Path, args: &[&str]) -> Running {
    let stderr =
        s.0.join(format!("run-{}.stderr", args.join("_").replace('/', "")));
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("--config")
        .arg(cfg)
        .arg("--run-dir")
        .arg(s.run_dir())
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    if line.trim().is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "run printed no socket path: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
    Running {
        child,
        socket: PathBuf::from(line.trim()),
        stderr,
    }
}

/// SIGTERM to `run`: it must exit 0 within 15 s.
fn sigterm(r: &mut Running) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = r.child.kill();
            let _ = r.child.wait();
            panic!("run did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&r.stderr).unwrap_or_default();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("signal 15: stopping sandbox"), "{err}");
}

fn vm_rss(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024.0
}

fn check_metrics(rd: &Path, id: &str, flavour: &str, vmm_pid: u32, used_blk: f64) {
    let before = vm_rss(vmm_pid);
    let t = ok(&shim(&[], rd, &["metrics", "--id", id]));
    let after = vm_rss(vmm_pid);
    let m = parse_prometheus(&t);
    for name in [
        "altovirt_vmm_resident_memory_bytes",
        "altovirt_vmm_cpu_seconds_total",
        "altovirt_vmm_threads",
        "altovirt_vmm_open_fds",
        "altovirt_vm_running",
        "altovirt_vm_status",
        "altovirt_vm_vcpus",
        "altovirt_vm_block_devices",
    ] {
        let samples = m.get(name).unwrap_or_else(|| panic!("no {name} in\n{t}"));
        for (labels, _) in samples {
            assert_eq!(labels["sandbox"], id);
            assert_eq!(labels["hypervisor"], flavour);
        }
    }
    let rss = m["altovirt_vmm_resident_memory_bytes"][0].1;
    assert!(rss > 0.0);
    // Within noise of /proc/PID/status VmRSS read around the scrape.
    let (lo, hi) = (before.min(after), before.max(after));
    let slack = (hi * 0.2).max(8.0 * 1024.0 * 1024.0);
    assert!(
        rss >= lo - slack && rss <= hi + slack,
        "rss {rss} vs VmRSS {before}..{after}"
    );
    assert_eq!(m["altovirt_vm_running"][0].1, 1.0);
    assert_eq!(m["altovirt_vm_status"][0].0["status"], "running");
    assert_eq!(m["altovirt_vm_vcpus"][0].1, 1.0);
    // Threads: the vCPU at least, and the figure the kernel reports.
    let threads = m["altovirt_vmm_threads"][0].1;
    assert!(threads >= 2.0, "{threads}");
    assert_eq!(m["altovirt_vmm_cpu_seconds_total"].len(), 2);
    assert_eq!(m["altovirt_vm_block_devices"][0].1, used_blk);
    let slots = m.get("altovirt_hotplug_slots");
    if flavour == "stratovirt" {
        let used = slots
            .unwrap()
            .iter()
            .find(|(l, _)| l["kind"] == "blk" && l["state"] == "used");
        assert_eq!(used.unwrap().1, used_blk);
        // altovirt's log counters: every level, both outcomes, nothing
        // dropped by a quiet guest.
        let lines = m.get("altovirt_vmm_log_lines_total").unwrap();
        assert_eq!(lines.len(), 10, "{t}");
        let dropped_warn = lines
            .iter()
            .find(|(l, _)| l["level"] == "warn" && l["outcome"] == "dropped");
        assert_eq!(dropped_warn.unwrap().1, 0.0, "{t}");
    } else {
        assert!(slots.is_none(), "QEMU has no hotplug slots");
        assert!(!m.contains_key("altovirt_vmm_log_lines_total"));
    }
}

fn status_json(rd: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(&shim(&[], rd, &["status", "--id", id, "--json"]))).unwrap()
}

fn blk_devices(st: &Value) -> Vec<Option<String>> {
    st["blk_slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().map(String::from))
        .collect()
}

fn cli_suite(flavour: &str) {
    let s = Scratch::new(flavour);
    let cfg = s.config();
    let rd = s.run_dir();
    let id = format!("sb-{flavour}");
    let mut r = start_run(&[], &s, &cfg, &["--hypervisor", flavour, "--id", &id]);
    assert_eq!(r.socket, rd.join(&id).join("qmp.socket"));
    assert!(r.socket.exists());
    let st = status_json(&rd, &id);
    assert_eq!(st["status"], "running");
    assert_eq!(st["hypervisor"], flavour);
    assert_eq!(st["shim_pid"], r.child.id());
    let vmm_pid = st["vmm_pid"].as_u64().unwrap() as u32;
    assert!(Path::new(&format!("/proc/{vmm_pid}")).exists());
    assert_eq!(st["vcpu_threads"].as_object().unwrap().len(), 1);
    // A second run with the same id is refused while this one lives.
    let again = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&rd)
        .args(["run", "--hypervisor", flavour, "--id", &id])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );

    let (a, b, c) = (s.disk("a.img"), s.disk("b.img"), s.disk("c.img"));
    let add = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "hotplug",
            "add",
            "--id",
            &id,
            "--file",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        shim(&[], &rd, &args)
    };
    if flavour == "qemu" {
        for o in [
            add(&a, &[]),
            shim(
                &[],
                &rd,
                &["hotplug", "remove", "--id", &id, "--device", "vd"],
            ),
        ] {
            assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
            assert!(
                text(&o.stderr).contains("not supported by QEMU microvm"),
                "{}",
                text(&o.stderr)
            );
        }
        assert_eq!(
            status_json(&rd, &id)["capabilities"]["block_device_hotplug"],
            false
        );
        check_metrics(&rd, &id, flavour, vmm_pid, 0.0);
    } else {
        assert_eq!(
            ok(&add(&a, &[])).trim(),
            "added block device virtio-blk-hp0 in slot 0"
        );
        assert_eq!(
            ok(&add(&b, &["--device", "vd-b"])).trim(),
            "added block device vd-b in slot 1"
        );
        let full = add(&c, &[]);
        assert_eq!(full.status.code(), Some(1));
        assert!(
            text(&full.stderr).contains("no free blk slot"),
            "{}",
            text(&full.stderr)
        );
        let far = add(&c, &["--slot", "5"]);
        assert!(text(&far.stderr).contains("blk slot 5 is out of range (0..2)"));
        let st = status_json(&rd, &id);
        assert_eq!(
            blk_devices(&st),
            [Some("virtio-blk-hp0".into()), Some("vd-b".into())]
        );
        assert_eq!(st["blk_slots"][1]["source"], b.to_str().unwrap());
        check_metrics(&rd, &id, flavour, vmm_pid, 2.0);
        assert_eq!(
            ok(&shim(
                &[],
                &rd,
                &[
                    "hotplug",
                    "remove",
                    "--id",
                    &id,
                    "--device",
                    "virtio-blk-hp0"
                ]
            ))
            .trim(),
            "removed virtio-blk-hp0 from slot 0"
        );
        let gone = shim(
            &[],
            &rd,
            &[
                "hotplug",
                "remove",
                "--id",
                &id,
                "--device",
                "virtio-blk-hp0",
            ],
        );
        assert!(text(&gone.stderr).contains("no hotplugged device virtio-blk-hp0"));
        assert_eq!(
            blk_devices(&status_json(&rd, &id)),
            [None, Some("vd-b".into())]
        );
        ok(&shim(
            &[],
            &rd,
            &["hotplug", "remove", "--id", &id, "--device", "vd-b"],
        ));
        // Two hotplugs at once from two processes get two slots: the state
        // lock serializes them.
        let spawn = |f: &Path| {
            Command::new(BIN)
                .arg("--run-dir")
                .arg(&rd)
                .args(["hotplug", "add", "--id", &id, "--file", f.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p1, p2) = (spawn(&a), spawn(&c));
        let mut got: Vec<String> = [p1, p2]
            .into_iter()
            .map(|p| ok(&p.wait_with_output().unwrap()).trim().to_string())
            .collect();
        got.sort();
        assert!(
            got[0].ends_with("in slot 0") && got[1].ends_with("in slot 1"),
            "{got:?}"
        );
        check_metrics(&rd, &id, flavour, vmm_pid, 2.0);
    }

    sigterm(&mut r);
    // The VMM was reaped by run (no zombie left) and the state is gone.
    assert!(!Path::new(&format!("/proc/{vmm_pid}")).exists());
    assert!(!rd.join(&id).exists());
    let after = shim(&[], &rd, &["status", "--id", &id]);
    assert!(text(&after.stderr).contains(&format!("no sandbox {id}")));
}

#[test]
fn run_status_hotplug_metrics_sigterm_altovirt() {
    cli_suite("stratovirt");
}

#[test]
fn run_status_hotplug_metrics_sigterm_qemu() {
    if !Path::new(QEMU).is_file() {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    cli_suite("qemu");
}

#[test]
fn guest_sees_a_hotplugged_disk_and_run_ends_with_the_vm() {
    // The guest watches its block slots, prints what it sees, and resets
    // after one event: altovirt exits 0 and run follows it.
    let s = Scratch::new("vmends");
    let cfg = s.config();
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen(
        "guest.exit=halt",
        "guest.virtio=hotplug guest.hotplug.events=1 guest.hotplug.wait=60 guest.exit=reset",
        1,
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let mut r = start_run(
        &[],
        &s,
        &cfg,
        &["--hypervisor", "stratovirt", "--id", "ends"],
    );
    let log_path = s.run_dir().join("ends/console.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("hotplug: ready")
    {
        assert!(Instant::now() < deadline, "guest never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kept open: run removes the directory when the VM ends.
    let mut console = std::fs::File::open(&log_path).unwrap();
    let disk = s.0.join("marked.img");
    let mut data = vec![0u8; 1 << 20];
    data[..5].copy_from_slice(b"shim!");
    std::fs::write(&disk, &data).unwrap();
    let added = ok(&shim(
        &[],
        &s.run_dir(),
        &[
            "hotplug",
            "add",
            "--id",
            "ends",
            "--file",
            disk.to_str().unwrap(),
        ],
    ));
    assert_eq!(added.trim(), "added block device virtio-blk-hp0 in slot 0");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = r.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the VM did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&r.stderr).unwrap_or_default();
    assert!(status.success(), "{err}");
    assert!(err.contains("the VM ended"), "{err}");
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut console, &mut seen).unwrap();
    assert!(seen.contains("hotplug: slots=2"), "{seen}");
    // 1 MiB = 2048 sectors; the guest read the marked first sector.
    let sum = data[..512].iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    assert!(
        seen.contains(&format!(
            "hotplug: slot=0 added capacity=2048 sum=0x{sum:08x}"
        )),
        "{seen}"
    );
    assert!(seen.contains("hotplug: done"), "{seen}");
    assert!(!s.run_dir().join("ends").exists());
}

#[test]
fn stop_command_stops_run() {
    let s = Scratch::new("stopcmd");
    let cfg = s.config();
    let mut r = start_run(
        &[],
        &s,
        &cfg,
        &["--hypervisor", "stratovirt", "--id", "stopme"],
    );
    let vmm = status_json(&s.run_dir(), "stopme")["vmm_pid"]
        .as_u64()
        .unwrap();
    assert_eq!(
        ok(&shim(&[], &s.run_dir(), &["stop", "--id", "stopme"])).trim(),
        "stopped stopme"
    );
    assert!(r.child.wait().unwrap().success());
    assert!(!s.run_dir().join("stopme").exists());
    assert!(!Path::new(&format!("/proc/{vmm}")).exists());
}

#[test]
fn run_reports_start_failures_and_bad_ids() {
    let s = Scratch::new("fails");
    let cfg = s.config();
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen(
        "blk_slots = 2",
        "blk_slots = 2\nshared_fs = \"virtio-fs\"",
        1,
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(s.run_dir())
        .args(["run", "--hypervisor", "stratovirt", "--id", "fs"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    // No virtiofsd listens on the sandbox's vhost-fs.sock: altovirt's
    // one-line reason reaches the user.
    assert!(
        err.contains("device 'virtio-fs0': cannot connect to vhost-user backend socket"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    // The log the message points to is kept; the state is not.
    let log = std::fs::read_to_string(s.run_dir().join("fs/vmm.stderr")).unwrap();
    assert!(log.contains("vhost-fs.sock"), "{log}");
    assert!(!s.run_dir().join("fs/state.json").exists());
    assert!(!s.run_dir().join("fs/qmp.socket").exists());
    let st = shim(&[], &s.run_dir(), &["status", "--id", "fs"]);
    assert!(
        text(&st.stderr).contains("no sandbox fs"),
        "{}",
        text(&st.stderr)
    );
    let o = shim(&[], &s.run_dir(), &["status", "--id", "../etc"]);
    assert!(
        text(&o.stderr).contains("invalid sandbox id"),
        "{}",
        text(&o.stderr)
    );
    // Two sections and no --hypervisor: the configuration is ambiguous.
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(s.run_dir())
        .args(["run", "--id", "x"])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("exactly one"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn taps_at_boot_and_network_hotplug_in_a_netns() {
    let Some(ns) = Netns::create("tap") else {
        let must = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(
            !must,
            "cannot create a network namespace (needs root and iproute2)"
        );
        eprintln!("SKIP: cannot create a network namespace (needs root and iproute2)");
        return;
    };
    let s = Scratch::new("tap");
    let cfg = s.config();
    // Kata's network limits: on the boot tap's -netdev and on netdev_add
    // (altovirt must accept its rx_/tx_ keys for the hotplug to succeed).
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen(
        "blk_slots = 2\n",
        "blk_slots = 2\nnet_rate_limiter_ops_max_rate = 100000\n",
        1,
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let rd = s.run_dir();
    let pre = ns.prefix();
    let mut r = start_run(
        &pre,
        &s,
        &cfg,
        &["--hypervisor", "stratovirt", "--id", "net", "--tap", "tap0"],
    );
    let st = status_json(&rd, "net");
    let vmm = st["vmm_pid"].as_u64().unwrap();
    // The tap reached the VMM as an inherited descriptor, Kata's shape.
    let args: Vec<String> = std::fs::read_to_string(format!("/proc/{vmm}/cmdline"))
        .unwrap()
        .split('\0')
        .map(String::from)
        .collect();
    let netdev = args
        .windows(2)
        .find(|w| w[0] == "-netdev")
        .map(|w| w[1].clone())
        .expect("a -netdev");
    let rest = netdev.strip_prefix("tap,id=net0,fds=").expect(&netdev);
    let (fd, limits) = rest.split_once(',').expect(&netdev);
    assert_eq!(limits, "rx_iops=100000,tx_iops=100000");
    let link = std::fs::read_link(format!("/proc/{vmm}/fd/{fd}")).unwrap();
    assert_eq!(link, Path::new("/dev/net/tun"));
    assert!(args
        .iter()
        .any(|a| a.starts_with("virtio-net-device,netdev=net0,id=net0,mac=02:")));

    // Network hotplug, for real only if this altovirt has it.
    let mut q = shim::qmp_client::QmpClient::connect(
        &r.socket,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    let supported = shim::hotplug::probe_net_hotplug(&mut q).unwrap();
    drop(q);
    let add = shim(
        &pre,
        &rd,
        &["hotplug", "add", "--id", "net", "--tap", "tap1"],
    );
    // The boot tap fills network slot 0 (as on StratoVirt's microVM), so
    // the hot-plugged NIC goes to slot 1.
    assert_eq!(status_json(&rd, "net")["net_slots"][0]["device"], "net0");
    if supported {
        assert_eq!(
            ok(&add).trim(),
            "added network device virtio-net-hp1 in slot 1"
        );
        let st = status_json(&rd, "net");
        assert_eq!(st["net_slots"][1]["device"], "virtio-net-hp1");
        ok(&shim(
            &pre,
            &rd,
            &[
                "hotplug",
                "remove",
                "--id",
                "net",
                "--device",
                "virtio-net-hp1",
            ],
        ));
        let st = status_json(&rd, "net");
        assert!(st["net_slots"][1]["device"].is_null());
        assert_eq!(st["net_slots"][0]["device"], "net0");
    } else {
        eprintln!(
            "SKIP network hotplug: this altovirt answers netdev_add 'not supported yet'; \
             checking the refusal instead"
        );
        assert_eq!(add.status.code(), Some(3), "{}", text(&add.stderr));
        assert!(
            text(&add.stderr).contains("network hotplug is not supported by this VMM"),
            "{}",
            text(&add.stderr)
        );
        assert!(status_json(&rd, "net")["net_slots"][1]["device"].is_null());
    }
    sigterm(&mut r);
    assert!(!rd.join("net").exists());
}

#[test]
fn a_vmm_orphaned_by_a_killed_run_is_stopped_by_stop() {
    let s = Scratch::new("orphan");
    let cfg = s.config();
    let rd = s.run_dir();
    let mut r = start_run(
        &[],
        &s,
        &cfg,
        &["--hypervisor", "stratovirt", "--id", "orphan"],
    );
    let vmm = status_json(&rd, "orphan")["vmm_pid"].as_u64().unwrap() as u32;
    // SIGKILL gives run no chance to stop the VM; the VMM (in its own
    // process group) survives it.
    r.child.kill().unwrap();
    r.child.wait().unwrap();
    assert!(shim::sandbox::pid_alive(vmm));
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&rd)
        .args(["run", "--hypervisor", "stratovirt", "--id", "orphan"])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("runs without its shim"),
        "{}",
        text(&o.stderr)
    );
    // Still reachable, then stopped with quit.
    assert_eq!(status_json(&rd, "orphan")["status"], "running");
    ok(&shim(&[], &rd, &["stop", "--id", "orphan"]));
    assert!(!shim::sandbox::pid_alive(vmm));
    assert!(!rd.join("orphan").exists());
}

#[test]
fn the_prometheus_checker_rejects_malformed_text() {
    let good = "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes{x=\"1\\\"\"} 2\n";
    assert_eq!(parse_prometheus(good)["a_bytes"][0].0["x"], "1\"");
    for bad in [
        "# HELP a A.\n# TYPE a gauge\na 1",             // no final newline
        "# TYPE a gauge\na 1\n",                        // no HELP
        "# HELP a A.\na 1\n",                           // no TYPE
        "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",      // unquoted label
        "# HELP a A.\n# TYPE a gauge\na{1x=\"1\"} 1\n", // bad label name
        "# HELP a A.\n# TYPE a gauge\na one\n",         // bad value
        "# HELP a A.\n# TYPE a counter\na 1\n",         // counter without _total
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",      // duplicate series
        "# HELP a A.\n# TYPE a gauge\na 1\n# TYPE a gauge\n", // second TYPE
    ] {
        let r = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}
