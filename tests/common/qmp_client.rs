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
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let bytes = json!({"execute": name, "arguments": args}).to_string();
        let sent = self.stream.send_with_fd(bytes.as_bytes(), fd).unwrap();
        assert_eq!(sent, bytes.len(), "sendmsg with SCM_RIGHTS");
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
