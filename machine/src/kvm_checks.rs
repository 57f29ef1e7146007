//! Checks that KVM offers what altovirt uses, naming anything missing.
//! Only capabilities altovirt actually relies on are required (a nested
//! KVM may lack others, e.g. KVM_CAP_XCRS).

use kvm_ioctls::{Cap, Kvm};

use crate::error::MachineError;

/// KVM's stable API version.
const KVM_API_VERSION: i32 = 12;

/// The capabilities a microVM needs, with their KVM names.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens /dev/kvm and verifies the API version and required capabilities.
pub fn open_kvm() -> Result<Kvm, MachineError> {
    let kvm = Kvm::new().map_err(MachineError::KvmOpen)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(MachineError::KvmApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(MachineError::KvmMissingCap(name));
        }
    }
    Ok(kvm)
}

/// Path of the KVM device.
const KVM_DEVICE: &str = "/dev/kvm";
/// Device number of /dev/kvm: misc major 10, minor 232.
const KVM_DEVICE_MAJOR: u32 = 10;
const KVM_DEVICE_MINOR: u32 = 232;

/// Whether `/dev/kvm` is, right now, the KVM character device (what QMP
/// `query-kvm` reports as `present`).
pub fn kvm_device_present() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(KVM_DEVICE).is_ok_and(|m| {
        m.file_type().is_char_device()
            && m.rdev() == libc::makedev(KVM_DEVICE_MAJOR, KVM_DEVICE_MINOR)
    })
}
