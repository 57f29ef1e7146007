//! Assembles an x86_64 microVM from a [`VmConfig`] and runs it until the
//! guest resets, shuts down or fails, or the host asks it to stop.
//!
//! [`MicroVm::build`] reads top to bottom as the recipe: check KVM, create
//! the VM and its interrupt controllers, map guest RAM, load the kernel and
//! boot structures (ACPI tables included), attach the legacy devices,
//! create the vCPUs.

pub mod balloon;
pub mod control;
pub mod error;
pub mod events;
pub mod guest_image;
mod host_memory;
pub mod hotplug;
pub mod hotplug_request;
pub mod kvm_checks;
pub mod legacy;
pub mod net_hotplug;
mod platform;
pub mod power_button;
pub mod qmp_bridge;
mod qmp_convert;
pub mod seccomp;
pub mod snapshot;
pub mod virtio_devices;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use address_space::memory::{create_guest_memory, ram_size, register_with_kvm};
use address_space::ram_file::map_ram_file;
use address_space::{Bus, GuestMemoryMmap, MemoryOptions};
use boot_loader::{AcpiLayout, BootInfo};
use cpu::{Vcpu, VcpuControl, VcpuEvent, VcpuHandle, VcpuRunState};
use kvm_ioctls::{Kvm, VmFd};
use machine_manager::config::{DeviceConfig, SerialConfig, VmConfig};
use platform::setup_platform;

use balloon::{BalloonHandle, EventThrottle, BALLOON_EVENT_PERIOD};
pub use control::{
    ControlRequest, LifecycleListener, MigrationInfo, MigrationStatus, NoListener, VmShared,
    VmStatus,
};
pub use error::MachineError;
pub use events::{EventSender, VmEvent};
pub use guest_image::KernelSource;
use guest_image::{GuestImage, PlatformSnapshot};
use hotplug::{BlockHotplug, Hotplug};
use legacy::LegacyDevices;
use net_hotplug::NetHotplug;
use power_button::PowerButton;
use seccomp::{ThreadFilters, ThreadKind};
use snapshot::MachineFacts;
use virtio_devices::VirtioDevices;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 or KVM reset event).
    Reset,
    /// The guest shut down (e.g. triple fault).
    Shutdown(&'static str),
    /// Every vCPU halted for good.
    Halted,
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The host asked the VM to stop (signal number).
    HostSignal(i32),
    /// The control plane asked the VM to quit.
    Quit,
    /// A vCPU failed.
    Error(String),
}

/// A built microVM, ready to run.
pub struct MicroVm {
    // Field order matters on drop: vCPUs before the VM, the VM before memory.
    vcpus: Vec<Vcpu>,
    legacy: LegacyDevices,
    virtio: VirtioDevices,
    events: Receiver<VmEvent>,
    sender: EventSender,
    boot: BootInfo,
    shared: Arc<VmShared>,
    start_paused: bool,
    image: GuestImage,
    platform: PlatformSnapshot,
    hotplug: Arc<Mutex<Hotplug>>,
    balloon: Option<Arc<BalloonHandle>>,
    power_button: PowerButton,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemoryMmap,
    seccomp: ThreadFilters,
    facts: MachineFacts,
}

