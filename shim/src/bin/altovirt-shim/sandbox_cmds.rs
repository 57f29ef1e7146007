//! `run` (from the VM factory's template when there is one), `status`,
//! `hotplug`, `metrics` and `stop`.
//!
//! Exit status: 0 on success, 1 on failure, 3 when the operation is not
//! supported by the VMM (hotplug on QEMU microvm, network hotplug on an
//! altovirt build without it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use argh::FromArgs;
use serde_json::{json, Value};
use shim::cmdline::FactoryRole;
use shim::config::{Flavour, LoadedConfig};
use shim::config_load;
use shim::driver::{DriverError, Hypervisor, QmpMode};
use shim::factory::{self, FactoryError};
use shim::hotplug::{BlockDevice, NetDevice, TapSource};
use shim::sandbox::{self, SandboxError, SandboxState};
use shim::slots::SlotTable;
use shim::{metrics, signals, tap};

/// `eprintln!` that never panics: `run` must go on (and stop its VM) even
/// if whoever started it closed its stderr.
macro_rules! note {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Exit status for "not supported by this VMM".
const EXIT_UNSUPPORTED: u8 = 3;

fn fail(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    note!("altovirt-shim {cmd}: {e}");
    ExitCode::FAILURE
}

fn fail_driver(cmd: &str, e: DriverError) -> ExitCode {
    let code = match e {
        DriverError::Unsupported { .. } => ExitCode::from(EXIT_UNSUPPORTED),
        _ => ExitCode::FAILURE,
    };
    note!("altovirt-shim {cmd}: {e}");
    code
}

/// Boot a sandbox VM and stay in the foreground until it ends or a
/// SIGTERM/SIGINT/SIGHUP stops it. Prints the QMP socket path on stdout.
#[derive(FromArgs)]
#[argh(subcommand, name = "run")]
pub struct RunCmd {
    /// which [hypervisor.NAME] section to use: stratovirt (altovirt) or qemu
    /// (default: the only one in the file)
    #[argh(option, from_str_fn(parse_flavour))]
    hypervisor: Option<Flavour>,
    /// sandbox id (default sandbox-PID)
    #[argh(option)]
    id: Option<String>,
    /// a tap (opened by name in this network namespace) for a network
    /// device at boot; may be repeated
    #[argh(option)]
    tap: Vec<String>,
}

fn parse_flavour(s: &str) -> Result<Flavour, String> {
    Flavour::from_section(s).ok_or_else(|| format!("{s:?}: use stratovirt or qemu"))
}

/// Reports a sandbox's VM: QMP status, pids, vCPU threads, hotplug slots.
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
pub struct StatusCmd {
    /// sandbox id
    #[argh(option)]
    id: String,
    /// JSON output
    #[argh(switch)]
    json: bool,
}

/// Hotplug a device into, or remove one from, a running sandbox.
#[derive(FromArgs)]
#[argh(subcommand, name = "hotplug")]
pub struct HotplugCmd {
    #[argh(subcommand)]
    op: HotplugOp,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum HotplugOp {
    Add(HotplugAdd),
    Remove(HotplugRemove),
}

/// Add a disk (--file) or a network device (--tap).
#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
struct HotplugAdd {
    /// sandbox id
    #[argh(option)]
    id: String,
    /// raw disk image to plug as a virtio-blk disk
    #[argh(option)]
    file: Option<PathBuf>,
    /// tap to plug as a virtio-net device (opened by name in this network
    /// namespace and passed to the VMM)
    #[argh(option)]
    tap: Option<String>,
    /// device id (default virtio-blk-hpN / virtio-net-hpN, N the slot)
    #[argh(option)]
    device: Option<String>,
    /// slot to use (default the lowest free one)
    #[argh(option)]
    slot: Option<usize>,
    /// plug the disk read-only
    #[argh(switch)]
    read_only: bool,
    /// open the disk with O_DIRECT
    #[argh(switch)]
    direct: bool,
    /// guest MAC of the network device (default derived from the ids)
    #[argh(option)]
    mac: Option<String>,
}

/// Remove a hotplugged device.
#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
struct HotplugRemove {
    /// sandbox id
    #[argh(option)]
    id: String,
    /// device id
    #[argh(option)]
    device: String,
}

/// Print a sandbox's metrics in the Prometheus text format.
#[derive(FromArgs)]
#[argh(subcommand, name = "metrics")]
pub struct MetricsCmd {
    /// sandbox id
    #[argh(option)]
    id: String,
}

/// Stop a sandbox: signal its `run` process, or stop an orphaned VMM.
#[derive(FromArgs)]
#[argh(subcommand, name = "stop")]
pub struct StopCmd {
    /// sandbox id
    #[argh(option)]
    id: String,
    /// seconds to wait (default 20)
    #[argh(option, default = "20")]
    timeout: u64,
}

/// `run`.
pub fn run(config_file: Option<&Path>, run_dir: &Path, r: RunCmd) -> ExitCode {
    const CMD: &str = "run";
    if let Err(e) = signals::install() {
        return fail(CMD, format!("signal handlers: {e}"));
    }
    let cfg = match config_load::load_default_select(config_file, r.hypervisor) {
        Ok(c) => c,
        Err(e) => return fail(CMD, e),
    };
    let id =
        r.id.unwrap_or_else(|| format!("sandbox-{}", std::process::id()));
    let dir = match sandbox::sandbox_dir(run_dir, &id) {
        Ok(d) => d,
        Err(e) => return fail(CMD, e),
    };
    if dir.exists() {
        match sandbox::load(run_dir, &id) {
            Ok(st) if sandbox::pid_alive(st.shim_pid) => {
                return fail(
                    CMD,
                    SandboxError::Running {
                        id,
                        pid: st.shim_pid,
                    },
                )
            }
            Ok(st) if sandbox::pid_alive(st.vmm_pid) => {
                return fail(
                    CMD,
                    format!(
                        "sandbox {id}: its VMM (pid {}) runs without its shim; `altovirt-shim stop --id {id}` first",
                        st.vmm_pid
                    ),
                )
            }
            _ => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    if let Err(e) = sandbox::create_dir(&dir) {
        return fail(CMD, e);
    }
    let remove_dir = || {
        let _ = std::fs::remove_dir_all(&dir);
    };
    // After a failure the logs stay for inspection (the next run with this
    // id replaces them); the state goes, so nothing reaches for the VM.
    let keep_logs = || {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name();
                if !["vmm.stderr", "vmm.log", "console.log"].contains(&&*n.to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    };
    let mut h = Hypervisor::new(&cfg, &id, &dir);
    // No connection is held between operations: a client that never
    // reads would have its events queue up in the VMM.
    h.set_qmp_mode(QmpMode::ReconnectPerOperation);
    let template = match from_template(&cfg, &id) {
        Ok(t) => t,
        Err(e) => {
            remove_dir();
            return fail(CMD, e);
        }
    };
    if let Some(t) = &template {
        if let Err(e) = h.set_factory_role(FactoryRole::FromTemplate(t.clone())) {
            remove_dir();
            return fail(CMD, e);
        }
    }
    // Cold boot: the taps are boot devices. From the template (which has
    // none): hotplugged once the clone runs, as Kata does after taking a
    // VM from its factory.
    let mut late_taps = Vec::new();
    for (i, name) in r.tap.iter().enumerate() {
        let added = tap::open_tap(name)
            .map_err(|e| e.to_string())
            .and_then(|fd| {
                if template.is_some() {
                    late_taps.push(fd);
                    Ok(())
                } else {
                    h.add_boot_net(&format!("net{i}"), fd, None)
                        .map_err(|e| e.to_string())
                }
            });
        if let Err(e) = added {
            remove_dir();
            return fail(CMD, e);
        }
    }
    if let Err(e) = h.start() {
        keep_logs();
        return match &template {
            Some(t) => fail(
                CMD,
                format!("restoring from the template in {}: {e}", t.display()),
            ),
            None => fail(CMD, e),
        };
    }
    for (i, fd) in late_taps.iter().enumerate() {
        use std::os::fd::AsFd;
        let plugged = h.hotplug_add_net(&NetDevice {
            id: format!("net{i}"),
            tap: TapSource::Fd(fd.as_fd()),
            mac: None,
            slot: None,
        });
        if let Err(e) = plugged {
            let _ = h.stop();
            remove_dir();
            return fail(CMD, format!("tap {} after the restore: {e}", r.tap[i]));
        }
    }
    drop(late_taps);
    let state = h.sandbox_state(&cfg.file, std::process::id());
    let saved = sandbox::lock(&dir, true).and_then(|_l| sandbox::save(&dir, &state));
    if let Err(e) = saved {
        let _ = h.stop();
        remove_dir();
        return fail(CMD, e);
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", h.spec().qmp_socket().display());
        let _ = out.flush();
    }
    let took = h.start_duration().unwrap_or_default().as_millis();
    let how = match &template {
        Some(t) => format!("restored from the template in {} in {took} ms", t.display()),
        None => format!("QMP ready {took} ms after launch"),
    };
    note!(
        "altovirt-shim: sandbox {id} running on {} (VMM pid {}, {}; {how}); state in {}",
        cfg.hypervisor.path,
        state.vmm_pid,
        cfg.flavour,
        dir.display()
    );
    let code = loop {
        if let Some(sig) = signals::pending() {
            note!("altovirt-shim: signal {sig}: stopping sandbox {id}");
            break match h.stop() {
                Ok(Some(s)) if s.code().is_some() => ExitCode::SUCCESS,
                Ok(s) => {
                    note!("altovirt-shim: the VMM did not exit after quit and was killed ({s:?})");
                    ExitCode::FAILURE
                }
                Err(e) => fail(CMD, e),
            };
        }
        match h.try_wait() {
            Ok(Some(s)) if s.success() => {
                note!("altovirt-shim: sandbox {id}: the VM ended");
                break ExitCode::SUCCESS;
            }
            Ok(Some(s)) => {
                let log = std::fs::read_to_string(dir.join("vmm.stderr")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                note!("altovirt-shim: sandbox {id}: the VMM exited with {s}");
                for l in tail.iter().rev() {
                    note!("  {l}");
                }
                note!("altovirt-shim: logs kept in {}", dir.display());
                keep_logs();
                return ExitCode::FAILURE;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = h.stop();
                break fail(CMD, e);
            }
        }
        thread::sleep(Duration::from_millis(50));
    };
    remove_dir();
    code
}

/// The VM factory's template sandbox `id` starts from: `Ok(None)` to boot
/// cold (templating off, or with a warning: no template, another
/// configuration, not supported), an error when the template is damaged.
fn from_template(cfg: &LoadedConfig, id: &str) -> Result<Option<PathBuf>, String> {
    match factory::template_for(cfg) {
        Ok(t) => Ok(t),
        Err(e @ (FactoryError::Corrupt { .. } | FactoryError::Io { .. })) => Err(format!(
            "VM factory template: {e} (`altovirt-shim factory destroy`, then `factory init`)"
        )),
        Err(FactoryError::Missing(d)) => {
            // Kata's runtime would create the template now, then use it.
            note!(
                "altovirt-shim: warning: [factory] enable_template = true but there is no template in {}; sandbox {id} boots cold (`altovirt-shim factory init` makes one)",
                d.display()
            );
            Ok(None)
        }
        Err(e) => {
            note!("altovirt-shim: warning: sandbox {id} boots cold, not from the VM factory's template: {e}");
            Ok(None)
        }
    }
}

/// Loads a live sandbox and attaches to its VM.
fn attach(run_dir: &Path, id: &str) -> Result<(SandboxState, Hypervisor), SandboxError> {
    let st = sandbox::load_live(run_dir, id)?;
    let h = Hypervisor::attach(&st);
    Ok((st, h))
}

fn slots_json(t: &SlotTable) -> Value {
    Value::Array(
        t.slots
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(e) => {
                    json!({"slot": i, "device": e.device, "backend": e.backend, "source": e.source})
                }
                None => json!({"slot": i, "device": null}),
            })
            .collect(),
    )
}

fn slots_text(t: &SlotTable) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.slots
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            Some(e) => format!("{i}={} ({})", e.device, e.source),
            None => format!("{i}=free"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `status`.
pub fn status(run_dir: &Path, s: StatusCmd) -> ExitCode {
    const CMD: &str = "status";
    let dir = match sandbox::sandbox_dir(run_dir, &s.id) {
        Ok(d) => d,
        Err(e) => return fail(CMD, e),
    };
    if !dir.is_dir() {
        return fail(
            CMD,
            SandboxError::NotFound {
                id: s.id,
                dir: run_dir.into(),
            },
        );
    }
    let _l = match sandbox::lock(&dir, false) {
        Ok(l) => l,
        Err(e) => return fail(CMD, e),
    };
    let (st, mut h) = match attach(run_dir, &s.id) {
        Ok(x) => x,
        Err(e) => return fail(CMD, e),
    };
    let vm = match h.status() {
        Ok(v) => v,
        Err(e) => return fail_driver(CMD, e),
    };
    let tids = match h.thread_ids() {
        Ok(t) => t,
        Err(e) => return fail_driver(CMD, e),
    };
    if st.flavour == Flavour::StratoVirt {
        if let Err(e) = h.sync_block_slots() {
            return fail_driver(CMD, e);
        }
    }
    let caps = h.capabilities();
    if s.json {
        let v = json!({
            "id": st.id,
            "hypervisor": st.flavour.section(),
            "vmm": st.hypervisor.path,
            "status": vm,
            "vmm_pid": st.vmm_pid,
            "shim_pid": st.shim_pid,
            "qmp_socket": st.qmp_socket,
            "run_dir": st.run_dir,
            "config_file": st.config_file,
            "template": st.template,
            "start_seconds": st.start_seconds,
            "vcpu_threads": tids.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "capabilities": caps,
            "blk_slots": slots_json(h.block_slots()),
            "net_slots": slots_json(h.net_slots()),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let t: Vec<String> = tids.iter().map(|(i, t)| format!("{i}={t}")).collect();
        println!("sandbox:      {}", st.id);
        println!(
            "hypervisor:   {} ({})",
            st.flavour.section(),
            st.hypervisor.path
        );
        println!("status:       {vm}");
        println!("vmm pid:      {}", st.vmm_pid);
        println!("shim pid:     {}", st.shim_pid);
        println!("qmp socket:   {}", st.qmp_socket.display());
        match &st.template {
            Some(t) => println!("started from: template {}", t.display()),
            None => println!("started from: boot"),
        }
        println!("vcpu threads: {}", t.join(" "));
        println!("blk slots:    {}", slots_text(h.block_slots()));
        println!("net slots:    {}", slots_text(h.net_slots()));
        println!(
            "hotplug:      block {}, network {}",
            if caps.block_device_hotplug {
                "yes"
            } else {
                "no"
            },
            if caps.net_device_hotplug { "yes" } else { "no" }
        );
    }
    ExitCode::SUCCESS
}

/// `hotplug add|remove`.
pub fn hotplug(run_dir: &Path, c: HotplugCmd) -> ExitCode {
    const CMD: &str = "hotplug";
    let id = match &c.op {
        HotplugOp::Add(a) => a.id.clone(),
        HotplugOp::Remove(r) => r.id.clone(),
    };
    let dir = match sandbox::sandbox_dir(run_dir, &id) {
        Ok(d) if d.is_dir() => d,
        Ok(_) => {
            return fail(
                CMD,
                SandboxError::NotFound {
                    id,
                    dir: run_dir.into(),
                },
            )
        }
        Err(e) => return fail(CMD, e),
    };
    // One hotplug at a time per sandbox: the slot tables are read, changed
    // and saved under the lock.
    let _l = match sandbox::lock(&dir, true) {
        Ok(l) => l,
        Err(e) => return fail(CMD, e),
    };
    let (mut st, mut h) = match attach(run_dir, &id) {
        Ok(x) => x,
        Err(e) => return fail(CMD, e),
    };
    let done = match c.op {
        HotplugOp::Add(a) => match (&a.file, &a.tap) {
            (Some(file), None) => {
                let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
                h.hotplug_add_block(&BlockDevice {
                    id: a.device.clone().unwrap_or_default(),
                    path,
                    read_only: a.read_only,
                    direct: a.direct,
                    slot: a.slot,
                })
                .map(|p| format!("added block device {} in slot {}", p.id, p.slot))
            }
            (None, Some(name)) => {
                if st.flavour == Flavour::Qemu {
                    // Refused before a tap is created.
                    h.hotplug_add_net(&NetDevice {
                        id: String::new(),
                        tap: TapSource::Ifname(name),
                        mac: None,
                        slot: None,
                    })
                    .map(|_| String::new())
                } else {
                    match tap::open_tap(name) {
                        Ok(fd) => {
                            use std::os::fd::AsFd;
                            h.hotplug_add_net(&NetDevice {
                                id: a.device.clone().unwrap_or_default(),
                                tap: TapSource::Fd(fd.as_fd()),
                                mac: a.mac.clone(),
                                slot: a.slot,
                            })
                            .map(|p| format!("added network device {} in slot {}", p.id, p.slot))
                        }
                        Err(e) => return fail(CMD, e),
                    }
                }
            }
            _ => return fail(CMD, "give exactly one of --file and --tap"),
        },
        HotplugOp::Remove(r) => h
            .hotplug_remove(&r.device)
            .map(|p| format!("removed {} from slot {}", p.id, p.slot)),
    };
    match done {
        Ok(msg) => {
            st.blk_slots = h.block_slots().clone();
            st.net_slots = h.net_slots().clone();
            if let Err(e) = sandbox::save(&dir, &st) {
                return fail(CMD, e);
            }
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The VMM's truth for block slots is kept even after an error.
            st.blk_slots = h.block_slots().clone();
            let _ = sandbox::save(&dir, &st);
            fail_driver(CMD, e)
        }
    }
}

/// `metrics`.
pub fn metrics(run_dir: &Path, m: MetricsCmd) -> ExitCode {
    const CMD: &str = "metrics";
    let (_, mut h) = match attach(run_dir, &m.id) {
        Ok(x) => x,
        Err(e) => return fail(CMD, e),
    };
    match metrics::prometheus_text(&mut h) {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail_driver(CMD, e),
    }
}

/// `stop`.
pub fn stop(run_dir: &Path, s: StopCmd) -> ExitCode {
    const CMD: &str = "stop";
    let st = match sandbox::load(run_dir, &s.id) {
        Ok(st) => st,
        Err(e) => return fail(CMD, e),
    };
    let deadline = Instant::now() + Duration::from_secs(s.timeout);
    let dir: PathBuf = st.run_dir.clone();
    if sandbox::pid_alive(st.shim_pid) && st.shim_pid != std::process::id() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(st.shim_pid as i32, libc::SIGTERM) };
        while dir.exists() {
            if Instant::now() >= deadline {
                return fail(
                    CMD,
                    format!(
                        "sandbox {}: altovirt-shim run (pid {}) did not finish within {}s",
                        s.id, st.shim_pid, s.timeout
                    ),
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    } else {
        if sandbox::pid_alive(st.vmm_pid) {
            let mut h = Hypervisor::attach(&st);
            let _ = h.stop();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("stopped {}", s.id);
    ExitCode::SUCCESS
}
