//! Sending requests and reading replies on the backend socket, with file
//! descriptors as SCM_RIGHTS and a timeout on every read and write.

use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use super::message::{
    req, Header, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION_1, HEADER_LEN, MAX_FDS, MAX_REPLY_LEN,
};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The backend closed the connection.
    #[error("the backend closed the connection")]
    Disconnected,
    /// The backend did not answer in time.
    #[error("no answer from the backend within the timeout")]
    Timeout,
    /// The backend answered something else than the reply expected.
    #[error("invalid reply: {0}")]
    BadReply(String),
    /// The backend refused the request (REPLY_ACK with a non-zero code).
    #[error("the backend refused it (status {0})")]
    Refused(u64),
    /// Another socket error.
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::NotConnected => RequestError::Disconnected,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => RequestError::Timeout,
            _ => RequestError::Io(e),
        }
    }
}

/// The frontend's end of the socket.
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
    /// Ask for acks (REPLY_ACK negotiated).
    need_reply: bool,
}

impl Channel {
    /// Wraps a connected socket (timeouts already set).
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            sock,
            need_reply: false,
        }
    }

    /// Asks for an ack on every request without a reply of its own.
    pub fn set_need_reply(&mut self, on: bool) {
        self.need_reply = on;
    }

    /// Sends one message; `fds` go with its first byte.
    fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(ErrorKind::InvalidInput, "too many fds"));
        }
        let size = u32::try_from(body.len())
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "payload too large"))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
        buf.extend_from_slice(
            &Header {
                request,
                flags: FLAG_VERSION_1 | flags,
                size,
            }
            .encode(),
        );
        buf.extend_from_slice(body);
        let mut sent = 0;
        while sent < buf.len() {
            let first = if sent == 0 { fds } else { &[] };
            sent += sendmsg(self.sock.as_raw_fd(), &buf[sent..], first)?;
        }
        Ok(())
    }

    /// Reads the reply to `request`: checks the header and returns the
    /// payload.
    fn recv_reply(&mut self, request: u32) -> Result<Vec<u8>, RequestError> {
        let mut hdr = [0u8; HEADER_LEN];
        self.sock.read_exact(&mut hdr)?;
        let h = Header::decode(&hdr);
        if h.request != request || h.flags & FLAG_REPLY == 0 || h.flags & 0x3 != FLAG_VERSION_1 {
            return Err(RequestError::BadReply(format!(
                "header request={} flags={:#x} for {}",
                h.request,
                h.flags,
                req::name(request)
            )));
        }
        if h.size > MAX_REPLY_LEN {
            return Err(RequestError::BadReply(format!(
                "payload of {} bytes",
                h.size
            )));
        }
        let mut body = vec![0u8; h.size as usize];
        self.sock.read_exact(&mut body)?;
        Ok(body)
    }

    /// A request whose only answer is the optional ack.
    pub fn request(
        &mut self,
        request: u32,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(), RequestError> {
        let flags = if self.need_reply { FLAG_NEED_REPLY } else { 0 };
        self.send(request, flags, body, fds)?;
        if self.need_reply {
            match self.recv_reply(request)?.as_slice() {
                [a, b, c, d, e, f, g, h] => {
                    let status = u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]);
                    if status != 0 {
                        return Err(RequestError::Refused(status));
                    }
                }
                other => {
                    return Err(RequestError::BadReply(format!(
                        "ack of {} bytes",
                        other.len()
                    )))
                }
            }
        }
        Ok(())
    }

    /// A request answered with a payload of `len` bytes.
    pub fn query(
        &mut self,
        request: u32,
        body: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, RequestError> {
        self.send(request, 0, body, &[])?;
        let reply = self.recv_reply(request)?;
        if reply.len() != len {
            return Err(RequestError::BadReply(format!(
                "{} bytes instead of {len}",
                reply.len()
            )));
        }
        Ok(reply)
    }

    /// A request answered with a u64.
    pub fn query_u64(&mut self, request: u32) -> Result<u64, RequestError> {
        let r = self.query(request, &[], 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&r);
        Ok(u64::from_le_bytes(b))
    }
}

/// One sendmsg(2) of `data` with `fds` as SCM_RIGHTS; returns bytes sent.
fn sendmsg(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for MAX_FDS descriptors, u64-aligned as cmsghdr requires.
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure computations.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(fd_bytes as u32) as usize,
                libc::CMSG_LEN(fd_bytes as u32) as usize,
            )
        };
        if space > std::mem::size_of_val(&cmsg_buf) {
            return Err(io::Error::new(ErrorKind::InvalidInput, "too many fds"));
        }
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` writable bytes, enough for
        // one header and the descriptors.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    loop {
        // SAFETY: msg describes live buffers; MSG_NOSIGNAL turns a closed
        // peer into EPIPE instead of SIGPIPE.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
