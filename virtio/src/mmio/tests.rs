use super::*;
use crate::test_utils::*;
use crate::ActivateError;
use virtio_queue::mock::MockSplitQueue;

const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << 3) | 1;

/// (size, ready, desc, avail, used) of each queue handed to activate.
type QueueSnapshot = (u16, bool, u64, u64, u64);

#[derive(Default)]
struct Record {
    acked: u64,
    activations: Vec<Vec<QueueSnapshot>>,
    resets: usize,
    config: [u8; 8],
    fail_activate: bool,
}

struct FakeDevice(Arc<Mutex<Record>>);

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QSIZE, 8]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.0.lock().unwrap().config, offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut r = self.0.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = r.config.get_mut(offset as usize + i) {
                *c = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        let mut r = self.0.lock().unwrap();
        if r.fail_activate {
            return Err(ActivateError::QueueNotReady(1));
        }
        r.activations.push(
            queues
                .iter()
                .map(|(q, _)| {
                    (
                        q.size(),
                        q.ready(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                    )
                })
                .collect(),
        );
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Record>>, GuestMemoryMmap) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let mem = guest_memory();
    let t = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(FakeDevice(rec.clone())))).unwrap();
    (t, rec, mem)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the device up to FEATURES_OK with the given features.
fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, features as u32);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    wr(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    rd(t, REG_STATUS) & STATUS_FEATURES_OK != 0
}

fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
    wr(t, REG_QUEUE_SEL, index);
    wr(t, REG_QUEUE_NUM, size);
    wr(t, REG_QUEUE_DESC_LOW, desc as u32);
    wr(t, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    wr(t, REG_QUEUE_DRIVER_LOW, avail as u32);
    wr(t, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    wr(t, REG_QUEUE_DEVICE_LOW, used as u32);
    wr(t, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    wr(t, REG_QUEUE_READY, 1);
}

fn setup_valid_queues(t: &mut MmioTransport, mem: &GuestMemoryMmap) {
    let q0 = MockSplitQueue::create(mem, GuestAddress(0x10000), QSIZE);
    let q1 = MockSplitQueue::create(mem, GuestAddress(0x20000), 8);
    for (i, q, n) in [(0, &q0, QSIZE), (1, &q1, 8)] {
        setup_queue(
            t,
            i,
            n.into(),
            q.desc_table_addr().0,
            q.avail_addr().0,
            q.used_addr().0,
        );
    }
}

const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _, _) = transport();
    assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut t, REG_VERSION), 2);
    assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
    assert_eq!(rd(&mut t, REG_VENDOR_ID), u32::from_le_bytes(*b"AVRT"));
    wr(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
    wr(&mut t, REG_QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0, "absent queue");
    assert_eq!(rd(&mut t, REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(t.queue_evts().len(), 2);
}

#[test]
fn device_features_are_windowed() {
    let (mut t, _, _) = transport();
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), FEATURES as u32);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
}

#[test]
fn subset_of_features_is_accepted() {
    let (mut t, rec, _) = transport();
    let want = (1 << VIRTIO_F_VERSION_1) | 1;
    assert!(negotiate(&mut t, want));
    assert_eq!(rec.lock().unwrap().acked, want);
}

#[test]
fn unknown_features_are_refused() {
    let (mut t, rec, _) = transport();
    assert!(!negotiate(&mut t, (1 << VIRTIO_F_VERSION_1) | (1 << 5)));
    assert_eq!(rec.lock().unwrap().acked, 0, "device never saw them");
    // A high word beyond 1 with bits set also poisons negotiation.
    let (mut t, _, _) = transport();
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, REG_DRIVER_FEATURES, 1);
    wr(&mut t, REG_DRIVER_FEATURES_SEL, 2);
    wr(&mut t, REG_DRIVER_FEATURES, 1);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn legacy_driver_without_version_1_is_refused() {
    let (mut t, _, _) = transport();
    assert!(!negotiate(&mut t, 1));
}

