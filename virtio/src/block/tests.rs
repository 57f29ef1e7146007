use std::os::unix::fs::FileExt;

use super::*;
use crate::test_utils::*;
use crate::QueueT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const IMG_SECTORS: u64 = 64;

type Vq<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

fn image(tag: &str, fill: impl Fn(usize) -> u8) -> PathBuf {
    let p = temp_dir(tag).join("disk.img");
    let data: Vec<u8> = (0..(IMG_SECTORS * 512) as usize).map(fill).collect();
    std::fs::write(&p, data).unwrap();
    p
}

struct Setup {
    el: EventLoop,
    blk: Block,
    irq: Arc<Interrupt>,
    evt: EventFd,
}

fn start(mem: &GuestMemoryMmap, vq: &Vq<'_>, config: BlockConfig) -> Setup {
    let el = EventLoop::new("blk-test").unwrap();
    let mut blk = Block::new(config, el.clone()).unwrap();
    blk.ack_features(blk.features());
    let irq = Arc::new(Interrupt::new().unwrap());
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let q: Queue = vq.create_queue().unwrap();
    blk.activate(
        mem.clone(),
        irq.clone(),
        vec![(q, evt.try_clone().unwrap())],
    )
    .unwrap();
    Setup { el, blk, irq, evt }
}

fn rw_config(path: PathBuf) -> BlockConfig {
    BlockConfig {
        path,
        read_only: false,
        direct: false,
        serial: Some("altovirt-disk-0".into()),
        rate_limit: Default::default(),
    }
}

fn header(mem: &GuestMemoryMmap, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Publishes chain `first` and waits until the device used it; returns
/// (status byte, used length).
fn submit(s: &Setup, mem: &GuestMemoryMmap, vq: &Vq<'_>, first: u16) -> (u8, u32) {
    let before = vq.used().idx().load();
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    publish(vq, &[first]);
    s.evt.write(1).unwrap();
    assert!(
        wait_for(|| vq.used().idx().load() != before),
        "request not completed"
    );
    let (id, len) = used_elem(vq, before);
    assert_eq!(id, u32::from(first));
    (mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
}

fn status_desc() -> (u64, u32, bool) {
    (STATUS, 1, true)
}

#[test]
fn write_then_read_round_trip_hits_the_file() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-rw", |_| 0);
    let s = start(&mem, &vq, rw_config(path.clone()));

    let payload: Vec<u8> = (0..1024).map(|i| (i * 7 % 251) as u8).collect();
    mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 2);
    // Data split over two descriptors.
    write_chain(
        &vq,
        0,
        &[
            (HDR, 16, false),
            (DATA, 512, false),
            (DATA + 512, 512, false),
            status_desc(),
        ],
    );
    assert_eq!(submit(&s, &mem, &vq, 0), (VIRTIO_BLK_S_OK, 1));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[1024..2048], &payload[..]);
    assert!(file[..1024].iter().all(|&b| b == 0));

    mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_IN, 2);
    write_chain(
        &vq,
        4,
        &[(HDR, 16, false), (DATA, 1024, true), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 4), (VIRTIO_BLK_S_OK, 1025));
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, payload);
    assert_ne!(s.irq.status() & crate::VIRTIO_MMIO_INT_VRING, 0);
    s.el.stop();
}

#[test]
fn reads_existing_content_and_status_inside_last_buffer() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-read", |i| (i / 512) as u8);
    let s = start(&mem, &vq, rw_config(path));
    header(&mem, VIRTIO_BLK_T_IN, 5);
    // Data and status share one writable buffer: status is its last byte.
    write_chain(&vq, 0, &[(HDR, 16, false), (DATA, 513, true)]);
    publish(&vq, &[0]);
    s.evt.write(1).unwrap();
    assert!(wait_for(|| vq.used().idx().load() == 1));
    let mut back = vec![0u8; 513];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back[..512].iter().all(|&b| b == 5));
    assert_eq!(back[512], VIRTIO_BLK_S_OK);
    s.el.stop();
}

#[test]
fn indirect_request_is_served() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-ind", |i| (i % 256) as u8);
    let s = start(&mem, &vq, rw_config(path));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let table = [
        SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT, 1),
        SplitDescriptor::new(DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(
            RawDescriptor::from(*d),
            GuestAddress(0x50_0000 + 16 * i as u64),
        )
        .unwrap();
    }
    let ind = SplitDescriptor::new(0x50_0000, 48, VRING_DESC_F_INDIRECT, 0);
    vq.desc_table().store(3, RawDescriptor::from(ind)).unwrap();
    assert_eq!(submit(&s, &mem, &vq, 3), (VIRTIO_BLK_S_OK, 513));
    let mut back = [0u8; 4];
    mem.read_slice(&mut back, GuestAddress(DATA + 252)).unwrap();
    assert_eq!(back, [252, 253, 254, 255]);
    s.el.stop();
}

