//! The JSON configuration file (`-config FILE`).
//!
//! The file is parsed into a `serde_json::Value` and walked by hand so that
//! every error can name the exact JSON path, e.g. `drive[1].path_on_host`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::balloon::JsonBalloon;
use super::error::{io_reason, ConfigError};
use super::json_strict;
use super::size::check_mem_size;
use super::validate::{
    check_file, check_mac, check_max_vcpus, check_non_empty, FileKind, MAX_IFNAME_LEN, MAX_VCPUS,
    MIN_VCPUS,
};
use super::{
    DriveConfig, IoLimits, LimitBucket, NetConfig, NetIoLimits, RngConfig, SerialConfig,
    VsockConfig, MIN_GUEST_CID,
};

/// What a JSON file sets; `None` means the file does not mention it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FileConfig {
    pub(crate) name: Option<String>,
    pub(crate) kernel: Option<PathBuf>,
    pub(crate) initrd: Option<PathBuf>,
    pub(crate) boot_args: Option<String>,
    pub(crate) mem_size: Option<u64>,
    /// `(vcpu_count, max_vcpus)` when either is given.
    pub(crate) vcpus: Option<(u8, u8)>,
    pub(crate) dump_guest_core: Option<bool>,
    pub(crate) mem_share: Option<bool>,
    pub(crate) mem_overcommit: Option<bool>,
    pub(crate) acpi: Option<bool>,
    pub(crate) serial: Option<SerialConfig>,
    pub(crate) drives: Vec<DriveConfig>,
    pub(crate) nets: Vec<NetConfig>,
    pub(crate) vsock: Option<VsockConfig>,
    pub(crate) rng: Option<RngConfig>,
    pub(crate) balloon: Option<JsonBalloon>,
}

/// Read and validate the JSON configuration file at `path`.
pub(crate) fn load_json_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::JsonRead {
        path: shown.clone(),
        reason: io_reason(&err),
    })?;
    parse_json(&shown, &text)
}

/// Parse and validate JSON text; `origin` names the file in syntax errors.
pub(crate) fn parse_json(origin: &str, text: &str) -> Result<FileConfig, ConfigError> {
    let root: Value = json_strict::from_str(text).map_err(|err| {
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        ConfigError::JsonParse {
            path: origin.into(),
            line: err.line(),
            column: err.column(),
            message,
        }
    })?;
    let root = Obj::new(format!("JSON config {origin}"), &root)?;
    // Paths inside the file start at the section name, without a prefix.
    let root = Obj {
        path: String::new(),
        map: root.map,
    };
    root.only(&[
        "boot-source",
        "machine-config",
        "drive",
        "net",
        "vsock",
        "rng",
        "balloon",
        "serial",
    ])?;

    let mut cfg = FileConfig::default();
    let mut ids = IdSet::default();
    if let Some(v) = root.opt("boot-source") {
        boot_source(&mut cfg, &Obj::new(root.child("boot-source"), v)?)?;
    }
    if let Some(v) = root.opt("machine-config") {
        machine_config(&mut cfg, &Obj::new(root.child("machine-config"), v)?)?;
    }
    if let Some(v) = root.opt("drive") {
        for (i, item) in array(&root.child("drive"), v)?.iter().enumerate() {
            let obj = Obj::new(format!("drive[{i}]"), item)?;
            cfg.drives.push(drive(&obj, &mut ids)?);
        }
    }
    if let Some(v) = root.opt("net") {
        for (i, item) in array(&root.child("net"), v)?.iter().enumerate() {
            let obj = Obj::new(format!("net[{i}]"), item)?;
            cfg.nets.push(net(&obj, &mut ids)?);
        }
    }
    if let Some(v) = root.opt("vsock") {
        cfg.vsock = Some(vsock(&Obj::new(root.child("vsock"), v)?, &mut ids)?);
    }
    if let Some(v) = root.opt("rng") {
        let obj = Obj::new(root.child("rng"), v)?;
        obj.only(&["random_file"])?;
        let random_file = PathBuf::from(obj.req_str("random_file")?);
        check_file(&obj.child("random_file"), &random_file, FileKind::Entropy)?;
        cfg.rng = Some(RngConfig { random_file });
    }
    if let Some(v) = root.opt("balloon") {
        cfg.balloon = Some(balloon(&Obj::new(root.child("balloon"), v)?)?);
    }
    if let Some(v) = root.opt("serial") {
        let obj = Obj::new(root.child("serial"), v)?;
        obj.only(&["stdio"])?;
        cfg.serial = Some(match obj.opt_bool("stdio")? {
            Some(false) => SerialConfig::None,
            Some(true) | None => SerialConfig::Stdio,
        });
    }
    Ok(cfg)
}

