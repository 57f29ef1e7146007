//! Errors of assembling and running a microVM.

use boot_loader::BootError;

/// Building or running the microVM failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    KvmOpen(kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    /// A KVM capability altovirt uses is missing.
    #[error("KVM lacks a required capability: {0}")]
    KvmMissingCap(&'static str),
    /// A VM-level KVM call failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl or step.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(#[from] address_space::MemoryError),
    /// A device could not be placed on a bus.
    #[error("cannot register {what}: {source}")]
    Bus {
        /// Which device.
        what: &'static str,
        /// The bus error.
        source: address_space::BusError,
    },
    /// The kernel file could not be opened.
    #[error("-kernel: cannot open '{path}': {source}")]
    KernelOpen {
        /// Path given.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// More guest RAM than the host has, without `mem-overcommit=on`.
    #[error(
        "-m: {requested_mib} MiB of guest RAM is more than this host's {host_mib} MiB (MemTotal); \
         add -machine mem-overcommit=on to allow it"
    )]
    RamAboveHost {
        /// Guest RAM asked for, MiB.
        requested_mib: u64,
        /// The host's MemTotal, MiB.
        host_mib: u64,
    },
    /// The kernel file is not a kernel this machine can boot.
    #[error("-kernel {path}: {source}")]
    KernelLoad {
        /// Path given.
        path: String,
        /// What is wrong with it.
        source: BootError,
    },
    /// The initrd file could not be opened.
    #[error("-initrd: cannot open '{path}': {source}")]
    InitrdOpen {
        /// Path given.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A boot step failed.
    #[error("{0}")]
    Boot(#[from] BootError),
    /// A legacy device could not be created.
    #[error("{0}")]
    Device(#[from] devices::DeviceError),
    /// A seccomp filter could not be built or installed.
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A vCPU could not be created or started.
    #[error("{0}")]
    Cpu(#[from] cpu::CpuError),
    /// A virtio device could not be created.
    #[error("device '{id}': {reason}")]
    Virtio {
        /// Device id.
        id: String,
        /// The device model's error, in one line.
        reason: String,
    },
    /// More virtio devices than IRQ lines.
    #[error("{count} virtio devices configured (hotplug slots included), at most {max} fit (one IRQ line each)")]
    TooManyDevices {
        /// Devices configured.
        count: usize,
        /// Devices that fit.
        max: usize,
    },
    /// The user's command line and the device tokens exceed the kernel's
    /// command-line limit.
    #[error(
        "-append: the kernel command line would be {len} bytes, over the kernel's limit of {max}: \
         {user} bytes given plus {tokens} virtio_mmio.device= tokens (one per virtio-mmio window, \
         hotplug slots included); shorten -append or lower -machine blk-slots/net-slots"
    )]
    CmdlineTooLong {
        /// Length of the whole command line.
        len: usize,
        /// The kernel's limit (its boot protocol `cmdline_size`).
        max: usize,
        /// Length of the user's part.
        user: usize,
        /// Number of device tokens appended.
        tokens: usize,
    },
    /// The device event loop could not be started.
    #[error("cannot start the device event loop: {0}")]
    EventLoop(util::event_loop::EventLoopError),
    /// A host descriptor could not be added to the device event loop.
    #[error("cannot watch a host descriptor on the device event loop: {0}")]
    WatchFd(util::event_loop::EventLoopError),
    /// A configured device type is not implemented yet.
    #[error("{0}: not supported yet by this altovirt build")]
    Unsupported(String),
    /// The snapshot given with `-incoming` cannot be restored.
    #[error("-incoming: {0}")]
    Incoming(crate::snapshot::SnapshotError),
}

impl MachineError {
    /// True when the error comes from what the user supplied (a bad image,
    /// a command line too long, …) rather than from the host; the binary
    /// exits with status 2 for these, like for command-line errors.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            MachineError::Boot(_)
                | MachineError::KernelOpen { .. }
                | MachineError::KernelLoad { .. }
                | MachineError::RamAboveHost { .. }
                | MachineError::InitrdOpen { .. }
                | MachineError::Unsupported(_)
                | MachineError::Virtio { .. }
                | MachineError::TooManyDevices { .. }
                | MachineError::CmdlineTooLong { .. }
                | MachineError::Incoming(_)
        )
    }

    /// The OS error of opening a file the user named (`-serial file:`),
    /// for the caller to tell the user's mistake from a host failure.
    pub fn user_path_error(&self) -> Option<&std::io::Error> {
        match self {
            MachineError::Device(devices::DeviceError::SerialFile { source, .. }) => Some(source),
            _ => None,
        }
    }
}
