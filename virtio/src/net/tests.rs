//! Device tests over a SOCK_SEQPACKET socketpair standing in for the TAP:
//! one end is the device's back-end, the other plays the host network.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::*;
use crate::test_utils::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

pub(super) type Vq<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

pub(super) const RX_BUF: u64 = 0x40_0000;
pub(super) const TX_BUF: u64 = 0x80_0000;

/// One end of a socketpair as a frame back-end.
pub(super) struct Seqpacket(pub OwnedFd);

impl AsRawFd for Seqpacket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for Seqpacket {
    fn name(&self) -> &str {
        "seqpacket"
    }
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        seq_send(&self.0, frame)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        seq_recv(&self.0, buf)
    }
}

pub(super) fn seq_send(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: valid buffer and socket.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn seq_recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid buffer and socket; MSG_TRUNC reports the real length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

pub(super) fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A frame of `len` bytes with a recognisable pattern.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

pub(super) struct Rig<'a> {
    pub el: EventLoop,
    pub net: Net,
    pub irq: Arc<Interrupt>,
    pub rx: Vq<'a>,
    pub tx: Vq<'a>,
    pub rx_evt: EventFd,
    pub tx_evt: EventFd,
    /// The "host network" end of the socketpair.
    pub host: OwnedFd,
}

fn rig<'a>(mem: &'a GuestMemoryMmap, name: &str) -> Rig<'a> {
    rig_limited(mem, name, NetLimits::default())
}

pub(super) fn rig_limited<'a>(mem: &'a GuestMemoryMmap, name: &str, limits: NetLimits) -> Rig<'a> {
    let el = EventLoop::new(name).unwrap();
    let (dev_end, host) = socketpair();
    let net = Net::with_backend(Box::new(Seqpacket(dev_end)), None, el.clone())
        .unwrap()
        .with_limits(limits);
    let mut r = Rig {
        el,
        net,
        irq: Arc::new(Interrupt::new().unwrap()),
        rx: MockSplitQueue::create(mem, GuestAddress(0), QSIZE),
        tx: MockSplitQueue::create(mem, GuestAddress(0x10_0000), QSIZE),
        rx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        tx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        host,
    };
    activate(&mut r, mem);
    r
}

pub(super) fn activate(r: &mut Rig<'_>, mem: &GuestMemoryMmap) {
    r.net
        .activate(
            mem.clone(),
            r.irq.clone(),
            vec![
                (r.rx.create_queue().unwrap(), r.rx_evt.try_clone().unwrap()),
                (r.tx.create_queue().unwrap(), r.tx_evt.try_clone().unwrap()),
            ],
        )
        .unwrap();
}

/// Posts a one-buffer receive chain of `len` bytes at descriptor `idx`.
pub(super) fn post_rx(r: &Rig<'_>, idx: u16, len: u32) {
    write_chain(
        &r.rx,
        idx,
        &[(RX_BUF + u64::from(idx) * 0x1_0000, len, true)],
    );
    publish(&r.rx, &[idx]);
    r.rx_evt.write(1).unwrap();
}

/// Header and frame delivered in receive chain `idx` with `len` bytes.
pub(super) fn rx_data(mem: &GuestMemoryMmap, idx: u32, len: u32) -> (Vec<u8>, Vec<u8>) {
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(RX_BUF + u64::from(idx) * 0x1_0000))
        .unwrap();
    let frame = buf.split_off(NET_HDR_LEN);
    (buf, frame)
}

/// Puts `data` (header included) at descriptor `idx` of the transmit queue,
/// split into buffers of the given lengths, and notifies.
pub(super) fn send_tx(r: &Rig<'_>, mem: &GuestMemoryMmap, idx: u16, data: &[u8], split: &[usize]) {
    let base = TX_BUF + u64::from(idx) * 0x2_0000;
    mem.write_slice(data, GuestAddress(base)).unwrap();
    let mut bufs = Vec::new();
    let mut off = 0usize;
    for &len in split {
        bufs.push((base + off as u64, len as u32, false));
        off += len;
    }
    write_chain(&r.tx, idx, &bufs);
    publish(&r.tx, &[idx]);
    r.tx_evt.write(1).unwrap();
}

