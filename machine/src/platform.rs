//! The VM's in-kernel platform: the TSS area, the interrupt controllers and
//! the PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

use crate::error::MachineError;

/// Address of the 3-page region KVM needs for the TSS on Intel hosts
/// (just below the BIOS area at the top of 4 GiB, inside the MMIO gap).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Gives the VM its TSS area, in-kernel IOAPIC/PIC/LAPICs and (with
/// `pit`) PIT.
pub(crate) fn setup_platform(vm: &VmFd, pit: bool) -> Result<(), MachineError> {
    let kvm_err = |what| move |source| MachineError::Kvm { what, source };
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    if !pit {
        return Ok(());
    }
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}
