//! `altovirt-shim`: host checks (`check`), the effective configuration
//! with host facts (`env`), and sandbox VMs: `run` boots one and stays in
//! the foreground; `status`, `hotplug`, `metrics` and `stop` reach it from
//! other processes through its state in `RUN_DIR/ID/`; `factory` makes,
//! shows and removes the VM factory's template that `run` starts from.

#[path = "altovirt-shim/factory_cmds.rs"]
mod factory_cmds;
#[path = "altovirt-shim/sandbox_cmds.rs"]
mod sandbox_cmds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use serde_json::{json, Value};
use shim::config_load;
use shim::host;

/// Kata-style shim for altovirt and QEMU microvm.
#[derive(FromArgs)]
struct Cli {
    /// configuration file (else $KATA_CONF_FILE, /etc/altovirt/configuration.toml,
    /// /usr/share/defaults/altovirt/configuration.toml)
    #[argh(option)]
    config: Option<PathBuf>,
    /// where sandbox directories live (default /run/altovirt-shim)
    #[argh(option, default = "PathBuf::from(shim::sandbox::DEFAULT_RUN_DIR)")]
    run_dir: PathBuf,
    #[argh(subcommand)]
    cmd: Sub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Sub {
    Check(CheckCmd),
    Env(EnvCmd),
    Run(sandbox_cmds::RunCmd),
    Status(sandbox_cmds::StatusCmd),
    Hotplug(sandbox_cmds::HotplugCmd),
    Metrics(sandbox_cmds::MetricsCmd),
    Stop(sandbox_cmds::StopCmd),
    Factory(factory_cmds::FactoryCmd),
}

/// Check that this host can run microVMs.
#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
struct CheckCmd {
    /// print every check, not only failures and the summary
    #[argh(switch)]
    verbose: bool,
    /// altovirt binary for the boot test (default: next to this program,
    /// then /usr/bin, /usr/local/bin)
    #[argh(option)]
    vmm: Option<PathBuf>,
}

/// Show the effective configuration and host facts.
#[derive(FromArgs)]
#[argh(subcommand, name = "env")]
struct EnvCmd {
    /// JSON instead of TOML
    #[argh(switch)]
    json: bool,
}

fn find_altovirt(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("altovirt")));
    sibling
        .into_iter()
        .chain(
            ["/usr/bin/altovirt", "/usr/local/bin/altovirt"]
                .iter()
                .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

fn check(c: CheckCmd) -> ExitCode {
    let mut items = host::static_checks();
    let static_ok = items.iter().all(|i| i.ok || !i.required);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if static_ok && root {
        match find_altovirt(c.vmm) {
            Some(p) => items.push(host::boot_check(&p, Duration::from_secs(20))),
            None => items.push(host::CheckItem {
                name: "boot built-in guest".into(),
                ok: false,
                required: true,
                detail: "altovirt binary not found (use --vmm)".into(),
            }),
        }
    } else if !root {
        items.push(host::CheckItem {
            name: "boot built-in guest".into(),
            ok: true,
            required: false,
            detail: "skipped: needs root".into(),
        });
    }
    let mut failed = Vec::new();
    for i in &items {
        let mark = if i.ok {
            "ok"
        } else if i.required {
            "FAIL"
        } else {
            "warn"
        };
        if c.verbose || !i.ok {
            println!("[{mark:>4}] {}: {}", i.name, i.detail);
        }
        if !i.ok && i.required {
            failed.push(format!("{}: {}", i.name, i.detail));
        }
    }
    if failed.is_empty() {
        let booted = items
            .iter()
            .any(|i| i.name == "boot built-in guest" && i.ok && i.required);
        println!(
            "System is capable of running altovirt microVMs{}",
            if booted { " (can create microVMs)" } else { "" }
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "System is NOT capable of running altovirt microVMs: {}",
            failed.join("; ")
        );
        ExitCode::FAILURE
    }
}

fn env(cli_config: Option<&Path>, e: EnvCmd) -> ExitCode {
    let (cfg, file, drop_ins, err) = match config_load::load_default(cli_config) {
        Ok(l) => {
            let c = serde_json::to_value(&l.config).unwrap_or(Value::Null);
            let d: Vec<String> = l.drop_ins.iter().map(|p| p.display().to_string()).collect();
            (c, l.file.display().to_string(), d, String::new())
        }
        Err(e) => (
            Value::Object(Default::default()),
            String::new(),
            Vec::new(),
            e.to_string(),
        ),
    };
    let doc = json!({
        "meta": { "version": env!("CARGO_PKG_VERSION") },
        "runtime_config": { "path": file, "drop_ins": drop_ins, "error": err },
        "config": cfg,
        "host": serde_json::to_value(host::host_facts()).unwrap_or(Value::Null),
    });
    if e.json {
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => println!("{s}"),
            Err(err) => {
                eprintln!("altovirt-shim env: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let t = toml::Value::try_from(&doc).and_then(|v| toml::to_string(&v));
        match t {
            Ok(s) => print!("{s}"),
            Err(err) => {
                eprintln!("altovirt-shim env: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let rd = cli.run_dir.as_path();
    match cli.cmd {
        Sub::Check(c) => check(c),
        Sub::Env(e) => env(cli.config.as_deref(), e),
        Sub::Run(r) => sandbox_cmds::run(cli.config.as_deref(), rd, r),
        Sub::Status(s) => sandbox_cmds::status(rd, s),
        Sub::Hotplug(h) => sandbox_cmds::hotplug(rd, h),
        Sub::Metrics(m) => sandbox_cmds::metrics(rd, m),
        Sub::Stop(s) => sandbox_cmds::stop(rd, s),
        Sub::Factory(f) => factory_cmds::factory(cli.config.as_deref(), rd, f),
    }
}
