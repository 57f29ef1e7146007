//! Errors of vCPU set-up and execution.

/// A vCPU operation failed. Each variant names the KVM call.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {what} failed: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// The ioctl or step.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error(
        "vCPU {id}: KVM_SET_MSRS set {set} of {total} MSRs (first refused: {first_refused:#x})"
    )]
    Msrs {
        /// vCPU index.
        id: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
        /// Index of the first MSR KVM refused.
        first_refused: u32,
    },
    /// Building a KVM FAM structure failed.
    #[error("vCPU {id}: cannot build {what}")]
    Fam {
        /// vCPU index.
        id: u8,
        /// Which structure.
        what: &'static str,
    },
    /// Spawning the vCPU thread failed.
    #[error("vCPU {id}: cannot spawn thread: {source}")]
    Spawn {
        /// vCPU index.
        id: u8,
        /// The OS error.
        source: std::io::Error,
    },
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// Helper to wrap a KVM error with the vCPU and step.
pub(crate) fn kvm(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { id, what, source }
}
