//! Helpers shared by the socket tests: a temp dir, a fake VM handler and a
//! line-oriented client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use qmp::{
    EventEmitter, EventHub, FdLookup, NetdevBackend, QmpCommand, QmpError, QmpHandler, QmpServer,
    QmpServerHandle,
};
use serde_json::{json, Value};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qmp-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake VM. `stop`/`cont`/`device_del` emit events while they run,
/// `system_reset` blocks until [`Fake::release`], `netdev_add` takes the
/// named fds, `quit` reports on a channel.
pub struct Fake {
    pub calls: Mutex<Vec<String>>,
    pub emitter: EventEmitter,
    gate: (Mutex<bool>, Condvar),
    started: Mutex<Option<Sender<()>>>,
    pub fds: Mutex<Vec<(String, OwnedFd)>>,
    quit: Mutex<Option<Sender<()>>>,
}

impl Fake {
    pub fn new(hub: &EventHub) -> Arc<Self> {
        Arc::new(Fake {
            calls: Mutex::new(Vec::new()),
            emitter: hub.emitter(),
            gate: (Mutex::new(false), Condvar::new()),
            started: Mutex::new(None),
            fds: Mutex::new(Vec::new()),
            quit: Mutex::new(None),
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// A receiver that gets a message when `system_reset` starts.
    pub fn on_slow_start(&self) -> Receiver<()> {
        let (tx, rx) = channel();
        *self.started.lock().unwrap() = Some(tx);
        rx
    }

    /// Lets blocked `system_reset` calls finish.
    pub fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    pub fn on_quit(&self) -> Receiver<()> {
        let (tx, rx) = channel();
        *self.quit.lock().unwrap() = Some(tx);
        rx
    }
}

impl QmpHandler for Fake {
    fn execute(&self, cmd: QmpCommand, fds: &mut dyn FdLookup) -> Result<Value, QmpError> {
        self.calls.lock().unwrap().push(cmd.name().to_string());
        match cmd {
            QmpCommand::QueryStatus => {
                Ok(json!({"running": true, "singlestep": false, "status": "running"}))
            }
            QmpCommand::Stop => {
                self.emitter.emit("STOP", Value::Null);
                Ok(json!({}))
            }
            QmpCommand::Cont => {
                self.emitter.emit("RESUME", Value::Null);
                Ok(json!({}))
            }
            QmpCommand::DeviceDel { id } => {
                self.emitter
                    .emit("DEVICE_DELETED", json!({"device": id, "path": "/x"}));
                Ok(json!({}))
            }
            QmpCommand::SystemReset => {
                if let Some(tx) = self.started.lock().unwrap().as_ref() {
                    let _ = tx.send(());
                }
                let mut open = self.gate.0.lock().unwrap();
                while !*open {
                    open = self.gate.1.wait(open).unwrap();
                }
                Ok(json!({}))
            }
            QmpCommand::NetdevAdd(n) => {
                let NetdevBackend::Tap(tap) = &n.backend;
                for name in tap.fd_names() {
                    let fd = fds
                        .take_fd(name)
                        .ok_or_else(|| QmpError::generic(format!("fd '{name}' not found")))?;
                    self.fds.lock().unwrap().push((name.to_string(), fd));
                }
                Ok(json!({}))
            }
            QmpCommand::Quit => {
                if let Some(tx) = self.quit.lock().unwrap().as_ref() {
                    let _ = tx.send(());
                }
                Ok(json!({}))
            }
            _ => Ok(Value::Null),
        }
    }
}

/// A server on a fresh socket with a fake handler.
pub struct Setup {
    pub dir: TempDir,
    pub hub: EventHub,
    pub fake: Arc<Fake>,
    pub server: QmpServerHandle,
}

impl Setup {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let hub = EventHub::new();
        let fake = Fake::new(&hub);
        let server = QmpServer::bind(&dir.path("qmp.sock"), fake.clone(), &hub)
            .unwrap()
            .start()
            .unwrap();
        Setup {
            dir,
            hub,
            fake,
            server,
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.server.path().to_path_buf()
    }

    /// A connected client that has read the greeting.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.sock());
        let g = c.read();
        assert!(g.get("QMP").is_some(), "{g}");
        c
    }

    /// A connected, negotiated client.
    pub fn negotiated(&self) -> Client {
        let mut c = self.client();
        c.send(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(c.read(), json!({"return": {}}));
        c
    }
}

pub struct Client {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, s: &str) {
        self.stream.write_all(s.as_bytes()).unwrap();
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    /// Reads one line, checks it ends with CRLF and parses it.
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed");
        assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, s: &str) -> Value {
        self.send(s);
        self.read()
    }

    /// True if nothing arrives within `ms` milliseconds.
    pub fn quiet_for(&mut self, ms: u64) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let mut line = String::new();
        let r = self.reader.read_line(&mut line);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match r {
            Ok(0) => true,
            Ok(_) => panic!("unexpected output: {line:?}"),
            Err(_) => line.is_empty(),
        }
    }

    /// True once the server has closed the connection.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn err(class: &str, desc: &str) -> Value {
    json!({"error": {"class": class, "desc": desc}})
}

/// Sends `data` with SCM_RIGHTS carrying `fds`.
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) {
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    assert_eq!(sock.send_with_fds(&[data], fds).unwrap(), data.len());
}
