//! Snapshot and restore of a Linux guest with kernel (b) (scenario
//! `b_snapshot` in scripts/rig/l1-init.sh): L2 writes a file on its
//! virtio-blk disk, pings L1 over virtio-net and listens on hybrid vsock;
//! L1 pauses it, saves it with QMP `migrate file:DIR`, quits, and restores
//! it in a new altovirt with `-incoming file:DIR`. After the restore the
//! guest — not rebooted — answers a new vsock connection, reads the file
//! back from the disk, writes another one and pings L1 again.

use crate::harness::*;
use crate::kernel_b_scenario;

#[test]
fn rig_kernel_b_guest_keeps_working_after_snapshot_and_restore() {
    let Some(run) = shared_rig() else { return };
    let Some(sc) = kernel_b_scenario(run, "b_snapshot") else {
        return;
    };
    let ctx = sc.context();
    assert!(sc.get("not-ready").is_none(), "L2 never got ready:\n{ctx}");
    let wrote = sc
        .guest("SNAP-WROTE")
        .unwrap_or_else(|| panic!("L2 did not write before the snapshot:\n{ctx}"));
    assert!(wrote.starts_with("before-snapshot "), "{wrote}\n{ctx}");
    assert_eq!(sc.guest("PING"), Some("ok"), "ping before:\n{ctx}");

    // The snapshot: migrate answered, completed, both files written.
    let saved = sc.all("qmp-save").join("\n").replace(' ', "");
    assert!(
        saved.contains("\"status\":\"completed\""),
        "query-migrate:\n{ctx}"
    );
    assert_eq!(sc.get("save-exit"), Some("0"), "first altovirt:\n{ctx}");
    assert_eq!(
        sc.get("snap-files").map(str::trim),
        Some("memory state"),
        "{ctx}"
    );

    // Before the snapshot, the same request over hybrid vsock worked
    // (Linux's driver and altovirt's vsock agree at all).
    let pre = sc.all("vsock-pre");
    assert!(
        pre.first().is_some_and(|l| l.starts_with("OK ")),
        "vsock before: {pre:?}\n{ctx}"
    );
    assert!(
        pre.contains(&"L2-SNAP-PING ok"),
        "vsock before: {pre:?}\n{ctx}"
    );

    // After the restore: the same guest (one boot, one READY line) answers
    // a new vsock connection with the word L1 sent, so the connection and
    // every line below happened after the restore.
    assert_eq!(
        sc.guest_all("SNAP-READY").len(),
        1,
        "L2 booted again:\n{ctx}"
    );
    assert_eq!(
        sc.guest_all("BOOTCOMPLETE").len(),
        1,
        "L2 booted again:\n{ctx}"
    );
    assert!(
        sc.get("no-vsock-answer").is_none(),
        "no vsock answer:\n{ctx}"
    );
    let word = sc.get("word").unwrap_or_else(|| panic!("no word:\n{ctx}"));
    let after = sc.all("vsock-reply");
    assert!(
        after.first().is_some_and(|l| l.starts_with("OK ")),
        "CONNECT: {after:?}\n{ctx}"
    );
    let line = |key: &str| {
        after
            .iter()
            .find_map(|l| l.strip_prefix(&format!("L2-SNAP-{key} ")[..]))
            .unwrap_or_else(|| panic!("no {key} in the vsock reply {after:?}\n{ctx}"))
    };
    assert_eq!(line("ASKED"), word, "{ctx}");
    // virtio-blk: the file written before the snapshot, read from the disk
    // after the restore (caches dropped), and the one written after it is
    // in the image once altovirt has quit.
    assert_eq!(line("READ"), wrote, "file after restore:\n{ctx}");
    assert_eq!(line("WROTE-AFTER"), "ok", "{ctx}");
    assert_eq!(
        sc.get("after-file").map(str::trim),
        Some(format!("after-restore {word}").as_str()),
        "/after.txt in the image:\n{ctx}"
    );
    // virtio-net: L1 answers again.
    assert_eq!(line("PING"), "ok", "ping after restore:\n{ctx}");
    let restored = sc.all("qmp-restored").join("\n").replace(' ', "");
    assert!(
        restored.contains("\"status\":\"running\""),
        "query-status:\n{ctx}"
    );
    assert_eq!(
        sc.get("restore-exit"),
        Some("0"),
        "restored altovirt:\n{ctx}"
    );
    eprintln!(
        "b_snapshot: cold boot-complete {} us, ready {} ms; restore {} us (exec to restored), \
         answer {} ms; snapshot memory {} KiB on disk, restored RSS {} KiB",
        sc.get("cold-boot-complete-us").unwrap_or("?"),
        sc.get("cold-ready-ms").unwrap_or("?"),
        sc.get("restore-us").unwrap_or("?"),
        sc.get("restore-answer-ms").unwrap_or("?"),
        sc.get("snap-memory-kb").unwrap_or("?"),
        sc.get("restored-rss-kb").unwrap_or("?"),
    );
}
