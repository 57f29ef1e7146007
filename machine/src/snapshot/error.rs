//! Errors of taking and restoring snapshots (`migrate file:DIR`,
//! `-incoming file:DIR`). Each says what failed in one line.

/// Taking or restoring a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of the snapshot could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state file is not an altovirt snapshot, or is damaged.
    #[error("{path}: {why}")]
    BadStateFile {
        /// The state file.
        path: String,
        /// What is wrong (truncated, checksum, version, …).
        why: String,
    },
    /// The snapshot does not match the VM being restored.
    #[error("snapshot does not match this VM: {0}")]
    Mismatch(String),
    /// A KVM call failed while saving or restoring state.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl or step.
        what: String,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// A device cannot be saved or restored.
    #[error("device '{device}': {why}")]
    Device {
        /// The device (id, or kind and window).
        device: String,
        /// Why.
        why: String,
    },
    /// The VM is not in a state that allows the operation.
    #[error("{0}")]
    State(String),
}
