//! Launching and cleaning up.
//!
//! altovirt-ozone stays the VMM's parent: it makes the jail directory and
//! the cgroups, enters a new PID namespace and forks. The child, PID 1 of
//! that namespace, builds its mount view, pivots into the jail, drops its
//! credentials and execs the VMM. The parent moves the child into the
//! cgroups, forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to it, waits for
//! it, and with `-clean-resource` removes the jail directory and the
//! cgroups when it has ended. It exits with the VMM's status (128 + the
//! signal number if a signal ended it). If altovirt-ozone itself is
//! killed, the kernel kills the jail (parent-death signal, and the PID
//! namespace dies with its PID 1); the clean-up invocation then removes
//! what is left.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::args::Options;
use crate::caps;
use crate::cgroup::{self, Mounts, Plan};
use crate::error::OzoneError;
use crate::jail::Jail;
use crate::namespace;

/// Signals forwarded to the jail.
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Signals left blocked across the exec: altovirt blocks these itself and
/// receives them with `sigwait`, so one sent while it starts (which PID 1
/// would otherwise drop) is still delivered.
const BLOCKED_AT_EXEC: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), OzoneError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(OzoneError::last_os("pipe2"));
    }
    // SAFETY: both were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Builds the jail, runs the VMM in it and waits; returns the exit status
/// to leave with.
pub fn launch(o: &Options) -> Result<i32, OzoneError> {
    let jail = Jail::of(o)?;
    let mounts = if o.cgroups.is_empty() {
        Mounts::default()
    } else {
        Mounts::read()?
    };
    let plan = Plan::new(&o.cgroups, &mounts, &jail.exec_name, &o.name)?;
    jail.create(o)?;
    let outcome = plan.apply().and_then(|()| supervise(o, &jail, &plan));
    match outcome {
        // Set-up failed: nothing ran, nothing is kept.
        Err(e) => {
            let _ = plan.remove();
            let _ = jail.remove();
            Err(e)
        }
        Ok(code) => {
            if o.clean_resource {
                plan.remove()?;
                jail.remove()?;
            }
            Ok(code)
        }
    }
}

/// Removes what a launch of this name left: the jail directory and its
/// cgroups in every hierarchy. Refused while a process runs in the jail
/// (after 3 s of waiting for it to go); nothing to remove is not an error.
pub fn clean(o: &Options) -> Result<(), OzoneError> {
    let jail = Jail::of(o)?;
    // A VMM killed with its jailer may still be exiting: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while let Some(pid) = jail.user() {
        if std::time::Instant::now() >= deadline {
            return Err(OzoneError::JailBusy { dir: jail.dir, pid });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    jail.remove()?;
    cgroup::remove_everywhere(&Mounts::read()?, &jail.exec_name, &o.name)?;
    Ok(())
}

/// Forks the jailed child and waits for it.
fn supervise(o: &Options, jail: &Jail, plan: &Plan) -> Result<i32, OzoneError> {
    let exec = CString::new(jail.exec_in_jail().as_os_str().as_encoded_bytes())
        .map_err(|_| OzoneError::usage("-exec-file: NUL byte in the name"))?;
    let mut argv = vec![CString::new(jail.exec_name.as_str())
        .map_err(|_| OzoneError::usage("-exec-file: NUL byte in the name"))?];
    for a in &o.vmm_args {
        argv.push(
            CString::new(a.as_str())
                .map_err(|_| OzoneError::usage(format!("'{a}': NUL byte in an argument")))?,
        );
    }
    let waited = sigset(&[
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGCHLD,
    ]);
    // SAFETY: blocks signals in this (only) thread; they are taken with
    // sigwaitinfo below.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &waited, std::ptr::null_mut()) } != 0 {
        return Err(OzoneError::last_os("sigprocmask"));
    }
    // SAFETY: the next child is PID 1 of a new PID namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(OzoneError::last_os("unshare(PID namespace)"));
    }
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: this process is single-threaded, so the child may run
    // ordinary code until it execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(OzoneError::last_os("fork"));
    }
    if pid == 0 {
        drop(go_w);
        drop(err_r);
        let e = child(o, jail, &go_r, &exec, &argv);
        let mut f = File::from(err_w);
        let _ = f.write_all(e.to_string().as_bytes());
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    drop(go_r);
    drop(err_w);
    let kill_and_reap = |e: OzoneError| {
        // SAFETY: the child is ours.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        e
    };
    if let Err(e) = plan.join(pid) {
        return Err(kill_and_reap(e));
    }
    let mut go = File::from(go_w);
    if let Err(e) = go.write_all(&[1]) {
        return Err(kill_and_reap(OzoneError::Sys {
            what: "starting the jailed child".into(),
            source: e,
        }));
    }
    // The error pipe closes at the exec; anything read is the child's
    // one-line reason for failing before it.
    let mut msg = String::new();
    let _ = File::from(err_r).read_to_string(&mut msg);
    if !msg.is_empty() {
        // SAFETY: reap the failed child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(OzoneError::Child(msg));
    }
    let status = wait_forwarding(pid, &waited)?;
    drop(go);
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    })
}

