//! Rig tests of the virtio-mmio window layout: every window is on the
//! kernel command line and in the DSDT and each is bound once (kernel (a)
//! through ACPI, kernel (b) through the tokens, with no `acpi=off`);
//! hotplug during `-S` prelaunch; Kata's disk hotplug naming /dev/vdb and
//! /dev/vdc. Part of the `rig` test binary, so it shares its one L1 boot.

use super::harness::*;
use super::{check_disk_file, device_tokens, kernel_b_scenario};

/// The tokens altovirt writes for its first `n` windows.
pub(crate) fn window_tokens(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "virtio_mmio.device=4K@{:#x}:{}",
                0xd000_0000 + i * 0x1000,
                5 + i
            )
        })
        .collect()
}

/// The guest's bound virtio devices in probe order (`L2-VIRTIO`): virtio
/// device id (`0x0002` blk, `0x0001` net, `0x0004` rng, ...) and the
/// platform device it was bound through.
fn bound_virtio(sc: &Scenario) -> Vec<(String, String)> {
    let ctx = sc.context();
    sc.guest("VIRTIO")
        .unwrap_or_else(|| panic!("no L2-VIRTIO line (no virtio device bound?):\n{ctx}"))
        .split_whitespace()
        .map(|d| {
            let (id, parent) = d.split_once('@').unwrap_or((d, ""));
            (id.to_string(), parent.to_string())
        })
        .collect()
}

/// Every window is bound exactly once, in window order, with the device
/// ids `ids`, each through a platform device whose name starts with
/// `via` (`LNRO0005:` from the DSDT, `virtio-mmio.` from a token), and no
/// other virtio-mmio platform device was registered.
fn check_bound_once(sc: &Scenario, ids: &[&str], via: &str) {
    let ctx = sc.context();
    let bound = bound_virtio(sc);
    let got: Vec<&str> = bound.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, ids, "virtio device ids in probe order:\n{ctx}");
    let mut parents: Vec<&str> = bound.iter().map(|(_, p)| p.as_str()).collect();
    assert!(
        parents.iter().all(|p| p.starts_with(via)),
        "bound through {parents:?}, expected {via}*:\n{ctx}"
    );
    parents.dedup();
    assert_eq!(parents.len(), ids.len(), "a window bound twice:\n{ctx}");
    assert_eq!(
        sc.guest("MMIO-PLATFORM"),
        Some(ids.len().to_string().as_str()),
        "virtio-mmio platform devices registered:\n{ctx}"
    );
    let cmdline = sc.guest("CMDLINE").unwrap_or("");
    assert_eq!(
        device_tokens(cmdline),
        window_tokens(ids.len() as u64),
        "one token per window:\n{ctx}"
    );
}

// Item: kernels without ACPI see their devices with no acpi=off, and a
// kernel with ACPI still binds each window once although the tokens are
// there too (Debian's kernel (a) builds virtio_mmio without command-line
// devices, so it ignores them; the DSDT is its only source).

#[test]
fn rig_kernel_a_binds_every_window_once_through_acpi_with_the_tokens_present() {
    let Some(run) = shared_rig() else { return };
    // boot: no devices, the default slots (four block, two network).
    check_bound_once(
        scenario(run, "boot"),
        &["0x0002", "0x0002", "0x0002", "0x0002", "0x0001", "0x0001"],
        "LNRO0005:",
    );
    // a_devices: disk, NIC and rng with the slots off, in command-line order.
    check_bound_once(
        scenario(run, "a_devices"),
        &["0x0002", "0x0001", "0x0004"],
        "LNRO0005:",
    );
    // a_hotplug: two block slots, one network slot.
    check_bound_once(
        scenario(run, "a_hotplug"),
        &["0x0002", "0x0002", "0x0001"],
        "LNRO0005:",
    );
}

