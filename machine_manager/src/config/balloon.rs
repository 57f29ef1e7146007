//! The memory balloon: `-device virtio-balloon-device[,id=ID]
//! [,deflate-on-oom=on|off][,free-page-reporting=on|off]` and the JSON
//! file's `balloon` section (Firecracker's shape: `amount_mib`,
//! `deflate_on_oom`, plus `free_page_reporting`). At most one balloon.

use super::devices::DeviceConfig;
use super::error::ConfigError;
use super::options::{parse_bool, OptionList};
use super::size::MIB;
use super::validate::check_non_empty;

/// The id a balloon gets when none is given (and the JSON balloon's id).
pub const DEFAULT_BALLOON_ID: &str = "balloon0";

/// The JSON file's `balloon` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JsonBalloon {
    pub(crate) amount_mib: u64,
    pub(crate) deflate_on_oom: bool,
    pub(crate) free_page_reporting: bool,
}

impl JsonBalloon {
    /// The device it describes.
    pub(crate) fn device(&self) -> DeviceConfig {
        DeviceConfig::Balloon {
            id: DEFAULT_BALLOON_ID.into(),
            deflate_on_oom: self.deflate_on_oom,
            free_page_reporting: self.free_page_reporting,
            amount_mib: self.amount_mib,
        }
    }
}

/// `-device virtio-balloon-device,...` (alias `virtio-balloon-mmio`).
pub(crate) fn parse_balloon_device(at: &str, value: &str) -> Result<DeviceConfig, ConfigError> {
    let list = OptionList::parse(
        at,
        value,
        Some("driver"),
        &[
            "driver",
            "id",
            "deflate-on-oom",
            "free-page-reporting",
            "bus",
            "addr",
        ],
    )?;
    let switch = |key: &str| {
        list.get(key)
            .map(|v| parse_bool(&format!("{at} {key}"), v))
            .transpose()
            .map(|v| v.unwrap_or(false))
    };
    let id = match list.get("id") {
        Some(id) => {
            check_non_empty(&format!("{at} id"), id)?;
            id.to_string()
        }
        None => DEFAULT_BALLOON_ID.into(),
    };
    Ok(DeviceConfig::Balloon {
        id,
        deflate_on_oom: switch("deflate-on-oom")?,
        free_page_reporting: switch("free-page-reporting")?,
        amount_mib: 0,
    })
}

/// Refuses a second balloon, and a JSON `amount_mib` larger than guest RAM
/// (`mem_size` bytes).
pub(crate) fn check_balloons(devices: &[DeviceConfig], mem_size: u64) -> Result<(), ConfigError> {
    let mut balloons = devices
        .iter()
        .filter(|d| matches!(d, DeviceConfig::Balloon { .. }));
    if let (Some(first), Some(_)) = (balloons.next(), balloons.next()) {
        return Err(ConfigError::InvalidDevice {
            at: "-device virtio-balloon-device".into(),
            reason: format!(
                "only one balloon device is supported ('{}' is already defined)",
                first.id()
            ),
        });
    }
    for d in devices {
        if let DeviceConfig::Balloon { amount_mib, .. } = d {
            let max = mem_size / MIB;
            if *amount_mib > max {
                return Err(ConfigError::OutOfRange {
                    at: "balloon.amount_mib".into(),
                    value: amount_mib.to_string(),
                    min: 0,
                    max,
                });
            }
        }
    }
    Ok(())
}