impl MicroVm {
    /// Builds the microVM described by `cfg`. `start` is the VMM's start
    /// time, used to report boot-complete latency.
    pub fn build(
        cfg: &VmConfig,
        kernel: KernelSource,
        start: Instant,
    ) -> Result<Self, MachineError> {
        host_memory::check_guest_ram(cfg.machine.mem_size, cfg.machine.mem_overcommit)?;
        let facts = MachineFacts {
            mem_size: cfg.machine.mem_size,
            nr_vcpus: cfg.machine.nr_vcpus,
        };
        // A snapshot to restore is read and checked before anything exists.
        let incoming = match &cfg.incoming {
            Some(dir) => Some(snapshot::lifecycle::open_incoming(
                dir,
                &facts,
                cfg.machine.mem_share,
            )?),
            None => None,
        };
        // Compiled first: a host without seccomp filtering fails before
        // anything is created.
        let seccomp = ThreadFilters::new(!cfg.disable_seccomp)?;
        let kvm = kvm_checks::open_kvm()?;
        let vm = kvm.create_vm().map_err(|source| MachineError::Kvm {
            what: "KVM_CREATE_VM",
            source,
        })?;
        let mem = match &incoming {
            // The snapshot's RAM, mapped copy-on-write: the restore costs
            // what the guest touches.
            Some(inc) => map_ram_file(
                cfg.machine.mem_size,
                &inc.memory,
                !cfg.machine.dump_guest_core,
            )?,
            None => create_guest_memory(
                cfg.machine.mem_size,
                MemoryOptions {
                    shared: cfg.machine.mem_share,
                    no_dump: !cfg.machine.dump_guest_core,
                },
            )?,
        };
        // RAM is registered before the interrupt controllers and the PIT
        // exist: registering a slot waits for a grace period of the VM's
        // SRCU, which the kernel expedites only when no other grace period
        // ended just before, and creating the PIT ends one (5 ms here when
        // the slot came second, tens of µs when it comes first).
        register_with_kvm(&vm, &mem)?;
        setup_platform(&vm, cfg.machine.pit)?;
        let platform = PlatformSnapshot::capture(&vm)?;
        if let Some(inc) = &incoming {
            if inc.state.platform.has_pit() != platform.has_pit() {
                let (saved, here) = match platform.has_pit() {
                    true => ("off", "on"),
                    false => ("on", "off"),
                };
                return Err(MachineError::Incoming(snapshot::SnapshotError::Mismatch(
                    format!("the PIT is {saved} in the snapshot, -machine pit={here} here"),
                )));
            }
        }
        let mut mmio_bus = Bus::new();
        let mut virtio = VirtioDevices::attach(
            &vm,
            &mem,
            &mut mmio_bus,
            &cfg.devices,
            cfg.machine.blk_slots,
            cfg.machine.net_slots,
            &cfg.iothreads,
            &cfg.iothread_of,
        )?;
        let hotplug = Arc::new(Mutex::new(Hotplug {
            block: BlockHotplug::new(
                virtio.take_slots(),
                virtio.fixed_ids().to_vec(),
                boot_disks(&cfg.devices, virtio.fixed_ids()),
            )
            .with_fixed_blocks(virtio.take_fixed_blocks()),
            net: NetHotplug::new(virtio.take_net_slots()),
        }));
        // ACPI tables (written with the boot structures; skipped with
        // -machine acpi=off) describe the CPUs, COM1, every window and the
        // power button.
        let acpi = cfg.machine.acpi.then(|| AcpiLayout {
            vcpus: cfg.machine.nr_vcpus,
            virtio_mmio: virtio.mmio_windows(),
            com1: cfg.serial != SerialConfig::None,
            sleep_port: Some(devices::ACPI_SLEEP_PORT as u16),
            ged: Some(power_button::ged_desc()),
        });
        // Every window also goes on the kernel command line, as QEMU's
        // microvm does without ACPI and Firecracker does always: a kernel
        // without ACPI (StratoVirt's microVM kernels) finds its devices
        // there, and one with both registers the DSDT's first (docs/devices.md).
        let guest_acpi_off = boot_loader::acpi::cmdline_disables_acpi(&cfg.boot.cmdline);
        let power_button = PowerButton::attach(&vm, &mut mmio_bus, acpi.is_some(), guest_acpi_off)?;
        let tokens = virtio.cmdline_tokens();
        let image = GuestImage {
            kernel,
            initrd: cfg.boot.initrd.clone(),
            cmdline: kernel_cmdline(&cfg.boot.cmdline, tokens),
            nr_cpus: cfg.machine.nr_vcpus,
            acpi,
        };
        let boot = match &incoming {
            // The guest is already in memory; the kernel is loaded again
            // only if the guest resets.
            Some(inc) => BootInfo::from(&inc.state.boot),
            None => {
                let boot = image
                    .load(&mem)
                    .map_err(|e| explain_cmdline_overflow(e, &cfg.boot.cmdline, tokens))?;
                log::info!(
                    "kernel loaded at {:#x}-{:#x}, entry {:#x} ({:?})",
                    boot.kernel.0,
                    boot.kernel.1,
                    boot.entry,
                    boot.protocol
                );
                boot
            }
        };

        let (sender, events) = events::channel();
        // The balloon reports the guest's `actual` to the control loop,
        // which turns it into BALLOON_CHANGE events.
        let balloon = virtio.balloon().map(|device| {
            device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_listener(Arc::new(sender.clone()));
            Arc::new(BalloonHandle::new(device, ram_size(&mem)))
        });
        let mut io_bus = Bus::new();
        let mut legacy = LegacyDevices::attach(
            &vm,
            &mut io_bus,
            &cfg.serial,
            sender.clone(),
            start,
            seccomp.get(ThreadKind::SerialIn),
        )?;
        if let Some(inc) = &incoming {
            let hotplug = hotplug.lock().unwrap_or_else(|p| p.into_inner());
            snapshot::devices::check(&inc.state.devices, &virtio, &legacy, &hotplug)
                .map_err(MachineError::Incoming)?;
        }
        let io_bus = Arc::new(io_bus);
        let mmio_bus = Arc::new(mmio_bus);

        let nr_vcpus = cfg.machine.nr_vcpus;
        let mut vcpus = Vec::with_capacity(usize::from(nr_vcpus));
        for id in 0..nr_vcpus {
            vcpus.push(Vcpu::new(
                &kvm,
                &vm,
                id,
                nr_vcpus,
                (id == 0).then_some(&boot),
                io_bus.clone(),
                mmio_bus.clone(),
                Arc::new(sender.clone()),
            )?);
        }
        if let Some(inc) = &incoming {
            snapshot::lifecycle::restore_snapshot(
                inc,
                &vm,
                &vcpus,
                &mut virtio,
                &mut legacy,
                &hotplug,
            )
            .map_err(MachineError::Incoming)?;
            log::info!(
                "restored the snapshot in {} after {} us",
                inc.dir.display(),
                start.elapsed().as_micros()
            );
        }
        legacy.start_input()?;
        Ok(Self {
            vcpus,
            legacy,
            virtio,
            events,
            sender,
            boot,
            shared: {
                let shared =
                    VmShared::new(cfg.name.clone(), cfg.uuid.clone(), cfg.machine.nr_vcpus);
                // Without -S the VM is about to run: QMP clients that
                // connect before the vCPU threads are up see "running", and
                // a stop they send is applied as soon as the vCPUs start.
                if !cfg.start_paused {
                    shared.set_status(VmStatus::Running);
                }
                shared
            },
            start_paused: cfg.start_paused,
            image,
            platform,
            hotplug,
            balloon,
            power_button,
            vm,
            kvm,
            mem,
            seccomp,
            facts,
        })
    }

