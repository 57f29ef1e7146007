//! Snapshot and restore through the real binary: QMP `migrate file:DIR` of
//! a paused tiny guest, then `-incoming file:DIR` with the same arguments.
//! The guest (guest.exit=counter) counts bytes received on COM1 in memory
//! and in a register and prints a checksum of a page it filled at boot: a
//! restored guest must continue the count without booting again.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::console_vm::ConsoleVm;
use common::qmp_client::Client;
use common::{altovirt, kvm_usable, scratch, GUEST_ELF64};
use serde_json::{json, Value};

/// The counter guest's VM: the shared console-driven altovirt.
struct Vm(ConsoleVm);

impl Vm {
    fn start(sock: &Path, args: &[&str]) -> Vm {
        Self::start_typing(sock, args, b"")
    }

    /// Like `start`, with `input` written to the console right after the
    /// process is spawned (before it is ready).
    fn start_typing(sock: &Path, args: &[&str], input: &[u8]) -> Vm {
        Vm(ConsoleVm::start(sock, args, input))
    }

    /// The next console line starting with `prefix` (30 s at most).
    fn expect_line(&self, prefix: &str) -> String {
        self.0.expect_line(prefix)
    }

    /// Sends one byte to the guest and returns the count line it prints.
    fn tick(&mut self) -> String {
        self.0.type_in(b"x");
        self.expect_line("count ")
    }

    /// Waits for the process to end (20 s at most); returns its exit code.
    fn wait_exit(self) -> i32 {
        self.0.wait_exit()
    }
}

const COUNTER_ARGS: [&str; 4] = ["-m", "64", "-append", "guest.exit=counter"];

/// Boots the counter guest, counts to two, pauses it and snapshots it into
/// `snap`; returns the second count line.
fn counted_snapshot(dir: &Path, snap: &Path) -> String {
    counted_snapshot_with(dir, snap, &COUNTER_ARGS)
}

/// [`counted_snapshot`] with other arguments (a 64 MiB counter guest).
fn counted_snapshot_with(dir: &Path, snap: &Path, args: &[&str]) -> String {
    let sock = dir.join("a.sock");
    let mut vm = Vm::start(&sock, args);
    vm.expect_line("counter: ready");
    assert!(vm.tick().starts_with("count 1 reg 1 sum 0x"));
    let second = vm.tick();
    assert!(second.starts_with("count 2 reg 2 sum 0x"), "{second}");
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("query-migrate"), json!({"return": {}}));
    assert_eq!(qmp.execute("stop"), json!({"return": {}}));
    let uri = format!("file:{}", snap.display());
    assert_eq!(
        qmp.cmd("migrate", json!({ "uri": uri })),
        json!({"return": {}})
    );
    let info = qmp.execute("query-migrate");
    assert_eq!(info["return"]["status"], "completed", "{info}");
    assert_eq!(info["return"]["ram"]["total"], 64 << 20);
    let written = info["return"]["ram"]["transferred"].as_u64().unwrap();
    assert!(written > 0 && written < 64 << 20, "{info}");
    // Still paused after the snapshot, and the VM still answers.
    let status = qmp.execute("query-status");
    assert_eq!(status["return"]["status"], "paused");
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    second
}

