//! Arguments of the hot-plug commands: `blockdev-add`, `device_add`,
//! `netdev_add`, in the shapes Kata Containers (govmm) sends.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::args::Args;
use crate::error::QmpError;

/// Asynchronous I/O mode of a file-backed block node (`aio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockdevAio {
    /// `threads`: a thread pool.
    Threads,
    /// `native`: Linux native AIO.
    Native,
    /// `io_uring`.
    IoUring,
}

/// What to do with discard requests (`discard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockdevDiscard {
    /// `ignore`.
    Ignore,
    /// `unmap`.
    Unmap,
}

/// Cache options of a block node (`cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockdevCache {
    /// `direct`: open with O_DIRECT.
    pub direct: Option<bool>,
    /// `no-flush`: ignore flush requests.
    pub no_flush: Option<bool>,
}

/// Options every block node has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockdevCommon {
    /// `read-only`.
    pub read_only: Option<bool>,
    /// `auto-read-only`.
    pub auto_read_only: Option<bool>,
    /// `force-share`.
    pub force_share: Option<bool>,
    /// `discard`.
    pub discard: Option<BlockdevDiscard>,
    /// `cache`.
    pub cache: Option<BlockdevCache>,
}

/// Protocol-level options of the `file` and `host_device` drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevFile {
    /// `filename`: host path.
    pub filename: String,
    /// `aio`.
    pub aio: Option<BlockdevAio>,
    /// `locking`: `on`, `off` or `auto`.
    pub locking: Option<String>,
}

/// Options of the `raw` format driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevRaw {
    /// `file`: the protocol node underneath.
    pub file: BlockdevRef,
    /// `offset` into the file, in bytes.
    pub offset: Option<u64>,
    /// `size` of the exposed range, in bytes.
    pub size: Option<u64>,
}

/// A block node driver with its driver-specific options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockdevDriver {
    /// `raw` format.
    Raw(BlockdevRaw),
    /// `file` protocol (regular file).
    File(BlockdevFile),
    /// `host_device` protocol (block device).
    HostDevice(BlockdevFile),
}

/// A child node: either the name of an existing node or an inline definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockdevRef {
    /// `"file": "node-name"`.
    Reference(String),
    /// `"file": {...}`.
    Inline(Box<BlockdevOptions>),
}

/// A block node definition where `node-name` is optional (inline children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevOptions {
    /// `node-name`.
    pub node_name: Option<String>,
    /// Options common to all drivers.
    pub common: BlockdevCommon,
    /// `driver` and its options.
    pub driver: BlockdevDriver,
}

/// Arguments of `blockdev-add`: a top-level node, which must be named.
///
/// Example (Kata): `{"driver":"raw","node-name":"drive-x","read-only":false,
/// "file":{"driver":"file","filename":"/img","aio":"threads"},
/// "cache":{"direct":true,"no-flush":false}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevAddArgs {
    /// `node-name`.
    pub node_name: String,
    /// Options common to all drivers.
    pub common: BlockdevCommon,
    /// `driver` and its options.
    pub driver: BlockdevDriver,
}

#[derive(Clone, Copy)]
enum DriverKind {
    Raw,
    File,
    HostDevice,
}

const DRIVERS: &[(&str, DriverKind)] = &[
    ("raw", DriverKind::Raw),
    ("file", DriverKind::File),
    ("host_device", DriverKind::HostDevice),
];

const AIO: &[(&str, BlockdevAio)] = &[
    ("threads", BlockdevAio::Threads),
    ("native", BlockdevAio::Native),
    ("io_uring", BlockdevAio::IoUring),
];

const DISCARD: &[(&str, BlockdevDiscard)] = &[
    ("ignore", BlockdevDiscard::Ignore),
    ("unmap", BlockdevDiscard::Unmap),
];

impl BlockdevAddArgs {
    /// Reads the arguments of `blockdev-add` (the caller checks leftovers).
    pub(crate) fn parse(a: &mut Args<'_>) -> Result<Self, QmpError> {
        let kind = a.req_enum("driver", DRIVERS)?;
        let node_name = a.req_str("node-name")?;
        let common = parse_common(a)?;
        let driver = parse_driver(a, kind)?;
        Ok(BlockdevAddArgs {
            node_name,
            common,
            driver,
        })
    }
}

