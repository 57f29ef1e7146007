//! File descriptors passed over the socket with SCM_RIGHTS.
//!
//! Received descriptors wait in a per-connection [`PendingFds`] queue until
//! a `getfd` command names one; named descriptors live in a per-socket
//! [`FdStore`] (they outlive the connection that sent them, as with QEMU's
//! monitor) until `closefd` or a handler takes them through [`FdLookup`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::error::QmpError;
use crate::lock;

/// Most named descriptors one socket stores.
pub const MAX_STORED_FDS: usize = 64;

/// Most received descriptors a connection holds before `getfd` claims them;
/// descriptors arriving beyond this are closed.
pub const MAX_PENDING_FDS: usize = 64;

/// Largest number of descriptors Linux passes in one message (SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// Access to named file descriptors for a command handler.
pub trait FdLookup {
    /// Removes and returns the descriptor stored under `name`.
    fn take_fd(&mut self, name: &str) -> Option<OwnedFd>;
}

impl FdLookup for HashMap<String, OwnedFd> {
    fn take_fd(&mut self, name: &str) -> Option<OwnedFd> {
        self.remove(name)
    }
}

/// Named descriptors of one socket (`getfd` / `closefd`).
#[derive(Debug, Default)]
pub struct FdStore {
    fds: HashMap<String, OwnedFd>,
}

impl FdStore {
    /// Stores `fd` under `name`, closing any descriptor already stored
    /// under that name. Fails (closing `fd`) when the store is full or the
    /// name starts with a digit (QEMU reserves those for raw numbers).
    pub fn insert(&mut self, name: &str, fd: OwnedFd) -> Result<(), QmpError> {
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::invalid_parameter_value(
                "fdname",
                "a name not starting with a digit",
            ));
        }
        if !self.fds.contains_key(name) && self.fds.len() >= MAX_STORED_FDS {
            return Err(QmpError::generic(format!(
                "Too many file descriptors stored (limit {MAX_STORED_FDS})"
            )));
        }
        self.fds.insert(name.to_string(), fd);
        Ok(())
    }

    /// Closes and forgets the descriptor stored under `name`.
    pub fn close(&mut self, name: &str) -> Result<(), QmpError> {
        match self.fds.remove(name) {
            Some(_) => Ok(()),
            None => Err(QmpError::generic(format!(
                "File descriptor named '{name}' not found"
            ))),
        }
    }

    /// Number of stored descriptors.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

impl FdLookup for FdStore {
    fn take_fd(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds.remove(name)
    }
}

/// The [`FdLookup`] handed to handlers: locks the socket's store per call,
/// so a slow handler does not hold the lock.
pub(crate) struct SharedFds(pub(crate) Arc<Mutex<FdStore>>);

impl FdLookup for SharedFds {
    fn take_fd(&mut self, name: &str) -> Option<OwnedFd> {
        lock(&self.0).take_fd(name)
    }
}

/// Descriptors received on one connection and not yet claimed by `getfd`.
#[derive(Debug, Default)]
pub(crate) struct PendingFds {
    fds: VecDeque<OwnedFd>,
}

impl PendingFds {
    /// Queues received descriptors; the ones beyond [`MAX_PENDING_FDS`] are
    /// closed.
    pub(crate) fn extend(&mut self, fds: Vec<OwnedFd>) {
        for fd in fds {
            if self.fds.len() < MAX_PENDING_FDS {
                self.fds.push_back(fd);
            } else {
                log::warn!("QMP: too many unclaimed file descriptors, closing one");
            }
        }
    }

    /// The oldest unclaimed descriptor.
    pub(crate) fn pop(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Number of unclaimed descriptors.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.fds.len()
    }
}

/// Room for the largest SCM_RIGHTS message, 8-byte aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuffer([u8; 1280]);

