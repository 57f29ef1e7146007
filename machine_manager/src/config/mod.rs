//! VM configuration: the types that describe a VM and the parsers that build
//! them from the command line ([`parse_cmdline`]) and from a JSON file
//! (`-config FILE`).
//!
//! Everything returned by the parsers has been validated: sizes and counts
//! are in range, files exist and are readable, ids are unique. See
//! `docs/config.md` for the user-facing reference.

mod balloon;
mod cmdline;
mod devices;
mod error;
/// Fuzzing entry points (feature `fuzzing`, used by `machine_manager/fuzz`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod json;
mod json_strict;
mod options;
mod rate_limit;
mod size;
mod slots;
mod validate;

use std::path::PathBuf;

pub use balloon::DEFAULT_BALLOON_ID;
pub use cmdline::{parse_cmdline, Command, USAGE};
pub use devices::{ChardevBackend, DeviceConfig, NetBackend};
pub use error::{single_line, ConfigError};
pub use rate_limit::{IoLimits, LimitBucket, NetIoLimits};
pub use size::{MIN_MEM_SIZE, PAGE_SIZE};
pub use validate::{MAX_IFNAME_LEN, MAX_VCPUS, MIN_VCPUS};

/// Guest memory used when neither `-m` nor `machine-config.mem_size` is given.
pub const DEFAULT_MEM_SIZE: u64 = 256 * size::MIB;

/// Smallest vsock context id a guest may use (0-2 are reserved).
pub const MIN_GUEST_CID: u32 = 3;

/// A complete, validated description of the VM to run.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// Guest name (`-name`, `machine-config.name`).
    pub name: Option<String>,
    /// Guest UUID in lower-case 8-4-4-4-12 form (`-uuid`).
    pub uuid: Option<String>,
    /// CPU and memory layout.
    pub machine: MachineConfig,
    /// What to boot.
    pub boot: BootConfig,
    /// Where the legacy serial port is connected.
    pub serial: SerialConfig,
    /// Where the VMM writes its own log (`-D`).
    pub log: LogTarget,
    /// Do not install the seccomp filter (`-disable-seccomp`).
    pub disable_seccomp: bool,
    /// Detach from the terminal and run in the background (`-daemonize`).
    pub daemonize: bool,
    /// File to write the VMM's process id to (`-pidfile`).
    pub pidfile: Option<PathBuf>,
    /// Exit instead of rebooting when the guest reboots (`-no-reboot`).
    pub no_reboot: bool,
    /// No graphical output (`-nographic`); accepted for compatibility.
    pub nographic: bool,
    /// Do not create default devices (`-nodefaults`).
    pub nodefaults: bool,
    /// Block devices, in the order given.
    pub drives: Vec<DriveConfig>,
    /// Network devices, in the order given.
    pub nets: Vec<NetConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The entropy device, if any.
    pub rng: Option<RngConfig>,
    /// Unix socket paths of the QMP servers (`-qmp`, `-api-channel`).
    pub qmp: Vec<PathBuf>,
    /// Start with the vCPUs stopped (`-S`); `cont` over QMP starts them.
    pub start_paused: bool,
    /// Restore the snapshot in this directory instead of booting
    /// (`-incoming file:DIR`).
    pub incoming: Option<PathBuf>,
    /// Device models to create at boot: the JSON `drive` list and `rng`
    /// section first, then `-device` flags in order.
    pub devices: Vec<DeviceConfig>,
    /// `-object iothread` ids: one event-loop thread each.
    pub iothreads: Vec<String>,
    /// Device id → the iothread it runs on (`iothread=` on `-device`);
    /// other devices run on the default `virtio-io` thread.
    pub iothread_of: std::collections::BTreeMap<String, String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: None,
            uuid: None,
            machine: MachineConfig::default(),
            boot: BootConfig::default(),
            serial: SerialConfig::Stdio,
            log: LogTarget::None,
            disable_seccomp: false,
            daemonize: false,
            pidfile: None,
            no_reboot: false,
            nographic: false,
            nodefaults: false,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: None,
            qmp: Vec::new(),
            start_paused: false,
            incoming: None,
            devices: Vec::new(),
            iothreads: Vec::new(),
            iothread_of: std::collections::BTreeMap::new(),
        }
    }
}

/// CPU and memory layout of the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    /// Guest memory in bytes: at least [`MIN_MEM_SIZE`], a multiple of [`PAGE_SIZE`].
    pub mem_size: u64,
    /// vCPUs started at boot, `1..=254`.
    pub nr_vcpus: u8,
    /// Most vCPUs the guest may have, `nr_vcpus..=254`.
    pub max_vcpus: u8,
    /// Include guest memory in a core dump of the VMM.
    pub dump_guest_core: bool,
    /// Map guest memory shared so other processes can map it too.
    pub mem_share: bool,
    /// Allow more guest RAM than the host has (`-machine
    /// mem-overcommit=on`); otherwise RAM above the host's MemTotal is
    /// refused before anything is allocated.
    pub mem_overcommit: bool,
    /// Block slots (`-machine microvm,blk-slots=N`): the guest's first N
    /// virtio-blk devices, filled at boot by the configured disks in
    /// order, the rest empty for QMP hotplug; 0 turns slots off (disks
    /// then get fixed windows).
    pub blk_slots: u8,
    /// Network slots (`-machine microvm,net-slots=N`), filled at boot by
    /// the configured NICs in order, the rest empty for QMP hotplug; 0
    /// turns them off.
    pub net_slots: u8,
    /// Describe the machine to the guest with ACPI tables
    /// (`-machine microvm,acpi=on|off`).
    pub acpi: bool,
    /// Create the in-kernel i8254 PIT (`-machine microvm,pit=on|off`, as
    /// QEMU's microvm). Off suits guests that never use it (a Linux with
    /// kvmclock and the TSC-deadline timer skips it) and saves the PIT's
    /// teardown when the VM ends.
    pub pit: bool,
}

