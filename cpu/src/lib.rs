//! vCPUs of an x86_64 microVM: architectural set-up (CPUID, MSRs,
//! registers, FPU, LAPIC) and the run loop that forwards I/O exits to the
//! buses, on one named thread per vCPU.

pub mod cpuid;
pub mod error;
pub mod lapic;
pub mod msrs;
pub mod regs;
pub mod state;
pub mod vcpu;

pub use error::CpuError;
pub use state::VcpuState;
pub use vcpu::{
    install_kick_handler, Vcpu, VcpuControl, VcpuEvent, VcpuEventSink, VcpuHandle, VcpuRunState,
    VcpuStopState,
};
