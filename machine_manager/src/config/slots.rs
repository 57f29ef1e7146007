//! Boot disks and NICs fill the hotplug slots, as on StratoVirt's microVM:
//! the `-machine microvm,blk-slots=N` block slots (default 4) are the
//! guest's first N virtio-blk devices, and the disks given at boot take
//! slots 0, 1, … in order; the same for NICs and `net-slots`. This checks
//! that they fit; `blk-slots=0` (`net-slots=0`) turns the slots off, and
//! boot devices then get fixed windows of their own.

use super::error::ConfigError;
use super::{DeviceConfig, MachineConfig, MAX_BLK_SLOTS, MAX_NET_SLOTS};

/// Refuses more boot disks (NICs) than block (network) slots. `json_drives`
/// and `json_nets` are how many of the devices came from the JSON file's
/// `drive` and `net` lists (they come first), to name the right one.
pub(crate) fn check_slot_counts(
    devices: &[DeviceConfig],
    json_drives: usize,
    json_nets: usize,
    machine: &MachineConfig,
) -> Result<(), ConfigError> {
    let disks: Vec<&str> = devices
        .iter()
        .filter(|d| matches!(d, DeviceConfig::Block { .. }))
        .map(DeviceConfig::id)
        .collect();
    let nics: Vec<&str> = devices
        .iter()
        .filter(|d| matches!(d, DeviceConfig::Net { .. }))
        .map(DeviceConfig::id)
        .collect();
    let kinds = [
        (
            &disks,
            json_drives,
            machine.blk_slots,
            Kind {
                json: "drive",
                flag: "virtio-blk-device",
                what: "disks",
                key: "blk-slots",
                max: MAX_BLK_SLOTS,
            },
        ),
        (
            &nics,
            json_nets,
            machine.net_slots,
            Kind {
                json: "net",
                flag: "virtio-net-device",
                what: "NICs",
                key: "net-slots",
                max: MAX_NET_SLOTS,
            },
        ),
    ];
    for (ids, from_json, slots, kind) in kinds {
        let slots_n = usize::from(slots);
        if slots == 0 || ids.len() <= slots_n {
            continue;
        }
        let first_out = slots_n;
        let at = if first_out < from_json {
            format!("JSON config {}[{first_out}]", kind.json)
        } else {
            format!("-device {},id={}", kind.flag, ids[first_out])
        };
        return Err(ConfigError::InvalidDevice {
            at,
            reason: format!(
                "{} {} at boot but -machine {}={slots}; boot {} fill the slots from 0 \
                 (raise {}, at most {}, or set {}=0 to give them fixed windows outside the slots)",
                ids.len(),
                kind.what,
                kind.key,
                kind.what,
                kind.key,
                kind.max,
                kind.key
            ),
        });
    }
    Ok(())
}

/// How one kind of slot is named in the message.
struct Kind {
    json: &'static str,
    flag: &'static str,
    what: &'static str,
    key: &'static str,
    max: u8,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{DriveConfig, NetBackend};

    fn disk(id: &str) -> DeviceConfig {
        DeviceConfig::Block {
            id: id.into(),
            drive: DriveConfig {
                id: id.into(),
                path: PathBuf::from("/img"),
                read_only: false,
                direct: false,
                limits: Default::default(),
            },
            serial: None,
        }
    }

    fn nic(id: &str) -> DeviceConfig {
        DeviceConfig::Net {
            id: id.into(),
            netdev: id.into(),
            backend: NetBackend::TapName("tap0".into()),
            mac: None,
            limits: Default::default(),
        }
    }

    fn machine(blk: u8, net: u8) -> MachineConfig {
        MachineConfig {
            blk_slots: blk,
            net_slots: net,
            ..MachineConfig::default()
        }
    }

    #[test]
    fn boot_devices_up_to_the_slot_count_fit() {
        let devs = [disk("a"), disk("b"), nic("n0"), nic("n1")];
        assert_eq!(check_slot_counts(&devs, 0, 0, &machine(2, 2)), Ok(()));
        // Slots off: any number, outside the slots.
        assert_eq!(check_slot_counts(&devs, 0, 0, &machine(0, 0)), Ok(()));
    }

    #[test]
    fn one_disk_too_many_names_it_and_blk_slots() {
        let devs = [disk("a"), disk("b"), disk("c")];
        let e = check_slot_counts(&devs, 0, 0, &machine(2, 2))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "-device virtio-blk-device,id=c: 3 disks at boot but -machine blk-slots=2; \
             boot disks fill the slots from 0 (raise blk-slots, at most 16, or set \
             blk-slots=0 to give them fixed windows outside the slots)"
        );
        // From the JSON file's drive list.
        let e = check_slot_counts(&devs, 3, 0, &machine(1, 2))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("JSON config drive[1]: 3 disks at boot"),
            "{e}"
        );
    }

    #[test]
    fn one_nic_too_many_names_it_and_net_slots() {
        let devs = [nic("n0"), nic("n1")];
        let e = check_slot_counts(&devs, 0, 0, &machine(4, 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "-device virtio-net-device,id=n1: 2 NICs at boot but -machine net-slots=1;"
            ),
            "{e}"
        );
        assert!(e.contains("raise net-slots, at most 8"), "{e}");
    }
}