/// Default number of block slots, boot disks included (StratoVirt's
/// microVM has four replaceable block devices; Kata hot-plugs its
/// container disks into the ones its rootfs disk leaves free).
pub const DEFAULT_BLK_SLOTS: u8 = 4;
/// Most hotplug block slots (the IRQ lines are shared with every device).
pub const MAX_BLK_SLOTS: u8 = 16;
/// Default number of network slots, boot NICs included (StratoVirt's
/// microVM has two replaceable NICs).
pub const DEFAULT_NET_SLOTS: u8 = 2;
/// Most hotplug network slots.
pub const MAX_NET_SLOTS: u8 = 8;

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            mem_size: DEFAULT_MEM_SIZE,
            nr_vcpus: 1,
            max_vcpus: 1,
            dump_guest_core: true,
            mem_share: false,
            mem_overcommit: false,
            blk_slots: DEFAULT_BLK_SLOTS,
            net_slots: DEFAULT_NET_SLOTS,
            acpi: true,
            pit: true,
        }
    }
}

/// What the guest boots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootConfig {
    /// Kernel image; `None` boots the built-in demo guest.
    pub kernel: Option<PathBuf>,
    /// Initial RAM disk; only allowed together with a kernel.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Backend of the legacy serial port.
#[derive(Debug, Clone, PartialEq)]
pub enum SerialConfig {
    /// The VMM's standard input and output.
    Stdio,
    /// Guest output is written to this file.
    File(PathBuf),
    /// No serial port.
    None,
}

/// Destination of the VMM's own log messages.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTarget {
    /// Logging is off.
    None,
    /// Log to standard error.
    Stderr,
    /// Log to this file.
    File(PathBuf),
}

/// A virtio block device.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveConfig {
    /// Device id, unique among all devices.
    pub id: String,
    /// Image file or block device on the host.
    pub path: PathBuf,
    /// Expose the disk read-only.
    pub read_only: bool,
    /// Open the image with `O_DIRECT`.
    pub direct: bool,
    /// I/O limits (none by default).
    pub limits: IoLimits,
}

/// A virtio network device backed by a host tap device.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Device id, unique among all devices.
    pub id: String,
    /// Name of the tap device on the host.
    pub host_dev_name: String,
    /// Guest MAC address as written (`xx:xx:xx:xx:xx:xx`), if fixed.
    pub mac: Option<String>,
    /// Limits on what the guest receives (`rx_rate_limiter`) and sends
    /// (`tx_rate_limiter`).
    pub limits: NetIoLimits,
}

/// A virtio vsock device.
#[derive(Debug, Clone, PartialEq)]
pub struct VsockConfig {
    /// Device id, unique among all devices.
    pub id: String,
    /// Guest context id, `3..u32::MAX`.
    pub guest_cid: u32,
}

/// A virtio entropy device.
#[derive(Debug, Clone, PartialEq)]
pub struct RngConfig {
    /// Host file the entropy is read from.
    pub random_file: PathBuf,
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Scratch directories for tests that need real files.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A directory removed again when dropped.
    pub(crate) struct TempDir {
        path: PathBuf,
    }

    impl TempDir {
        /// Create a fresh, empty directory.
        pub(crate) fn new(tag: &str) -> Self {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir().join(format!(
                "altovirt-config-{}-{}-{}",
                std::process::id(),
                tag,
                n
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }

        /// The directory itself.
        pub(crate) fn path(&self) -> &Path {
            &self.path
        }

        /// Write a file in the directory and return its path.
        pub(crate) fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.path.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let vm = VmConfig::default();
        assert_eq!(vm.machine.mem_size, 256 * 1024 * 1024);
        assert_eq!(vm.machine.nr_vcpus, 1);
        assert_eq!(vm.machine.max_vcpus, 1);
        assert!(vm.machine.dump_guest_core);
        assert!(!vm.machine.mem_share);
        assert_eq!(vm.serial, SerialConfig::Stdio);
        assert_eq!(vm.log, LogTarget::None);
        assert_eq!(vm.boot, BootConfig::default());
        assert_eq!(vm.boot.cmdline, "");
        assert!(vm.name.is_none() && vm.uuid.is_none() && vm.pidfile.is_none());
        assert!(!vm.disable_seccomp && !vm.daemonize && !vm.no_reboot);
        assert!(!vm.nographic && !vm.nodefaults);
        assert!(vm.drives.is_empty() && vm.nets.is_empty());
        assert!(vm.vsock.is_none() && vm.rng.is_none());
    }
}
