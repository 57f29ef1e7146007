//! Hotplug through QMP, in the shapes Kata's StratoVirt driver sends, into
//! the slots altovirt creates at boot.
//!
//! Block: `blockdev-add` (raw node on a file) → `device_add
//! virtio-blk-mmio addr=<slot>`; removal: `device_del` → wait for
//! `DEVICE_DELETED` of that device (with a timeout) → `blockdev-del`.
//!
//! Network: `getfd` (the tap descriptor, by `SCM_RIGHTS`) or a tap name →
//! `netdev_add type=tap` → `device_add virtio-net-mmio addr=<slot>`;
//! removal: `device_del` → `DEVICE_DELETED` → `netdev_del`.
//!
//! Each sequence runs on one QMP connection, and a failure half-way undoes
//! what was done. QEMU microvm has no hotplug: every call returns
//! [`DriverError::Unsupported`] without contacting the VMM.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cmdline::mac_for;
use crate::config::Flavour;
use crate::driver::{DriverError, Hypervisor, Timeouts};
use crate::qmp_client::{QmpClient, QmpClientError};
use crate::slots::{SlotEntry, SlotError};

/// A disk to hotplug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Device id; empty lets the driver name it `virtio-blk-hpN` (N the slot).
    pub id: String,
    /// Raw image file (or block device).
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// O_DIRECT (`cache.direct`).
    pub direct: bool,
    /// A given slot instead of the lowest free one.
    pub slot: Option<usize>,
}

/// Where a hotplugged network device's tap comes from.
#[derive(Debug, Clone, Copy)]
pub enum TapSource<'a> {
    /// An open tap descriptor, passed to the VMM with `getfd` (as Kata).
    Fd(BorrowedFd<'a>),
    /// A tap the VMM opens by name.
    Ifname(&'a str),
}

/// A network device to hotplug.
#[derive(Debug, Clone)]
pub struct NetDevice<'a> {
    /// Device id; empty lets the driver name it `virtio-net-hpN`.
    pub id: String,
    /// The tap.
    pub tap: TapSource<'a>,
    /// Guest MAC; `None` derives one from the sandbox and device ids.
    pub mac: Option<String>,
    /// A given slot instead of the lowest free one.
    pub slot: Option<usize>,
}

/// What a hotplugged device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DeviceKind {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
}

/// A hotplugged device and its slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plugged {
    /// Device id.
    pub id: String,
    /// Its kind.
    pub kind: DeviceKind,
    /// Its slot.
    pub slot: usize,
}

/// True for the answers of a VMM that has no network hotplug: an unknown
/// command, altovirt's "Command 'netdev_add' is not supported yet", or no
/// network slots. (Other refusals, such as "vhost-net is not supported",
/// are ordinary errors.)
fn net_hotplug_missing(e: &QmpClientError) -> bool {
    match e {
        QmpClientError::Command { class, desc, .. } => {
            class == "CommandNotFound"
                || desc.contains("is not supported yet")
                || desc.contains("slot")
        }
        _ => false,
    }
}

