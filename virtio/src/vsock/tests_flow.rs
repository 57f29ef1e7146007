//! Flow control with a simulated guest: credit exhaustion, bulk transfers
//! in both directions with exact bytes, and a guest ignoring our credit.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::packet::*;
use super::testing::*;
use super::*;
use crate::test_utils::*;

const QUIET: Duration = Duration::from_millis(200);
const GP: u32 = 4000;
const HP: u32 = 1234;

/// A guest connection from port [`GP`] to host port [`HP`] with the guest
/// advertising `buf_alloc`; returns the host side's socket.
fn connect(rig: &mut Rig<'_>, buf_alloc: u32) -> UnixStream {
    let l = UnixListener::bind(host::port_path(&rig.uds, HP)).unwrap();
    let r = rig.guest_connect(GP, HP, buf_alloc);
    assert_eq!(r.op, OP_RESPONSE);
    let (s, _) = l.accept().unwrap();
    s
}

fn credit_update(buf_alloc: u32, fwd_cnt: u32) -> Header {
    let mut h = pkt(OP_CREDIT_UPDATE, GP, HP);
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    h
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn device_stops_at_guest_credit_until_credit_update() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-credit");
    let mut host = connect(&mut rig, 8);
    host.write_all(b"0123456789abcdefghij").unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        let (h, data) = rig.recv();
        assert_eq!(h.op, OP_RW);
        got.extend(data);
    }
    assert_eq!(got, b"01234567");
    assert!(rig.try_recv(QUIET).is_none(), "no credit left");

    rig.send(credit_update(8, 8), &[]);
    let (h, data) = rig.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"89abcdef"[..]));
    assert!(rig.try_recv(QUIET).is_none());
    // Credit also travels on any other packet (here a data packet).
    let mut rw = pkt(OP_RW, GP, HP);
    rw.buf_alloc = 8;
    rw.fwd_cnt = 16;
    rig.send(rw, b"!");
    let (h, data) = rig.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"ghij"[..]));
    let mut b = [0u8; 1];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"!");
}

#[test]
fn bulk_host_to_guest_respects_credit_and_keeps_bytes() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-bulk-in");
    const BUF: u32 = 32 << 10;
    let mut host = connect(&mut rig, BUF);
    let data = pattern(1 << 20);
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        host.write_all(&sent).unwrap();
        host
    });
    let mut got = Vec::new();
    let mut fwd_cnt = 0u32;
    while got.len() < data.len() {
        let (h, payload) = rig.recv();
        assert_eq!(h.op, OP_RW);
        assert!(!payload.is_empty() && payload.len() <= RX_BUF_LEN as usize - HDR_LEN);
        got.extend(payload);
        let in_flight = got.len() as u32 - fwd_cnt;
        assert!(in_flight <= BUF, "device exceeded the guest's credit");
        // The guest application reads in bursts and reports them.
        if in_flight >= BUF / 2 || got.len() == data.len() {
            fwd_cnt = got.len() as u32;
            rig.send(credit_update(BUF, fwd_cnt), &[]);
        }
    }
    assert!(got == data, "bytes differ");
    drop(writer.join().unwrap());
    let (h, _) = rig.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
}

#[test]
fn bulk_guest_to_host_within_our_credit_keeps_bytes() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-bulk-out");
    let host = connect(&mut rig, 256 << 10);
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match host.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    // A slow reader, so that the device has to queue.
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    });
    let data = pattern(3 << 20);
    let (mut peer_buf, mut peer_fwd) = (BUF_ALLOC, 0u32);
    let mut sent = 0usize;
    let mut updates = 0;
    while sent < data.len() {
        let credit = peer_buf - (sent as u32 - peer_fwd);
        if credit == 0 {
            let (h, _) = rig.recv();
            assert_eq!(h.op, OP_CREDIT_UPDATE);
            (peer_buf, peer_fwd) = (h.buf_alloc, h.fwd_cnt);
            updates += 1;
            continue;
        }
        let n = (credit as usize).min(MAX_PAYLOAD).min(data.len() - sent);
        rig.send(pkt(OP_RW, GP, HP), &data[sent..sent + n]);
        sent += n;
        while let Some((h, _)) = rig.try_recv(Duration::ZERO) {
            assert_eq!(h.op, OP_CREDIT_UPDATE);
            (peer_buf, peer_fwd) = (h.buf_alloc, h.fwd_cnt);
            updates += 1;
        }
    }
    // 3 MiB through a 256 KiB window: the device reported consumption.
    assert!(
        updates >= (3 << 20) / (256 << 10) - 1,
        "{updates} credit updates"
    );
    let mut sd = pkt(OP_SHUTDOWN, GP, HP);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(sd, &[]);
    loop {
        let (h, _) = rig.recv();
        if h.op == OP_RST {
            break;
        }
        assert_eq!(h.op, OP_CREDIT_UPDATE);
    }
    let all = reader.join().unwrap();
    assert_eq!(all.len(), data.len());
    assert!(all == data, "bytes differ");
}

#[test]
fn guest_ignoring_our_credit_is_reset() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem, "vsock-overrun");
    // The host side never reads.
    let mut host = connect(&mut rig, 4096);
    let chunk = vec![0x5au8; MAX_PAYLOAD];
    let mut reset = false;
    for _ in 0..32 {
        rig.send(pkt(OP_RW, GP, HP), &chunk);
        while let Some((h, _)) = rig.try_recv(Duration::from_millis(20)) {
            reset |= h.op == OP_RST;
        }
        if reset {
            break;
        }
    }
    assert!(reset, "overrunning the advertised buffer must reset");
    assert!(closed(&mut host));
    assert_eq!(rig.dev.connections(), 0);
}
