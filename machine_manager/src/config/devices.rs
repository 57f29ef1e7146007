//! Device flags, QEMU/StratoVirt style: `-drive`, `-object`, `-chardev`
//! define back-ends; `-device` creates a device model that refers to one.
//! The JSON file's `drive` list and `rng` section become devices too.
//!
//! Supported: `virtio-blk-device` (alias `virtio-blk-mmio`),
//! `virtio-rng-device` (`virtio-rng-mmio`), `virtio-serial-device` with one
//! `virtconsole`, `virtio-balloon-device` (`virtio-balloon-mmio`, parsed in
//! balloon.rs). Drivers whose device model is not built yet are refused
//! with a message saying so, never ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::balloon::{parse_balloon_device, JsonBalloon};
use super::error::ConfigError;
use super::options::{parse_bool, OptionList};
use super::rate_limit::{parse_limits, parse_net_limits, LIMIT_KEYS, NET_LIMIT_KEYS};
use super::validate::{check_file, check_mac, check_non_empty, FileKind, MAX_IFNAME_LEN};
use super::NetIoLimits;
use super::{DriveConfig, NetConfig, RngConfig, VsockConfig};

/// The host side of a network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A tap device opened (or created) by name.
    TapName(String),
    /// A tap file descriptor inherited from the parent process (`fd=N`,
    /// `fds=N`), as Kata passes it.
    TapFd(i32),
}

/// Where a character device's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevBackend {
    /// A listening unix socket (`-chardev socket,path=P,server,nowait`).
    Socket(PathBuf),
    /// A unix socket to connect to (`-chardev socket,path=P` without
    /// `server`); only vhost-user devices accept it.
    SocketClient(PathBuf),
    /// The VMM's stdin/stdout.
    Stdio,
    /// Output appended to a file.
    File(PathBuf),
}

/// A device model to create at boot.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceConfig {
    /// virtio-blk on a drive.
    Block {
        /// Device id.
        id: String,
        /// The back-end drive.
        drive: DriveConfig,
        /// Serial number returned by GET_ID.
        serial: Option<String>,
    },
    /// virtio-rng reading from a host file.
    Rng {
        /// Device id.
        id: String,
        /// Entropy source.
        path: PathBuf,
    },
    /// virtio-net on a tap device.
    Net {
        /// Device id.
        id: String,
        /// The back-end's id (`-netdev id=`; the device id for a JSON
        /// `net` entry): QMP `netdev_del` takes it once `device_del` has
        /// unplugged the device.
        netdev: String,
        /// The tap.
        backend: NetBackend,
        /// Guest MAC address (`xx:xx:xx:xx:xx:xx`), if fixed.
        mac: Option<String>,
        /// Limits on what the guest receives and sends.
        limits: NetIoLimits,
    },
    /// vsock through the kernel's vhost-vsock.
    VhostVsock {
        /// Device id.
        id: String,
        /// Guest context id.
        guest_cid: u32,
        /// A /dev/vhost-vsock descriptor inherited from the parent, if given.
        vhostfd: Option<i32>,
    },
    /// vsock served in userspace over unix sockets (hybrid vsock).
    HybridVsock {
        /// Device id.
        id: String,
        /// Guest context id.
        guest_cid: u32,
        /// Unix socket the host connects to (`CONNECT <port>`); guest
        /// connections to port N go to `<uds_path>_N`.
        uds_path: PathBuf,
    },
    /// virtio-fs served by a vhost-user backend (e.g. virtiofsd).
    VhostUserFs {
        /// Device id.
        id: String,
        /// The `-chardev` id.
        chardev: String,
        /// The backend's listening socket (the chardev's path; altovirt
        /// connects to it whether or not the chardev says `server`).
        socket: PathBuf,
        /// Mount tag (1 to 36 bytes).
        tag: String,
        /// Request queues (besides the high-priority queue).
        num_request_queues: u16,
        /// Size of every queue.
        queue_size: u16,
    },
    /// virtio-console (virtio-serial with one virtconsole port).
    Console {
        /// Device id (of the virtconsole).
        id: String,
        /// Where the console's bytes go.
        backend: ChardevBackend,
    },
    /// virtio-balloon (at most one).
    Balloon {
        /// Device id.
        id: String,
        /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
        deflate_on_oom: bool,
        /// Offer VIRTIO_BALLOON_F_REPORTING.
        free_page_reporting: bool,
        /// Balloon size to ask for at boot, in MiB (JSON `amount_mib`).
        amount_mib: u64,
    },
}

