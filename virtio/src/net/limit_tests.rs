//! Receive limits and limits changed on an active device (hotplug), over
//! the socketpair rig of `tests.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::*;
use super::*;
use crate::rate_limiter::{BucketConfig, RateLimitConfig};
use crate::test_utils::*;
use virtio_queue::mock::MockSplitQueue;

/// `size` frames per `refill_time_ms`, no burst.
fn ops(size: u64, refill_time_ms: u64) -> RateLimitConfig {
    RateLimitConfig {
        ops: BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        },
        ..Default::default()
    }
}

fn rx_only(cfg: RateLimitConfig) -> NetLimits {
    NetLimits {
        rx: cfg,
        ..Default::default()
    }
}

/// Registrations of an active rig: two queues, the back-end watch while
/// watching, and one per timer.
const QUEUES: usize = 2;

#[test]
fn rx_limit_leaves_frames_in_the_kernel_and_loses_none() {
    let mem = guest_memory();
    // One frame per hour: the second frame is read and held, the third is
    // left in the socket.
    let r = rig_limited(&mem, "net-rx-limit", rx_only(ops(1, 3_600_000)));
    for i in 0..4 {
        post_rx(&r, i, 1526);
    }
    for seed in 0..3 {
        seq_send(&r.host, &frame(100 + usize::from(seed), seed)).unwrap();
    }
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    // Held back: the back-end is not watched (no busy loop), only the
    // queues and the timer are.
    assert!(wait_for(|| r.el.registrations() == QUEUES + 1));
    r.rx_evt.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.rx.used().idx().load(), 1, "kicks do not pass the limit");
    assert_eq!(r.el.registrations(), QUEUES + 1);
    // Lifting the limit delivers the held frame and the one behind it, in
    // order: nothing was lost.
    let mut r = r;
    r.net.set_limits(NetLimits::default()).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 3));
    for i in 0..3u16 {
        let len = 100 + u32::from(i);
        assert_eq!(used_elem(&r.rx, i), (u32::from(i), len + 12));
        assert_eq!(
            rx_data(&mem, u32::from(i), len + 12).1,
            frame(len as usize, i as u8)
        );
    }
    r.el.stop();
}

#[test]
fn rx_limit_timer_delivers_held_frames_at_the_rate() {
    let mem = guest_memory();
    // 1 frame per 20 ms, a full bucket at start: 4 frames need 60 ms.
    let r = rig_limited(&mem, "net-rx-rate", rx_only(ops(1, 20)));
    for i in 0..4 {
        post_rx(&r, i, 1526);
    }
    let t0 = Instant::now();
    for seed in 0..4 {
        seq_send(&r.host, &frame(64, seed)).unwrap();
    }
    // No kick: the timer alone moves them.
    assert!(wait_for(|| r.rx.used().idx().load() == 4));
    assert!(
        t0.elapsed() >= Duration::from_millis(58),
        "{:?}",
        t0.elapsed()
    );
    for i in 0..4u16 {
        assert_eq!(rx_data(&mem, u32::from(i), 76).1, frame(64, i as u8));
    }
    // Out of buffers: not watching; a new buffer brings the watch back
    // (with the timer, no longer armed, still registered).
    assert!(wait_for(|| r.el.registrations() == QUEUES + 1));
    post_rx(&r, 4, 1526);
    assert!(wait_for(|| r.el.registrations() == QUEUES + 2));
    r.el.stop();
}

#[test]
fn rx_bandwidth_limit_holds_a_frame_larger_than_what_is_left() {
    let mem = guest_memory();
    let limits = rx_only(RateLimitConfig {
        bandwidth: BucketConfig {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 3_600_000,
        },
        ..Default::default()
    });
    let mut r = rig_limited(&mem, "net-rx-bps", limits);
    post_rx(&r, 0, 1526);
    post_rx(&r, 1, 1526);
    seq_send(&r.host, &frame(600, 1)).unwrap();
    seq_send(&r.host, &frame(600, 2)).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.rx.used().idx().load(), 1);
    // New limits start with full buckets: the held frame goes.
    r.net.set_limits(limits).unwrap();
    assert!(wait_for(|| r.rx.used().idx().load() == 2));
    assert_eq!(rx_data(&mem, 1, 612).1, frame(600, 2));
    r.el.stop();
}

