//! Block hotplug into pre-created slots, as StratoVirt's microVM does it:
//! there is no PCI and no ACPI hotplug, so virtio-blk devices are created
//! at boot (`-machine microvm,blk-slots=N`, default 4), the disks given at
//! boot in slots 0, 1, … and the rest empty, and QMP fills and empties
//! them. Slot i is the guest's i-th virtio-blk device (`/dev/vd` + the
//! i-th letter), which is what Kata's `addr` means. The guest learns of a
//! change through a configuration-change interrupt and the new capacity.
//!
//! `blockdev-add` defines a node (an image); `device_add` puts a node into
//! a free slot (or the slot named by `addr`); `device_del` quiesces the
//! device, flushes and releases the image, then emits `DEVICE_DELETED`;
//! `blockdev-del` forgets an unused node. A boot disk's `-drive` is a node
//! too, deleted with its device (as QEMU does with `-drive`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use machine_manager::config::DriveConfig;
use serde::{Deserialize, Serialize};
use virtio::block::{Block, BlockConfig, BlockError};
use virtio::rate_limiter::RateLimitConfig;

use crate::hotplug_request::{
    BlockEntry, BlockdevRequest, DeviceRequest, FdSource, HotplugError, ImageInfo, ImageSource,
    TapRequest,
};
use crate::net_hotplug::{choose_slot, NetHotplug};

/// Everything QMP can plug: block and network slots, whose device ids
/// share one namespace with the devices created at boot.
pub struct Hotplug {
    /// Block nodes and slots.
    pub block: BlockHotplug,
    /// Network back-ends and slots.
    pub net: NetHotplug,
}

impl Hotplug {
    /// `device_add`: dispatches on the driver.
    pub fn device_add(&mut self, args: &DeviceRequest) -> Result<(), HotplugError> {
        match args.driver.as_str() {
            "virtio-blk-mmio" | "virtio-blk-device" => {
                if let Some(id) = &args.id {
                    if self.net.has_device(id) {
                        return Err(generic(format!("Duplicate device ID '{id}'")));
                    }
                }
                self.block.device_add(args)
            }
            "virtio-net-mmio" | "virtio-net-device" => {
                let id = args
                    .id
                    .clone()
                    .ok_or_else(|| generic("Parameter 'id' is missing"))?;
                if self.block.has_device(&id) || self.net.has_device(&id) {
                    return Err(generic(format!("Duplicate device ID '{id}'")));
                }
                self.net.device_add(&id, args)
            }
            other => Err(generic(format!(
                "device_add: driver '{other}' cannot be hot-plugged into a microVM \
                 (use virtio-blk-mmio or virtio-net-mmio)"
            ))),
        }
    }

    /// `device_del`: returns the QMP path of the removed device.
    pub fn device_del(&mut self, id: &str) -> Result<String, HotplugError> {
        match self.net.device_del(id) {
            Some(result) => result,
            None => self.block.device_del(id),
        }
    }

    /// `netdev_add`.
    pub fn netdev_add(
        &mut self,
        args: &TapRequest,
        fds: &mut dyn FdSource,
    ) -> Result<(), HotplugError> {
        self.net.netdev_add(args, fds)
    }
}

/// An image defined with `blockdev-add`.
#[derive(Debug, Clone)]
struct Node {
    path: PathBuf,
    read_only: bool,
    direct: bool,
    /// Device id using it, if any.
    user: Option<String>,
    /// Defined by `-drive` (or the JSON file): deleted with its device.
    boot: bool,
}

/// A disk created at boot (`-drive` + `-device virtio-blk-device`, or the
/// JSON file), as `query-block` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Device id.
    pub device: String,
    /// Drive id (QEMU's block backend name).
    pub drive: String,
    /// Image path.
    pub path: PathBuf,
    /// Read-only (`readonly=on`).
    pub read_only: bool,
    /// O_DIRECT (`direct=on`).
    pub direct: bool,
}

