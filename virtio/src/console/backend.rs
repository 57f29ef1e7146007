//! Host ends of a virtio console: where guest output goes and where guest
//! input comes from.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use util::event_loop::{EventLoop, EventLoopError, Token};

use crate::lock;

/// Receives bytes typed on the host side, to be delivered to the guest.
pub type InputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Errors of console back-ends.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The output file could not be opened.
    #[error("cannot open console file {path}: {source}")]
    Open {
        /// The file path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The socket could not be created.
    #[error("cannot listen on console socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The socket path exists and is not a socket.
    #[error("console socket path {path} exists and is not a socket")]
    PathInUse {
        /// The socket path.
        path: String,
    },
    /// The back-end's descriptors could not be watched.
    #[error("cannot watch console back-end: {0}")]
    EventLoop(#[from] EventLoopError),
}

/// A byte stream behind a console port.
pub trait ConsoleBackend: Send {
    /// Takes output from the guest. Must not block: a back-end that cannot
    /// take the bytes now drops them.
    fn write(&mut self, data: &[u8]);

    /// Starts delivering host input to `sink` (from `event_loop` handlers).
    /// Output-only back-ends keep the default, which does nothing.
    fn start(&mut self, _event_loop: &EventLoop, _sink: InputSink) -> Result<(), ConsoleError> {
        Ok(())
    }

    /// Stops delivering input.
    fn stop(&mut self) {}
}

/// Output-only back-end appending guest output to a file.
pub struct FileBackend {
    file: File,
    failed: bool,
}

impl FileBackend {
    /// Opens (creating or appending to) `path`.
    pub fn create(path: &Path) -> Result<Self, ConsoleError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ConsoleError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self::new(file))
    }

    /// Writes to an already open file (or pipe, or terminal).
    pub fn new(file: File) -> Self {
        FileBackend {
            file,
            failed: false,
        }
    }
}

impl ConsoleBackend for FileBackend {
    fn write(&mut self, data: &[u8]) {
        if let Err(e) = self.file.write_all(data) {
            if !self.failed {
                log::error!("virtio-console: cannot write output: {e}");
                self.failed = true;
            }
        }
    }
}

struct SocketState {
    listener: UnixListener,
    listener_token: Option<Token>,
    client: Option<(UnixStream, Token)>,
}

/// A unix socket server: one client at a time gets the guest's output and
/// feeds its input; when it disconnects the next one may connect. While a
/// client is attached, further connections are closed at once.
pub struct UnixSocketBackend {
    path: PathBuf,
    state: Arc<Mutex<SocketState>>,
    event_loop: Option<EventLoop>,
}

impl UnixSocketBackend {
    /// Listens on `path`, replacing a stale socket left there.
    pub fn bind(path: &Path) -> Result<Self, ConsoleError> {
        let name = path.display().to_string();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ConsoleError::PathInUse { path: name });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| ConsoleError::Bind {
            path: name.clone(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(UnixSocketBackend {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(SocketState {
                listener,
                listener_token: None,
                client: None,
            })),
            event_loop: None,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a client is attached.
    pub fn has_client(&self) -> bool {
        lock(&self.state).client.is_some()
    }
}

/// Detaches the current client (if any) and stops watching it.
fn disconnect(state: &Mutex<SocketState>, event_loop: &EventLoop) {
    let client = lock(state).client.take();
    if let Some((stream, token)) = client {
        log::info!("virtio-console: client disconnected");
        let _ = event_loop.remove(token);
        drop(stream);
    }
}

fn on_client_ready(state: &Mutex<SocketState>, event_loop: &EventLoop, sink: &InputSink) {
    let mut buf = [0u8; 4096];
    let res = {
        let st = lock(state);
        match &st.client {
            Some((stream, _)) => (&*stream).read(&mut buf),
            None => return,
        }
    };
    match res {
        Ok(0) => disconnect(state, event_loop),
        Ok(n) => sink(&buf[..n]),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            log::warn!("virtio-console: client read failed: {e}");
            disconnect(state, event_loop);
        }
    }
}

fn on_listener_ready(state: &Arc<Mutex<SocketState>>, event_loop: &EventLoop, sink: &InputSink) {
    loop {
        let accepted = lock(state).listener.accept();
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("virtio-console: accept failed: {e}");
                return;
            }
        };
        if lock(state).client.is_some() {
            log::warn!("virtio-console: a client is already attached; refusing another");
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("virtio-console: cannot set up client: {e}");
            continue;
        }
        let (st, el, sk) = (state.clone(), event_loop.clone(), sink.clone());
        let handler = Box::new(move |_| on_client_ready(&st, &el, &sk));
        match event_loop.add(stream.as_raw_fd(), libc::EPOLLIN as u32, handler) {
            Ok(token) => {
                log::info!("virtio-console: client connected");
                lock(state).client = Some((stream, token));
            }
            Err(e) => log::warn!("virtio-console: cannot watch client: {e}"),
        }
    }
}

impl ConsoleBackend for UnixSocketBackend {
    fn write(&mut self, data: &[u8]) {
        let mut sent = 0;
        let mut broken = false;
        {
            let st = lock(&self.state);
            let Some((stream, _)) = &st.client else {
                return;
            };
            while sent < data.len() {
                let rest = &data[sent..];
                // SAFETY: sends from a valid buffer on a socket we own;
                // MSG_NOSIGNAL keeps a vanished peer from raising SIGPIPE.
                let n = unsafe {
                    libc::send(
                        stream.as_raw_fd(),
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    sent += n as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        log::debug!(
                            "virtio-console: client too slow, {} bytes dropped",
                            data.len() - sent
                        );
                    }
                    _ => broken = true,
                }
                break;
            }
        }
        if broken {
            if let Some(el) = &self.event_loop {
                disconnect(&self.state, el);
            }
        }
    }

    fn start(&mut self, event_loop: &EventLoop, sink: InputSink) -> Result<(), ConsoleError> {
        self.stop();
        let fd = lock(&self.state).listener.as_raw_fd();
        let (st, el) = (self.state.clone(), event_loop.clone());
        let token = event_loop.add(
            fd,
            libc::EPOLLIN as u32,
            Box::new(move |_| on_listener_ready(&st, &el, &sink)),
        )?;
        lock(&self.state).listener_token = Some(token);
        self.event_loop = Some(event_loop.clone());
        Ok(())
    }

    fn stop(&mut self) {
        let Some(el) = self.event_loop.take() else {
            return;
        };
        let (listener, client) = {
            let mut st = lock(&self.state);
            (st.listener_token.take(), st.client.take())
        };
        if let Some(token) = listener {
            let _ = el.remove(token);
        }
        if let Some((stream, token)) = client {
            let _ = el.remove(token);
            drop(stream);
        }
    }
}

impl Drop for UnixSocketBackend {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}
