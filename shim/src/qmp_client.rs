//! A QMP client for a unix socket, used for both altovirt and QEMU.
//!
//! - Input is split into JSON objects by [`qmp::Framer`] (a stream parser:
//!   objects may arrive split over reads or several in one read).
//! - Every command carries a numeric `id`; the reply with that `id` is its
//!   answer. Replies with other ids (left over from a command that timed
//!   out) are dropped.
//! - Asynchronous events read while waiting are queued and handed to the
//!   caller by [`QmpClient::take_events`] and [`QmpClient::wait_event`].
//! - Every command and every event wait has a timeout.
//! - [`QmpClient::execute_with_fd`] passes a descriptor with `SCM_RIGHTS`
//!   on the command bytes (as govmm does), for `getfd`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use qmp::{Frame, Framer};
use serde_json::{json, Map, Value};

/// Default timeout of one command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval between connection attempts while waiting for the socket.
pub const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// QMP client errors.
#[derive(Debug, thiserror::Error)]
pub enum QmpClientError {
    /// The socket could not be connected before the deadline.
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Last connection error.
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("QMP connection closed by the VMM")]
    Closed,
    /// No answer within the timeout.
    #[error("QMP {what} timed out after {timeout:?}")]
    Timeout {
        /// What was waited for (command name, event name or greeting).
        what: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The first message was not a QMP greeting.
    #[error("bad QMP greeting: {0}")]
    BadGreeting(String),
    /// The VMM sent something that is not valid JSON.
    #[error("invalid JSON from the VMM: {0}")]
    Parse(String),
    /// The command was answered with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// Command name.
        command: String,
        /// Error class, e.g. `GenericError`.
        class: String,
        /// Error description.
        desc: String,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `STOP`.
    pub name: String,
    /// The `data` member (`Null` when absent).
    pub data: Value,
    /// The whole event object.
    pub raw: Value,
}

/// The parsed greeting.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpGreeting {
    /// `(major, minor, micro)` of `version.qemu`.
    pub version: (u64, u64, u64),
    /// `version.package`.
    pub package: String,
    /// Offered capabilities.
    pub capabilities: Vec<String>,
}

/// A connected, negotiated QMP client.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    framer: Framer,
    ready: VecDeque<Value>,
    events: VecDeque<QmpEvent>,
    next_id: u64,
    timeout: Duration,
    greeting: QmpGreeting,
}

impl QmpClient {
    /// Connects to `path`, retrying every 50 ms until `connect_timeout`,
    /// reads the greeting and negotiates capabilities. `command_timeout`
    /// applies to every later command.
    pub fn connect(
        path: &Path,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, QmpClientError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() + CONNECT_RETRY > deadline => {
                    return Err(QmpClientError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
                Err(_) => thread::sleep(CONNECT_RETRY),
            }
        };
        Self::from_stream(stream, command_timeout)
    }

