//! One stream connection between a guest socket and a host unix socket:
//! its state, its buffers in both directions and the credit accounting of
//! the vsock stream protocol.
//!
//! Host to guest: bytes are read from the host socket only while the guest
//! has advertised room for them (`buf_alloc - (tx_cnt - fwd_cnt)` of its
//! last header), staged (at most [`STAGE_LIMIT`] bytes) and sent as RW
//! packets. Guest to host: RW payloads are queued (at most [`BUF_ALLOC`]
//! bytes, which is what the device advertises) and written to the host
//! socket as it takes them; `fwd_cnt` counts what it took.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use util::event_loop::Token;

use super::host::{bad_line, parse_connect, send};
use super::packet::{
    Header, HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer space the device advertises for each connection.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Most host bytes staged per connection while waiting for receive buffers.
pub const STAGE_LIMIT: usize = 64 << 10;
/// Once the room the guest believes it has falls below this, consumed
/// bytes are reported with a CREDIT_UPDATE.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 << 10;
/// Longest `CONNECT <port>\n` line accepted from a host client.
pub const MAX_CONNECT_LINE: usize = 32;

const PENDING_REQUEST: u8 = 1;
const PENDING_RESPONSE: u8 = 2;
const PENDING_CREDIT_UPDATE: u8 = 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// A host client connected to the main socket; its `CONNECT` line is
    /// being read.
    AwaitConnect(Vec<u8>),
    /// REQUEST sent (or to be sent) to the guest, waiting for RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// The guest sent more than the room the device advertised.
    #[error("guest exceeded its credit by {0} bytes")]
    Credit(usize),
    /// The host socket failed.
    #[error("host socket: {0}")]
    Io(#[from] io::Error),
}

/// A connection and its host socket.
pub(crate) struct Conn {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// Its event loop registration.
    pub token: Option<Token>,
    /// Where the connection is in its life.
    pub state: State,
    /// Port on the host side (CID 2).
    pub host_port: u32,
    /// Port of the guest socket.
    pub guest_port: u32,
    /// The guest's CID (destination of our packets).
    pub guest_cid: u64,
    /// When the connection is given up if still not established/closed.
    pub deadline: Option<Instant>,
    /// Whether the connection is on the device's list of packet senders.
    pub queued: bool,
    pending: u8,
    // Host to guest.
    to_guest: VecDeque<u8>,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    host_eof: bool,
    shutdown_sent: bool,
    // Guest to host.
    ack_line: Vec<u8>,
    to_host: VecDeque<u8>,
    rx_cnt: u32,
    fwd_cnt: u32,
    reported_fwd_cnt: u32,
    guest_shut: u32,
    host_write_shut: bool,
}

impl Conn {
    /// A host client that still has to send its `CONNECT` line.
    pub fn accepted(stream: UnixStream, guest_cid: u64, deadline: Instant) -> Self {
        Conn {
            stream,
            token: None,
            state: State::AwaitConnect(Vec::new()),
            host_port: 0,
            guest_port: 0,
            guest_cid,
            deadline: Some(deadline),
            queued: false,
            pending: 0,
            to_guest: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_eof: false,
            shutdown_sent: false,
            ack_line: Vec::new(),
            to_host: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            reported_fwd_cnt: 0,
            guest_shut: 0,
            host_write_shut: false,
        }
    }

    /// The host client asked for guest port `guest_port`: a REQUEST from
    /// `host_port` is due. `early` holds bytes the client sent after its
    /// line; they go to the guest once connected.
    pub fn start_connect(&mut self, host_port: u32, guest_port: u32, early: &[u8]) {
        self.state = State::Connecting;
        self.host_port = host_port;
        self.guest_port = guest_port;
        self.pending |= PENDING_REQUEST;
        self.to_guest.extend(early);
    }

    /// A connection the guest requested with `req` to a host socket that
    /// accepted it: a RESPONSE is due.
    pub fn guest_initiated(stream: UnixStream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Conn::accepted(stream, guest_cid, Instant::now());
        c.deadline = None;
        c.state = State::Established;
        c.host_port = req.dst_port;
        c.guest_port = req.src_port;
        c.pending = PENDING_RESPONSE;
        c.update_peer_credit(req);
        c
    }

    /// The guest accepted our REQUEST: the client gets `OK <port>\n`.
    pub fn established(&mut self) {
        self.state = State::Established;
        self.deadline = None;
        self.ack_line = format!("OK {}\n", self.host_port).into_bytes();
    }

    /// Records the credit information every guest header carries.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can still take: `buf_alloc - (tx_cnt - fwd_cnt)`.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest asked how much room we have.
    pub fn request_credit_update(&mut self) {
        self.pending |= PENDING_CREDIT_UPDATE;
    }

    /// The guest shut down directions (`SHUTDOWN_RCV`/`SHUTDOWN_SEND`).
    pub fn guest_shutdown(&mut self, flags: u32) {
        self.guest_shut |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.guest_shut & SHUTDOWN_RCV != 0 {
            // Nobody will read it.
            self.to_guest.clear();
        }
    }

    /// Queues RW payload from the guest for the host socket.
    pub fn push_from_guest(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let room = (BUF_ALLOC as usize).saturating_sub(self.to_host.len());
        if data.len() > room {
            return Err(ConnError::Credit(data.len() - room));
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            // Data after the guest said it would send none: drop it.
            return Ok(());
        }
        self.to_host.extend(data);
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        Ok(())
    }

    /// Bytes queued for the host socket.
    #[cfg(test)]
    pub fn to_host_len(&self) -> usize {
        self.to_host.len()
    }

    /// Bytes staged for the guest.
    #[cfg(test)]
    pub fn to_guest_len(&self) -> usize {
        self.to_guest.len()
    }

    /// Writes what is queued to the host socket (never blocks).
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.ack_line.is_empty() {
            let n = match send(&self.stream, &self.ack_line) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.ack_line.drain(..n);
        }
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            let n = match send(&self.stream, a) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.to_host.drain(..n);
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        let believed_used = self.rx_cnt.wrapping_sub(self.reported_fwd_cnt);
        if self.fwd_cnt != self.reported_fwd_cnt
            && BUF_ALLOC.saturating_sub(believed_used) < CREDIT_UPDATE_THRESHOLD
        {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
        if self.to_host.is_empty()
            && self.guest_shut & SHUTDOWN_SEND != 0
            && self.state == State::Established
            && !self.host_write_shut
        {
            self.host_write_shut = true;
            // The peer may already be gone; nothing to do about it then.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// How many more host bytes may be read now.
    fn read_allowance(&self) -> usize {
        if self.state != State::Established || self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0
        {
            return 0;
        }
        let credit = self.peer_credit() as usize;
        STAGE_LIMIT
            .saturating_sub(self.to_guest.len())
            .min(credit.saturating_sub(self.to_guest.len()))
    }

    /// Reads from the host socket what the guest has room for (never
    /// blocks); `scratch` is a reusable buffer.
    pub fn fill_from_host(&mut self, scratch: &mut [u8]) -> Result<(), ConnError> {
        loop {
            let want = self.read_allowance().min(scratch.len());
            if want == 0 {
                return Ok(());
            }
            match (&self.stream).read(&mut scratch[..want]) {
                Ok(0) => {
                    self.host_eof = true;
                    return Ok(());
                }
                Ok(n) => self.to_guest.extend(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line (never blocks). Returns the port
    /// and the bytes that followed the line once complete, `Ok(None)` while
    /// incomplete, and an error for a malformed line or a closed client.
    pub fn read_connect_line(&mut self) -> io::Result<Option<(u32, Vec<u8>)>> {
        let State::AwaitConnect(line) = &mut self.state else {
            return Ok(None);
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        loop {
            let room = MAX_CONNECT_LINE - line.len();
            if room == 0 {
                return Err(bad_line("CONNECT line too long"));
            }
            let n = match (&self.stream).read(&mut buf[..room]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            line.extend_from_slice(&buf[..n]);
            if let Some(end) = line.iter().position(|&b| b == b'\n') {
                let port = parse_connect(&line[..end])?;
                return Ok(Some((port, line[end + 1..].to_vec())));
            }
        }
    }

    /// Whether a packet for the guest is ready.
    pub fn has_rx(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        if self.state != State::Established {
            return false;
        }
        (!self.to_guest.is_empty() && self.peer_credit() > 0) || self.shutdown_due()
    }

    fn shutdown_due(&self) -> bool {
        self.host_eof && self.to_guest.is_empty() && !self.shutdown_sent
    }

    fn header(&mut self, op: u16) -> Header {
        self.reported_fwd_cnt = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The RST that ends this connection.
    pub fn rst_header(&self) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }

    /// Takes the next packet for the guest, with at most `room` payload
    /// bytes (and never more than the guest's credit).
    pub fn take_rx(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        for (bit, op) in [
            (PENDING_REQUEST, OP_REQUEST),
            (PENDING_RESPONSE, OP_RESPONSE),
            (PENDING_CREDIT_UPDATE, OP_CREDIT_UPDATE),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return Some((self.header(op), Vec::new()));
            }
        }
        if self.state != State::Established {
            return None;
        }
        let n = self
            .to_guest
            .len()
            .min(room)
            .min(self.peer_credit() as usize);
        if n > 0 {
            let data: Vec<u8> = self.to_guest.drain(..n).collect();
            self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
            return Some((self.header(OP_RW), data));
        }
        if self.shutdown_due() {
            self.shutdown_sent = true;
            let mut h = self.header(OP_SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            return Some((h, Vec::new()));
        }
        None
    }

    /// Whether both sides are done and the connection should end (with an
    /// RST to the guest).
    pub fn finished(&self) -> bool {
        if self.state != State::Established || !self.to_host.is_empty() {
            return false;
        }
        let guest_gone = self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND;
        let both_sent = self.guest_shut & SHUTDOWN_SEND != 0 && self.shutdown_sent;
        guest_gone || both_sent
    }

    /// Whether the guest shut down both directions but data is still being
    /// written to the host.
    pub fn draining(&self) -> bool {
        self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND && !self.to_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let req = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 10,
            ..Header::default()
        };
        (Conn::guest_initiated(a, 3, &req), b)
    }

    #[test]
    fn host_data_is_bounded_by_guest_credit() {
        let (mut c, mut peer) = pair();
        let (h, _) = c.take_rx(100).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 52, 5000));
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        peer.write_all(b"0123456789abcdef").unwrap();
        let mut scratch = [0u8; 4096];
        c.fill_from_host(&mut scratch).unwrap();
        // buf_alloc 10: only 10 bytes read from the socket.
        assert_eq!(c.to_guest_len(), 10);
        let (h, data) = c.take_rx(4).unwrap();
        assert_eq!((h.op, h.len), (OP_RW, 0));
        assert_eq!(data, b"0123");
        let (_, data) = c.take_rx(100).unwrap();
        assert_eq!(data, b"456789");
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.has_rx());
        assert!(c.take_rx(100).is_none());
        // The guest consumed 4 bytes.
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: 4,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 4);
        c.fill_from_host(&mut scratch).unwrap();
        let (_, data) = c.take_rx(100).unwrap();
        assert_eq!(data, b"abcd");
        // The guest shrinks its buffer below what is in flight: no credit.
        c.update_peer_credit(&Header {
            buf_alloc: 2,
            fwd_cnt: 4,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_data_is_bounded_and_credit_reported() {
        let (mut c, peer) = pair();
        c.take_rx(0).unwrap();
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..4 {
            c.push_from_guest(&chunk).unwrap();
        }
        assert!(matches!(c.push_from_guest(&[1]), Err(ConnError::Credit(1))));
        // The host reads nothing yet: the socket buffer fills, the rest
        // stays queued.
        c.flush_to_host().unwrap();
        assert!(c.to_host_len() > 0);
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while c.to_host_len() > 0 {
            match (&peer).read(&mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            c.flush_to_host().unwrap();
        }
        assert!(c.has_rx(), "consumed bytes must be reported");
        let (h, _) = c.take_rx(0).unwrap();
        assert_eq!(h.op, OP_CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, 256 << 10);
        assert!(!c.has_rx());
        while got < 256 << 10 {
            if let Ok(n) = (&peer).read(&mut buf) {
                got += n;
            }
        }
        assert_eq!(got, 256 << 10);
        c.request_credit_update();
        assert_eq!(c.take_rx(0).unwrap().0.op, OP_CREDIT_UPDATE);
    }

    #[test]
    fn shutdowns_in_both_directions_finish_the_connection() {
        let (mut c, mut peer) = pair();
        c.take_rx(0).unwrap();
        c.push_from_guest(b"bye").unwrap();
        c.guest_shutdown(SHUTDOWN_SEND);
        c.flush_to_host().unwrap();
        let mut got = Vec::new();
        peer.set_nonblocking(false).unwrap();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye", "host sees EOF after the data");
        assert!(!c.finished());
        drop(peer);
        let mut scratch = [0u8; 64];
        c.fill_from_host(&mut scratch).unwrap();
        let (h, _) = c.take_rx(100).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert!(c.finished());
    }

    #[test]
    fn guest_close_waits_for_queued_data() {
        let (mut c, _peer) = pair();
        c.push_from_guest(b"x").unwrap();
        c.guest_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND);
        assert!(c.draining());
        assert!(!c.finished());
        c.flush_to_host().unwrap();
        assert!(c.finished());
    }

    #[test]
    fn connect_line_with_early_data_and_limits() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::accepted(a, 3, Instant::now());
        assert!(c.read_connect_line().unwrap().is_none());
        b.write_all(b"CONNECT 5").unwrap();
        assert!(c.read_connect_line().unwrap().is_none());
        b.write_all(b"2\nhi").unwrap();
        let (port, early) = c.read_connect_line().unwrap().unwrap();
        assert_eq!((port, early.as_slice()), (52, &b"hi"[..]));
        c.start_connect(1024, port, &early);
        let (h, _) = c.take_rx(0).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_REQUEST, 1024, 52));
        // No data before the guest accepts.
        assert!(!c.has_rx());
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            ..Header::default()
        });
        c.established();
        c.flush_to_host().unwrap();
        let mut line = [0u8; 8];
        b.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1024\n");
        let (h, data) = c.take_rx(100).unwrap();
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"hi"[..]));

        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::accepted(a, 3, Instant::now());
        b.write_all(&[b'A'; MAX_CONNECT_LINE + 1]).unwrap();
        assert!(c.read_connect_line().is_err());
    }
}