#[test]
fn limits_set_on_an_active_device_create_each_timer_once() {
    let mem = guest_memory();
    let mut r = rig_limited(&mem, "net-set-limits", NetLimits::default());
    // Unlimited: no timer (queues and the back-end watch).
    assert_eq!(r.el.registrations(), QUEUES + 1);
    let both = NetLimits {
        rx: ops(1, 3_600_000),
        tx: ops(1, 3_600_000),
    };
    for _ in 0..5 {
        r.net.set_limits(both).unwrap();
        assert_eq!(r.el.registrations(), QUEUES + 3);
        assert_eq!(r.net.limits(), both);
        r.net.set_limits(NetLimits::default()).unwrap();
        assert_eq!(r.el.registrations(), QUEUES + 3);
    }
    // The limits bite once set: one frame out, the next held.
    r.net.set_limits(both).unwrap();
    let mut data = vec![0; NET_HDR_LEN];
    data.extend_from_slice(&frame(60, 1));
    send_tx(&r, &mem, 0, &data, &[data.len()]);
    send_tx(&r, &mem, 2, &data, &[data.len()]);
    assert!(wait_for(|| r.tx.used().idx().load() == 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.tx.used().idx().load(), 1);
    r.net.reset();
    assert_eq!(r.el.registrations(), 0, "timers go with the reset");
    r.el.stop();
}

#[test]
fn a_slot_takes_the_limits_of_each_backend_plugged_in() {
    let mem = guest_memory();
    let el = EventLoop::new("net-slot-limits").unwrap();
    let (_unused, host) = socketpair();
    let mut r = Rig {
        el: el.clone(),
        net: Net::new_empty("net-slot0", el.clone()).unwrap(),
        irq: Arc::new(Interrupt::new().unwrap()),
        rx: MockSplitQueue::create(&mem, vm_memory::GuestAddress(0), QSIZE),
        tx: MockSplitQueue::create(&mem, vm_memory::GuestAddress(0x10_0000), QSIZE),
        rx_evt: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        tx_evt: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        host,
    };
    activate(&mut r, &mem);
    let limited = rx_only(ops(1, 3_600_000));
    for round in 0..4 {
        let (dev_end, host) = socketpair();
        r.host = host;
        r.net
            .attach(Arc::new(Seqpacket(dev_end)), None, limited)
            .unwrap();
        assert_eq!(r.net.limits(), limited);
        // One frame passes, the next is held.
        post_rx(&r, 2 * round, 1526);
        post_rx(&r, 2 * round + 1, 1526);
        seq_send(&r.host, &frame(64, 1)).unwrap();
        seq_send(&r.host, &frame(64, 2)).unwrap();
        let done = round * 2 + 1;
        assert!(wait_for(|| r.rx.used().idx().load() == done));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(r.rx.used().idx().load(), done);
        // Held: the queues and one timer, however many rounds went by.
        assert!(wait_for(|| el.registrations() == QUEUES + 1));
        let io = r.net.detach().unwrap();
        assert_eq!(r.net.limits(), NetLimits::default());
        // The held frame belonged to the unplugged network: not delivered
        // (its chain is kept for the next back-end), and the device keeps
        // no reference to the back-end.
        assert_eq!(Arc::strong_count(&io), 1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(r.rx.used().idx().load(), done);
        // Give the kept chain a frame so the next round starts clean.
        let (dev_end, host) = socketpair();
        r.net
            .attach(Arc::new(Seqpacket(dev_end)), None, NetLimits::default())
            .unwrap();
        seq_send(&host, &frame(64, 3)).unwrap();
        assert!(wait_for(|| r.rx.used().idx().load() == done + 1));
        r.net.detach().unwrap();
    }
    // Re-plugging reused the timer.
    assert!(el.registrations() <= QUEUES + 2);
    el.stop();
}
