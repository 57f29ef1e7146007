//! Real Linux guests under altovirt, in the nested KVM-in-TCG rig of
//! `scripts/rig/` (see docs/rig.md): QEMU (TCG, nested SVM) boots an L1
//! Debian cloud kernel whose init loads KVM and runs this build's altovirt
//! once per scenario against an L2 Debian cloud kernel with a busybox
//! initramfs. One L1 boot serves all scenarios; each test below checks one
//! scenario's results.
//!
//! The rig needs `qemu-system-x86_64` and Debian's package registry (or a
//! filled cache). Without them the tests print why and skip, except under
//! CI=true or ALTOVIRT_REQUIRE_RIG=1, where they fail instead.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "rig/balloon.rs"]
mod balloon;
#[path = "rig/harness.rs"]
mod harness;
#[path = "rig/power_button.rs"]
mod power_button;
#[path = "rig/slots.rs"]
mod slots;
#[path = "rig/snapshot.rs"]
mod snapshot;

use harness::*;
use std::time::Duration;

#[test]
fn rig_l1_has_kvm() {
    let Some(run) = shared_rig() else { return };
    let l1 = run.scenarios.get("l1");
    assert_eq!(
        l1.and_then(|s| s.get("kvm")),
        Some("ok"),
        "L1 has no /dev/kvm after loading kvm-amd: {:?}",
        l1.map(|s| &s.results)
    );
}

#[test]
fn rig_linux_boots_to_init_and_sees_its_configuration() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "boot");
    report_timing("boot", sc);
    let ctx = sc.context();
    let uptime: f64 = sc
        .guest("UPTIME")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("L2 init never ran (no L2-UPTIME line):\n{ctx}"));
    assert!(uptime > 0.0, "L2 uptime at init {uptime}:\n{ctx}");

    // The command line arrives intact, followed by one virtio_mmio.device=
    // token per window (the default slots: four block, two network),
    // although ACPI is on: the DSDT describes the same windows.
    let cmdline = sc
        .guest("CMDLINE")
        .unwrap_or_else(|| panic!("no L2-CMDLINE:\n{ctx}"));
    for word in [
        "console=ttyS0",
        "reboot=k",
        "rig.mode=report",
        "rig.scenario=boot",
    ] {
        assert!(
            cmdline.split_whitespace().any(|w| w == word),
            "guest command line {cmdline:?} lacks {word}:\n{ctx}"
        );
    }
    assert_eq!(
        device_tokens(cmdline),
        slots::window_tokens(6),
        "the device tokens on {cmdline:?}\n{ctx}"
    );

    // -m 256: MemTotal is RAM minus what the kernel keeps for itself.
    let mem_kb: u64 = sc
        .guest("MEMTOTAL-KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no L2-MEMTOTAL-KB:\n{ctx}"));
    assert!(
        (180 * 1024..=256 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB does not fit -m 256:\n{ctx}"
    );

    // This kernel has no MP table parser: it finds its CPUs in the MADT.
    assert_eq!(sc.guest("NPROC"), Some("2"), "nproc with -smp 2:\n{ctx}");
    assert_eq!(sc.guest("ONLINE"), Some("0-1"), "online CPUs:\n{ctx}");

    // The virtio modules from the same package load.
    assert!(
        !sc.console.iter().any(|l| l.starts_with("L2-INSMOD-FAILED")),
        "a virtio module failed to load:\n{ctx}"
    );

    // init's last word, then reboot -f ends altovirt.
    assert!(
        sc.console.iter().any(|l| l == "L2-DONE"),
        "init did not finish:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
}

#[test]
fn rig_boot_complete_port_is_seen_by_altovirt() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "boot");
    let ctx = sc.context();
    assert_eq!(
        sc.guest("BOOTCOMPLETE"),
        Some("sent"),
        "the guest could not write the boot-complete port:\n{ctx}"
    );
    let us: u64 = sc
        .get("boot-complete-us")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("altovirt did not log the boot-complete write:\n{ctx}"));
    let wall_ms: u64 = sc.get("wall-ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        us > 0 && us / 1000 <= wall_ms + 10,
        "boot-complete after {us} us, but altovirt ran {wall_ms} ms:\n{ctx}"
    );
}

