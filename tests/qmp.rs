//! QMP against the real binary with a booted tiny guest: raw-socket
//! framing cases, a line-based client that behaves like Kata's govmm,
//! reconnect storms, misbehaving clients, and QEMU's own Python library.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

struct Vm {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Vm {
    fn start(name: &str, extra: &[&str]) -> Vm {
        Vm::start_with_append(name, "guest.exit=halt", extra)
    }

    fn start_with_append(name: &str, append: &str, extra: &[&str]) -> Vm {
        let dir = scratch(name);
        let sock = dir.join("qmp.sock");
        let child = altovirt_with_qmp(&sock)
            .args(["-kernel", GUEST_ELF64, "-append", append, "-serial", "none"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn altovirt");
        assert!(
            wait_for_path(&sock, Duration::from_secs(20)),
            "no QMP socket"
        );
        Vm { child, sock, dir }
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn error_class(v: &Value) -> &str {
    v["error"]["class"].as_str().unwrap_or("")
}

#[test]
fn framing_ids_and_negotiation_on_the_raw_socket() {
    if !kvm_usable("qmp_framing") {
        return;
    }
    let vm = Vm::start("qmp-framing", &[]);
    let mut c = vm.client();
    // Before negotiation every other command is refused.
    c.send(br#"{"execute":"query-status","id":1}"#);
    let r = c.recv();
    assert_eq!(error_class(&r), "CommandNotFound", "{r}");
    assert_eq!(r["id"], json!(1));
    c.send(br#"{"execute":"qmp_capabilities","id":"neg"}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": "neg"}));
    // A second negotiation is refused too.
    c.send(br#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(error_class(&c.recv()), "CommandNotFound");

    // Two commands in one write, no newline, any JSON id echoed exactly.
    c.send(br#"{"execute":"query-status","id":{"a":[1,2]}}{"execute":"query-name","id":42.5}"#);
    let r1 = c.recv();
    assert_eq!(r1["id"], json!({"a": [1, 2]}));
    assert_eq!(r1["return"]["status"], json!("running"));
    assert_eq!(c.recv()["id"], json!(42.5));

    // One command split byte by byte, whitespace inside.
    for b in br#" { "execute" : "query-status" , "id" : 7 } "#.iter() {
        c.send(&[*b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = c.recv();
    assert_eq!(
        (r["id"].clone(), r["return"]["running"].clone()),
        (json!(7), json!(true))
    );

    // Garbage, then a valid command on the same connection.
    c.send(b"this is not json");
    c.send(br#"{"execute":"query-status","id":8}"#);
    let r = c.recv();
    assert_eq!(error_class(&r), "GenericError", "{r}");
    assert!(r.get("id").is_none());
    assert_eq!(c.reply()["id"], json!(8));

    // Malformed object, then a valid one.
    c.send(br#"{"execute": query-status}"#);
    assert_eq!(error_class(&c.recv()), "GenericError");
    c.send(br#"{"execute":"query-status","id":9}"#);
    assert_eq!(c.reply()["id"], json!(9));

    // A message larger than one read of the server (but under the 1 MiB
    // limit) arrives in many pieces in one write and is answered whole.
    let long_id = "y".repeat(300 << 10);
    let long = format!(r#"{{"execute":"query-status","id":"{long_id}"}}"#);
    c.send(long.as_bytes());
    let r = c.recv();
    assert_eq!(r["id"], json!(long_id));
    assert_eq!(r["return"]["status"], json!("running"));

    // An oversized message is refused without killing anything.
    let big = format!(
        r#"{{"execute":"query-status","id":"{}"}}"#,
        "x".repeat(4 << 20)
    );
    c.send(big.as_bytes());
    let r = c.recv();
    assert_eq!(error_class(&r), "GenericError", "{r}");
    c.send(br#"{"execute":"query-status","id":10}"#);
    assert_eq!(c.reply()["id"], json!(10));

    // Unknown command and bad arguments: errors, the VM keeps running.
    assert_eq!(error_class(&c.execute("frobnicate")), "CommandNotFound");
    c.send(br#"{"execute":"stop","arguments":{"now":true}}"#);
    assert_eq!(error_class(&c.reply()), "GenericError");
    assert_eq!(
        c.execute("query-status")["return"]["status"],
        json!("running")
    );
}

#[test]
fn govmm_style_line_client_with_interleaved_events() {
    if !kvm_usable("qmp_govmm") {
        return;
    }
    let vm = Vm::start("qmp-govmm", &["-smp", "2"]);
    let mut c = Client::negotiated(&vm.sock);
    // Newline-delimited commands without ids; replies matched by order.
    c.send(b"{\"execute\":\"stop\"}\n");
    let mut lines = [c.recv(), c.recv()];
    lines.sort_by_key(|v| v.get("event").is_some());
    assert_eq!(lines[0], json!({"return": {}}));
    assert_eq!(lines[1]["event"], json!("STOP"));
    c.send(b"{\"execute\":\"query-status\"}\n");
    assert_eq!(c.reply()["return"]["status"], json!("paused"));
    c.send(b"{\"execute\":\"cont\"}\n");
    let r = c.recv();
    assert_eq!(
        r,
        json!({"return": {}}),
        "the reply comes before the RESUME event it causes"
    );
    assert_eq!(c.recv()["event"], json!("RESUME"));
    // Kata reads CPU and thread_id from query-cpus.
    let cpus = c.execute("query-cpus");
    let cpus = cpus["return"].as_array().expect("array");
    assert_eq!(cpus.len(), 2);
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["CPU"], json!(i));
        assert!(cpu["thread_id"].as_i64().unwrap() > 0);
    }
}

#[test]
fn sequential_reconnects_and_misbehaving_clients() {
    if !kvm_usable("qmp_reconnects") {
        return;
    }
    let mut vm = Vm::start("qmp-reconnect", &[]);
    for _ in 0..100 {
        let mut c = Client::negotiated(&vm.sock);
        assert_eq!(c.execute("query-status")["return"]["running"], json!(true));
    }
    // A client that disconnects in the middle of a command.
    {
        let mut c = Client::negotiated(&vm.sock);
        c.send(br#"{"execute":"stop"}"#);
    }
    // A client that never reads while many events are produced.
    let mut stuck = Client::negotiated(&vm.sock);
    stuck.send(b"");
    let mut c = Client::negotiated(&vm.sock);
    for _ in 0..200 {
        assert_eq!(c.execute("cont")["return"], json!({}));
        assert_eq!(c.execute("stop")["return"], json!({}));
    }
    assert!(vm.alive(), "altovirt died");
    assert_eq!(
        c.execute("query-status")["return"]["status"],
        json!("paused")
    );
    assert_eq!(c.execute("quit")["return"], json!({}));
    let status = vm.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!vm.sock.exists(), "socket left behind");
}

#[test]
fn qemu_qmp_python_library_drives_altovirt() {
    if !kvm_usable("qmp_python") {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/qmp_clients/test_qemu_qmp.py"
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.args([script, env!("CARGO_BIN_EXE_altovirt"), GUEST_ELF64]);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert_eq!(
        out.code(),
        0,
        "qemu.qmp checks failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("qemu.qmp: all checks passed"),
        "{}",
        out.stdout
    );
}

#[test]
fn system_reset_reboots_the_guest_in_place() {
    if !kvm_usable("qmp_system_reset") {
        return;
    }
    use std::io::Read;
    let dir = scratch("qmp-reset");
    let sock = dir.join("qmp.sock");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let mut child = altovirt_with_qmp(&sock)
        .args(["-kernel", GUEST_PVH, "-smp", "2", "-serial", "stdio"])
        .args(["-append", "guest.virtio=blk guest.exit=halt"])
        .arg("-drive")
        .arg(format!("id=d0,file={},readonly=on", img.display()))
        .args(["-device", "virtio-blk-device,drive=d0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = console.read_to_string(&mut s);
        s
    });
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut c = Client::negotiated(&sock);
    // Let the first boot finish.
    std::thread::sleep(Duration::from_millis(500));
    c.send(br#"{"execute":"system_reset","id":"r"}"#);
    assert_eq!(c.recv(), json!({"return": {}, "id": "r"}));
    let ev = c.recv();
    assert_eq!(ev["event"], json!("RESET"));
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.execute("query-status")["return"]["status"],
        json!("running")
    );
    assert_eq!(c.execute("quit")["return"], json!({}));
    assert!(child.wait().unwrap().success());
    let out = reader.join().unwrap();
    let count = |needle: &str| out.matches(needle).count();
    assert_eq!(count("altovirt-guest: boot=pvh"), 2, "{out}");
    assert_eq!(
        count("cpus: mptable=2 started=2"),
        2,
        "APs must start again after reset: {out}"
    );
    assert_eq!(
        count("blk: capacity=2048 ro=1"),
        2,
        "virtio-blk must work after reset: {out}"
    );
    assert_eq!(count("halting"), 2, "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// user+system ticks a thread has used, from /proc.
fn thread_cpu_ticks(pid: u32, tid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // Fields after the ")" of the comm: state is field 3; utime/stime are 14/15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn stop_really_stops_a_spinning_vcpu() {
    if !kvm_usable("qmp_stop_spinning") {
        return;
    }
    let dir = scratch("qmp-spin");
    let sock = dir.join("qmp.sock");
    let mut child = KillOnDrop(
        altovirt_with_qmp(&sock)
            .args([
                "-kernel",
                GUEST_ELF64,
                "-append",
                "guest.exit=spin",
                "-serial",
                "none",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let mut c = Client::negotiated(&sock);
    let cpus = c.execute("query-cpus-fast");
    let tid = cpus["return"][0]["thread-id"].as_i64().unwrap();
    let pid = child.0.id();
    // Running: the vCPU thread burns CPU.
    let t0 = thread_cpu_ticks(pid, tid);
    std::thread::sleep(Duration::from_millis(500));
    let t1 = thread_cpu_ticks(pid, tid);
    assert!(t1 > t0, "a spinning guest should use CPU ({t0} -> {t1})");
    assert_eq!(c.execute("stop")["return"], json!({}));
    // Stopped: when stop has returned the thread uses no more CPU.
    let s0 = thread_cpu_ticks(pid, tid);
    std::thread::sleep(Duration::from_millis(500));
    let s1 = thread_cpu_ticks(pid, tid);
    assert!(s1 - s0 <= 1, "vCPU kept running after stop ({s0} -> {s1})");
    assert_eq!(c.execute("cont")["return"], json!({}));
    let r0 = thread_cpu_ticks(pid, tid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        thread_cpu_ticks(pid, tid) > r0,
        "cont did not resume the vCPU"
    );
    assert_eq!(c.execute("quit")["return"], json!({}));
    assert!(child.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn guest_reset_is_reported_as_shutdown_to_clients() {
    if !kvm_usable("qmp_guest_reset") {
        return;
    }
    let vm = Vm::start_with_append("qmp-guest-reset", "guest.exit=reset", &["-S"]);
    let mut c = Client::negotiated(&vm.sock);
    assert_eq!(
        c.execute("query-status")["return"]["status"],
        json!("prelaunch")
    );
    assert_eq!(c.execute("cont")["return"], json!({}));
    assert_eq!(c.recv()["event"], json!("RESUME"));
    let ev = c.recv();
    assert_eq!(ev["event"], json!("SHUTDOWN"), "{ev}");
    assert_eq!(ev["data"], json!({"guest": true, "reason": "guest-reset"}));
}