fn parse_options(mut a: Args<'_>) -> Result<BlockdevOptions, QmpError> {
    let kind = a.req_enum("driver", DRIVERS)?;
    let node_name = a.opt_str("node-name")?;
    let common = parse_common(&mut a)?;
    let driver = parse_driver(&mut a, kind)?;
    a.finish()?;
    Ok(BlockdevOptions {
        node_name,
        common,
        driver,
    })
}

fn parse_common(a: &mut Args<'_>) -> Result<BlockdevCommon, QmpError> {
    let discard = a.opt_enum("discard", DISCARD)?;
    let cache = match a.opt_object("cache")? {
        None => None,
        Some(mut c) => {
            let cache = BlockdevCache {
                direct: c.opt_bool("direct")?,
                no_flush: c.opt_bool("no-flush")?,
            };
            c.finish()?;
            Some(cache)
        }
    };
    Ok(BlockdevCommon {
        read_only: a.opt_bool("read-only")?,
        auto_read_only: a.opt_bool("auto-read-only")?,
        force_share: a.opt_bool("force-share")?,
        discard,
        cache,
    })
}

fn parse_driver(a: &mut Args<'_>, kind: DriverKind) -> Result<BlockdevDriver, QmpError> {
    Ok(match kind {
        DriverKind::Raw => {
            let file = match a.get("file") {
                None => return Err(QmpError::missing_parameter(&a.path("file"))),
                Some(Value::String(s)) => BlockdevRef::Reference(s.clone()),
                Some(Value::Object(_)) => match a.opt_object("file")? {
                    Some(child) => BlockdevRef::Inline(Box::new(parse_options(child)?)),
                    None => return Err(QmpError::missing_parameter(&a.path("file"))),
                },
                Some(_) => {
                    return Err(QmpError::invalid_parameter_type(
                        &a.path("file"),
                        "BlockdevRef",
                    ))
                }
            };
            BlockdevDriver::Raw(BlockdevRaw {
                file,
                offset: a.opt_uint("offset", u64::MAX, false)?,
                size: a.opt_uint("size", u64::MAX, false)?,
            })
        }
        DriverKind::File => BlockdevDriver::File(parse_file(a)?),
        DriverKind::HostDevice => BlockdevDriver::HostDevice(parse_file(a)?),
    })
}

fn parse_file(a: &mut Args<'_>) -> Result<BlockdevFile, QmpError> {
    let filename = a.req_str("filename")?;
    let aio = a.opt_enum("aio", AIO)?;
    let locking = a.opt_enum("locking", &[("on", "on"), ("off", "off"), ("auto", "auto")])?;
    Ok(BlockdevFile {
        filename,
        aio,
        locking: locking.map(str::to_string),
    })
}

/// Arguments of `device_add`.
///
/// Like QEMU's, `device_add` takes free-form device properties: the ones
/// altovirt knows are typed fields, and every other member is kept in
/// [`DeviceAddArgs::other`] for the handler to accept or reject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceAddArgs {
    /// `driver`: device model (e.g. `virtio-blk-pci`, `virtio-net-pci`).
    pub driver: String,
    /// `id`: device id, needed later by `device_del`.
    pub id: Option<String>,
    /// `bus`: parent bus.
    pub bus: Option<String>,
    /// `addr`: address on the bus (e.g. `"0x2"`).
    pub addr: Option<String>,
    /// `drive`: block node to attach.
    pub drive: Option<String>,
    /// `netdev`: network backend to attach.
    pub netdev: Option<String>,
    /// `mac`: MAC address.
    pub mac: Option<String>,
    /// `romfile`: option ROM (empty string for none).
    pub romfile: Option<String>,
    /// `share-rw`: a boolean or `"on"`/`"off"`.
    pub share_rw: Option<bool>,
    /// `serial`: disk serial number.
    pub serial: Option<String>,
    /// `logical_block_size` in bytes.
    pub logical_block_size: Option<u32>,
    /// `physical_block_size` in bytes.
    pub physical_block_size: Option<u32>,
    /// Every other property, unvalidated.
    pub other: BTreeMap<String, Value>,
}

