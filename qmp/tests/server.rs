//! Server behaviour over real unix sockets: socket file, reconnects,
//! events, slow and stuck clients, file descriptor passing, shutdown.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{err, send_with_fds, Client, Fake, Setup, TempDir};
use qmp::{EventHub, QmpServer, QmpServerError};
use serde_json::{json, Value};

#[test]
fn socket_file_mode_and_removal() {
    let s = Setup::new("mode");
    let path = s.sock();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let Setup { server, dir, .. } = s;
    drop(server);
    assert!(!path.exists());
    drop(dir);
}

#[test]
fn bound_but_not_started_accepts_and_cleans_up() {
    let dir = TempDir::new("bind");
    let hub = EventHub::new();
    let path = dir.path("q.sock");
    let server = QmpServer::bind(&path, Fake::new(&hub), &hub).unwrap();
    // Listening as soon as bind returns: a client can connect and is
    // greeted once the server starts.
    let mut c = Client::connect(&path);
    let handle = server.start().unwrap();
    assert!(c.read().get("QMP").is_some());
    drop(handle);
    assert!(!path.exists());
    let server = QmpServer::bind(&path, Fake::new(&hub), &hub).unwrap();
    drop(server);
    assert!(!path.exists());
}

#[test]
fn stale_socket_is_replaced_live_one_and_files_are_not() {
    let dir = TempDir::new("stale");
    let hub = EventHub::new();
    let path = dir.path("q.sock");
    // A socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let handle = QmpServer::bind(&path, Fake::new(&hub), &hub)
        .unwrap()
        .start()
        .unwrap();
    let mut c = Client::connect(&path);
    assert!(c.read().get("QMP").is_some());
    // A second server on the same live path is refused.
    match QmpServer::bind(&path, Fake::new(&hub), &hub) {
        Err(QmpServerError::InUse(p)) => assert_eq!(p, path),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(handle);
    // A regular file is left alone.
    std::fs::write(&path, b"data").unwrap();
    assert!(matches!(
        QmpServer::bind(&path, Fake::new(&hub), &hub),
        Err(QmpServerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    let long = dir.path(&"x".repeat(120));
    assert!(matches!(
        QmpServer::bind(&long, Fake::new(&hub), &hub),
        Err(QmpServerError::PathTooLong(_))
    ));
}

#[test]
fn hundred_sequential_reconnects_are_each_greeted() {
    let s = Setup::new("reconnect");
    for i in 0..100 {
        let mut c = s.client();
        let r = c.cmd(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(r, json!({"return": {}}), "round {i}");
        let r = c.cmd(&format!(r#"{{"execute":"query-status","id":{i}}}"#));
        assert_eq!(r["id"], i);
    }
    // Finished connections are reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.server.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.server.connections(), 0);
}

#[test]
fn events_reach_only_negotiated_clients_in_order_after_the_reply() {
    let s = Setup::new("events");
    let mut a = s.negotiated();
    let mut b = s.negotiated();
    let mut pending = s.client();
    // The handler emits STOP while running `stop`: the reply comes first.
    assert_eq!(
        a.cmd(r#"{"execute":"stop","id":"s"}"#),
        json!({"return": {}, "id": "s"})
    );
    let ev = a.read();
    assert_eq!(ev["event"], "STOP");
    assert!(ev.get("data").is_none());
    let ts = &ev["timestamp"];
    assert!(ts["seconds"].as_i64().unwrap() > 1_600_000_000);
    assert!(ts["microseconds"].as_i64().unwrap() < 1_000_000);
    assert_eq!(b.read()["event"], "STOP");
    // Events from outside any command, in emission order.
    let em = s.hub.emitter();
    for i in 0..20 {
        em.emit("TEST", json!({"n": i}));
    }
    for c in [&mut a, &mut b] {
        for i in 0..20 {
            let ev = c.read();
            assert_eq!(ev["event"], "TEST");
            assert_eq!(ev["data"], json!({"n": i}));
        }
    }
    // The client still negotiating got none of it.
    assert!(pending.quiet_for(200));
    assert_eq!(
        pending.cmd(r#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    assert_eq!(
        b.cmd(r#"{"execute":"device_del","arguments":{"id":"blk0"}}"#),
        json!({"return": {}})
    );
    let ev = b.read();
    assert_eq!(ev["event"], "DEVICE_DELETED");
    assert_eq!(ev["data"], json!({"device": "blk0", "path": "/x"}));
    for c in [&mut a, &mut pending] {
        assert_eq!(c.read()["event"], "DEVICE_DELETED");
    }
}

#[test]
fn events_reach_clients_of_every_socket() {
    let s = Setup::new("two-sockets");
    let second = QmpServer::bind(&s.dir.path("b.sock"), s.fake.clone(), &s.hub)
        .unwrap()
        .start()
        .unwrap();
    let mut a = s.negotiated();
    let mut b = Client::connect(second.path());
    b.read();
    b.cmd(r#"{"execute":"qmp_capabilities"}"#);
    s.hub.emitter().emit("POWERDOWN", Value::Null);
    assert_eq!(a.read()["event"], "POWERDOWN");
    assert_eq!(b.read()["event"], "POWERDOWN");
    assert_eq!(s.hub.connections(), 2);
}

#[test]
fn client_that_disconnects_mid_command_does_not_disturb_others() {
    let s = Setup::new("midcmd");
    let started = s.fake.on_slow_start();
    let mut a = s.negotiated();
    let mut b = s.negotiated();
    a.send(r#"{"execute":"system_reset","id":1}"#);
    started.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(a);
    // Another client is served while the slow command runs.
    assert_eq!(b.cmd(r#"{"execute":"query-status","id":2}"#)["id"], 2);
    s.fake.release();
    // The slow command completes (its reply is dropped) and B still works,
    // including events.
    assert_eq!(
        b.cmd(r#"{"execute":"cont","id":3}"#),
        json!({"return": {}, "id": 3})
    );
    assert_eq!(b.read()["event"], "RESUME");
    let calls = s.fake.calls();
    assert!(calls.contains(&"system_reset".to_string()));
}

#[test]
fn stuck_client_does_not_block_events_to_others() {
    let s = Setup::new("stuck");
    // Negotiates, then never reads again.
    let mut stuck = s.negotiated();
    let mut good = s.negotiated();
    let em = s.hub.emitter();
    let payload = "y".repeat(2000);
    let total = 4000;
    let t0 = Instant::now();
    let mut received = 0;
    for batch in 0..total / 100 {
        for i in 0..100 {
            em.emit("BIG", json!({"n": batch * 100 + i, "p": payload}));
        }
        for _ in 0..100 {
            let ev = good.read();
            assert_eq!(ev["data"]["n"], received);
            received += 1;
        }
    }
    assert_eq!(received, total);
    // 8 MB of events were emitted without waiting for the stuck client.
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The stuck client overflowed its queue and was disconnected.
    assert!(stuck.closed_by_server());
    assert_eq!(
        good.cmd(r#"{"execute":"query-status","id":"ok"}"#)["id"],
        "ok"
    );
}

fn temp_file(dir: &TempDir, name: &str, content: &[u8]) -> File {
    let p = dir.path(name);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(content).unwrap();
    f
}

#[test]
fn getfd_with_a_lone_space_then_handler_takes_it_by_name() {
    let s = Setup::new("getfd");
    let mut c = s.negotiated();
    assert_eq!(
        c.cmd(r#"{"execute":"getfd","arguments":{"fdname":"tap0"}}"#),
        err("GenericError", "No file descriptor supplied via SCM_RIGHTS")
    );
    let f0 = temp_file(&s.dir, "f0", b"zero");
    let f1 = temp_file(&s.dir, "f1", b"one");
    // qemu.qmp style: the descriptor rides on a lone space.
    send_with_fds(&c.stream, b" ", &[f0.as_raw_fd()]);
    assert_eq!(
        c.cmd(r#"{"execute":"getfd","arguments":{"fdname":"tap0"},"id":1}"#),
        json!({"return": {}, "id": 1})
    );
    // govmm style: the descriptor rides on the command itself.
    send_with_fds(
        &c.stream,
        br#"{"execute":"getfd","arguments":{"fdname":"tap1"},"id":2}"#,
        &[f1.as_raw_fd()],
    );
    assert_eq!(c.read(), json!({"return": {}, "id": 2}));
    drop(c);
    // Stored per socket: a new connection can use them.
    let mut c = s.negotiated();
    assert_eq!(
        c.cmd(r#"{"execute":"netdev_add","arguments":{"type":"tap","id":"n0","fds":"tap0:tap1"}}"#),
        json!({"return": {}})
    );
    let taken = std::mem::take(&mut *s.fake.fds.lock().unwrap());
    assert_eq!(taken.len(), 2);
    for ((name, fd), want) in taken.into_iter().zip(["zero", "one"]) {
        let mut f = File::from(fd);
        f.rewind().unwrap();
        let mut got = String::new();
        f.read_to_string(&mut got).unwrap();
        assert_eq!(got, want, "{name}");
    }
    // Taken means gone.
    assert_eq!(
        c.cmd(r#"{"execute":"closefd","arguments":{"fdname":"tap0"}}"#),
        err("GenericError", "File descriptor named 'tap0' not found")
    );
}

#[test]
fn closefd_closes_the_stored_descriptor() {
    let s = Setup::new("closefd");
    let mut c = s.negotiated();
    let (mine, theirs) = UnixStream::pair().unwrap();
    send_with_fds(&c.stream, b" ", &[theirs.as_raw_fd()]);
    drop(theirs);
    assert_eq!(
        c.cmd(r#"{"execute":"getfd","arguments":{"fdname":"p"}}"#),
        json!({"return": {}})
    );
    assert_eq!(
        c.cmd(r#"{"execute":"closefd","arguments":{"fdname":"p"}}"#),
        json!({"return": {}})
    );
    // The server held the last copy of the peer: it is closed now.
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!((&mine).read(&mut buf).unwrap(), 0);
    assert_eq!(
        c.cmd(r#"{"execute":"closefd","arguments":{"fdname":"p"}}"#),
        err("GenericError", "File descriptor named 'p' not found")
    );
}

#[test]
fn shutdown_flushes_the_reply_to_quit() {
    let s = Setup::new("quit");
    let quit = s.fake.on_quit();
    let mut c = s.negotiated();
    c.send(r#"{"execute":"quit","id":"bye"}"#);
    quit.recv_timeout(Duration::from_secs(10)).unwrap();
    s.hub.emitter().emit(
        "SHUTDOWN",
        json!({"guest": false, "reason": "host-qmp-quit"}),
    );
    let Setup { server, dir, .. } = s;
    drop(server);
    assert_eq!(c.read(), json!({"return": {}, "id": "bye"}));
    assert_eq!(c.read()["event"], "SHUTDOWN");
    assert!(c.closed_by_server());
    drop(dir);
}
