//! Host-side helpers of the hybrid vsock: the listening socket, non-blocking
//! connects to `<uds_path>_<port>` and a non-blocking timer.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::VsockError;

/// Listens on `path` (non-blocking), replacing a stale socket left there;
/// anything else at `path` is left alone and refused.
pub(crate) fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let name = path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(VsockError::PathInUse { path: name });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| VsockError::Bind {
        path: name.clone(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The socket a guest connection to host port `port` goes to.
pub(crate) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(uds_path.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects a non-blocking stream socket to `path`. Fails (instead of
/// waiting) when the listener's backlog is full.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or invalid",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
        let ret = unsafe {
            libc::connect(
                owned.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len as libc::socklen_t,
            )
        };
        if ret == 0 {
            return Ok(UnixStream::from(owned));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A non-blocking one-shot timerfd on the monotonic clock.
pub(crate) struct Timer {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl Timer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer {
            fd,
            armed_for: None,
        })
    }

    /// The descriptor to watch (readable once expired).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Clears an expiration (never blocks); the timer is then disarmed.
    pub fn clear(&mut self) {
        self.armed_for = None;
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking fd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Fires at `when` (disarms for `None`); a no-op when already set so.
    pub fn set(&mut self, when: Option<Instant>) {
        if when == self.armed_for {
            return;
        }
        self.armed_for = when;
        // SAFETY: all-zero itimerspec means "disarm".
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        if let Some(at) = when {
            // At least 1 ns: zero would disarm.
            let d = at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            spec.it_value.tv_sec = d.as_secs().min(i32::MAX as u64) as libc::time_t;
            spec.it_value.tv_nsec = d.subsec_nanos() as libc::c_long;
        }
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        let ret =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if ret < 0 {
            log::error!("vsock: cannot arm timer: {}", io::Error::last_os_error());
        }
    }
}

/// Writes to a non-blocking socket; a vanished peer is an error, never a
/// SIGPIPE.
pub(crate) fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from a valid buffer on a socket we own.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// An error for a malformed `CONNECT` line.
pub(crate) fn bad_line(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Parses `CONNECT <port>` (without the newline; a trailing CR is allowed).
pub(crate) fn parse_connect(line: &[u8]) -> io::Result<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| bad_line("CONNECT line is not text"))?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("CONNECT") => port
            .parse::<u32>()
            .map_err(|_| bad_line("invalid port in CONNECT line")),
        _ => Err(bad_line("expected 'CONNECT <port>'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::temp_dir;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52").unwrap(), 52);
        assert_eq!(parse_connect(b"connect 1024\r").unwrap(), 1024);
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 4294967296").is_err());
        assert!(parse_connect(b"LISTEN 5").is_err());
        assert!(parse_connect(b"CONNECT 5 6").is_err());
        assert!(parse_connect(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn listener_replaces_stale_socket_but_not_files() {
        let dir = temp_dir("vsock-bind");
        let path = dir.join("v.sock");
        let first = bind_listener(&path).unwrap();
        drop(first);
        assert!(path.exists(), "stale socket left behind");
        let l = bind_listener(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(l);
        let file = dir.join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_listener(&file),
            Err(VsockError::PathInUse { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn connects_to_port_sockets_without_blocking() {
        let dir = temp_dir("vsock-connect");
        let base = dir.join("v.sock");
        let p = port_path(&base, 52);
        assert_eq!(p, dir.join("v.sock_52"));
        assert_eq!(
            connect_nonblocking(&p).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let l = UnixListener::bind(&p).unwrap();
        let s = connect_nonblocking(&p).unwrap();
        let (_peer, _) = l.accept().unwrap();
        assert_eq!(s.peer_addr().unwrap().as_pathname(), Some(p.as_path()));
        let long = dir.join("x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
    }

    #[test]
    fn timer_fires_and_disarms() {
        let mut t = Timer::new().unwrap();
        let readable = |t: &Timer| {
            let mut pfd = libc::pollfd {
                fd: t.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 200) == 1 }
        };
        t.set(Some(Instant::now() + Duration::from_millis(10)));
        assert!(readable(&t));
        t.clear();
        t.set(Some(Instant::now() + Duration::from_millis(10)));
        t.set(None);
        assert!(!readable(&t));
        // Clearing an unexpired timer does not block.
        t.clear();
    }
}