    /// Reads the greeting on an already connected stream and negotiates.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self, QmpClientError> {
        let mut c = QmpClient {
            stream,
            framer: Framer::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            greeting: QmpGreeting {
                version: (0, 0, 0),
                package: String::new(),
                capabilities: Vec::new(),
            },
        };
        let deadline = Instant::now() + timeout;
        let first = c.read_message(deadline, "greeting", timeout)?;
        c.greeting = parse_greeting(&first)?;
        c.execute("qmp_capabilities", None)?;
        Ok(c)
    }

    /// The greeting the VMM sent.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// Changes the per-command timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpClientError> {
        self.execute_inner(command, args, None)
    }

    /// Runs a command with a file descriptor attached by `SCM_RIGHTS`
    /// (for `getfd`).
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: RawFd,
    ) -> Result<Value, QmpClientError> {
        self.execute_inner(command, args, Some(fd))
    }

    /// Names `fd` as `fdname` in the VMM (`getfd`).
    pub fn getfd(&mut self, fdname: &str, fd: RawFd) -> Result<(), QmpClientError> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": fdname })), fd)
            .map(|_| ())
    }

    fn execute_inner(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: Option<RawFd>,
    ) -> Result<Value, QmpClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = Map::new();
        req.insert("execute".into(), Value::String(command.into()));
        if let Some(a) = args {
            req.insert("arguments".into(), a);
        }
        req.insert("id".into(), Value::from(id));
        let mut line = Value::Object(req).to_string();
        line.push('\n');
        match fd {
            Some(fd) => send_with_fd(&self.stream, line.as_bytes(), fd)?,
            None => self.stream.write_all(line.as_bytes())?,
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = self.read_message(deadline, command, self.timeout)?;
            if let Some(ev) = as_event(&msg) {
                self.events.push_back(ev);
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                log::debug!("dropping unmatched QMP reply {msg}");
                continue;
            }
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            let err = msg.get("error").cloned().unwrap_or(Value::Null);
            return Err(QmpClientError::Command {
                command: command.into(),
                class: str_of(&err, "class"),
                desc: str_of(&err, "desc"),
            });
        }
    }

    /// Returns the events received so far and clears the queue.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// Waits up to `timeout` for the event `name` (queued or new). Other
    /// events stay queued.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpClientError> {
        self.wait_event_matching(name, |_| true, timeout)
    }

    /// Waits up to `timeout` for an event `name` whose `data` satisfies
    /// `pred` (e.g. `DEVICE_DELETED` of one device). Other events stay
    /// queued.
    pub fn wait_event_matching(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| e.name == name && pred(&e.data))
            {
                if let Some(ev) = self.events.remove(pos) {
                    return Ok(ev);
                }
            }
            let msg = self.read_message(deadline, &format!("event {name}"), timeout)?;
            if let Some(ev) = as_event(&msg) {
                self.events.push_back(ev);
            }
        }
    }

    /// Reads the next JSON object, waiting until `deadline`.
    fn read_message(
        &mut self,
        deadline: Instant,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, QmpClientError> {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QmpClientError::Timeout {
                    what: what.into(),
                    timeout,
                });
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let mut buf = [0u8; 4096];
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(QmpClientError::Closed),
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for frame in self.framer.feed_all(&buf[..n]) {
                match frame {
                    Frame::Message(bytes) => {
                        let v: Value = serde_json::from_slice(&bytes)
                            .map_err(|e| QmpClientError::Parse(e.to_string()))?;
                        self.ready.push_back(v);
                    }
                    Frame::Error(e) => return Err(QmpClientError::Parse(format!("{e:?}"))),
                }
            }
        }
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn as_event(msg: &Value) -> Option<QmpEvent> {
    let name = msg.get("event")?.as_str()?.to_string();
    Some(QmpEvent {
        name,
        data: msg.get("data").cloned().unwrap_or(Value::Null),
        raw: msg.clone(),
    })
}

fn parse_greeting(v: &Value) -> Result<QmpGreeting, QmpClientError> {
    let q = v
        .get("QMP")
        .ok_or_else(|| QmpClientError::BadGreeting(v.to_string()))?;
    let ver = q.pointer("/version/qemu");
    let num = |k: &str| {
        ver.and_then(|x| x.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(QmpGreeting {
        version: (num("major"), num("minor"), num("micro")),
        package: q
            .pointer("/version/package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        capabilities: q
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Sends `data` with `fd` attached as `SCM_RIGHTS` ancillary data (the
/// descriptor rides on the first byte; the rest follows if the first
/// `sendmsg` took only part of the line). A VMM that has gone makes this
/// an EPIPE error: Rust programs ignore SIGPIPE.
fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> io::Result<()> {
    let n = stream.send_with_fd(data, fd).map_err(io::Error::from)?;
    if n < data.len() {
        (&*stream).write_all(&data[n..])?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "qmp_client_tests.rs"]
mod tests;
