//! ACPI under the real binary: the tiny guests find the RSDP (through the
//! zero page, the PVH start info, or by scanning the BIOS area), check
//! every table, count the processors and the LNRO0005 (virtio-mmio)
//! devices, and drive the devices they found in the DSDT. Every window is
//! also on the kernel command line (`virtio_mmio.device=`), which a guest
//! without ACPI reads: with `-machine microvm,acpi=off` there are no tables,
//! and with `acpi=off` on the kernel command line (as Kata's has) the guest
//! ignores them. The power button: the guests find the Generic Event
//! Device in the DSDT, route its interrupt through the IOAPIC and read its
//! event selector when QMP `system_powerdown` presses the button.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// A 1 MiB disk image.
fn disk(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
    path
}

/// The three windows of the tests below: the disk in block slot 0, the
/// empty block slot 1, then the rng (slots come first, as on StratoVirt).
fn lnro_lines() -> Vec<String> {
    (0..3u64)
        .map(|i| {
            format!(
                "lnro base={:#x} size=4096 gsi={} edge=1 low=0",
                0xd000_0000 + i * 0x1000,
                5 + i
            )
        })
        .collect()
}

/// The same windows as `virtio_mmio.device=` tokens.
const TOKENS: &str = "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
                      virtio_mmio.device=4K@0xd0002000:7";

/// What the guest found at those windows: disk, empty slot, rng.
fn virtio_lines() -> Vec<String> {
    vec![
        "base=0xd0000000 irq=5 id=2".to_string(),
        "base=0xd0001000 irq=6 id=2".to_string(),
        "base=0xd0002000 irq=7 id=4".to_string(),
    ]
}
/// The GED as the guests read it from the DSDT.
const GED_LINE: &str = "ged gsi=3 edge=1 low=0 sel=mem:0xfea00000/4 field=dword:32 evt=1 pwrb=1";

