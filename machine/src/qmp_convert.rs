//! Conversions between QMP's wire types and the machine's hotplug
//! vocabulary ([`crate::hotplug_request`]): the only place where both
//! meet.

use machine_manager::config::{IoLimits, LimitBucket};
use qmp::BlockSetIoThrottleArgs;
use qmp::{
    BlockdevAddArgs, BlockdevDriver, BlockdevRef, DeviceAddArgs, FdLookup, NetdevAddArgs,
    NetdevBackend, QmpError,
};
use serde_json::{json, Value};
use virtio::rate_limiter::RateLimitConfig;

use crate::control::{MigrationInfo, MigrationStatus};
use crate::hotplug_request::{
    BlockEntry, BlockdevRequest, DeviceRequest, FdSource, HotplugError, ImageInfo, ImageSource,
    TapRequest,
};

impl From<HotplugError> for QmpError {
    fn from(e: HotplugError) -> Self {
        match e {
            HotplugError::NotFound(desc) => QmpError::device_not_found(desc),
            HotplugError::Refused(desc) => QmpError::generic(desc),
        }
    }
}

/// Received descriptors of a QMP connection, as the hotplug code takes them.
pub(crate) struct ClientFds<'a>(pub &'a mut dyn FdLookup);

impl FdSource for ClientFds<'_> {
    fn take_fd(&mut self, name: &str) -> Option<std::os::fd::OwnedFd> {
        self.0.take_fd(name)
    }
}

/// The image a `blockdev-add` driver describes. `raw` windows into an
/// image (`offset`, `size`) are refused.
fn image_source(driver: &BlockdevDriver) -> Result<ImageSource, QmpError> {
    match driver {
        BlockdevDriver::File(f) | BlockdevDriver::HostDevice(f) => {
            Ok(ImageSource::Path(f.filename.clone().into()))
        }
        BlockdevDriver::Raw(raw) => {
            if raw.offset.is_some() || raw.size.is_some() {
                return Err(QmpError::generic("raw offset/size are not supported"));
            }
            match &raw.file {
                BlockdevRef::Reference(name) => Ok(ImageSource::Node(name.clone())),
                BlockdevRef::Inline(child) => Ok(ImageSource::Nested {
                    source: Box::new(image_source(&child.driver)?),
                    read_only: child.common.read_only,
                    direct: child.common.cache.as_ref().and_then(|c| c.direct),
                }),
            }
        }
    }
}

/// `blockdev-add`'s arguments as a machine request.
pub(crate) fn blockdev_request(args: &BlockdevAddArgs) -> Result<BlockdevRequest, QmpError> {
    Ok(BlockdevRequest {
        node_name: args.node_name.clone(),
        source: image_source(&args.driver)?,
        read_only: args.common.read_only,
        direct: args.common.cache.as_ref().and_then(|c| c.direct),
    })
}

/// `device_add`'s arguments as a machine request.
pub(crate) fn device_request(args: &DeviceAddArgs) -> DeviceRequest {
    DeviceRequest {
        driver: args.driver.clone(),
        id: args.id.clone(),
        addr: args.addr.clone(),
        drive: args.drive.clone(),
        netdev: args.netdev.clone(),
        mac: args.mac.clone(),
        serial: args.serial.clone(),
        logical_block_size: args.logical_block_size,
        physical_block_size: args.physical_block_size,
        unknown_property: args.other.keys().next().cloned(),
    }
}

/// `netdev_add`'s arguments as a machine request.
pub(crate) fn tap_request(args: &NetdevAddArgs) -> TapRequest {
    let NetdevBackend::Tap(tap) = &args.backend;
    TapRequest {
        id: args.id.clone(),
        fd_names: tap.fd_names().into_iter().map(String::from).collect(),
        ifname: tap.ifname.clone(),
        vhost: tap.vhost == Some(true) || !tap.vhost_fd_names().is_empty(),
        queues: tap.queues,
        script: tap.script.clone(),
        downscript: tap.downscript.clone(),
        limits: tap_limits(&tap.rate_limits),
    }
}

/// altovirt's `netdev_add` rate-limit keys as the NIC's limits.
fn tap_limits(l: &qmp::TapRateLimits) -> virtio::net::NetLimits {
    let limits = |iops, iops_max, bps, bps_max| {
        crate::virtio_devices::device_limits(&IoLimits {
            bandwidth: LimitBucket::per_second(bps, bps_max),
            ops: LimitBucket::per_second(iops, iops_max),
        })
    };
    virtio::net::NetLimits {
        rx: limits(l.rx_iops, l.rx_iops_max, l.rx_bps, l.rx_bps_max),
        tx: limits(l.tx_iops, l.tx_iops_max, l.tx_bps, l.tx_bps_max),
    }
}

