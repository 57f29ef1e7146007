//! Helpers shared by the integration tests: run the real `altovirt`
//! binary with a timeout, find the tiny test guests, and check for KVM.

#![allow(dead_code)]

pub mod console_vm;
pub mod cpu;
pub mod fs_backend;
pub mod netns;
pub mod qmp_client;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The altovirt binary under test.
pub fn altovirt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_altovirt"))
}

/// `altovirt` serving QMP on `sock`, with stdin closed and stderr piped;
/// the caller adds its flags and chooses stdout.
pub fn altovirt_with_qmp(sock: &Path) -> Command {
    let mut cmd = altovirt();
    cmd.arg("-qmp")
        .arg(format!("unix:{},server,nowait", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Tiny guest images built by build.rs.
pub const GUEST_ELF64: &str = test_guests::ELF64;
/// ELF with a PVH note.
pub const GUEST_PVH: &str = test_guests::PVH;
/// bzImage-format guest.
pub const GUEST_BZIMAGE: &str = test_guests::BZIMAGE;

/// True when /dev/kvm can be used. Where it cannot, the test prints why and
/// returns early — except under CI (CI=true) or ALTOVIRT_REQUIRE_KVM=1,
/// where nothing may skip and the test fails instead.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let must = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
            assert!(!must, "{test}: /dev/kvm is required here but unusable: {e}");
            eprintln!("SKIP {test}: /dev/kvm unusable ({e}); set up KVM to run this test");
            false
        }
    }
}

/// What a finished altovirt run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (the serial console with -serial stdio).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Outcome {
    /// Exit code, or -signal when killed.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status
            .code()
            .unwrap_or_else(|| -self.status.signal().unwrap_or(0))
    }

    /// Lines of stdout starting with `prefix`, with the prefix removed.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .collect()
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Outcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn altovirt");
    wait_with_timeout(child, timeout)
}

/// Waits for `child` (with piped stdout/stderr), killing it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Outcome {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait after kill");
            let stdout = t_out.join().unwrap_or_default();
            panic!(
                "altovirt timed out after {timeout:?} (status {st:?}); stdout so far:\n{stdout}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Boots `kernel` with `args` and waits (60 s at most).
pub fn boot(kernel: &str, args: &[&str]) -> Outcome {
    let mut cmd = altovirt();
    cmd.args(["-kernel", kernel, "-serial", "stdio"]).args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("altovirt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// 32-bit FNV-1a, the checksum the test guests print for the initrd.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Waits until `path` exists (or `timeout` passes); returns whether it does.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    path.exists()
}

/// Whether process `pid` is alive.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Asserts that altovirt run with `args` fails as a usage error: status 2,
/// exactly one stderr line mentioning `needle`, and no guest output.
pub fn assert_usage_error(args: &[&str], needle: &str) {
    let mut cmd = altovirt();
    cmd.args(args);
    assert_command_usage_error(cmd, needle);
}

/// [`assert_usage_error`] for a prepared altovirt command.
pub fn assert_command_usage_error(cmd: Command, needle: &str) {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code(), 2, "{args:?}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {:?}",
        out.stderr
    );
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "no VM may start: {}", out.stdout);
}

/// The bytes of QEMU's image-lock ranges (100-103: permission held,
/// 200-203: permission not shared) that some other open file description
/// has locked on `path`, probed with F_OFD_GETLK.
pub fn image_lock_bytes(path: &Path) -> Vec<i64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open image to probe its locks");
    (100..104)
        .chain(200..204)
        .filter(|&byte| {
            // SAFETY: flock is plain old data.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = byte;
            fl.l_len = 1;
            // SAFETY: F_OFD_GETLK with a valid flock on a file we opened.
            let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
            assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
            fl.l_type != libc::F_UNLCK as libc::c_short
        })
        .collect()
}

/// A child process killed (and reaped) when the guard drops, so a test that
/// fails half-way never leaves a VMM behind (a spinning guest would burn a
/// core for the rest of the run).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