impl DeviceConfig {
    /// The device id.
    pub fn id(&self) -> &str {
        match self {
            DeviceConfig::Block { id, .. }
            | DeviceConfig::Rng { id, .. }
            | DeviceConfig::Net { id, .. }
            | DeviceConfig::VhostVsock { id, .. }
            | DeviceConfig::HybridVsock { id, .. }
            | DeviceConfig::VhostUserFs { id, .. }
            | DeviceConfig::Console { id, .. }
            | DeviceConfig::Balloon { id, .. } => id,
        }
    }
}

/// The raw device-related flags, in command-line order.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawDeviceFlags {
    pub(crate) drives: Vec<String>,
    pub(crate) objects: Vec<String>,
    pub(crate) chardevs: Vec<String>,
    pub(crate) netdevs: Vec<String>,
    pub(crate) devices: Vec<String>,
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidDevice {
        at: at.into(),
        reason: reason.into(),
    }
}

fn required<'a>(list: &'a OptionList, at: &str, key: &str) -> Result<&'a str, ConfigError> {
    let v = list
        .get(key)
        .ok_or_else(|| invalid(at, format!("'{key}' is required")))?;
    check_non_empty(&format!("{at} {key}"), v)?;
    Ok(v)
}

fn switch(list: &OptionList, at: &str, key: &str, default: bool) -> Result<bool, ConfigError> {
    list.get(key)
        .map(|v| parse_bool(&format!("{at} {key}"), v))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn parse_drive(value: &str) -> Result<DriveConfig, ConfigError> {
    let at = "-drive";
    let mut keys = vec![
        "id", "file", "readonly", "direct", "format", "if", "cache", "aio", "discard", "media",
    ];
    keys.extend_from_slice(LIMIT_KEYS);
    let list = OptionList::parse(at, value, None, &keys)?;
    let id = required(&list, at, "id")?.to_string();
    let path = PathBuf::from(required(&list, at, "file")?);
    if let Some(f) = list.get("format").filter(|f| *f != "raw") {
        return Err(invalid(
            at,
            format!("format '{f}' is not supported (only raw)"),
        ));
    }
    if let Some(i) = list.get("if").filter(|i| *i != "none") {
        return Err(invalid(
            at,
            format!("if={i} is not supported (use if=none and -device)"),
        ));
    }
    let cache_direct = match list.get("cache") {
        None | Some("writeback") | Some("unsafe") | Some("writethrough") => false,
        Some("none") | Some("directsync") => true,
        Some(other) => return Err(invalid(at, format!("unknown cache mode '{other}'"))),
    };
    check_file(&format!("{at} file"), &path, FileKind::Disk)?;
    Ok(DriveConfig {
        id,
        path,
        read_only: switch(&list, at, "readonly", false)?,
        direct: switch(&list, at, "direct", cache_direct)?,
        limits: parse_limits(&list, at)?,
    })
}

/// `-object rng-random,id=ID,filename=PATH` and `-object iothread,id=ID`
/// (an event-loop thread of its own for the devices that name it).
fn parse_object(
    value: &str,
    rngs: &mut HashMap<String, PathBuf>,
    iothreads: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let at = "-object";
    let kind = value.split(',').next().unwrap_or_default();
    match kind {
        "rng-random" => {
            let list =
                OptionList::parse(at, value, Some("qom-type"), &["qom-type", "id", "filename"])?;
            let id = required(&list, at, "id")?.to_string();
            let path = PathBuf::from(list.get("filename").unwrap_or("/dev/random"));
            check_file(&format!("{at} filename"), &path, FileKind::Entropy)?;
            rngs.insert(id, path);
            Ok(())
        }
        "iothread" => {
            let list = OptionList::parse(at, value, Some("qom-type"), &["qom-type", "id"])?;
            let id = required(&list, at, "id")?.to_string();
            if iothreads.contains(&id) {
                return Err(invalid(at, format!("duplicate iothread id '{id}'")));
            }
            iothreads.push(id);
            Ok(())
        }
        other => Err(invalid(at, format!("unsupported object type '{other}'"))),
    }
}

fn parse_chardev(value: &str) -> Result<(String, ChardevBackend), ConfigError> {
    let at = "-chardev";
    // QEMU's bare switches: `server` means server=on, `nowait` wait=off.
    let normalized: Vec<&str> = value
        .split(',')
        .map(|item| match item {
            "server" => "server=on",
            "nowait" => "wait=off",
            "wait" => "wait=on",
            other => other,
        })
        .collect();
    let normalized = normalized.join(",");
    let list = OptionList::parse(
        at,
        &normalized,
        Some("backend"),
        &["backend", "id", "path", "server", "wait"],
    )?;
    let id = required(&list, at, "id")?.to_string();
    let backend = match list.get("backend").unwrap_or_default() {
        "socket" => {
            let path = PathBuf::from(required(&list, at, "path")?);
            if !switch(&list, at, "server", false)? {
                ChardevBackend::SocketClient(path)
            } else if switch(&list, at, "wait", true)? {
                return Err(invalid(at, "wait=on is not supported (add nowait)"));
            } else {
                ChardevBackend::Socket(path)
            }
        }
        "stdio" => ChardevBackend::Stdio,
        "file" => ChardevBackend::File(PathBuf::from(required(&list, at, "path")?)),
        other => {
            return Err(invalid(
                at,
                format!("unsupported chardev backend '{other}'"),
            ))
        }
    };
    Ok((id, backend))
}

/// `-netdev tap,id=ID,(ifname=NAME|fd=N|fds=N)[,vhost=off]`.
fn parse_netdev(value: &str) -> Result<(String, NetBackend, NetIoLimits), ConfigError> {
    let at = "-netdev";
    let mut keys = vec![
        "type",
        "id",
        "ifname",
        "fd",
        "fds",
        "vhost",
        "vhostfd",
        "vhostfds",
        "script",
        "downscript",
        "queues",
    ];
    keys.extend_from_slice(NET_LIMIT_KEYS);
    let list = OptionList::parse(at, value, Some("type"), &keys)?;
    let id = required(&list, at, "id")?.to_string();
    if list.get("type") != Some("tap") {
        return Err(invalid(
            at,
            format!("netdev '{id}': only type tap is supported"),
        ));
    }
    if switch(&list, at, "vhost", false)?
        || list.get("vhostfd").is_some()
        || list.get("vhostfds").is_some()
    {
        return Err(invalid(
            at,
            format!("netdev '{id}': vhost-net is not supported (use vhost=off)"),
        ));
    }
    for key in ["script", "downscript"] {
        if list.get(key).is_some_and(|v| v != "no") {
            return Err(invalid(
                at,
                format!("netdev '{id}': {key} is not supported (use {key}=no)"),
            ));
        }
    }
    let fd_text = list.get("fd").or(list.get("fds"));
    let backend = match (list.get("ifname"), fd_text) {
        (Some(name), None) => {
            if name.is_empty() || name.len() > MAX_IFNAME_LEN {
                return Err(invalid(
                    at,
                    format!("ifname '{name}' must be 1 to {MAX_IFNAME_LEN} bytes"),
                ));
            }
            NetBackend::TapName(name.to_string())
        }
        (None, Some(fds)) => {
            if fds.contains(':') {
                return Err(invalid(
                    at,
                    format!(
                        "netdev '{id}': several queue fds '{fds}' (multiqueue) are not supported"
                    ),
                ));
            }
            let fd: i32 = fds
                .parse()
                .map_err(|_| invalid(at, format!("netdev '{id}': invalid fd '{fds}'")))?;
            // SAFETY: F_GETFD only queries the descriptor table.
            if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(invalid(
                    at,
                    format!("netdev '{id}': fd {fd} is not an open inherited descriptor"),
                ));
            }
            NetBackend::TapFd(fd)
        }
        _ => {
            return Err(invalid(
                at,
                format!("netdev '{id}': give exactly one of ifname=, fd=, fds="),
            ))
        }
    };
    Ok((id, backend, parse_net_limits(&list, at)?))
}

