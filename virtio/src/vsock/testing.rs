//! A test rig: a hybrid vsock device driven by a simulated guest driver
//! (split queues laid out here) and real unix sockets in a temporary directory.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::*;
use super::*;
use crate::test_utils::*;

/// The driver side of a split queue of [`QSIZE`] entries. (The rings are
/// laid out here: `MockSplitQueue` places its used ring inside the
/// available ring once more than a few entries are posted.)
pub struct Vq<'a> {
    mem: &'a GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
}

impl<'a> Vq<'a> {
    fn create(mem: &'a GuestMemoryMmap, base: u64) -> Self {
        let vq = Vq {
            mem,
            desc: base,
            avail: base + 0x200,
            used: base + 0x400,
        };
        mem.write_slice(&[0u8; 0x800], GuestAddress(base)).unwrap();
        vq
    }

    /// The device's view of the queue.
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes descriptors `first..` as one chain of `bufs`.
    pub fn write_chain(&self, first: u16, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(idx + 1).to_le_bytes());
            let at = self.desc + 16 * u64::from(idx);
            self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        }
    }

    /// Makes the chains at `heads` available.
    pub fn publish(&self, heads: &[u16]) {
        let mut idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        for &h in heads {
            let slot = u64::from(idx % QSIZE);
            self.mem
                .write_obj(h, GuestAddress(self.avail + 4 + 2 * slot))
                .unwrap();
            idx = idx.wrapping_add(1);
        }
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring entry `i` as (head, written length).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// The guest's CID in the tests.
pub const CID: u64 = 3;
/// Receive buffers: one 4 KiB buffer per descriptor.
const RX_BUF: u64 = 0x10_0000;
pub const RX_BUF_LEN: u32 = 4096;
/// Transmit buffers: 128 KiB per slot (header page, then payload).
const TX_BUF: u64 = 0x20_0000;
const TX_SLOTS: u16 = QSIZE / 2;

pub struct Rig<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub rx: Vq<'a>,
    pub tx: Vq<'a>,
    pub ev: Vq<'a>,
    pub evts: Vec<EventFd>,
    pub irq: Arc<Interrupt>,
    pub dev: Vsock,
    pub el: EventLoop,
    pub dir: PathBuf,
    pub uds: PathBuf,
    rx_seen: u16,
    tx_sent: u16,
}

fn queues(mem: &GuestMemoryMmap, base: u64) -> (Vq<'_>, Vq<'_>, Vq<'_>) {
    (
        Vq::create(mem, base),
        Vq::create(mem, base + 0x1000),
        Vq::create(mem, base + 0x2000),
    )
}

/// A guest packet header from `src_port` to host port `dst_port`.
pub fn pkt(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 << 10,
        ..Header::default()
    }
}