pub(super) fn host_recv(r: &Rig<'_>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_TX_CHAIN_LEN];
    let n = seq_recv(&r.host, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn tx_frame_reaches_the_backend_without_header() {
    let mem = guest_memory();
    let r = rig(&mem, "net-tx");
    let f = frame(1514, 3);
    let mut data = vec![0xaa; NET_HDR_LEN];
    data.extend_from_slice(&f);
    // Header and frame split at an odd place, across three buffers.
    send_tx(&r, &mem, 0, &data, &[5, 100, data.len() - 105]);
    assert!(wait_for(|| r.tx.used().idx().load() == 1));
    assert_eq!(used_elem(&r.tx, 0), (0, 0));
    assert_eq!(host_recv(&r).unwrap(), f);
    assert_ne!(r.irq.status() & crate::VIRTIO_MMIO_INT_VRING, 0);
    // Largest allowed frame still goes through whole.
    let big = frame(MAX_FRAME_LEN, 9);
    let mut data = vec![0; NET_HDR_LEN];
    data.extend_from_slice(&big);
    send_tx(&r, &mem, 4, &data, &[NET_HDR_LEN, big.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 2));
    assert_eq!(host_recv(&r).unwrap(), big);
    r.el.stop();
}

#[test]
fn tx_limit_holds_frames_back_until_its_timer_fires() {
    use crate::rate_limiter::BucketConfig;
    for (refill_time_ms, delivered) in [(3_600_000, false), (20, true)] {
        let mem = guest_memory();
        let ops = BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms,
        };
        let limit = NetLimits {
            tx: crate::rate_limiter::RateLimitConfig {
                ops,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = rig_limited(&mem, "net-tx-limit", limit);
        let mut data = vec![0; NET_HDR_LEN];
        data.extend_from_slice(&frame(60, 1));
        send_tx(&r, &mem, 0, &data, &[data.len()]);
        assert!(wait_for(|| r.tx.used().idx().load() == 1));
        send_tx(&r, &mem, 4, &data, &[data.len()]);
        if delivered {
            // The timer, not another kick, lets the second frame out.
            assert!(wait_for(|| r.tx.used().idx().load() == 2));
            assert!(host_recv(&r).is_some() && host_recv(&r).is_some());
        } else {
            // Kicks do not get past an empty bucket.
            r.tx_evt.write(1).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(r.tx.used().idx().load(), 1);
            assert!(host_recv(&r).is_some());
            assert!(host_recv(&r).is_none());
        }
        r.el.stop();
    }
}

#[test]
fn rx_frame_gets_zeroed_header_with_one_buffer() {
    let mem = guest_memory();
    let r = rig(&mem, "net-rx");
    // Two-buffer chain: header split from the frame, as Linux may post.
    write_chain(
        &r.rx,
        0,
        &[
            (RX_BUF, NET_HDR_LEN as u32, true),
            (RX_BUF + 12, 1514, true),
        ],
    );
    publish(&r.rx, &[0]);
    r.rx_evt.write(1).unwrap();
    let f = frame(600, 1);
    seq_send(&r.host, &f).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    assert_eq!(used_elem(&r.rx, 0), (0, (NET_HDR_LEN + 600) as u32));
    let (hdr, got) = rx_data(&mem, 0, (NET_HDR_LEN + 600) as u32);
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got, f);
    assert_ne!(r.irq.status() & crate::VIRTIO_MMIO_INT_VRING, 0);
    r.el.stop();
}

#[test]
fn rx_waits_in_the_kernel_until_buffers_are_posted() {
    let mem = guest_memory();
    let r = rig(&mem, "net-rx-wait");
    // Queue handlers plus the back-end watch.
    assert_eq!(r.el.registrations(), 3);
    let f1 = frame(100, 1);
    let f2 = frame(200, 2);
    seq_send(&r.host, &f1).unwrap();
    seq_send(&r.host, &f2).unwrap();
    // No buffers: the back-end stops being watched (no busy loop) and the
    // frames are left in the socket.
    assert!(wait_for(|| r.el.registrations() == 2));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.rx.used().idx().load(), 0);
    assert_eq!(r.el.registrations(), 2);
    post_rx(&r, 0, 1526);
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    assert_eq!(rx_data(&mem, 0, 112).1, f1);
    // Out of buffers again with f2 pending; one more buffer gets it.
    assert!(wait_for(|| r.el.registrations() == 2));
    post_rx(&r, 1, 1526);
    assert!(wait_for(|| r.rx.used().idx().load() == 2));
    assert_eq!(used_elem(&r.rx, 1), (1, 212));
    assert_eq!(rx_data(&mem, 1, 212).1, f2);
    r.el.stop();
}

#[test]
fn rx_buffer_kept_when_no_frame_is_waiting() {
    let mem = guest_memory();
    let r = rig(&mem, "net-rx-keep");
    post_rx(&r, 0, 1526);
    post_rx(&r, 1, 1526);
    // Watching (buffers available, nothing to read): no chain completed.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(r.rx.used().idx().load(), 0);
    assert_eq!(r.el.registrations(), 3);
    seq_send(&r.host, &frame(64, 0)).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    // Chain 1 was taken, found no frame and is kept: still watching.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(r.el.registrations(), 3);
    assert_eq!(r.rx.used().idx().load(), 1);
    seq_send(&r.host, &frame(64, 1)).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 2));
    assert_eq!(used_elem(&r.rx, 1), (1, 76));
    assert_eq!(rx_data(&mem, 0, 76).1, frame(64, 0));
    assert_eq!(rx_data(&mem, 1, 76).1, frame(64, 1));
    // Now out of buffers: the next frame makes the device stop watching.
    seq_send(&r.host, &frame(64, 2)).unwrap();
    assert!(wait_for(|| r.el.registrations() == 2));
    r.el.stop();
}

