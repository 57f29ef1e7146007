//! Host-initiated and guest-initiated connections, refusals, limits and
//! device life cycle.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use super::packet::*;
use super::testing::*;
use super::*;
use crate::test_utils::*;

const QUIET: Duration = Duration::from_millis(150);

#[test]
fn identity_config_and_features() {
    let mem = guest_memory();
    let rig = Rig::new(&mem, "vsock-id");
    assert_eq!(rig.dev.device_type(), 19);
    assert_eq!(rig.dev.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    assert_eq!(rig.dev.features(), 1 << crate::VIRTIO_F_VERSION_1);
    let mut b = [0xffu8; 8];
    rig.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    let mut b = [0xffu8; 4];
    rig.dev.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    assert_eq!(rig.dev.guest_cid(), CID);
    assert_eq!(rig.dev.uds_path(), rig.uds.as_path());
}

#[test]
fn reserved_cids_are_refused() {
    let el = EventLoop::new("vsock-cid").unwrap();
    let dir = temp_dir("vsock-cid");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let cfg = VsockConfig {
            guest_cid: cid,
            uds_path: dir.join("v.sock"),
        };
        assert!(matches!(
            Vsock::new(cfg, el.clone()),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
    }
    el.stop();
}

#[test]
fn host_connect_then_bytes_both_ways_then_guest_close() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-host");
    let (mut c, hp) = rig.host_connect(52);

    c.write_all(b"ping from host").unwrap();
    let (h, data) = rig.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, hp, 52));
    assert_eq!(
        (h.src_cid, h.dst_cid, h.type_),
        (HOST_CID, CID, TYPE_STREAM)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    assert_eq!(data, b"ping from host");

    rig.send(pkt(OP_RW, 52, hp), b"pong from guest");
    let mut got = [0u8; 15];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong from guest");

    // The guest closes: the client sees EOF and the guest gets its RST.
    let mut sd = pkt(OP_SHUTDOWN, 52, hp);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(sd, &[]);
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, hp, 52));
    assert!(closed(&mut c));
    assert!(wait_for(|| rig.dev.connections() == 0));
}

#[test]
fn host_half_close_is_a_shutdown_then_rst() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-half");
    let (mut c, hp) = rig.host_connect(52);
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (h, data) = rig.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"last words"[..]));
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    // The guest can still answer.
    rig.send(pkt(OP_RW, 52, hp), b"reply");
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");
    let mut sd = pkt(OP_SHUTDOWN, 52, hp);
    sd.flags = SHUTDOWN_SEND;
    rig.send(sd, &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    assert!(closed(&mut c));
}

#[test]
fn guest_rst_or_refusal_closes_the_client() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-rst");
    let (mut c, hp) = rig.host_connect(52);
    rig.send(pkt(OP_RST, 52, hp), &[]);
    assert!(closed(&mut c));
    assert!(rig.try_recv(QUIET).is_none(), "no answer to an RST");

    // The guest refuses a connection: no OK line, just EOF.
    let mut c = client(&rig.uds);
    c.write_all(b"CONNECT 77\n").unwrap();
    let (req, _) = rig.recv();
    assert_eq!(req.op, OP_REQUEST);
    rig.send(pkt(OP_RST, 77, req.src_port), &[]);
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert!(all.is_empty());
    // A later packet on that connection is answered with an RST.
    rig.send(pkt(OP_RW, 77, req.src_port), b"late");
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, req.src_port, 77));
}

#[test]
fn unanswered_host_connect_times_out() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-timeout");
    let mut c = client(&rig.uds);
    let start = Instant::now();
    c.write_all(b"CONNECT 52\n").unwrap();
    let (req, _) = rig.recv();
    assert_eq!(req.op, OP_REQUEST);
    assert!(closed(&mut c));
    let waited = start.elapsed();
    assert!(
        waited >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, req.src_port, 52));
    assert_eq!(rig.dev.connections(), 0);
}

