use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;
use crate::test_utils::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

type Vq<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

const RX_BUF: u64 = 0x40_0000;
const TX_BUF: u64 = 0x50_0000;

/// Records output; hands out its input sink.
#[derive(Clone, Default)]
struct Capture {
    out: Arc<Mutex<Vec<u8>>>,
    sink: Arc<Mutex<Option<InputSink>>>,
}

impl ConsoleBackend for Capture {
    fn write(&mut self, data: &[u8]) {
        self.out.lock().unwrap().extend_from_slice(data);
    }
    fn start(&mut self, _el: &EventLoop, sink: InputSink) -> Result<(), ConsoleError> {
        *self.sink.lock().unwrap() = Some(sink);
        Ok(())
    }
}

struct Rig {
    el: EventLoop,
    console: Console,
    rx_evt: EventFd,
    tx_evt: EventFd,
}

fn activate(console: Console, el: EventLoop, mem: &GuestMemoryMmap, rx: &Vq, tx: &Vq) -> Rig {
    let mut console = console;
    let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    console
        .activate(
            mem.clone(),
            Arc::new(Interrupt::new().unwrap()),
            vec![
                (rx.create_queue().unwrap(), rx_evt.try_clone().unwrap()),
                (tx.create_queue().unwrap(), tx_evt.try_clone().unwrap()),
            ],
        )
        .unwrap();
    Rig {
        el,
        console,
        rx_evt,
        tx_evt,
    }
}

fn queues(mem: &GuestMemoryMmap) -> (Vq<'_>, Vq<'_>) {
    (
        MockSplitQueue::create(mem, GuestAddress(0), QSIZE),
        MockSplitQueue::create(mem, GuestAddress(0x10_0000), QSIZE),
    )
}

/// Posts a receive buffer of `len` bytes at descriptor `idx`.
fn post_rx(rig: &Rig, rx: &Vq, idx: u16, len: u32) {
    write_chain(rx, idx, &[(RX_BUF + u64::from(idx) * 0x1000, len, true)]);
    publish(rx, &[idx]);
    rig.rx_evt.write(1).unwrap();
}

fn rx_bytes(mem: &GuestMemoryMmap, rx: &Vq, used: u16) -> Vec<u8> {
    let (id, len) = used_elem(rx, used);
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(RX_BUF + u64::from(id) * 0x1000))
        .unwrap();
    buf
}

fn send_tx(rig: &Rig, mem: &GuestMemoryMmap, tx: &Vq, idx: u16, data: &[u8]) {
    let addr = TX_BUF + u64::from(idx) * 0x1000;
    mem.write_slice(data, GuestAddress(addr)).unwrap();
    write_chain(tx, idx, &[(addr, data.len() as u32, false)]);
    publish(tx, &[idx]);
    rig.tx_evt.write(1).unwrap();
}

#[test]
fn output_reaches_the_backend_and_input_the_guest() {
    let mem = guest_memory();
    let (rx, tx) = queues(&mem);
    let el = EventLoop::new("con-test").unwrap();
    let cap = Capture::default();
    let console = Console::new(Box::new(cap.clone()), el.clone()).unwrap();
    let rig = activate(console, el, &mem, &rx, &tx);

    send_tx(&rig, &mem, &tx, 0, b"hello ");
    send_tx(&rig, &mem, &tx, 1, b"world\n");
    assert!(wait_for(
        || cap.out.lock().unwrap().as_slice() == b"hello world\n"
    ));
    assert!(wait_for(|| tx.used().idx().load() == 2));

    post_rx(&rig, &rx, 0, 64);
    let sink = cap.sink.lock().unwrap().clone().unwrap();
    sink(b"ls\n");
    assert!(wait_for(|| rx.used().idx().load() == 1));
    assert_eq!(rx_bytes(&mem, &rx, 0), b"ls\n");
    rig.el.stop();
}

#[test]
fn input_is_buffered_until_the_guest_posts_buffers_and_split_across_them() {
    let mem = guest_memory();
    let (rx, tx) = queues(&mem);
    let el = EventLoop::new("con-test2").unwrap();
    let cap = Capture::default();
    let console = Console::new(Box::new(cap.clone()), el.clone()).unwrap();
    let sink = cap.sink.lock().unwrap().clone().unwrap();
    // Before the driver is even up.
    sink(b"abcdefghij");
    assert_eq!(console.pending_input(), 10);
    let rig = activate(console, el, &mem, &rx, &tx);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used().idx().load(), 0);
    post_rx(&rig, &rx, 0, 4);
    assert!(wait_for(|| rx.used().idx().load() == 1));
    assert_eq!(rx_bytes(&mem, &rx, 0), b"abcd");
    assert_eq!(rig.console.pending_input(), 6);
    post_rx(&rig, &rx, 1, 100);
    assert!(wait_for(|| rx.used().idx().load() == 2));
    assert_eq!(rx_bytes(&mem, &rx, 1), b"efghij");
    assert_eq!(rig.console.pending_input(), 0);
    rig.el.stop();
}

#[test]
fn input_buffer_is_bounded() {
    let el = EventLoop::new("con-test3").unwrap();
    let cap = Capture::default();
    let console = Console::new(Box::new(cap.clone()), el.clone()).unwrap();
    let sink = cap.sink.lock().unwrap().clone().unwrap();
    sink(&vec![b'x'; INPUT_BUFFER_LIMIT - 10]);
    sink(&[b'y'; 100]);
    assert_eq!(console.pending_input(), INPUT_BUFFER_LIMIT);
    let s = console.shared.lock().unwrap();
    assert!(s.dropping);
    assert_eq!(s.pending.iter().filter(|&&b| b == b'y').count(), 10);
    drop(s);
    el.stop();
}

