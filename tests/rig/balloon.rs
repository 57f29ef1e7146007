//! The memory balloon with kernel (b) and Linux's own virtio_balloon
//! driver (scenarios `b_balloon` and `b_balloon_report` in
//! scripts/rig/l1-init.sh): QMP `balloon` inflates and deflates it, the
//! guest's MemTotal and altovirt's resident memory in L1 follow; with
//! free page reporting, memory the guest frees goes back to L1 by itself.

use crate::harness::*;
use crate::kernel_b_scenario;

/// Guest RAM of the rig's L2 (`-m 256`).
const RAM: u64 = 256 << 20;
/// How much the scenarios balloon (BALLOON_MIB in l1-init.sh), in KiB.
const BALLOON_KIB: u64 = 64 << 10;

fn kib(sc: &Scenario, key: &str, ctx: &str) -> u64 {
    sc.get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} result:\n{ctx}"))
}

/// The replies a scenario's QMP client printed under `key`, spaces removed.
fn replies(sc: &Scenario, key: &str) -> String {
    sc.all(key).join("\n").replace(' ', "")
}

/// Feature bit `bit` as the guest's driver negotiated it (sysfs prints
/// one character per bit, bit 0 first).
fn feature(sc: &Scenario, bit: usize, ctx: &str) -> char {
    let bits = sc
        .guest("BALLOON-FEATURES")
        .unwrap_or_else(|| panic!("no balloon device in L2:\n{ctx}"));
    bits.chars()
        .nth(bit)
        .unwrap_or_else(|| panic!("features {bits:?}:\n{ctx}"))
}

#[test]
fn rig_kernel_b_balloon_inflates_and_deflates_with_linux_driver() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_balloon") else {
        return;
    };
    let ctx = sc.context();
    assert_eq!(
        sc.guest("BALLOON-DRIVER"),
        Some("virtio_balloon"),
        "driver:\n{ctx}"
    );
    // Neither option given: no DEFLATE_ON_OOM (2), no REPORTING (5); the
    // driver takes the ballooned pages out of MemTotal.
    assert_eq!(feature(sc, 2, &ctx), '0', "DEFLATE_ON_OOM:\n{ctx}");
    assert_eq!(feature(sc, 5, &ctx), '0', "REPORTING:\n{ctx}");
    for failure in [
        "not-ready",
        "no-inflate-event",
        "no-memtotal-inflated",
        "no-deflate-event",
        "no-memtotal-deflated",
    ] {
        assert!(sc.get(failure).is_none(), "{failure}:\n{ctx}");
    }
    let small = RAM - (BALLOON_KIB << 10);
    let inflate = replies(sc, "qmp-inflate");
    assert!(
        inflate.contains(&format!("{{\"return\":{{\"actual\":{RAM}}}}}"))
            && inflate.contains("{\"return\":{}}"),
        "query-balloon and balloon before inflating: {inflate}\n{ctx}"
    );
    assert!(
        replies(sc, "qmp-inflated").contains(&format!("\"actual\":{small}")),
        "query-balloon after inflating:\n{ctx}"
    );
    assert!(
        replies(sc, "qmp-deflated").contains(&format!("\"actual\":{RAM}")),
        "query-balloon after deflating:\n{ctx}"
    );
    // Without DEFLATE_ON_OOM Linux takes the ballooned pages out of
    // MemTotal: exactly 64 MiB less once inflated, all of it back after.
    let memtotal: Vec<u64> = sc
        .guest_all("BALLOON-MEMTOTAL-KB")
        .iter()
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let (Some(&m0), Some(&last)) = (memtotal.first(), memtotal.last()) else {
        panic!("no L2-BALLOON-MEMTOTAL-KB lines:\n{ctx}");
    };
    assert!(
        memtotal.contains(&(m0 - BALLOON_KIB)) && last == m0,
        "MemTotal over time {memtotal:?}:\n{ctx}"
    );
    // Linux's inflation reaches the target and altovirt gives the pages
    // back to L1.
    let before = kib(sc, "rss-before-kb", &ctx);
    let after = kib(sc, "rss-inflated-kb", &ctx);
    eprintln!(
        "rig b_balloon: altovirt RSS {before} KiB -> {after} KiB after inflating {BALLOON_KIB} KiB"
    );
    assert!(
        before.saturating_sub(after) >= BALLOON_KIB * 3 / 4,
        "RSS {before} -> {after} KiB after inflating {BALLOON_KIB} KiB:\n{ctx}"
    );
    let events = sc.all("event").join("\n").replace(' ', "");
    for actual in [small, RAM] {
        assert!(
            events.contains(&format!(
                "\"event\":\"BALLOON_CHANGE\",\"data\":{{\"actual\":{actual}}}"
            )),
            "no BALLOON_CHANGE with actual {actual}: {events}\n{ctx}"
        );
    }
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
}

#[test]
fn rig_kernel_b_free_page_reporting_gives_freed_memory_back() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_balloon_report") else {
        return;
    };
    let ctx = sc.context();
    assert!(sc.get("not-filled").is_none(), "L2 never filled:\n{ctx}");
    assert_eq!(feature(sc, 2, &ctx), '1', "DEFLATE_ON_OOM:\n{ctx}");
    assert_eq!(feature(sc, 5, &ctx), '1', "REPORTING:\n{ctx}");
    let filled = kib(sc, "rss-filled-kb", &ctx);
    let reported = kib(sc, "rss-reported-kb", &ctx);
    eprintln!("rig b_balloon_report: altovirt RSS {filled} KiB -> {reported} KiB after the guest freed its fill");
    assert!(
        filled.saturating_sub(reported) >= BALLOON_KIB,
        "RSS {filled} -> {reported} KiB: the freed memory was not reported back:\n{ctx}"
    );
    assert_eq!(exit_status(sc), Some(0), "altovirt exit status:\n{ctx}");
}
