//! Kata's `configuration.toml`: sections, key names and defaults, the
//! `config.d/` drop-ins, the lookup order and the validation.
//!
//! Lookup order: `--config`, `KATA_CONF_FILE`,
//! `/etc/altovirt/configuration.toml`,
//! `/usr/share/defaults/altovirt/configuration.toml`. Files in the
//! `config.d/` directory beside the chosen file (`*.toml`) are merged on top
//! of it in alphabetical order: tables merge key by key, other values are
//! replaced. Every validation error names the key and the file that set it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// System configuration paths, in lookup order after `--config` and
/// `KATA_CONF_FILE`.
pub const SYSTEM_CONFIG_PATHS: [&str; 2] = [
    "/etc/altovirt/configuration.toml",
    "/usr/share/defaults/altovirt/configuration.toml",
];

/// Environment variable naming the configuration file.
pub const CONF_ENV: &str = "KATA_CONF_FILE";

/// Most vCPUs altovirt supports.
pub const MAX_VCPUS: u32 = 254;

/// altovirt's default number of block hotplug slots.
pub const DEFAULT_BLK_SLOTS: u32 = 4;

/// altovirt's default number of network hotplug slots.
pub const DEFAULT_NET_SLOTS: u32 = 2;

/// Most hotplug slots of one kind altovirt creates.
pub const MAX_HOTPLUG_SLOTS: u32 = 16;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No configuration file was found.
    #[error("no configuration file found (tried {0})")]
    NotFound(String),
    /// A file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML or has a value of the wrong type.
    #[error("{file}: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A value is not acceptable.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The file that set the key (the main file for defaults).
        file: PathBuf,
        /// Dotted key, e.g. `hypervisor.qemu.default_vcpus`.
        key: String,
        /// Why.
        reason: String,
    },
}

