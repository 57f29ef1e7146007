//! Replays, byte for byte, what Kata's Go runtime (stratovirt.go on top of
//! govmm's QMP client) writes to the QMP socket: one connection per
//! operation (dial every 50 ms until the socket answers, read the greeting,
//! `qmp_capabilities`, the operation, hang up), commands marshalled from Go
//! maps (keys sorted, so "arguments" before "execute"), no ids, one command
//! per newline-terminated line. The tiny guest watches the slots and
//! reports each disk appearing and disappearing.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// One govmm-style connection.
struct KataConn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl KataConn {
    /// Dials like Kata's qmpSetup: every 50 ms for up to 10 s; then the
    /// greeting and capabilities negotiation.
    fn setup(sock: &Path) -> KataConn {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "QMP never answered: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = KataConn { stream, reader };
        let greeting = c.line();
        assert!(greeting["QMP"]["version"]["qemu"].is_object(), "{greeting}");
        assert_eq!(c.exec(b"{\"execute\":\"qmp_capabilities\"}\n"), json!({}));
        c
    }

    /// The next line, which must be one CRLF-terminated JSON object.
    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read QMP line");
        assert!(line.ends_with("\r\n"), "not CRLF-terminated: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Writes the exact bytes of one command and returns its `return`
    /// value; events arriving first are skipped, as govmm does.
    fn exec(&mut self, bytes: &[u8]) -> Value {
        self.stream.write_all(bytes).unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                continue;
            }
            assert!(v.get("id").is_none(), "an id nobody sent: {v}");
            return v
                .get("return")
                .cloned()
                .unwrap_or_else(|| panic!("error for {}: {v}", String::from_utf8_lossy(bytes)));
        }
    }

    /// Waits for `event` about `device`, as govmm's device_del does.
    fn event(&mut self, event: &str, device: &str) -> Value {
        loop {
            let v = self.line();
            if v["event"] == event && v["data"]["device"] == device {
                return v;
            }
        }
    }
}

fn wait_line(rx: &Receiver<String>, needle: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("guest never printed {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

#[test]
fn kata_qmp_sequence_replayed_byte_for_byte() {
    if !kvm_usable("kata_replay") {
        return;
    }
    let dir = scratch("kata-replay");
    let sock = dir.join("qmp.socket");
    let mut disks = Vec::new();
    for i in 1..=3u8 {
        let img = dir.join(format!("disk{i}.img"));
        let mut data = vec![0u8; (1 << 20) * usize::from(i)];
        data[..512].fill(i.wrapping_mul(41));
        std::fs::write(&img, &data).unwrap();
        disks.push((img, data));
    }
    // Kata starts the VMM as a foreground child and dials at once.
    let mut child = altovirt()
        .arg("-qmp")
        .arg(format!("unix:{},server,nowait", sock.display()))
        .args(["-D", "-disable-seccomp"])
        .args(["-machine", "type=microvm,dump-guest-core=off,mem-share=on"])
        .args(["-smp", "2", "-kernel", GUEST_ELF64, "-serial", "stdio"])
        .args([
            "-append",
            "guest.virtio=hotplug guest.exit=halt guest.hotplug.events=6 guest.hotplug.wait=120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = channel();
    let console = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Cold boot: check the VMM is up, then hang up.
    drop(KataConn::setup(&sock));
    assert_eq!(wait_line(&rx, "hotplug: slots="), "hotplug: slots=4");
    wait_line(&rx, "hotplug: ready");

    // Hotplug into slots 1-3: blockdev-add, then device_add, one connection
    // each time.
    for (i, (img, data)) in disks.iter().enumerate() {
        let slot = i + 1;
        let mut c = KataConn::setup(&sock);
        let add = format!(
            "{{\"arguments\":{{\"cache\":{{\"direct\":false,\"no-flush\":false}},\"driver\":\"raw\",\
             \"file\":{{\"aio\":\"threads\",\"driver\":\"file\",\"filename\":\"{}\"}},\
             \"node-name\":\"drive-{slot}\",\"read-only\":false}},\"execute\":\"blockdev-add\"}}\n",
            img.display()
        );
        assert_eq!(c.exec(add.as_bytes()), json!({}));
        let dev = format!(
            "{{\"arguments\":{{\"addr\":\"{slot}\",\"driver\":\"virtio-blk-mmio\",\
             \"drive\":\"drive-{slot}\",\"id\":\"drive-{slot}\"}},\"execute\":\"device_add\"}}\n"
        );
        assert_eq!(c.exec(dev.as_bytes()), json!({}));
        drop(c);
        assert_eq!(
            wait_line(&rx, "hotplug: slot="),
            format!(
                "hotplug: slot={slot} added capacity={} sum=0x{:08x}",
                data.len() / 512,
                fnv1a32(&data[..512])
            )
        );
    }

    // Thread ids through query-cpus, as stratovirt.go reads them.
    let mut c = KataConn::setup(&sock);
    let cpus = c.exec(b"{\"execute\":\"query-cpus\"}\n");
    drop(c);
    let cpus = cpus.as_array().expect("query-cpus list");
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["CPU"], json!(i));
        // govmm's CPUInfo decodes absent members as zero: a running vCPU's
        // pc and halted are left out rather than made up.
        assert!(
            cpu.get("pc").is_none() && cpu.get("halted").is_none(),
            "{cpu}"
        );
        let tid = cpu["thread_id"].as_u64().expect("thread_id");
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", child.id()))
            .unwrap_or_else(|e| panic!("thread {tid} is not a thread of the VMM: {e}"));
        assert_eq!(comm.trim(), format!("vcpu{i}"));
    }

    // Unplug: device_del waits for DEVICE_DELETED, then blockdev-del.
    for slot in 1..=3 {
        let mut c = KataConn::setup(&sock);
        let del =
            format!("{{\"arguments\":{{\"id\":\"drive-{slot}\"}},\"execute\":\"device_del\"}}\n");
        assert_eq!(c.exec(del.as_bytes()), json!({}));
        let ev = c.event("DEVICE_DELETED", &format!("drive-{slot}"));
        assert!(ev["timestamp"]["seconds"].as_u64().is_some(), "{ev}");
        let bdel = format!(
            "{{\"arguments\":{{\"node-name\":\"drive-{slot}\"}},\"execute\":\"blockdev-del\"}}\n"
        );
        assert_eq!(c.exec(bdel.as_bytes()), json!({}));
        drop(c);
        assert_eq!(
            wait_line(&rx, "hotplug: slot="),
            format!("hotplug: slot={slot} removed")
        );
    }
    // The guest counted its six events.
    wait_line(&rx, "hotplug: done");

    let mut c = KataConn::setup(&sock);
    assert_eq!(c.exec(b"{\"execute\":\"quit\"}\n"), json!({}));
    drop(c);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
