//! Boots the tiny test guests (ELF64, PVH, bzImage) under the real
//! `altovirt` binary and checks what the guest saw and how the VMM ended.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number")
}

/// (start, end, type) from the guest's `e820:` lines.
fn e820(out: &Outcome) -> Vec<(u64, u64, u32)> {
    out.lines("e820: ")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                parse_hex(f[0]),
                parse_hex(f[1]),
                f[2].parse().expect("type"),
            )
        })
        .collect()
}

/// The guest's command line without the `virtio_mmio.device=` tokens the
/// VMM appends (checked separately).
fn user_cmdline(out: &Outcome) -> Vec<String> {
    out.lines("cmdline: ")
        .iter()
        .map(|l| {
            l.split(' ')
                .filter(|t| !t.starts_with("virtio_mmio.device="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn check_boot(kernel: &str, boot_kind: &str) {
    let out = boot(
        kernel,
        &["-m", "64", "-append", "hello  world guest.exit=reset"],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.lines("altovirt-guest: boot="),
        vec![boot_kind.to_string()],
        "{out:?}"
    );
    assert_eq!(
        user_cmdline(&out),
        vec!["hello  world guest.exit=reset".to_string()]
    );
    assert_eq!(
        e820(&out),
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0xa0000, 2),
            (0xe0000, 0x10_0000, 2),
            (0x10_0000, 64 << 20, 1)
        ],
        "{}",
        out.stdout
    );
    let ram = 0x9fc00 + (64 << 20) - 0x10_0000;
    assert_eq!(out.lines("mem: "), vec![ram.to_string()]);
    assert_eq!(out.lines("cpus: "), vec!["mptable=1 started=1".to_string()]);
    assert!(out.stdout.contains("boot-complete"), "{}", out.stdout);
}

#[test]
fn elf64_guest_boots_sees_cmdline_and_e820_and_resets() {
    if kvm_usable("elf64_guest_boots") {
        check_boot(GUEST_ELF64, "elf64");
    }
}

#[test]
fn pvh_guest_boots_sees_cmdline_and_e820_and_resets() {
    if kvm_usable("pvh_guest_boots") {
        check_boot(GUEST_PVH, "pvh");
    }
}

#[test]
fn bzimage_guest_boots_sees_cmdline_and_e820_and_resets() {
    if kvm_usable("bzimage_guest_boots") {
        check_boot(GUEST_BZIMAGE, "bzimage");
    }
}

#[test]
fn initrd_bytes_reach_the_guest_intact() {
    if !kvm_usable("initrd_bytes") {
        return;
    }
    let dir = scratch("initrd");
    let data: Vec<u8> = (0..6000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let path = dir.join("initrd.img");
    std::fs::write(&path, &data).unwrap();
    for kernel in [GUEST_ELF64, GUEST_PVH, GUEST_BZIMAGE] {
        let out = boot(kernel, &["-m", "64", "-initrd", path.to_str().unwrap()]);
        assert_eq!(out.code(), 0, "{out:?}");
        let line = out.lines("initrd: ");
        assert_eq!(line.len(), 1, "{kernel}: {}", out.stdout);
        let fields: Vec<&str> = line[0].split_whitespace().collect();
        let addr = parse_hex(fields[0].trim_start_matches("addr="));
        assert_eq!(addr % 4096, 0, "initrd must be page aligned");
        assert!(addr + data.len() as u64 <= 64 << 20, "initrd beyond RAM");
        assert!(addr >= 0x10_0000, "initrd below the kernel");
        assert_eq!(fields[1], format!("size={}", data.len()));
        assert_eq!(
            fields[2],
            format!("sum=0x{:08x}", fnv1a32(&data)),
            "{kernel}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_vcpus_are_listed_and_the_ap_starts() {
    if !kvm_usable("two_vcpus") {
        return;
    }
    for kernel in [GUEST_ELF64, GUEST_PVH] {
        let out = boot(kernel, &["-smp", "2", "-m", "64"]);
        assert_eq!(out.code(), 0, "{out:?}");
        assert_eq!(
            out.lines("cpus: "),
            vec!["mptable=2 started=2".to_string()],
            "{kernel}: {}",
            out.stdout
        );
    }
    let out = boot(GUEST_ELF64, &["-smp", "cpus=4,maxcpus=4", "-m", "64"]);
    assert_eq!(
        out.lines("cpus: "),
        vec!["mptable=4 started=4".to_string()],
        "{}",
        out.stdout
    );
}

#[test]
fn triple_fault_ends_the_vmm_cleanly_with_a_log_line() {
    if !kvm_usable("triple_fault") {
        return;
    }
    let out = boot(GUEST_ELF64, &["-append", "guest.exit=triplefault", "-D"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("boot-complete"));
    assert!(out.stderr.contains("triple fault"), "{}", out.stderr);
}

#[test]
fn memory_above_the_mmio_gap_is_reported_at_4gib() {
    if !kvm_usable("mmio_gap") {
        return;
    }
    // 3.5 GiB: 3 GiB below the gap, 512 MiB from 4 GiB. Untouched guest RAM
    // costs the host nothing.
    let out = boot(GUEST_ELF64, &["-m", "3584M"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let map = e820(&out);
    assert_eq!(map[3], (0x10_0000, 0xc000_0000, 1), "{}", out.stdout);
    assert_eq!(map[4], (0x1_0000_0000, 0x1_2000_0000, 1), "{}", out.stdout);
}

#[test]
fn boot_complete_time_is_logged() {
    if !kvm_usable("boot_complete") {
        return;
    }
    let dir = scratch("bootlog");
    let log = dir.join("vmm.log");
    let out = boot(GUEST_BZIMAGE, &["-D", log.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("guest boot complete after"))
        .unwrap_or_else(|| panic!("no boot-complete line in:\n{text}"));
    let us: u64 = line
        .split("after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("microseconds");
    assert!(us > 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn demo_guest_runs_without_a_kernel() {
    if !kvm_usable("demo_guest") {
        return;
    }
    let mut cmd = altovirt();
    cmd.args(["-serial", "stdio", "-smp", "2", "-m", "128"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("altovirt-guest"), "{}", out.stdout);
    assert_eq!(out.lines("cpus: "), vec!["mptable=2 started=2".to_string()]);
    let ram = 0x9fc00 + (128 << 20) - 0x10_0000;
    assert_eq!(out.lines("mem: "), vec![ram.to_string()]);
}

#[test]
fn serial_to_file_and_none() {
    if !kvm_usable("serial_file") {
        return;
    }
    let dir = scratch("serial");
    let path = dir.join("console.log");
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-append", "to-file"])
        .arg("-serial")
        .arg(format!("file:{}", path.display()));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "console went to stdout: {}",
        out.stdout
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("cmdline: to-file"), "{text}");

    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "none"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_config_boots_and_flags_override_it() {
    if !kvm_usable("json_config") {
        return;
    }
    let dir = scratch("json");
    let cfg = dir.join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": GUEST_PVH, "boot_args": "from-json"},
        "machine-config": {"vcpu_count": 2, "mem_size": 96u64 << 20},
        "serial": {"stdio": true}
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let mut cmd = altovirt();
    cmd.args(["-config", cfg.to_str().unwrap()]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(user_cmdline(&out), vec!["from-json".to_string()]);
    assert_eq!(out.lines("cpus: "), vec!["mptable=2 started=2".to_string()]);
    assert_eq!(e820(&out)[3].1, 96 << 20);

    let mut cmd = altovirt();
    cmd.args([
        "-config",
        cfg.to_str().unwrap(),
        "-append",
        "from-flag",
        "-smp",
        "1",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(user_cmdline(&out), vec!["from-flag".to_string()]);
    assert_eq!(out.lines("cpus: "), vec!["mptable=1 started=1".to_string()]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts a guest that stays up; returns the child (stdout piped).
fn start_halted(args: &[&str]) -> std::process::Child {
    altovirt()
        .args([
            "-kernel",
            GUEST_ELF64,
            "-append",
            "guest.exit=halt",
            "-serial",
            "stdio",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn altovirt")
}

/// Reads the child's console until `needle` appears (30 s at most).
fn wait_console(child: &mut std::process::Child, needle: &str) -> String {
    use std::io::Read;
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(&seen)
        );
        let n = out.read(&mut buf).expect("read console");
        assert!(
            n > 0,
            "console closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn machine_options_shape_the_host_side() {
    if !kvm_usable("machine_options") {
        return;
    }
    let mut child = start_halted(&[
        "-smp",
        "2",
        "-m",
        "64",
        "-machine",
        "microvm,mem-share=on,dump-guest-core=off",
    ]);
    wait_console(&mut child, "halting");
    let pid = child.id();
    // One named thread per vCPU.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("vcpu"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["vcpu0", "vcpu1"]);
    // mem-share=on: guest RAM is a shared memfd mapping; dump-guest-core=off:
    // it is excluded from core dumps (VmFlags "dd").
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let ram = smaps
        .split("memfd:altovirt-guest-ram")
        .nth(1)
        .expect("guest RAM is a memfd mapping with mem-share=on");
    let flags = ram
        .lines()
        .find(|l| l.starts_with("VmFlags:"))
        .expect("VmFlags line");
    assert!(
        flags.split_whitespace().any(|f| f == "sh"),
        "not shared: {flags}"
    );
    assert!(
        flags.split_whitespace().any(|f| f == "dd"),
        "not excluded from dumps: {flags}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn start_paused_runs_nothing_until_told() {
    if !kvm_usable("start_paused") {
        return;
    }
    let child = start_halted(&["-S"]);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.is_empty(), "a -S guest ran: {}", out.stdout);
}

#[test]
fn hotplug_slots_are_announced_on_the_command_line() {
    if !kvm_usable("slot_tokens") {
        return;
    }
    // With ACPI tables (the default) and without: the tokens are the same
    // (a guest without ACPI finds the slots only there).
    for machine in ["microvm", "microvm,acpi=off"] {
        let out = boot(GUEST_ELF64, &["-append", "user-part", "-machine", machine]);
        assert_eq!(out.code(), 0, "{out:?}");
        // Four block slots, then two network slots.
        let expected = "cmdline: user-part virtio_mmio.device=4K@0xd0000000:5 \
                        virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7 \
                        virtio_mmio.device=4K@0xd0003000:8 virtio_mmio.device=4K@0xd0004000:9 \
                        virtio_mmio.device=4K@0xd0005000:10";
        assert!(out.stdout.lines().any(|l| l == expected), "{}", out.stdout);
        let ids: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("virtio: "))
            .map(|l| l.rsplit(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            ids,
            ["id=2", "id=2", "id=2", "id=2", "id=1", "id=1"],
            "{}",
            out.stdout
        );
    }
    let out = boot(
        GUEST_ELF64,
        &[
            "-append",
            "user-part",
            "-machine",
            "microvm,blk-slots=0,net-slots=0,acpi=off",
        ],
    );
    assert!(
        out.stdout.lines().any(|l| l == "cmdline: user-part"),
        "{}",
        out.stdout
    );
}
