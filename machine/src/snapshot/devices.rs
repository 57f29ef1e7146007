//! Device state in a snapshot: the virtio-mmio transports and their
//! devices (queue positions included), hot-plug slots, and the legacy
//! devices (serial, RTC, i8042). PLACEHOLDER until the device half lands
//! (branch wip-snapdev): saves nothing.

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::hotplug::Hotplug;
use crate::legacy::LegacyDevices;
use crate::virtio_devices::VirtioDevices;

/// Every device's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DevicesState {}

/// Keeps the device event loops parked while alive.
pub struct Freeze;

impl Drop for Freeze {
    fn drop(&mut self) {}
}

/// Parks every device event loop.
pub fn freeze(_virtio: &VirtioDevices) -> Result<Freeze, SnapshotError> {
    Ok(Freeze)
}

/// Captures every device's state.
pub fn save(
    _virtio: &VirtioDevices,
    _legacy: &LegacyDevices,
    _hotplug: &Hotplug,
) -> Result<DevicesState, SnapshotError> {
    Ok(DevicesState {})
}

/// Compares the saved devices with the VM just built.
pub fn check(
    _state: &DevicesState,
    _virtio: &VirtioDevices,
    _legacy: &LegacyDevices,
    _hotplug: &Hotplug,
) -> Result<(), SnapshotError> {
    Ok(())
}

/// Restores every device's state.
pub fn restore(
    _state: &DevicesState,
    _virtio: &mut VirtioDevices,
    _legacy: &mut LegacyDevices,
    _hotplug: &mut Hotplug,
) -> Result<(), SnapshotError> {
    Ok(())
}