#[test]
fn rig_guest_reboot_ends_altovirt_with_shutdown_event() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "reboot");
    report_timing("reboot (quiet)", sc);
    let ctx = sc.context();
    assert!(
        sc.console.iter().any(|l| l == "L2-REBOOTING"),
        "the guest never reached reboot -f:\n{ctx}"
    );
    assert!(
        sc.get("timeout").is_none(),
        "altovirt kept running after the guest rebooted:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    let events = shutdown_events(sc);
    assert_eq!(
        events.len(),
        1,
        "SHUTDOWN events seen over QMP: {events:?}\n{ctx}"
    );
    assert!(
        events[0].contains("\"guest\":true") && events[0].contains("\"reason\":\"guest-reset\""),
        "SHUTDOWN event {}:\n{ctx}",
        events[0]
    );
}

#[test]
fn rig_qmp_stop_cont_keeps_the_guest_alive() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "stopcont");
    let ctx = sc.context();
    assert!(
        sc.get("no-heartbeat").is_none(),
        "the guest never printed a heartbeat:\n{ctx}"
    );
    let stopped: i64 = sc
        .get("ticks-while-stopped")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ticks-while-stopped result:\n{ctx}"));
    // One tick may be in flight when stop returns.
    assert!(
        stopped <= 1,
        "{stopped} heartbeats in 2 s while stopped:\n{ctx}"
    );
    let after: i64 = sc
        .get("ticks-after-cont")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ticks-after-cont result:\n{ctx}"));
    // The guest ticks every 0.2 s; after cont it must go on ticking.
    assert!(
        after >= 3,
        "only {after} heartbeats in 2 s after cont:\n{ctx}"
    );
    let status = sc.all("qmp-cont");
    assert!(
        status.iter().any(|l| l.contains("\"status\":\"paused\"")),
        "query-status while stopped did not say paused: {status:?}\n{ctx}"
    );
    let events = sc.all("event");
    for ev in ["\"STOP\"", "\"RESUME\""] {
        assert!(
            events.iter().any(|e| e.contains(ev)),
            "no {ev} event over QMP: {events:?}\n{ctx}"
        );
    }
    // Then quit ends altovirt cleanly.
    assert_eq!(
        exit_status(sc),
        Some(0),
        "altovirt exit status after quit:\n{ctx}"
    );
    let shutdown = shutdown_events(sc);
    assert!(
        shutdown.len() == 1 && shutdown[0].contains("\"reason\":\"host-qmp-quit\""),
        "SHUTDOWN events after quit: {shutdown:?}\n{ctx}"
    );
}

/// Scenario `name` of kernel (b), or `None` (with a printed reason) when
/// that kernel is not cached and the scenario did not run.
fn kernel_b_scenario<'a>(run: &'a RigRun, name: &str) -> Option<&'a Scenario> {
    let ran = run
        .scenarios
        .get(name)
        .is_some_and(|sc| sc.get("skipped").is_none());
    if !ran {
        // CI (CI=true or ALTOVIRT_REQUIRE_RIG=1) builds kernel (b) before
        // the tests (scripts/rig/build-kernel-b.sh caches it), so a missing
        // kernel there is a failure, not a skip.
        assert!(
            !rig_required(),
            "scenario {name}: kernel (b) is not built; run scripts/rig/build-kernel-b.sh \
             (about 3 min, cached) before the tests"
        );
        eprintln!(
            "SKIP {name}: kernel (b) is not built; run scripts/rig/build-kernel-b.sh (about 3 min) to enable it"
        );
        return None;
    }
    Some(scenario(run, name))
}