#[test]
fn bad_or_missing_connect_line_closes_the_client() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-line");
    let mut c = client(&rig.uds);
    c.write_all(b"HELLO 52\n").unwrap();
    assert!(closed(&mut c));
    let mut c = client(&rig.uds);
    c.write_all(&[b'9'; 100]).unwrap();
    assert!(closed(&mut c));
    // Silent client: dropped after the timeout.
    let mut c = client(&rig.uds);
    assert!(closed(&mut c));
    assert!(rig.try_recv(QUIET).is_none());
    assert_eq!(rig.dev.connections(), 0);
}

/// Accepts one connection on `path` and echoes everything back.
fn echo_server(path: std::path::PathBuf) -> std::thread::JoinHandle<Vec<u8>> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return seen,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        return seen;
                    }
                }
            }
        }
    })
}

#[test]
fn guest_connects_to_a_host_port_and_gets_an_echo() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-guest");
    let server = echo_server(host::port_path(&rig.uds, 1234));
    let resp = rig.guest_connect(4000, 1234, 256 << 10);
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!((resp.src_cid, resp.src_port), (HOST_CID, 1234));
    assert_eq!((resp.dst_cid, resp.dst_port), (CID, 4000));
    assert_eq!(resp.buf_alloc, BUF_ALLOC);

    rig.send(pkt(OP_RW, 4000, 1234), b"hello, host");
    let (h, data) = rig.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, 1234, 4000));
    assert_eq!(data, b"hello, host");

    // The guest asks for our credit.
    rig.send(pkt(OP_CREDIT_REQUEST, 4000, 1234), &[]);
    let (h, _) = rig.recv();
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (OP_CREDIT_UPDATE, BUF_ALLOC, 11)
    );

    let mut sd = pkt(OP_SHUTDOWN, 4000, 1234);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(sd, &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    assert_eq!(server.join().unwrap(), b"hello, host");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-nobody");
    let h = rig.guest_connect(4000, 99, 4096);
    assert_eq!((h.op, h.src_cid, h.src_port), (OP_RST, HOST_CID, 99));
    assert_eq!((h.dst_cid, h.dst_port), (CID, 4000));
    // A file that is not a socket is no better.
    std::fs::write(host::port_path(&rig.uds, 100), b"x").unwrap();
    assert_eq!(rig.guest_connect(4001, 100, 4096).op, OP_RST);
    assert_eq!(rig.dev.connections(), 0);
}

