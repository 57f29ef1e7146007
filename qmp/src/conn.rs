//! One client connection: its output queue, and the reader and writer
//! threads that serve it.
//!
//! The reader thread reads, frames and executes requests one after the
//! other; the writer thread sends queued lines. Events are queued by
//! [`crate::EventEmitter::emit`] without touching the socket, so a client
//! that does not read never blocks the VM: when its queue passes
//! [`MAX_QUEUED_LINES`] it is disconnected. While a command runs, events
//! wait in a side queue and follow its reply.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fds::{recv_with_fds, send_all};
use crate::framer::Framer;
use crate::lock;
use crate::protocol::Session;

/// Most lines (replies and events) queued for one client; an event that
/// would exceed it disconnects the client.
pub const MAX_QUEUED_LINES: usize = 1024;

/// The reader stops taking requests while this many lines wait to be sent
/// (back-pressure on a client that sends but does not read).
const READER_PAUSE_AT: usize = 64;

/// Size of one read. Commands are short lines; a longer one is simply read
/// in several pieces (the framer joins them). A 64 KiB buffer cost each
/// client that much heap, most of it resident, for nothing.
const READ_CHUNK: usize = 8 * 1024;

/// A client that has not completed `qmp_capabilities` this long after it
/// connected is disconnected, so idle
/// connections cannot hold every client slot.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct ConnState {
    /// `qmp_capabilities` succeeded: events are delivered.
    negotiated: bool,
    /// A request is being executed: events go to `deferred`.
    in_command: bool,
    /// Lines waiting for the writer.
    outq: VecDeque<Arc<str>>,
    /// Events raised while a request runs, sent after its reply.
    deferred: VecDeque<Arc<str>>,
    /// The connection is finished: nothing more is read or written.
    closed: bool,
    /// The reader saw end of input: the writer exits once `outq` is empty.
    reader_done: bool,
    /// The server is stopping: the reader takes no more requests.
    stopping: bool,
    /// The server is stopping: the writer sends what it can without
    /// blocking, then exits.
    flush_and_exit: bool,
}

/// State shared by a connection's threads and the event hub.
pub(crate) struct Conn {
    state: Mutex<ConnState>,
    cond: Condvar,
    stream: UnixStream,
}

impl Conn {
    /// A connection whose first output line is `greeting`.
    pub(crate) fn new(stream: UnixStream, greeting: String) -> Arc<Self> {
        let mut state = ConnState::default();
        state.outq.push_back(greeting.into());
        Arc::new(Conn {
            state: Mutex::new(state),
            cond: Condvar::new(),
            stream,
        })
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, ConnState>) -> MutexGuard<'a, ConnState> {
        self.cond
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an event line. Returns false when the connection is finished
    /// (so the hub can forget it). Overflow disconnects the client.
    pub(crate) fn push_event(&self, line: &Arc<str>) -> bool {
        let mut st = self.state();
        if st.closed {
            return false;
        }
        if !st.negotiated {
            return true;
        }
        if st.outq.len() + st.deferred.len() >= MAX_QUEUED_LINES {
            log::warn!("QMP: client does not read its events, disconnecting it");
            drop(st);
            self.close();
            return false;
        }
        if st.in_command {
            st.deferred.push_back(line.clone());
        } else {
            st.outq.push_back(line.clone());
            self.cond.notify_all();
        }
        true
    }

    /// Whether the client has completed capabilities negotiation.
    pub(crate) fn negotiated(&self) -> bool {
        self.state().negotiated
    }

    /// Marks the start of a request: events raised from now on wait for its
    /// reply.
    fn begin_command(&self) {
        self.state().in_command = true;
    }

    /// Queues a reply, then the events deferred while it ran.
    fn finish_command(&self, reply: String, negotiated: bool) {
        let mut st = self.state();
        st.in_command = false;
        st.negotiated = negotiated;
        if !st.closed {
            st.outq.push_back(reply.into());
            let deferred = std::mem::take(&mut st.deferred);
            st.outq.extend(deferred);
        }
        self.cond.notify_all();
    }

    /// Waits until the client has read enough output. False when the reader
    /// should stop.
    fn wait_for_room(&self) -> bool {
        let mut st = self.state();
        while st.outq.len() >= READER_PAUSE_AT && !st.closed && !st.stopping {
            st = self.wait(st);
        }
        !st.closed && !st.stopping
    }

    /// Ends the connection at once: wakes both threads and shuts the socket
    /// down (unblocking a writer stuck on a client that does not read).
    pub(crate) fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.outq.clear();
        st.deferred.clear();
        drop(st);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.cond.notify_all();
    }

    /// Server shutdown, step 1: take no more requests. A request already
    /// running still completes and its reply is queued.
    pub(crate) fn begin_stop(&self) {
        self.state().stopping = true;
        let _ = self.stream.shutdown(Shutdown::Read);
        self.cond.notify_all();
    }

    /// Server shutdown, step 2: send what can be sent without blocking.
    pub(crate) fn flush_and_exit(&self) {
        self.state().flush_and_exit = true;
        self.cond.notify_all();
    }

    fn reader_finished(&self) {
        self.state().reader_done = true;
        self.cond.notify_all();
    }

    /// The next line to send and whether to send it without blocking;
    /// `None` when the writer should exit.
    fn next_line(&self) -> Option<(Arc<str>, bool)> {
        let mut st = self.state();
        loop {
            if st.closed {
                return None;
            }
            if let Some(line) = st.outq.pop_front() {
                let nonblocking = st.flush_and_exit;
                drop(st);
                // There is room again for a paused reader.
                self.cond.notify_all();
                return Some((line, nonblocking));
            }
            if st.flush_and_exit || st.reader_done {
                return None;
            }
            st = self.wait(st);
        }
    }
}

