//! Network hotplug into pre-created slots: virtio-net devices made at boot
//! (`-machine microvm,net-slots=N`, default 2), the NICs given at boot in
//! slots 0, 1, … and the rest empty with their link down, as the block
//! slots of [`crate::hotplug`]. A boot NIC's `-netdev` is a netdev like
//! one from `netdev_add`: `device_del` hands its TAP back to it.
//!
//! `netdev_add` opens a TAP back-end (a descriptor passed with `getfd`, or
//! an interface by name); `device_add` plugs it into a free slot (or the
//! one named by `addr`) with the MAC asked for, which brings the slot's
//! link up; `device_del` takes the link down and hands the TAP back to its
//! netdev; `netdev_del` closes it.
//!
//! Rate limits belong to the netdev (`-netdev tap,rx_…,tx_…`, or the same
//! keys given to `netdev_add`): the slot's NIC takes them when the netdev
//! is plugged in and drops them when it is unplugged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio::net::{parse_mac, FrameIo, Net, NetError, NetLimits, Tap};

use crate::hotplug_request::{DeviceRequest, FdSource, HotplugError, TapRequest};

/// A back-end defined with `netdev_add`: the TAP while no device uses
/// it, or the id of the device that holds it.
enum Netdev {
    /// Not plugged into any slot.
    Free(Arc<dyn FrameIo>),
    /// Plugged in; the device holds the TAP.
    InUse(String),
}

/// One pre-created network slot.
pub struct NetSlot {
    net: Arc<Mutex<Net>>,
    base: u64,
    /// Device id and netdev id, while filled.
    device: Option<(String, String)>,
}

impl NetSlot {
    /// An empty slot served by `net`, whose window starts at `base`.
    pub fn new(net: Arc<Mutex<Net>>, base: u64) -> Self {
        NetSlot {
            net,
            base,
            device: None,
        }
    }

    /// A slot holding the boot NIC `device` on the TAP of `netdev`
    /// (already plugged into `net`).
    pub fn with_boot_nic(net: Arc<Mutex<Net>>, base: u64, device: &str, netdev: &str) -> Self {
        NetSlot {
            net,
            base,
            device: Some((device.to_string(), netdev.to_string())),
        }
    }
}

/// Where a netdev's TAP came from (what a restore needs to re-open it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The command line (`-netdev`): recreated by it.
    Boot,
    /// `netdev_add ifname=`.
    Named(String),
    /// `netdev_add fd=` (a descriptor from `getfd`).
    Fd,
}

/// Network hotplug state: netdevs and slots.
#[derive(Default)]
pub struct NetHotplug {
    netdevs: BTreeMap<String, Netdev>,
    origins: BTreeMap<String, Origin>,
    /// Each netdev's rate limits (none when absent).
    limits: BTreeMap<String, NetLimits>,
    slots: Vec<NetSlot>,
}

fn generic(desc: impl Into<String>) -> HotplugError {
    HotplugError::refused(desc)
}

/// Parses `addr` (slot index, decimal or `0x` hex).
fn parse_slot_addr(addr: &str) -> Result<usize, HotplugError> {
    addr.strip_prefix("0x")
        .map_or_else(|| addr.parse::<usize>(), |h| usize::from_str_radix(h, 16))
        .map_err(|_| generic(format!("Invalid addr '{addr}'")))
}

/// The slot `device_add` fills, given which slots are `free`: the one
/// `addr` names (which must exist and be free), or else the first free one.
/// `kind` names the slots in errors ("block", "network") and `taken` starts
/// the message for a slot in use ("Slot", "Network slot").
pub(crate) fn choose_slot(
    addr: Option<&str>,
    free: &[bool],
    kind: &str,
    taken: &str,
) -> Result<usize, HotplugError> {
    match addr {
        Some(addr) => {
            let index = parse_slot_addr(addr)?;
            match free.get(index) {
                None => Err(generic(format!(
                    "addr {index} is out of range: this VM has {} {kind} slots",
                    free.len()
                ))),
                Some(false) => Err(generic(format!("{taken} {index} is already in use"))),
                Some(true) => Ok(index),
            }
        }
        None => free
            .iter()
            .position(|&f| f)
            .ok_or_else(|| generic(format!("No free {kind} slot (all {} in use)", free.len()))),
    }
}