/// `guest-cid=N`: 3 up to 2^32 - 2 (0–2 and -1 are reserved).
fn parse_cid(at: &str, list: &OptionList) -> Result<u32, ConfigError> {
    let text = required(list, at, "guest-cid")?;
    text.parse::<u32>()
        .ok()
        .filter(|c| (3..u32::MAX).contains(c))
        .ok_or_else(|| {
            invalid(
                at,
                format!("guest-cid '{text}' must be 3 to {}", u32::MAX - 1),
            )
        })
}

/// Largest virtio-fs mount tag (the configuration field's size).
const MAX_FS_TAG_LEN: usize = 36;

/// A u16 option `key` in `range`, or `default`.
fn small_number(
    list: &OptionList,
    at: &str,
    key: &str,
    default: u16,
    check: impl Fn(u16) -> bool,
    expected: &str,
) -> Result<u16, ConfigError> {
    match list.get(key) {
        None => Ok(default),
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|v| check(*v))
            .ok_or_else(|| invalid(at, format!("{key} '{text}' must be {expected}"))),
    }
}

/// `-device vhost-user-fs-device,chardev=ID,tag=TAG[,id=..]
/// [,num-request-queues=N][,queue-size=N]`.
fn parse_vhost_user_fs(
    at: &str,
    value: &str,
    chardevs: &mut HashMap<String, ChardevBackend>,
) -> Result<DeviceConfig, ConfigError> {
    let list = OptionList::parse(
        at,
        value,
        Some("driver"),
        &[
            "driver",
            "id",
            "chardev",
            "tag",
            "num-request-queues",
            "queue-size",
            "bus",
            "addr",
        ],
    )?;
    let name = required(&list, at, "chardev")?;
    let socket = match chardevs.remove(name) {
        Some(ChardevBackend::Socket(p) | ChardevBackend::SocketClient(p)) => p,
        Some(_) => {
            return Err(invalid(
                at,
                format!("chardev '{name}' must be a unix socket chardev"),
            ))
        }
        None => {
            return Err(invalid(
                at,
                format!("chardev '{name}' is not defined (or already used)"),
            ))
        }
    };
    let tag = required(&list, at, "tag")?;
    if tag.len() > MAX_FS_TAG_LEN {
        return Err(invalid(
            at,
            format!("tag '{tag}' is longer than {MAX_FS_TAG_LEN} bytes"),
        ));
    }
    let num_request_queues = small_number(
        &list,
        at,
        "num-request-queues",
        1,
        |n| (1..=63).contains(&n),
        "1 to 63",
    )?;
    let queue_size = small_number(
        &list,
        at,
        "queue-size",
        128,
        |n| n.is_power_of_two() && (2..=1024).contains(&n),
        "a power of two from 2 to 1024",
    )?;
    Ok(DeviceConfig::VhostUserFs {
        id: list.get("id").unwrap_or(name).to_string(),
        chardev: name.to_string(),
        socket,
        tag: tag.to_string(),
        num_request_queues,
        queue_size,
    })
}