/// Reads a line (up to '\n') from a blocking stream.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed `s` (EOF or reset) within 5 s.
pub fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A client of the device's socket.
pub fn client(uds: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

impl<'a> Rig<'a> {
    /// A device on `<tempdir>/v.sock`, activated, with every receive
    /// buffer posted.
    pub fn new(mem: &'a GuestMemoryMmap, tag: &str) -> Self {
        let dir = temp_dir(tag);
        let uds = dir.join("v.sock");
        let el = EventLoop::new(&format!("vsock-{tag}")).unwrap();
        let dev = Vsock::new(
            VsockConfig {
                guest_cid: CID,
                uds_path: uds.clone(),
            },
            el.clone(),
        )
        .unwrap();
        let (rx, tx, ev) = queues(mem, 0);
        let mut rig = Rig {
            mem,
            rx,
            tx,
            ev,
            evts: Vec::new(),
            irq: Arc::new(Interrupt::new().unwrap()),
            dev,
            el,
            dir,
            uds,
            rx_seen: 0,
            tx_sent: 0,
        };
        rig.activate();
        rig
    }

    fn activate(&mut self) {
        self.evts = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let qs = vec![
            (self.rx.queue(), self.evts[0].try_clone().unwrap()),
            (self.tx.queue(), self.evts[1].try_clone().unwrap()),
            (self.ev.queue(), self.evts[2].try_clone().unwrap()),
        ];
        self.dev
            .activate(self.mem.clone(), self.irq.clone(), qs)
            .unwrap();
        self.rx_seen = 0;
        self.tx_sent = 0;
        self.post_rx(RX_BUF_LEN);
    }

    /// Resets the device and activates it again on fresh queues.
    pub fn reactivate(&mut self, base: u64) {
        self.dev.reset();
        let (rx, tx, ev) = queues(self.mem, base);
        self.rx = rx;
        self.tx = tx;
        self.ev = ev;
        self.activate();
    }

    /// Posts every receive descriptor, each with a `len`-byte buffer.
    pub fn post_rx(&self, len: u32) {
        let heads: Vec<u16> = (0..QSIZE).collect();
        for &i in &heads {
            self.rx
                .write_chain(i, &[(RX_BUF + u64::from(i) * 0x1000, len, true)]);
        }
        self.rx.publish(&heads);
        self.evts[0].write(1).unwrap();
    }

    /// The next packet the device gives the guest, if one comes within
    /// `wait`; its buffer is posted again.
    pub fn try_recv(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        while self.rx.used_idx() == self.rx_seen {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let (id, len) = self.rx.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let mut buf = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(RX_BUF + u64::from(id) * 0x1000))
            .unwrap();
        self.rx.publish(&[id as u16]);
        self.evts[0].write(1).unwrap();
        assert!(buf.len() >= HDR_LEN, "short packet");
        let mut raw = [0u8; HDR_LEN];
        raw.copy_from_slice(&buf[..HDR_LEN]);
        let h = Header::from_bytes(&raw);
        assert_eq!(
            h.len as usize,
            buf.len() - HDR_LEN,
            "len matches the used length"
        );
        Some((h, buf[HDR_LEN..].to_vec()))
    }

    /// The next packet for the guest (within 5 s).
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        self.try_recv(Duration::from_secs(5))
            .expect("no packet for the guest")
    }

    /// Sends a transmit chain of readable `bufs` and waits for its use.
    pub fn send_bufs(&mut self, bufs: &[&[u8]]) {
        let slot = self.tx_sent % TX_SLOTS;
        let base = TX_BUF + u64::from(slot) * 0x2_0000;
        let mut chain = Vec::new();
        let mut at = base;
        for b in bufs {
            self.mem.write_slice(b, GuestAddress(at)).unwrap();
            chain.push((at, b.len() as u32, false));
            at += 0x1_0000;
        }
        self.send_descs(&chain);
    }

    /// Sends a transmit chain made of `descs` and waits for its use.
    pub fn send_descs(&mut self, descs: &[(u64, u32, bool)]) {
        let slot = self.tx_sent % TX_SLOTS;
        self.tx.write_chain(slot * 2, descs);
        self.tx.publish(&[slot * 2]);
        self.tx_sent = self.tx_sent.wrapping_add(1);
        self.evts[1].write(1).unwrap();
        let want = self.tx_sent;
        assert!(wait_for(|| self.tx.used_idx() == want));
    }

    /// Sends a packet (header and payload in separate buffers).
    pub fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        if payload.is_empty() {
            self.send_bufs(&[&h.to_bytes()]);
        } else {
            self.send_bufs(&[&h.to_bytes(), payload]);
        }
    }

    /// A host client connects to guest port `port` and the guest accepts
    /// from `port`: returns the client (past its `OK` line) and the host
    /// port.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = client(&self.uds);
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let (req, _) = self.recv();
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, CID, port)
        );
        assert!(req.src_port >= FIRST_HOST_PORT);
        self.send(pkt(OP_RESPONSE, port, req.src_port), &[]);
        assert_eq!(read_line(&mut c), format!("OK {}\n", req.src_port));
        (c, req.src_port)
    }

    /// The guest connects from `guest_port` to host port `host_port`.
    pub fn guest_connect(&mut self, guest_port: u32, host_port: u32, buf_alloc: u32) -> Header {
        let mut h = pkt(OP_REQUEST, guest_port, host_port);
        h.buf_alloc = buf_alloc;
        self.send(h, &[]);
        self.recv().0
    }
}

impl Drop for Rig<'_> {
    fn drop(&mut self) {
        self.el.stop();
    }
}