#[test]
fn restored_guest_continues_where_it_stopped() {
    if !kvm_usable("restored_guest_continues_where_it_stopped") {
        return;
    }
    let dir = scratch("snap-counter");
    let snap = dir.join("snap");
    let second = counted_snapshot(&dir, &snap);
    let sum = second.rsplit(' ').next().unwrap().to_string();

    // The memory file is sparse: only the pages the guest wrote.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(snap.join("memory")).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 16 << 20, "{} blocks", meta.blocks());

    // Twice from the same snapshot: each continues at 3 (the file is a
    // template, never written by a restored guest).
    for round in 0..2 {
        let sock = dir.join(format!("r{round}.sock"));
        let incoming = format!("file:{}", snap.display());
        let mut args = COUNTER_ARGS.to_vec();
        args.extend(["-incoming", &incoming]);
        let mut vm = Vm::start(&sock, &args);
        let mut qmp = Client::negotiated(&sock);
        let status = qmp.execute("query-status");
        assert_eq!(status["return"]["status"], "running", "{status}");
        let third = vm.tick();
        assert_eq!(third, format!("count 3 reg 3 sum {sum}"), "round {round}");
        assert_eq!(vm.tick(), format!("count 4 reg 4 sum {sum}"));
        assert_eq!(qmp.execute("quit"), json!({"return": {}}));
        assert_eq!(vm.wait_exit(), 0);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_restored_guest_can_be_snapshotted_again_into_the_same_directory() {
    if !kvm_usable("a_restored_guest_can_be_snapshotted_again") {
        return;
    }
    let dir = scratch("snap-again");
    let snap = dir.join("snap");
    let second = counted_snapshot(&dir, &snap);
    let sum = second.rsplit(' ').next().unwrap().to_string();
    let incoming = format!("file:{}", snap.display());
    let mut args = COUNTER_ARGS.to_vec();
    args.extend(["-incoming", &incoming]);
    // Restored from snap/, counts to 3, and is saved over snap/ while its
    // own RAM is still mapped from the old snap/memory.
    let sock = dir.join("r1.sock");
    let mut vm = Vm::start(&sock, &args);
    assert_eq!(vm.tick(), format!("count 3 reg 3 sum {sum}"));
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("stop"), json!({"return": {}}));
    assert_eq!(
        qmp.cmd("migrate", json!({ "uri": incoming })),
        json!({"return": {}})
    );
    // It still has its own memory: it goes on counting after cont.
    assert_eq!(qmp.execute("cont"), json!({"return": {}}));
    assert_eq!(vm.tick(), format!("count 4 reg 4 sum {sum}"));
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    // The new snapshot continues at 4, not 3 or 5.
    let sock = dir.join("r2.sock");
    let mut vm = Vm::start(&sock, &args);
    assert_eq!(vm.tick(), format!("count 4 reg 4 sum {sum}"));
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn console_input_typed_during_the_restore_reaches_the_guest() {
    if !kvm_usable("console_input_typed_during_the_restore_reaches_the_guest") {
        return;
    }
    let dir = scratch("snap-typeahead");
    let snap = dir.join("snap");
    counted_snapshot(&dir, &snap);
    let sock = dir.join("r.sock");
    let incoming = format!("file:{}", snap.display());
    let mut args = COUNTER_ARGS.to_vec();
    args.extend(["-incoming", &incoming]);
    // Written before the VMM has even read the snapshot: the UART's
    // restored state must not drop it.
    let vm = Vm::start_typing(&sock, &args, b"x");
    assert!(vm.expect_line("count ").starts_with("count 3 reg 3 "));
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vm_without_a_pit_is_saved_and_restored() {
    if !kvm_usable("a_vm_without_a_pit_is_saved_and_restored") {
        return;
    }
    let dir = scratch("snap-nopit");
    let snap = dir.join("snap");
    let mut args = COUNTER_ARGS.to_vec();
    args.extend(["-machine", "microvm,pit=off"]);
    let second = counted_snapshot_with(&dir, &snap, &args);
    let sum = second.rsplit(' ').next().unwrap().to_string();
    let incoming = format!("file:{}", snap.display());
    // With the PIT on, the snapshot does not fit.
    assert_refused(
        &snap,
        &COUNTER_ARGS,
        "the PIT is off in the snapshot, -machine pit=on here",
    );
    args.extend(["-incoming", &incoming]);
    let sock = dir.join("r.sock");
    let mut vm = Vm::start(&sock, &args);
    assert_eq!(vm.tick(), format!("count 3 reg 3 sum {sum}"));
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn restore_with_dash_s_starts_paused() {
    if !kvm_usable("restore_with_dash_s_starts_paused") {
        return;
    }
    let dir = scratch("snap-paused");
    let snap = dir.join("snap");
    counted_snapshot(&dir, &snap);
    let sock = dir.join("r.sock");
    let incoming = format!("file:{}", snap.display());
    let mut args = COUNTER_ARGS.to_vec();
    args.extend(["-incoming", &incoming, "-S"]);
    let mut vm = Vm::start(&sock, &args);
    let mut qmp = Client::negotiated(&sock);
    assert_eq!(qmp.execute("query-status")["return"]["status"], "prelaunch");
    assert_eq!(qmp.execute("cont"), json!({"return": {}}));
    assert!(vm.tick().starts_with("count 3 reg 3 "));
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn migrate_is_refused_while_running_and_for_other_uris() {
    if !kvm_usable("migrate_is_refused_while_running") {
        return;
    }
    let dir = scratch("snap-refused");
    let sock = dir.join("a.sock");
    let mut vm = Vm::start(&sock, &COUNTER_ARGS);
    vm.expect_line("counter: ready");
    let mut qmp = Client::negotiated(&sock);
    let uri = format!("file:{}", dir.join("snap").display());
    let err = qmp.cmd("migrate", json!({ "uri": uri }));
    assert_eq!(err["error"]["class"], "GenericError", "{err}");
    assert!(
        err["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("must be paused"),
        "{err}"
    );
    assert!(!dir.join("snap").exists(), "nothing is written");
    assert_eq!(qmp.execute("query-migrate"), json!({"return": {}}));
    assert_eq!(qmp.execute("stop"), json!({"return": {}}));
    let err = qmp.cmd("migrate", json!({"uri": "tcp:127.0.0.1:4444"}));
    assert!(
        err["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("not supported"),
        "{err}"
    );
    let err = qmp.cmd(
        "migrate",
        json!({"uri": "file:/proc/altovirt-cannot-be-here"}),
    );
    assert!(
        err["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("migrate: "),
        "{err}"
    );
    assert_eq!(qmp.execute("query-migrate")["return"]["status"], "failed");
    // The VM keeps going.
    assert_eq!(qmp.execute("cont"), json!({"return": {}}));
    assert!(vm.tick().starts_with("count 1 "));
    assert_eq!(qmp.execute("quit"), json!({"return": {}}));
    assert_eq!(vm.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs altovirt with `-incoming` on `snap` and `args`; it must refuse with
/// status 2 and one line containing `needle`, and start nothing.
fn assert_refused(snap: &Path, args: &[&str], needle: &str) {
    let incoming = format!("file:{}", snap.display());
    let mut cmd = altovirt();
    cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args(args)
        .args(["-incoming", &incoming]);
    common::assert_command_usage_error(cmd, needle);
}

#[test]
fn damaged_or_mismatched_snapshots_are_refused() {
    if !kvm_usable("damaged_or_mismatched_snapshots_are_refused") {
        return;
    }
    let dir = scratch("snap-bad");
    let snap = dir.join("snap");
    counted_snapshot(&dir, &snap);
    let state = std::fs::read(snap.join("state")).unwrap();

    assert_refused(
        &snap,
        &["-m", "128", "-append", "guest.exit=counter"],
        "guest memory is 64 MiB in the snapshot, -m gives 128 MiB",
    );
    assert_refused(
        &snap,
        &["-m", "64", "-smp", "2", "-append", "guest.exit=counter"],
        "1 vCPUs in the snapshot, -smp gives 2",
    );
    assert_refused(&dir.join("nowhere"), &COUNTER_ARGS, "nowhere/state");

    let copy = |name: &str, state: &[u8], memory_len: Option<u64>| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("state"), state).unwrap();
        std::fs::copy(snap.join("memory"), d.join("memory")).unwrap();
        if let Some(len) = memory_len {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory"))
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        d
    };
    let truncated = copy("truncated", &state[..state.len() - 10], None);
    assert_refused(&truncated, &COUNTER_ARGS, "truncated");
    let mut flipped = state.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    let corrupted = copy("corrupted", &flipped, None);
    assert_refused(&corrupted, &COUNTER_ARGS, "corrupted");
    let mut newer = state.clone();
    newer[8] = 99;
    let version = copy("version", &newer, None);
    assert_refused(&version, &COUNTER_ARGS, "version 99");
    let short_memory = copy("short-memory", &state, Some(32 << 20));
    assert_refused(&short_memory, &COUNTER_ARGS, "memory: 33554432 bytes");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn incoming_flag_is_checked() {
    common::assert_usage_error(
        &["-kernel", GUEST_ELF64, "-incoming", "tcp:0:4444"],
        "-incoming: unsupported value 'tcp:0:4444'",
    );
    common::assert_usage_error(
        &["-kernel", GUEST_ELF64, "-incoming", "file:"],
        "the directory is missing",
    );
    let _: Option<Value> = None;
}