#[test]
fn rig_kernel_b_boots_with_two_cpus_and_signals_boot_complete() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_devices") else {
        return;
    };
    report_timing("kernel (b)", sc);
    let ctx = sc.context();
    // Kernel (b) reads altovirt's MP table, so -smp 2 means two CPUs.
    assert_eq!(sc.guest("NPROC"), Some("2"), "nproc with -smp 2:\n{ctx}");
    assert_eq!(sc.guest("ONLINE"), Some("0-1"), "online CPUs:\n{ctx}");
    assert_eq!(sc.guest("BOOTCOMPLETE"), Some("sent"), "outb 0x3f0:\n{ctx}");
    assert!(
        sc.get("boot-complete-us").is_some(),
        "altovirt did not log the boot-complete write:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    let events = shutdown_events(sc);
    assert!(
        events.len() == 1 && events[0].contains("\"reason\":\"guest-reset\""),
        "SHUTDOWN events: {events:?}\n{ctx}"
    );
}

/// virtio-rng is hw_random's current source and `/dev/hwrng` gives bytes.
fn check_hwrng(sc: &Scenario) {
    let ctx = sc.context();
    let current = sc.guest("RNG-CURRENT").unwrap_or("");
    assert!(
        current.starts_with("virtio_rng"),
        "hw_random's current source is {current:?}, not virtio_rng:\n{ctx}"
    );
    let bytes = sc.guest("RNG-BYTES").unwrap_or("");
    assert!(
        bytes.len() == 32 && bytes.chars().all(|c| c.is_ascii_hexdigit()),
        "16 bytes from /dev/hwrng, as hex: {bytes:?}\n{ctx}"
    );
    assert_ne!(bytes, "0".repeat(32), "/dev/hwrng gave zeros:\n{ctx}");
}

/// L1 addressed the tap altovirt opened and L2's ping over virtio-net got
/// answers.
fn check_ping(sc: &Scenario, what: &str) {
    let ctx = sc.context();
    assert_eq!(
        sc.get("tap"),
        Some("up"),
        "L1 could not configure the tap altovirt opened:\n{ctx}"
    );
    assert_eq!(
        sc.guest("PING"),
        Some("ok"),
        "L2 could not ping L1 over {what}:\n{ctx}"
    );
}

/// The file L2 wrote on its ext4 disk was read back from the image with
/// debugfs in L1 after altovirt exited.
fn check_disk_file(sc: &Scenario) {
    let ctx = sc.context();
    let wrote = sc
        .guest("WROTE")
        .unwrap_or_else(|| panic!("L2 did not write /hello.txt:\n{ctx}"));
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    assert_eq!(
        sc.get("disk-file").map(str::trim),
        Some(wrote),
        "/hello.txt in the image after exit:\n{ctx}"
    );
}

#[test]
fn rig_kernel_b_virtio_rng_feeds_hwrng() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_devices") else {
        return;
    };
    check_hwrng(sc);
}

#[test]
fn rig_kernel_b_virtio_net_ping_crosses_the_tap() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_devices") else {
        return;
    };
    check_ping(sc, "virtio-net (10.0.2.2 -> 10.0.2.1)");
}

#[test]
fn rig_kernel_b_root_disk_write_is_read_back_after_exit() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_rootdisk") else {
        return;
    };
    let root = sc.guest("ROOT").unwrap_or("");
    assert!(
        root.ends_with(" ext4"),
        "L2's root file system is {root:?}, not the ext4 virtio-blk disk:\n{}",
        sc.context()
    );
    check_disk_file(sc);
}

// Kernel (a) finds its virtio devices through ACPI (the DSDT's LNRO0005
// devices) once its init loads virtio_mmio from the package.

#[test]
fn rig_kernel_a_virtio_rng_feeds_hwrng_through_acpi() {
    let Some(run) = shared_rig() else { return };
    check_hwrng(scenario(run, "a_devices"));
}

#[test]
fn rig_kernel_a_virtio_net_ping_crosses_the_tap_through_acpi() {
    let Some(run) = shared_rig() else { return };
    check_ping(
        scenario(run, "a_devices"),
        "virtio-net found through ACPI (10.0.2.2 -> 10.0.2.1)",
    );
}

#[test]
fn rig_kernel_a_data_disk_write_is_read_back_after_exit() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "a_devices");
    // -drive of an 8 MiB ext4 image: 16384 sectors.
    assert_eq!(
        sc.guest("DATA-SIZE"),
        Some("16384"),
        "size of /dev/vda:\n{}",
        sc.context()
    );
    check_disk_file(sc);
}