impl DeviceAddArgs {
    /// Reads the arguments of `device_add`; unknown members go to `other`.
    pub(crate) fn parse(mut a: Args<'_>) -> Result<Self, QmpError> {
        let args = DeviceAddArgs {
            driver: a.req_str("driver")?,
            id: a.opt_str("id")?,
            bus: a.opt_str("bus")?,
            addr: a.opt_str("addr")?,
            drive: a.opt_str("drive")?,
            netdev: a.opt_str("netdev")?,
            mac: a.opt_str("mac")?,
            romfile: a.opt_str("romfile")?,
            share_rw: a.opt_switch("share-rw")?,
            serial: a.opt_str("serial")?,
            logical_block_size: block_size(&mut a, "logical_block_size")?,
            physical_block_size: block_size(&mut a, "physical_block_size")?,
            other: BTreeMap::new(),
        };
        Ok(DeviceAddArgs {
            other: a.rest(),
            ..args
        })
    }
}

fn block_size(a: &mut Args<'_>, key: &str) -> Result<Option<u32>, QmpError> {
    Ok(a.opt_uint(key, u64::from(u32::MAX), true)?
        .and_then(|n| u32::try_from(n).ok()))
}

/// Options of a `tap` network backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapNetdevArgs {
    /// `ifname`: host interface to open.
    pub ifname: Option<String>,
    /// `fd`: name of one tap fd passed with `getfd`.
    pub fd: Option<String>,
    /// `fds`: colon-separated names of tap fds (multi-queue).
    pub fds: Option<String>,
    /// `script`.
    pub script: Option<String>,
    /// `downscript`.
    pub downscript: Option<String>,
    /// `vhost`: a boolean or `"on"`/`"off"`.
    pub vhost: Option<bool>,
    /// `vhostfd`: name of one vhost-net fd.
    pub vhostfd: Option<String>,
    /// `vhostfds`: colon-separated names of vhost-net fds.
    pub vhostfds: Option<String>,
    /// `vhostforce`.
    pub vhostforce: Option<bool>,
    /// `queues`: number of queue pairs.
    pub queues: Option<u32>,
    /// `vnet_hdr`.
    pub vnet_hdr: Option<bool>,
    /// altovirt's rate-limit keys (`rx_iops`, `tx_bps_max`, …).
    pub rate_limits: TapRateLimits,
}

/// Rate limits of a tap given to `netdev_add`: an altovirt extension (QEMU
/// has no such keys), spelled as on altovirt's `-netdev tap`. Rates are
/// per second, `…_max` is a one-time burst on top; 0 (or absent) is no
/// limit. `rx` is what the guest receives, `tx` what it sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapRateLimits {
    /// `rx_iops`: frames per second.
    pub rx_iops: u64,
    /// `rx_iops_max`: frames allowed once on top.
    pub rx_iops_max: u64,
    /// `rx_bps`: bytes per second.
    pub rx_bps: u64,
    /// `rx_bps_max`: bytes allowed once on top.
    pub rx_bps_max: u64,
    /// `tx_iops`: frames per second.
    pub tx_iops: u64,
    /// `tx_iops_max`: frames allowed once on top.
    pub tx_iops_max: u64,
    /// `tx_bps`: bytes per second.
    pub tx_bps: u64,
    /// `tx_bps_max`: bytes allowed once on top.
    pub tx_bps_max: u64,
}

impl TapRateLimits {
    /// Reads the keys; a burst without its rate is refused.
    fn parse(a: &mut Args<'_>, id: &str) -> Result<Self, QmpError> {
        let mut get = |key: &str| -> Result<u64, QmpError> {
            Ok(a.opt_uint(key, u64::MAX, true)?.unwrap_or(0))
        };
        let l = TapRateLimits {
            rx_iops: get("rx_iops")?,
            rx_iops_max: get("rx_iops_max")?,
            rx_bps: get("rx_bps")?,
            rx_bps_max: get("rx_bps_max")?,
            tx_iops: get("tx_iops")?,
            tx_iops_max: get("tx_iops_max")?,
            tx_bps: get("tx_bps")?,
            tx_bps_max: get("tx_bps_max")?,
        };
        for (burst, rate, burst_key, rate_key) in [
            (l.rx_iops_max, l.rx_iops, "rx_iops_max", "rx_iops"),
            (l.rx_bps_max, l.rx_bps, "rx_bps_max", "rx_bps"),
            (l.tx_iops_max, l.tx_iops, "tx_iops_max", "tx_iops"),
            (l.tx_bps_max, l.tx_bps, "tx_bps_max", "tx_bps"),
        ] {
            if burst > 0 && rate == 0 {
                return Err(QmpError::generic(format!(
                    "netdev '{id}': {burst_key} needs {rate_key} too"
                )));
            }
        }
        Ok(l)
    }
}

