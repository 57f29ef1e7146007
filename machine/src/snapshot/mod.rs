//! Snapshot and restore, StratoVirt's way: with the VM paused, QMP
//! `migrate {"uri": "file:DIR"}` writes `DIR/memory` (guest RAM) and
//! `DIR/state` (vCPUs, interrupt controllers, PIT, clock and every
//! device); `altovirt <same arguments> -incoming file:DIR` continues the
//! guest from there.
//!
//! Both files are written under temporary names and renamed into place, so
//! a VM (or a fleet of them) running from an older snapshot in the same
//! directory keeps its memory: its private mapping holds the old file.

pub mod devices;
pub mod error;
pub mod format;
pub mod lifecycle;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use address_space::GuestMemoryMmap;
use boot_loader::{BootInfo, BootProtocol};
use cpu::{VcpuHandle, VcpuState};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};

pub use error::SnapshotError;

use crate::guest_image::PlatformSnapshot;
use crate::hotplug::Hotplug;
use crate::legacy::LegacyDevices;
use crate::virtio_devices::VirtioDevices;

/// Name of the guest RAM file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";

/// The machine facts a snapshot only fits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// Guest RAM in bytes (`-m`).
    pub mem_size: u64,
    /// Number of vCPUs (`-smp`).
    pub nr_vcpus: u8,
}

/// Where the kernel was loaded and how it was entered: a restored VM needs
/// it to reset (it does not load the kernel until then).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootState {
    entry: u64,
    linux64: bool,
    params: u64,
    kernel: (u64, u64),
    initrd: Option<(u64, u64)>,
    gdt_base: u64,
    idt_base: u64,
    cr3: u64,
    stack_pointer: u64,
}

impl From<&BootInfo> for BootState {
    fn from(b: &BootInfo) -> Self {
        let (linux64, params) = match b.protocol {
            BootProtocol::Linux64 { zero_page } => (true, zero_page),
            BootProtocol::Pvh { start_info } => (false, start_info),
        };
        BootState {
            entry: b.entry,
            linux64,
            params,
            kernel: b.kernel,
            initrd: b.initrd,
            gdt_base: b.gdt_base,
            idt_base: b.idt_base,
            cr3: b.cr3,
            stack_pointer: b.stack_pointer,
        }
    }
}

impl From<&BootState> for BootInfo {
    fn from(b: &BootState) -> Self {
        BootInfo {
            entry: b.entry,
            protocol: if b.linux64 {
                BootProtocol::Linux64 {
                    zero_page: b.params,
                }
            } else {
                BootProtocol::Pvh {
                    start_info: b.params,
                }
            },
            kernel: b.kernel,
            initrd: b.initrd,
            gdt_base: b.gdt_base,
            idt_base: b.idt_base,
            cr3: b.cr3,
            stack_pointer: b.stack_pointer,
        }
    }
}

/// Everything in `DIR/state`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The altovirt that wrote it (for people; the format version is in
    /// the header).
    pub written_by: String,
    /// What the VM must be to take it.
    pub machine: MachineFacts,
    /// How the kernel was booted.
    pub boot: BootState,
    /// PIC, IOAPIC and PIT.
    pub platform: PlatformSnapshot,
    /// The KVM clock (kvmclock's base).
    pub clock: kvm_clock_data,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// Every device.
    pub devices: devices::DevicesState,
}

/// A snapshot read back for `-incoming`: its state and its memory file
/// (open, size checked), before anything is built.
pub struct Incoming {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The state.
    pub state: SnapshotState,
    /// The guest RAM file, to be mapped privately.
    pub memory: File,
}

impl Incoming {
    /// Reads `DIR/state`, checks it against `facts` and opens `DIR/memory`.
    /// Every difference is one line naming it.
    pub fn open(dir: &Path, facts: &MachineFacts) -> Result<Self, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| SnapshotError::Io { path, source }
        };
        let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
        let bad = |why: String| SnapshotError::BadStateFile {
            path: state_path.display().to_string(),
            why,
        };
        let payload = format::decode(&bytes).map_err(bad)?;
        let state: SnapshotState =
            serde_json::from_slice(payload).map_err(|e| bad(format!("unreadable state: {e}")))?;
        if state.machine.mem_size != facts.mem_size {
            return Err(SnapshotError::Mismatch(format!(
                "guest memory is {} MiB in the snapshot, -m gives {} MiB",
                state.machine.mem_size >> 20,
                facts.mem_size >> 20
            )));
        }
        if state.machine.nr_vcpus != facts.nr_vcpus
            || state.vcpus.len() != usize::from(facts.nr_vcpus)
        {
            return Err(SnapshotError::Mismatch(format!(
                "{} vCPUs in the snapshot, -smp gives {}",
                state.machine.nr_vcpus, facts.nr_vcpus
            )));
        }
        let memory_path = dir.join(MEMORY_FILE);
        let memory = File::open(&memory_path).map_err(io(&memory_path))?;
        let len = memory.metadata().map_err(io(&memory_path))?.len();
        if len != facts.mem_size {
            return Err(SnapshotError::BadStateFile {
                path: memory_path.display().to_string(),
                why: format!(
                    "{len} bytes, the snapshot's guest memory is {} bytes (truncated?)",
                    facts.mem_size
                ),
            });
        }
        Ok(Incoming {
            dir: dir.to_path_buf(),
            state,
            memory,
        })
    }
}

