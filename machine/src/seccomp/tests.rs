//! Each thread kind's filter, installed in a child process: an allowed call
//! goes through, a call outside the list ends the process through the
//! SIGSYS handler with its one-line report.

use super::*;
use std::io::Read;
use std::os::fd::FromRawFd;

/// Forks; the child installs `kind`'s filter and runs `probe`, then exits
/// with 0. Returns the child's exit status and what it wrote on stderr.
fn in_child(kind: ThreadKind, probe: fn()) -> (i32, String) {
    let prog = compile(kind).unwrap();
    let mut fds = [0; 2];
    // SAFETY: valid array for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes async-signal-safe calls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: in the child: redirect stderr into the pipe, confine, probe.
        unsafe {
            libc::dup2(fds[1], 2);
            let name = b"probe-thread\0";
            libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        }
        if install_sigsys_handler().is_err() || seccompiler::apply_filter(&prog).is_err() {
            // SAFETY: plain exit.
            unsafe { libc::_exit(99) };
        }
        probe();
        // SAFETY: plain exit.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the write end belongs to this process.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is ours alone.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut err = String::new();
    pipe.read_to_string(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child did not exit: {status:#x}");
    (libc::WEXITSTATUS(status), err)
}

fn assert_refused(kind: ThreadKind, probe: fn(), nr: i64) {
    let (code, err) = in_child(kind, probe);
    assert_eq!(code, SECCOMP_EXIT_STATUS, "{kind:?}: stderr {err:?}");
    // openat's report also names the path (the probe opens /etc/hostname).
    let detail = if nr == libc::SYS_openat {
        " (openat \"/etc/hostname\")"
    } else {
        ""
    };
    assert_eq!(
        err,
        format!(
            "altovirt: seccomp: thread 'probe-thread' made a forbidden system call {nr}{detail}; \
             exiting (see docs/security.md; -disable-seccomp turns the filters off)\n"
        ),
        "{kind:?}"
    );
}

fn open_file() {
    // SAFETY: a plain open of a constant path.
    unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
}

fn inet_socket() {
    // SAFETY: plain syscall.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
}

fn exec_shell() {
    let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
    // SAFETY: valid, NULL-terminated argv.
    unsafe { libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr()) };
}

fn read_stdin() {
    let mut b = [0u8; 1];
    // SAFETY: valid one-byte buffer (stdin of a test is not read further).
    unsafe { libc::syscall(libc::SYS_read, -1, b.as_mut_ptr(), 0) };
}

fn kvm_create_vm_ioctl() {
    // KVM_CREATE_VM on a bad descriptor: refused by the filter before the
    // kernel looks at the descriptor.
    // SAFETY: an ioctl on an invalid descriptor has no effect.
    unsafe { libc::ioctl(-1, 0xae01, 0) };
}

fn map_executable() {
    // SAFETY: an anonymous mapping, never used.
    unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
}

fn allowed_basics() {
    // SAFETY: plain syscalls on valid arguments.
    unsafe {
        libc::getpid();
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::munmap(p, 4096);
    }
}

#[test]
fn every_kind_compiles() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap();
        assert!(prog.len() < 4096, "{kind:?}: {} instructions", prog.len());
    }
}

#[test]
fn every_kind_allows_the_basics() {
    for kind in ThreadKind::ALL {
        assert_eq!(
            in_child(kind, allowed_basics),
            (0, String::new()),
            "{kind:?}"
        );
    }
}

#[test]
fn no_thread_may_exec_or_map_executable_memory() {
    for kind in ThreadKind::ALL {
        assert_refused(kind, exec_shell, libc::SYS_execve);
        assert_refused(kind, map_executable, libc::SYS_mmap);
    }
}

#[test]
fn no_thread_may_open_an_inet_socket() {
    for kind in ThreadKind::ALL {
        assert_refused(kind, inet_socket, libc::SYS_socket);
    }
}

#[test]
fn only_hotplug_and_control_threads_open_files() {
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::VirtioIo,
        ThreadKind::QmpWriter,
        ThreadKind::SerialIn,
    ] {
        assert_refused(kind, open_file, libc::SYS_openat);
    }
    for kind in [
        ThreadKind::Vmm,
        ThreadKind::QmpReader,
        ThreadKind::QmpAccept,
    ] {
        assert_eq!(in_child(kind, open_file), (0, String::new()), "{kind:?}");
    }
}

#[test]
fn kvm_requests_are_checked_by_number() {
    // No thread may create a VM once running.
    for kind in ThreadKind::ALL {
        assert_refused(kind, kvm_create_vm_ioctl, libc::SYS_ioctl);
    }
}

#[test]
fn the_qmp_writer_cannot_read() {
    assert_refused(ThreadKind::QmpWriter, read_stdin, libc::SYS_read);
}

#[test]
fn disabled_filters_install_nothing() {
    let f = ThreadFilters::new(false).unwrap();
    assert!(!f.enabled());
    assert!(ThreadKind::ALL.iter().all(|&k| f.get(k).is_none()));
    f.install_here(ThreadKind::Vmm).unwrap();
}

#[test]
fn vhost_requests_are_linuxs_numbers() {
    // The list comes from the `vhost` crate; these are linux/vhost.h's
    // values on x86_64, so a crate that numbered a request differently
    // (and so issued it differently) shows here.
    assert_eq!(
        rules::vhost_ioctls(),
        vec![
            0x8008_af00, // VHOST_GET_FEATURES
            0x4008_af00, // VHOST_SET_FEATURES
            0xaf01,      // VHOST_SET_OWNER
            0xaf02,      // VHOST_RESET_OWNER
            0x4008_af03, // VHOST_SET_MEM_TABLE
            0x4008_af10, // VHOST_SET_VRING_NUM
            0x4028_af11, // VHOST_SET_VRING_ADDR
            0x4008_af12, // VHOST_SET_VRING_BASE
            0xc008_af12, // VHOST_GET_VRING_BASE
            0x4008_af20, // VHOST_SET_VRING_KICK
            0x4008_af21, // VHOST_SET_VRING_CALL
            0x4008_af60, // VHOST_VSOCK_SET_GUEST_CID
            0x4004_af61, // VHOST_VSOCK_SET_RUNNING
        ]
    );
}
