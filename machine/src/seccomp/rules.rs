//! The allow list of every thread kind. Anything not listed traps.
//!
//! Lists are built from what each thread's code calls (read beside the
//! thread's code: cpu/src/vcpu.rs, machine_manager/src/event_loop.rs and the
//! virtio devices, qmp/src/server.rs and the hotplug paths it runs,
//! devices/src/serial.rs, machine_manager/src/process.rs, machine/src/lib.rs)
//! and checked by running the whole test suite, the nested rig included,
//! with the filters on. docs/security.md explains each group.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_irq_level, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// The kinds of thread altovirt runs; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the control loop (lifecycle,
    /// system_reset, quit) and the process's clean-up at exit.
    Vmm,
    /// A vCPU (`vcpuN`): KVM_RUN and the device register accesses it
    /// forwards, including virtio device activation and reset.
    Vcpu,
    /// A virtio I/O event loop (`virtio-io` and `-object iothread` threads).
    VirtioIo,
    /// The QMP accept thread (`qmp-accept`); it creates each client's
    /// reader and writer thread, which inherit its filter.
    QmpAccept,
    /// A QMP client's reader (`qmp-reader`): runs commands, hotplug
    /// included.
    QmpReader,
    /// A QMP client's writer (`qmp-writer`).
    QmpWriter,
    /// The stdin reader of the serial console (`serial-in`).
    SerialIn,
    /// The signal thread (`signals`).
    Signals,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::VirtioIo,
        ThreadKind::QmpAccept,
        ThreadKind::QmpReader,
        ThreadKind::QmpWriter,
        ThreadKind::SerialIn,
        ThreadKind::Signals,
    ];

    /// The kind's name, as in docs/security.md.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VirtioIo => "virtio-io",
            ThreadKind::QmpAccept => "qmp-accept",
            ThreadKind::QmpReader => "qmp-reader",
            ThreadKind::QmpWriter => "qmp-writer",
            ThreadKind::SerialIn => "serial-in",
            ThreadKind::Signals => "signals",
        }
    }
}

// KVM requests (linux/kvm.h), numbered from the same structures kvm-ioctls uses.
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);

// vhost requests (linux/vhost.h) a vhost-vsock device makes when the guest
// starts, resets or stops it.
const VHOST: u32 = 0xaf;
ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST, 0x00, u64);
ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
ioctl_io_nr!(VHOST_SET_OWNER, VHOST, 0x01);
ioctl_io_nr!(VHOST_RESET_OWNER, VHOST, 0x02);
ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, u64);
ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, [u32; 2]);
ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, [u64; 5]);
ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, [u32; 2]);
ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, [u32; 2]);
ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, [u32; 2]);
ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, [u32; 2]);
ioctl_iow_nr!(VHOST_VSOCK_SET_GUEST_CID, VHOST, 0x60, u64);
ioctl_iow_nr!(VHOST_VSOCK_SET_RUNNING, VHOST, 0x61, i32);

/// Requests of `BLKGETSIZE64` and `BLKSSZGET` (linux/fs.h), for block
/// devices used as disk images.
const BLKGETSIZE64: u64 = 0x8008_1272;
const BLKSSZGET: u64 = 0x1268;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Builds the rule map of `kind`.
pub fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    common(&mut r)?;
    match kind {
        ThreadKind::Vmm => vmm(&mut r)?,
        ThreadKind::Vcpu => vcpu(&mut r)?,
        ThreadKind::VirtioIo => virtio_io(&mut r)?,
        ThreadKind::QmpAccept => {
            qmp_reader(&mut r)?;
            qmp_writer(&mut r)?;
            qmp_accept(&mut r)?;
        }
        ThreadKind::QmpReader => qmp_reader(&mut r)?,
        ThreadKind::QmpWriter => qmp_writer(&mut r)?,
        // fcntl: seen from this thread when the VMM exits early (a -qmp
        // error) while it reads stdin.
        ThreadKind::SerialIn => allow(&mut r, &[libc::SYS_read, libc::SYS_fcntl]),
        ThreadKind::Signals => allow(&mut r, &[libc::SYS_rt_sigtimedwait]),
    }
    Ok(r)
}

