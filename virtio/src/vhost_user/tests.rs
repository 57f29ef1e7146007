//! The frontend against a hand-decoding fake backend on a socketpair.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use address_space::memory::create_guest_memory;
use address_space::{GuestMemoryMmap, MemoryOptions};
use util::event_loop::EventLoop;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::fake_backend::{self as fake, Behaviour, Msg};
use super::*;

fn shared_memory() -> GuestMemoryMmap {
    create_guest_memory(
        4 << 20,
        MemoryOptions {
            shared: true,
            no_dump: false,
        },
    )
    .unwrap()
}

fn queue(mem: &GuestMemoryMmap, base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(8);
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x100))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x200))
        .unwrap();
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// The device's event loop (it serves the request deadline), stopped at
/// the end of the test.
struct Loop(EventLoop);

impl Drop for Loop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn event_loop() -> Loop {
    Loop(EventLoop::new("vu-test").unwrap())
}

fn requests(log: &[Msg]) -> Vec<u32> {
    log.iter().map(|m| m.request).collect()
}

fn fstat_ino(fd: i32) -> (u64, u64) {
    // SAFETY: zeroed stat is valid; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid stat buffer; fd is open.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

#[test]
fn handshake_negotiates_only_what_is_implemented() {
    let el = event_loop();
    let (a, b) = UnixStream::pair().unwrap();
    let backend = fake::spawn(b, Behaviour::default());
    let fe = Frontend::new(a, 2, &el.0).unwrap();
    assert_eq!(fe.virtio_features(), 1 << 32, "protocol bit is not virtio");
    drop(fe);
    let log = backend.join().unwrap();
    assert_eq!(
        requests(&log),
        vec![
            fake::GET_FEATURES,
            fake::GET_PROTOCOL_FEATURES,
            fake::SET_PROTOCOL_FEATURES,
            fake::GET_QUEUE_NUM,
            fake::SET_OWNER
        ]
    );
    for m in &log {
        assert_eq!(m.flags & 0x3, fake::VERSION_1, "version 1 in every header");
    }
    // The backend offered MQ, REPLY_ACK and BACKEND_REQ: only the first two
    // are implemented, so only they are acked.
    assert_eq!(log[2].body.len(), 8);
    assert_eq!(log[2].u64_at(0), 0x1 | 0x8);
    // REPLY_ACK was negotiated: SET_OWNER asks for an ack.
    assert_ne!(log[4].flags & fake::FLAG_NEED_REPLY, 0);
}

#[test]
fn backend_without_protocol_features_gets_plain_requests() {
    let el = event_loop();
    let (a, b) = UnixStream::pair().unwrap();
    let behaviour = Behaviour {
        features: 1 << 32,
        ..Behaviour::default()
    };
    let backend = fake::spawn(b, behaviour);
    let fe = Frontend::new(a, 2, &el.0).unwrap();
    drop(fe);
    let log = backend.join().unwrap();
    assert_eq!(requests(&log), vec![fake::GET_FEATURES, fake::SET_OWNER]);
    assert_eq!(log[1].flags & fake::FLAG_NEED_REPLY, 0);
}

#[test]
fn too_few_backend_queues_are_refused() {
    let el = event_loop();
    let (a, b) = UnixStream::pair().unwrap();
    let backend = fake::spawn(
        b,
        Behaviour {
            queue_num: 1,
            ..Behaviour::default()
        },
    );
    let e = Frontend::new(a, 2, &el.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vhost-user backend serves 1 queues, the device needs 2"
    );
    backend.join().unwrap();
}

#[test]
fn start_sends_memory_rings_and_eventfds_then_stop_takes_them_back() {
    let el = event_loop();
    let mem = shared_memory();
    let (a, b) = UnixStream::pair().unwrap();
    let backend = fake::spawn(
        b,
        Behaviour {
            vring_base: 5,
            ..Behaviour::default()
        },
    );
    let mut fe = Frontend::new(a, 2, &el.0).unwrap();
    let queues = [queue(&mem, 0x1000), queue(&mem, 0x2000)];
    let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let calls: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    // The driver acks a feature the backend did not offer (bit 0): dropped.
    fe.start((1 << 32) | 1, &mem, &queues, &kicks, &calls)
        .unwrap();
    assert_eq!(fe.stop().unwrap(), vec![5, 5]);
    drop(fe);
    let log = backend.join().unwrap();
    let after_handshake = &log[5..];
    let mut expected = vec![fake::SET_FEATURES, fake::SET_MEM_TABLE];
    for _ in 0..2 {
        expected.extend([
            fake::SET_VRING_NUM,
            fake::SET_VRING_BASE,
            fake::SET_VRING_ADDR,
            fake::SET_VRING_KICK,
            fake::SET_VRING_CALL,
        ]);
    }
    expected.extend([fake::SET_VRING_ENABLE, fake::SET_VRING_ENABLE]);
    for _ in 0..2 {
        expected.extend([fake::SET_VRING_ENABLE, fake::GET_VRING_BASE]);
    }
    assert_eq!(requests(after_handshake), expected);

    // SET_FEATURES: the driver's features the backend offers, plus the
    // protocol-features bit.
    assert_eq!(after_handshake[0].u64_at(0), (1 << 32) | (1 << 30));

    // SET_MEM_TABLE: count, padding, then (gpa, size, uaddr, mmap offset);
    // the fd is the memfd behind guest RAM.
    let table = &after_handshake[1];
    let region = mem.iter().next().unwrap();
    assert_eq!(table.u32_at(0), 1);
    assert_eq!(table.body.len(), 8 + 32);
    assert_eq!(table.u64_at(8), 0);
    assert_eq!(table.u64_at(16), 4 << 20);
    assert_eq!(table.u64_at(24), region.as_ptr() as u64);
    assert_eq!(table.u64_at(32), 0);
    assert_eq!(table.fds.len(), 1);
    let memfd = region.file_offset().unwrap().file().as_raw_fd();
    assert_eq!(fstat_ino(table.fds[0].as_raw_fd()), fstat_ino(memfd));

    // Ring 1: size, base, host addresses, kick and call eventfds.
    let ring1 = &after_handshake[7..12];
    assert_eq!((ring1[0].u32_at(0), ring1[0].u32_at(4)), (1, 8));
    assert_eq!((ring1[1].u32_at(0), ring1[1].u32_at(4)), (1, 0));
    let host = |g: u64| mem.get_host_address(GuestAddress(g)).unwrap() as u64;
    assert_eq!(ring1[2].u32_at(0), 1);
    assert_eq!(ring1[2].u64_at(8), host(0x2000), "descriptor table");
    assert_eq!(ring1[2].u64_at(16), host(0x2200), "used ring");
    assert_eq!(ring1[2].u64_at(24), host(0x2100), "available ring");
    for (m, evt) in [(&ring1[3], &kicks[1]), (&ring1[4], &calls[1])] {
        // Index in bits 0-7; bit 8 (no fd) clear; the fd is our eventfd.
        assert_eq!(m.u64_at(0), 1);
        assert_eq!(m.fds.len(), 1);
        assert_eq!(fstat_ino(m.fds[0].as_raw_fd()), fstat_ino(evt.as_raw_fd()));
    }
    // Enable then disable, ring by ring.
    assert_eq!(after_handshake[13].u32_at(4), 1);
    assert_eq!(after_handshake[14].u32_at(0), 0);
    assert_eq!(after_handshake[14].u32_at(4), 0);
}

#[test]
fn private_memory_is_refused_before_any_request() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let Err(e) = mem_regions(&mem) else {
        panic!("private memory accepted");
    };
    assert_eq!(
        e.to_string(),
        "guest RAM at 0x0 is not shareable with a vhost-user backend \
         (add mem-share=on to -machine)"
    );
}

