//! The unix-socket server: socket file handling, the accept thread and the
//! orderly shutdown of connections.

use std::fs;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use util::confine::confine_or_exit;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::conn::{reader_loop, writer_loop, Conn};
use crate::error::QmpServerError;
use crate::events::EventHub;
use crate::fds::FdStore;
use crate::lock;
use crate::protocol::{greeting_line, QmpHandler, Session};

/// Most clients served at once on one socket; more are disconnected at once.
pub const MAX_CLIENTS: usize = 64;

/// How long shutdown waits for running commands to finish.
const READER_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for queued output to be flushed.
const WRITER_GRACE: Duration = Duration::from_millis(500);

/// The socket file this server created; removed on drop if it is still the
/// same file.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// What every connection of one socket shares.
struct Shared {
    handler: Arc<dyn QmpHandler>,
    hub: EventHub,
    fds: Arc<Mutex<FdStore>>,
    filters: QmpThreadFilters,
}

/// The seccomp programs the server's threads install before they touch a
/// client's input: the accept thread's, and each client's reader's and
/// writer's (which also inherit the accept thread's filter, so that one
/// must allow what they do). `None` installs nothing.
#[derive(Clone, Default)]
pub struct QmpThreadFilters {
    /// For the `qmp-accept` thread.
    pub accept: Option<Arc<seccompiler::BpfProgram>>,
    /// For each `qmp-reader` thread.
    pub reader: Option<Arc<seccompiler::BpfProgram>>,
    /// For each `qmp-writer` thread.
    pub writer: Option<Arc<seccompiler::BpfProgram>>,
}

/// A bound, listening QMP socket that does not serve clients yet.
///
/// Clients that connect before [`QmpServer::start`] wait in the listen
/// backlog and are greeted once it runs.
pub struct QmpServer {
    listener: UnixListener,
    socket: SocketFile,
    shared: Arc<Shared>,
}

impl QmpServer {
    /// Creates the socket at `path` (mode 0600) and listens on it.
    ///
    /// A stale socket file (nobody accepts on it) is replaced; a live one,
    /// or a file that is not a socket, is an error. When this returns Ok,
    /// clients can connect.
    pub fn bind(
        path: &Path,
        handler: Arc<dyn QmpHandler>,
        events: &EventHub,
    ) -> Result<Self, QmpServerError> {
        let (listener, socket) = create_listener(path)?;
        Ok(QmpServer {
            listener,
            socket,
            shared: Arc::new(Shared {
                handler,
                hub: events.clone(),
                fds: Arc::new(Mutex::new(FdStore::default())),
                filters: QmpThreadFilters::default(),
            }),
        })
    }

    /// Makes the server's threads install `filters` (seccomp) when they
    /// start; call before [`QmpServer::start`].
    pub fn confine(mut self, filters: QmpThreadFilters) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.filters = filters;
        }
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Starts the accept thread; each client then gets a reader and a
    /// writer thread.
    pub fn start(self) -> Result<QmpServerHandle, QmpServerError> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(QmpServerError::Thread)?);
        let conns: Arc<Mutex<Vec<ConnThreads>>> = Arc::default();
        let QmpServer {
            listener,
            socket,
            shared,
        } = self;
        listener
            .set_nonblocking(true)
            .map_err(QmpServerError::Thread)?;
        let acceptor = {
            let stop = stop.clone();
            let conns = conns.clone();
            thread::Builder::new()
                .name("qmp-accept".into())
                .spawn(move || {
                    confine_or_exit("qmp-accept", shared.filters.accept.as_deref());
                    accept_loop(listener, &stop, &shared, &conns)
                })
                .map_err(QmpServerError::Thread)?
        };
        Ok(QmpServerHandle {
            stop,
            acceptor: Some(acceptor),
            conns,
            socket: Some(socket),
        })
    }
}

/// A running QMP server. Dropping it stops accepting, lets running commands
/// finish (up to 2 s), flushes pending output, closes every client of this
/// socket and removes the socket file.
pub struct QmpServerHandle {
    stop: Arc<EventFd>,
    acceptor: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<ConnThreads>>>,
    socket: Option<SocketFile>,
}

impl QmpServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        self.socket.as_ref().map_or(Path::new(""), |s| &s.path)
    }

    /// Number of clients connected to this socket.
    pub fn connections(&self) -> usize {
        let mut conns = lock(&self.conns);
        reap(&mut conns);
        conns.len()
    }

    /// Stops the server (same as dropping it).
    pub fn shutdown(self) {}

    fn stop_all(&mut self) {
        let _ = self.stop.write(1);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let conns = mem::take(&mut *lock(&self.conns));
        for c in &conns {
            c.conn.begin_stop();
        }
        wait_until(READER_GRACE, || {
            conns.iter().all(|c| c.reader.is_finished())
        });
        for c in &conns {
            c.conn.flush_and_exit();
        }
        wait_until(WRITER_GRACE, || {
            conns.iter().all(|c| c.writer.is_finished())
        });
        for c in conns {
            c.conn.close();
            // A writer woken by close() exits at once.
            let _ = c.writer.join();
            if c.reader.is_finished() {
                let _ = c.reader.join();
            } else {
                log::warn!("QMP: a command is still running at shutdown; leaving it");
            }
        }
        // Dropping the SocketFile removes the socket.
        self.socket.take();
    }
}

impl Drop for QmpServerHandle {
    fn drop(&mut self) {
        self.stop_all();
    }
}