/// Allows `syscalls` whatever their arguments.
fn allow(r: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        r.insert(nr, Vec::new());
    }
}

/// Allows `nr` when argument `arg` equals one of `values` (added to any
/// values allowed before). An unconditional rule stays unconditional.
fn allow_arg_in(r: &mut Rules, nr: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
    if r.get(&nr).is_some_and(|v| v.is_empty()) {
        return Ok(());
    }
    let list = r.entry(nr).or_default();
    for &v in values {
        list.push(SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            v,
        )?])?);
    }
    Ok(())
}

fn ioctls(r: &mut Rules, requests: &[u64]) -> Result<(), BackendError> {
    allow_arg_in(r, libc::SYS_ioctl, 1, requests)
}

fn sockets(r: &mut Rules, domains: &[i32]) -> Result<(), BackendError> {
    let d: Vec<u64> = domains.iter().map(|&d| d as u64).collect();
    allow_arg_in(r, libc::SYS_socket, 0, &d)
}

/// `(arg & mask) == 0`.
fn masked_zero(arg: u8, mask: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

/// What every thread needs: memory allocation (never executable), locks,
/// clocks and sleeps, its own exit, writing to an already open descriptor
/// (logs, eventfds) and closing one, abort() on a fatal error, and what the
/// SIGSYS handler itself calls.
fn common(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_brk,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_close,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_futex,
            libc::SYS_getpid,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_munmap,
            libc::SYS_nanosleep,
            libc::SYS_restart_syscall,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sched_getaffinity,
            libc::SYS_sched_yield,
            libc::SYS_sigaltstack,
            libc::SYS_write,
            libc::SYS_writev,
        ],
    );
    let no_exec = libc::PROT_EXEC as u64;
    r.insert(
        libc::SYS_mmap,
        vec![SeccompRule::new(vec![masked_zero(2, no_exec)?])?],
    );
    r.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![masked_zero(2, no_exec)?])?],
    );
    // abort(): SIGABRT to itself.
    allow_arg_in(r, libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])?;
    // The SIGSYS handler names the thread.
    allow_arg_in(r, libc::SYS_prctl, 0, &[libc::PR_GET_NAME as u64])?;
    Ok(())
}

/// Reading and writing files, sockets and eventfds the thread was handed.
fn file_io(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_lseek,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_fallocate,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_eventfd2,
            libc::SYS_epoll_ctl,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
}

/// Unix-socket traffic (vsock's host side, vhost-user, the console,
/// descriptor passing).
fn unix_sockets(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
        ],
    );
    sockets(r, &[libc::AF_UNIX])
}

fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_GET_FPU(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_GET_MP_STATE(),
        KVM_SET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_GET_XSAVE(),
        KVM_SET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_SET_XCRS(),
    ]
}

fn vm_ioctls() -> Vec<u64> {
    vec![
        KVM_GET_API_VERSION(),
        KVM_CHECK_EXTENSION(),
        KVM_IRQ_LINE(),
        KVM_GET_IRQCHIP(),
        KVM_SET_IRQCHIP(),
        KVM_GET_CLOCK(),
        KVM_SET_CLOCK(),
        KVM_GET_PIT2(),
        KVM_SET_PIT2(),
    ]
}

fn vhost_ioctls() -> Vec<u64> {
    vec![
        VHOST_GET_FEATURES(),
        VHOST_SET_FEATURES(),
        VHOST_SET_OWNER(),
        VHOST_RESET_OWNER(),
        VHOST_SET_MEM_TABLE(),
        VHOST_SET_VRING_NUM(),
        VHOST_SET_VRING_ADDR(),
        VHOST_SET_VRING_BASE(),
        VHOST_GET_VRING_BASE(),
        VHOST_SET_VRING_KICK(),
        VHOST_SET_VRING_CALL(),
        VHOST_VSOCK_SET_GUEST_CID(),
        VHOST_VSOCK_SET_RUNNING(),
    ]
}