fn devices_args(drive: &str) -> Vec<String> {
    [
        "-smp",
        "2",
        "-machine",
        "microvm,blk-slots=2,net-slots=0",
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0,id=vrng0",
        "-drive",
        drive,
        "-device",
        "virtio-blk-device,drive=d0,id=blk0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn guests_find_the_tables_and_use_the_virtio_devices_they_describe() {
    if !kvm_usable("acpi_tables") {
        return;
    }
    let dir = scratch("acpi-on");
    let drive = format!("id=d0,file={},readonly=on", disk(&dir).display());
    for (kernel, via) in [
        (GUEST_ELF64, "bootparams"),
        (GUEST_PVH, "pvh"),
        (GUEST_BZIMAGE, "bootparams"),
    ] {
        let mut args = devices_args(&drive);
        args.extend([
            "-append".into(),
            "guest.acpi=check guest.virtio=rng,blk".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = boot(kernel, &args);
        assert_eq!(out.code(), 0, "{out:?}");
        let acpi = out.lines("acpi: ");
        assert_eq!(
            acpi[0],
            format!("rsdp=0xe0000 via={via} tables=4 hw_reduced=1 cpus=2 ioapics=1 uarts=1 lnro=3"),
            "{}",
            out.stdout
        );
        let mut rest = lnro_lines();
        rest.push(GED_LINE.into());
        assert_eq!(acpi[1..], rest, "{}", out.stdout);
        // The same windows are on the command line too, in the same order;
        // the guest registered the DSDT's first, so every token names a
        // window it already has (as in Linux with both), and they work.
        assert_eq!(
            out.lines("cmdline: "),
            vec![format!("guest.acpi=check guest.virtio=rng,blk {TOKENS}")]
        );
        assert_eq!(
            out.lines("devices: "),
            vec!["dsdt=3 tokens=3 duplicates=3 conflicts=0".to_string()],
            "{}",
            out.stdout
        );
        assert_eq!(out.lines("virtio: "), virtio_lines(), "{}", out.stdout);
        assert!(out.stdout.contains("rng: len=64"), "{}", out.stdout);
        assert!(out.stdout.contains("blk: done"), "{}", out.stdout);
        // The BIOS area holding the tables is reserved in the e820 map.
        assert!(
            out.lines("e820: ")
                .contains(&"0x00000000000e0000 0x0000000000100000 2".to_string()),
            "{}",
            out.stdout
        );
        assert_eq!(out.lines("cpus: "), vec!["mptable=2 started=2".to_string()]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn acpi_off_leaves_no_tables_and_puts_the_devices_on_the_command_line() {
    if !kvm_usable("acpi_off") {
        return;
    }
    let dir = scratch("acpi-off");
    let drive = format!("id=d0,file={},readonly=on", disk(&dir).display());
    for kernel in [GUEST_ELF64, GUEST_PVH, GUEST_BZIMAGE] {
        let mut args = devices_args(&drive);
        args[3] = "microvm,blk-slots=2,net-slots=0,acpi=off".into();
        args.extend([
            "-append".into(),
            "guest.acpi=check guest.virtio=rng,blk".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = boot(kernel, &args);
        assert_eq!(out.code(), 0, "{out:?}");
        assert_eq!(
            out.lines("acpi: "),
            vec!["no rsdp".to_string()],
            "{}",
            out.stdout
        );
        assert_eq!(
            out.lines("cmdline: "),
            vec![format!("guest.acpi=check guest.virtio=rng,blk {TOKENS}")]
        );
        assert!(out.lines("devices: ").is_empty(), "{}", out.stdout);
        assert_eq!(out.lines("virtio: "), virtio_lines(), "{}", out.stdout);
        assert!(out.stdout.contains("rng: len=64"), "{}", out.stdout);
        assert!(out.stdout.contains("blk: done"), "{}", out.stdout);
        assert_eq!(out.lines("cpus: "), vec!["mptable=2 started=2".to_string()]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn acpi_off_on_the_kernel_command_line_keeps_the_tables_and_adds_the_tokens() {
    if !kvm_usable("acpi_off_cmdline") {
        return;
    }
    let out = boot(
        GUEST_ELF64,
        &[
            "-machine",
            "microvm,blk-slots=2,net-slots=0",
            "-append",
            "acpi=off guest.acpi=check",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let acpi = out.lines("acpi: ");
    assert!(acpi[0].ends_with("lnro=2"), "{}", out.stdout);
    // The guest ignored the tables: no DSDT devices registered.
    assert!(out.lines("devices: ").is_empty(), "{}", out.stdout);
    assert_eq!(
        out.lines("cmdline: "),
        vec![
            "acpi=off guest.acpi=check virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
                .to_string()
        ]
    );
}

#[test]
fn the_tables_list_every_vcpu_and_the_serial_port() {
    if !kvm_usable("acpi_cpus") {
        return;
    }
    let out = boot(
        GUEST_PVH,
        &[
            "-smp",
            "4",
            "-machine",
            "microvm,blk-slots=0,net-slots=0",
            "-append",
            "guest.acpi=check",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.lines("acpi: "),
        vec![
            "rsdp=0xe0000 via=pvh tables=4 hw_reduced=1 cpus=4 ioapics=1 uarts=1 lnro=0"
                .to_string(),
            GED_LINE.to_string(),
        ],
        "{}",
        out.stdout
    );
    assert_eq!(out.lines("cpus: "), vec!["mptable=4 started=4".to_string()]);
}

#[test]
fn guest_powers_off_through_the_acpi_sleep_control_register() {
    if !kvm_usable("acpi_poweroff") {
        return;
    }
    let out = boot(GUEST_PVH, &["-D", "-append", "guest.exit=poweroff"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        !out.stdout.contains("no ACPI sleep control register"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("guest powered off"), "{}", out.stderr);
    // Without tables the guest finds no register: it resets instead.
    let out = boot(
        GUEST_PVH,
        &[
            "-D",
            "-machine",
            "microvm,acpi=off",
            "-append",
            "guest.exit=poweroff",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout
            .contains("poweroff: no ACPI sleep control register"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("guest reset"), "{}", out.stderr);
}

/// A guest on `-serial stdio` with a QMP socket; its console arrives line
/// by line on `console`.
struct Vm {
    child: Child,
    sock: std::path::PathBuf,
    dir: std::path::PathBuf,
    console: Receiver<String>,
}

impl Vm {
    fn start(name: &str, extra: &[&str]) -> Vm {
        let dir = scratch(name);
        let sock = dir.join("qmp.sock");
        let mut child = altovirt_with_qmp(&sock)
            .args(["-kernel", GUEST_PVH, "-serial", "stdio"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn altovirt");
        let (tx, console) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert!(
            wait_for_path(&sock, Duration::from_secs(20)),
            "no QMP socket"
        );
        Vm {
            child,
            sock,
            dir,
            console,
        }
    }

    /// The next console line starting with `prefix` (60 s at most).
    fn line(&self, prefix: &str) -> String {
        loop {
            let line = self
                .console
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the guest never printed {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn event(v: &Value) -> (&str, &Value) {
    (v["event"].as_str().unwrap_or(""), &v["data"])
}

#[test]
fn system_powerdown_interrupts_the_guest_through_the_ged_and_it_powers_off() {
    if !kvm_usable("acpi_powerdown") {
        return;
    }
    let mut vm = Vm::start(
        "acpi-powerdown",
        &[
            "-smp",
            "2",
            "-append",
            "guest.acpi=check guest.ged=irq guest.exit=poweroff",
        ],
    );
    assert_eq!(vm.line("acpi: ged "), GED_LINE["ged ".len()..]);
    // Nothing pending at boot; the guest routes GSI 3 to a vector and waits.
    assert_eq!(vm.line("ged: boot "), "sel=0x0");
    assert_eq!(vm.line("ged: "), "armed vector=0x40 gsi=3");
    let mut c = Client::negotiated(&vm.sock);
    c.send(br#"{"execute":"system_powerdown","id":"p"}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": "p"}));
    let ev = c.recv();
    assert_eq!(event(&ev), ("POWERDOWN", &Value::Null), "{ev}");
    // One interrupt; the selector says "power button" once, then nothing.
    assert_eq!(vm.line("ged: irq "), "count=1 sel=0x2 again=0x0");
    // The guest then powers off (S5): SHUTDOWN, exit 0.
    let ev = c.recv();
    assert_eq!(
        event(&ev),
        (
            "SHUTDOWN",
            &json!({"guest": true, "reason": "guest-shutdown"})
        ),
        "{ev}"
    );
    assert_eq!(vm.exit_code(), Some(0));
}

#[test]
fn a_guest_that_ignores_the_button_keeps_running_and_reset_clears_the_event() {
    if !kvm_usable("acpi_powerdown_ignored") {
        return;
    }
    // The guest reads the selector at boot, then halts with interrupts off.
    let mut vm = Vm::start(
        "acpi-powerdown-ignored",
        &["-append", "guest.ged=report guest.exit=halt"],
    );
    assert_eq!(vm.line("ged: boot "), "sel=0x0");
    vm.line("halting");
    let mut c = Client::negotiated(&vm.sock);
    for _ in 0..2 {
        c.send(br#"{"execute":"system_powerdown"}"#);
        assert_eq!(c.recv(), json!({"return": {}}));
        assert_eq!(event(&c.recv()).0, "POWERDOWN");
        // The next line is the answer: no SHUTDOWN came, the VM runs.
        c.send(br#"{"execute":"query-status"}"#);
        assert_eq!(
            c.recv(),
            json!({"return": {"running": true, "singlestep": false, "status": "running"}})
        );
    }
    assert_eq!(vm.child.try_wait().unwrap(), None, "altovirt ended");
    // The event is still pending in the GED (nobody read it); a reset
    // clears it, so the guest booting again reads nothing.
    c.send(br#"{"execute":"system_reset"}"#);
    assert_eq!(c.recv(), json!({"return": {}}));
    assert_eq!(event(&c.recv()).0, "RESET");
    assert_eq!(vm.line("ged: boot "), "sel=0x0");
    vm.line("halting");
    // quit still works.
    c.send(br#"{"execute":"quit"}"#);
    assert_eq!(c.recv(), json!({"return": {}}));
    assert_eq!(
        event(&c.recv()),
        (
            "SHUTDOWN",
            &json!({"guest": false, "reason": "host-qmp-quit"})
        )
    );
    assert_eq!(vm.exit_code(), Some(0));
}

#[test]
fn without_a_button_the_guest_would_see_system_powerdown_is_refused() {
    if !kvm_usable("acpi_powerdown_refused") {
        return;
    }
    for (name, args, reason) in [
        (
            "acpi-off-machine",
            ["-machine", "microvm,acpi=off", "-append", "guest.exit=halt"],
            "system_powerdown: this VM has no ACPI power button (-machine acpi=off); \
             use quit, or have the guest power off",
        ),
        (
            "acpi-off-kernel",
            ["-machine", "microvm", "-append", "acpi=off guest.exit=halt"],
            "system_powerdown: the guest kernel was started with acpi=off and ignores \
             the ACPI power button; use quit, or have the guest power off",
        ),
    ] {
        let mut vm = Vm::start(name, &args);
        vm.line("halting");
        let mut c = Client::negotiated(&vm.sock);
        c.send(br#"{"execute":"system_powerdown"}"#);
        assert_eq!(
            c.recv(),
            json!({"error": {"class": "GenericError", "desc": reason}})
        );
        // No POWERDOWN: the next line is the status, and the VM runs.
        c.send(br#"{"execute":"query-status"}"#);
        assert_eq!(c.recv()["return"]["status"], json!("running"));
        assert_eq!(c.execute("quit"), json!({"return": {}}));
        assert_eq!(vm.exit_code(), Some(0));
    }
}