fn boot_source(cfg: &mut FileConfig, obj: &Obj) -> Result<(), ConfigError> {
    obj.only(&["kernel_image_path", "boot_args", "initrd_fs_path"])?;
    if let Some(kernel) = obj.opt_str("kernel_image_path")? {
        let kernel = PathBuf::from(kernel);
        check_file(&obj.child("kernel_image_path"), &kernel, FileKind::Regular)?;
        cfg.kernel = Some(kernel);
    }
    if let Some(initrd) = obj.opt_str("initrd_fs_path")? {
        let initrd = PathBuf::from(initrd);
        check_file(&obj.child("initrd_fs_path"), &initrd, FileKind::Regular)?;
        cfg.initrd = Some(initrd);
    }
    cfg.boot_args = obj.opt_str("boot_args")?.map(str::to_string);
    Ok(())
}

fn machine_config(cfg: &mut FileConfig, obj: &Obj) -> Result<(), ConfigError> {
    obj.only(&[
        "name",
        "type",
        "vcpu_count",
        "max_vcpus",
        "mem_size",
        "dump_guest_core",
        "mem-share",
        "mem-overcommit",
        "acpi",
    ])?;
    if let Some(name) = obj.opt_str("name")? {
        check_non_empty(&obj.child("name"), name)?;
        cfg.name = Some(name.to_string());
    }
    if let Some(kind) = obj.opt_str("type")? {
        if !kind.eq_ignore_ascii_case("microvm") {
            return Err(ConfigError::UnsupportedMachine {
                at: obj.child("type"),
                value: kind.into(),
            });
        }
    }
    let vcpu = |key| obj.opt_int(key, MIN_VCPUS.into(), MAX_VCPUS.into());
    let nr = vcpu("vcpu_count")?.map(to_u8);
    let max = vcpu("max_vcpus")?.map(to_u8);
    if nr.is_some() || max.is_some() {
        let nr = nr.unwrap_or(MIN_VCPUS);
        let max = max.unwrap_or(nr);
        check_max_vcpus(&obj.child("max_vcpus"), nr, max)?;
        cfg.vcpus = Some((nr, max));
    }
    if let Some(bytes) = obj.opt_int("mem_size", 0, u64::MAX)? {
        cfg.mem_size = Some(check_mem_size(&obj.child("mem_size"), bytes)?);
    }
    cfg.dump_guest_core = obj.opt_bool("dump_guest_core")?;
    cfg.mem_share = obj.opt_bool("mem-share")?;
    cfg.mem_overcommit = obj.opt_bool("mem-overcommit")?;
    cfg.acpi = obj.opt_bool("acpi")?;
    Ok(())
}