impl NetHotplug {
    /// State for `slots`, in slot order (boot NICs included: their
    /// netdevs are in use).
    pub fn new(slots: Vec<NetSlot>) -> Self {
        let netdevs = slots
            .iter()
            .filter_map(|s| s.device.as_ref())
            .map(|(dev, netdev)| (netdev.clone(), Netdev::InUse(dev.clone())))
            .collect::<BTreeMap<_, _>>();
        let origins = netdevs.keys().map(|k| (k.clone(), Origin::Boot)).collect();
        // A boot NIC was built with its -netdev's limits.
        let limits = slots
            .iter()
            .filter_map(|s| Some((s.device.as_ref()?.1.clone(), locked(&s.net).limits())))
            .collect();
        NetHotplug {
            netdevs,
            origins,
            limits,
            slots,
        }
    }

    /// Whether a hot-plugged network device has this id.
    pub fn has_device(&self, id: &str) -> bool {
        self.slots
            .iter()
            .any(|s| s.device.as_ref().is_some_and(|d| d.0 == id))
    }

    /// `netdev_add`; descriptors named by `fd`/`fds` come from `getfd`.
    pub fn netdev_add(
        &mut self,
        tap: &TapRequest,
        fds: &mut dyn FdSource,
    ) -> Result<(), HotplugError> {
        let id = &tap.id;
        if self.netdevs.contains_key(id) {
            return Err(generic(format!("Duplicate ID '{id}' for netdev")));
        }
        if tap.vhost {
            return Err(generic(format!(
                "netdev '{id}': vhost-net is not supported; use vhost=off"
            )));
        }
        if tap.queues.is_some_and(|q| q > 1) {
            return Err(generic(format!(
                "netdev '{id}': only one queue pair is supported (queues=1)"
            )));
        }
        for (key, given) in [("script", &tap.script), ("downscript", &tap.downscript)] {
            if given.as_deref().is_some_and(|s| s != "no") {
                return Err(generic(format!(
                    "netdev '{id}': {key} is not supported; configure the TAP before passing it"
                )));
            }
        }
        let names = &tap.fd_names;
        let origin = match &tap.ifname {
            Some(name) if names.is_empty() => Origin::Named(name.clone()),
            _ => Origin::Fd,
        };
        let opened = match (names.as_slice(), &tap.ifname) {
            ([], None) => {
                return Err(generic(format!(
                    "netdev '{id}': one of 'fd', 'fds' or 'ifname' is required"
                )))
            }
            ([_, _, ..], _) => {
                return Err(generic(format!(
                    "netdev '{id}': {} tap fds given; only one queue pair is supported",
                    names.len()
                )))
            }
            ([_], Some(_)) => {
                return Err(generic(format!(
                    "netdev '{id}': 'ifname' and 'fd'/'fds' are mutually exclusive"
                )))
            }
            ([name], None) => {
                let fd = fds.take_fd(name).ok_or_else(|| {
                    generic(format!("File descriptor named '{name}' has not been found"))
                })?;
                Tap::from_fd(fd)
            }
            ([], Some(ifname)) => Tap::open_named(ifname),
        }
        .map_err(|e| generic(format!("netdev '{id}': {e}")))?;
        log::info!("netdev '{id}' on TAP {}", opened.if_name());
        self.netdevs
            .insert(id.clone(), Netdev::Free(Arc::new(opened)));
        self.origins.insert(id.clone(), origin);
        self.limits.insert(id.clone(), tap.limits);
        Ok(())
    }

