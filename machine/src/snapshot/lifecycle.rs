//! The snapshot as the machine's lifecycle sees it: `migrate` on the
//! control loop (with its `query-migrate` report), and opening and
//! applying a snapshot while a VM is built for `-incoming`.

use std::path::Path;
use std::sync::Mutex;

use cpu::Vcpu;
use kvm_ioctls::VmFd;

use super::{devices, save, Incoming, MachineFacts, SaveParts, SnapshotError};
use crate::control::{MigrationInfo, MigrationStatus, VmShared, VmStatus};
use crate::error::MachineError;
use crate::hotplug::Hotplug;
use crate::legacy::LegacyDevices;
use crate::virtio_devices::VirtioDevices;

/// Writes a snapshot of the paused VM into `dir`; the progress is what
/// `query-migrate` reports. The VM stays paused.
pub(crate) fn migrate(dir: &Path, shared: &VmShared, parts: &SaveParts<'_>) -> Result<(), String> {
    let mut info = MigrationInfo {
        status: MigrationStatus::Setup,
        total_time_ms: 0,
        ram_total: parts.facts.mem_size,
        ram_written: 0,
        error: None,
    };
    if !matches!(shared.status(), VmStatus::Paused | VmStatus::Prelaunch) {
        // Refused before it starts: the last snapshot's report stays.
        return Err("migrate: the VM must be paused first (QMP 'stop')".into());
    }
    shared.set_migration(info.clone());
    info.status = MigrationStatus::Active;
    shared.set_migration(info.clone());
    match save(dir, parts) {
        Ok(stats) => {
            info.status = MigrationStatus::Completed;
            info.total_time_ms = u64::try_from(stats.elapsed.as_millis()).unwrap_or(u64::MAX);
            info.ram_written = stats.ram_written;
            log::info!(
                "snapshot written to {} in {} ms ({} bytes of RAM)",
                dir.display(),
                info.total_time_ms,
                stats.ram_written
            );
            shared.set_migration(info);
            Ok(())
        }
        Err(e) => {
            let why = format!("migrate: {e}");
            log::error!("{why}");
            info.status = MigrationStatus::Failed;
            info.error = Some(why.clone());
            shared.set_migration(info);
            Err(why)
        }
    }
}

/// Reads the snapshot for `-incoming` and checks it fits the command line.
pub(crate) fn open_incoming(
    dir: &Path,
    facts: &MachineFacts,
    mem_share: bool,
) -> Result<Incoming, MachineError> {
    if mem_share {
        return Err(MachineError::Incoming(SnapshotError::State(
            "a snapshot cannot be restored into shared guest memory (-machine mem-share=on)".into(),
        )));
    }
    Incoming::open(dir, facts).map_err(MachineError::Incoming)
}

/// Puts the snapshot's state into the VM just built: interrupt controllers,
/// PIT and clock, then the vCPUs (their LAPICs before any device raises an
/// interrupt), then the devices (which kick their queues and re-raise what
/// was pending).
pub(crate) fn restore_snapshot(
    inc: &Incoming,
    vm: &VmFd,
    vcpus: &[Vcpu],
    virtio: &mut VirtioDevices,
    legacy: &mut LegacyDevices,
    hotplug: &Mutex<Hotplug>,
) -> Result<(), SnapshotError> {
    let state = &inc.state;
    state
        .platform
        .restore(vm)
        .map_err(|e| SnapshotError::State(e.to_string()))?;
    vm.set_clock(&state.clock)
        .map_err(|source| SnapshotError::Kvm {
            what: "KVM_SET_CLOCK".into(),
            source,
        })?;
    for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
        vcpu.restore_state(saved)
            .map_err(|e| SnapshotError::State(e.to_string()))?;
    }
    let mut hotplug = hotplug.lock().unwrap_or_else(|p| p.into_inner());
    devices::restore(&state.devices, virtio, legacy, &mut hotplug)
}
