//! Places the virtio-mmio devices: one 4 KiB window and one IRQ each,
//! allocated here and nowhere else, announced to the guest in the ACPI
//! DSDT and with `virtio_mmio.device=4K@BASE:IRQ` on the kernel command
//! line (both, in window order); queue
//! notifications arrive through KVM ioeventfds and interrupts leave through
//! irqfds, so device work runs on the event-loop thread, not on vCPUs.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use address_space::{Bus, BusDevice, GuestMemoryMmap};
use boot_loader::MmioDeviceDesc;
use kvm_ioctls::{IoEventAddress, VmFd};
use machine_manager::config::{ChardevBackend, DeviceConfig, NetBackend};
use util::event_loop::EventLoop;
use virtio::balloon::{Balloon, BalloonConfig, BALLOON_PAGE_SIZE};
use virtio::block::{Block, BlockConfig};
use virtio::console::{Console, ConsoleBackend, FileBackend, UnixSocketBackend};
use virtio::fs::{FsConfig, VhostUserFs};
use virtio::net::{parse_mac, Net, NetConfig, NetLimits, Tap};
use virtio::rate_limiter::{BucketConfig, RateLimitConfig};
use virtio::rng::Rng;
use virtio::vsock::{VhostVsock, VhostVsockDevice, Vsock, VsockConfig};
use virtio::{MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET};

use crate::error::MachineError;
use crate::hotplug::Slot;
use crate::net_hotplug::NetSlot;

/// Offset of the virtio-mmio Status register.
const STATUS_REG_OFFSET: u64 = 0x70;

/// First virtio-mmio window (inside the 32-bit MMIO gap).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First IRQ line for virtio devices (4 is COM1).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
/// Last IRQ line (the IOAPIC has 24 pins).
pub const VIRTIO_IRQ_LAST: u32 = 23;

/// Window base and IRQ line of slot `slot`.
fn slot_window(slot: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + slot as u64 * MMIO_WINDOW_SIZE,
        VIRTIO_IRQ_FIRST + slot as u32,
    )
}