#[test]
fn malformed_packets_get_rst_and_never_break_the_device() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-bad");
    // Short header: dropped (there is no address to answer).
    rig.send_bufs(&[&[0u8; 20]]);
    assert!(rig.try_recv(QUIET).is_none());
    // len larger than the buffer.
    let mut h = pkt(OP_RW, 4000, 1234);
    h.len = 100;
    rig.send_bufs(&[&h.to_bytes(), &[1u8; 10]]);
    let (r, _) = rig.recv();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, 1234, 4000));
    // len beyond the payload limit.
    h.len = MAX_PAYLOAD as u32 + 1;
    rig.send_bufs(&[&h.to_bytes()]);
    assert_eq!(rig.recv().0.op, OP_RST);
    // Wrong destination CID: the RST comes from the address targeted.
    let mut h = pkt(OP_REQUEST, 4000, 1234);
    h.dst_cid = 5;
    rig.send(h, &[]);
    let (r, _) = rig.recv();
    assert_eq!((r.op, r.src_cid, r.dst_cid), (OP_RST, 5, CID));
    // Wrong source CID, wrong type (SEQPACKET), unknown connection.
    let mut h = pkt(OP_REQUEST, 4000, 1234);
    h.src_cid = 7;
    rig.send(h, &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    let mut h = pkt(OP_REQUEST, 4000, 1234);
    h.type_ = 2;
    rig.send(h, &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    for op in [OP_RW, OP_RESPONSE, OP_SHUTDOWN, OP_CREDIT_UPDATE, 99] {
        rig.send(pkt(op, 4000, 1234), b"");
        let (r, _) = rig.recv();
        assert_eq!(
            (r.op, r.src_port, r.dst_port),
            (OP_RST, 1234, 4000),
            "op {op}"
        );
    }
    // RSTs are never answered, whatever is wrong with them.
    let mut h = pkt(OP_RST, 4000, 1234);
    rig.send(h, &[]);
    h.dst_cid = 9;
    rig.send(h, &[]);
    assert!(rig.try_recv(QUIET).is_none());
    // A buffer outside guest RAM.
    rig.send_descs(&[(MEM_SIZE - 8, 64, false)]);
    assert!(rig.try_recv(QUIET).is_none());
    // Still working.
    let _server = echo_server(host::port_path(&rig.uds, 1234));
    assert_eq!(rig.guest_connect(4000, 1234, 4096).op, OP_RESPONSE);
    assert!(!rig.irq.needs_reset());
}

#[test]
fn misbehaving_guest_on_a_live_connection_is_reset() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-live-bad");
    let (mut c, hp) = rig.host_connect(52);
    // A second REQUEST for the same connection.
    rig.send(pkt(OP_REQUEST, 52, hp), &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    assert!(closed(&mut c));
    let (mut c, hp) = rig.host_connect(53);
    let mut h = pkt(OP_RW, 53, hp);
    h.len = 4096;
    rig.send_bufs(&[&h.to_bytes(), b"short"]);
    let (r, _) = rig.recv();
    assert_eq!((r.op, r.src_port), (OP_RST, hp));
    assert!(closed(&mut c));
    assert!(wait_for(|| rig.dev.connections() == 0));
}

#[test]
fn connection_limit_is_enforced() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-limit");
    let mut clients = Vec::new();
    let mut host_ports = std::collections::HashSet::new();
    for port in 0..MAX_CONNECTIONS as u32 {
        let (c, hp) = rig.host_connect(5000 + port);
        clients.push(c);
        host_ports.insert(hp);
    }
    assert_eq!(host_ports.len(), MAX_CONNECTIONS, "host ports are distinct");
    assert_eq!(rig.dev.connections(), MAX_CONNECTIONS);
    let mut extra = client(&rig.uds);
    assert!(closed(&mut extra));
    let _server = echo_server(host::port_path(&rig.uds, 1234));
    let r = rig.guest_connect(4000, 1234, 4096);
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, 1234, 4000));
    let mut sd = pkt(OP_SHUTDOWN, 5000, 0);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    drop(clients.remove(0));
    // One connection gone (the guest is told with a SHUTDOWN): room again.
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.dst_port), (OP_SHUTDOWN, 5000));
    sd.dst_port = h.src_port;
    rig.send(sd, &[]);
    assert_eq!(rig.recv().0.op, OP_RST);
    assert_eq!(rig.guest_connect(4000, 1234, 4096).op, OP_RESPONSE);
}

#[test]
fn reset_closes_connections_and_the_device_can_start_again() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-reset");
    let (mut c, _) = rig.host_connect(52);
    let mut waiting = client(&rig.uds);
    waiting.write_all(b"CONNECT 53\n").unwrap();
    assert_eq!(rig.recv().0.op, OP_REQUEST);
    rig.dev.reset();
    assert!(closed(&mut c));
    assert!(closed(&mut waiting));
    assert_eq!(rig.el.registrations(), 0, "everything unregistered");
    assert_eq!(rig.dev.connections(), 0);
    assert!(rig.uds.exists(), "the listening socket stays");
    // A client connecting while the device is down waits in the backlog.
    let mut early = client(&rig.uds);
    early.write_all(b"CONNECT 60\n").unwrap();
    rig.reactivate(0x8000);
    let (req, _) = rig.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 60));
    rig.send(pkt(OP_RESPONSE, 60, req.src_port), &[]);
    assert_eq!(read_line(&mut early), format!("OK {}\n", req.src_port));
    let (c2, _) = rig.host_connect(61);
    drop(c2);
}

