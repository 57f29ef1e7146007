//! A running altovirt driven through its serial console: `-serial stdio`
//! with stdin feeding the guest's UART and stdout arriving line by line,
//! plus a QMP socket. The snapshot tests use it to talk to guests that
//! wait for input.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::{altovirt_with_qmp, wait_for_path, KillOnDrop, GUEST_ELF64};

/// The tiny ELF64 guest under altovirt, console on stdio.
pub struct ConsoleVm {
    child: KillOnDrop,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl ConsoleVm {
    /// Starts altovirt with `args` (after `-kernel GUEST -serial stdio`),
    /// QMP on `sock`; `input` is written to the console at once, before
    /// the VMM is ready. Returns when the QMP socket exists.
    pub fn start<S: AsRef<std::ffi::OsStr>>(sock: &Path, args: &[S], input: &[u8]) -> ConsoleVm {
        let _ = std::fs::remove_file(sock);
        let mut cmd = altovirt_with_qmp(sock);
        cmd.args(["-kernel", GUEST_ELF64, "-serial", "stdio"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn altovirt");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input).expect("write to the guest's UART");
        stdin.flush().expect("flush");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert!(
            wait_for_path(sock, Duration::from_secs(20)),
            "QMP socket never appeared"
        );
        ConsoleVm {
            child: KillOnDrop(child),
            stdin,
            lines,
        }
    }

    /// The next console line starting with `prefix` (30 s at most).
    pub fn expect_line(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no console line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// Writes `bytes` to the guest's UART.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.stdin
            .write_all(bytes)
            .expect("write to the guest's UART");
        self.stdin.flush().expect("flush");
    }

    /// Waits for the process to end (20 s at most); returns its exit code.
    pub fn wait_exit(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "altovirt did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