/// `recvmsg` on a stream socket, collecting passed descriptors (with
/// `O_CLOEXEC` set) into `fds`. Returns the number of data bytes.
///
/// Written by hand rather than with vmm-sys-util's `ScmSocket` (which the
/// tests use to send): `ScmSocket::recv_with_fds` passes no flags, so a
/// descriptor would arrive inheritable until a later `fcntl`, and it drops
/// every descriptor of a message that carries more than the caller's
/// capacity; here `MSG_CMSG_CLOEXEC` sets close-on-exec atomically and the
/// excess is closed by the caller's limit on stored descriptors.
pub(crate) fn recv_with_fds(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE is a pure computation on its argument.
    let space = unsafe { libc::CMSG_SPACE((SCM_MAX_FD * mem::size_of::<RawFd>()) as u32) };
    let mut cmsg = CmsgBuffer([0; 1280]);
    debug_assert!(space as usize <= cmsg.0.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len().min(space as usize) as _;
    // SAFETY: msg points at live buffers (iov -> buf, control -> cmsg) of the
    // lengths given, which outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the CMSG_* macros walk the control buffer that recvmsg filled,
    // staying within msg_controllen; each descriptor read is one the kernel
    // just installed in this process, so wrapping it in OwnedFd is sound.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            let h = std::ptr::read_unaligned(hdr);
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr);
                let header_len = data as usize - hdr as usize;
                let count =
                    (h.cmsg_len as usize).saturating_sub(header_len) / mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd: RawFd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        log::warn!("QMP: control data truncated, some passed descriptors were dropped");
    }
    Ok(n as usize)
}

/// Writes all of `data` with `send(MSG_NOSIGNAL)` (a closed peer gives
/// EPIPE, never SIGPIPE). With `nonblocking`, gives up with `WouldBlock`
/// instead of waiting for buffer space.
pub(crate) fn send_all(sock: &impl AsRawFd, mut data: &[u8], nonblocking: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    while !data.is_empty() {
        // SAFETY: data is a live slice of the given length.
        let n = unsafe { libc::send(sock.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    /// Sends `data` with the given descriptors attached.
    pub(crate) fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        assert_eq!(sock.send_with_fds(&[data], fds).unwrap(), data.len());
    }

    fn temp_file(tag: &str) -> File {
        let path = std::env::temp_dir().join(format!("qmp-fds-{}-{tag}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn receives_several_fds_with_cloexec() {
        let (a, b) = UnixStream::pair().unwrap();
        let f1 = temp_file("1");
        let f2 = temp_file("2");
        send_with_fds(&a, b" ", &[f1.as_raw_fd(), f2.as_raw_fd()]);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 1);
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            // SAFETY: fcntl(F_GETFD) on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert!(flags & libc::FD_CLOEXEC != 0);
        }
        // The received descriptor refers to the same open file.
        let mut got = File::from(fds.remove(0));
        got.write_all(b"hello").unwrap();
        let mut f1 = f1;
        f1.rewind().unwrap();
        let mut s = String::new();
        f1.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn plain_data_has_no_fds() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"abc").unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 3);
        assert!(fds.is_empty());
        drop(a);
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 0);
    }

    #[test]
    fn store_limits_and_names() {
        let mut store = FdStore::default();
        let fd = || OwnedFd::from(temp_file("s"));
        assert!(store.insert("1abc", fd()).is_err());
        for i in 0..MAX_STORED_FDS {
            store.insert(&format!("f{i}"), fd()).unwrap();
        }
        let e = store.insert("one-more", fd()).unwrap_err();
        assert!(e.desc.contains("Too many"), "{e}");
        // Replacing an existing name is fine when full.
        store.insert("f0", fd()).unwrap();
        assert_eq!(store.len(), MAX_STORED_FDS);
        assert!(store.take_fd("f1").is_some());
        assert!(store.take_fd("f1").is_none());
        store.close("f2").unwrap();
        assert_eq!(
            store.close("f2").unwrap_err().desc,
            "File descriptor named 'f2' not found"
        );
    }

    #[test]
    fn pending_is_fifo_and_capped() {
        let mut p = PendingFds::default();
        let many: Vec<OwnedFd> = (0..MAX_PENDING_FDS + 3)
            .map(|_| OwnedFd::from(temp_file("p")))
            .collect();
        let first = many[0].as_raw_fd();
        p.extend(many);
        assert_eq!(p.len(), MAX_PENDING_FDS);
        assert_eq!(p.pop().unwrap().as_raw_fd(), first);
    }

    #[test]
    fn send_all_to_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(send_all(&a, b"x", false).is_err());
    }
}