#[test]
fn oversized_rx_frame_is_dropped_and_the_buffer_reused() {
    let mem = guest_memory();
    let r = rig(&mem, "net-rx-big");
    post_rx(&r, 0, 100);
    seq_send(&r.host, &frame(89, 1)).unwrap(); // 12 + 89 > 100
    seq_send(&r.host, &frame(MAX_FRAME_LEN + 1, 2)).unwrap(); // beyond any buffer
    seq_send(&r.host, &frame(88, 3)).unwrap(); // exactly fits
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    assert_eq!(used_elem(&r.rx, 0), (0, 100));
    assert_eq!(rx_data(&mem, 0, 100).1, frame(88, 3));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.rx.used().idx().load(), 1);
    r.el.stop();
}

#[test]
fn malformed_tx_chains_are_completed_without_sending() {
    let mem = guest_memory();
    let r = rig(&mem, "net-tx-bad");
    let good = frame(60, 5);
    let mut data = vec![0u8; NET_HDR_LEN];
    data.extend_from_slice(&good);
    // Header too short (and no frame at all).
    send_tx(&r, &mem, 0, &[0u8; 8], &[8]);
    // Header only: no Ethernet frame.
    send_tx(&r, &mem, 1, &[0u8; 12], &[12]);
    // A device-writable buffer in a transmit chain.
    write_chain(&r.tx, 2, &[(TX_BUF, 12, false), (TX_BUF + 0x100, 64, true)]);
    publish(&r.tx, &[2]);
    // More than MAX_TX_CHAIN_LEN bytes.
    write_chain(
        &r.tx,
        4,
        &[(TX_BUF, 40_000, false), (TX_BUF + 40_000, 40_000, false)],
    );
    publish(&r.tx, &[4]);
    // A buffer outside guest RAM.
    write_chain(&r.tx, 6, &[(MEM_SIZE - 16, 64, false)]);
    publish(&r.tx, &[6]);
    send_tx(&r, &mem, 7, &data, &[data.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 6));
    for (i, head) in [0u32, 1, 2, 4, 6, 7].iter().enumerate() {
        assert_eq!(used_elem(&r.tx, i as u16), (*head, 0));
    }
    assert_eq!(host_recv(&r).unwrap(), good, "only the good frame is sent");
    assert!(host_recv(&r).is_none());
    assert!(!r.irq.needs_reset());
    r.el.stop();
}

#[test]
fn unusable_rx_chains_complete_empty_and_broken_ring_needs_reset() {
    let mem = guest_memory();
    let r = rig(&mem, "net-rx-bad");
    // Too small for header plus Ethernet header.
    post_rx(&r, 0, 20);
    // Read-only.
    write_chain(&r.rx, 1, &[(RX_BUF, 1526, false)]);
    publish(&r.rx, &[1]);
    // Outside guest RAM.
    write_chain(&r.rx, 2, &[(MEM_SIZE - 100, 1526, true)]);
    publish(&r.rx, &[2]);
    post_rx(&r, 3, 1526);
    seq_send(&r.host, &frame(80, 4)).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 4));
    assert_eq!(used_elem(&r.rx, 0), (0, 0));
    assert_eq!(used_elem(&r.rx, 1), (1, 0));
    assert_eq!(used_elem(&r.rx, 2), (2, 0));
    assert_eq!(used_elem(&r.rx, 3), (3, 92));
    assert_eq!(rx_data(&mem, 3, 92).1, frame(80, 4));
    assert!(!r.irq.needs_reset());
    // A head index beyond the ring: the device gives up on its queues.
    publish(&r.rx, &[QSIZE + 1]);
    r.rx_evt.write(1).unwrap();
    seq_send(&r.host, &frame(80, 5)).unwrap();
    assert!(wait_for(|| r.irq.needs_reset()));
    // ...and stops watching the back-end.
    assert!(wait_for(|| r.el.registrations() == 2));
    r.el.stop();
}