/// Block hotplug: `blockdev-add` + `device_add` fill empty slot 0 (vda,
/// size 0 at boot); the guest sees the 4 MiB image and its marker;
/// `device_del` empties the slot again (size 0) with `DEVICE_DELETED`.
fn check_block_hotplug(sc: &Scenario) {
    let ctx = sc.context();
    let block = sc.guest("BLOCK").unwrap_or("");
    assert!(
        block.split_whitespace().any(|b| b == "vda:0"),
        "the empty slot vda does not show size 0 at boot: {block:?}\n{ctx}"
    );
    let add = sc.all("qmp-blk-add");
    assert_eq!(
        add.iter().filter(|l| l.contains("\"return\":{}")).count(),
        3,
        "qmp_capabilities, blockdev-add, device_add replies: {add:?}\n{ctx}"
    );
    assert_eq!(
        sc.guest("HOTPLUG-BLK-SIZE"),
        Some("8192"),
        "vda's size (512-byte sectors) after device_add of a 4 MiB image:\n{ctx}"
    );
    assert_eq!(
        sc.guest("HOTPLUG-BLK-MARKER"),
        Some("altovirt-hotplug-marker"),
        "the first bytes of the hot-added disk:\n{ctx}"
    );
    assert_eq!(
        sc.guest("HOTPLUG-BLK-GONE"),
        Some("0"),
        "vda's size after device_del:\n{ctx}"
    );
    let deleted: Vec<&str> = sc
        .all("event")
        .into_iter()
        .filter(|e| e.contains("\"DEVICE_DELETED\""))
        .collect();
    assert!(
        deleted.len() == 1 && deleted[0].contains("\"device\":\"hpdisk0\""),
        "DEVICE_DELETED events: {deleted:?}\n{ctx}"
    );
}

/// Network hotplug: `netdev_add` (a tap by name) + `device_add` into the
/// empty net slot 0 (eth0, carrier 0 at boot) bring the carrier up and a
/// ping crosses to L1.
fn check_net_hotplug(sc: &Scenario) {
    let ctx = sc.context();
    assert_eq!(
        sc.guest("CARRIER-EMPTY"),
        Some("0"),
        "carrier of the empty net slot:\n{ctx}"
    );
    for key in ["qmp-netdev-add", "qmp-net-add"] {
        let replies = sc.all(key);
        assert_eq!(
            replies
                .iter()
                .filter(|l| l.contains("\"return\":{}"))
                .count(),
            2,
            "{key} replies: {replies:?}\n{ctx}"
        );
    }
    assert_eq!(
        sc.guest("HOTPLUG-CARRIER"),
        Some("1"),
        "eth0's carrier after device_add:\n{ctx}"
    );
    check_ping(sc, "the hot-added virtio-net (10.0.3.2 -> 10.0.3.1)");
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
}

#[test]
fn rig_kernel_a_hot_added_disk_appears_and_device_del_removes_it() {
    let Some(run) = shared_rig() else { return };
    check_block_hotplug(scenario(run, "a_hotplug"));
}

#[test]
fn rig_kernel_a_hot_added_nic_links_up_and_pings() {
    let Some(run) = shared_rig() else { return };
    check_net_hotplug(scenario(run, "a_hotplug"));
}

#[test]
fn rig_kernel_b_hot_added_disk_appears_and_device_del_removes_it() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_hotplug") else {
        return;
    };
    check_block_hotplug(sc);
}

#[test]
fn rig_kernel_b_hot_added_nic_links_up_and_pings() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_hotplug") else {
        return;
    };
    check_net_hotplug(sc);
}

/// Kata's StratoVirt command line (tests/net.rs has it without the vhost
/// devices), used verbatim in L1 with kernel (b), except virtio-fs: the
/// vhost-vsock descriptor inherited as 3, the tap as 4.
const KATA_APPEND: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 \
    i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests \
    net.ifnames=0 pci=lastbus=0 root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro \
    rootfstype=ext4 console=hvc0 console=hvc1 quiet systemd.show_status=false panic=1 \
    nr_cpus=1 selinux=0 systemd.unit=kata-containers.target \
    systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket \
    scsi_mod.scan=none ramdom.trust_cpu=on pci=off iommu=off acpi=off 8250.nr_uarts=0 \
    agent.log_vport=1025 guest.exit=reset";

