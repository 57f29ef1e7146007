//! Device state in a snapshot: the virtio-mmio transports and their
//! devices (queue positions included), hot-plug slots, and the legacy
//! devices (serial, RTC, i8042).
//!
//! Order of use when saving: [`freeze`] (vCPUs already paused), [`save`],
//! then drop the [`Freeze`]. When restoring, on the VM just built from the
//! same command line: [`check`], then — after guest memory and the KVM
//! interrupt controller and vCPU state are restored — [`restore`], which
//! ends by kicking every active queue once and re-raising pending
//! interrupts.
//!
//! Not carried over: host connections of the user-space vsock (the guest
//! gets a transport reset event and reconnects), rate-limiter buckets
//! (they restart full; the limits themselves are kept), console bytes
//! already written to the host.

use std::time::Duration;

use devices::cmos_rtc::RtcSnapshot;
use devices::i8042::I8042Snapshot;
use devices::serial::SerialSnapshot;
use serde::{Deserialize, Serialize};
use util::freeze::FreezeGuard;
use virtio::snapshot::TransportState;

use super::SnapshotError;
use crate::hotplug::{BlockHotplugState, Hotplug};
use crate::legacy::LegacyDevices;
use crate::net_hotplug::NetHotplugState;
use crate::virtio_devices::VirtioDevices;

/// How long each device event loop is given to park.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// One virtio-mmio window and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// The id the window was created for (device id, or `blk-slotN` /
    /// `net-slotN` for a slot empty at boot).
    pub id: String,
    /// Guest-physical base of the window.
    pub base: u64,
    /// The transport and its device.
    pub transport: TransportState,
}

/// Every device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The virtio-mmio windows, in order.
    pub windows: Vec<WindowState>,
    /// Block hotplug nodes and slots.
    pub block_hotplug: BlockHotplugState,
    /// Network hotplug netdevs and slots.
    pub net_hotplug: NetHotplugState,
    /// COM1, if the VM has one.
    pub serial: Option<SerialSnapshot>,
    /// The CMOS RTC.
    pub rtc: RtcSnapshot,
    /// The i8042.
    pub i8042: I8042Snapshot,
}

/// Parked device event loops; dropping this lets them run again.
#[derive(Debug)]
pub struct Freeze {
    _guards: Vec<FreezeGuard>,
}

fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn device_err(device: impl Into<String>, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Device {
        device: device.into(),
        why: why.into(),
    }
}

/// Parks every device event loop (`virtio-io` and the iothreads) so no
/// device handler runs and no device writes guest memory until the
/// returned guard drops. Fails (leaving every loop running) if one does
/// not park within a few seconds.
pub fn freeze(virtio: &VirtioDevices) -> Result<Freeze, SnapshotError> {
    let mut guards = Vec::new();
    for el in virtio.event_loops() {
        // On error the guards taken so far drop here, thawing their loops.
        let guard = el
            .freeze(FREEZE_TIMEOUT)
            .map_err(|e| device_err(format!("event loop {}", el.name()), e.to_string()))?;
        guards.push(guard);
    }
    Ok(Freeze { _guards: guards })
}

/// Captures every device's state. Call on the control thread with the
/// vCPUs paused and the devices frozen ([`freeze`]). Disks are made
/// durable (fdatasync) so the images match the saved memory. Refuses
/// devices that cannot be restored (kernel vhost-vsock, vhost-user-fs,
/// TAPs passed as descriptors).
pub fn save(
    virtio: &VirtioDevices,
    legacy: &LegacyDevices,
    hotplug: &Hotplug,
) -> Result<DevicesState, SnapshotError> {
    let mut windows = Vec::new();
    for (id, base, transport) in virtio.windows() {
        let t = lock(transport);
        if let Some(why) = t.snapshot_blocker() {
            return Err(device_err(id, why));
        }
        windows.push((id, base, t.save()));
    }
    let net_hotplug = hotplug
        .net
        .save_state()
        .map_err(|why| device_err("network hotplug", why))?;
    let block_hotplug = hotplug.block.save_state();
    for (id, _, transport) in virtio.windows() {
        lock(transport)
            .sync()
            .map_err(|e| device_err(id, format!("cannot flush to disk: {e}")))?;
    }
    Ok(DevicesState {
        windows: windows
            .into_iter()
            .map(|(id, base, transport)| WindowState {
                id: id.to_string(),
                base,
                transport,
            })
            .collect(),
        block_hotplug,
        net_hotplug,
        serial: legacy.serial().map(|s| lock(s).state()),
        rtc: lock(legacy.rtc()).state(),
        i8042: lock(legacy.i8042()).state(),
    })
}

fn type_name(t: u32) -> String {
    match t {
        virtio::TYPE_NET => "virtio-net".to_string(),
        virtio::TYPE_BLOCK => "virtio-blk".to_string(),
        virtio::TYPE_CONSOLE => "virtio-console".to_string(),
        virtio::TYPE_RNG => "virtio-rng".to_string(),
        virtio::TYPE_BALLOON => "virtio-balloon".to_string(),
        virtio::vsock::TYPE_VSOCK => "vsock".to_string(),
        other => format!("virtio type {other}"),
    }
}

