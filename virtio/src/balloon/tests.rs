use super::discard::coalesce;
use super::*;
use crate::test_utils::*;
use crate::VIRTIO_MMIO_INT_CONFIG;
use address_space::memory::create_guest_memory;
use address_space::MemoryOptions;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

/// Where the page frame number lists go.
const PFN_BUF: u64 = 0x8_0000;
/// The pages the tests fill and give back.
const DATA: u64 = 0x40_0000;
const PAGE: u64 = BALLOON_PAGE_SIZE;

/// All of the test RAM is usable except its first page.
fn usable() -> Vec<(u64, u64)> {
    vec![(PAGE, MEM_SIZE - PAGE)]
}

#[derive(Default)]
struct Recorder(Mutex<Vec<u32>>);

impl BalloonListener for Recorder {
    fn actual_changed(&self, pages: u32) {
        crate::lock(&self.0).push(pages);
    }
}

struct Rig<'a> {
    el: EventLoop,
    dev: Balloon,
    irq: Arc<Interrupt>,
    vqs: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    evts: Vec<EventFd>,
}

impl Rig<'_> {
    fn kick(&self, q: usize) {
        self.evts[q].write(1).unwrap();
    }
}

/// An active balloon on `mem` with the driver accepting `acked` besides
/// VERSION_1; one mock queue per device queue, at 0, 64 KiB and 128 KiB.
fn start(mem: &GuestMemoryMmap, config: BalloonConfig, acked: u64) -> Rig<'_> {
    let el = EventLoop::new("balloon-test").unwrap();
    let mut dev = Balloon::new(config, el.clone());
    dev.ack_features((1 << VIRTIO_F_VERSION_1) | acked);
    let n = dev.queue_max_sizes().len();
    let vqs: Vec<_> = (0..n)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(0x1_0000 * i as u64), QSIZE))
        .collect();
    let evts: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues = vqs
        .iter()
        .zip(&evts)
        .map(|(vq, e)| (vq.create_queue().unwrap(), e.try_clone().unwrap()))
        .collect();
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    Rig {
        el,
        dev,
        irq,
        vqs,
        evts,
    }
}

fn fill(mem: &GuestMemoryMmap, addr: u64, pages: u64) {
    for p in 0..pages {
        mem.write_slice(&[0xa5u8; PAGE as usize], GuestAddress(addr + p * PAGE))
            .unwrap();
    }
}

fn page_is_zero(mem: &GuestMemoryMmap, addr: u64) -> bool {
    let mut buf = vec![0xffu8; PAGE as usize];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf.iter().all(|&b| b == 0)
}

/// Sends `pfns` as one readable buffer on queue `q` and waits for it back.
fn send_pfns(rig: &Rig<'_>, mem: &GuestMemoryMmap, q: usize, pfns: &[u32]) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(PFN_BUF)).unwrap();
    let vq = &rig.vqs[q];
    let before = vq.used().idx().load();
    write_chain(vq, 0, &[(PFN_BUF, bytes.len() as u32, false)]);
    publish(vq, &[0]);
    rig.kick(q);
    assert!(wait_for(|| vq.used().idx().load() == before.wrapping_add(1)));
    assert_eq!(used_elem(vq, before), (0, 0));
}