#[test]
fn status_state_machine_enforces_order() {
    let (mut t, rec, mem) = transport();
    // DRIVER without ACKNOWLEDGE is not taken.
    wr(&mut t, REG_STATUS, STATUS_DRIVER);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    // DRIVER_OK before FEATURES_OK is not taken.
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert!(rec.lock().unwrap().activations.is_empty());
    // Clearing a bit (other than by writing 0) is ignored.
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // Features written after FEATURES_OK are ignored.
    assert!(negotiate(&mut t, 1 << VIRTIO_F_VERSION_1));
    wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    wr(&mut t, REG_DRIVER_FEATURES, 1 << 3);
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_STATUS, ALL_OK);
    assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);
    assert!(t.is_activated());
    assert_eq!(rec.lock().unwrap().acked, 1 << VIRTIO_F_VERSION_1);
}

#[test]
fn driver_ok_activates_with_the_configured_queues() {
    let (mut t, rec, mem) = transport();
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
    wr(&mut t, REG_STATUS, ALL_OK);
    let r = rec.lock().unwrap();
    assert_eq!(r.activations.len(), 1);
    let q = &r.activations[0];
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x10000), QSIZE);
    assert_eq!(
        q[0],
        (QSIZE, true, 0x10000, q0.avail_addr().0, q0.used_addr().0)
    );
    assert_eq!(q[1].0, 8);
    drop(r);
    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, REG_QUEUE_SEL, 0);
    wr(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
}

#[test]
fn queue_outside_memory_sets_needs_reset() {
    let (mut t, rec, _) = transport();
    assert!(negotiate(&mut t, FEATURES));
    setup_queue(&mut t, 0, QSIZE.into(), MEM_SIZE - 16, 0x1000, 0x2000);
    wr(&mut t, REG_STATUS, ALL_OK);
    assert!(rec.lock().unwrap().activations.is_empty());
    assert_eq!(rd(&mut t, REG_STATUS), ALL_OK | STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(
        rd(&mut t, REG_INTERRUPT_STATUS),
        crate::VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), 1);
    assert_eq!(t.interrupt_evt().read().unwrap(), 1);
    // A reset brings the device back.
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
}

#[test]
fn queue_beyond_4g_and_bad_sizes_set_needs_reset() {
    let (mut t, rec, mem) = transport();
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_QUEUE_SEL, 0);
    wr(&mut t, REG_QUEUE_DEVICE_HIGH, 0xffff_ffff);
    wr(&mut t, REG_STATUS, ALL_OK);
    assert!(rec.lock().unwrap().activations.is_empty());
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);

    for bad_size in [3u32, 0, 32, 0x1_0010] {
        let (mut t, rec, mem) = transport();
        assert!(negotiate(&mut t, FEATURES));
        setup_valid_queues(&mut t, &mem);
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_NUM, bad_size);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert!(rec.lock().unwrap().activations.is_empty(), "{bad_size}");
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    let (mut t, _, mem) = transport();
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_QUEUE_SEL, 0);
    wr(&mut t, REG_QUEUE_DESC_LOW, 0x10008); // descriptor table needs 16-byte alignment
    wr(&mut t, REG_STATUS, ALL_OK);
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn failing_activation_sets_needs_reset() {
    let (mut t, rec, mem) = transport();
    rec.lock().unwrap().fail_activate = true;
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_STATUS, ALL_OK);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_clears_everything_and_resets_the_device() {
    let (mut t, rec, mem) = transport();
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_STATUS, ALL_OK);
    wr(&mut t, REG_QUEUE_NOTIFY, 0);
    t.interrupt().signal_used_queue();
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rec.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
    assert!(!t.is_activated());
    wr(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    assert!(t.queue_evts()[0].read().is_err(), "pending kick drained");
    // And it can be brought up again.
    assert!(negotiate(&mut t, FEATURES));
    setup_valid_queues(&mut t, &mem);
    wr(&mut t, REG_STATUS, ALL_OK);
    assert_eq!(rec.lock().unwrap().activations.len(), 2);
}