/// Resolves the device flags (and the JSON devices) into device configs.
/// Devices with the iothreads they run on.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    pub(crate) devices: Vec<DeviceConfig>,
    pub(crate) iothreads: Vec<String>,
    pub(crate) iothread_of: BTreeMap<String, String>,
}

/// Records `iothread=` of device `id` after checking the iothread exists.
fn assign_iothread(
    resolved: &mut Resolved,
    at: &str,
    id: &str,
    list: &OptionList,
) -> Result<(), ConfigError> {
    if let Some(t) = list.get("iothread") {
        if !resolved.iothreads.iter().any(|x| x == t) {
            return Err(invalid(
                at,
                format!("iothread '{t}' is not defined (add -object iothread,id={t})"),
            ));
        }
        resolved.iothread_of.insert(id.to_string(), t.to_string());
    }
    Ok(())
}

pub(crate) fn resolve(
    raw: &RawDeviceFlags,
    json_drives: Vec<DriveConfig>,
    json_nets: Vec<NetConfig>,
    json_vsock: Option<VsockConfig>,
    json_rng: Option<RngConfig>,
    json_balloon: Option<&JsonBalloon>,
) -> Result<Resolved, ConfigError> {
    let mut resolved = Resolved::default();
    let mut out: Vec<DeviceConfig> = Vec::new();
    for d in json_drives {
        out.push(DeviceConfig::Block {
            id: d.id.clone(),
            drive: d,
            serial: None,
        });
    }
    if let Some(v) = json_vsock {
        out.push(DeviceConfig::VhostVsock {
            id: v.id,
            guest_cid: v.guest_cid,
            vhostfd: None,
        });
    }
    for n in json_nets {
        out.push(DeviceConfig::Net {
            netdev: n.id.clone(),
            id: n.id,
            backend: NetBackend::TapName(n.host_dev_name),
            mac: n.mac,
            limits: n.limits,
        });
    }
    if let Some(r) = json_rng {
        out.push(DeviceConfig::Rng {
            id: "rng0".into(),
            path: r.random_file,
        });
    }
    out.extend(json_balloon.map(JsonBalloon::device));
    let mut drives: HashMap<String, DriveConfig> = HashMap::new();
    for d in &raw.drives {
        let drive = parse_drive(d)?;
        if drives.insert(drive.id.clone(), drive.clone()).is_some() {
            return Err(invalid(
                "-drive",
                format!("duplicate drive id '{}'", drive.id),
            ));
        }
    }
    let mut rngs = HashMap::new();
    for o in &raw.objects {
        parse_object(o, &mut rngs, &mut resolved.iothreads)?;
    }
    let mut chardevs = HashMap::new();
    for c in &raw.chardevs {
        let (id, backend) = parse_chardev(c)?;
        if chardevs.insert(id.clone(), backend).is_some() {
            return Err(invalid("-chardev", format!("duplicate chardev id '{id}'")));
        }
    }
    let mut netdevs = HashMap::new();
    for n in &raw.netdevs {
        let (id, backend, limits) = parse_netdev(n)?;
        if netdevs.insert(id.clone(), (backend, limits)).is_some() {
            return Err(invalid("-netdev", format!("duplicate netdev id '{id}'")));
        }
    }
    let mut serial_controller = false;
    for value in &raw.devices {
        let driver = value.split(',').next().unwrap_or_default();
        let at = format!("-device {driver}");
        let device = match driver {
            "virtio-blk-device" | "virtio-blk-mmio" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &[
                        "driver",
                        "id",
                        "drive",
                        "serial",
                        "bus",
                        "addr",
                        "iothread",
                        "num-queues",
                        "queue-size",
                    ],
                )?;
                let name = required(&list, &at, "drive")?;
                let drive = drives.remove(name).ok_or_else(|| {
                    invalid(
                        &at,
                        format!("drive '{name}' is not defined (or already used)"),
                    )
                })?;
                let serial = list.get("serial").map(str::to_string);
                if serial.as_ref().is_some_and(|s| s.len() > 20) {
                    return Err(invalid(&at, "serial is longer than 20 bytes"));
                }
                let id = list.get("id").unwrap_or(&drive.id).to_string();
                assign_iothread(&mut resolved, &at, &id, &list)?;
                DeviceConfig::Block { id, drive, serial }
            }
            "virtio-rng-device" | "virtio-rng-mmio" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &["driver", "id", "rng", "bus", "addr", "max-bytes", "period"],
                )?;
                let name = required(&list, &at, "rng")?;
                let path = rngs
                    .get(name)
                    .cloned()
                    .ok_or_else(|| invalid(&at, format!("rng object '{name}' is not defined")))?;
                DeviceConfig::Rng {
                    id: list.get("id").unwrap_or(name).to_string(),
                    path,
                }
            }
            "virtio-net-device" | "virtio-net-mmio" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &[
                        "driver", "id", "netdev", "mac", "bus", "addr", "mq", "vectors", "iothread",
                    ],
                )?;
                let name = required(&list, &at, "netdev")?;
                let (backend, limits) = netdevs.remove(name).ok_or_else(|| {
                    invalid(
                        &at,
                        format!("netdev '{name}' is not defined (or already used)"),
                    )
                })?;
                let mac = list.get("mac").map(str::to_string);
                if let Some(m) = &mac {
                    check_mac(&format!("{at} mac"), m)?;
                }
                let id = list.get("id").unwrap_or(name).to_string();
                assign_iothread(&mut resolved, &at, &id, &list)?;
                DeviceConfig::Net {
                    id,
                    netdev: name.to_string(),
                    backend,
                    mac,
                    limits,
                }
            }
            "vhost-vsock-device" | "vhost-vsock-mmio" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &["driver", "id", "guest-cid", "vhostfd", "bus", "addr"],
                )?;
                let guest_cid = parse_cid(&at, &list)?;
                let vhostfd = match list.get("vhostfd") {
                    None => None,
                    Some(text) => {
                        let fd: i32 = text
                            .parse()
                            .map_err(|_| invalid(&at, format!("invalid vhostfd '{text}'")))?;
                        // SAFETY: F_GETFD only queries the descriptor table.
                        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                            return Err(invalid(
                                &at,
                                format!("vhostfd {fd} is not an open inherited descriptor"),
                            ));
                        }
                        Some(fd)
                    }
                };
                DeviceConfig::VhostVsock {
                    id: required(&list, &at, "id")?.to_string(),
                    guest_cid,
                    vhostfd,
                }
            }
            "vsock-device" | "virtio-vsock-device" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &["driver", "id", "guest-cid", "uds-path", "bus", "addr"],
                )?;
                DeviceConfig::HybridVsock {
                    id: required(&list, &at, "id")?.to_string(),
                    guest_cid: parse_cid(&at, &list)?,
                    uds_path: PathBuf::from(required(&list, &at, "uds-path")?),
                }
            }
            "virtio-balloon-device" | "virtio-balloon-mmio" => parse_balloon_device(&at, value)?,
            "vhost-user-fs-device" | "vhost-user-fs-mmio" => {
                parse_vhost_user_fs(&at, value, &mut chardevs)?
            }
            "virtio-serial-device" | "virtio-serial-mmio" => {
                OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &["driver", "id", "bus", "addr", "max_ports"],
                )?;
                if serial_controller {
                    return Err(invalid(&at, "only one virtio-serial device is supported"));
                }
                serial_controller = true;
                continue;
            }
            "virtconsole" => {
                let list = OptionList::parse(
                    &at,
                    value,
                    Some("driver"),
                    &["driver", "id", "chardev", "nr", "name"],
                )?;
                if !serial_controller {
                    return Err(invalid(
                        &at,
                        "needs a -device virtio-serial-device before it",
                    ));
                }
                if list.get("nr").is_some_and(|n| n != "0") {
                    return Err(invalid(&at, "only port nr=0 is supported"));
                }
                let name = required(&list, &at, "chardev")?;
                let backend = chardevs.remove(name).ok_or_else(|| {
                    invalid(
                        &at,
                        format!("chardev '{name}' is not defined (or already used)"),
                    )
                })?;
                if matches!(backend, ChardevBackend::SocketClient(_)) {
                    return Err(invalid(
                        &at,
                        format!(
                            "chardev '{name}': socket chardevs must be servers (add server,nowait)"
                        ),
                    ));
                }
                DeviceConfig::Console {
                    id: list.get("id").unwrap_or(name).to_string(),
                    backend,
                }
            }
            other => return Err(invalid("-device", format!("unknown driver '{other}'"))),
        };
        if out.iter().any(|d| d.id() == device.id()) {
            return Err(invalid(
                at,
                format!("duplicate device id '{}'", device.id()),
            ));
        }
        out.push(device);
    }
    resolved.devices = out;
    Ok(resolved)
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
