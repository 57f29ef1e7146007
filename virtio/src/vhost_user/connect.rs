//! Connecting to a vhost-user backend's listening socket.
//!
//! The backend (e.g. virtiofsd) is the server; Kata starts it before the
//! VMM, but the socket may appear a moment later. Connection attempts are
//! repeated while the path does not exist or nobody accepts on it yet, up
//! to a bounded time, then the last error is reported with the path.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::VhostUserError;

/// How long [`connect`] keeps retrying by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Whether a connect error may go away once the backend is up.
fn retryable(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

/// Connects to the unix socket at `path`, retrying for up to `timeout`
/// while it does not exist or refuses connections. Other errors (e.g. the
/// path is not a socket, or permission denied) fail at once.
pub fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, VhostUserError> {
    let start = Instant::now();
    let not_a_socket = |source| VhostUserError::Connect {
        path: path.to_path_buf(),
        waited_ms: 0,
        source,
    };
    loop {
        // connect(2) reports ECONNREFUSED for a file that is not a socket:
        // that will not change, so do not wait for it.
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(not_a_socket(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "not a unix socket",
                )));
            }
        }
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if retryable(e.kind()) && start.elapsed() + RETRY_PAUSE <= timeout => {
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(source) => {
                return Err(VhostUserError::Connect {
                    path: path.to_path_buf(),
                    waited_ms: start.elapsed().as_millis(),
                    source,
                })
            }
        }
    }
}
