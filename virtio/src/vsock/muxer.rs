//! The hybrid vsock engine: the connection table, the packets exchanged
//! with the guest and the host sockets watched on the event loop.
//!
//! Everything here runs on the device's event loop thread, under the lock
//! of the [`Muxer`]. Host sockets are registered edge-triggered: each
//! readiness report is followed by reading and writing until the socket
//! would block or the flow control says stop, and every guest packet that
//! may unblock a connection (credit, data) makes the device try again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use util::event_loop::{EventLoop, EventLoopError, Token};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Conn, State};
use super::host::{connect_nonblocking, port_path, Timer};
use super::packet::{
    read_tx, Header, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use crate::lock;
use crate::worker::QueueSet;

mod rx;

/// Receive queue index.
pub(crate) const RXQ: usize = 0;
/// Transmit queue index.
pub(crate) const TXQ: usize = 1;
/// Event queue index.
pub(crate) const EVQ: usize = 2;
/// struct virtio_vsock_event id: the transport was reset (connections
/// are gone, the CID may have changed).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// Most connections (including host clients that have not yet sent their
/// `CONNECT` line) at any time.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a host client may take to send `CONNECT <port>\n`, and the
/// guest to answer the resulting REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long queued guest data may take to reach a host socket after the
/// guest closed the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(4);
/// After a restore, how long packets for the guest wait for it to take the
/// transport-reset event before they go anyway.
const RESET_ACK_WAIT: Duration = Duration::from_secs(1);
/// First host port handed out to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1024;
/// Most control packets (RSTs) waiting for receive buffers; more are
/// dropped.
const MAX_CTRL: usize = 256;
/// Chains served per handler call before yielding to other devices.
const BUDGET: usize = 256;
const SOCKET_EVENTS: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Calls `f` with the muxer on the loop thread whenever `fd` reports
/// `events`, while the device is active; then sends what is due.
fn watch(
    me: &Weak<Mutex<Muxer>>,
    event_loop: &EventLoop,
    fd: RawFd,
    events: u32,
    f: impl Fn(&mut Muxer, u32) + Send + 'static,
) -> Result<Token, EventLoopError> {
    let weak = me.clone();
    let handler = Box::new(move |bits| {
        if let Some(m) = weak.upgrade() {
            let mut m = lock(&m);
            if m.active.is_some() {
                f(&mut m, bits);
                m.finish();
            }
        }
    });
    event_loop.add(fd, events, handler)
}

/// What an active device holds besides its queues; dropped on reset.
struct Active {
    qs: QueueSet,
    rx_kick: EventFd,
    timer: Timer,
    tokens: Vec<Token>,
}

/// Registrations and sockets taken from a device being reset, to be
/// released without holding the muxer's lock.
pub(crate) struct Teardown {
    active: Option<Active>,
    conns: HashMap<u64, Conn>,
}

impl Teardown {
    /// Unregisters everything from `event_loop` (waiting for running
    /// handlers), then closes the sockets.
    pub fn finish(self, event_loop: &EventLoop) {
        let tokens = self.active.iter().flat_map(|a| a.tokens.iter());
        let conn_tokens = self.conns.values().filter_map(|c| c.token.as_ref());
        for t in tokens.chain(conn_tokens) {
            if let Err(e) = event_loop.remove(*t) {
                log::debug!("vsock: {e}");
            }
        }
    }
}

/// The state of a hybrid vsock device.
pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    event_loop: EventLoop,
    me: Weak<Mutex<Muxer>>,
    listener: UnixListener,
    active: Option<Active>,
    conns: HashMap<u64, Conn>,
    /// (host port, guest port) to connection id.
    by_addr: HashMap<(u32, u32), u64>,
    next_id: u64,
    next_port: u32,
    /// Connections with packets for the guest, served round robin.
    rx_ready: VecDeque<u64>,
    /// Packets not tied to a live connection (RSTs).
    ctrl: VecDeque<Header>,
    scratch: Vec<u8>,
    payload: Vec<u8>,
    /// After a restore: the guest was sent TRANSPORT_RESET and has not
    /// taken it yet (it re-offers the event buffer when it has: the event
    /// queue's available index, here at the time of the reset, moves).
    /// Nothing goes to the guest meanwhile, so the reset cannot close a
    /// connection made after the restore. The deadline is the fallback.
    reset_pending: Option<(u16, Instant)>,
}