/// The `cache` member of `query-block`'s `inserted` for an image opened
/// with (or without) O_DIRECT. `writeback`: the devices offer
/// VIRTIO_BLK_F_FLUSH, so completed writes may sit in host caches until
/// the guest flushes; `no-flush`: every flush is carried out (fdatasync).
fn cache_info(direct: bool) -> Value {
    json!({"writeback": true, "direct": direct, "no-flush": false})
}

fn inserted(image: &ImageInfo) -> Value {
    json!({"file": image.path.display().to_string(), "ro": image.read_only,
           "drv": "raw", "cache": cache_info(image.direct)})
}

/// QEMU's answer to `balloon` and `query-balloon` in a VM without a
/// balloon device.
pub(crate) fn no_balloon() -> QmpError {
    QmpError::device_not_active("No balloon device has been activated")
}

/// `balloon`'s `value`, the guest's target size in bytes: QEMU refuses
/// zero and negative sizes (naming its internal parameter `target`).
pub(crate) fn balloon_target(value: i64) -> Result<u64, QmpError> {
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| QmpError::invalid_parameter_value("target", "a size"))
}

/// `query-balloon`'s reply (QEMU's `BalloonInfo`): the guest's RAM in bytes.
pub(crate) fn query_balloon_reply(actual: u64) -> Value {
    json!({ "actual": actual })
}

/// `migrate`'s `uri`: StratoVirt's `file:DIR` is the only kind a microVM
/// snapshot goes to; QEMU's stream URIs are refused by name.
pub(crate) fn migrate_dir(uri: &str) -> Result<std::path::PathBuf, QmpError> {
    match uri.split_once(':') {
        Some(("file", dir)) if !dir.is_empty() => Ok(std::path::PathBuf::from(dir)),
        Some(("file", _)) => Err(QmpError::generic(
            "migrate: 'file:' needs a directory (file:DIR)",
        )),
        _ => Err(QmpError::generic(format!(
            "migrate: URI '{uri}' is not supported; use file:DIR (a snapshot directory)"
        ))),
    }
}

/// `query-migrate`'s reply, shaped as QEMU's `MigrationInfo`: empty before
/// any `migrate`; then `status`, and once it ended `total-time` (ms) and the
/// RAM counters (`transferred` counts the bytes written; zero pages are not).
pub(crate) fn query_migrate_reply(info: Option<&MigrationInfo>) -> Value {
    let Some(info) = info else {
        return json!({});
    };
    let mut out = json!({ "status": info.status.as_str() });
    if matches!(
        info.status,
        MigrationStatus::Completed | MigrationStatus::Failed
    ) {
        out["total-time"] = json!(info.total_time_ms);
    }
    if info.status == MigrationStatus::Completed {
        out["ram"] = json!({
            "total": info.ram_total,
            "transferred": info.ram_written,
            "remaining": 0,
        });
    }
    if let Some(why) = &info.error {
        out["error-desc"] = json!(why);
    }
    out
}

/// `query-block`'s reply: boot-time disks as QEMU lists `-drive` disks
/// (`device` is the drive id, no `slot`), then every slot.
pub(crate) fn query_block_reply(entries: &[BlockEntry]) -> Value {
    let list = entries.iter().map(|entry| match entry {
        BlockEntry::Boot {
            device,
            drive,
            image,
        } => json!({"device": drive, "qdev": format!("/machine/peripheral/{device}"),
                    "locked": false, "removable": false, "type": "unknown",
                    "inserted": inserted(image)}),
        BlockEntry::Slot { index, filled } => {
            let mut v = json!({"device": "", "slot": index, "locked": false,
                               "removable": true, "type": "unknown"});
            if let Some((id, node, image)) = filled {
                v["device"] = json!(id);
                v["qdev"] = json!(format!("/machine/peripheral/{id}"));
                if let Some(image) = image {
                    let mut ins = inserted(image);
                    ins["node-name"] = json!(node);
                    v["inserted"] = ins;
                }
            }
            v
        }
    });
    Value::Array(list.collect())
}