/// The virtio devices of a VM and their event loop.
pub struct VirtioDevices {
    event_loop: EventLoop,
    /// `-object iothread` loops by id, each on a thread named after it.
    iothreads: BTreeMap<String, EventLoop>,
    /// Device id → iothread id.
    iothread_of: BTreeMap<String, String>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The id each window was created for (a device id, or `blk-slotN` /
    /// `net-slotN` for an empty slot), in window order.
    window_ids: Vec<String>,
    cmdline: Vec<String>,
    /// Block slots, in slot order.
    slots: Vec<Slot>,
    /// Network slots, in slot order.
    net_slots: Vec<NetSlot>,
    /// Ids of the devices outside the slots (fixed until the VM ends).
    fixed_ids: Vec<String>,
    /// The balloon, if configured.
    balloon: Option<Arc<Mutex<Balloon>>>,
    /// Disks outside the slots, by device id (for run-time I/O limits).
    fixed_blocks: Vec<(String, Arc<Mutex<Block>>)>,
}

impl VirtioDevices {
    /// Creates every configured device, registers it on `mmio_bus` and
    /// wires its notifications and interrupt through KVM.
    ///
    /// Window order follows StratoVirt's microVM: first the `blk_slots`
    /// block slots, which the configured disks fill from slot 0 in order
    /// (the rest empty), then the `net_slots` network slots, filled the
    /// same way by the configured NICs, then every other device in
    /// configuration order. With `blk_slots` (`net_slots`) 0 the disks
    /// (NICs) are ordinary devices in configuration order instead.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio_bus: &mut Bus,
        configs: &[DeviceConfig],
        blk_slots: u8,
        net_slots: u8,
        iothreads: &[String],
        iothread_of: &BTreeMap<String, String>,
    ) -> Result<Self, MachineError> {
        let in_blk_slot =
            |c: &DeviceConfig| blk_slots > 0 && matches!(c, DeviceConfig::Block { .. });
        let in_net_slot = |c: &DeviceConfig| net_slots > 0 && matches!(c, DeviceConfig::Net { .. });
        let boot_disks: Vec<&DeviceConfig> = configs.iter().filter(|c| in_blk_slot(c)).collect();
        let boot_nics: Vec<&DeviceConfig> = configs.iter().filter(|c| in_net_slot(c)).collect();
        let fixed: Vec<&DeviceConfig> = configs
            .iter()
            .filter(|c| !in_blk_slot(c) && !in_net_slot(c))
            .collect();
        for (boot, slots, key) in [
            (&boot_disks, blk_slots, "blk-slots"),
            (&boot_nics, net_slots, "net-slots"),
        ] {
            if let Some(extra) = boot.get(usize::from(slots)) {
                return Err(MachineError::Virtio {
                    id: extra.id().to_string(),
                    reason: format!("no slot left for it (-machine {key}={slots})"),
                });
            }
        }
        let max = (VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST + 1) as usize;
        let count = fixed.len() + usize::from(blk_slots) + usize::from(net_slots);
        if count > max {
            return Err(MachineError::TooManyDevices { count, max });
        }
        let event_loop = EventLoop::new("virtio-io").map_err(MachineError::EventLoop)?;
        let mut loops = BTreeMap::new();
        for id in iothreads {
            // Thread names are limited to 15 bytes by the kernel.
            let name: String = id.chars().take(15).collect();
            loops.insert(
                id.clone(),
                EventLoop::new(&name).map_err(MachineError::EventLoop)?,
            );
        }
        let mut devices = VirtioDevices {
            event_loop,
            iothreads: loops,
            iothread_of: iothread_of.clone(),
            transports: Vec::new(),
            window_ids: Vec::new(),
            cmdline: Vec::new(),
            slots: Vec::new(),
            net_slots: Vec::new(),
            fixed_ids: fixed.iter().map(|c| c.id().to_string()).collect(),
            balloon: None,
            fixed_blocks: Vec::new(),
        };
        for n in 0..usize::from(blk_slots) {
            let slot = match boot_disks.get(n) {
                Some(cfg @ DeviceConfig::Block { id, drive, .. }) => {
                    let block = Arc::new(Mutex::new(devices.block(cfg)?));
                    let base = devices.place(vm, mem, mmio_bus, id, block.clone())?;
                    Slot::with_boot_disk(block, base, id, drive)
                }
                _ => {
                    let block = Arc::new(Mutex::new(Block::new_empty(devices.event_loop.clone())));
                    let base =
                        devices.place(vm, mem, mmio_bus, &format!("blk-slot{n}"), block.clone())?;
                    Slot::new(block, base)
                }
            };
            devices.slots.push(slot);
        }
        for n in 0..usize::from(net_slots) {
            let slot = match boot_nics.get(n) {
                Some(cfg @ DeviceConfig::Net { id, netdev, .. }) => {
                    let net = Arc::new(Mutex::new(devices.net(cfg)?));
                    let base = devices.place(vm, mem, mmio_bus, id, net.clone())?;
                    NetSlot::with_boot_nic(net, base, id, netdev)
                }
                _ => {
                    let id = format!("net-slot{n}");
                    let net = Net::new_empty(&id, devices.event_loop.clone()).map_err(|e| {
                        MachineError::Virtio {
                            id: id.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    let net = Arc::new(Mutex::new(net));
                    let base = devices.place(vm, mem, mmio_bus, &id, net.clone())?;
                    NetSlot::new(net, base)
                }
            };
            devices.net_slots.push(slot);
        }
        for cfg in fixed {
            let model: Arc<Mutex<dyn VirtioDevice>> = match cfg {
                DeviceConfig::Balloon { .. } => {
                    let balloon = Arc::new(Mutex::new(devices.balloon_model(cfg, mem)));
                    devices.balloon = Some(balloon.clone());
                    balloon
                }
                DeviceConfig::Block { id, .. } => {
                    let block = Arc::new(Mutex::new(devices.block(cfg)?));
                    devices.fixed_blocks.push((id.clone(), block.clone()));
                    block
                }
                _ => devices.model(cfg, mem)?,
            };
            devices.place(vm, mem, mmio_bus, cfg.id(), model)?;
        }
        Ok(devices)
    }

    /// Gives `model` the next MMIO window and IRQ; returns the window base.
    fn place(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio_bus: &mut Bus,
        id: &str,
        model: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<u64, MachineError> {
        let (base, irq) = slot_window(self.transports.len());
        let transport =
            MmioTransport::new(mem.clone(), model).map_err(|source| MachineError::Virtio {
                id: id.to_string(),
                reason: source.to_string(),
            })?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                queue as u32,
            )
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IOEVENTFD (virtio queue notify)",
                source,
            })?;
        }
        vm.register_irqfd(transport.interrupt_evt(), irq)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IRQFD (virtio)",
                source,
            })?;
        let transport = Arc::new(Mutex::new(transport));
        mmio_bus
            .insert(base, MMIO_WINDOW_SIZE, transport.clone())
            .map_err(|source| MachineError::Bus {
                what: "virtio-mmio window",
                source,
            })?;
        log::info!("virtio device '{id}' at {base:#x}, IRQ {irq}");
        self.transports.push(transport);
        self.window_ids.push(id.to_string());
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        Ok(base)
    }

    /// The device event loops: `virtio-io` and the iothreads.
    pub fn event_loops(&self) -> impl Iterator<Item = &EventLoop> {
        std::iter::once(&self.event_loop).chain(self.iothreads.values())
    }

    /// The default device loop (`virtio-io`), which every VM has.
    pub fn main_loop(&self) -> &EventLoop {
        &self.event_loop
    }

    /// Every window in order: the id it was created for, its base and
    /// its transport (snapshots).
    pub(crate) fn windows(&self) -> impl Iterator<Item = (&str, u64, &Arc<Mutex<MmioTransport>>)> {
        self.window_ids
            .iter()
            .zip(&self.transports)
            .enumerate()
            .map(|(slot, (id, t))| (id.as_str(), slot_window(slot).0, t))
    }

    /// The block hotplug slots, taken once by the machine.
    pub fn take_slots(&mut self) -> Vec<Slot> {
        std::mem::take(&mut self.slots)
    }

    /// The disks outside the slots with their ids, taken once by the
    /// machine.
    pub fn take_fixed_blocks(&mut self) -> Vec<(String, Arc<Mutex<Block>>)> {
        std::mem::take(&mut self.fixed_blocks)
    }

    /// The network hotplug slots, taken once by the machine.
    pub fn take_net_slots(&mut self) -> Vec<NetSlot> {
        std::mem::take(&mut self.net_slots)
    }

    /// Ids of the devices created at boot outside the slots: they cannot
    /// be unplugged, and their ids cannot be reused.
    pub fn fixed_ids(&self) -> &[String] {
        &self.fixed_ids
    }

    /// The event loop a device runs on: its iothread, or `virtio-io`.
    fn loop_for(&self, id: &str) -> EventLoop {
        self.iothread_of
            .get(id)
            .and_then(|t| self.iothreads.get(t))
            .unwrap_or(&self.event_loop)
            .clone()
    }

    /// The virtio-blk model of a configured disk.
    fn block(&self, cfg: &DeviceConfig) -> Result<Block, MachineError> {
        let DeviceConfig::Block { id, drive, serial } = cfg else {
            return Err(MachineError::Unsupported(format!(
                "'{}' as a disk",
                cfg.id()
            )));
        };
        Block::new(
            BlockConfig {
                path: drive.path.clone(),
                read_only: drive.read_only,
                direct: drive.direct,
                serial: serial.clone(),
                rate_limit: device_limits(&drive.limits),
            },
            self.loop_for(id),
        )
        .map_err(|e| MachineError::Virtio {
            id: id.clone(),
            reason: e.to_string(),
        })
    }

    /// The virtio-balloon model: it may take back the guest's e820 RAM and
    /// nothing else; JSON `amount_mib` is its target from the start.
    fn balloon_model(&self, cfg: &DeviceConfig, mem: &GuestMemoryMmap) -> Balloon {
        let (deflate_on_oom, free_page_reporting, amount_mib) = match cfg {
            DeviceConfig::Balloon {
                deflate_on_oom,
                free_page_reporting,
                amount_mib,
                ..
            } => (*deflate_on_oom, *free_page_reporting, *amount_mib),
            _ => (false, false, 0),
        };
        let usable = boot_loader::params::e820_map(mem)
            .into_iter()
            .filter(|&(_, _, kind)| kind == boot_loader::layout::E820_RAM)
            .map(|(start, len, _)| (start, len))
            .collect();
        let mut balloon = Balloon::new(
            BalloonConfig {
                deflate_on_oom,
                free_page_reporting,
                usable,
            },
            self.loop_for(cfg.id()),
        );
        let pages = amount_mib.saturating_mul(1 << 20) / BALLOON_PAGE_SIZE;
        balloon.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
        balloon
    }

    /// The balloon, if the VM has one.
    pub fn balloon(&self) -> Option<Arc<Mutex<Balloon>>> {
        self.balloon.clone()
    }

    /// The virtio-net model of a configured NIC.
    fn net(&self, cfg: &DeviceConfig) -> Result<Net, MachineError> {
        let DeviceConfig::Net {
            id,
            backend,
            mac,
            limits,
            ..
        } = cfg
        else {
            return Err(MachineError::Unsupported(format!(
                "'{}' as a NIC",
                cfg.id()
            )));
        };
        let err = |reason: String| MachineError::Virtio {
            id: id.clone(),
            reason,
        };
        let tap = match backend {
            NetBackend::TapName(name) => Tap::open_named(name),
            // SAFETY: the configuration checked that the descriptor is
            // open; nothing else in the process owns it.
            NetBackend::TapFd(fd) => Tap::from_fd(unsafe { OwnedFd::from_raw_fd(*fd) }),
        }
        .map_err(|e| err(e.to_string()))?;
        let mac = mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        Net::new(NetConfig { tap, mac }, self.loop_for(id))
            .map(|n| {
                n.with_limits(NetLimits {
                    rx: device_limits(&limits.rx),
                    tx: device_limits(&limits.tx),
                })
            })
            .map_err(|e| err(e.to_string()))
    }

    fn model(
        &self,
        cfg: &DeviceConfig,
        mem: &GuestMemoryMmap,
    ) -> Result<Arc<Mutex<dyn VirtioDevice>>, MachineError> {
        let err = |reason: String| MachineError::Virtio {
            id: cfg.id().to_string(),
            reason,
        };
        let el = self.loop_for(cfg.id());
        Ok(match cfg {
            DeviceConfig::Block { .. } => Arc::new(Mutex::new(self.block(cfg)?)),
            DeviceConfig::Balloon { .. } => Arc::new(Mutex::new(self.balloon_model(cfg, mem))),
            DeviceConfig::Rng { path, .. } => Arc::new(Mutex::new(
                Rng::new(path, el).map_err(|e| err(e.to_string()))?,
            )),
            DeviceConfig::Net { .. } => Arc::new(Mutex::new(self.net(cfg)?)),
            DeviceConfig::HybridVsock {
                guest_cid,
                uds_path,
                ..
            } => {
                let config = VsockConfig {
                    guest_cid: u64::from(*guest_cid),
                    uds_path: uds_path.clone(),
                };
                Arc::new(Mutex::new(
                    Vsock::new(config, el).map_err(|e| err(e.to_string()))?,
                ))
            }
            DeviceConfig::VhostVsock {
                guest_cid, vhostfd, ..
            } => {
                // SAFETY: the configuration checked that the descriptor is
                // open; nothing else in the process owns it.
                let fd = vhostfd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                let vhost =
                    VhostVsock::open(u64::from(*guest_cid), fd).map_err(|e| err(e.to_string()))?;
                Arc::new(Mutex::new(VhostVsockDevice::new(vhost, el)))
            }
            DeviceConfig::VhostUserFs {
                socket,
                tag,
                num_request_queues,
                queue_size,
                ..
            } => {
                let config = FsConfig {
                    tag: tag.clone(),
                    socket: socket.clone(),
                    num_request_queues: *num_request_queues,
                    queue_size: *queue_size,
                };
                Arc::new(Mutex::new(
                    VhostUserFs::new(cfg.id(), &config, mem, el).map_err(|e| err(e.to_string()))?,
                ))
            }
            DeviceConfig::Console { backend, .. } => {
                let backend: Box<dyn ConsoleBackend> = match backend {
                    ChardevBackend::Socket(path) => {
                        Box::new(UnixSocketBackend::bind(path).map_err(|e| err(e.to_string()))?)
                    }
                    ChardevBackend::File(path) => {
                        Box::new(FileBackend::create(path).map_err(|e| err(e.to_string()))?)
                    }
                    ChardevBackend::SocketClient(_) | ChardevBackend::Stdio => {
                        return Err(MachineError::Unsupported(format!(
                            "virtconsole '{}' on chardev stdio (use a socket or file chardev)",
                            cfg.id()
                        )))
                    }
                };
                Arc::new(Mutex::new(
                    Console::new(backend, el).map_err(|e| err(e.to_string()))?,
                ))
            }
        })
    }

    /// Every window (base, size, IRQ) in slot order, for the ACPI DSDT.
    pub fn mmio_windows(&self) -> Vec<MmioDeviceDesc> {
        (0..self.transports.len())
            .map(|slot| {
                let (base, gsi) = slot_window(slot);
                MmioDeviceDesc {
                    base,
                    size: MMIO_WINDOW_SIZE,
                    gsi,
                }
            })
            .collect()
    }

    /// `virtio_mmio.device=` tokens for the kernel command line.
    pub fn cmdline_tokens(&self) -> &[String] {
        &self.cmdline
    }

    /// Resets every device as if the guest had written 0 to its status
    /// register (block devices flush; queues are dropped).
    pub fn reset_all(&mut self) {
        for t in &self.transports {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(STATUS_REG_OFFSET, &0u32.to_le_bytes());
        }
    }

    /// Quiesces every device (reset flushes block devices to stable
    /// storage) and stops the event loop. Call after the vCPUs stopped.
    pub fn shutdown(&mut self) {
        for t in &self.transports {
            let device = t.lock().unwrap_or_else(|p| p.into_inner()).device();
            device.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
        self.event_loop.stop();
        for el in self.iothreads.values() {
            el.stop();
        }
    }
}

/// The device's view of configured I/O limits (plain numbers).
pub(crate) fn device_limits(l: &machine_manager::config::IoLimits) -> RateLimitConfig {
    let bucket = |b: &machine_manager::config::LimitBucket| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time_ms,
    };
    RateLimitConfig {
        bandwidth: bucket(&l.bandwidth),
        ops: bucket(&l.ops),
    }
}
