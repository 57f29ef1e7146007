//! Tests of hotplug into pre-created slots.

use std::os::unix::fs::FileExt;

use super::*;
use crate::test_utils::*;
use crate::VIRTIO_MMIO_INT_CONFIG;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const IMG_SECTORS: u64 = 32;

type Vq<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

fn image(tag: &str, fill: impl Fn(usize) -> u8) -> PathBuf {
    let p = temp_dir(tag).join("disk.img");
    let data: Vec<u8> = (0..(IMG_SECTORS * 512) as usize).map(fill).collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn cfg(path: PathBuf) -> BlockConfig {
    BlockConfig {
        path,
        read_only: false,
        direct: false,
        serial: Some("hp-0".into()),
        rate_limit: Default::default(),
    }
}

struct Slot {
    el: EventLoop,
    blk: Block,
    irq: Arc<Interrupt>,
    evt: EventFd,
}

fn start_empty(mem: &GuestMemoryMmap, vq: &Vq<'_>) -> Slot {
    let el = EventLoop::new("blk-hp").unwrap();
    let mut blk = Block::new_empty(el.clone());
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
    Slot { el, blk, irq, evt }
}

fn capacity(blk: &Block) -> u64 {
    let mut b = [0u8; 8];
    blk.read_config(0, &mut b);
    u64::from_le_bytes(b)
}

/// Submits one request (header at HDR, data at DATA, status at STATUS) and
/// returns (status, used length). The mock queue of QSIZE entries lays its
/// used ring over avail ring entries 8 and up: keep to < 8 requests.
fn request(
    s: &Slot,
    mem: &GuestMemoryMmap,
    vq: &Vq<'_>,
    req_type: u32,
    sector: u64,
    data: Option<(u32, bool)>,
) -> (u8, u32) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let mut bufs = vec![(HDR, 16, false)];
    if let Some((len, w)) = data {
        bufs.push((DATA, len, w));
    }
    bufs.push((STATUS, 1, true));
    let before = vq.used().idx().load();
    let first = (before % 4) * 3;
    write_chain(vq, first, &bufs);
    publish(vq, &[first]);
    s.evt.write(1).unwrap();
    assert!(
        wait_for(|| vq.used().idx().load() != before),
        "not completed"
    );
    let (id, len) = used_elem(vq, before);
    assert_eq!(id, u32::from(first));
    (mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
}

fn open_fds_on(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == path)
        .count()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn empty_slot_has_no_capacity_and_fails_requests() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let s = start_empty(&mem, &vq);
    assert!(s.blk.is_empty());
    assert_eq!(s.blk.backend(), None);
    assert_eq!(capacity(&s.blk), 0);
    assert_eq!(s.blk.capacity(), 0);
    let f = s.blk.features();
    assert_eq!(f, hotplug::EMPTY_SLOT_FEATURES);
    for bit in [
        VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_eq!(f & (1 << bit), 0, "bit {bit}");
    }
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    let st = |t, d| request(&s, &mem, &vq, t, 0, d).0;
    assert_eq!(st(VIRTIO_BLK_T_IN, Some((512, true))), VIRTIO_BLK_S_IOERR);
    assert_eq!(st(VIRTIO_BLK_T_OUT, Some((512, false))), VIRTIO_BLK_S_IOERR);
    assert_eq!(st(VIRTIO_BLK_T_FLUSH, None), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        st(VIRTIO_BLK_T_DISCARD, Some((16, false))),
        VIRTIO_BLK_S_IOERR
    );
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_GET_ID, 0, Some((20, true))),
        (VIRTIO_BLK_S_OK, 21)
    );
    let mut id = [0xffu8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(id, [0; 20], "empty serial");
    assert!(!s.irq.needs_reset());
    s.el.stop();
}

#[test]
fn attach_and_detach_while_active() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut s = start_empty(&mem, &vq);
    let path = image("blk-hp-live", |i| (i / 512) as u8);
    let gen0 = s.irq.config_generation();
    s.blk.attach(cfg(path.clone())).unwrap();
    assert!(s.irq.config_generation() > gen0);
    assert_ne!(s.irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(capacity(&s.blk), IMG_SECTORS);
    assert_eq!(s.blk.backend(), Some((path.clone(), false)));
    assert!(!s.blk.is_empty());

    // Reads return the file's bytes.
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_IN, 3, Some((1024, true))),
        (VIRTIO_BLK_S_OK, 1025)
    );
    let mut back = [0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back[..512].iter().all(|&b| b == 3));
    assert!(back[512..].iter().all(|&b| b == 4));
    // GET_ID returns the new serial.
    request(&s, &mem, &vq, VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"hp-0");
    // Writes land in the file.
    mem.write_slice(&[0x5c; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_OUT, 7, Some((512, false))).0,
        VIRTIO_BLK_S_OK
    );

    // Detach.
    s.irq.ack(VIRTIO_MMIO_INT_CONFIG);
    let gen1 = s.irq.config_generation();
    assert_eq!(s.blk.detach().unwrap(), path);
    assert!(s.irq.config_generation() > gen1);
    assert_ne!(s.irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(capacity(&s.blk), 0);
    assert!(s.blk.is_empty());
    assert_eq!(open_fds_on(&path), 0, "file closed");
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_IN, 0, Some((512, true))).0,
        VIRTIO_BLK_S_IOERR
    );
    // Durable and unlocked: another writer can open it.
    let other = Block::new(cfg(path.clone()), s.el.clone()).unwrap();
    let mut b = [0u8; 512];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut b, 7 * 512)
        .unwrap();
    assert_eq!(b, [0x5c; 512]);
    // ... and while it does, this slot cannot take it.
    assert!(matches!(
        s.blk.attach(cfg(path.clone())),
        Err(BlockError::Locked { .. })
    ));
    assert!(s.blk.is_empty());
    drop(other);
    s.el.stop();
}