/// One pre-created slot.
pub struct Slot {
    block: Arc<Mutex<Block>>,
    base: u64,
    /// Device id and node name, while filled.
    device: Option<(String, String)>,
    /// The `-drive` node of a boot disk, until the hotplug state takes it.
    boot_node: Option<Node>,
}

impl Slot {
    /// An empty slot served by `block`, whose window starts at `base`.
    pub fn new(block: Arc<Mutex<Block>>, base: u64) -> Self {
        Slot {
            block,
            base,
            device: None,
            boot_node: None,
        }
    }

    /// A slot holding the boot disk `device` on `drive` (already opened
    /// by `block`).
    pub fn with_boot_disk(
        block: Arc<Mutex<Block>>,
        base: u64,
        device: &str,
        drive: &DriveConfig,
    ) -> Self {
        Slot {
            block,
            base,
            device: Some((device.to_string(), drive.id.clone())),
            boot_node: Some(Node {
                path: drive.path.clone(),
                read_only: drive.read_only,
                direct: drive.direct,
                user: Some(device.to_string()),
                boot: true,
            }),
        }
    }
}

/// The hotplug state of a VM: nodes and slots, behind one lock.
#[derive(Default)]
pub struct BlockHotplug {
    nodes: BTreeMap<String, Node>,
    slots: Vec<Slot>,
    /// Ids of devices created at boot outside the slots (cannot be reused
    /// or deleted).
    cold_ids: Vec<String>,
    /// The disks among them.
    boot_disks: Vec<BootDisk>,
    /// Their models, by device id (for run-time I/O limits).
    fixed_blocks: Vec<(String, Arc<Mutex<Block>>)>,
}

fn generic(desc: impl Into<String>) -> HotplugError {
    HotplugError::refused(desc)
}

/// The image path of a new node and the read-only and O_DIRECT defaults
/// it takes from the node or inline definition it refers to.
fn node_file(
    source: &ImageSource,
    nodes: &BTreeMap<String, Node>,
) -> Result<(PathBuf, Option<bool>, Option<bool>), HotplugError> {
    match source {
        ImageSource::Path(path) => Ok((path.clone(), None, None)),
        ImageSource::Node(name) => nodes
            .get(name)
            .map(|n| (n.path.clone(), Some(n.read_only), Some(n.direct)))
            .ok_or_else(|| generic(format!("Cannot find device='' nor node-name='{name}'"))),
        ImageSource::Nested {
            source,
            read_only,
            direct,
        } => {
            let (path, _, _) = node_file(source, nodes)?;
            Ok((path, *read_only, *direct))
        }
    }
}

/// `blockdev-add` only accepts what can be an image: a regular file or a
/// block device (checked with stat, which never blocks, unlike opening a
/// FIFO). The open at `device_add` checks again on the descriptor.
fn check_image_type(path: &std::path::Path) -> Result<(), HotplugError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| generic(format!("Could not open '{}': {e}", path.display())))?;
    let kind = meta.file_type();
    if kind.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
        Ok(())
    } else {
        Err(generic(format!(
            "'{}' is not a regular file or block device",
            path.display()
        )))
    }
}

impl BlockHotplug {
    /// State for `slots` (in slot order, boot disks included), the ids of
    /// the devices created at boot outside the slots, and the disks among
    /// those (fixed windows with `blk-slots=0`), listed by `query-block`.
    pub fn new(mut slots: Vec<Slot>, cold_ids: Vec<String>, boot_disks: Vec<BootDisk>) -> Self {
        let mut nodes = BTreeMap::new();
        for slot in &mut slots {
            if let (Some(node), Some((_, name))) = (slot.boot_node.take(), &slot.device) {
                nodes.insert(name.clone(), node);
            }
        }
        BlockHotplug {
            nodes,
            slots,
            cold_ids,
            boot_disks,
            fixed_blocks: Vec::new(),
        }
    }