struct ConnThreads {
    conn: Arc<Conn>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Joins the threads of finished connections.
fn reap(conns: &mut Vec<ConnThreads>) {
    let (done, live): (Vec<_>, Vec<_>) = mem::take(conns)
        .into_iter()
        .partition(|c| c.reader.is_finished() && c.writer.is_finished());
    *conns = live;
    for c in done {
        let _ = c.reader.join();
        let _ = c.writer.join();
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
}

fn accept_loop(
    listener: UnixListener,
    stop: &EventFd,
    shared: &Arc<Shared>,
    conns: &Mutex<Vec<ConnThreads>>,
) {
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: pfd is a live array of two pollfd structures.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("QMP: poll failed: {e}");
            return;
        }
        if pfd[1].revents != 0 {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let mut conns = lock(conns);
                reap(&mut conns);
                if conns.len() >= MAX_CLIENTS {
                    // Keep a way in: the oldest client still in negotiation
                    // mode gives up its place; if every client negotiated,
                    // the new one is refused.
                    match conns.iter().find(|c| !c.conn.negotiated()) {
                        Some(idle) => {
                            log::warn!(
                                "QMP: {MAX_CLIENTS} clients connected; closing the oldest \
                                 one that never negotiated to admit a new one"
                            );
                            idle.conn.close();
                        }
                        None => {
                            log::warn!(
                                "QMP: {MAX_CLIENTS} clients already connected, refusing one"
                            );
                            continue;
                        }
                    }
                }
                match spawn_connection(stream, shared) {
                    Ok(c) => conns.push(c),
                    Err(e) => log::error!("QMP: cannot serve a client: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                log::warn!("QMP: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn spawn_connection(stream: UnixStream, shared: &Shared) -> io::Result<ConnThreads> {
    stream.set_nonblocking(false)?;
    let conn = Conn::new(stream, greeting_line(&shared.handler.version()));
    let session = Session::new(shared.handler.clone(), shared.fds.clone());
    let writer = {
        let conn = conn.clone();
        let filter = shared.filters.writer.clone();
        thread::Builder::new()
            .name("qmp-writer".into())
            .spawn(move || {
                confine_or_exit("qmp-writer", filter.as_deref());
                writer_loop(conn)
            })?
    };
    let reader = {
        let conn2 = conn.clone();
        let filter = shared.filters.reader.clone();
        thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || {
                confine_or_exit("qmp-reader", filter.as_deref());
                reader_loop(conn2, session)
            })
    };
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            conn.close();
            let _ = writer.join();
            return Err(e);
        }
    };
    shared.hub.register(&conn);
    Ok(ConnThreads {
        conn,
        reader,
        writer,
    })
}

fn socket_error(path: &Path, op: &'static str) -> QmpServerError {
    QmpServerError::Socket {
        path: path.to_path_buf(),
        op,
        source: io::Error::last_os_error(),
    }
}

/// Removes a stale socket at `path`; refuses to touch anything else.
fn clear_path(path: &Path) -> Result<(), QmpServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(QmpServerError::Socket {
                path: path.to_path_buf(),
                op: "stat",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(QmpServerError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(QmpServerError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("QMP: replacing stale socket {}", path.display());
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(QmpServerError::Socket {
                    path: path.to_path_buf(),
                    op: "unlink",
                    source: e,
                }),
                _ => Ok(()),
            }
        }
        Err(source) => Err(QmpServerError::Socket {
            path: path.to_path_buf(),
            op: "connect",
            source,
        }),
    }
}

/// socket + bind + chmod 0600 + listen. Nobody can connect between bind and
/// chmod because the socket is not listening yet.
fn create_listener(path: &Path) -> Result<(UnixListener, SocketFile), QmpServerError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(QmpServerError::InvalidPath(path.to_path_buf()));
    }
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let addr_len = unsafe { mem::zeroed::<libc::sockaddr_un>() }.sun_path.len();
    if bytes.len() >= addr_len {
        return Err(QmpServerError::PathTooLong(path.to_path_buf()));
    }
    clear_path(path)?;
    // The socket is bound under a temporary name, made 0600 and set
    // listening, then renamed into place: a client that sees the path can
    // connect at once, and nobody ever sees it with wider permissions.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let staged = tmp.as_bytes().len() < addr_len;
    let bind_path: &Path = if staged { Path::new(&tmp) } else { path };
    if staged {
        let _ = fs::remove_file(bind_path);
    }
    // Errors name the path the user gave, not the temporary one.
    let (fd, socket) = bind_listen(bind_path).map_err(|e| match e {
        QmpServerError::Socket { op, source, .. } => QmpServerError::Socket {
            path: path.to_path_buf(),
            op,
            source,
        },
        other => other,
    })?;
    if staged {
        if let Err(source) = fs::rename(bind_path, path) {
            // `socket` still names the temporary file and removes it on drop.
            return Err(QmpServerError::Socket {
                path: path.to_path_buf(),
                op: "rename",
                source,
            });
        }
    }
    let socket = SocketFile {
        path: path.to_path_buf(),
        ..socket
    };
    Ok((UnixListener::from(fd), socket))
}

/// socket(2), bind(2) to `path`, chmod 0600, listen(2).
fn bind_listen(path: &Path) -> Result<(OwnedFd, SocketFile), QmpServerError> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(QmpServerError::PathTooLong(path.to_path_buf()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(socket_error(path, "socket"));
    }
    // SAFETY: raw is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(socket_error(path, "bind"));
    }
    // From here on the file is ours; SocketFile removes it on error.
    let meta = fs::symlink_metadata(path).map_err(|source| QmpServerError::Socket {
        path: path.to_path_buf(),
        op: "stat",
        source,
    })?;
    let socket = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        QmpServerError::Socket {
            path: path.to_path_buf(),
            op: "chmod",
            source,
        }
    })?;
    // SAFETY: fd is a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 64) } < 0 {
        return Err(socket_error(path, "listen"));
    }
    Ok((fd, socket))
}
