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
use std::path::{Path, PathBuf};

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
            blk_slots: DEFAULT_BLK_SLOTS,
            net_slots: DEFAULT_NET_SLOTS,
            vsock: String::new(),
            guest_cid: 3,
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

/// Chooses the configuration file: `explicit` (`--config`), then `env`
/// (`KATA_CONF_FILE`), then the first of `system` that exists. A file named
/// explicitly or by the environment must exist.
pub fn find_config(
    explicit: Option<&Path>,
    env: Option<&Path>,
    system: &[PathBuf],
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit.or(env) {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ConfigError::NotFound(p.display().to_string()))
        };
    }
    system.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = system.iter().map(|p| p.display().to_string()).collect();
        ConfigError::NotFound(tried.join(", "))
    })
}

/// Finds the file with the standard lookup order ([`CONF_ENV`],
/// [`SYSTEM_CONFIG_PATHS`]) and loads it.
pub fn load_default(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_default_select(explicit, None)
}

/// [`load_default`], choosing the `[hypervisor.SELECT]` section when given
/// (see [`load_select`]).
pub fn load_default_select(
    explicit: Option<&Path>,
    select: Option<Flavour>,
) -> Result<LoadedConfig, ConfigError> {
    let env = std::env::var_os(CONF_ENV).map(PathBuf::from);
    let system: Vec<PathBuf> = SYSTEM_CONFIG_PATHS.iter().map(PathBuf::from).collect();
    let file = find_config(explicit, env.as_deref(), &system)?;
    load_select(&file, select)
}

fn read_text(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

fn parse_toml(file: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        reason: e.to_string().trim().replace('\n', " "),
    })
}

/// Merges `over` into `base`, recording in `origin` which file set each leaf.
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in over {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &key, file, origin),
            (_, toml::Value::Table(o)) => {
                let mut t = toml::Table::new();
                merge(&mut t, o, &key, file, origin);
                base.insert(k, toml::Value::Table(t));
            }
            (_, v) => {
                origin.insert(key, file.to_path_buf());
                base.insert(k, v);
            }
        }
    }
}

/// The `config.d/*.toml` files beside `file`, in alphabetical order.
pub fn drop_ins(file: &Path) -> Vec<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new(".")).join("config.d");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Loads `file` and its drop-ins, then validates. The file must have
/// exactly one `[hypervisor.*]` section.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
    load_select(file, None)
}

/// Loads `file` and its drop-ins, then validates. With `select`, that
/// `[hypervisor.*]` section must exist and is the one used (others are
/// ignored, not validated); without it there must be exactly one.
pub fn load_select(file: &Path, select: Option<Flavour>) -> Result<LoadedConfig, ConfigError> {
    let main = read_text(file)?;
    let mut extra = Vec::new();
    for d in drop_ins(file) {
        let text = read_text(&d)?;
        extra.push((d, text));
    }
    load_texts(file, &main, &extra, select)
}

/// [`load_select`] on texts already read: `main` is the text of `file`,
/// `extra` the drop-ins (path and text) in the order they apply.
pub(crate) fn load_texts(
    file: &Path,
    main: &str,
    extra: &[(PathBuf, String)],
    select: Option<Flavour>,
) -> Result<LoadedConfig, ConfigError> {
    let mut origin = BTreeMap::new();
    let mut merged = toml::Table::new();
    merge(&mut merged, parse_toml(file, main)?, "", file, &mut origin);
    for (d, text) in extra {
        merge(&mut merged, parse_toml(d, text)?, "", d, &mut origin);
    }
    let extra: Vec<PathBuf> = extra.iter().map(|(d, _)| d.clone()).collect();
    let config: Configuration =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                file: extra.last().cloned().unwrap_or_else(|| file.to_path_buf()),
                reason: e.message().to_string(),
            })?;
    crate::config_validate::validate(file, extra, config, &origin, select)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