    /// `netdev_del`: closes an unused back-end.
    pub fn netdev_del(&mut self, id: &str) -> Result<(), HotplugError> {
        match self.netdevs.get(id) {
            None => Err(HotplugError::NotFound(format!("Device '{id}' not found"))),
            Some(Netdev::InUse(dev)) => Err(generic(format!(
                "netdev '{id}' is in use by device '{dev}'; device_del it first"
            ))),
            Some(_) => {
                self.netdevs.remove(id);
                self.origins.remove(id);
                self.limits.remove(id);
                Ok(())
            }
        }
    }

    /// `device_add` for virtio-net drivers; `id` is already checked unique.
    pub fn device_add(&mut self, id: &str, args: &DeviceRequest) -> Result<(), HotplugError> {
        if let Some(key) = &args.unknown_property {
            return Err(generic(format!(
                "Property '{}.{key}' not found",
                args.driver
            )));
        }
        for (key, given) in [
            ("drive", args.drive.is_some()),
            ("serial", args.serial.is_some()),
            ("logical_block_size", args.logical_block_size.is_some()),
            ("physical_block_size", args.physical_block_size.is_some()),
        ] {
            if given {
                return Err(generic(format!(
                    "Property '{}.{key}' not found",
                    args.driver
                )));
            }
        }
        let netdev_id = args
            .netdev
            .clone()
            .ok_or_else(|| generic("Parameter 'netdev' is missing"))?;
        let mac = args
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| generic(format!("Property '{}.mac': {e}", args.driver)))?;
        let netdev = self.netdevs.get(&netdev_id).ok_or_else(|| {
            generic(format!(
                "Property '{}.netdev' can't find value '{netdev_id}'",
                args.driver
            ))
        })?;
        let io = match netdev {
            Netdev::InUse(user) => {
                return Err(generic(format!(
                    "netdev '{netdev_id}' is already in use by '{user}'"
                )))
            }
            Netdev::Free(io) => io.clone(),
        };
        let free: Vec<bool> = self.slots.iter().map(|s| s.device.is_none()).collect();
        let index = choose_slot(args.addr.as_deref(), &free, "network", "Network slot")?;
        let limits = self.limits.get(&netdev_id).copied().unwrap_or_default();
        let slot = &mut self.slots[index];
        locked(&slot.net)
            .attach(io, mac, limits)
            .map_err(|e| match e {
                NetError::InvalidMac { .. } => {
                    generic(format!("Property '{}.mac': {e}", args.driver))
                }
                other => generic(format!("netdev '{netdev_id}': {other}")),
            })?;
        slot.device = Some((id.to_string(), netdev_id.clone()));
        // The device holds the only other reference now.
        self.netdevs
            .insert(netdev_id.clone(), Netdev::InUse(id.to_string()));
        log::info!(
            "hotplug: '{id}' ({netdev_id}) in network slot {index} at {:#x}",
            slot.base
        );
        Ok(())
    }

    /// `device_del` of a network device; `None` if no slot holds `id`.
    pub fn device_del(&mut self, id: &str) -> Option<Result<String, HotplugError>> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.device.as_ref().is_some_and(|d| d.0 == id))?;
        let io = match slot.net.lock().unwrap_or_else(|p| p.into_inner()).detach() {
            Ok(io) => io,
            Err(e) => return Some(Err(generic(e.to_string()))),
        };
        if let Some((_, netdev)) = slot.device.take() {
            self.netdevs.insert(netdev, Netdev::Free(io));
        }
        Some(Ok(format!("/machine/peripheral/{id}")))
    }
}

/// A netdev as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetdevState {
    /// Netdev id.
    pub id: String,
    /// The TAP interface to re-open; `None` for a command-line netdev.
    pub ifname: Option<String>,
    /// Rate limits given to `netdev_add` (a command-line netdev gets its
    /// own from the command line). Absent in older snapshots: none.
    #[serde(default)]
    pub limits: NetLimits,
}

/// A filled network slot as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSlotState {
    /// Device id.
    pub id: String,
    /// Netdev id.
    pub netdev: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// Network hotplug state: netdevs and slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetHotplugState {
    /// Every netdev.
    pub netdevs: Vec<NetdevState>,
    /// Every slot, in order.
    pub slots: Vec<Option<NetSlotState>>,
}