#[test]
fn backend_closing_mid_handshake_is_a_clear_error() {
    let el = event_loop();
    for at in 0..5 {
        let (a, b) = UnixStream::pair().unwrap();
        let backend = fake::spawn(
            b,
            Behaviour {
                hang_up_at: Some(at),
                ..Behaviour::default()
            },
        );
        // SET_PROTOCOL_FEATURES (2) has no reply: the hang-up shows at the
        // next request that waits for one.
        let op = [
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "GET_QUEUE_NUM",
            "GET_QUEUE_NUM",
            "SET_OWNER",
        ][at];
        let e = Frontend::new(a, 2, &el.0).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("vhost-user {op} failed: ")),
            "hang-up at {at}: {text}"
        );
        assert!(
            matches!(
                e,
                VhostUserError::Request {
                    source: RequestError::Disconnected,
                    ..
                }
            ),
            "hang-up at {at}: {text}"
        );
        backend.join().unwrap();
    }
}

#[test]
fn backend_closing_during_start_breaks_the_session() {
    let el = event_loop();
    let mem = shared_memory();
    let (a, b) = UnixStream::pair().unwrap();
    // Message 6 is SET_MEM_TABLE (after 5 handshake messages + SET_FEATURES).
    let backend = fake::spawn(
        b,
        Behaviour {
            hang_up_at: Some(6),
            ..Behaviour::default()
        },
    );
    let mut fe = Frontend::new(a, 2, &el.0).unwrap();
    let queues = [queue(&mem, 0x1000), queue(&mem, 0x2000)];
    let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let e = fe.start(1 << 32, &mem, &queues, &evts, &evts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vhost-user SET_MEM_TABLE failed: the backend closed the connection"
    );
    assert!(fe.is_broken());
    // Later requests fail at once without touching the socket.
    assert!(matches!(fe.stop(), Err(VhostUserError::Broken)));
    assert!(matches!(
        fe.start(1 << 32, &mem, &queues, &evts, &evts),
        Err(VhostUserError::Broken)
    ));
    backend.join().unwrap();
}

