//! The VM factory, Kata's VM templating: `factory init` boots a template VM
//! from the configuration, waits until the guest is ready, pauses it and
//! has altovirt write its RAM and state into `[factory] template_path`
//! (QMP `migrate {"uri": "file:DIR"}`); sandboxes then start from it
//! (`altovirt -incoming file:DIR`, the RAM mapped copy-on-write) instead
//! of booting. `template.json` beside the two files records what the
//! template was taken with; it is written last, so its presence means the
//! template is complete.
//!
//! Only `[hypervisor.stratovirt]` (altovirt) templates exist: QEMU's way
//! (file-backed shared memory, `x-ignore-shared`, `-incoming defer`) is
//! not implemented. See docs/shim.md, "VM factory".

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cmdline::{files, FactoryRole};
use crate::config::{Flavour, HypervisorConfig, LoadedConfig};
use crate::driver::{DriverError, Hypervisor, Timeouts};

/// The guest RAM file altovirt writes in the template directory.
pub const MEMORY_FILE: &str = "memory";
/// The vCPU and device state file altovirt writes there.
pub const STATE_FILE: &str = "state";
/// The shim's record of the template (written last).
pub const META_FILE: &str = "template.json";
/// Version of [`TemplateMeta`].
pub const META_VERSION: u32 = 1;
/// The sandbox id of the template VM (`-name sandbox-factory-template`).
pub const TEMPLATE_VM_ID: &str = "factory-template";
/// The line altovirt logs (`-D`) when the guest writes the boot-complete
/// port (0x3f0, value 123).
pub const BOOT_COMPLETE_LOG: &str = "guest boot complete";

/// Factory errors: each is one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// Templates of this flavour are not implemented.
    #[error("only [hypervisor.stratovirt] templates are supported (the configuration selects [hypervisor.{0}])")]
    Flavour(Flavour),
    /// `[factory] enable_template` is off.
    #[error("[factory] enable_template is false in {0}")]
    NotEnabled(PathBuf),
    /// The configuration has something a template cannot carry.
    #[error("{0}")]
    Unsupported(String),
    /// A template is there already.
    #[error("there is already a template in {0} (`altovirt-shim factory destroy` first)")]
    Exists(PathBuf),
    /// No template.
    #[error("no template in {0}")]
    Missing(PathBuf),
    /// A file could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The template's files are damaged or incomplete.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The template VM failed.
    #[error("template VM: {0}")]
    Vm(#[from] DriverError),
    /// The VMM exited before the template was written.
    #[error("template VM exited while {while_}: {last_line} (logs in {dir})")]
    Exited {
        /// What the factory was doing.
        while_: &'static str,
        /// The VMM's last line.
        last_line: String,
        /// The template VM's run directory.
        dir: PathBuf,
    },
    /// The guest did not become ready.
    #[error("the guest did not become ready within {secs} s (waiting for {what}; logs in {dir})")]
    NotReady {
        /// The timeout.
        secs: u64,
        /// The readiness signal.
        what: String,
        /// The template VM's run directory.
        dir: PathBuf,
    },
    /// altovirt could not write the snapshot.
    #[error("migrate to {dir} failed: {reason}")]
    Migrate {
        /// The template directory.
        dir: PathBuf,
        /// The VMM's reason.
        reason: String,
    },
    /// The sandbox's configuration is not the template's.
    #[error("the template in {dir} was taken with another [hypervisor.{flavour}] ({keys} differ)")]
    Mismatch {
        /// The template directory.
        dir: PathBuf,
        /// The section.
        flavour: Flavour,
        /// The keys that differ.
        keys: String,
    },
}

/// When `factory init` takes the snapshot. The agent is not available to
/// the shim, so the guest's readiness is one of these signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The guest wrote 123 to the boot-complete port 0x3f0 (altovirt logs
    /// [`BOOT_COMPLETE_LOG`]); the default.
    BootComplete,
    /// A serial console line containing this text.
    Console(String),
    /// A fixed delay after the VMM answers QMP.
    Delay(Duration),
}