    /// The seccomp filters of every thread kind (empty with
    /// `-disable-seccomp`), for the threads the binary starts itself (QMP).
    pub fn seccomp_filters(&self) -> &ThreadFilters {
        &self.seccomp
    }

    /// Calls `on_readable` on the VM's device event loop whenever `fd` is
    /// readable, for the binary's own host-side descriptors (the terminating
    /// signals' signalfd) so that they need no thread of their own. The
    /// descriptor must stay open while the VM runs: move its owner into
    /// `on_readable`, which the loop keeps until it stops.
    pub fn watch_readable(
        &self,
        fd: std::os::fd::RawFd,
        mut on_readable: impl FnMut() + Send + 'static,
    ) -> Result<(), MachineError> {
        self.virtio
            .main_loop()
            .add(fd, libc::EPOLLIN as u32, Box::new(move |_| on_readable()))
            .map(|_| ())
            .map_err(MachineError::WatchFd)
    }

    /// Where and how the guest was loaded.
    pub fn boot_info(&self) -> &BootInfo {
        &self.boot
    }

    /// A handle other threads (signal handling, later QMP) use to post
    /// events to the running VM.
    pub fn event_sender(&self) -> EventSender {
        self.sender.clone()
    }

    /// Hotplug state (block and network), for the QMP handler.
    pub fn hotplug(&self) -> Arc<Mutex<Hotplug>> {
        self.hotplug.clone()
    }

