//! ACPI under the real binary: the tiny guests find the RSDP (through the
//! zero page, the PVH start info, or by scanning the BIOS area), check
//! every table, count the processors and the LNRO0005 (virtio-mmio)
//! devices, and drive the devices they found in the DSDT. Every window is
//! also on the kernel command line (`virtio_mmio.device=`), which a guest
//! without ACPI reads: with `-machine microvm,acpi=off` there are no tables,
//! and with `acpi=off` on the kernel command line (as Kata's has) the guest
//! ignores them.

mod common;

use common::*;
use std::path::Path;

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
        assert_eq!(acpi[1..], lnro_lines(), "{}", out.stdout);
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
                .to_string()
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