#[test]
fn features_queues_and_device_id_follow_the_options() {
    let el = EventLoop::new("balloon-features").unwrap();
    let plain = Balloon::new(BalloonConfig::default(), el.clone());
    assert_eq!(plain.device_type(), 5);
    assert_eq!(plain.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(
        plain.features(),
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    );
    let all = Balloon::new(
        BalloonConfig {
            deflate_on_oom: true,
            free_page_reporting: true,
            usable: usable(),
        },
        el.clone(),
    );
    assert_eq!(all.queue_max_sizes().len(), 3);
    let f = all.features();
    assert_ne!(f & (1 << 2), 0, "DEFLATE_ON_OOM");
    assert_ne!(f & (1 << 5), 0, "REPORTING");
    // No statistics queue (1), free page hinting (3) or page poison (4).
    assert_eq!(f & 0b1_1010, 0);
    el.stop();
}

#[test]
fn config_space_target_and_actual() {
    let mem = guest_memory();
    let mut rig = start(&mem, BalloonConfig::default(), 0);
    let rec = Arc::new(Recorder::default());
    rig.dev.set_listener(rec.clone());
    let read = |dev: &Balloon, off: u64| {
        let mut b = [0u8; 4];
        dev.read_config(off, &mut b);
        u32::from_le_bytes(b)
    };
    rig.dev.set_target_pages(0x1234);
    assert_eq!(read(&rig.dev, 0), 0x1234);
    assert_eq!(
        rig.irq.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(rig.irq.config_generation(), 1);
    // The same target again still interrupts (QEMU does too).
    rig.dev.set_target_pages(0x1234);
    assert_eq!(rig.irq.config_generation(), 2);

    // The driver writes actual; num_pages is read-only.
    rig.dev.write_config(4, &77u32.to_le_bytes());
    rig.dev.write_config(0, &5u32.to_le_bytes());
    assert_eq!((read(&rig.dev, 0), read(&rig.dev, 4)), (0x1234, 77));
    assert_eq!(rig.dev.actual_pages(), 77);
    // Byte-wide writes land where they belong; writing the same value is
    // no change.
    rig.dev.write_config(5, &[1]);
    assert_eq!(rig.dev.actual_pages(), 77 + 256);
    rig.dev.write_config(4, &(77u32 + 256).to_le_bytes());
    // Beyond the configuration: zeros, writes ignored.
    rig.dev.write_config(8, &[9; 8]);
    rig.dev.write_config(u64::MAX, &[9; 4]);
    assert_eq!(read(&rig.dev, 8), 0);
    assert_eq!(*crate::lock(&rec.0), vec![77, 77 + 256]);

    // A reset empties the balloon and keeps the target.
    rig.dev.reset();
    assert_eq!(rig.dev.actual_pages(), 0);
    assert_eq!(rig.dev.target_pages(), 0x1234);
    assert_eq!(*crate::lock(&rec.0), vec![77, 77 + 256, 0]);
    assert_eq!(rig.el.registrations(), 0);
    rig.el.stop();
}

#[test]
fn a_target_set_before_the_driver_starts_raises_nothing() {
    let el = EventLoop::new("balloon-early").unwrap();
    let mut dev = Balloon::new(BalloonConfig::default(), el.clone());
    dev.set_target_pages(10);
    assert_eq!(dev.target_pages(), 10);
    let mut b = [0u8; 4];
    dev.read_config(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 10);
    el.stop();
}

#[test]
fn inflated_pages_read_as_zero_and_others_keep_their_data() {
    let mem = guest_memory();
    let config = BalloonConfig {
        usable: usable(),
        ..Default::default()
    };
    let rig = start(&mem, config, 0);
    fill(&mem, DATA, 8);
    let first = (DATA / PAGE) as u32;
    // Pages 0, 1, 2 and 5, out of order and with a repeat.
    send_pfns(
        &rig,
        &mem,
        0,
        &[first + 2, first, first + 5, first + 1, first],
    );
    for p in 0..8 {
        let zero = page_is_zero(&mem, DATA + p * PAGE);
        assert_eq!(zero, [0, 1, 2, 5].contains(&p), "page {p}");
    }
    assert_ne!(rig.irq.status(), 0);
    let stats = rig.dev.stats();
    assert_eq!((stats.inflated_pages, stats.refused_pages), (4, 0));

    // Deflating needs no host action: the data stays as the guest left it.
    fill(&mem, DATA, 1);
    send_pfns(&rig, &mem, 1, &[first, first + 1]);
    assert!(!page_is_zero(&mem, DATA));
    assert_eq!(rig.dev.stats().deflated_pages, 2);
    rig.el.stop();
}

#[test]
fn pages_outside_usable_ram_are_refused() {
    let mem = guest_memory();
    // The page at DATA is reserved (as the EBDA or the ACPI tables are);
    // the second range lies beyond the mapped RAM.
    let config = BalloonConfig {
        usable: vec![
            (PAGE, DATA - PAGE),
            (DATA + PAGE, MEM_SIZE - DATA - PAGE),
            (MEM_SIZE + (1 << 20), 1 << 20),
        ],
        ..Default::default()
    };
    let rig = start(&mem, config, 0);
    fill(&mem, DATA, 2);
    let first = (DATA / PAGE) as u32;
    let last = (MEM_SIZE / PAGE) as u32;
    // Page 0 and the reserved page, one declared usable but not mapped
    // (never discarded), one far beyond RAM, and one good page.
    send_pfns(&rig, &mem, 0, &[0, first, last + 256, u32::MAX, first + 1]);
    assert!(!page_is_zero(&mem, DATA), "the reserved page was discarded");
    assert!(page_is_zero(&mem, DATA + PAGE));
    let stats = rig.dev.stats();
    assert_eq!((stats.inflated_pages, stats.refused_pages), (1, 4));
    rig.el.stop();
}

#[test]
fn a_page_list_outside_guest_ram_is_returned_untouched() {
    let mem = guest_memory();
    let config = BalloonConfig {
        usable: usable(),
        ..Default::default()
    };
    let rig = start(&mem, config, 0);
    fill(&mem, DATA, 1);
    let vq = &rig.vqs[0];
    // A list that runs off the end of RAM, and a device-writable one.
    write_chain(vq, 0, &[(MEM_SIZE - 4, 64, false)]);
    write_chain(vq, 1, &[(PFN_BUF, 64, true)]);
    publish(vq, &[0, 1]);
    rig.kick(0);
    assert!(wait_for(|| vq.used().idx().load() == 2));
    assert!(!page_is_zero(&mem, DATA));
    assert_eq!(rig.dev.stats().inflated_pages, 0);
    rig.el.stop();
}

#[test]
fn shared_ram_is_punched_out_of_the_memfd() {
    // MADV_DONTNEED would leave a MAP_SHARED memfd's pages in place (and
    // their data visible); MADV_REMOVE frees them.
    let mem = create_guest_memory(
        MEM_SIZE,
        MemoryOptions {
            shared: true,
            no_dump: false,
        },
    )
    .unwrap();
    let config = BalloonConfig {
        usable: usable(),
        ..Default::default()
    };
    let rig = start(&mem, config, 0);
    fill(&mem, DATA, 4);
    let first = (DATA / PAGE) as u32;
    send_pfns(&rig, &mem, 0, &[first, first + 1, first + 3]);
    for p in 0..4 {
        assert_eq!(page_is_zero(&mem, DATA + p * PAGE), p != 2, "page {p}");
    }
    rig.el.stop();
}

#[test]
fn reported_free_ranges_are_discarded_in_whole_pages() {
    let mem = guest_memory();
    let config = BalloonConfig {
        free_page_reporting: true,
        usable: usable(),
        ..Default::default()
    };
    let rig = start(&mem, config, 1 << VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(rig.el.registrations(), 3);
    fill(&mem, DATA, 8);
    let vq = &rig.vqs[2];
    // Linux reports device-writable ranges, several per request: pages 0-1
    // exactly, then a range from the middle of page 3 to the middle of
    // page 6 (only pages 4 and 5 are whole), and one outside RAM.
    write_chain(
        vq,
        0,
        &[
            (DATA, 2 * PAGE as u32, true),
            (DATA + 3 * PAGE + 8, 3 * PAGE as u32, true),
            (MEM_SIZE, PAGE as u32, true),
        ],
    );
    publish(vq, &[0]);
    rig.kick(2);
    assert!(wait_for(|| vq.used().idx().load() == 1));
    assert_eq!(used_elem(vq, 0), (0, 0));
    for p in 0..8 {
        let zero = page_is_zero(&mem, DATA + p * PAGE);
        assert_eq!(zero, [0, 1, 4, 5].contains(&p), "page {p}");
    }
    assert_eq!(rig.dev.stats().reported_bytes, 4 * PAGE);
    rig.el.stop();
}

#[test]
fn an_unused_reporting_queue_is_left_alone() {
    let mem = guest_memory();
    let config = BalloonConfig {
        free_page_reporting: true,
        usable: usable(),
        ..Default::default()
    };
    // The driver did not accept REPORTING: only two queues are served.
    let el = EventLoop::new("balloon-noreport").unwrap();
    let mut dev = Balloon::new(config, el.clone());
    dev.ack_features(1 << VIRTIO_F_VERSION_1);
    let vqs: Vec<_> = (0..2)
        .map(|i| MockSplitQueue::create(&mem, GuestAddress(0x1_0000 * i), QSIZE))
        .collect();
    let mut queues: Vec<(Queue, EventFd)> = vqs
        .iter()
        .map(|vq| {
            (
                vq.create_queue().unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            )
        })
        .collect();
    queues.push((
        Queue::new(QUEUE_SIZE).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ));
    let irq = Arc::new(Interrupt::new().unwrap());
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    assert_eq!(el.registrations(), 2);
    assert!(matches!(
        dev.activate(mem.clone(), irq, Vec::new()),
        Err(ActivateError::AlreadyActive)
    ));
    dev.reset();
    // A driver that did accept it must set the queue up.
    dev.ack_features((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING));
    let queues = vqs
        .iter()
        .map(|vq| {
            (
                vq.create_queue().unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            )
        })
        .chain(std::iter::once((
            Queue::new(QUEUE_SIZE).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )))
        .collect();
    let irq = Arc::new(Interrupt::new().unwrap());
    assert!(matches!(
        dev.activate(mem.clone(), irq, queues),
        Err(ActivateError::QueueNotReady(2))
    ));
    el.stop();
}

#[test]
fn contiguous_pages_coalesce_into_runs() {
    let p = PAGE;
    assert_eq!(
        coalesce(vec![5 * p, 3 * p, 4 * p, 9 * p, 4 * p, 10 * p, 0]),
        vec![(0, p), (3 * p, 6 * p), (9 * p, 11 * p)]
    );
    assert_eq!(coalesce(Vec::new()), Vec::new());
}