#[test]
fn attach_when_inactive_only_updates_config() {
    let el = EventLoop::new("blk-hp-idle").unwrap();
    let mut blk = Block::new_empty(el.clone());
    let path = image("blk-hp-idle", |_| 0);
    blk.attach(cfg(path.clone())).unwrap();
    assert_eq!(capacity(&blk), IMG_SECTORS);
    assert_eq!(blk.path(), path.as_path());
    assert_eq!(blk.detach().unwrap(), path);
    assert_eq!(capacity(&blk), 0);
    assert_eq!(blk.path(), Path::new(""));
    el.stop();
}

#[test]
fn read_only_image_refuses_writes() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut s = start_empty(&mem, &vq);
    let path = image("blk-hp-ro", |_| 0x11);
    let mut c = cfg(path.clone());
    c.read_only = true;
    s.blk.attach(c).unwrap();
    assert_eq!(s.blk.backend(), Some((path.clone(), true)));
    assert_eq!(
        s.blk.features() & (1 << VIRTIO_BLK_F_RO),
        0,
        "fixed features"
    );
    mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_OUT, 0, Some((512, false))).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&s, &mem, &vq, VIRTIO_BLK_T_IN, 0, Some((512, true))).0,
        VIRTIO_BLK_S_OK
    );
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0x11));
    s.el.stop();
}

#[test]
fn slot_state_errors() {
    let el = EventLoop::new("blk-hp-err").unwrap();
    let mut blk = Block::new_empty(el.clone());
    assert!(matches!(blk.detach(), Err(BlockError::SlotEmpty)));
    let missing = temp_dir("blk-hp-missing").join("missing.img");
    let err = blk.attach(cfg(missing.clone())).unwrap_err();
    assert!(matches!(err, BlockError::Open { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));
    assert!(blk.is_empty());
    let mut long = cfg(image("blk-hp-serial", |_| 0));
    long.serial = Some("s".repeat(21));
    assert!(matches!(
        blk.attach(long),
        Err(BlockError::SerialTooLong(_))
    ));
    assert!(blk.is_empty());

    blk.attach(cfg(image("blk-hp-a", |_| 0))).unwrap();
    let b = image("blk-hp-b", |_| 0);
    assert!(matches!(
        blk.attach(cfg(b.clone())),
        Err(BlockError::SlotBusy)
    ));
    assert_eq!(open_fds_on(&b), 0, "busy slot does not open the image");
    // A device created with an image can be emptied and refilled.
    let mut full = Block::new(cfg(image("blk-hp-c", |_| 0)), el.clone()).unwrap();
    assert!(matches!(
        full.attach(cfg(b.clone())),
        Err(BlockError::SlotBusy)
    ));
    full.detach().unwrap();
    full.attach(cfg(b)).unwrap();
    el.stop();
}

#[test]
fn repeated_attach_detach_does_not_leak_fds() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut s = start_empty(&mem, &vq);
    let path = image("blk-hp-leak", |_| 0x42);
    // Warm up lazily allocated descriptors.
    s.blk.attach(cfg(path.clone())).unwrap();
    s.blk.detach().unwrap();
    let before = fd_count();
    for i in 0..200u32 {
        let mut c = cfg(path.clone());
        c.direct = i % 2 == 0;
        s.blk.attach(c).unwrap();
        if i % 40 == 0 {
            assert_eq!(
                request(&s, &mem, &vq, VIRTIO_BLK_T_IN, 1, Some((512, true))).0,
                VIRTIO_BLK_S_OK
            );
        }
        assert_eq!(s.blk.detach().unwrap(), path);
    }
    assert_eq!(open_fds_on(&path), 0);
    // Other tests run concurrently in this process: allow some slack, far
    // below the 200+ a leak would show.
    let after = fd_count();
    assert!(after <= before + 16, "fds before {before}, after {after}");
    s.el.stop();
}

#[test]
fn reset_keeps_the_attached_image() {
    let mem = guest_memory();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    let mut s = start_empty(&mem, &vq);
    let path = image("blk-hp-reset", |_| 0);
    s.blk.attach(cfg(path.clone())).unwrap();
    s.blk.reset();
    assert_eq!(s.blk.backend(), Some((path.clone(), false)));
    assert_eq!(open_fds_on(&path), 1, "only the slot's handle");
    s.blk.detach().unwrap();
    assert_eq!(open_fds_on(&path), 0);
    s.el.stop();
}