#[test]
fn flush_get_id_and_unknown_type() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start(&mem, &vq, rw_config(image("blk-misc", |_| 0)));

    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    write_chain(&vq, 0, &[(HDR, 16, false), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_OK);

    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    write_chain(&vq, 2, &[(HDR, 16, false), (DATA, 20, true), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 2), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..15], b"altovirt-disk-0");
    assert_eq!(id[15..], [0; 5]);

    header(&mem, 0x1234, 0);
    write_chain(&vq, 5, &[(HDR, 16, false), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 5).0, VIRTIO_BLK_S_UNSUPP);
    s.el.stop();
}

#[test]
fn read_only_device_refuses_writes_without_touching_the_file() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-ro", |_| 0x11);
    let mut config = rw_config(path.clone());
    config.read_only = true;
    let s = start(&mem, &vq, config);
    assert_ne!(s.blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(s.blk.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

    mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 512, false), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_IOERR);
    header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    write_chain(
        &vq,
        3,
        &[(HDR, 16, false), (DATA, 16, false), status_desc()],
    );
    assert_ne!(submit(&s, &mem, &vq, 3).0, VIRTIO_BLK_S_OK);
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x11));
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    s.el.stop();
}

#[test]
fn out_of_range_and_odd_lengths_are_io_errors() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-range", |_| 0);
    let s = start(&mem, &vq, rw_config(path.clone()));
    let cases: [(u32, u64, u32); 4] = [
        (VIRTIO_BLK_T_IN, IMG_SECTORS, 512), // first sector past the end
        (VIRTIO_BLK_T_IN, IMG_SECTORS - 1, 1024), // straddles the end
        (VIRTIO_BLK_T_OUT, u64::MAX / 2, 512), // offset overflows
        (VIRTIO_BLK_T_OUT, 0, 100),          // not whole sectors
    ];
    for (i, (t, sector, len)) in cases.into_iter().enumerate() {
        header(&mem, t, sector);
        let first = (i * 3) as u16;
        let writable = t == VIRTIO_BLK_T_IN;
        write_chain(
            &vq,
            first,
            &[(HDR, 16, false), (DATA, len, writable), status_desc()],
        );
        assert_eq!(
            submit(&s, &mem, &vq, first).0,
            VIRTIO_BLK_S_IOERR,
            "case {i}"
        );
    }
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    assert!(!s.irq.needs_reset());
    s.el.stop();
}

#[test]
fn bad_buffers_get_io_errors_and_the_queue_keeps_working() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start(&mem, &vq, rw_config(image("blk-bad", |_| 0)));
    // Data buffer beyond guest RAM.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (MEM_SIZE - 256, 512, true), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_IOERR);
    // A data buffer of almost 4 GiB.
    write_chain(
        &vq,
        3,
        &[(HDR, 16, false), (DATA, u32::MAX - 64, true), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 3).0, VIRTIO_BLK_S_IOERR);
    // Short header.
    write_chain(&vq, 6, &[(HDR, 8, false), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 6).0, VIRTIO_BLK_S_IOERR);
    // Header address at the very top of the address space.
    write_chain(&vq, 8, &[(u64::MAX - 4, 16, false), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 8).0, VIRTIO_BLK_S_IOERR);
    // Still serving.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    write_chain(&vq, 10, &[(HDR, 16, false), status_desc()]);
    assert_eq!(submit(&s, &mem, &vq, 10).0, VIRTIO_BLK_S_OK);
    assert!(!s.irq.needs_reset());
    s.el.stop();
}