fn locked(n: &Arc<Mutex<Net>>) -> std::sync::MutexGuard<'_, Net> {
    n.lock().unwrap_or_else(|p| p.into_inner())
}

impl NetHotplug {
    /// The state to save; refuses a TAP passed as a descriptor (nothing
    /// could re-open it).
    pub fn save_state(&self) -> Result<NetHotplugState, String> {
        let mut netdevs = Vec::new();
        for id in self.netdevs.keys() {
            let ifname = match self.origins.get(id) {
                Some(Origin::Boot) => None,
                Some(Origin::Named(n)) => Some(n.clone()),
                Some(Origin::Fd) | None => {
                    return Err(format!(
                        "netdev '{id}': its TAP was passed as a file descriptor and cannot be \
                         re-opened on restore (use ifname=, or netdev_del it first)"
                    ))
                }
            };
            netdevs.push(NetdevState {
                id: id.clone(),
                ifname,
                limits: self.limits.get(id).copied().unwrap_or_default(),
            });
        }
        let slots = self
            .slots
            .iter()
            .map(|s| {
                s.device.as_ref().map(|(id, netdev)| NetSlotState {
                    id: id.clone(),
                    netdev: netdev.clone(),
                    mac: locked(&s.net).mac(),
                })
            })
            .collect();
        Ok(NetHotplugState { netdevs, slots })
    }