/// Waits for `pid`, forwarding the terminating signals to it.
fn wait_forwarding(pid: libc::pid_t, waited: &libc::sigset_t) -> Result<libc::c_int, OzoneError> {
    loop {
        let mut status = 0;
        // SAFETY: non-blocking wait for our child.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            p if p == pid => return Ok(status),
            p if p < 0 => return Err(OzoneError::last_os("waitpid")),
            _ => {}
        }
        // SAFETY: waits for one of the blocked signals; no siginfo wanted.
        let sig = unsafe { libc::sigwaitinfo(waited, std::ptr::null_mut()) };
        if sig > 0 && FORWARDED.contains(&sig) {
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// The child: waits for the parent's go-ahead (it is in the cgroups by
/// then), builds the jail view, drops its credentials and execs the VMM.
/// Returns only on failure.
fn child(o: &Options, jail: &Jail, go: &OwnedFd, exec: &CString, argv: &[CString]) -> OzoneError {
    match child_steps(o, jail, go, exec, argv) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn child_steps(
    o: &Options,
    jail: &Jail,
    go: &OwnedFd,
    exec: &CString,
    argv: &[CString],
) -> Result<std::convert::Infallible, OzoneError> {
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a local buffer.
    if unsafe { libc::read(go.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
        return Err(OzoneError::Child(
            "altovirt-ozone's parent went away before the VMM started".into(),
        ));
    }
    namespace::unshare(&o.name, o.netns.as_deref())?;
    namespace::pivot_into(&jail.dir, o.uid, o.gid)?;
    caps::set_rlimits()?;
    caps::drop_privileges(o.uid, o.gid, &o.keep_caps)?;
    // Set after the uid change (which clears it); if the parent dies from
    // here on, the kernel kills the jail.
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(OzoneError::last_os("prctl(PR_SET_PDEATHSIG)"));
    }
    let mut pfd = libc::pollfd {
        fd: go.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor without waiting. The parent holds the
    // other end while it lives.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        return Err(OzoneError::Child(
            "altovirt-ozone's parent went away before the VMM started".into(),
        ));
    }
    let mask = sigset(&BLOCKED_AT_EXEC);
    // SAFETY: sets this process's mask to a valid set.
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) } != 0 {
        return Err(OzoneError::last_os("sigprocmask"));
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: exec with NUL-terminated strings and a null-terminated argv;
    // the environment is inherited.
    unsafe { libc::execv(exec.as_ptr(), ptrs.as_ptr()) };
    Err(OzoneError::Sys {
        what: format!("cannot exec {} in the jail", exec.to_string_lossy()),
        source: std::io::Error::last_os_error(),
    })
}
