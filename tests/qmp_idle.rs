//! Idle QMP clients cannot lock the orchestrator out: a client that does
//! not complete `qmp_capabilities` within qmp::NEGOTIATION_TIMEOUT is
//! disconnected, and when every client slot is taken the oldest client
//! still in negotiation mode makes room for a new one.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::qmp_client::Client;
use common::*;
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

fn paused_vm(name: &str) -> (Child, std::path::PathBuf) {
    let sock = scratch(name).join("qmp.sock");
    let child = altovirt_with_qmp(&sock)
        .args(["-S", "-serial", "none"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn altovirt");
    assert!(
        wait_for_path(&sock, Duration::from_secs(10)),
        "no QMP socket"
    );
    (child, sock)
}

fn quit(child: Child, sock: &Path) {
    let mut q = Client::negotiated(sock);
    assert_eq!(q.execute("quit"), json!({"return": {}}));
    let out = wait_with_timeout(child, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
}

/// Reads until EOF; panics if the server keeps the connection for `limit`.
fn read_to_eof(client: &mut Client, limit: Duration) {
    client.stream.set_read_timeout(Some(limit)).unwrap();
    let mut rest = Vec::new();
    client
        .reader
        .read_to_end(&mut rest)
        .expect("the server did not close the connection");
}

#[test]
fn sixty_four_idle_clients_do_not_lock_out_the_next_one() {
    if !kvm_usable("sixty_four_idle_clients_do_not_lock_out_the_next_one") {
        return;
    }
    let (child, sock) = paused_vm("qmp-idle-full");
    let mut idle: Vec<Client> = (0..qmp::MAX_CLIENTS)
        .map(|_| Client::connect(&sock))
        .collect();
    // The next client gets in at once and is served.
    let mut q = Client::negotiated(&sock);
    assert_eq!(
        q.execute("query-status")["return"]["status"],
        json!("prelaunch")
    );
    // ...because the oldest idle client gave up its place.
    read_to_eof(&mut idle[0], Duration::from_secs(5));
    drop(idle);
    drop(q);
    quit(child, &sock);
}

#[test]
fn a_client_that_never_negotiates_is_disconnected_and_one_that_did_is_kept() {
    if !kvm_usable("a_client_that_never_negotiates_is_disconnected_and_one_that_did_is_kept") {
        return;
    }
    let (child, sock) = paused_vm("qmp-idle-timeout");
    let mut negotiated = Client::negotiated(&sock);
    let mut idle = Client::connect(&sock);
    read_to_eof(&mut idle, qmp::NEGOTIATION_TIMEOUT * 3);
    // The negotiated client has been idle just as long and is still served.
    assert_eq!(
        negotiated.execute("query-status")["return"]["status"],
        json!("prelaunch")
    );
    quit(child, &sock);
}