#[test]
fn queue_notify_signals_the_queue_eventfd() {
    let (mut t, _, _) = transport();
    wr(&mut t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    assert!(t.queue_evts()[0].read().is_err());
    wr(&mut t, REG_QUEUE_NOTIFY, 99); // ignored
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _, _) = transport();
    t.interrupt().signal_used_queue();
    t.interrupt().signal_config_change();
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 3);
    wr(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 2);
}

#[test]
fn only_32_bit_register_accesses_count() {
    let (mut t, _, _) = transport();
    let mut b = [0xffu8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(REG_MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    let mut b8 = [0xffu8; 8];
    t.read(REG_MAGIC, &mut b8);
    assert_eq!(b8, [0; 8]);
    t.write(REG_STATUS, &[1]);
    t.write(REG_STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
}

#[test]
fn config_space_any_width() {
    let (mut t, rec, _) = transport();
    t.write(CONFIG_SPACE_OFFSET + 1, &[0xaa, 0xbb]);
    assert_eq!(rec.lock().unwrap().config[1..3], [0xaa, 0xbb]);
    let mut b = [0u8; 1];
    t.read(CONFIG_SPACE_OFFSET + 2, &mut b);
    assert_eq!(b, [0xbb]);
    let mut b = [0xffu8; 4];
    t.read(MMIO_WINDOW_SIZE - 4, &mut b);
    assert_eq!(b, [0; 4], "beyond the device config reads zero");
}

#[test]
fn hostile_register_fuzz_never_panics() {
    let (mut t, _, _) = transport();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % 0x110) & !3;
        let v = (x >> 32) as u32;
        if x & 1 == 0 {
            wr(&mut t, off, v);
        } else {
            rd(&mut t, off);
        }
    }
}

#[test]
fn block_device_end_to_end_through_registers() {
    use crate::block::{Block, BlockConfig, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use util::event_loop::EventLoop;

    let dir = temp_dir("mmio-blk");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0x3cu8; 8192]).unwrap();
    let el = EventLoop::new("mmio-blk").unwrap();
    let blk = Block::new(
        BlockConfig {
            path,
            ..Default::default()
        },
        el.clone(),
    )
    .unwrap();
    let mem = guest_memory();
    let mut t = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(blk))).unwrap();
    assert_eq!(rd(&mut t, REG_DEVICE_ID), crate::TYPE_BLOCK);
    let mut cap = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);

    wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    let hi = rd(&mut t, REG_DEVICE_FEATURES);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    let lo = rd(&mut t, REG_DEVICE_FEATURES);
    assert!(negotiate(&mut t, (u64::from(hi) << 32) | u64::from(lo)));
    wr(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 256);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x10000), QSIZE);
    setup_queue(
        &mut t,
        0,
        QSIZE.into(),
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    wr(&mut t, REG_STATUS, ALL_OK);
    assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);

    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    hdr[8..16].copy_from_slice(&3u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
    write_chain(
        &vq,
        0,
        &[
            (0x10_0000, 16, false),
            (0x20_0000, 512, true),
            (0x30_0000, 1, true),
        ],
    );
    publish(&vq, &[0]);
    // No ioeventfd here: the QueueNotify write reaches the transport.
    wr(&mut t, REG_QUEUE_NOTIFY, 0);
    assert!(wait_for(|| vq.used().idx().load() == 1));
    assert_eq!(used_elem(&vq, 0), (0, 513));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x20_0000 + 511)).unwrap(),
        0x3c
    );
    assert!(wait_for(|| rd(&mut t, REG_INTERRUPT_STATUS) & 1 == 1));
    assert_eq!(t.interrupt_evt().read().unwrap(), 1);
    wr(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);

    // Reset unregisters the device from the loop (its queue and its
    // rate-limit timer).
    assert_eq!(el.registrations(), 2);
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(el.registrations(), 0);
    el.stop();
}

mod snapshot;