/// One `[hypervisor.NAME]` section (Kata key names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HypervisorConfig {
    /// VMM binary.
    pub path: String,
    /// Guest kernel.
    pub kernel: String,
    /// Initial RAM disk (exclusive with `image`).
    pub initrd: String,
    /// Root image (exclusive with `initrd`).
    pub image: String,
    /// Extra kernel parameters.
    pub kernel_params: String,
    /// Machine type; only `microvm`.
    pub machine_type: String,
    /// Extra machine options appended to `-machine`.
    pub machine_accelerators: String,
    /// CPU features (QEMU `-cpu host,...`).
    pub cpu_features: String,
    /// vCPUs at boot (`<= 0` means 1, as in Kata).
    pub default_vcpus: i32,
    /// Most vCPUs (`0` means the host's CPU count, capped at 254).
    pub default_maxvcpus: u32,
    /// Memory in MiB.
    pub default_memory: u32,
    /// Memory slots for hotplug.
    pub memory_slots: u32,
    /// Block device driver: `virtio-mmio` or `virtio-blk`.
    pub block_device_driver: String,
    /// Do not use block devices for the container rootfs.
    pub disable_block_device_use: bool,
    /// Shared filesystem: `virtio-fs`, `virtio-9p` or `none`.
    pub shared_fs: String,
    /// virtiofsd binary.
    pub virtio_fs_daemon: String,
    /// Entropy source of virtio-rng.
    pub entropy_source: String,
    /// Debug output of the VMM.
    pub enable_debug: bool,
    /// Allowed `path` values (glob patterns with `*` and `?`); empty allows any.
    pub valid_hypervisor_paths: Vec<String>,
    /// Disable vhost-net.
    pub disable_vhost_net: bool,
    /// Use iothreads.
    pub enable_iothreads: bool,
    /// Kata's key: give memory the guest frees back to the host. As Kata's
    /// Cloud Hypervisor and Dragonball drivers do, a balloon of size 0 with
    /// free page reporting (`-device virtio-balloon-device,id=balloon0,
    /// free-page-reporting=on`, both flavours).
    pub reclaim_guest_freed_memory: bool,
    /// altovirt-shim key (not Kata's): block slots altovirt creates at
    /// boot (`-machine microvm,blk-slots=N`), the rootfs `image` disk in
    /// slot 0 when there is one, at most [`MAX_HOTPLUG_SLOTS`]. Only
    /// `[hypervisor.stratovirt]` uses it.
    pub blk_slots: u32,
    /// altovirt-shim key (not Kata's): network slots
    /// (`-machine microvm,net-slots=N`), the boot NICs (`--tap`) in the
    /// first ones, at most [`MAX_HOTPLUG_SLOTS`]. Only
    /// `[hypervisor.stratovirt]` uses it.
    pub net_slots: u32,
    /// altovirt-shim key (not Kata's): the guest's vsock. `vhost` (Kata's:
    /// `/dev/vhost-vsock` opened by the shim and inherited by the VMM),
    /// `hybrid` (altovirt's userspace vsock over unix sockets), `none`.
    /// Empty means `hybrid` for stratovirt and `none` for qemu.
    pub vsock: String,
    /// altovirt-shim key (not Kata's): the guest's vsock context id.
    pub guest_cid: u32,
    /// Kata's key (its Firecracker section has it): a jailer to launch the
    /// VMM through; here `altovirt-ozone` (docs/ozone.md). Empty: none.
    /// Only `[hypervisor.stratovirt]` uses it.
    pub jailer_path: String,
    /// Kata's key: allowed `jailer_path` values (globs); empty allows any.
    pub valid_jailer_paths: Vec<String>,
    /// altovirt-shim key (not Kata's): the uid the jailed VMM runs as.
    pub jailer_uid: u32,
    /// altovirt-shim key (not Kata's): the gid the jailed VMM runs as.
    pub jailer_gid: u32,
    /// Kata's key: disk bandwidth limit in bits/s (0: none), on every
    /// disk (see [`crate::rate_limits`]).
    pub disk_rate_limiter_bw_max_rate: u64,
    /// Kata's key: bits the disks may move once on top of that rate.
    pub disk_rate_limiter_bw_one_time_burst: u64,
    /// Kata's key: disk operations per second (0: none).
    pub disk_rate_limiter_ops_max_rate: u64,
    /// Kata's key: operations allowed once on top of that rate.
    pub disk_rate_limiter_ops_one_time_burst: u64,
    /// Kata's key: bandwidth of each NIC, bits/s, in each direction
    /// (received and sent; boot and hot-plugged NICs).
    pub net_rate_limiter_bw_max_rate: u64,
    /// Kata's key: bits allowed once on top of that rate.
    pub net_rate_limiter_bw_one_time_burst: u64,
    /// Kata's key: frames per second of each NIC, in each direction.
    pub net_rate_limiter_ops_max_rate: u64,
    /// Kata's key: frames allowed once on top of that rate.
    pub net_rate_limiter_ops_one_time_burst: u64,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            path: String::new(),
            kernel: String::new(),
            initrd: String::new(),
            image: String::new(),
            kernel_params: String::new(),
            machine_type: "microvm".into(),
            machine_accelerators: String::new(),
            cpu_features: String::new(),
            default_vcpus: 1,
            default_maxvcpus: 0,
            default_memory: 2048,
            memory_slots: 10,
            block_device_driver: "virtio-mmio".into(),
            disable_block_device_use: false,
            // Kata's default is virtio-fs, which needs a virtiofsd and a
            // VMM with vhost-user-fs (altovirt refuses it today).
            shared_fs: "none".into(),
            virtio_fs_daemon: String::new(),
            entropy_source: "/dev/urandom".into(),
            enable_debug: false,
            valid_hypervisor_paths: Vec::new(),
            disable_vhost_net: false,
            enable_iothreads: false,
            reclaim_guest_freed_memory: false,
            blk_slots: DEFAULT_BLK_SLOTS,
            net_slots: DEFAULT_NET_SLOTS,
            vsock: String::new(),
            guest_cid: 3,
            jailer_path: String::new(),
            valid_jailer_paths: Vec::new(),
            jailer_uid: 65534,
            jailer_gid: 65534,
            disk_rate_limiter_bw_max_rate: 0,
            disk_rate_limiter_bw_one_time_burst: 0,
            disk_rate_limiter_ops_max_rate: 0,
            disk_rate_limiter_ops_one_time_burst: 0,
            net_rate_limiter_bw_max_rate: 0,
            net_rate_limiter_bw_one_time_burst: 0,
            net_rate_limiter_ops_max_rate: 0,
            net_rate_limiter_ops_one_time_burst: 0,
        }
    }
}