#[test]
fn rig_kernel_b_without_acpi_off_binds_disk_net_rng_and_the_slots() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_devices") else {
        return;
    };
    let ctx = sc.context();
    let cmdline = sc.guest("CMDLINE").unwrap_or("");
    assert!(
        !cmdline.split_whitespace().any(|w| w.starts_with("acpi=")),
        "b_devices must not pass acpi=: {cmdline:?}\n{ctx}"
    );
    // The JSON drive is block slot 0 (vda) of four, the JSON NIC network
    // slot 0 of two, then the rng: seven windows, all from the tokens.
    check_bound_once(
        sc,
        &[
            "0x0002", "0x0002", "0x0002", "0x0002", "0x0001", "0x0001", "0x0004",
        ],
        "virtio-mmio.",
    );
    assert_eq!(
        sc.guest("BLOCK").map(str::trim),
        Some("vda vdb vdc vdd"),
        "block devices:\n{ctx}"
    );
    assert_eq!(sc.guest("DATA-SIZE"), Some("16384"), "vda's size:\n{ctx}");
    check_disk_file(sc);
}

/// `-S`: a 2 MiB disk plugged into block slot 1 over QMP before `cont`
/// is vdb when the guest's init runs.
fn check_prelaunch_plug(sc: &Scenario) {
    let ctx = sc.context();
    let replies = sc.all("qmp-prelaunch");
    assert!(
        replies
            .iter()
            .any(|l| l.contains("\"status\":\"prelaunch\"")),
        "query-status before cont: {replies:?}\n{ctx}"
    );
    assert_eq!(
        replies
            .iter()
            .filter(|l| l.contains("\"return\":{}"))
            .count(),
        4,
        "qmp_capabilities, blockdev-add, device_add and cont replies: {replies:?}\n{ctx}"
    );
    let block = sc.guest("BLOCK").unwrap_or("");
    assert!(
        block.split_whitespace().any(|b| b == "vdb:4096"),
        "the disk plugged in prelaunch as vdb (4096 sectors): {block:?}\n{ctx}"
    );
}

#[test]
fn rig_kernel_a_disk_plugged_during_prelaunch_is_there_at_boot() {
    let Some(run) = shared_rig() else { return };
    check_prelaunch_plug(scenario(run, "a_hotplug"));
}

#[test]
fn rig_kernel_b_disk_plugged_during_prelaunch_is_there_at_boot() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_hotplug") else {
        return;
    };
    check_bound_once(sc, &["0x0002", "0x0002", "0x0001"], "virtio-mmio.");
    check_prelaunch_plug(sc);
}

/// Kata's disk hotplug with its rootfs disk on the command line: the
/// disk it plugs at addr "1" is the guest's /dev/vdb, the one at "2"
/// /dev/vdc, which is what Kata tells its agent.
#[test]
fn rig_kata_disk_hotplug_sequence_gives_vdb_then_vdc() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_kata") else {
        return;
    };
    let ctx = sc.context();
    // StratoVirt's layout: block slots (rootfs first), network slots
    // (eth0 first), then rng, console and vsock.
    let ids: Vec<String> = bound_virtio(sc).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            "0x0002", "0x0002", "0x0002", "0x0002", "0x0001", "0x0001", "0x0004", "0x0003",
            "0x0013"
        ],
        "virtio device ids in probe order:\n{ctx}"
    );
    for key in ["qmp-kata-blockdev-add", "qmp-kata-device-add"] {
        let replies = sc.all(key);
        assert_eq!(
            replies
                .iter()
                .filter(|l| l.contains("\"return\":{}"))
                .count(),
            4,
            "{key}: qmp_capabilities and the command, twice: {replies:?}\n{ctx}"
        );
    }
    // 4 MiB at addr "1", 2 MiB at addr "2".
    assert_eq!(sc.guest("KATA-vdb"), Some("8192"), "/dev/vdb:\n{ctx}");
    assert_eq!(sc.guest("KATA-vdc"), Some("4096"), "/dev/vdc:\n{ctx}");
    // After system_reset the guest finds them at boot, in the same order.
    let block = sc.guest_all("BLOCK");
    assert_eq!(
        block.get(1).map(|b| b.trim()),
        Some("vda:16384:ro=1 vdb:8192:ro=0 vdc:4096:ro=0 vdd:0:ro=0"),
        "block devices after system_reset:\n{ctx}"
    );
}