#[test]
fn config_and_identity() {
    let el = EventLoop::new("con-test4").unwrap();
    let console = Console::new(Box::new(Capture::default()), el.clone()).unwrap();
    assert_eq!(console.device_type(), crate::TYPE_CONSOLE);
    assert_eq!(console.queue_max_sizes().len(), 2);
    assert_eq!(
        console.features(),
        1 << crate::VIRTIO_F_VERSION_1,
        "no MULTIPORT"
    );
    let mut b = [0u8; 8];
    console.read_config(0, &mut b);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), DEFAULT_COLS);
    assert_eq!(u16::from_le_bytes([b[2], b[3]]), DEFAULT_ROWS);
    assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 1);
    el.stop();
}

#[test]
fn bad_tx_chain_needs_reset_and_reset_recovers() {
    let mem = guest_memory();
    let (rx, tx) = queues(&mem);
    let el = EventLoop::new("con-test5").unwrap();
    let cap = Capture::default();
    let console = Console::new(Box::new(cap.clone()), el.clone()).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let mut rig = activate(console, el, &mem, &rx, &tx);
    // Replace the interrupt by re-activating with ours.
    rig.console.reset();
    rig.console
        .activate(
            mem.clone(),
            irq.clone(),
            vec![
                (rx.create_queue().unwrap(), rig.rx_evt.try_clone().unwrap()),
                (tx.create_queue().unwrap(), rig.tx_evt.try_clone().unwrap()),
            ],
        )
        .unwrap();
    // Head index beyond the queue.
    publish(&tx, &[QSIZE + 3]);
    rig.tx_evt.write(1).unwrap();
    assert!(wait_for(|| irq.needs_reset()));
    // Buffer outside RAM on a fresh queue: completed, nothing written out.
    rig.console.reset();
    let tx2 = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), QSIZE);
    rig.console
        .activate(
            mem.clone(),
            irq.clone(),
            vec![
                (rx.create_queue().unwrap(), rig.rx_evt.try_clone().unwrap()),
                (tx2.create_queue().unwrap(), rig.tx_evt.try_clone().unwrap()),
            ],
        )
        .unwrap();
    write_chain(&tx2, 0, &[(MEM_SIZE - 4, 64, false)]);
    publish(&tx2, &[0]);
    rig.tx_evt.write(1).unwrap();
    assert!(wait_for(|| tx2.used().idx().load() == 1));
    assert!(cap.out.lock().unwrap().is_empty());
    rig.el.stop();
}

fn connect(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn unix_socket_both_directions_and_reconnect() {
    let dir = temp_dir("console-sock");
    let path = dir.join("console.sock");
    let mem = guest_memory();
    let (rx, tx) = queues(&mem);
    let el = EventLoop::new("con-sock").unwrap();
    let backend = UnixSocketBackend::bind(&path).unwrap();
    let console = Console::new(Box::new(backend), el.clone()).unwrap();
    let rig = activate(console, el, &mem, &rx, &tx);

    // Client -> guest.
    let mut client = connect(&path);
    post_rx(&rig, &rx, 0, 64);
    client.write_all(b"root\n").unwrap();
    assert!(wait_for(|| rx.used().idx().load() == 1));
    assert_eq!(rx_bytes(&mem, &rx, 0), b"root\n");

    // Guest -> client.
    send_tx(&rig, &mem, &tx, 0, b"login: ");
    let mut got = [0u8; 7];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"login: ");

    // A second client while the first is attached is turned away.
    let mut intruder = connect(&path);
    let mut b = [0u8; 1];
    assert_eq!(intruder.read(&mut b).unwrap_or(0), 0);

    // Reconnect: the next client gets the output.
    drop(client);
    // Output written while nobody is attached is dropped, not queued.
    std::thread::sleep(Duration::from_millis(50));
    let mut client2 = connect(&path);
    // Wait until the server attached it, by round-tripping input.
    post_rx(&rig, &rx, 1, 64);
    client2.write_all(b"x").unwrap();
    assert!(wait_for(|| rx.used().idx().load() == 2));
    assert_eq!(rx_bytes(&mem, &rx, 1), b"x");
    send_tx(&rig, &mem, &tx, 1, b"again\n");
    let mut got = [0u8; 6];
    client2.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"again\n");

    drop(rig.console);
    assert!(!path.exists(), "socket removed with the device");
    rig.el.stop();
}

#[test]
fn socket_path_that_is_a_file_is_refused() {
    let dir = temp_dir("console-file");
    let path = dir.join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    assert!(matches!(
        UnixSocketBackend::bind(&path),
        Err(ConsoleError::PathInUse { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn file_backend_appends_guest_output() {
    let dir = temp_dir("console-out");
    let path = dir.join("out.log");
    std::fs::write(&path, b"old\n").unwrap();
    let mem = guest_memory();
    let (rx, tx) = queues(&mem);
    let el = EventLoop::new("con-file").unwrap();
    let console = Console::new(Box::new(FileBackend::create(&path).unwrap()), el.clone()).unwrap();
    let rig = activate(console, el, &mem, &rx, &tx);
    send_tx(&rig, &mem, &tx, 0, b"boot ok\n");
    assert!(wait_for(
        || std::fs::read(&path).unwrap() == b"old\nboot ok\n"
    ));
    rig.el.stop();
}
