//! Per-thread seccomp filters: every thread kind of the VMM gets its own
//! default-deny allow list ([`rules`]), compiled once at start-up with the
//! `seccompiler` crate and installed by the thread itself before it handles
//! anything the guest or a QMP client controls.
//!
//! A forbidden system call raises `SIGSYS` (`SECCOMP_RET_TRAP`); the handler
//! installed by [`install_sigsys_handler`] prints one line naming the thread
//! and the system call number on stderr and ends the process with status
//! [`SECCOMP_EXIT_STATUS`]. `-disable-seccomp` builds no filters at all.
//! docs/security.md lists what each thread may do and why.

pub mod rules;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use util::event_loop::EventLoop;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use rules::ThreadKind;

/// Exit status of the VMM after a thread made a forbidden system call
/// (128 + SIGSYS, what a shell reports for a process killed by SIGSYS).
pub const SECCOMP_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules of a thread kind do not compile (a bug in [`rules`]).
    #[error("seccomp filter for the {kind} thread: {source}")]
    Build {
        /// Which thread kind.
        kind: &'static str,
        /// The compiler's error.
        source: seccompiler::BackendError,
    },
    /// The host kernel cannot filter system calls.
    #[error(
        "seccomp filters are not available on this host kernel ({0}); \
         -disable-seccomp runs without them"
    )]
    Unsupported(std::io::Error),
    /// A thread could not install its filter.
    #[error("cannot install the seccomp filter of the {kind} thread: {reason}")]
    Install {
        /// Which thread kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The compiled filter of every thread kind, or none with `-disable-seccomp`.
#[derive(Clone, Default)]
pub struct ThreadFilters {
    programs: BTreeMap<ThreadKind, Arc<BpfProgram>>,
}

impl std::fmt::Debug for ThreadFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadFilters")
            .field("kinds", &self.programs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ThreadFilters {
    /// Compiles the filter of every thread kind (`enabled`), or returns an
    /// empty set that installs nothing (`-disable-seccomp`). With filters
    /// on, also checks that the kernel supports them and installs the
    /// `SIGSYS` handler.
    pub fn new(enabled: bool) -> Result<Self, SeccompError> {
        if !enabled {
            return Ok(Self::default());
        }
        check_kernel_support()?;
        install_sigsys_handler()?;
        let mut programs = BTreeMap::new();
        for kind in ThreadKind::ALL {
            programs.insert(kind, Arc::new(compile(kind)?));
        }
        Ok(Self { programs })
    }

    /// Whether filters are installed at all.
    pub fn enabled(&self) -> bool {
        !self.programs.is_empty()
    }

    /// The filter for threads of `kind` (none when filters are off).
    pub fn get(&self, kind: ThreadKind) -> Option<Arc<BpfProgram>> {
        self.programs.get(&kind).cloned()
    }

    /// Installs the filter of `kind` on the calling thread.
    pub fn install_here(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        match self.programs.get(&kind) {
            Some(prog) => seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install {
                kind: kind.name(),
                reason: e.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Installs the filter of `kind` on the thread of `event_loop` and
    /// waits until it is in place.
    pub fn install_on_loop(
        &self,
        event_loop: &EventLoop,
        kind: ThreadKind,
    ) -> Result<(), SeccompError> {
        let Some(prog) = self.get(kind) else {
            return Ok(());
        };
        let err = |reason: String| SeccompError::Install {
            kind: kind.name(),
            reason,
        };
        let trigger = EventFd::new(EFD_NONBLOCK).map_err(|e| err(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let mut once = Some(prog);
        let token = event_loop
            .add(
                trigger.as_raw_fd(),
                libc::EPOLLIN as u32,
                Box::new(move |_| {
                    if let Some(prog) = once.take() {
                        let _ =
                            tx.send(seccompiler::apply_filter(&prog).map_err(|e| e.to_string()));
                    }
                }),
            )
            .map_err(|e| err(e.to_string()))?;
        let result = trigger
            .write(1)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                rx.recv_timeout(Duration::from_secs(10))
                    .map_err(|_| format!("loop {} did not answer", event_loop.name()))
            })
            .and_then(|r| r);
        let _ = event_loop.remove(token);
        result.map_err(err)
    }
}

use std::os::fd::AsRawFd;

fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = rules::rules(kind).map_err(build)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// `SECCOMP_GET_ACTION_AVAIL` for the trap action: fails where the kernel
/// was built without seccomp filters.
fn check_kernel_support() -> Result<(), SeccompError> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: the kernel reads 4 bytes from a valid u32.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if ret != 0 {
        return Err(SeccompError::Unsupported(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Installs the process-wide `SIGSYS` handler that reports a forbidden
/// system call and ends the process.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the fields are set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is a fully initialised sigaction; no old action wanted.
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset of `si_syscall` in the kernel's `siginfo_t` for SIGSYS on x86_64:
/// after si_signo, si_errno, si_code (3 × i32) and padding come
/// `_call_addr` (a pointer, at 16) and then `_syscall` (i32, at 24).
const SI_SYSCALL_OFFSET: usize = 24;

/// The `SIGSYS` handler: only async-signal-safe calls (prctl to read the
/// thread name, write, _exit), all allowed in every filter.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut nr: i32 = -1;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t of at least 128 bytes;
        // for SIGSYS the syscall number is at SI_SYSCALL_OFFSET.
        nr = unsafe {
            std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>())
        };
    }
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let mut line = [0u8; 288];
    let mut len = 0;
    for part in [
        b"altovirt: seccomp: thread '".as_slice(),
        &name[..name_len],
        b"' made a forbidden system call ",
    ] {
        len += copy_into(&mut line[len..], part);
    }
    let mut digits = [0u8; 12];
    len += copy_into(&mut line[len..], format_i32(nr, &mut digits));
    if nr == libc::SYS_openat as i32 && !ctx.is_null() {
        // SAFETY: for SIGSYS the kernel passes the interrupted thread's
        // ucontext; openat's path is its second argument (RSI), a
        // NUL-terminated string the calling code passed, so readable.
        let path = unsafe {
            let uc = &*ctx.cast::<libc::ucontext_t>();
            uc.uc_mcontext.gregs[libc::REG_RSI as usize] as *const u8
        };
        len += copy_into(&mut line[len..], b" (openat \"");
        for i in 0..64 {
            let b = if path.is_null() {
                0
            } else {
                // SAFETY: reads the path string byte by byte up to its NUL
                // or 64 bytes (see above).
                unsafe { *path.add(i) }
            };
            if b == 0 {
                break;
            }
            len += copy_into(&mut line[len..], &[b]);
        }
        len += copy_into(&mut line[len..], b"\")");
    }
    len += copy_into(
        &mut line[len..],
        b"; exiting (see docs/security.md; -disable-seccomp turns the filters off)\n",
    );
    // SAFETY: writes `len` initialised bytes to stderr, then ends the
    // process without running any user-space clean-up.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(SECCOMP_EXIT_STATUS);
    }
}

fn copy_into(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn format_i32(v: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    let neg = v < 0;
    let mut n = (v as i64).unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests;