impl FromStr for Readiness {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "boot-complete" {
            return Ok(Readiness::BootComplete);
        }
        if let Some(t) = s.strip_prefix("console=") {
            if t.is_empty() {
                return Err("console=TEXT needs a text".into());
            }
            return Ok(Readiness::Console(t.into()));
        }
        if let Some(d) = s.strip_prefix("delay=") {
            return d
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 3600.0)
                .map(|v| Readiness::Delay(Duration::from_secs_f64(v)))
                .ok_or_else(|| format!("delay={d}: seconds from 0 to 3600"));
        }
        Err(format!(
            "{s:?}: use boot-complete, console=TEXT or delay=SECONDS"
        ))
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::BootComplete => f.write_str("boot-complete"),
            Readiness::Console(t) => write!(f, "console={t}"),
            Readiness::Delay(d) => write!(f, "delay={}", d.as_secs_f64()),
        }
    }
}

/// Options of `factory init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// When the guest is ready.
    pub readiness: Readiness,
    /// How long to wait for it.
    pub timeout: Duration,
    /// Where the template VM's sockets and logs go (a directory of its
    /// own is made inside, removed on success).
    pub run_dir: PathBuf,
}

/// What `template.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// [`META_VERSION`].
    pub version: u32,
    /// Always `stratovirt` today.
    pub flavour: Flavour,
    /// The hypervisor section the template was taken with; a sandbox
    /// starts from the template only with the same one.
    pub hypervisor: HypervisorConfig,
    /// The configuration file.
    pub config_file: PathBuf,
    /// The exact VMM arguments of the template VM (a clone gets the same,
    /// with its own run directory's paths, plus `-incoming`).
    pub args: Vec<String>,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// The readiness signal waited for.
    pub readiness: String,
    /// Launch of the template VM to QMP ready, ms.
    pub start_ms: u64,
    /// Launch to the guest ready, ms.
    pub ready_ms: u64,
    /// The snapshot (QMP `query-migrate` `total-time`), ms.
    pub migrate_ms: u64,
    /// Guest RAM bytes written (`ram.transferred`).
    pub ram_written: u64,
}

/// A template found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateStatus {
    /// The directory.
    pub dir: PathBuf,
    /// Its record.
    pub meta: TemplateMeta,
    /// The RAM file's size, bytes.
    pub memory_bytes: u64,
    /// Bytes of it allocated on disk (the file is sparse).
    pub memory_allocated: u64,
    /// The state file's size, bytes.
    pub state_bytes: u64,
}

/// The template directory of a configuration, made absolute (the VMM and
/// the shim resolve it alike).
pub fn template_dir(cfg: &LoadedConfig) -> PathBuf {
    let p = PathBuf::from(&cfg.config.factory.template_path);
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map_or(p.clone(), |d| d.join(&p))
    }
}