/// `[agent.kata]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// Agent debug output.
    pub enable_debug: bool,
    /// Agent tracing.
    pub enable_tracing: bool,
    /// Kernel modules the agent loads.
    pub kernel_modules: Vec<String>,
    /// Debug console in the guest.
    pub debug_console_enabled: bool,
    /// Seconds to wait for the agent.
    pub dial_timeout: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            enable_debug: false,
            enable_tracing: false,
            kernel_modules: Vec::new(),
            debug_console_enabled: false,
            dial_timeout: 45,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Runtime debug output.
    pub enable_debug: bool,
    /// `tcfilter`, `macvtap` or `none`.
    pub internetworking_model: String,
    /// Disable seccomp in the guest.
    pub disable_guest_seccomp: bool,
    /// Put only the sandbox in the cgroup.
    pub sandbox_cgroup_only: bool,
    /// Size the sandbox statically.
    pub static_sandbox_resource_mgmt: bool,
    /// Do not create a network namespace.
    pub disable_new_netns: bool,
    /// Experimental features.
    pub experimental: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            enable_debug: false,
            internetworking_model: "tcfilter".into(),
            disable_guest_seccomp: true,
            sandbox_cgroup_only: false,
            static_sandbox_resource_mgmt: false,
            disable_new_netns: false,
            experimental: Vec::new(),
        }
    }
}

/// `[factory]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FactoryConfig {
    /// VM templating.
    pub enable_template: bool,
    /// Template directory.
    pub template_path: String,
    /// VMs kept in the cache.
    pub vm_cache_number: u32,
    /// Cache socket.
    pub vm_cache_endpoint: String,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            enable_template: false,
            template_path: "/run/vc/vm/template".into(),
            vm_cache_number: 0,
            vm_cache_endpoint: "/var/run/kata-containers/cache.sock".into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Configuration {
    /// `[hypervisor.NAME]` sections.
    pub hypervisor: BTreeMap<String, HypervisorConfig>,
    /// `[agent.NAME]` sections.
    pub agent: BTreeMap<String, AgentConfig>,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[factory]`.
    pub factory: FactoryConfig,
}

/// Which VMM a hypervisor section drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flavour {
    /// altovirt (StratoVirt-style command line), `[hypervisor.stratovirt]`.
    StratoVirt,
    /// `qemu-system-x86_64 -M microvm`, `[hypervisor.qemu]`.
    Qemu,
}

impl Flavour {
    /// The `[hypervisor.NAME]` section name.
    pub fn section(self) -> &'static str {
        match self {
            Flavour::StratoVirt => "stratovirt",
            Flavour::Qemu => "qemu",
        }
    }

    /// The flavour of a section name.
    pub fn from_section(name: &str) -> Option<Flavour> {
        match name {
            "stratovirt" => Some(Flavour::StratoVirt),
            "qemu" => Some(Flavour::Qemu),
            _ => None,
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.section())
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The main file.
    pub file: PathBuf,
    /// Drop-ins applied, in order.
    pub drop_ins: Vec<PathBuf>,
    /// The configuration (vCPU defaults resolved).
    pub config: Configuration,
    /// The flavour of the single hypervisor section.
    pub flavour: Flavour,
    /// Its name (`stratovirt` or `qemu`).
    pub hypervisor_name: String,
    /// The selected (validated) hypervisor section.
    pub hypervisor: HypervisorConfig,
}