    /// Adds the models of the disks outside the slots.
    pub fn with_fixed_blocks(mut self, blocks: Vec<(String, Arc<Mutex<Block>>)>) -> Self {
        self.fixed_blocks = blocks;
        self
    }

    /// `block_set_io_throttle`: new I/O limits for the disk `id`, in force
    /// at once.
    pub fn set_io_limits(&self, id: &str, limits: RateLimitConfig) -> Result<(), HotplugError> {
        let from_slot = self
            .slots
            .iter()
            .find(|s| s.device.as_ref().is_some_and(|d| d.0 == id))
            .map(|s| &s.block);
        let block = from_slot
            .or_else(|| self.fixed_blocks.iter().find(|b| b.0 == id).map(|b| &b.1))
            .ok_or_else(|| generic(format!("Device '{id}' not found")))?;
        block
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_rate_limit(limits)
            .map_err(|e| generic(format!("{id}: {e}")))
    }

    /// Whether a boot-time or hot-plugged block device has this id.
    pub fn has_device(&self, id: &str) -> bool {
        self.cold_ids.iter().any(|c| c == id)
            || self
                .slots
                .iter()
                .any(|s| s.device.as_ref().is_some_and(|d| d.0 == id))
    }

    /// `blockdev-add`.
    pub fn blockdev_add(&mut self, args: &BlockdevRequest) -> Result<(), HotplugError> {
        let name = &args.node_name;
        if self.nodes.contains_key(name) {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
        let (path, child_ro, child_direct) = node_file(&args.source, &self.nodes)?;
        check_image_type(&path)?;
        let read_only = args.read_only.or(child_ro).unwrap_or(false);
        let direct = args.direct.or(child_direct).unwrap_or(false);
        self.nodes.insert(
            name.clone(),
            Node {
                path,
                read_only,
                direct,
                user: None,
                boot: false,
            },
        );
        Ok(())
    }

    /// `blockdev-del`.
    pub fn blockdev_del(&mut self, name: &str) -> Result<(), HotplugError> {
        match self.nodes.get(name) {
            None => Err(generic(format!(
                "Failed to find node with node-name='{name}'"
            ))),
            Some(Node {
                user: Some(dev), ..
            }) => Err(generic(format!(
                "Node '{name}' is busy: node is used as backing hd of device '{dev}'"
            ))),
            Some(_) => {
                self.nodes.remove(name);
                Ok(())
            }
        }
    }

    /// `device_add` for virtio-blk drivers.
    pub fn device_add(&mut self, args: &DeviceRequest) -> Result<(), HotplugError> {
        if let Some(key) = &args.unknown_property {
            return Err(generic(format!(
                "Property '{}.{key}' not found",
                args.driver
            )));
        }
        for (what, size) in [
            ("logical_block_size", args.logical_block_size),
            ("physical_block_size", args.physical_block_size),
        ] {
            if size.is_some_and(|s| s != 512) {
                return Err(generic(format!(
                    "{what}: only 512-byte blocks are supported"
                )));
            }
        }
        let id = args
            .id
            .clone()
            .ok_or_else(|| generic("Parameter 'id' is missing"))?;
        if self.has_device(&id) {
            return Err(generic(format!("Duplicate device ID '{id}'")));
        }
        let drive = args
            .drive
            .clone()
            .ok_or_else(|| generic("Parameter 'drive' is missing"))?;
        let node = self.nodes.get(&drive).ok_or_else(|| {
            generic(format!(
                "Property '{}.drive' can't find value '{drive}'",
                args.driver
            ))
        })?;
        if let Some(user) = &node.user {
            return Err(generic(format!(
                "Drive '{drive}' is already in use by '{user}'"
            )));
        }
        let free: Vec<bool> = self.slots.iter().map(|s| s.device.is_none()).collect();
        let index = choose_slot(args.addr.as_deref(), &free, "block", "Slot")?;
        let config = BlockConfig {
            path: node.path.clone(),
            read_only: node.read_only,
            direct: node.direct,
            serial: args.serial.clone(),
            rate_limit: Default::default(),
        };
        let slot = &mut self.slots[index];
        slot.block
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach(config)
            .map_err(|e| generic(e.to_string()))?;
        slot.device = Some((id.clone(), drive.clone()));
        if let Some(n) = self.nodes.get_mut(&drive) {
            n.user = Some(id.clone());
        }
        log::info!(
            "hotplug: '{id}' ({drive}) in slot {index} at {:#x}",
            slot.base
        );
        Ok(())
    }

    /// `device_del`: returns the QMP path of the removed device.
    pub fn device_del(&mut self, id: &str) -> Result<String, HotplugError> {
        if self.cold_ids.iter().any(|c| c == id) {
            return Err(generic(format!(
                "Device '{id}' was created at boot and cannot be unplugged"
            )));
        }
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.device.as_ref().is_some_and(|d| d.0 == id))
            .ok_or_else(|| HotplugError::NotFound(format!("Device '{id}' not found")))?;
        let detached = slot
            .block
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .detach();
        match detached {
            Ok(_) => {}
            // The image is closed and the slot empty: the device is gone
            // even though its last writes may not be durable. Say so, and
            // free the slot.
            Err(e @ BlockError::Flush { .. }) => {
                log::error!("device_del '{id}': {e}; the device is removed anyway");
            }
            Err(e) => return Err(generic(e.to_string())),
        }
        if let Some((_, node)) = slot.device.take() {
            if self.nodes.get(&node).is_some_and(|n| n.boot) {
                self.nodes.remove(&node);
            } else if let Some(n) = self.nodes.get_mut(&node) {
                n.user = None;
            }
        }
        Ok(format!("/machine/peripheral/{id}"))
    }