#[test]
fn backend_refusal_surfaces_at_the_refused_request() {
    let el = event_loop();
    let mem = shared_memory();
    let (a, b) = UnixStream::pair().unwrap();
    let backend = fake::spawn(
        b,
        Behaviour {
            nack: Some(fake::SET_VRING_ADDR),
            ..Behaviour::default()
        },
    );
    let mut fe = Frontend::new(a, 2, &el.0).unwrap();
    let queues = [queue(&mem, 0x1000), queue(&mem, 0x2000)];
    let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let e = fe.start(1 << 32, &mem, &queues, &evts, &evts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vhost-user SET_VRING_ADDR failed: the backend refused it"
    );
    assert!(fe.is_broken());
    drop(fe);
    backend.join().unwrap();
}

#[test]
fn silent_backend_times_out_instead_of_hanging() {
    let el = event_loop();
    let (a, b) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let e = Frontend::new(a, 2, &el.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vhost-user GET_FEATURES failed: no answer from the backend within the timeout"
    );
    let waited = start.elapsed();
    assert!(
        waited >= IO_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    assert!(waited < IO_TIMEOUT * 2, "{waited:?}");
    // The deadline shut the session's socket down: the backend reads the
    // unanswered request, then end of file.
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &b, &mut got).unwrap();
    assert_eq!(
        got,
        [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        "GET_FEATURES header"
    );
}

#[test]
fn connect_retries_until_the_backend_listens() {
    let dir = std::env::temp_dir().join(format!("altovirt-vu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("late.sock");
    let p2 = path.clone();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let l = UnixListener::bind(&p2).unwrap();
        l.accept().unwrap();
    });
    let s = connect(&path, Duration::from_secs(5)).unwrap();
    drop(s);
    server.join().unwrap();

    // Nobody ever listens: the error names the path after the bounded wait.
    let missing = dir.join("nobody.sock");
    let start = Instant::now();
    let e = connect(&missing, Duration::from_millis(400)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot connect to vhost-user backend socket {}",
            missing.display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("No such file or directory (os error 2)"),
        "{text}"
    );

    // A path that is not a socket fails at once.
    let file = dir.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let start = Instant::now();
    let e = connect(&file, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().ends_with("not a unix socket"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