impl Muxer {
    /// A muxer serving host clients of `listener` once activated.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        event_loop: EventLoop,
    ) -> Arc<Mutex<Muxer>> {
        Arc::new_cyclic(|me| {
            Mutex::new(Muxer {
                guest_cid,
                uds_path,
                event_loop,
                me: me.clone(),
                listener,
                active: None,
                conns: HashMap::new(),
                by_addr: HashMap::new(),
                next_id: 0,
                next_port: FIRST_HOST_PORT,
                rx_ready: VecDeque::new(),
                ctrl: VecDeque::new(),
                scratch: vec![0u8; 16 << 10],
                payload: Vec::new(),
                reset_pending: None,
            })
        })
    }

    /// Live connections, including host clients still sending `CONNECT`.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Calls `f` on the loop thread whenever `fd` reports `events`, while
    /// the device is active.
    fn watch(
        &self,
        fd: RawFd,
        events: u32,
        f: impl Fn(&mut Muxer, u32) + Send + 'static,
    ) -> Result<Token, EventLoopError> {
        watch(&self.me, &self.event_loop, fd, events, f)
    }

    /// Starts serving with `qs`. The caller then registers the returned
    /// listening socket and timer descriptors (see [`Muxer::watch_static`])
    /// without holding the lock, and hands the tokens to
    /// [`Muxer::add_tokens`].
    pub fn activate(&mut self, qs: QueueSet, rx_kick: EventFd) -> io::Result<(RawFd, RawFd)> {
        let timer = Timer::new()?;
        let fds = (self.listener.as_raw_fd(), timer.as_raw_fd());
        self.active = Some(Active {
            qs,
            rx_kick,
            timer,
            tokens: Vec::new(),
        });
        Ok(fds)
    }

    /// Registers the listening socket (`fds.0`) and the timer (`fds.1`) of
    /// `muxer`; on failure, what was registered is removed again.
    pub fn watch_static(
        muxer: &Arc<Mutex<Muxer>>,
        event_loop: &EventLoop,
        fds: (RawFd, RawFd),
    ) -> Result<Vec<Token>, EventLoopError> {
        let me = Arc::downgrade(muxer);
        let listener = watch(&me, event_loop, fds.0, libc::EPOLLIN as u32, |m, _| {
            m.on_listener()
        })?;
        match watch(&me, event_loop, fds.1, libc::EPOLLIN as u32, |m, _| {
            m.on_timer()
        }) {
            Ok(timer) => Ok(vec![listener, timer]),
            Err(e) => {
                let _ = event_loop.remove(listener);
                Err(e)
            }
        }
    }

    /// Keeps `tokens` to be removed on reset.
    pub fn add_tokens(&mut self, tokens: Vec<Token>) {
        if let Some(a) = self.active.as_mut() {
            a.tokens.extend(tokens);
        }
    }

    /// Stops serving: everything but the listening socket is handed back
    /// for [`Teardown::finish`].
    pub fn deactivate(&mut self) -> Teardown {
        self.reset_pending = None;
        self.by_addr.clear();
        self.rx_ready.clear();
        self.ctrl.clear();
        Teardown {
            active: self.active.take(),
            conns: std::mem::take(&mut self.conns),
        }
    }

    /// Work after every event: packets to the guest (unless a restored
    /// guest has yet to take the transport reset), the timer.
    fn finish(&mut self) {
        if self.reset_pending.is_none() {
            self.fill_rx();
        }
        let next = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.reset_pending.map(|(_, d)| d))
            .min();
        if let Some(a) = self.active.as_mut() {
            a.timer.set(next);
        }
    }

    /// The next host port `CONNECT` hands out (snapshots).
    pub fn next_host_port(&self) -> u32 {
        self.next_port
    }

    /// Continues handing out host ports from `port` (a restored device);
    /// out-of-range values restart at [`FIRST_HOST_PORT`].
    pub fn set_next_host_port(&mut self, port: u32) {
        self.next_port = if (FIRST_HOST_PORT..u32::MAX).contains(&port) {
            port
        } else {
            FIRST_HOST_PORT
        };
    }

    /// The live queue state while active (snapshots).
    pub fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| a.qs.states())
    }

    /// Puts VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue: after a
    /// restore the guest's connections have no host side any more, and
    /// the guest drops them (and re-reads its CID) on this event.
    pub fn send_transport_reset(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(chain) = a.qs.pop(EVQ) else {
            log::warn!("vsock: no event buffer for the transport reset after restore");
            return;
        };
        let writable: Vec<crate::chain::Desc> =
            chain.descs.iter().filter(|d| d.writable).copied().collect();
        let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = match crate::chain::Cursor::new(&a.qs.mem, &writable).write(&event) {
            Ok(n) => n as u32,
            Err(e) => {
                log::warn!("vsock: event buffer outside guest RAM: {e}");
                0
            }
        };
        if a.qs.add_used(EVQ, chain.head, len) {
            a.qs.interrupt.signal_used_queue();
            if let Some(idx) = a.qs.avail_idx(EVQ) {
                self.reset_pending = Some((idx, Instant::now() + RESET_ACK_WAIT));
            }
        }
    }

    /// Serves a queue notification; true when work is left over.
    pub fn handle_queue(&mut self, q: usize) -> bool {
        if self.active.is_none() {
            return false;
        }
        let more = if q == TXQ { self.process_tx() } else { false };
        // The event queue is only used once, after a restore: the guest
        // re-offering its buffer means it took the reset.
        if q == EVQ {
            self.check_reset_taken(false);
        }
        self.finish();
        more
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Registers `conn`'s socket and adds it to the table.
    fn insert(&mut self, id: u64, mut conn: Conn) -> bool {
        let fd = conn.stream.as_raw_fd();
        match self.watch(fd, SOCKET_EVENTS, move |m, bits| m.on_conn(id, bits)) {
            Ok(t) => conn.token = Some(t),
            Err(e) => {
                log::warn!("vsock: cannot watch a host socket: {e}");
                return false;
            }
        }
        if !matches!(conn.state, State::AwaitConnect(_)) {
            self.by_addr.insert((conn.host_port, conn.guest_port), id);
        }
        self.conns.insert(id, conn);
        true
    }

    /// Queues a control packet for the guest (bounded).
    fn push_ctrl(&mut self, h: Header) {
        if self.ctrl.len() >= MAX_CTRL {
            log::debug!("vsock: guest not reading; dropping a control packet");
            return;
        }
        self.ctrl.push_back(h);
    }

    /// Closes connection `id`, telling the guest with an RST if `rst`.
    fn kill(&mut self, id: u64, rst: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if !matches!(conn.state, State::AwaitConnect(_)) {
            self.by_addr.remove(&(conn.host_port, conn.guest_port));
            if rst {
                self.push_ctrl(conn.rst_header());
            }
        }
        if let Some(t) = conn.token {
            if let Err(e) = self.event_loop.remove(t) {
                log::debug!("vsock: {e}");
            }
        }
    }

    /// Moves data both ways on connection `id` and decides what follows.
    fn pump(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(conn.state, State::AwaitConnect(_)) {
            return;
        }
        let res = conn
            .flush_to_host()
            .and_then(|()| conn.fill_from_host(&mut self.scratch));
        if let Err(e) = res {
            log::debug!(
                "vsock: connection {}:{} reset: {e}",
                conn.host_port,
                conn.guest_port
            );
            self.kill(id, true);
            return;
        }
        if conn.finished() {
            self.kill(id, true);
            return;
        }
        if conn.has_rx() && !conn.queued {
            conn.queued = true;
            self.rx_ready.push_back(id);
        }
    }

    fn process_tx(&mut self) -> bool {
        let mut served = 0;
        let mut payload = std::mem::take(&mut self.payload);
        while served < BUDGET {
            let Some(a) = self.active.as_mut() else {
                break;
            };
            let Some(chain) = a.qs.pop(TXQ) else {
                break;
            };
            let res = read_tx(&a.qs.mem, &chain, &mut payload);
            if !a.qs.add_used(TXQ, chain.head, 0) {
                break;
            }
            served += 1;
            match res {
                Ok(h) => self.guest_packet(&h, &payload),
                Err(e) => {
                    log::warn!("vsock: malformed packet from the guest: {e}");
                    if let Some(h) = e.header().copied() {
                        self.refuse(&h);
                    }
                }
            }
        }
        self.payload = payload;
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        if served > 0 {
            a.qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !a.qs.is_broken()
    }

    /// Answers a bad packet with an RST (never an RST with an RST), ending
    /// the connection it belongs to, if any.
    fn refuse(&mut self, h: &Header) {
        if h.op == OP_RST {
            return;
        }
        let id = self.by_addr.get(&(h.dst_port, h.src_port)).copied();
        match id {
            Some(id) if h.dst_cid == HOST_CID && h.src_cid == self.guest_cid => self.kill(id, true),
            _ => self.push_ctrl(h.rst_reply(self.guest_cid)),
        }
    }

    fn guest_packet(&mut self, h: &Header, payload: &[u8]) {
        log::debug!("vsock: from the guest: {h:?}, {} bytes", payload.len());
        if h.dst_cid != HOST_CID || h.src_cid != self.guest_cid || h.type_ != TYPE_STREAM {
            log::debug!("vsock: refusing packet {h:?}");
            self.refuse(h);
            return;
        }
        let Some(&id) = self.by_addr.get(&(h.dst_port, h.src_port)) else {
            match h.op {
                OP_REQUEST => self.guest_connect(h),
                OP_RST => {}
                _ => self.refuse(h),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.update_peer_credit(h);
        let outcome = match (h.op, &conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                conn.established();
                Ok(())
            }
            (OP_RW, State::Established) => conn.push_from_guest(payload).map_err(|e| e.to_string()),
            (OP_SHUTDOWN, State::Established) => {
                conn.guest_shutdown(h.flags);
                if conn.draining() {
                    conn.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                Ok(())
            }
            (OP_CREDIT_UPDATE, _) => Ok(()),
            (OP_CREDIT_REQUEST, _) => {
                conn.request_credit_update();
                Ok(())
            }
            (OP_RST, _) => {
                self.kill(id, false);
                return;
            }
            (op, state) => Err(format!("unexpected op {op} in state {state:?}")),
        };
        match outcome {
            Ok(()) => self.pump(id),
            Err(why) => {
                log::debug!("vsock: resetting {}:{}: {why}", h.dst_port, h.src_port);
                self.kill(id, true);
            }
        }
    }

    /// The guest connects to host port `h.dst_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: too many connections; refusing guest connection");
            self.refuse(h);
            return;
        }
        let path = port_path(&self.uds_path, h.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connection to {}: {e}", path.display());
                self.refuse(h);
                return;
            }
        };
        let id = self.alloc_id();
        if !self.insert(id, Conn::guest_initiated(stream, self.guest_cid, h)) {
            self.refuse(h);
            return;
        }
        self.pump(id);
    }

    fn on_listener(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many connections; closing a host client");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: cannot set up a host client: {e}");
                continue;
            }
            let id = self.alloc_id();
            log::debug!("vsock: host client {id} connected");
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            if self.insert(id, Conn::accepted(stream, self.guest_cid, deadline)) {
                // The line may already be there.
                self.on_conn(id, 0);
            }
        }
    }

    /// A host port not used by any connection.
    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p >= u32::MAX - 1 {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            // At most MAX_CONNECTIONS ports are taken: this ends.
            if !self.by_addr.keys().any(|&(hp, _)| hp == p) {
                return p;
            }
        }
    }

    fn on_conn(&mut self, id: u64, bits: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.state {
            State::AwaitConnect(_) => match conn.read_connect_line() {
                Ok(None) => {}
                Ok(Some((guest_port, early))) => {
                    let host_port = self.alloc_port();
                    log::debug!(
                        "vsock: host client {id}: CONNECT {guest_port} from port {host_port}"
                    );
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.start_connect(host_port, guest_port, &early);
                        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
                        self.by_addr.insert((host_port, guest_port), id);
                        self.pump(id);
                    }
                }
                Err(e) => {
                    log::debug!("vsock: host client dropped: {e}");
                    self.kill(id, false);
                }
            },
            State::Connecting => {
                if bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.kill(id, true);
                }
            }
            State::Established => self.pump(id),
        }
    }

    /// Ends the wait for the guest to take the transport reset once it has
    /// (or, with `timer`, once the wait is over); connections waiting for
    /// the guest's answer get their full time from now.
    fn check_reset_taken(&mut self, timer: bool) {
        let Some((idx, deadline)) = self.reset_pending else {
            return;
        };
        let taken = self
            .active
            .as_ref()
            .and_then(|a| a.qs.avail_idx(EVQ))
            .is_some_and(|now| now != idx);
        let waited_enough = timer && Instant::now() >= deadline;
        if !(taken || waited_enough) {
            return;
        }
        if !taken {
            log::warn!("vsock: the guest did not take the transport reset in time; going on");
        }
        self.reset_pending = None;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for c in self.conns.values_mut() {
            if matches!(c.state, State::Connecting) {
                c.deadline = Some(deadline);
            }
        }
    }

    fn on_timer(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.timer.clear();
        }
        self.check_reset_taken(true);
        let now = Instant::now();
        let expired: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&id, c)| (id, !matches!(c.state, State::AwaitConnect(_))))
            .collect();
        for (id, rst) in expired {
            log::info!("vsock: connection timed out");
            self.kill(id, rst);
        }
    }
}