/// The device limits `block_set_io_throttle` asks for: per-second buckets,
/// the `_max` values as one-time bursts.
pub(crate) fn throttle_limits(args: &BlockSetIoThrottleArgs) -> RateLimitConfig {
    crate::virtio_devices::device_limits(&IoLimits {
        bandwidth: LimitBucket::per_second(args.bps, args.bps_max),
        ops: LimitBucket::per_second(args.iops, args.iops_max),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrate_uris() {
        use super::migrate_dir;
        assert_eq!(
            migrate_dir("file:/a/b").unwrap(),
            std::path::PathBuf::from("/a/b")
        );
        assert!(migrate_dir("file:").unwrap_err().desc.contains("file:DIR"));
        assert!(migrate_dir("tcp:1.2.3.4:5")
            .unwrap_err()
            .desc
            .contains("'tcp:1.2.3.4:5' is not supported"));
        assert!(migrate_dir("/a/b").is_err());
    }

    #[test]
    fn query_migrate_shapes() {
        use super::query_migrate_reply;
        use crate::control::{MigrationInfo, MigrationStatus};
        assert_eq!(query_migrate_reply(None), serde_json::json!({}));
        let mut info = MigrationInfo {
            status: MigrationStatus::Active,
            total_time_ms: 0,
            ram_total: 1 << 20,
            ram_written: 0,
            error: None,
        };
        assert_eq!(
            query_migrate_reply(Some(&info)),
            serde_json::json!({"status": "active"})
        );
        info.status = MigrationStatus::Completed;
        info.total_time_ms = 12;
        info.ram_written = 4096;
        assert_eq!(
            query_migrate_reply(Some(&info)),
            serde_json::json!({"status": "completed", "total-time": 12,
                "ram": {"total": 1 << 20, "transferred": 4096, "remaining": 0}})
        );
    }

    use super::*;
    use qmp::QmpCommand;

    fn blockdev(args: Value) -> Result<BlockdevRequest, QmpError> {
        match QmpCommand::parse("blockdev-add", args.as_object()).unwrap() {
            QmpCommand::BlockdevAdd(a) => blockdev_request(&a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blockdev_sources() {
        let r = blockdev(json!({"driver": "file", "node-name": "n", "filename": "/x",
                                "read-only": true}))
        .unwrap();
        assert_eq!(r.source, ImageSource::Path("/x".into()));
        assert_eq!((r.read_only, r.direct), (Some(true), None));
        let r = blockdev(json!({"driver": "raw", "node-name": "n", "file": "other"})).unwrap();
        assert_eq!(r.source, ImageSource::Node("other".into()));
        let r = blockdev(json!({"driver": "raw", "node-name": "n",
            "file": {"driver": "file", "filename": "/y", "cache": {"direct": true}}}))
        .unwrap();
        assert_eq!(
            r.source,
            ImageSource::Nested {
                source: Box::new(ImageSource::Path("/y".into())),
                read_only: None,
                direct: Some(true)
            }
        );
        let e = blockdev(json!({"driver": "raw", "node-name": "n", "file": "o", "offset": 512}))
            .unwrap_err();
        assert!(format!("{e:?}").contains("raw offset/size are not supported"));
    }

    #[test]
    fn errors_keep_their_class() {
        let nf: QmpError = HotplugError::NotFound("Device 'x' not found".into()).into();
        assert_eq!(nf, QmpError::device_not_found("Device 'x' not found"));
        let g: QmpError = HotplugError::refused("no").into();
        assert_eq!(g, QmpError::generic("no"));
    }

    #[test]
    fn balloon_conversions() {
        assert_eq!(balloon_target(1), Ok(1));
        assert_eq!(balloon_target(i64::MAX), Ok(i64::MAX as u64));
        for bad in [0, -1, i64::MIN] {
            assert_eq!(
                balloon_target(bad),
                Err(QmpError::generic("Parameter 'target' expects a size"))
            );
        }
        let e = no_balloon();
        assert_eq!(e.class, qmp::ErrorClass::DeviceNotActive);
        assert_eq!(e.desc, "No balloon device has been activated");
        assert_eq!(query_balloon_reply(5), json!({"actual": 5}));
    }

    #[test]
    fn query_block_shape() {
        let img = ImageInfo {
            path: "/i".into(),
            read_only: true,
            direct: false,
        };
        let v = query_block_reply(&[
            BlockEntry::Boot {
                device: "d".into(),
                drive: "r".into(),
                image: img.clone(),
            },
            BlockEntry::Slot {
                index: 0,
                filled: None,
            },
            BlockEntry::Slot {
                index: 1,
                filled: Some(("v".into(), "n".into(), Some(img))),
            },
        ]);
        assert_eq!(v[0]["device"], "r");
        assert_eq!(v[0]["qdev"], "/machine/peripheral/d");
        assert_eq!(v[0]["inserted"]["ro"], true);
        assert!(v[0]["inserted"].get("node-name").is_none());
        assert_eq!(
            v[1],
            json!({"device": "", "slot": 0, "locked": false,
                                "removable": true, "type": "unknown"})
        );
        assert_eq!(v[2]["inserted"]["node-name"], "n");
        assert_eq!(v[2]["inserted"]["cache"]["writeback"], true);
    }
}