#[test]
fn drop_removes_the_socket_and_stale_sockets_are_replaced() {
    let mem = guest_memory();
    let rig = Rig::new(&mem, "vsock-drop");
    let uds = rig.uds.clone();
    // A stale socket file (e.g. from a crashed VMM) at the same path.
    drop(UnixListener::bind(rig.dir.join("stale.sock")).unwrap());
    let el = rig.el.clone();
    let v2 = Vsock::new(
        VsockConfig {
            guest_cid: CID,
            uds_path: rig.dir.join("stale.sock"),
        },
        el,
    )
    .unwrap();
    assert!(client(&rig.dir.join("stale.sock")).peer_addr().is_ok());
    drop(v2);
    assert!(!rig.dir.join("stale.sock").exists());
    drop(rig);
    assert!(!uds.exists());
}

#[test]
fn restore_queues_a_transport_reset_event() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-restore");
    // The guest keeps event buffers posted; one 8-byte buffer here.
    let buf = 0x8_0000u64;
    mem.write_obj(0xffff_ffffu32, vm_memory::GuestAddress(buf))
        .unwrap();
    rig.ev.write_chain(0, &[(buf, 8, true)]);
    rig.ev.publish(&[0]);
    rig.irq.ack(u32::MAX);
    rig.dev.after_restore();
    assert_eq!(rig.ev.used_idx(), 1);
    assert_eq!(rig.ev.used_elem(0), (0, 4));
    let id: u32 = mem.read_obj(vm_memory::GuestAddress(buf)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_ne!(rig.irq.status() & crate::VIRTIO_MMIO_INT_VRING, 0);
    // Without a posted buffer nothing is written (and nothing breaks).
    rig.dev.after_restore();
    assert_eq!(rig.ev.used_idx(), 1);
}

#[test]
fn a_restored_device_continues_the_host_ports() {
    use crate::snapshot::DeviceExtra;
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-ports");
    let (_c, first) = rig.host_connect(52);
    let saved = rig.dev.save_extra();
    assert_eq!(
        saved,
        DeviceExtra::Vsock {
            next_host_port: first + 1
        }
    );
    // A device restored from that state hands out the next port, not the
    // first again (the guest may still hold a socket for the old one).
    let mut restored = Rig::new(&mem, "vsock-ports-2");
    restored.dev.restore_extra(&saved).unwrap();
    let (_c2, port) = restored.host_connect(52);
    assert_eq!(port, first + 1);
    // Out of range restarts at the first port; an older snapshot without
    // the port is accepted.
    restored
        .dev
        .restore_extra(&DeviceExtra::Vsock { next_host_port: 0 })
        .unwrap();
    assert_eq!(
        restored.dev.save_extra(),
        DeviceExtra::Vsock {
            next_host_port: crate::vsock::muxer::FIRST_HOST_PORT
        }
    );
    restored.dev.restore_extra(&DeviceExtra::None).unwrap();
}

#[test]
fn after_a_restore_nothing_reaches_the_guest_before_it_takes_the_reset() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-reset-wait");
    let buf = 0x8_0000u64;
    rig.ev.write_chain(0, &[(buf, 8, true)]);
    rig.ev.publish(&[0]);
    rig.dev.after_restore();
    // A host client connects at once (as one may while the restored guest
    // has not run yet): its REQUEST must not reach the guest before the
    // reset, which would close the new connection too.
    let mut c = client(&rig.uds);
    c.write_all(b"CONNECT 52\n").unwrap();
    assert!(rig.try_recv(Duration::from_millis(300)).is_none());
    // The restore's own kick of the event queue is not the guest's answer.
    rig.evts[2].write(1).unwrap();
    assert!(rig.try_recv(Duration::from_millis(300)).is_none());
    // The guest took the event: it offers the buffer again and kicks.
    rig.ev.write_chain(1, &[(buf + 8, 8, true)]);
    rig.ev.publish(&[1]);
    rig.evts[2].write(1).unwrap();
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 52));

    // A guest that never takes it: packets go after the wait anyway.
    rig.reactivate(0x20_0000);
    rig.ev.write_chain(0, &[(buf, 8, true)]);
    rig.ev.publish(&[0]);
    rig.dev.after_restore();
    let started = Instant::now();
    let mut c2 = client(&rig.uds);
    c2.write_all(b"CONNECT 53\n").unwrap();
    let (h, _) = rig
        .try_recv(Duration::from_secs(10))
        .expect("the request goes after the wait");
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 53));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}
