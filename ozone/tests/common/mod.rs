//! Helpers of the jail tests: the binaries, the test guest, the root and
//! KVM gate, a jailed VM with its output collected, and a small QMP
//! client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary under test.
pub const OZONE: &str = env!("CARGO_BIN_EXE_altovirt-ozone");

/// `target/<triple>/debug` (the test binary lives in its `deps`).
pub fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<triple>/debug")
        .to_path_buf()
}

/// `target/<triple>/debug/altovirt` (built by `cargo test --workspace`, or
/// `cargo build -p altovirt`).
pub fn altovirt() -> PathBuf {
    let p = target_debug().join("altovirt");
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build -p altovirt` with the same target dir",
        p.display()
    );
    p
}

/// The tiny PVH test guest (the `test_guests` crate builds it).
pub fn guest() -> PathBuf {
    PathBuf::from(test_guests::PVH)
}

/// True when the test can run: as root, with a usable /dev/kvm. Otherwise
/// it prints why and the test returns early — except under CI=true or
/// ALTOVIRT_REQUIRE_KVM=1, where it fails instead.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root (the jailer needs root)".to_string())
    } else {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => None,
            Err(e) => Some(format!("/dev/kvm unusable ({e})")),
        }
    };
    let Some(why) = why else { return true };
    let must = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1");
    assert!(!must, "{test}: required here but cannot run: {why}");
    eprintln!("SKIP {test}: {why}");
    false
}

/// A jail name unique to this test process.
pub fn unique(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// The jail directory of `name` for the altovirt binary.
pub fn jail_dir(name: &str) -> PathBuf {
    Path::new("/srv/zozone/altovirt").join(name)
}

/// A fresh scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ozone-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The test guest copied into `dir` (readable by everyone).
pub fn guest_in(dir: &Path) -> PathBuf {
    let p = dir.join("guest.elf");
    std::fs::copy(guest(), &p).expect("copy guest");
    p
}

/// What a finished altovirt-ozone produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status.
    pub status: ExitStatus,
    /// stdout (the serial console with -serial stdio).
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Outcome {
    /// Exit code, or 128 + signal.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = into.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    })
}

/// altovirt-ozone running, its output collected.
pub struct Running {
    /// The altovirt-ozone process.
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The jail name (for the clean-up when a test fails midway).
    name: Option<String>,
    waited: bool,
}

impl Drop for Running {
    /// A test that failed midway leaves no VM and no jail behind.
    fn drop(&mut self) {
        if self.waited {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(name) = &self.name {
            let exec = target_debug().join("altovirt");
            let _ = Command::new(OZONE)
                .args(["-name", name, "-exec-file"])
                .arg(exec)
                .arg("-clean-resource")
                .status();
        }
    }
}

impl Running {
    /// Starts altovirt-ozone with `args`.
    pub fn start(args: &[String]) -> Running {
        let mut child = Command::new(OZONE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn altovirt-ozone");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        let name = args
            .iter()
            .position(|a| a == "-name")
            .and_then(|i| args.get(i + 1))
            .cloned();
        Running {
            child,
            stdout,
            stderr,
            readers,
            name,
            waited: false,
        }
    }

    /// stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until stdout contains `needle` (10 s at most).
    pub fn wait_stdout(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The jailed VMM: altovirt-ozone's only child (host pid).
    pub fn vmm_pid(&self) -> i32 {
        let me = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next() {
                let pid: i32 = p.parse().expect("pid");
                // Past the exec: the child runs the VMM binary.
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.ends_with("altovirt") {
                    return pid;
                }
            }
            assert!(Instant::now() < deadline, "no jailed VMM under {me}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit (20 s at most, then SIGKILL and a failure).
    pub fn wait(mut self) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.waited = true;
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("altovirt-ozone did not exit; stdout: {}", self.stdout());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Outcome {
            status,
            stdout: self.stdout(),
            stderr: self.stderr.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }
}

/// Runs altovirt-ozone with `args` to completion.
pub fn run(args: &[String]) -> Outcome {
    Running::start(args).wait()
}

/// `args` as owned strings.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A field of /proc/PID/status.
pub fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Waits until `path` exists (10 s at most).
pub fn wait_for(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A negotiated QMP connection.
pub struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates.
    pub fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("connect to QMP");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut q = Qmp {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        assert_eq!(q.execute("qmp_capabilities"), json!({"return": {}}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP line {line:?}: {e}"))
    }

    /// Runs a command; returns its reply (events are skipped).
    pub fn execute(&mut self, cmd: &str) -> Value {
        writeln!(self.w, "{}", json!({ "execute": cmd })).expect("QMP write");
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}