/// Body of a connection's writer thread.
pub(crate) fn writer_loop(conn: Arc<Conn>) {
    while let Some((line, nonblocking)) = conn.next_line() {
        if let Err(e) = send_all(&conn.stream, line.as_bytes(), nonblocking) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                log::debug!("QMP: dropping client: {e}");
            }
            break;
        }
    }
    conn.close();
}

/// Body of a connection's reader thread.
fn log_negotiation_timeout() {
    log::info!(
        "QMP: closing a client that did not negotiate capabilities within {} s",
        NEGOTIATION_TIMEOUT.as_secs()
    );
}

pub(crate) fn reader_loop(conn: Arc<Conn>, mut session: Session) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut fds = Vec::new();
    // Until negotiation completes, reads time out at a fixed deadline.
    let deadline = Instant::now() + NEGOTIATION_TIMEOUT;
    let mut waiting_for_negotiation = true;
    'read: while conn.wait_for_room() {
        if waiting_for_negotiation {
            let timeout = if session.negotiated() {
                waiting_for_negotiation = false;
                None
            } else {
                match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        log_negotiation_timeout();
                        break;
                    }
                }
            };
            if let Err(e) = conn.stream.set_read_timeout(timeout) {
                log::debug!("QMP: cannot set the negotiation timeout: {e}");
                break;
            }
        }
        let n = match recv_with_fds(&conn.stream, &mut buf, &mut fds) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if waiting_for_negotiation
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                log_negotiation_timeout();
                break;
            }
            Err(e) => {
                log::debug!("QMP: read error: {e}");
                break;
            }
        };
        session.add_fds(std::mem::take(&mut fds));
        let mut data = &buf[..n];
        while !data.is_empty() {
            let (used, frame) = framer.feed(data);
            data = &data[used..];
            let Some(frame) = frame else { continue };
            conn.begin_command();
            let reply = session.handle_frame(frame);
            conn.finish_command(reply.to_line(), session.negotiated());
            if !conn.wait_for_room() {
                break 'read;
            }
        }
    }
    conn.reader_finished();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fds::FdStore;
    use crate::protocol::{QmpHandler, Session};
    use crate::{FdLookup, QmpCommand, QmpError};
    use serde_json::Value;
    use std::io::{BufRead, BufReader, Write};

    struct Nop;
    impl QmpHandler for Nop {
        fn execute(&self, _: QmpCommand, _: &mut dyn FdLookup) -> Result<Value, QmpError> {
            Ok(Value::Null)
        }
    }

    fn start() -> (Arc<Conn>, UnixStream, Vec<std::thread::JoinHandle<()>>) {
        let (client, server) = UnixStream::pair().unwrap();
        let conn = Conn::new(server, "{\"hello\":1}\r\n".into());
        let session = Session::new(Arc::new(Nop), Arc::new(Mutex::new(FdStore::default())));
        let c1 = conn.clone();
        let c2 = conn.clone();
        let threads = vec![
            std::thread::spawn(move || writer_loop(c1)),
            std::thread::spawn(move || reader_loop(c2, session)),
        ];
        (conn, client, threads)
    }

    #[test]
    fn events_wait_for_negotiation_and_follow_replies() {
        let (conn, mut client, threads) = start();
        let mut lines = BufReader::new(client.try_clone().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "{\"hello\":1}");
        assert!(conn.push_event(&Arc::from("{\"event\":\"EARLY\"}\r\n")));
        client
            .write_all(b"{\"execute\":\"qmp_capabilities\"}")
            .unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "{\"return\":{}}");
        // An event raised during a command is held back until its reply.
        conn.begin_command();
        conn.push_event(&Arc::from("{\"event\":\"DURING\"}\r\n"));
        conn.finish_command("{\"return\":\"r\"}\r\n".into(), true);
        assert_eq!(lines.next().unwrap().unwrap(), "{\"return\":\"r\"}");
        assert_eq!(lines.next().unwrap().unwrap(), "{\"event\":\"DURING\"}");
        drop(lines);
        drop(client);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn overflow_disconnects() {
        let (conn, client, threads) = start();
        conn.state().negotiated = true;
        let big: Arc<str> = Arc::from(format!("{}\r\n", "x".repeat(4096)));
        let mut pushed = 0;
        while conn.push_event(&big) {
            pushed += 1;
            assert!(pushed < 100_000);
        }
        assert!(pushed >= MAX_QUEUED_LINES - 1);
        for t in threads {
            t.join().unwrap();
        }
        drop(client);
    }
}
