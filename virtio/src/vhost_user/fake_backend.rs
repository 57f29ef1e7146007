//! A vhost-user backend for tests, decoding the wire format by hand (not
//! with the `vhost` crate, whose frontend the code under test drives) so
//! the tests check what really goes on the wire: 12-byte header (request,
//! flags, size, little endian), body, and file descriptors in SCM_RIGHTS.
//! It also misbehaves on demand (hangs up at a given message, refuses a
//! request, or never answers), which the crate's own test back-end does not.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;

/// Header flag bits (spec: "Header").
pub const VERSION_1: u32 = 0x1;
pub const FLAG_REPLY: u32 = 0x4;
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// One message the frontend sent.
#[derive(Debug)]
pub struct Msg {
    pub request: u32,
    pub flags: u32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.body[off..off + 4].try_into().unwrap())
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.body[off..off + 8].try_into().unwrap())
    }
}

/// How the fake answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub features: u64,
    pub protocol_features: u64,
    pub queue_num: u64,
    /// Close the socket on receiving the n-th message (0-based), unanswered.
    pub hang_up_at: Option<usize>,
    /// Answer this request's REPLY_ACK with a failure code.
    pub nack: Option<u32>,
    /// The value GET_VRING_BASE answers.
    pub vring_base: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            features: (1 << 32) | (1 << 30),
            protocol_features: 0x1 | 0x8 | 0x20,
            queue_num: 2,
            hang_up_at: None,
            nack: None,
            vring_base: 0,
        }
    }
}

/// Reads exactly `buf.len()` bytes with recvmsg, collecting passed fds.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> bool {
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        let mut cmsg = [0u64; 64];
        // SAFETY: zeroed msghdr is valid; the pointers below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg points to valid buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n <= 0 {
            return false;
        }
        got += n as usize;
        // SAFETY: walking the control buffer the kernel filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const i32;
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for k in 0..len / 4 {
                        fds.push(OwnedFd::from_raw_fd(data.add(k).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    true
}

fn read_msg(sock: &UnixStream) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    let mut fds = Vec::new();
    if !recv_exact(sock, &mut hdr, &mut fds) {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
    let mut body = vec![0u8; word(8) as usize];
    if !body.is_empty() && !recv_exact(sock, &mut body, &mut fds) {
        return None;
    }
    Some(Msg {
        request: word(0),
        flags: word(4),
        body,
        fds,
    })
}

fn reply(sock: &mut UnixStream, request: u32, body: &[u8]) {
    use std::io::Write;
    let mut out = Vec::new();
    out.extend_from_slice(&request.to_le_bytes());
    out.extend_from_slice(&(VERSION_1 | FLAG_REPLY).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let _ = sock.write_all(&out);
}

/// Serves `sock` on a thread until the frontend hangs up (or
/// `hang_up_at`); returns every message received.
pub fn spawn(mut sock: UnixStream, b: Behaviour) -> JoinHandle<Vec<Msg>> {
    std::thread::spawn(move || {
        let mut log: Vec<Msg> = Vec::new();
        while let Some(m) = read_msg(&sock) {
            if b.hang_up_at == Some(log.len()) {
                log.push(m);
                return log;
            }
            let u64_reply = |v: u64| v.to_le_bytes().to_vec();
            let answer = match m.request {
                GET_FEATURES => Some(u64_reply(b.features)),
                GET_PROTOCOL_FEATURES => Some(u64_reply(b.protocol_features)),
                GET_QUEUE_NUM => Some(u64_reply(b.queue_num)),
                GET_VRING_BASE => {
                    let mut v = m.body[0..4].to_vec();
                    v.extend_from_slice(&b.vring_base.to_le_bytes());
                    Some(v)
                }
                _ if m.flags & FLAG_NEED_REPLY != 0 => {
                    Some(u64_reply(u64::from(b.nack == Some(m.request))))
                }
                _ => None,
            };
            if let Some(a) = answer {
                reply(&mut sock, m.request, &a);
            }
            log.push(m);
        }
        // Drain so the frontend never blocks on a full buffer.
        let _ = sock.read_to_end(&mut Vec::new());
        log
    })
}