#[test]
fn corrupt_chains_put_the_device_in_needs_reset_without_hurting_others() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start(&mem, &vq, rw_config(image("blk-loop", |_| 0)));
    // A second device on the same event loop.
    let vq2 = MockSplitQueue::create(&mem, GuestAddress(0x80_0000), QSIZE);
    let mut other = Block::new(rw_config(image("blk-other", |_| 0)), s.el.clone()).unwrap();
    other.ack_features(other.features());
    let irq2 = Arc::new(Interrupt::new().unwrap());
    let evt2 = EventFd::new(EFD_NONBLOCK).unwrap();
    other
        .activate(
            mem.clone(),
            irq2.clone(),
            vec![(vq2.create_queue().unwrap(), evt2.try_clone().unwrap())],
        )
        .unwrap();

    // Descriptor loop: 0 -> 1 -> 0.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let d0 = SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT, 1);
    let d1 = SplitDescriptor::new(DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
    vq.desc_table().store(0, RawDescriptor::from(d0)).unwrap();
    vq.desc_table().store(1, RawDescriptor::from(d1)).unwrap();
    publish(&vq, &[0]);
    s.evt.write(1).unwrap();
    assert!(wait_for(|| s.irq.needs_reset()));
    assert_eq!(vq.used().idx().load(), 0);

    // Later requests on the broken device are not processed.
    write_chain(&vq, 4, &[(HDR, 16, false), status_desc()]);
    publish(&vq, &[4]);
    s.evt.write(1).unwrap();

    // The other device still works.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    write_chain(&vq2, 0, &[(HDR, 16, false), status_desc()]);
    publish(&vq2, &[0]);
    evt2.write(1).unwrap();
    assert!(wait_for(|| vq2.used().idx().load() == 1));
    assert_eq!(vq.used().idx().load(), 0);
    assert!(!irq2.needs_reset());
    s.el.stop();
}

#[test]
fn chain_without_status_byte_needs_reset() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start(&mem, &vq, rw_config(image("blk-nostatus", |_| 0)));
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    write_chain(&vq, 0, &[(HDR, 16, false)]);
    publish(&vq, &[0]);
    s.evt.write(1).unwrap();
    assert!(wait_for(|| s.irq.needs_reset()));
    // Status byte outside RAM: same.
    let vq2 = MockSplitQueue::create(&mem, GuestAddress(0x80_0000), QSIZE);
    let s2 = start(&mem, &vq2, rw_config(image("blk-nostatus2", |_| 0)));
    write_chain(&vq2, 0, &[(HDR, 16, false), (MEM_SIZE, 1, true)]);
    publish(&vq2, &[0]);
    s2.evt.write(1).unwrap();
    assert!(wait_for(|| s2.irq.needs_reset()));
    s.el.stop();
    s2.el.stop();
}

#[test]
fn discard_and_write_zeroes_change_the_file() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-discard", |_| 0xff);
    let s = start(&mem, &vq, rw_config(path.clone()));
    let seg = |sector: u64, num: u32, flags: u32| {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&sector.to_le_bytes());
        b[8..12].copy_from_slice(&num.to_le_bytes());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b
    };
    header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut segs = seg(1, 2, 0).to_vec();
    segs.extend_from_slice(&seg(8, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 32, false), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_OK);
    let f = std::fs::read(&path).unwrap();
    assert!(f[..512].iter().all(|&b| b == 0xff));
    assert!(f[512..1536].iter().all(|&b| b == 0));
    assert!(f[1536..4096].iter().all(|&b| b == 0xff));
    assert!(f[4096..4608].iter().all(|&b| b == 0));

    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    mem.write_slice(&seg(16, 8, 0), GuestAddress(DATA)).unwrap();
    write_chain(
        &vq,
        3,
        &[(HDR, 16, false), (DATA, 16, false), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 3).0, VIRTIO_BLK_S_OK);
    // Discard with the unmap flag is invalid; segment past the end is an error.
    mem.write_slice(&seg(16, 8, 1), GuestAddress(DATA)).unwrap();
    assert_eq!(submit(&s, &mem, &vq, 3).0, VIRTIO_BLK_S_UNSUPP);
    mem.write_slice(&seg(IMG_SECTORS, 1, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(submit(&s, &mem, &vq, 3).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), IMG_SECTORS * 512);
    s.el.stop();
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let el = EventLoop::new("blk-cfg").unwrap();
    let blk = Block::new(rw_config(image("blk-cfg", |_| 0)), el.clone()).unwrap();
    let mut b = [0u8; 8];
    blk.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), IMG_SECTORS);
    let mut w = [0u8; 4];
    blk.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    blk.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    blk.read_config(4096, &mut w);
    assert_eq!(w, [0; 4]);
    assert_eq!(blk.device_type(), crate::TYPE_BLOCK);
    assert_ne!(blk.features() & (1 << crate::VIRTIO_F_VERSION_1), 0);
    el.stop();
}