/// Checks that a template can be made (and used) with this configuration.
/// As Kata, a template needs an initrd (no rootfs disk).
pub fn check_supported(cfg: &LoadedConfig) -> Result<(), FactoryError> {
    if cfg.flavour != Flavour::StratoVirt {
        return Err(FactoryError::Flavour(cfg.flavour));
    }
    let hv = &cfg.hypervisor;
    let why = if hv.initrd.is_empty() {
        "a template needs an initrd ([hypervisor.stratovirt] initrd; as Kata: enable_template requires an initrd image)"
    } else if !hv.jailer_path.is_empty() {
        "templates are not supported with jailer_path"
    } else if hv.vsock == "vhost" {
        "templates are not supported with vsock = \"vhost\" (its state lives in the host kernel)"
    } else if hv.shared_fs == "virtio-fs" {
        "templates are not supported with shared_fs = \"virtio-fs\" (it needs shared guest memory)"
    } else {
        return Ok(());
    };
    Err(FactoryError::Unsupported(why.into()))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FactoryError + '_ {
    move |source| FactoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the template in `dir`: [`FactoryError::Missing`] without
/// `template.json`, [`FactoryError::Corrupt`] when it or the two snapshot
/// files are not what it says.
pub fn load(dir: &Path) -> Result<TemplateStatus, FactoryError> {
    let meta_path = dir.join(META_FILE);
    let text = match fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FactoryError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(io_err(&meta_path)(e)),
    };
    let corrupt = |path: &Path, reason: String| FactoryError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let meta: TemplateMeta =
        serde_json::from_str(&text).map_err(|e| corrupt(&meta_path, e.to_string()))?;
    if meta.version != META_VERSION {
        return Err(corrupt(
            &meta_path,
            format!("version {} (this shim reads {META_VERSION})", meta.version),
        ));
    }
    let stat = |name: &str| {
        let p = dir.join(name);
        fs::metadata(&p).map_err(|e| corrupt(&p, e.to_string()))
    };
    let memory = stat(MEMORY_FILE)?;
    let state = stat(STATE_FILE)?;
    let want = u64::from(meta.hypervisor.default_memory) << 20;
    if memory.len() != want {
        return Err(corrupt(
            &dir.join(MEMORY_FILE),
            format!("{} bytes, the template's guest has {want}", memory.len()),
        ));
    }
    if state.len() == 0 {
        return Err(corrupt(&dir.join(STATE_FILE), "empty".into()));
    }
    Ok(TemplateStatus {
        dir: dir.to_path_buf(),
        memory_bytes: memory.len(),
        memory_allocated: memory.blocks() * 512,
        state_bytes: state.len(),
        meta,
    })
}