fn drive(obj: &Obj, ids: &mut IdSet) -> Result<DriveConfig, ConfigError> {
    obj.only(&[
        "drive_id",
        "path_on_host",
        "read_only",
        "direct",
        "rate_limiter",
    ])?;
    let id = ids.claim(obj, "drive_id")?;
    let path = PathBuf::from(obj.req_str("path_on_host")?);
    check_file(&obj.child("path_on_host"), &path, FileKind::Disk)?;
    Ok(DriveConfig {
        id,
        path,
        read_only: obj.opt_bool("read_only")?.unwrap_or(false),
        direct: obj.opt_bool("direct")?.unwrap_or(false),
        limits: match obj.opt("rate_limiter") {
            Some(v) => rate_limiter(&Obj::new(obj.child("rate_limiter"), v)?)?,
            None => IoLimits::default(),
        },
    })
}

/// Firecracker's `rate_limiter`: `bandwidth` (bytes) and `ops` buckets,
/// each `{size, one_time_burst, refill_time}` with the time in ms.
fn rate_limiter(obj: &Obj) -> Result<IoLimits, ConfigError> {
    obj.only(&["bandwidth", "ops"])?;
    let bucket = |key: &str| -> Result<LimitBucket, ConfigError> {
        let Some(v) = obj.opt(key) else {
            return Ok(LimitBucket::default());
        };
        let b = Obj::new(obj.child(key), v)?;
        b.only(&["size", "one_time_burst", "refill_time"])?;
        let size = b.opt_int("size", 0, u64::MAX)?.unwrap_or(0);
        let one_time_burst = b.opt_int("one_time_burst", 0, u64::MAX)?.unwrap_or(0);
        let refill_time_ms = b.opt_int("refill_time", 1, u64::MAX / 1_000_000)?;
        if size == 0 {
            return Ok(LimitBucket::default());
        }
        let Some(refill_time_ms) = refill_time_ms else {
            return Err(ConfigError::MissingField {
                at: b.child("refill_time"),
            });
        };
        Ok(LimitBucket {
            size,
            one_time_burst,
            refill_time_ms,
        })
    };
    Ok(IoLimits {
        bandwidth: bucket("bandwidth")?,
        ops: bucket("ops")?,
    })
}

fn net(obj: &Obj, ids: &mut IdSet) -> Result<NetConfig, ConfigError> {
    obj.only(&[
        "iface_id",
        "host_dev_name",
        "mac",
        "rx_rate_limiter",
        "tx_rate_limiter",
    ])?;
    let id = ids.claim(obj, "iface_id")?;
    let host_dev_name = obj.req_str("host_dev_name")?;
    let at = obj.child("host_dev_name");
    check_non_empty(&at, host_dev_name)?;
    if host_dev_name.len() > MAX_IFNAME_LEN {
        return Err(ConfigError::TooLong {
            at,
            value: host_dev_name.into(),
            max: MAX_IFNAME_LEN,
        });
    }
    let mac = obj.opt_str("mac")?;
    if let Some(mac) = mac {
        check_mac(&obj.child("mac"), mac)?;
    }
    Ok(NetConfig {
        id,
        host_dev_name: host_dev_name.into(),
        mac: mac.map(str::to_string),
        limits: NetIoLimits {
            rx: direction_limiter(obj, "rx_rate_limiter")?,
            tx: direction_limiter(obj, "tx_rate_limiter")?,
        },
    })
}

/// A NIC's `rx_rate_limiter` or `tx_rate_limiter`, if given.
fn direction_limiter(obj: &Obj, key: &str) -> Result<IoLimits, ConfigError> {
    match obj.opt(key) {
        Some(v) => rate_limiter(&Obj::new(obj.child(key), v)?),
        None => Ok(IoLimits::default()),
    }
}

fn vsock(obj: &Obj, ids: &mut IdSet) -> Result<VsockConfig, ConfigError> {
    obj.only(&["vsock_id", "guest_cid"])?;
    let id = ids.claim(obj, "vsock_id")?;
    let max = u64::from(u32::MAX - 1);
    let guest_cid = match obj.opt_int("guest_cid", MIN_GUEST_CID.into(), max)? {
        Some(cid) => u32::try_from(cid).unwrap_or(u32::MAX - 1),
        None => {
            return Err(ConfigError::MissingField {
                at: obj.child("guest_cid"),
            })
        }
    };
    Ok(VsockConfig { id, guest_cid })
}