#[test]
fn hung_up_backend_stops_being_watched_and_tx_still_completes() {
    let mem = guest_memory();
    let r = rig(&mem, "net-hangup");
    post_rx(&r, 0, 1526);
    assert_eq!(
        // SAFETY: plain syscall on our socket.
        unsafe { libc::shutdown(r.host.as_raw_fd(), libc::SHUT_RDWR) },
        0
    );
    // EOF: the device stops watching (level-triggered HUP would spin).
    assert!(wait_for(|| r.el.registrations() == 2));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(r.el.registrations(), 2);
    assert_eq!(r.rx.used().idx().load(), 0, "buffer kept, not completed");
    // A guest kick retries once, then stops again.
    r.rx_evt.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(r.el.registrations(), 2);
    let mut data = vec![0u8; NET_HDR_LEN];
    data.extend_from_slice(&frame(60, 0));
    send_tx(&r, &mem, 0, &data, &[data.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 1));
    assert_eq!(used_elem(&r.tx, 0), (0, 0));
    r.el.stop();
}

#[test]
fn reset_unregisters_keeps_backend_and_reactivates() {
    let mem = guest_memory();
    let mut r = rig(&mem, "net-reset");
    assert!(r.net.is_active());
    r.net.ack_features(u64::MAX);
    r.net.reset();
    assert!(!r.net.is_active());
    assert_eq!(r.el.registrations(), 0);
    // A frame arriving while reset stays in the back-end.
    let f = frame(300, 7);
    seq_send(&r.host, &f).unwrap();
    // Fresh rings, as a driver would set up after reset.
    for q in [&r.rx, &r.tx] {
        q.avail().idx().store(0);
        q.used().idx().store(0);
    }
    activate(&mut r, &mem);
    // Both queues are registered; the tap watch may already have removed
    // itself (a frame is pending but no rx buffer is posted yet), so it is
    // not counted here: the delivery below proves it comes back.
    assert!(r.el.registrations() >= 2);
    post_rx(&r, 0, 1526);
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    assert_eq!(rx_data(&mem, 0, 312).1, f);
    // Activating twice is refused.
    assert!(matches!(
        r.net.activate(mem.clone(), r.irq.clone(), Vec::new()),
        Err(ActivateError::AlreadyActive)
    ));
    drop(r.net);
    assert_eq!(r.el.registrations(), 0);
    r.el.stop();
}

#[test]
fn wrong_queue_count_is_refused() {
    let el = EventLoop::new("net-qcount").unwrap();
    let (a, _b) = socketpair();
    let mut net = Net::with_backend(Box::new(Seqpacket(a)), None, el.clone()).unwrap();
    let mem = guest_memory();
    let vq: Vq<'_> = MockSplitQueue::new(&mem, QSIZE);
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        net.activate(
            mem.clone(),
            Arc::new(Interrupt::new().unwrap()),
            vec![(vq.create_queue().unwrap(), evt)]
        ),
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    assert_eq!(el.registrations(), 0);
    el.stop();
}

#[test]
fn features_and_config_space() {
    let el = EventLoop::new("net-config").unwrap();
    let (a, _b) = socketpair();
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let mut net = Net::with_backend(Box::new(Seqpacket(a)), Some(mac), el.clone()).unwrap();
    assert_eq!(net.device_type(), crate::TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.features();
    for bit in [
        crate::VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    // No offloads, no mergeable buffers, no control queue, no multiqueue.
    for bit in [0u32, 1, 7, 11, 15, 17, 22] {
        assert_eq!(f & (1 << bit), 0, "bit {bit}");
    }
    let mut cfg = [0xffu8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &mac);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
    assert_eq!(&cfg[10..], &[0, 0]);
    // Partial reads at an offset (a driver may read the MAC bytewise).
    let mut b = [0u8; 1];
    net.read_config(5, &mut b);
    assert_eq!(b[0], 0x56);
    // Writes are ignored.
    net.write_config(0, &[0; 6]);
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &mac);
    net.ack_features(1 << VIRTIO_NET_F_MAC | 1 << 0);
    assert_eq!(net.acked_features, 1 << VIRTIO_NET_F_MAC);
    assert_eq!(net.mac(), mac);
    assert_eq!(net.if_name(), "seqpacket");
    // A multicast MAC is refused.
    let (c, _d) = socketpair();
    let bad = Net::with_backend(Box::new(Seqpacket(c)), Some([1, 0, 0, 0, 0, 1]), el.clone());
    assert!(matches!(bad, Err(NetError::InvalidMac { .. })));
    el.stop();
}

#[test]
fn generated_mac_is_local_unicast_and_stable() {
    for name in ["tap0", "tap1", "", "a-very-long-nam"] {
        let m = derived_mac(name);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(m, derived_mac(name));
        assert!(check_mac(&m).is_ok());
    }
    assert_ne!(derived_mac("tap0"), derived_mac("tap1"));
    let el = EventLoop::new("net-genmac").unwrap();
    let (a, _b) = socketpair();
    let net = Net::with_backend(Box::new(Seqpacket(a)), None, el.clone()).unwrap();
    assert_eq!(net.mac(), derived_mac("seqpacket"));
    let mut cfg = [0u8; 6];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, net.mac());
    el.stop();
}