/// The keys of the hypervisor section that differ between the template
/// and the sandbox (empty: the sandbox may start from the template).
/// Kata compares the whole VM configuration too; it hot-adds vCPUs and
/// memory above the template's, which altovirt cannot, so here they must
/// match as well.
pub fn differing_keys(template: &HypervisorConfig, sandbox: &HypervisorConfig) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) = (
        serde_json::to_value(template),
        serde_json::to_value(sandbox),
    ) else {
        return vec!["(unreadable)".into()];
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The template a sandbox of `cfg` starts from, if it may:
/// `Ok(Some(dir))` to restore, `Ok(None)` when templating is off, `Err`
/// with the reason to boot cold (missing, other configuration,
/// unsupported) or to fail (damaged: the caller decides).
pub fn template_for(cfg: &LoadedConfig) -> Result<Option<PathBuf>, FactoryError> {
    if !cfg.config.factory.enable_template {
        return Ok(None);
    }
    check_supported(cfg)?;
    let dir = template_dir(cfg);
    let t = load(&dir)?;
    let keys = differing_keys(&t.meta.hypervisor, &cfg.hypervisor);
    if t.meta.flavour != cfg.flavour || !keys.is_empty() {
        return Err(FactoryError::Mismatch {
            dir,
            flavour: cfg.flavour,
            keys: keys.join(", "),
        });
    }
    Ok(Some(dir))
}

/// `factory init`: boots the template VM, waits for `opts.readiness`,
/// pauses it, snapshots it into the template directory, stops it and
/// writes `template.json`. Nothing is left in the template directory
/// after a failure; the template VM's logs stay in its run directory.
pub fn init(cfg: &LoadedConfig, opts: &InitOptions) -> Result<TemplateStatus, FactoryError> {
    check_supported(cfg)?;
    if !cfg.config.factory.enable_template {
        return Err(FactoryError::NotEnabled(cfg.file.clone()));
    }
    let dir = template_dir(cfg);
    if dir.join(META_FILE).exists() {
        return Err(FactoryError::Exists(dir));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(&dir))?;
    let vm_dir = opts
        .run_dir
        .join(format!("{TEMPLATE_VM_ID}-{}", std::process::id()));
    let mut h = Hypervisor::new(cfg, TEMPLATE_VM_ID, &vm_dir);
    h.set_factory_role(FactoryRole::Template)?;
    // The snapshot of a large guest takes more than one ordinary command.
    h.set_timeouts(Timeouts {
        command: Duration::from_secs(120),
        ..Timeouts::default()
    });
    let taken = take_template(&mut h, &dir, &vm_dir, opts);
    let stopped = h.stop();
    let meta = match (taken, stopped) {
        (Ok(m), Ok(_)) => m,
        (Err(e), _) => {
            remove_files(&dir);
            return Err(e);
        }
        (Ok(_), Err(e)) => {
            remove_files(&dir);
            return Err(e.into());
        }
    };
    let meta = TemplateMeta {
        config_file: cfg.file.clone(),
        ..meta
    };
    write_meta(&dir, &meta).inspect_err(|_| remove_files(&dir))?;
    let _ = fs::remove_dir_all(&vm_dir);
    log::info!("vm factory template written to {}", dir.display());
    load(&dir)
}

fn take_template(
    h: &mut Hypervisor,
    dir: &Path,
    vm_dir: &Path,
    opts: &InitOptions,
) -> Result<TemplateMeta, FactoryError> {
    let launched = Instant::now();
    h.start()?;
    let start_ms = h.start_duration().unwrap_or_default().as_millis() as u64;
    wait_ready(h, vm_dir, opts)?;
    let ready_ms = launched.elapsed().as_millis() as u64;
    h.pause()?;
    exited(h, vm_dir, "pausing")?;
    let uri = format!("file:{}", dir.display());
    let migrate_err = |reason: String| FactoryError::Migrate {
        dir: dir.to_path_buf(),
        reason,
    };
    h.qmp_execute("migrate", Some(json!({ "uri": uri })))
        .map_err(|e| migrate_err(e.to_string()))?;
    let info = h.qmp_execute("query-migrate", None)?;
    if info.get("status").and_then(Value::as_str) != Some("completed") {
        let why = info
            .get("error-desc")
            .and_then(Value::as_str)
            .map_or_else(|| info.to_string(), String::from);
        return Err(migrate_err(why));
    }
    let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    Ok(TemplateMeta {
        version: META_VERSION,
        flavour: h.flavour(),
        hypervisor: h.spec().hv.clone(),
        config_file: PathBuf::new(),
        args: h.args(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        readiness: opts.readiness.to_string(),
        start_ms,
        ready_ms,
        migrate_ms: num(info.get("total-time")),
        ram_written: num(info.get("ram").and_then(|r| r.get("transferred"))),
    })
}

/// Fails if the template VM's VMM has exited.
fn exited(h: &mut Hypervisor, vm_dir: &Path, while_: &'static str) -> Result<(), FactoryError> {
    if h.try_wait()?.is_none() {
        return Ok(());
    }
    let log = fs::read_to_string(vm_dir.join("vmm.stderr")).unwrap_or_default();
    let last_line = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    Err(FactoryError::Exited {
        while_,
        last_line,
        dir: vm_dir.to_path_buf(),
    })
}

/// Waits for the readiness signal, noticing an exit of the VMM.
fn wait_ready(h: &mut Hypervisor, vm_dir: &Path, opts: &InitOptions) -> Result<(), FactoryError> {
    let begun = Instant::now();
    let (file, text) = match &opts.readiness {
        Readiness::BootComplete => (vm_dir.join(files::VMM_LOG), BOOT_COMPLETE_LOG),
        Readiness::Console(t) => (vm_dir.join(files::CONSOLE_LOG), t.as_str()),
        Readiness::Delay(d) => {
            while begun.elapsed() < *d {
                exited(h, vm_dir, "waiting for the guest")?;
                thread::sleep(Duration::from_millis(20).min(*d));
            }
            return Ok(());
        }
    };
    loop {
        exited(h, vm_dir, "waiting for the guest")?;
        let seen = fs::read(&file)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .any(|l| l.contains(text))
            })
            .unwrap_or(false);
        if seen {
            return Ok(());
        }
        if begun.elapsed() >= opts.timeout {
            return Err(FactoryError::NotReady {
                secs: opts.timeout.as_secs(),
                what: match &opts.readiness {
                    Readiness::BootComplete => format!("{text:?} in {}", file.display()),
                    _ => format!("a console line containing {text:?}"),
                },
                dir: vm_dir.to_path_buf(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `template.json` atomically (temporary file, then rename).
fn write_meta(dir: &Path, meta: &TemplateMeta) -> Result<(), FactoryError> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!(".{META_FILE}.tmp"));
    let text = serde_json::to_string_pretty(meta).map_err(|e| FactoryError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Removes what a failed `init` left in `dir` (the factory's files, and
/// the directory if that empties it; never anything else).
fn remove_files(dir: &Path) {
    for f in [META_FILE, MEMORY_FILE, STATE_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    let _ = fs::remove_file(dir.join(format!(".{META_FILE}.tmp")));
    let _ = fs::remove_dir(dir);
}

/// `factory destroy`: removes the template's files, then the directory if
/// that leaves it empty. Only the factory's own file names are removed, so
/// a mistaken `template_path` cannot cost anything else. Returns whether a
/// template was there. Sandboxes running from it keep their private
/// mapping of the RAM file.
pub fn destroy(dir: &Path) -> Result<bool, FactoryError> {
    let had = [META_FILE, MEMORY_FILE, STATE_FILE]
        .iter()
        .any(|f| dir.join(f).exists());
    // The record first: a half-removed template is never taken as whole.
    for f in [META_FILE, MEMORY_FILE, STATE_FILE] {
        let p = dir.join(f);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    let _ = fs::remove_file(dir.join(format!(".{META_FILE}.tmp")));
    // Fails harmlessly when something else is in it (or it is gone).
    let _ = fs::remove_dir(dir);
    Ok(had)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_parses_and_prints() {
        for s in ["boot-complete", "console=counter: ready", "delay=1.5"] {
            assert_eq!(s.parse::<Readiness>().unwrap().to_string(), s);
        }
        for bad in ["", "console=", "delay=x", "delay=-1", "soon"] {
            assert!(bad.parse::<Readiness>().is_err(), "{bad}");
        }
    }

    #[test]
    fn differing_keys_names_them() {
        let a = HypervisorConfig::default();
        let mut b = a.clone();
        assert!(differing_keys(&a, &b).is_empty());
        b.default_memory = 128;
        b.kernel_params = "x".into();
        assert_eq!(differing_keys(&a, &b), ["default_memory", "kernel_params"]);
    }

    #[test]
    fn load_and_destroy_touch_only_the_factory_files() {
        let dir = std::env::temp_dir().join(format!("shim-factory-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert!(matches!(load(&dir), Err(FactoryError::Missing(_))));
        let hv = HypervisorConfig {
            default_memory: 1,
            ..Default::default()
        };
        let meta = TemplateMeta {
            version: META_VERSION,
            flavour: Flavour::StratoVirt,
            hypervisor: hv,
            config_file: "/c.toml".into(),
            args: vec!["-m".into(), "1".into()],
            created: 1,
            readiness: "boot-complete".into(),
            start_ms: 1,
            ready_ms: 2,
            migrate_ms: 3,
            ram_written: 4,
        };
        write_meta(&dir, &meta).unwrap();
        // No snapshot files yet: damaged.
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
        fs::File::create(dir.join(MEMORY_FILE))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        fs::write(dir.join(STATE_FILE), b"x").unwrap();
        let t = load(&dir).unwrap();
        assert_eq!((t.meta, t.memory_bytes, t.state_bytes), (meta, 1 << 20, 1));
        fs::write(dir.join(META_FILE), b"{").unwrap();
        assert!(matches!(load(&dir), Err(FactoryError::Corrupt { .. })));
        fs::write(dir.join("keep"), b"").unwrap();
        assert!(destroy(&dir).unwrap());
        assert!(dir.join("keep").exists());
        assert!(!destroy(&dir).unwrap());
        fs::remove_file(dir.join("keep")).unwrap();
        assert!(destroy(&dir).is_ok());
        assert!(!dir.exists());
    }
}
