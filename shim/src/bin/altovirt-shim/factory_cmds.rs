//! `factory init|status|destroy`: Kata's VM factory (templates) for
//! `[hypervisor.stratovirt]`. Exit status 0 on success (`status`: a
//! template is there), 1 otherwise, with one line naming what failed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use serde_json::json;
use shim::config::Flavour;
use shim::config_load;
use shim::factory::{self, FactoryError, InitOptions, Readiness, TemplateStatus};

/// Manage the VM factory's template ([factory] template_path).
#[derive(FromArgs)]
#[argh(subcommand, name = "factory")]
pub struct FactoryCmd {
    #[argh(subcommand)]
    op: FactoryOp,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum FactoryOp {
    Init(InitCmd),
    Status(StatusCmd),
    Destroy(DestroyCmd),
}

/// Boot a template VM from the configuration, wait until its guest is
/// ready, pause it and save its memory and state into template_path.
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
struct InitCmd {
    /// which [hypervisor.NAME] section to use (default: the only one)
    #[argh(option, from_str_fn(parse_flavour))]
    hypervisor: Option<Flavour>,
    /// when the guest is ready: boot-complete (the guest wrote the
    /// boot-complete port; default), console=TEXT (a console line
    /// containing TEXT) or delay=SECONDS
    #[argh(option, default = "Readiness::BootComplete")]
    ready: Readiness,
    /// seconds to wait for the guest to be ready (default 30)
    #[argh(option, default = "30")]
    timeout: u64,
}

/// Say whether a template exists, and its details (exit 0 if so, 1 if not).
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// which [hypervisor.NAME] section to use (default: the only one)
    #[argh(option, from_str_fn(parse_flavour))]
    hypervisor: Option<Flavour>,
    /// JSON output
    #[argh(switch)]
    json: bool,
}

/// Remove the template.
#[derive(FromArgs)]
#[argh(subcommand, name = "destroy")]
struct DestroyCmd {
    /// which [hypervisor.NAME] section to use (default: the only one)
    #[argh(option, from_str_fn(parse_flavour))]
    hypervisor: Option<Flavour>,
}

fn parse_flavour(s: &str) -> Result<Flavour, String> {
    Flavour::from_section(s).ok_or_else(|| format!("{s:?}: use stratovirt or qemu"))
}

fn fail(sub: &str, e: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "altovirt-shim factory {sub}: {e}");
    ExitCode::FAILURE
}

/// `factory init|status|destroy`.
pub fn factory(config_file: Option<&Path>, run_dir: &Path, f: FactoryCmd) -> ExitCode {
    let (sub, hv) = match &f.op {
        FactoryOp::Init(i) => ("init", i.hypervisor),
        FactoryOp::Status(s) => ("status", s.hypervisor),
        FactoryOp::Destroy(d) => ("destroy", d.hypervisor),
    };
    let cfg = match config_load::load_default_select(config_file, hv) {
        Ok(c) => c,
        Err(e) => return fail(sub, e),
    };
    let dir = factory::template_dir(&cfg);
    match f.op {
        FactoryOp::Init(i) => {
            let opts = InitOptions {
                readiness: i.ready,
                timeout: Duration::from_secs(i.timeout),
                run_dir: run_dir.to_path_buf(),
            };
            match factory::init(&cfg, &opts) {
                Ok(t) => {
                    println!(
                        "vm factory initialized in {}: guest ready after {} ms ({}), snapshot {} ms, {} KiB of {} MiB written",
                        t.dir.display(),
                        t.meta.ready_ms,
                        t.meta.readiness,
                        t.meta.migrate_ms,
                        t.memory_allocated >> 10,
                        t.memory_bytes >> 20
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(sub, e),
            }
        }
        FactoryOp::Status(s) => match factory::load(&dir) {
            Ok(t) => {
                print_status(&t, cfg.config.factory.enable_template, s.json);
                ExitCode::SUCCESS
            }
            Err(FactoryError::Missing(d)) => {
                let enabled = cfg.config.factory.enable_template;
                if s.json {
                    println!(
                        "{}",
                        json!({"template": false, "path": d, "enable_template": enabled})
                    );
                } else {
                    println!(
                        "vm factory is off: no template in {}{}",
                        d.display(),
                        if enabled {
                            ""
                        } else {
                            " ([factory] enable_template is false)"
                        }
                    );
                }
                ExitCode::FAILURE
            }
            Err(e) => fail(sub, e),
        },
        FactoryOp::Destroy(_) => match factory::destroy(&dir) {
            Ok(true) => {
                println!("vm factory destroyed ({})", dir.display());
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("no template in {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(sub, e),
        },
    }
}

fn print_status(t: &TemplateStatus, enabled: bool, as_json: bool) {
    let m = &t.meta;
    if as_json {
        let v = json!({
            "template": true,
            "path": t.dir,
            "enable_template": enabled,
            "hypervisor": m.flavour.section(),
            "vmm": m.hypervisor.path,
            "kernel": m.hypervisor.kernel,
            "initrd": m.hypervisor.initrd,
            "vcpus": m.hypervisor.default_vcpus,
            "memory_mib": m.hypervisor.default_memory,
            "memory_bytes": t.memory_bytes,
            "memory_allocated_bytes": t.memory_allocated,
            "state_bytes": t.state_bytes,
            "created": m.created,
            "config_file": m.config_file,
            "readiness": m.readiness,
            "start_ms": m.start_ms,
            "ready_ms": m.ready_ms,
            "migrate_ms": m.migrate_ms,
            "args": m.args,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!("vm factory is on: template in {}", t.dir.display());
    if !enabled {
        println!("(but [factory] enable_template is false: sandboxes boot cold)");
    }
    println!(
        "hypervisor:  {} ({})",
        m.flavour.section(),
        m.hypervisor.path
    );
    println!("kernel:      {}", m.hypervisor.kernel);
    println!("initrd:      {}", m.hypervisor.initrd);
    println!(
        "guest:       {} vCPUs, {} MiB",
        m.hypervisor.default_vcpus, m.hypervisor.default_memory
    );
    println!(
        "memory file: {} MiB, {} KiB allocated (sparse)",
        t.memory_bytes >> 20,
        t.memory_allocated >> 10
    );
    println!("state file:  {} bytes", t.state_bytes);
    println!(
        "taken:       {} s after the epoch, guest ready after {} ms ({}), snapshot {} ms",
        m.created, m.ready_ms, m.readiness, m.migrate_ms
    );
    println!("config:      {}", m.config_file.display());
}