#[test]
fn second_writer_fails_with_a_clear_error() {
    let el = EventLoop::new("blk-lock").unwrap();
    let path = image("blk-lock", |_| 0);
    let first = Block::new(rw_config(path.clone()), el.clone()).unwrap();
    let err = Block::new(rw_config(path.clone()), el.clone())
        .err()
        .expect("second writer must fail");
    assert!(matches!(err, BlockError::Locked { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
    drop(first);
    assert!(
        Block::new(rw_config(path), el.clone()).is_ok(),
        "lock released on drop"
    );
    el.stop();
}

#[test]
fn long_serial_is_refused() {
    let el = EventLoop::new("blk-serial").unwrap();
    let mut config = rw_config(image("blk-serial", |_| 0));
    config.serial = Some("x".repeat(21));
    assert!(matches!(
        Block::new(config, el.clone()),
        Err(BlockError::SerialTooLong(_))
    ));
    el.stop();
}

#[test]
fn reset_stops_processing_and_allows_reactivation() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-reset", |_| 0);
    let mut s = start(&mem, &vq, rw_config(path.clone()));
    s.blk.reset();
    assert!(!s.blk.is_active());
    assert_eq!(s.el.registrations(), 0);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    write_chain(&vq, 0, &[(HDR, 16, false), status_desc()]);
    publish(&vq, &[0]);
    s.evt.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(vq.used().idx().load(), 0, "no processing after reset");

    // Re-activate: the pending request is served.
    s.blk.ack_features(s.blk.features());
    let q: Queue = vq.create_queue().unwrap();
    assert_eq!(q.next_avail(), 0);
    s.blk
        .activate(
            mem.clone(),
            s.irq.clone(),
            vec![(q, s.evt.try_clone().unwrap())],
        )
        .unwrap();
    assert!(wait_for(|| vq.used().idx().load() == 1));
    s.el.stop();
}

#[test]
fn reset_while_busy_does_not_deadlock() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut s = start(&mem, &vq, rw_config(image("blk-busy", |_| 0)));
    for round in 0..50u16 {
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let first = (round % 4) * 3;
        write_chain(
            &vq,
            first,
            &[(HDR, 16, false), (DATA, 4096, true), status_desc()],
        );
        publish(&vq, &[first]);
        s.evt.write(1).unwrap();
        if round % 10 == 9 {
            s.blk.reset();
            s.blk.ack_features(s.blk.features());
            let mut q: Queue = vq.create_queue().unwrap();
            q.set_next_avail(vq.avail().idx().load());
            q.set_next_used(vq.used().idx().load());
            s.blk
                .activate(
                    mem.clone(),
                    s.irq.clone(),
                    vec![(q, s.evt.try_clone().unwrap())],
                )
                .unwrap();
        }
    }
    s.el.stop();
}

#[test]
fn data_is_flushed_on_drop() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-drop", |_| 0);
    let s = start(&mem, &vq, rw_config(path.clone()));
    mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 1);
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 512, false), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_OK);
    let Setup { el, blk, .. } = s;
    drop(blk);
    el.stop();
    let f = std::fs::File::open(&path).unwrap();
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 512).unwrap();
    assert_eq!(b, [0x77; 512]);
    // The lock is gone with the device.
    assert!(DiskFile::open(&path, false, false).is_ok());
}

#[test]
fn chain_over_4g_needs_reset() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start(&mem, &vq, rw_config(image("blk-4g", |_| 0)));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, u32::MAX, true), status_desc()],
    );
    publish(&vq, &[0]);
    s.evt.write(1).unwrap();
    assert!(wait_for(|| s.irq.needs_reset()));
    assert_eq!(vq.used().idx().load(), 0);
    s.el.stop();
}

#[test]
fn a_held_request_waits_for_the_limit_and_goes_when_it_is_lifted() {
    use crate::rate_limiter::{BucketConfig, RateLimitConfig};
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let path = image("blk-limit", |_| 0);
    let mut config = rw_config(path);
    // One request, then the next token in an hour.
    config.rate_limit = RateLimitConfig {
        ops: BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 3_600_000,
        },
        ..Default::default()
    };
    let mut s = start(&mem, &vq, config);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    write_chain(
        &vq,
        0,
        &[(HDR, 16, false), (DATA, 512, true), status_desc()],
    );
    assert_eq!(submit(&s, &mem, &vq, 0).0, VIRTIO_BLK_S_OK);
    write_chain(
        &vq,
        4,
        &[(HDR, 16, false), (DATA, 512, true), status_desc()],
    );
    publish(&vq, &[4]);
    // Kicks do not get a request past an empty bucket.
    for _ in 0..3 {
        s.evt.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    assert_eq!(vq.used().idx().load(), 1);
    // Lifting the limit (as QMP block_set_io_throttle does) serves the
    // held request without another kick.
    s.blk.set_rate_limit(RateLimitConfig::default()).unwrap();
    assert_eq!(s.blk.rate_limit(), RateLimitConfig::default());
    assert!(wait_for(|| vq.used().idx().load() == 2));
    assert_eq!(used_elem(&vq, 1), (4, 513));
    s.el.stop();
}
