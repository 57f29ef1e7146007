//! The vhost-user-fs back-end of the tests (tests/guests/vhost_user_fs_backend.py,
//! Python stdlib only), standing in for virtiofsd.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Path of the back-end script.
pub const BACKEND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/guests/vhost_user_fs_backend.py"
);

/// The Python backend listening on `sock`, with its stdout lines.
pub struct Backend {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Backend {
    /// Starts it on `sock` and waits until it listens.
    pub fn start(sock: &Path) -> Backend {
        Self::start_with(sock, &[])
    }

    /// Starts it on `sock` with extra options (e.g. `--stall-at=5`) and
    /// waits until it listens.
    pub fn start_with(sock: &Path, options: &[&str]) -> Backend {
        let mut child = Command::new("python3")
            .arg(BACKEND)
            .arg(sock)
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 backend");
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut b = Backend {
            child,
            lines,
            seen: Vec::new(),
        };
        b.wait_for("listening", Duration::from_secs(20));
        b
    }

    /// Waits for a line equal to `want`; panics with what was seen.
    pub fn wait_for(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("backend never said {want:?}; said {:?}", self.seen),
            }
        }
    }

    /// Every line so far, after waiting up to `timeout` for `last`.
    pub fn drain_until(&mut self, last: &str, timeout: Duration) -> Vec<String> {
        self.wait_for(last, timeout);
        self.seen.clone()
    }
}

impl Backend {
    /// Kills the back-end now (as a crashing virtiofsd would go).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