    /// `query-block`: the boot-time disks (as QEMU lists `-drive` disks),
    /// then every slot, filled or not.
    pub fn query_block(&self) -> Vec<BlockEntry> {
        let boot = self.boot_disks.iter().map(|d| BlockEntry::Boot {
            device: d.device.clone(),
            drive: d.drive.clone(),
            image: ImageInfo {
                path: d.path.clone(),
                read_only: d.read_only,
                direct: d.direct,
            },
        });
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, s)| BlockEntry::Slot {
                index,
                filled: s.device.as_ref().map(|(id, node)| {
                    let image = self.nodes.get(node).map(|n| ImageInfo {
                        path: n.path.clone(),
                        read_only: n.read_only,
                        direct: n.direct,
                    });
                    (id.clone(), node.clone(), image)
                }),
            });
        boot.chain(slots).collect()
    }
}

/// An image node as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Image path (re-opened on restore).
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// Defined on the command line (`-drive`).
    pub boot: bool,
}

/// A filled block slot as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDiskState {
    /// Device id.
    pub id: String,
    /// Node name.
    pub node: String,
    /// GET_ID serial.
    pub serial: Option<String>,
    /// Capacity in sectors (the image must not have changed size).
    pub capacity: u64,
    /// I/O limits in force (buckets restart full).
    pub rate_limit: RateLimitConfig,
}

/// Block hotplug state: nodes, slots and the limits of the other disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHotplugState {
    /// Every node.
    pub nodes: Vec<NodeState>,
    /// Every slot, in order.
    pub slots: Vec<Option<SlotDiskState>>,
    /// Disks outside the slots: id, capacity and I/O limits.
    pub fixed: Vec<(String, u64, RateLimitConfig)>,
}