#[test]
fn parse_mac_accepts_only_unicast_colon_hex() {
    assert_eq!(
        parse_mac("52:54:00:12:34:56").unwrap(),
        [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    );
    assert_eq!(
        parse_mac("02:AB:cd:EF:00:ff").unwrap(),
        [0x02, 0xab, 0xcd, 0xef, 0x00, 0xff]
    );
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5",
        "52:54:00:12:34:567",
        "52-54-00-12-34-56",
        "52:54:00:12:34:5g",
        "52:54:00:12:34:+5",
        "52:54:00:12:34:56:",
        " 52:54:00:12:34:56",
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        let e = parse_mac(bad).unwrap_err();
        assert!(
            e.to_string().contains(&format!("'{bad}'")),
            "{bad}: error names the value: {e}"
        );
    }
    assert!(parse_mac("01:00:5e:00:00:01")
        .unwrap_err()
        .to_string()
        .contains("multicast"));
}

#[test]
fn empty_slot_gets_a_backend_then_loses_it() {
    let mem = guest_memory();
    let el = EventLoop::new("net-hotplug").unwrap();
    let net = Net::new_empty("net-slot0", el.clone()).unwrap();
    assert!(net.is_empty());
    let mut cfg = [0u8; CONFIG_LEN];
    net.read_config(0, &mut cfg);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 0, "link down");
    assert!(net.features() & (1 << VIRTIO_NET_F_STATUS) != 0);
    let (dev_end, host) = socketpair();
    let mut r = Rig {
        el: el.clone(),
        net,
        irq: Arc::new(Interrupt::new().unwrap()),
        rx: MockSplitQueue::create(&mem, GuestAddress(0), QSIZE),
        tx: MockSplitQueue::create(&mem, GuestAddress(0x10_0000), QSIZE),
        rx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        tx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        host,
    };
    activate(&mut r, &mem);
    // Nothing flows while empty: a transmitted frame is completed and dropped.
    let mut data = vec![0; NET_HDR_LEN];
    data.extend_from_slice(&frame(60, 1));
    send_tx(&r, &mem, 0, &data, &[data.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 1));
    assert!(host_recv(&r).is_none());
    let generation = r.irq.config_generation();

    let mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
    r.net
        .attach(
            Arc::new(Seqpacket(dev_end)),
            Some(mac),
            NetLimits::default(),
        )
        .unwrap();
    assert!(!r.net.is_empty());
    assert!(matches!(
        r.net.attach(
            Arc::new(Unplugged::new().unwrap()),
            None,
            NetLimits::default()
        ),
        Err(NetError::SlotBusy)
    ));
    r.net.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &mac);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(r.irq.config_generation(), generation + 1);
    assert_ne!(r.irq.status() & crate::VIRTIO_MMIO_INT_CONFIG, 0);
    // Frames flow both ways through the plugged back-end.
    send_tx(&r, &mem, 1, &data, &[data.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 2));
    assert_eq!(host_recv(&r).unwrap(), frame(60, 1));
    post_rx(&r, 0, 1526);
    seq_send(&r.host, &frame(80, 4)).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    assert_eq!(rx_data(&mem, 0, 92).1, frame(80, 4));

    let io = r.net.detach().unwrap();
    assert_eq!(io.name(), "seqpacket");
    // Handed back whole: the device and its worker hold no reference.
    assert_eq!(Arc::strong_count(&io), 1);
    assert!(matches!(r.net.detach(), Err(NetError::SlotEmpty)));
    r.net.read_config(0, &mut cfg);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 0);
    assert_eq!(r.irq.config_generation(), generation + 2);
    // Dropping it closes it: the host end sees the peer gone.
    drop(io);
    let mut buf = [0u8; 16];
    assert!(wait_for(|| matches!(seq_recv(&r.host, &mut buf), Ok(0))));
    el.stop();
}