/// What a snapshot reads from the running machine.
pub struct SaveParts<'a> {
    /// The KVM system handle (the MSR list).
    pub kvm: &'a Kvm,
    /// The VM.
    pub vm: &'a VmFd,
    /// Guest RAM.
    pub mem: &'a GuestMemoryMmap,
    /// The vCPUs (paused).
    pub vcpus: &'a [VcpuHandle],
    /// The virtio devices.
    pub virtio: &'a VirtioDevices,
    /// The legacy devices.
    pub legacy: &'a LegacyDevices,
    /// Hot-plug slots.
    pub hotplug: &'a Hotplug,
    /// How the kernel was booted.
    pub boot: &'a BootInfo,
    /// RAM size and vCPU count.
    pub facts: MachineFacts,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy)]
pub struct SaveStats {
    /// Bytes of RAM written (zero pages are holes).
    pub ram_written: u64,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

/// Writes the snapshot of a paused VM into `dir` (created if missing).
/// The devices are frozen while their state and the memory are read.
pub fn save(dir: &Path, parts: &SaveParts<'_>) -> Result<SaveStats, SnapshotError> {
    let start = Instant::now();
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SnapshotError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let msrs = parts
        .kvm
        .get_msr_index_list()
        .map_err(|source| SnapshotError::Kvm {
            what: "KVM_GET_MSR_INDEX_LIST".into(),
            source,
        })?
        .as_slice()
        .to_vec();
    let freeze = devices::freeze(parts.virtio)?;
    let mut vcpus = Vec::with_capacity(parts.vcpus.len());
    for handle in parts.vcpus {
        vcpus.push(
            handle
                .save_state(msrs.clone())
                .map_err(SnapshotError::State)?,
        );
    }
    let platform =
        PlatformSnapshot::capture(parts.vm).map_err(|e| SnapshotError::State(e.to_string()))?;
    let mut clock = parts.vm.get_clock().map_err(|source| SnapshotError::Kvm {
        what: "KVM_GET_CLOCK".into(),
        source,
    })?;
    // KVM_SET_CLOCK takes no flags but KVM_CLOCK_REALTIME's; the restored
    // clock continues from the saved value.
    clock.flags = 0;
    let devices = devices::save(parts.virtio, parts.legacy, parts.hotplug)?;
    let state = SnapshotState {
        written_by: format!("altovirt {}", env!("CARGO_PKG_VERSION")),
        machine: parts.facts.clone(),
        boot: BootState::from(parts.boot),
        platform,
        clock,
        vcpus,
        devices,
    };
    let payload = serde_json::to_vec(&state)
        .map_err(|e| SnapshotError::State(format!("cannot encode the state: {e}")))?;

    let memory_tmp = dir.join(format!("{MEMORY_FILE}.tmp"));
    let state_tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let written = write_files(parts.mem, &memory_tmp, &state_tmp, &payload, freeze);
    let ram_written = match written {
        Ok(n) => n,
        Err(e) => {
            // Nothing half-written stays behind; an older snapshot in DIR
            // is untouched.
            let _ = std::fs::remove_file(&memory_tmp);
            let _ = std::fs::remove_file(&state_tmp);
            return Err(e);
        }
    };
    // The old state goes first: if the process dies between the renames,
    // DIR has no state file (a restore says so) rather than a state that
    // does not match the memory next to it.
    let state_path = dir.join(STATE_FILE);
    match std::fs::remove_file(&state_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&state_path)(e)),
    }
    let memory_path = dir.join(MEMORY_FILE);
    std::fs::rename(&memory_tmp, &memory_path).map_err(io(&memory_path))?;
    std::fs::rename(&state_tmp, &state_path).map_err(io(&state_path))?;
    // The renames themselves reach the disk with the directory.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(SaveStats {
        ram_written,
        elapsed: start.elapsed(),
    })
}

/// Writes guest RAM to `memory_tmp` (the devices stay frozen until it is
/// on disk), then the state file; both synced. Returns the RAM bytes
/// written.
fn write_files(
    mem: &GuestMemoryMmap,
    memory_tmp: &Path,
    state_tmp: &Path,
    payload: &[u8],
    freeze: devices::Freeze,
) -> Result<u64, SnapshotError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SnapshotError::Io { path, source }
    };
    let memory = create(memory_tmp).map_err(io(memory_tmp))?;
    let ram_written = address_space::ram_file::save_ram(mem, &memory).map_err(io(memory_tmp))?;
    memory.sync_all().map_err(io(memory_tmp))?;
    drop(freeze);
    let mut file = create(state_tmp).map_err(io(state_tmp))?;
    file.write_all(&format::encode(payload))
        .map_err(io(state_tmp))?;
    file.sync_all().map_err(io(state_tmp))?;
    Ok(ram_written)
}

/// A new file (mode 0600: guest memory is private), truncating an old one.
fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}