    /// The balloon, for the QMP handler (None without one).
    pub fn balloon(&self) -> Option<Arc<BalloonHandle>> {
        self.balloon.clone()
    }

    /// State the control plane reads (status, vCPU threads, identity).
    pub fn shared(&self) -> Arc<VmShared> {
        self.shared.clone()
    }

    /// Runs the guest until it stops; returns why. Lifecycle events go to
    /// `listener` (the QMP server, or [`NoListener`]).
    pub fn run(self, listener: &dyn LifecycleListener) -> Result<ExitReason, MachineError> {
        cpu::install_kick_handler()?;
        let MicroVm {
            vcpus,
            mut legacy,
            mut virtio,
            events,
            shared,
            start_paused,
            image,
            platform,
            power_button,
            balloon,
            vm,
            kvm,
            mem,
            seccomp,
            boot,
            hotplug,
            facts,
            ..
        } = self;
        // Every thread confines itself before the guest runs: the device
        // loops now, each vCPU before its first KVM_RUN, this thread once
        // the vCPUs are started.
        for event_loop in virtio.event_loops() {
            seccomp.install_on_loop(event_loop, ThreadKind::VirtioIo)?;
        }
        let nr_vcpus = vcpus.len();
        let initial = if start_paused {
            VcpuRunState::Paused
        } else {
            VcpuRunState::Running
        };
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(nr_vcpus);
        for vcpu in vcpus {
            handles.push(vcpu.start(VcpuControl::new(initial), seccomp.get(ThreadKind::Vcpu))?);
        }
        seccomp.install_here(ThreadKind::Vmm)?;
        shared.set_vcpus(handles.iter().map(|h| h.control().clone()).collect());
        shared.set_status(if start_paused {
            VmStatus::Prelaunch
        } else {
            VmStatus::Running
        });
        let mut halted = 0;
        let mut balloon_events = EventThrottle::new(BALLOON_EVENT_PERIOD);
        let reason = loop {
            let Some(event) = next_event(&events, &mut balloon_events, listener) else {
                break ExitReason::Error("event channel closed".into());
            };
            match event {
                VmEvent::GuestReset | VmEvent::Vcpu(_, VcpuEvent::Reset) => {
                    break ExitReason::Reset
                }
                VmEvent::GuestPowerOff => break ExitReason::PowerOff,
                VmEvent::Vcpu(id, VcpuEvent::Shutdown(why)) => {
                    log::warn!("guest shutdown reported by vCPU {id}: {why}");
                    break ExitReason::Shutdown(why);
                }
                VmEvent::Vcpu(id, VcpuEvent::Error(e)) => {
                    break ExitReason::Error(format!("vCPU {id}: {e}"))
                }
                VmEvent::Vcpu(id, VcpuEvent::Halted) => {
                    halted += 1;
                    log::info!("vCPU {id} halted");
                    if halted == nr_vcpus {
                        break ExitReason::Halted;
                    }
                }
                VmEvent::HostSignal(sig) => break ExitReason::HostSignal(sig),
                VmEvent::BalloonActual(pages) => {
                    let bytes = balloon.as_ref().map(|b| b.guest_bytes(pages));
                    if let Some(bytes) = bytes.and_then(|b| balloon_events.offer(b, Instant::now()))
                    {
                        balloon_change(listener, bytes);
                    }
                }
                VmEvent::Control(call) => {
                    let mut parts = ControlParts {
                        kvm: &kvm,
                        vm: &vm,
                        mem: &mem,
                        image: &image,
                        platform: &platform,
                        virtio: &mut virtio,
                        legacy: &legacy,
                        hotplug: &hotplug,
                        power_button: &power_button,
                        boot: &boot,
                        facts: &facts,
                    };
                    if let Some(reason) = control(call, &handles, &shared, &mut parts, listener) {
                        break reason;
                    }
                }
            }
        };
        for h in handles.iter_mut() {
            h.stop();
        }
        virtio.shutdown();
        legacy.flush();
        shared.set_status(VmStatus::Shutdown);
        if let Some((guest, why)) = shutdown_cause(&reason) {
            listener.lifecycle_event(
                "SHUTDOWN",
                serde_json::json!({"guest": guest, "reason": why}),
            );
        }
        Ok(reason)
    }
}