impl TapNetdevArgs {
    /// The tap fd names from `fd` and `fds` (`"a:b"` gives `["a", "b"]`).
    pub fn fd_names(&self) -> Vec<&str> {
        split_names(self.fd.as_deref(), self.fds.as_deref())
    }

    /// The vhost fd names from `vhostfd` and `vhostfds`.
    pub fn vhost_fd_names(&self) -> Vec<&str> {
        split_names(self.vhostfd.as_deref(), self.vhostfds.as_deref())
    }
}

fn split_names<'a>(one: Option<&'a str>, many: Option<&'a str>) -> Vec<&'a str> {
    one.into_iter()
        .chain(many.into_iter().flat_map(|s| s.split(':')))
        .filter(|s| !s.is_empty())
        .collect()
}

/// A network backend type with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevBackend {
    /// `type: tap`.
    Tap(TapNetdevArgs),
}

/// Arguments of `netdev_add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevAddArgs {
    /// `id`: backend id, used by `device_add netdev=` and `netdev_del`.
    pub id: String,
    /// `type` and its options.
    pub backend: NetdevBackend,
}

impl NetdevAddArgs {
    /// Reads the arguments of `netdev_add` (the caller checks leftovers).
    pub(crate) fn parse(a: &mut Args<'_>) -> Result<Self, QmpError> {
        a.req_enum("type", &[("tap", ())])?;
        let id = a.req_str("id")?;
        let tap = TapNetdevArgs {
            ifname: a.opt_str("ifname")?,
            fd: a.opt_str("fd")?,
            fds: a.opt_str("fds")?,
            script: a.opt_str("script")?,
            downscript: a.opt_str("downscript")?,
            vhost: a.opt_switch("vhost")?,
            vhostfd: a.opt_str("vhostfd")?,
            vhostfds: a.opt_str("vhostfds")?,
            vhostforce: a.opt_switch("vhostforce")?,
            queues: a
                .opt_uint("queues", 1024, true)?
                .and_then(|n| u32::try_from(n).ok()),
            vnet_hdr: a.opt_switch("vnet_hdr")?,
            rate_limits: TapRateLimits::parse(a, &id)?,
        };
        Ok(NetdevAddArgs {
            id,
            backend: NetdevBackend::Tap(tap),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::QmpCommand;
    use serde_json::json;

    fn parse(name: &str, args: Value) -> Result<QmpCommand, QmpError> {
        let Value::Object(m) = args else {
            panic!("bad test args")
        };
        QmpCommand::parse(name, Some(&m))
    }

    #[test]
    fn kata_blockdev_add() {
        let cmd = parse(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "drive-1", "read-only": true,
                   "file": {"driver": "host_device", "filename": "/dev/sdb", "aio": "native"},
                   "cache": {"direct": true, "no-flush": false}}),
        )
        .unwrap();
        let QmpCommand::BlockdevAdd(b) = cmd else {
            panic!()
        };
        assert_eq!(b.node_name, "drive-1");
        assert_eq!(b.common.read_only, Some(true));
        assert_eq!(
            b.common.cache,
            Some(BlockdevCache {
                direct: Some(true),
                no_flush: Some(false)
            })
        );
        let BlockdevDriver::Raw(raw) = b.driver else {
            panic!()
        };
        let BlockdevRef::Inline(file) = raw.file else {
            panic!()
        };
        assert_eq!(
            file.driver,
            BlockdevDriver::HostDevice(BlockdevFile {
                filename: "/dev/sdb".into(),
                aio: Some(BlockdevAio::Native),
                locking: None
            })
        );
    }

    #[test]
    fn blockdev_add_errors_use_nested_names() {
        let err = |args| parse("blockdev-add", args).unwrap_err().desc;
        assert_eq!(
            err(json!({"driver": "raw", "node-name": "n", "file": {"driver": "file"}})),
            "Parameter 'file.filename' is missing"
        );
        assert_eq!(
            err(json!({"driver": "raw", "node-name": "n",
                       "file": {"driver": "file", "filename": "/x", "aio": "posix"}})),
            "Parameter 'file.aio' does not accept value 'posix'"
        );
        assert_eq!(
            err(json!({"driver": "raw", "node-name": "n",
                       "file": {"driver": "file", "filename": "/x", "bogus": 1}})),
            "Parameter 'file.bogus' is unexpected"
        );
        assert_eq!(
            err(json!({"driver": "raw", "node-name": "n", "file": "f",
                       "cache": {"direct": "yes"}})),
            "Invalid parameter type for 'cache.direct', expected: boolean"
        );
        assert_eq!(
            err(json!({"driver": "qcow2", "node-name": "n"})),
            "Parameter 'driver' does not accept value 'qcow2'"
        );
        assert_eq!(
            err(json!({"driver": "raw", "node-name": "n"})),
            "Parameter 'file' is missing"
        );
        assert_eq!(
            err(json!({"driver": "file", "node-name": "n", "filename": "/x", "file": "y"})),
            "Parameter 'file' is unexpected"
        );
    }

    #[test]
    fn kata_device_add_keeps_unknown_properties() {
        let cmd = parse(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": "virtio-d1", "drive": "drive-1",
                   "addr": "0x2", "bus": "pci-bridge-0", "romfile": "", "share-rw": "on",
                   "serial": "abc", "logical_block_size": 512, "physical_block_size": "4096",
                   "disable-modern": false}),
        )
        .unwrap();
        let QmpCommand::DeviceAdd(d) = cmd else {
            panic!()
        };
        assert_eq!(d.driver, "virtio-blk-pci");
        assert_eq!(d.id.as_deref(), Some("virtio-d1"));
        assert_eq!(d.share_rw, Some(true));
        assert_eq!(d.logical_block_size, Some(512));
        assert_eq!(d.physical_block_size, Some(4096));
        assert_eq!(d.other.len(), 1);
        assert_eq!(d.other["disable-modern"], json!(false));
        let e = parse("device_add", json!({"id": "x"})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'driver' is missing");
        let e = parse("device_add", json!({"driver": "d", "mac": 5})).unwrap_err();
        assert_eq!(e.desc, "Invalid parameter type for 'mac', expected: string");
    }