#[test]
fn rig_kata_stratovirt_command_line_boots_kernel_b_verbatim() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_kata") else {
        return;
    };
    report_timing("kata (kernel (b))", sc);
    let ctx = sc.context();
    assert_eq!(
        sc.get("vhost-vsock"),
        Some("present"),
        "L1 has no /dev/vhost-vsock after loading vhost_vsock:\n{ctx}"
    );
    // The guest's console is the virtconsole on Kata's socket: its init
    // lines arrive there, with Kata's kernel command line intact.
    let cmdline = sc
        .guest("CMDLINE")
        .unwrap_or_else(|| panic!("no L2-CMDLINE on the virtio console:\n{ctx}"));
    let expected: Vec<&str> = KATA_APPEND.split_whitespace().collect();
    let got: Vec<&str> = cmdline.split_whitespace().take(expected.len()).collect();
    assert_eq!(got, expected, "Kata's kernel command line:\n{ctx}");
    assert_eq!(sc.guest("NPROC"), Some("1"), "-smp 1:\n{ctx}");
    // `-D` without a file logs to stderr, where the boot-complete line is.
    assert!(
        sc.get("boot-complete-us").is_some(),
        "altovirt did not log the boot-complete write:\n{ctx}"
    );
    let mem_kb: u64 = sc
        .guest("MEMTOTAL-KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (1900 * 1024..=2048 * 1024).contains(&mem_kb),
        "MemTotal {mem_kb} kB with -m 2048:\n{ctx}"
    );
    // The read-only rootfs drive (an 8 MiB image) is vda, read-only.
    let block = sc.guest("BLOCK").unwrap_or("");
    assert!(
        block.split_whitespace().any(|b| b == "vda:16384:ro=1"),
        "the read-only rootfs drive as vda: {block:?}\n{ctx}"
    );
    // The tap passed as descriptor 4 carries a ping.
    check_ping(sc, "Kata's virtio-net on the inherited tap fd 4");
    // quit ends it cleanly.
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    let shutdown = shutdown_events(sc);
    assert!(
        shutdown.len() == 1 && shutdown[0].contains("\"reason\":\"host-qmp-quit\""),
        "SHUTDOWN events: {shutdown:?}\n{ctx}"
    );
}

/// One vsock round trip of boot `n` (1-based): L1 connected to the guest's
/// listener (CID 3, port 5000) and the guest to L1's (CID 2, port 5001),
/// each side sending one line and reading the other's; then 4 MiB went
/// each way.
fn check_vsock_round(sc: &Scenario, n: usize) {
    let ctx = sc.context();
    let listen = sc.guest_all("VSOCK-LISTEN");
    let sent = listen
        .get(n - 1)
        .and_then(|l| l.strip_prefix("5000 "))
        .unwrap_or_else(|| panic!("boot {n}: the guest did not listen on vsock:\n{ctx}"));
    assert_eq!(
        sc.get(&format!("vsock-l1-got-{n}")),
        Some(sent),
        "boot {n}: what L1 read from the guest's vsock listener:\n{ctx}"
    );
    assert_eq!(
        sc.guest_all("VSOCK-GOT").get(n - 1).copied(),
        Some("from-L1"),
        "boot {n}: what the guest's listener read from L1:\n{ctx}"
    );
    assert_eq!(
        sc.guest_all("VSOCK-REPLY").get(n - 1).copied(),
        Some(format!("from-L1-listener {n}").as_str()),
        "boot {n}: what the guest read after connecting to CID 2:\n{ctx}"
    );
    // 4 MiB each way (many wraps of the 256-entry rings): the MD5 sums
    // on both ends agree.
    let big = sc.guest_all("VSOCK-BIG-MD5");
    let l2_sent = big.get(n - 1).copied().unwrap_or("missing");
    assert_eq!(
        sc.get(&format!("vsock-big-md5-{n}")),
        Some(l2_sent),
        "boot {n}: MD5 of the 4 MiB L1 read from the guest over vsock:\n{ctx}"
    );
    let l1_sent = sc.get(&format!("vsock-sent-md5-{n}")).unwrap_or("missing");
    assert!(
        l1_sent.ends_with(" 4194304"),
        "boot {n}: L1's file: {l1_sent}\n{ctx}"
    );
    assert_eq!(
        sc.guest_all("VSOCK-IN-MD5").get(n - 1).copied(),
        Some(l1_sent),
        "boot {n}: MD5 and size of what the guest read from L1 over vsock:\n{ctx}"
    );
    if let Some(ms) = sc.get(&format!("vsock-bulk-ms-{n}")) {
        eprintln!("rig vsock boot {n}: 4 MiB guest->L1, L1->guest in ms: {ms}");
    }
    let word = sent.trim_start_matches("from-L2 ");
    assert_eq!(
        sc.all("vsock-l1-listener-got").get(n - 1).copied(),
        Some(format!("to-L1 {word}").as_str()),
        "boot {n}: what L1's listener read from the guest:\n{ctx}"
    );
}