/// The next event for the control loop; while waiting, a held-back
/// `BALLOON_CHANGE` goes out when its rate-limit period ends. None when
/// every sender is gone.
fn next_event(
    events: &Receiver<VmEvent>,
    balloon_events: &mut EventThrottle,
    listener: &dyn LifecycleListener,
) -> Option<VmEvent> {
    loop {
        let Some(deadline) = balloon_events.deadline() else {
            return events.recv().ok();
        };
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(event) => return Some(event),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(bytes) = balloon_events.expire(Instant::now()) {
                    balloon_change(listener, bytes);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// QMP `BALLOON_CHANGE`: the guest now has `bytes` of RAM.
fn balloon_change(listener: &dyn LifecycleListener, bytes: u64) {
    listener.lifecycle_event("BALLOON_CHANGE", serde_json::json!({ "actual": bytes }));
}

/// What lifecycle requests touch besides the vCPUs: a system reset (the
/// power button too, which `system_powerdown` presses) and a snapshot.
struct ControlParts<'a> {
    kvm: &'a Kvm,
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    image: &'a GuestImage,
    platform: &'a PlatformSnapshot,
    virtio: &'a mut VirtioDevices,
    legacy: &'a LegacyDevices,
    hotplug: &'a Mutex<Hotplug>,
    power_button: &'a PowerButton,
    boot: &'a BootInfo,
    facts: &'a MachineFacts,
}

/// Resets the machine in place: vCPUs stopped, devices reset (block
/// devices flush, no power button event pending), interrupt controllers
/// and PIT restored, the guest image loaded again, vCPUs back in their boot
/// state; running again if they were.
fn system_reset(
    handles: &[VcpuHandle],
    shared: &VmShared,
    parts: &mut ControlParts<'_>,
) -> Result<(), String> {
    let was = shared.status();
    handles.iter().for_each(VcpuHandle::pause);
    parts.virtio.reset_all();
    parts.power_button.reset();
    parts
        .platform
        .restore(parts.vm)
        .map_err(|e| e.to_string())?;
    parts.image.load(parts.mem).map_err(|e| e.to_string())?;
    for h in handles {
        if !h.reset() {
            return Err(format!("vCPU {} could not be reset", h.id()));
        }
    }
    if was == VmStatus::Running {
        handles.iter().for_each(VcpuHandle::resume);
    }
    Ok(())
}

/// Carries out a lifecycle request on the control loop; returns an exit
/// reason when the VM must end.
fn control(
    call: control::ControlCall,
    handles: &[VcpuHandle],
    shared: &VmShared,
    parts: &mut ControlParts<'_>,
    listener: &dyn LifecycleListener,
) -> Option<ExitReason> {
    use serde_json::{json, Value};
    let status = shared.status();
    let (answer, event, exit): (Result<(), String>, Option<(&'static str, Value)>, _) =
        match call.request {
            ControlRequest::Stop if status == VmStatus::Running => {
                handles.iter().for_each(VcpuHandle::pause);
                shared.set_status(VmStatus::Paused);
                (Ok(()), Some(("STOP", Value::Null)), None)
            }
            ControlRequest::Cont if matches!(status, VmStatus::Paused | VmStatus::Prelaunch) => {
                handles.iter().for_each(VcpuHandle::resume);
                shared.set_status(VmStatus::Running);
                (Ok(()), Some(("RESUME", Value::Null)), None)
            }
            ControlRequest::Stop | ControlRequest::Cont => (Ok(()), None, None),
            ControlRequest::Quit => (Ok(()), None, Some(ExitReason::Quit)),
            ControlRequest::SystemReset => match system_reset(handles, shared, parts) {
                Ok(()) => (
                    Ok(()),
                    Some((
                        "RESET",
                        json!({"guest": false, "reason": "host-qmp-system-reset"}),
                    )),
                    None,
                ),
                Err(e) => (
                    Err(format!("system_reset failed: {e}")),
                    None,
                    Some(ExitReason::Error(format!("system_reset failed: {e}"))),
                ),
            },
            // The guest decides what to do; the VM keeps running meanwhile.
            ControlRequest::SystemPowerdown => match parts.power_button.press() {
                Ok(()) => (Ok(()), Some(("POWERDOWN", Value::Null)), None),
                Err(e) => (Err(e), None, None),
            },
            ControlRequest::Migrate(dir) => {
                let hotplug = parts.hotplug.lock().unwrap_or_else(|p| p.into_inner());
                let save = snapshot::SaveParts {
                    kvm: parts.kvm,
                    vm: parts.vm,
                    mem: parts.mem,
                    vcpus: handles,
                    virtio: parts.virtio,
                    legacy: parts.legacy,
                    hotplug: &hotplug,
                    boot: parts.boot,
                    facts: parts.facts.clone(),
                };
                (
                    snapshot::lifecycle::migrate(&dir, shared, &save),
                    None,
                    None,
                )
            }
        };
    // The answer goes out before the event it causes.
    let _ = call.reply.send(answer);
    if let Some((name, data)) = event {
        listener.lifecycle_event(name, data);
    }
    exit
}

/// QMP SHUTDOWN event fields (`guest`, `reason`) for an exit reason.
fn shutdown_cause(reason: &ExitReason) -> Option<(bool, &'static str)> {
    match reason {
        ExitReason::Reset => Some((true, "guest-reset")),
        ExitReason::Shutdown("guest crash") => Some((true, "guest-panic")),
        ExitReason::Shutdown("triple fault") => Some((true, "guest-reset")),
        ExitReason::Shutdown(_) | ExitReason::Halted | ExitReason::PowerOff => {
            Some((true, "guest-shutdown"))
        }
        ExitReason::HostSignal(_) => Some((false, "host-signal")),
        ExitReason::Quit => Some((false, "host-qmp-quit")),
        ExitReason::Error(_) => None,
    }
}

/// The boot-time disks outside the block slots (`fixed`: the ids of the
/// devices with fixed windows), for `query-block`.
fn boot_disks(devices: &[DeviceConfig], fixed: &[String]) -> Vec<hotplug::BootDisk> {
    devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Block { id, drive, .. } if fixed.contains(id) => {
                Some(hotplug::BootDisk {
                    device: id.clone(),
                    drive: drive.id.clone(),
                    path: drive.path.clone(),
                    read_only: drive.read_only,
                    direct: drive.direct,
                })
            }
            _ => None,
        })
        .collect()
}

/// The user's command line followed by the device tokens the VMM adds.
fn kernel_cmdline(user: &str, tokens: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(tokens.len() + 1);
    if !user.is_empty() {
        parts.push(user);
    }
    parts.extend(tokens.iter().map(String::as_str));
    parts.join(" ")
}

/// Says, when the command line is too long for the kernel, how much of it
/// the device tokens take and what to change.
fn explain_cmdline_overflow(err: MachineError, user: &str, tokens: &[String]) -> MachineError {
    match err {
        MachineError::Boot(boot_loader::BootError::CmdlineTooLong { len, max })
            if !tokens.is_empty() =>
        {
            MachineError::CmdlineTooLong {
                len,
                max,
                user: user.len(),
                tokens: tokens.len(),
            }
        }
        other => other,
    }
}