    #[test]
    fn kata_netdev_add() {
        let cmd = parse(
            "netdev_add",
            json!({"type": "tap", "id": "network-0", "fds": "fd0:fd1", "vhost": "on",
                   "vhostfds": "vhost0:vhost1"}),
        )
        .unwrap();
        let QmpCommand::NetdevAdd(n) = cmd else {
            panic!()
        };
        assert_eq!(n.id, "network-0");
        let NetdevBackend::Tap(tap) = &n.backend;
        assert_eq!(tap.fd_names(), ["fd0", "fd1"]);
        assert_eq!(tap.vhost_fd_names(), ["vhost0", "vhost1"]);
        assert_eq!(tap.vhost, Some(true));
        let e = parse("netdev_add", json!({"type": "user", "id": "n"})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'type' does not accept value 'user'");
        let e = parse("netdev_add", json!({"type": "tap", "id": "n", "x": 1})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'x' is unexpected");
        let e = parse("netdev_add", json!({"type": "tap", "id": "n", "vhost": 1})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'vhost', expected: boolean"
        );
    }

    #[test]
    fn netdev_add_rate_limit_extension() {
        let cmd = parse(
            "netdev_add",
            json!({"type": "tap", "id": "n", "ifname": "tap0", "rx_iops": 100,
                   "rx_iops_max": 10, "rx_bps": "125000", "tx_bps": 5000}),
        )
        .unwrap();
        let QmpCommand::NetdevAdd(n) = cmd else {
            panic!()
        };
        let NetdevBackend::Tap(tap) = &n.backend;
        assert_eq!(
            tap.rate_limits,
            TapRateLimits {
                rx_iops: 100,
                rx_iops_max: 10,
                rx_bps: 125_000,
                tx_bps: 5000,
                ..Default::default()
            }
        );
        let e = parse(
            "netdev_add",
            json!({"type": "tap", "id": "n", "tx_bps_max": 1}),
        )
        .unwrap_err();
        assert_eq!(e.desc, "netdev 'n': tx_bps_max needs tx_bps too");
        let e = parse(
            "netdev_add",
            json!({"type": "tap", "id": "n", "rx_iops": -1}),
        )
        .unwrap_err();
        assert!(e.desc.contains("rx_iops"), "{}", e.desc);
    }
}
