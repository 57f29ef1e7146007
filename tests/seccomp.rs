//! Seccomp through the real binary: with the default settings every thread
//! of a running VM is confined (QMP client threads by two stacked filters,
//! the accept thread's and their own); `-disable-seccomp` confines none.
//! What each filter refuses is proven per thread kind in
//! machine/src/seccomp/tests.rs; every other integration test (and the
//! rig) runs with the filters on.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

/// name → (Seccomp mode, number of filters) for every thread of `pid`.
fn thread_confinement(pid: u32) -> BTreeMap<String, Vec<(u32, u32)>> {
    let mut out: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().parse::<u32>().unwrap())
                .unwrap_or_else(|| panic!("no {key} in {status}"))
        };
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let name = name.trim().trim_end_matches(char::is_numeric).to_string();
        out.entry(name)
            .or_default()
            .push((field("Seccomp:"), field("Seccomp_filters:")));
    }
    out
}

/// Starts a paused 2-vCPU VM with a QMP socket and one negotiated client.
fn vm_with_client(name: &str, extra: &[&str]) -> (Child, Client) {
    let dir = scratch(name);
    let sock = dir.join("qmp.sock");
    let child = altovirt_with_qmp(&sock)
        .args(["-S", "-serial", "none", "-smp", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn altovirt");
    assert!(
        wait_for_path(&sock, Duration::from_secs(10)),
        "no QMP socket"
    );
    let client = Client::negotiated(&sock);
    (child, client)
}

fn quit(child: Child, mut client: Client) {
    assert_eq!(client.execute("quit"), json!({"return": {}}));
    let out = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
}

#[test]
fn every_thread_is_confined_by_default() {
    if !kvm_usable("every_thread_is_confined_by_default") {
        return;
    }
    let (child, client) = vm_with_client("seccomp-on", &[]);
    // QMP serves before the vCPUs are started (and the main thread confines
    // itself right after starting them): wait for that point.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = thread_confinement(child.id());
        let started = threads.get("vcpu").is_some_and(|v| v.len() == 2)
            && threads.get("altovirt").is_some_and(|m| m[0].0 == 2);
        if started || std::time::Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for name in [
        "altovirt",
        "vcpu",
        "virtio-io",
        "qmp-accept",
        "qmp-reader",
        "qmp-writer",
    ] {
        assert!(threads.contains_key(name), "no {name} thread: {threads:?}");
    }
    assert_eq!(threads["vcpu"].len(), 2, "{threads:?}");
    for (name, states) in &threads {
        let filters = if name.starts_with("qmp-r") || name.starts_with("qmp-w") {
            2
        } else {
            1
        };
        for &(mode, n) in states {
            assert_eq!(
                mode, 2,
                "thread {name} is not in seccomp filter mode: {threads:?}"
            );
            assert_eq!(n, filters, "thread {name} has {n} filters: {threads:?}");
        }
    }
    quit(child, client);
}

#[test]
fn disable_seccomp_confines_no_thread() {
    if !kvm_usable("disable_seccomp_confines_no_thread") {
        return;
    }
    let (child, client) = vm_with_client("seccomp-off", &["-disable-seccomp"]);
    let threads = thread_confinement(child.id());
    assert!(threads.contains_key("qmp-reader"), "{threads:?}");
    for (name, states) in &threads {
        for &(mode, n) in states {
            assert_eq!((mode, n), (0, 0), "thread {name} is confined: {threads:?}");
        }
    }
    quit(child, client);
}
