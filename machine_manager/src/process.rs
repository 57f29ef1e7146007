//! Process concerns of the VMM: the pidfile, daemonizing, host signals and
//! the controlling terminal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors of process set-up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The pidfile could not be created or written.
    #[error("-pidfile: cannot write '{path}': {source}")]
    PidFile {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another live process holds the pidfile.
    #[error("-pidfile: '{path}' is held by another running altovirt (pid {pid})")]
    PidFileHeld {
        /// The path given.
        path: String,
        /// The holder's pid as written in the file.
        pid: String,
    },
    /// fork/setsid/pipe failed while daemonizing.
    #[error("-daemonize: {what} failed: {source}")]
    Daemonize {
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal set-up failed.
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
}

/// A pidfile this process holds (locked with `flock`); removed on drop.
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    /// Creates or takes over `path`, locks it and writes this process's pid.
    /// Fails if another live process holds the lock.
    pub fn acquire(path: &Path) -> Result<Self, ProcessError> {
        let err = |source| ProcessError::PidFile {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(err)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(ProcessError::PidFileHeld {
                    path: path.display().to_string(),
                    pid: pid.trim().to_string(),
                });
            }
            return Err(err(e));
        }
        file.set_len(0).map_err(err)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The daemon side of `-daemonize`: tells the waiting parent when the VMM
/// is ready.
pub struct Daemon {
    ready: Option<OwnedFd>,
}

impl Daemon {
    /// Detaches stdio (to /dev/null) and lets the original parent exit 0.
    pub fn ready(&mut self) {
        if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        if let Some(fd) = self.ready.take() {
            let mut f = File::from(fd);
            let _ = f.write_all(&[1]);
        }
    }
}

/// Forks into the background. The original process waits until the daemon
/// calls [`Daemon::ready`] (exit 0) or dies first (exit 1); only the daemon
/// returns. Must be called before any thread is spawned.
pub fn daemonize() -> Result<Daemon, ProcessError> {
    let err = |what| move |source| ProcessError::Daemonize { what, source };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err("pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (documented precondition).
    match unsafe { libc::fork() } {
        -1 => Err(err("fork")(std::io::Error::last_os_error())),
        0 => {
            drop(rd);
            // SAFETY: plain syscalls in the child.
            if unsafe { libc::setsid() } < 0 {
                return Err(err("setsid")(std::io::Error::last_os_error()));
            }
            // SAFETY: second fork so the daemon is not a session leader.
            match unsafe { libc::fork() } {
                -1 => Err(err("fork")(std::io::Error::last_os_error())),
                // SAFETY: the intermediate process leaves without running destructors.
                pid if pid > 0 => unsafe { libc::_exit(0) },
                _ => Ok(Daemon { ready: Some(wr) }),
            }
        }
        child => {
            drop(wr);
            let mut status = 0;
            // SAFETY: reap the intermediate child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let mut byte = [0u8; 1];
            let mut f = File::from(rd);
            let code = match f.read(&mut byte) {
                Ok(1) => 0,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}

/// Signals that stop the VM gracefully.
pub const TERMINATING_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn terminating_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in TERMINATING_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the terminating signals in the calling thread, and so in every
/// thread spawned after it, so that none of them can be killed by one.
/// Call from the main thread before spawning any thread, then read them
/// from [`TerminatingSignals`].
pub fn block_terminating_signals() -> Result<(), ProcessError> {
    let set = terminating_set();
    // SAFETY: set is initialised; changes only this thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(ProcessError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// The terminating signals as a readable descriptor (a `signalfd`), for an
/// event loop the VMM already runs to watch: no thread of their own. The
/// signals must stay blocked in every thread ([`block_terminating_signals`]);
/// one sent before the descriptor existed is pending and is read then.
pub struct TerminatingSignals {
    fd: OwnedFd,
}

impl TerminatingSignals {
    /// Opens the descriptor (non-blocking, close-on-exec).
    pub fn open() -> Result<Self, ProcessError> {
        let set = terminating_set();
        // SAFETY: signalfd with -1 creates a new descriptor for an
        // initialised set; the result is checked before it is owned.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(ProcessError::Signals(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The descriptor, readable while a terminating signal is pending.
    pub fn as_raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// Takes the next pending terminating signal; None when none is pending.
    pub fn take(&self) -> Option<libc::c_int> {
        // SAFETY: an all-zero signalfd_siginfo is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that big.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (usize::try_from(n).ok() == Some(size)).then_some(info.ssi_signo as libc::c_int)
    }
}

/// Puts a terminal on stdin into raw-ish mode (no line buffering, no echo;
/// Ctrl-C still signals) for `-serial stdio`, and restores it on drop.
pub struct TerminalGuard {
    saved: Option<libc::termios>,
}

impl TerminalGuard {
    /// Switches stdin if it is a terminal; otherwise does nothing.
    pub fn for_stdin() -> Self {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a local termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Self { saved: None };
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_iflag &= !(libc::ICRNL);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Self { saved: Some(saved) }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the attributes read earlier.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Makes every thread allocate from glibc's main arena, before any thread
/// exists. A per-thread arena reads `/proc/sys/vm/overcommit_memory` the
/// first time it shrinks, an `openat` no confined thread may make (the
/// nested rig caught a virtio I/O thread doing it at exit); one arena also
/// keeps the VMM's memory small. Large blocks are still mmap'ed.
pub fn single_malloc_arena() {
    // SAFETY: mallopt only sets a malloc parameter; called before threads.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_holds_pid_refuses_second_holder_and_is_removed() {
        let dir = std::env::temp_dir().join(format!("altovirt-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.pid");
        let held = PidFile::acquire(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks are per open file description, so a second acquire in
        // the same process conflicts just as another process would.
        match PidFile::acquire(&path) {
            Err(ProcessError::PidFileHeld { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected PidFileHeld, got {:?}", other.err()),
        }
        drop(held);
        assert!(!path.exists());
        // A stale file (no holder) is taken over.
        std::fs::write(&path, "999999\n").unwrap();
        let again = PidFile::acquire(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_blocked_terminating_signal_is_read_from_the_descriptor() {
        // Only this test's thread blocks the signals, and the signal is
        // sent to this thread alone, so nothing else in the test binary sees it.
        block_terminating_signals().unwrap();
        let signals = TerminatingSignals::open().unwrap();
        assert_eq!(signals.take(), None, "nothing pending yet");
        // SAFETY: a thread-directed signal to ourselves; it is blocked here.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        assert_eq!(rc, 0);
        assert_eq!(signals.take(), Some(libc::SIGHUP));
        assert_eq!(signals.take(), None, "taken once");
    }
}