    /// Makes netdevs and slots what `s` says (the VM was just built from
    /// the same command line): unplugs boot NICs that were gone,
    /// re-opens hot-added TAPs by name and plugs them into their slots
    /// with their MAC addresses.
    pub fn restore_state(&mut self, s: &NetHotplugState) -> Result<(), String> {
        if s.slots.len() != self.slots.len() {
            return Err(format!(
                "{} network slots saved, {} here",
                s.slots.len(),
                self.slots.len()
            ));
        }
        let gone: Vec<String> = self
            .slots
            .iter()
            .zip(&s.slots)
            .filter_map(|(slot, saved)| {
                let (id, netdev) = slot.device.as_ref()?;
                let same = saved
                    .as_ref()
                    .is_some_and(|d| &d.id == id && &d.netdev == netdev);
                (!same).then(|| id.clone())
            })
            .collect();
        for id in gone {
            if let Some(Err(e)) = self.device_del(&id) {
                return Err(format!("unplugging '{id}': {e}"));
            }
        }
        let extra: Vec<String> = self
            .netdevs
            .keys()
            .filter(|k| !s.netdevs.iter().any(|n| &n.id == *k))
            .cloned()
            .collect();
        for id in extra {
            self.netdev_del(&id)
                .map_err(|e| format!("netdev '{id}': {e}"))?;
        }
        for n in &s.netdevs {
            if self.netdevs.contains_key(&n.id) {
                continue;
            }
            let Some(ifname) = &n.ifname else {
                return Err(format!("netdev '{}' is not on this command line", n.id));
            };
            let tap = Tap::open_named(ifname).map_err(|e| format!("netdev '{}': {e}", n.id))?;
            self.netdevs
                .insert(n.id.clone(), Netdev::Free(Arc::new(tap)));
            self.origins
                .insert(n.id.clone(), Origin::Named(ifname.clone()));
            self.limits.insert(n.id.clone(), n.limits);
        }
        for (index, saved) in s.slots.iter().enumerate() {
            let Some(d) = saved else { continue };
            let slot = &mut self.slots[index];
            if slot.device.is_some() {
                continue;
            }
            let io = match self.netdevs.get(&d.netdev) {
                Some(Netdev::Free(io)) => io.clone(),
                _ => return Err(format!("netdev '{}' is not free for '{}'", d.netdev, d.id)),
            };
            let limits = self.limits.get(&d.netdev).copied().unwrap_or_default();
            locked(&slot.net)
                .attach(io, Some(d.mac), limits)
                .map_err(|e| format!("'{}' in network slot {index}: {e}", d.id))?;
            slot.device = Some((d.id.clone(), d.netdev.clone()));
            self.netdevs
                .insert(d.netdev.clone(), Netdev::InUse(d.id.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(r: Result<usize, HotplugError>) -> String {
        format!("{:?}", r.unwrap_err())
    }

    #[test]
    fn slot_choice_by_addr_or_first_free() {
        let free = [false, true, true];
        assert_eq!(choose_slot(None, &free, "block", "Slot").unwrap(), 1);
        assert_eq!(choose_slot(Some("0x2"), &free, "block", "Slot").unwrap(), 2);
        assert!(desc(choose_slot(Some("0"), &free, "block", "Slot"))
            .contains("Slot 0 is already in use"));
        assert!(
            desc(choose_slot(Some("3"), &free, "network", "Network slot"))
                .contains("addr 3 is out of range: this VM has 3 network slots")
        );
        assert!(desc(choose_slot(Some("x"), &free, "block", "Slot")).contains("Invalid addr 'x'"));
        assert!(desc(choose_slot(None, &[false], "network", "Network slot"))
            .contains("No free network slot (all 1 in use)"));
    }

    struct FakeTap(vmm_sys_util::eventfd::EventFd, String);
    impl std::os::fd::AsRawFd for FakeTap {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.0.as_raw_fd()
        }
    }
    impl FrameIo for FakeTap {
        fn name(&self) -> &str {
            &self.1
        }
        fn send(&self, _frame: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn recv(&self, _buf: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }

    fn fake(name: &str) -> Arc<dyn FrameIo> {
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Arc::new(FakeTap(efd, name.to_string()))
    }

    #[test]
    fn snapshot_refuses_a_tap_passed_as_descriptor_and_records_named_ones() {
        let mut hp = NetHotplug::new(vec![]);
        hp.netdevs.insert("n0".into(), Netdev::Free(fake("tap0")));
        hp.origins.insert("n0".into(), Origin::Named("tap0".into()));
        let limits = NetLimits {
            rx: virtio::rate_limiter::RateLimitConfig {
                ops: virtio::rate_limiter::BucketConfig::per_second(100, 5),
                ..Default::default()
            },
            ..Default::default()
        };
        hp.limits.insert("n0".into(), limits);
        let s = hp.save_state().unwrap();
        assert_eq!(
            s.netdevs,
            vec![NetdevState {
                id: "n0".into(),
                ifname: Some("tap0".into()),
                limits,
            }]
        );
        // Snapshots from before limits were saved read as no limits.
        let old: NetdevState = serde_json::from_str(r#"{"id": "n0", "ifname": "tap0"}"#).unwrap();
        assert_eq!(old.limits, NetLimits::default());
        hp.netdevs.insert("n1".into(), Netdev::Free(fake("tap1")));
        hp.origins.insert("n1".into(), Origin::Fd);
        let e = hp.save_state().unwrap_err();
        assert!(
            e.starts_with("netdev 'n1': its TAP was passed as a file descriptor"),
            "{e}"
        );
        hp.netdev_del("n1").unwrap();
        assert!(hp.save_state().is_ok(), "origin forgotten with the netdev");
        hp.netdev_del("n0").unwrap();
        assert!(hp.limits.is_empty(), "limits forgotten with the netdev");
    }

    #[test]
    fn restore_drops_netdevs_deleted_before_the_snapshot() {
        let mut hp = NetHotplug::new(vec![]);
        hp.netdevs.insert("boot".into(), Netdev::Free(fake("tapb")));
        hp.origins.insert("boot".into(), Origin::Boot);
        let saved = NetHotplugState {
            netdevs: vec![],
            slots: vec![],
        };
        hp.restore_state(&saved).unwrap();
        assert!(hp.netdevs.is_empty());
        let saved = NetHotplugState {
            netdevs: vec![NetdevState {
                id: "other".into(),
                ifname: None,
                limits: NetLimits::default(),
            }],
            slots: vec![],
        };
        assert_eq!(
            hp.restore_state(&saved).unwrap_err(),
            "netdev 'other' is not on this command line"
        );
    }
}