#[test]
fn rig_vhost_vsock_carries_lines_both_ways() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_kata") else {
        return;
    };
    check_vsock_round(sc, 1);
}

#[test]
fn rig_vhost_vsock_works_again_after_system_reset() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_kata") else {
        return;
    };
    let ctx = sc.context();
    assert!(
        sc.all("event")
            .iter()
            .any(|e| e.contains("\"RESET\"") && e.contains("host-qmp-system-reset")),
        "no RESET event after system_reset:\n{ctx}"
    );
    assert_eq!(
        sc.guest_all("UPTIME").len(),
        2,
        "the guest did not boot a second time after system_reset:\n{ctx}"
    );
    check_vsock_round(sc, 2);
}

/// `poweroff -f` with ACPI: the kernel writes S5 to the FADT's sleep
/// control register and altovirt ends.
#[test]
fn rig_guest_poweroff_ends_altovirt_with_shutdown_event() {
    let Some(run) = shared_rig() else { return };
    let sc = scenario(run, "poweroff");
    report_timing("poweroff (quiet)", sc);
    let ctx = sc.context();
    assert!(
        sc.console.iter().any(|l| l == "L2-POWEROFF"),
        "the guest never reached poweroff -f:\n{ctx}"
    );
    assert!(
        sc.get("timeout").is_none(),
        "altovirt kept running after poweroff -f:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
    let events = shutdown_events(sc);
    assert!(
        events.len() == 1
            && events[0].contains("\"guest\":true")
            && events[0].contains("\"reason\":\"guest-shutdown\""),
        "SHUTDOWN events: {events:?}\n{ctx}"
    );
}

/// The `virtio_mmio.device=` words of a command line, in order.
fn device_tokens(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_whitespace()
        .filter(|w| w.starts_with("virtio_mmio.device="))
        .collect()
}

#[test]
fn parse_splits_results_console_and_log_by_scenario() {
    let raw = "noise\r\nRIG l1 kvm ok\nRIG boot begin\nL2 boot L2-UPTIME 1.50\r\n\
               LOG boot [ 0.1] INFO x\nRIG boot event {\"a\": 1}\nRIG boot event {\"b\": 2}\n\
               RIG boot end\nRIG-DONE\n";
    let run = parse(raw, Duration::from_secs(1));
    assert!(run.done);
    assert_eq!(run.scenarios["l1"].get("kvm"), Some("ok"));
    let boot = &run.scenarios["boot"];
    assert_eq!(boot.guest("UPTIME"), Some("1.50"));
    assert_eq!(boot.all("event"), vec!["{\"a\": 1}", "{\"b\": 2}"]);
    assert_eq!(boot.log, vec!["[ 0.1] INFO x"]);
    assert!(boot.get("end").is_some());
    assert!(!parse("RIG boot end\n", Duration::ZERO).done);
}