/// Requests on a tap a virtio-net device makes when the guest sets its
/// features, and those of opening one by name (hotplug).
fn tap_ioctls() -> Vec<u64> {
    vec![
        libc::TUNSETIFF as u64,
        libc::TUNGETIFF as u64,
        libc::TUNSETOFFLOAD as u64,
        libc::TUNSETVNETHDRSZ as u64,
        libc::TUNGETVNETHDRSZ as u64,
        libc::TUNGETFEATURES as u64,
    ]
}

fn descriptor_ioctls() -> Vec<u64> {
    vec![
        libc::FIONBIO as u64,
        libc::FIOCLEX as u64,
        libc::FIONCLEX as u64,
    ]
}

fn vcpu(r: &mut Rules) -> Result<(), BackendError> {
    file_io(r);
    unix_sockets(r)?;
    ioctls(r, &vcpu_ioctls())?;
    // Device register writes start, reset and stop devices: vhost-vsock,
    // tap offloads, vhost-user.
    ioctls(r, &vhost_ioctls())?;
    ioctls(r, &tap_ioctls())?;
    ioctls(r, &descriptor_ioctls())?;
    ioctls(r, &[KVM_IRQ_LINE()])
}

fn virtio_io(r: &mut Rules) -> Result<(), BackendError> {
    file_io(r);
    unix_sockets(r)?;
    allow(r, &[libc::SYS_epoll_wait, libc::SYS_epoll_pwait]);
    ioctls(r, &descriptor_ioctls())?;
    ioctls(r, &tap_ioctls())?;
    ioctls(r, &vhost_ioctls())?;
    ioctls(r, &[BLKGETSIZE64, BLKSSZGET, KVM_IRQ_LINE()])
}

/// A QMP command runs on its client's reader thread: hotplug opens images
/// and taps, locks images, receives descriptors; lifecycle requests go to
/// the main thread over a channel.
fn qmp_reader(r: &mut Rules) -> Result<(), BackendError> {
    file_io(r);
    unix_sockets(r)?;
    allow(r, &[libc::SYS_openat, libc::SYS_flock]);
    ioctls(r, &tap_ioctls())?;
    ioctls(r, &descriptor_ioctls())?;
    ioctls(r, &[BLKGETSIZE64, BLKSSZGET])?;
    ioctls(r, &vm_ioctls())?;
    ioctls(r, &vhost_ioctls())?;
    // `stop` kicks the vCPUs out of KVM_RUN.
    allow(r, &[libc::SYS_tgkill]);
    // The negotiation deadline (SO_RCVTIMEO), nothing else.
    r.entry(libc::SYS_setsockopt)
        .or_default()
        .push(SeccompRule::new(vec![
            SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::SOL_SOCKET as u64,
            )?,
            SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::SO_RCVTIMEO as u64,
            )?,
        ])?);
    Ok(())
}

fn qmp_writer(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_poll,
        ],
    );
    Ok(())
}

/// The accept thread also starts each client's two threads, which inherit
/// its filter before installing their own.
fn qmp_accept(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_accept4,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_seccomp,
        ],
    );
    allow_arg_in(
        r,
        libc::SYS_prctl,
        0,
        &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
    )
}

/// The main thread while the VM runs: the control loop (system_reset
/// reloads the kernel image and restores the interrupt controllers and
/// clock; stop/cont kick vCPUs; device resets flush disks and stop
/// vhost back-ends) and the clean-up at exit (sockets and pidfile removed,
/// the terminal restored).
fn vmm(r: &mut Rules) -> Result<(), BackendError> {
    file_io(r);
    unix_sockets(r)?;
    allow(
        r,
        &[
            libc::SYS_openat,
            libc::SYS_flock,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_tgkill,
            libc::SYS_epoll_wait,
        ],
    );
    ioctls(r, &vm_ioctls())?;
    ioctls(r, &vhost_ioctls())?;
    ioctls(r, &tap_ioctls())?;
    ioctls(r, &descriptor_ioctls())?;
    ioctls(
        r,
        &[
            libc::TCGETS as u64,
            libc::TCSETS as u64,
            libc::TCSETSW as u64,
            libc::TIOCGPGRP as u64,
        ],
    )
}