/// Firecracker's balloon section: `amount_mib` (the balloon's size at
/// boot, checked against guest RAM once that is known), `deflate_on_oom`,
/// plus `free_page_reporting`. Firecracker's `stats_polling_interval_s` is
/// accepted only as 0: there is no statistics queue.
fn balloon(obj: &Obj) -> Result<JsonBalloon, ConfigError> {
    obj.only(&[
        "amount_mib",
        "deflate_on_oom",
        "free_page_reporting",
        "stats_polling_interval_s",
    ])?;
    obj.opt_int("stats_polling_interval_s", 0, 0)?;
    Ok(JsonBalloon {
        amount_mib: obj
            .opt_int("amount_mib", 0, u64::from(u32::MAX))?
            .unwrap_or(0),
        deflate_on_oom: obj.opt_bool("deflate_on_oom")?.unwrap_or(false),
        free_page_reporting: obj.opt_bool("free_page_reporting")?.unwrap_or(false),
    })
}

/// Narrow a value already checked to be at most [`MAX_VCPUS`].
fn to_u8(value: u64) -> u8 {
    u8::try_from(value).unwrap_or(MAX_VCPUS)
}

fn array<'a>(at: &str, value: &'a Value) -> Result<&'a Vec<Value>, ConfigError> {
    value.as_array().ok_or_else(|| ConfigError::JsonType {
        at: at.into(),
        expected: "an array".into(),
    })
}

/// Device ids seen so far, with the path where each was defined.
#[derive(Default)]
struct IdSet {
    seen: Vec<(String, String)>,
}

impl IdSet {
    /// Read the id field `key` of `obj` and record it, rejecting repeats.
    fn claim(&mut self, obj: &Obj, key: &str) -> Result<String, ConfigError> {
        let at = obj.child(key);
        let id = obj.req_str(key)?;
        check_non_empty(&at, id)?;
        if let Some((_, first)) = self.seen.iter().find(|(seen, _)| seen == id) {
            return Err(ConfigError::DuplicateId {
                at,
                id: id.into(),
                first: first.clone(),
            });
        }
        self.seen.push((id.to_string(), at));
        Ok(id.to_string())
    }
}

/// A JSON object together with its path, for error messages.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: String, value: &'a Value) -> Result<Self, ConfigError> {
        match value.as_object() {
            Some(map) => Ok(Obj { path, map }),
            None => Err(ConfigError::JsonType {
                at: path,
                expected: "an object".into(),
            }),
        }
    }

    /// Path of member `key`.
    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Reject members not in `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(key) => Err(ConfigError::UnknownField {
                at: self.child(key),
            }),
            None => Ok(()),
        }
    }

    /// Member `key`, treating `null` like an absent member.
    fn opt(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn type_error(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::JsonType {
            at: self.child(key),
            expected: expected.into(),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a string")),
        }
    }

    /// A required string member; `null` counts as the wrong type.
    fn req_str(&self, key: &str) -> Result<&'a str, ConfigError> {
        match self.map.get(key) {
            None => Err(ConfigError::MissingField {
                at: self.child(key),
            }),
            Some(v) => v.as_str().ok_or_else(|| self.type_error(key, "a string")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a boolean")),
        }
    }

    /// An integer member that must lie in `min..=max`.
    fn opt_int(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.opt(key) else {
            return Ok(None);
        };
        let out_of_range = || ConfigError::OutOfRange {
            at: self.child(key),
            value: value.to_string(),
            min,
            max,
        };
        match (value.as_u64(), value.as_i64()) {
            (Some(n), _) if (min..=max).contains(&n) => Ok(Some(n)),
            (Some(_), _) | (None, Some(_)) => Err(out_of_range()),
            (None, None) => Err(self.type_error(key, "an integer")),
        }
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
