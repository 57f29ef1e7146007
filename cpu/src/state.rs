//! A vCPU's architectural state for snapshots: everything KVM keeps for a
//! vCPU that a guest can observe (registers, FPU/SSE/AVX state, control
//! registers, LAPIC, MSRs, pending events, MP state, debug registers).
//!
//! Captured on the vCPU's own thread while it is parked
//! ([`crate::VcpuHandle::save_state`]) and applied to a new vCPU before its
//! thread starts ([`crate::Vcpu::restore_state`]).

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::error::{kvm, CpuError};

/// Most MSRs read or written in one KVM call.
const MSR_CHUNK: usize = 64;

/// One vCPU's saved state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state (XSAVE layout).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers (timer included).
    pub lapic: kvm_lapic_state,
    /// Model-specific registers, those KVM lists and lets us read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Running, halted, waiting for SIPI, …
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
}

/// Reads the state of a vCPU that is not in KVM_RUN. `msr_indices` are the
/// MSRs to save (KVM_GET_MSR_INDEX_LIST); one KVM refuses to read is left
/// out rather than failing the snapshot.
pub fn capture(fd: &VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, CpuError> {
    Ok(VcpuState {
        id,
        regs: fd.get_regs().map_err(kvm(id, "KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(kvm(id, "KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(kvm(id, "KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(kvm(id, "KVM_GET_XCRS"))?,
        debugregs: fd.get_debug_regs().map_err(kvm(id, "KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(kvm(id, "KVM_GET_LAPIC"))?,
        msrs: read_msrs(fd, id, msr_indices)?,
        mp_state: fd.get_mp_state().map_err(kvm(id, "KVM_GET_MP_STATE"))?,
        events: fd
            .get_vcpu_events()
            .map_err(kvm(id, "KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Reads `indices` in chunks; KVM_GET_MSRS stops at the first MSR it cannot
/// read, which is skipped.
fn read_msrs(fd: &VcpuFd, id: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, CpuError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Fam {
            id,
            what: "MSR list",
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm(id, "KVM_GET_MSRS"))?;
        let read = read.min(chunk.len());
        out.extend_from_slice(&msrs.as_slice()[..read]);
        if read < chunk.len() {
            log::debug!("vCPU {id}: MSR {:#x} not readable; not saved", chunk[read]);
            rest = &rest[read + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

/// Applies `state` to a vCPU that has not run yet (or is parked). The order
/// follows KVM's dependencies: MP state and registers, then the LAPIC
/// before the MSRs (the TSC deadline needs the timer mode), pending events
/// last.
pub fn apply(fd: &VcpuFd, state: &VcpuState) -> Result<(), CpuError> {
    let id = state.id;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm(id, "KVM_SET_MP_STATE"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm(id, "KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(kvm(id, "KVM_SET_REGS"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4 KiB), which is what
    // KVM_SET_XSAVE reads: altovirt never enables the dynamic XSAVE
    // features (KVM_CAP_XSAVE2) that would make the kernel read more.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm(id, "KVM_SET_XSAVE"))?;
    // A host without XSAVE reports no XCRs and refuses to set any.
    if state.xcrs.nr_xcrs > 0 {
        fd.set_xcrs(&state.xcrs).map_err(kvm(id, "KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm(id, "KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm(id, "KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| CpuError::Fam {
            id,
            what: "MSR list",
        })?;
        let set = fd.set_msrs(&msrs).map_err(kvm(id, "KVM_SET_MSRS"))?;
        if set != chunk.len() {
            return Err(CpuError::Msrs {
                id,
                set,
                total: chunk.len(),
                first_refused: chunk.get(set).map(|e| e.index).unwrap_or(0),
            });
        }
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm(id, "KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