fn locked(b: &Arc<Mutex<Block>>) -> std::sync::MutexGuard<'_, Block> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlockHotplug {
    /// The state to save.
    pub fn save_state(&self) -> BlockHotplugState {
        BlockHotplugState {
            nodes: self
                .nodes
                .iter()
                .map(|(name, n)| NodeState {
                    name: name.clone(),
                    path: n.path.clone(),
                    read_only: n.read_only,
                    direct: n.direct,
                    boot: n.boot,
                })
                .collect(),
            slots: self
                .slots
                .iter()
                .map(|s| {
                    s.device.as_ref().map(|(id, node)| {
                        let b = locked(&s.block);
                        SlotDiskState {
                            id: id.clone(),
                            node: node.clone(),
                            serial: b.serial(),
                            capacity: b.capacity(),
                            rate_limit: b.rate_limit(),
                        }
                    })
                })
                .collect(),
            fixed: self
                .fixed_blocks
                .iter()
                .map(|(id, b)| {
                    let b = locked(b);
                    (id.clone(), b.capacity(), b.rate_limit())
                })
                .collect(),
        }
    }

    /// Makes nodes and slots what `s` says (the VM was just built from
    /// the same command line): unplugs boot disks that were gone, defines
    /// the saved nodes, re-opens hot-plugged images into their slots, and
    /// sets the I/O limits. Errors name the slot or device.
    pub fn restore_state(&mut self, s: &BlockHotplugState) -> Result<(), String> {
        if s.slots.len() != self.slots.len() {
            return Err(format!(
                "{} block slots saved, {} here",
                s.slots.len(),
                self.slots.len()
            ));
        }
        // Devices here that the snapshot does not have in the same slot
        // (boot disks unplugged before the snapshot).
        let gone: Vec<String> = self
            .slots
            .iter()
            .zip(&s.slots)
            .filter_map(|(slot, saved)| {
                let (id, node) = slot.device.as_ref()?;
                let same = saved
                    .as_ref()
                    .is_some_and(|d| &d.id == id && &d.node == node);
                (!same).then(|| id.clone())
            })
            .collect();
        for id in gone {
            self.device_del(&id)
                .map_err(|e| format!("unplugging '{id}': {e}"))?;
        }
        for n in &s.nodes {
            if self.nodes.contains_key(&n.name) {
                continue;
            }
            if n.boot {
                return Err(format!("drive '{}' is not on this command line", n.name));
            }
            self.nodes.insert(
                n.name.clone(),
                Node {
                    path: n.path.clone(),
                    read_only: n.read_only,
                    direct: n.direct,
                    user: None,
                    boot: false,
                },
            );
        }
        for (index, saved) in s.slots.iter().enumerate() {
            let Some(d) = saved else { continue };
            let slot = &mut self.slots[index];
            if slot.device.is_none() {
                let node = self
                    .nodes
                    .get_mut(&d.node)
                    .ok_or_else(|| format!("slot {index}: node '{}' not saved", d.node))?;
                locked(&slot.block)
                    .attach(BlockConfig {
                        path: node.path.clone(),
                        read_only: node.read_only,
                        direct: node.direct,
                        serial: d.serial.clone(),
                        rate_limit: d.rate_limit,
                    })
                    .map_err(|e| format!("'{}' in slot {index}: {e}", d.id))?;
                node.user = Some(d.id.clone());
                slot.device = Some((d.id.clone(), d.node.clone()));
            }
            let mut b = locked(&slot.block);
            check_capacity(&d.id, d.capacity, b.capacity())?;
            b.set_rate_limit(d.rate_limit)
                .map_err(|e| format!("'{}': {e}", d.id))?;
        }
        for (id, capacity, limits) in &s.fixed {
            let block = self
                .fixed_blocks
                .iter()
                .find(|b| &b.0 == id)
                .ok_or_else(|| format!("disk '{id}' is not on this command line"))?;
            let mut b = locked(&block.1);
            check_capacity(id, *capacity, b.capacity())?;
            b.set_rate_limit(*limits)
                .map_err(|e| format!("'{id}': {e}"))?;
        }
        Ok(())
    }
}

fn check_capacity(id: &str, saved: u64, now: u64) -> Result<(), String> {
    if saved == now {
        Ok(())
    } else {
        Err(format!(
            "disk '{id}': the image has {now} sectors, the snapshot {saved}"
        ))
    }
}