/// Asks the VMM whether it has network hotplug, with a `netdev_add` that
/// cannot succeed (its descriptor name was never given): a VMM without it
/// answers `CommandNotFound`, "not supported yet" or "no slots"; one with
/// it complains about the descriptor. If it succeeds anyway the netdev is
/// deleted again.
pub fn probe_net_hotplug(c: &mut QmpClient) -> Result<bool, QmpClientError> {
    let id = "altovirt-shim-probe";
    match c.execute(
        "netdev_add",
        Some(json!({"type": "tap", "id": id, "fds": "altovirt-shim-probe-none"})),
    ) {
        Ok(_) => {
            let _ = c.execute("netdev_del", Some(json!({ "id": id })));
            Ok(true)
        }
        Err(e) if net_hotplug_missing(&e) => Ok(false),
        Err(QmpClientError::Command { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// `device_del`, then the `DEVICE_DELETED` of that device (with a timeout).
fn device_del(c: &mut QmpClient, id: &str, t: &Timeouts) -> Result<(), DriverError> {
    c.execute("device_del", Some(json!({ "id": id })))?;
    c.wait_event_matching(
        "DEVICE_DELETED",
        |d| d.get("device").and_then(Value::as_str) == Some(id),
        t.event,
    )?;
    Ok(())
}

impl Hypervisor {
    fn hotplug_supported(&self, what: &str) -> Result<(), DriverError> {
        match self.flavour {
            Flavour::StratoVirt => Ok(()),
            Flavour::Qemu => Err(DriverError::Unsupported {
                flavour: "QEMU microvm (no hotplug)".into(),
                what: what.into(),
            }),
        }
    }

    /// Rebuilds the block slot table from `query-block` (altovirt lists
    /// every slot), so that devices plugged or removed by another process
    /// are seen.
    pub fn sync_block_slots(&mut self) -> Result<(), DriverError> {
        self.hotplug_supported("block hotplug")?;
        let reply = self.qmp_execute("query-block", None)?;
        if !self.blk.sync_from_query_block(&reply) {
            return Err(DriverError::BadReply {
                command: "query-block".into(),
                reply: reply.to_string(),
            });
        }
        Ok(())
    }

    fn check_new_id(&self, id: &str) -> Result<(), DriverError> {
        if !id.is_empty() && (self.blk.find(id).is_some() || self.net.find(id).is_some()) {
            return Err(SlotError::Duplicate(id.into()).into());
        }
        Ok(())
    }

    /// Hotplugs a disk into the lowest free block slot (or `dev.slot`)
    /// and returns where it went.
    pub fn hotplug_add_block(&mut self, dev: &BlockDevice) -> Result<Plugged, DriverError> {
        self.hotplug_supported("block hotplug")?;
        if self.spec.jail.is_some() {
            // The jailed VMM sees only its jail; host images are not
            // mapped into it.
            return Err(DriverError::Unsupported {
                flavour: "altovirt in its jail (jailer_path)".into(),
                what: "block hotplug of a host image".into(),
            });
        }
        self.sync_block_slots()?;
        self.check_new_id(&dev.id)?;
        let slot = self.blk.choose(dev.slot)?;
        let id = if dev.id.is_empty() {
            format!("virtio-blk-hp{slot}")
        } else {
            dev.id.clone()
        };
        let node = format!("drive-{id}");
        let file = dev.path.display().to_string();
        let (add, devadd) = (
            json!({"driver": "raw", "node-name": node, "read-only": dev.read_only,
                "file": {"driver": "file", "filename": file, "aio": "threads"},
                "cache": {"direct": dev.direct, "no-flush": false}}),
            json!({"id": id, "driver": "virtio-blk-mmio", "drive": node,
                "addr": slot.to_string()}),
        );
        let throttle = crate::rate_limits::throttle_args(&self.spec.hv, &id);
        self.with_qmp_raw(|c, _| {
            c.execute("blockdev-add", Some(add))?;
            if let Err(e) = c.execute("device_add", Some(devadd)) {
                let _ = c.execute("blockdev-del", Some(json!({ "node-name": node })));
                return Err(e.into());
            }
            if let Some(args) = throttle {
                c.execute("block_set_io_throttle", Some(args))?;
            }
            Ok(())
        })?;
        self.blk.allocate(
            Some(slot),
            SlotEntry {
                device: id.clone(),
                backend: format!("drive-{id}"),
                source: file,
            },
        )?;
        Ok(Plugged {
            id,
            kind: DeviceKind::Block,
            slot,
        })
    }

    /// Unplugs a hotplugged disk and frees its slot.
    pub fn hotplug_remove_block(&mut self, id: &str) -> Result<usize, DriverError> {
        self.hotplug_supported("block hotplug")?;
        self.sync_block_slots()?;
        let (slot, entry) = self
            .blk
            .find(id)
            .map(|(i, e)| (i, e.clone()))
            .ok_or_else(|| SlotError::Unknown(id.into()))?;
        self.with_qmp_raw(|c, t| {
            device_del(c, id, t)?;
            Ok(c.execute("blockdev-del", Some(json!({ "node-name": entry.backend })))?)
        })?;
        self.blk.release(id)?;
        Ok(slot)
    }

    /// Whether the VMM has network hotplug (see [`probe_net_hotplug`]).
    /// False for QEMU microvm without asking it.
    pub fn net_hotplug_supported(&mut self) -> Result<bool, DriverError> {
        if self.flavour == Flavour::Qemu {
            return Ok(false);
        }
        self.with_qmp(probe_net_hotplug)
    }

    /// Hotplugs a network device into the lowest free network slot (or
    /// `dev.slot`). A VMM without network hotplug gives
    /// [`DriverError::Unsupported`] and nothing is left behind.
    pub fn hotplug_add_net(&mut self, dev: &NetDevice<'_>) -> Result<Plugged, DriverError> {
        self.hotplug_supported("network hotplug")?;
        if !self.is_running() {
            return Err(DriverError::NotRunning);
        }
        self.check_new_id(&dev.id)?;
        let slot = self.net.choose(dev.slot)?;
        let id = if dev.id.is_empty() {
            format!("virtio-net-hp{slot}")
        } else {
            dev.id.clone()
        };
        let netdev = format!("netdev-{id}");
        let fdname = format!("fd-{id}");
        let mac = dev
            .mac
            .clone()
            .unwrap_or_else(|| mac_for(&format!("{}/{id}", self.spec.id)));
        let (mut add, source) = (
            json!({"type": "tap", "id": netdev}),
            match dev.tap {
                TapSource::Fd(fd) => format!("fd {}", fd.as_raw_fd()),
                TapSource::Ifname(n) => n.to_string(),
            },
        );
        match dev.tap {
            TapSource::Fd(_) => add["fds"] = json!(fdname),
            TapSource::Ifname(n) => add["ifname"] = json!(n),
        }
        // Kata's network limits, as on the boot NICs' -netdev.
        crate::rate_limits::add_netdev_limits(&self.spec.hv, &mut add);
        let devadd = json!({"driver": "virtio-net-mmio", "id": id, "netdev": netdev,
            "mac": mac, "addr": slot.to_string()});
        let tap = dev.tap;
        self.with_qmp_raw(|c, _| {
            if let TapSource::Fd(fd) = tap {
                c.getfd(&fdname, fd.as_raw_fd())?;
            }
            if let Err(e) = c.execute("netdev_add", Some(add)) {
                if matches!(tap, TapSource::Fd(_)) {
                    let _ = c.execute("closefd", Some(json!({ "fdname": fdname })));
                }
                if net_hotplug_missing(&e) {
                    let said = match &e {
                        QmpClientError::Command { desc, .. } => desc.clone(),
                        other => other.to_string(),
                    };
                    return Err(DriverError::Unsupported {
                        flavour: format!("this VMM (netdev_add: {said})"),
                        what: "network hotplug".into(),
                    });
                }
                return Err(e.into());
            }
            if let Err(e) = c.execute("device_add", Some(devadd)) {
                let _ = c.execute("netdev_del", Some(json!({ "id": netdev })));
                return Err(e.into());
            }
            Ok(())
        })?;
        self.net.allocate(
            Some(slot),
            SlotEntry {
                device: id.clone(),
                backend: format!("netdev-{id}"),
                source,
            },
        )?;
        Ok(Plugged {
            id,
            kind: DeviceKind::Net,
            slot,
        })
    }

    /// Unplugs a hotplugged network device and frees its slot.
    pub fn hotplug_remove_net(&mut self, id: &str) -> Result<usize, DriverError> {
        self.hotplug_supported("network hotplug")?;
        let (slot, entry) = self
            .net
            .find(id)
            .map(|(i, e)| (i, e.clone()))
            .ok_or_else(|| SlotError::Unknown(id.into()))?;
        self.with_qmp_raw(|c, t| {
            device_del(c, id, t)?;
            Ok(c.execute("netdev_del", Some(json!({ "id": entry.backend })))?)
        })?;
        self.net.release(id)?;
        Ok(slot)
    }

    /// Unplugs a hotplugged device of either kind.
    pub fn hotplug_remove(&mut self, id: &str) -> Result<Plugged, DriverError> {
        self.hotplug_supported("hotplug")?;
        if self.net.find(id).is_some() {
            let slot = self.hotplug_remove_net(id)?;
            return Ok(Plugged {
                id: id.into(),
                kind: DeviceKind::Net,
                slot,
            });
        }
        let slot = self.hotplug_remove_block(id)?;
        Ok(Plugged {
            id: id.into(),
            kind: DeviceKind::Block,
            slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: &str, desc: &str) -> QmpClientError {
        QmpClientError::Command {
            command: "netdev_add".into(),
            class: class.into(),
            desc: desc.into(),
        }
    }

    #[test]
    fn which_answers_mean_no_network_hotplug() {
        for (class, desc) in [
            ("GenericError", "Command 'netdev_add' is not supported yet"),
            (
                "CommandNotFound",
                "The command netdev_add has not been found",
            ),
            ("GenericError", "no network hotplug slots (net-slots=0)"),
        ] {
            assert!(net_hotplug_missing(&err(class, desc)), "{desc}");
        }
        for desc in [
            "File descriptor named 'altovirt-shim-probe-none' has not been found",
            "netdev 'n': vhost-net is not supported; use vhost=off",
            "Duplicate ID 'n' for netdev",
        ] {
            assert!(!net_hotplug_missing(&err("GenericError", desc)), "{desc}");
        }
        assert!(!net_hotplug_missing(&QmpClientError::Closed));
    }
}
