//! A QMP client for the integration tests: reads the greeting, checks
//! that every line ends in CRLF, and skips events when waiting for a reply.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A connection to a QMP socket.
pub struct Client {
    /// The socket (write side).
    pub stream: UnixStream,
    /// Buffered read side.
    pub reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects and reads the greeting.
    pub fn connect(sock: &Path) -> Client {
        let stream = UnixStream::connect(sock).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Client { stream, reader };
        let greeting = c.recv();
        assert!(
            greeting["QMP"]["version"]["qemu"]["major"]
                .as_u64()
                .unwrap()
                >= 5
        );
        assert_eq!(greeting["QMP"]["capabilities"], json!([]));
        c
    }

    /// Connects and negotiates capabilities.
    pub fn negotiated(sock: &Path) -> Client {
        let mut c = Client::connect(sock);
        c.send(br#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(c.recv(), json!({"return": {}}));
        c
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Next line, checked to end in CRLF, parsed.
    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read reply");
        assert!(
            line.ends_with("\r\n"),
            "reply not CRLF-terminated: {line:?}"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Next reply (return or error), skipping events.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    /// Runs a command without arguments and returns its reply.
    pub fn execute(&mut self, cmd: &str) -> Value {
        self.send(json!({"execute": cmd}).to_string().as_bytes());
        self.reply()
    }

    /// Sends a command with `fd` attached (SCM_RIGHTS on its bytes, as
    /// QEMU expects for `getfd`) and returns its reply.
    #[allow(dead_code)]
    pub fn cmd_with_fd(&mut self, name: &str, args: Value, fd: std::os::fd::RawFd) -> Value {
        use std::os::fd::AsRawFd;
        let bytes = json!({"execute": name, "arguments": args}).to_string();
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every pointer set below outlives the
        // sendmsg call, and the control buffer has room for one fd.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
            libc::sendmsg(self.stream.as_raw_fd(), &msg, 0)
        };
        assert_eq!(sent, bytes.len() as isize, "sendmsg with SCM_RIGHTS");
        self.reply()
    }

    /// Runs a command with arguments and returns its reply.
    pub fn cmd(&mut self, name: &str, args: Value) -> Value {
        self.send(
            json!({"execute": name, "arguments": args})
                .to_string()
                .as_bytes(),
        );
        self.reply()
    }
}