/// One window as `check` compares it: id, base, device type.
type WindowKey<'a> = (&'a str, u64, u32);

/// The first difference between the saved windows and these, if any.
fn window_difference(saved: &[WindowKey<'_>], here: &[WindowKey<'_>]) -> Option<String> {
    for (i, s) in saved.iter().enumerate() {
        let Some(h) = here.get(i) else {
            return Some(format!(
                "{} '{}' at {:#x} is in the snapshot but not in this VM",
                type_name(s.2),
                s.0,
                s.1
            ));
        };
        if s != h {
            return Some(format!(
                "window {:#x}: the snapshot has {} '{}' (at {:#x}), this VM {} '{}'",
                h.1,
                type_name(s.2),
                s.0,
                s.1,
                type_name(h.2),
                h.0
            ));
        }
    }
    here.get(saved.len()).map(|h| {
        format!(
            "{} '{}' at {:#x} is in this VM but not in the snapshot",
            type_name(h.2),
            h.0,
            h.1
        )
    })
}

/// Compares the saved state with the VM just built from the command line,
/// before anything runs: a missing, extra or different device (type, id,
/// window) or slot count is refused with one line saying what differs.
pub fn check(
    state: &DevicesState,
    virtio: &VirtioDevices,
    legacy: &LegacyDevices,
    hotplug: &Hotplug,
) -> Result<(), SnapshotError> {
    let mismatch = |s: String| Err(SnapshotError::Mismatch(s));
    let saved: Vec<WindowKey<'_>> = state
        .windows
        .iter()
        .map(|w| (w.id.as_str(), w.base, w.transport.device_type))
        .collect();
    let types: Vec<u32> = virtio
        .windows()
        .map(|(_, _, t)| lock(t).device_type())
        .collect();
    let here: Vec<WindowKey<'_>> = virtio
        .windows()
        .zip(types)
        .map(|((id, base, _), ty)| (id, base, ty))
        .collect();
    if let Some(diff) = window_difference(&saved, &here) {
        return mismatch(diff);
    }
    match (&state.serial, legacy.serial()) {
        (Some(_), None) => return mismatch("the snapshot has a serial port, this VM none".into()),
        (None, Some(_)) => return mismatch("this VM has a serial port, the snapshot none".into()),
        _ => {}
    }
    let (b, n) = (hotplug.block.save_state(), hotplug.net.save_state());
    if b.slots.len() != state.block_hotplug.slots.len() {
        return mismatch(format!(
            "{} block slots in the snapshot, {} in this VM",
            state.block_hotplug.slots.len(),
            b.slots.len()
        ));
    }
    if let Ok(n) = n {
        if n.slots.len() != state.net_hotplug.slots.len() {
            return mismatch(format!(
                "{} network slots in the snapshot, {} in this VM",
                state.net_hotplug.slots.len(),
                n.slots.len()
            ));
        }
    }
    for (id, _, _) in &b.fixed {
        if !state.block_hotplug.fixed.iter().any(|f| &f.0 == id) {
            return mismatch(format!("disk '{id}' is in this VM but not in the snapshot"));
        }
    }
    Ok(())
}

/// Restores the state into the freshly built (not yet running) VM, which
/// [`check`] accepted: hot-plugged devices are re-plugged into their slots
/// (images and TAPs re-opened by path and name), transports get their
/// registers and queues back and active devices are activated at their
/// saved queue positions, device-specific state is applied, and the
/// serial port, RTC and i8042 get their registers. Last, every active
/// queue is kicked once and pending interrupts are raised again: call this
/// after guest memory and the KVM irqchip and vCPU state are restored.
pub fn restore(
    state: &DevicesState,
    virtio: &mut VirtioDevices,
    legacy: &mut LegacyDevices,
    hotplug: &mut Hotplug,
) -> Result<(), SnapshotError> {
    hotplug
        .block
        .restore_state(&state.block_hotplug)
        .map_err(|why| device_err("block hotplug", why))?;
    hotplug
        .net
        .restore_state(&state.net_hotplug)
        .map_err(|why| device_err("network hotplug", why))?;
    let windows: Vec<_> = virtio.windows().collect();
    if windows.len() != state.windows.len() {
        return Err(SnapshotError::Mismatch(format!(
            "{} virtio devices in the snapshot, {} in this VM",
            state.windows.len(),
            windows.len()
        )));
    }
    for ((id, _, transport), saved) in windows.iter().zip(&state.windows) {
        lock(transport)
            .restore(&saved.transport)
            .map_err(|e| device_err(*id, e.to_string()))?;
    }
    if let (Some(saved), Some(serial)) = (&state.serial, legacy.serial()) {
        lock(serial)
            .restore(saved)
            .map_err(|e| device_err("serial", e.to_string()))?;
    }
    lock(legacy.rtc())
        .restore(&state.rtc)
        .map_err(|e| device_err("rtc", e.to_string()))?;
    lock(legacy.i8042()).restore(&state.i8042);
    for (_, _, transport) in &windows {
        lock(transport).resume_after_restore();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
