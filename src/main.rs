//! `altovirt`: boots a KVM microVM from a QEMU/StratoVirt-style command line
//! or a JSON configuration file.

use std::process::ExitCode;
use std::time::Instant;

use std::sync::Arc;

use machine::qmp_bridge::{QmpEvents, VmQmpHandler};
use machine::seccomp::ThreadKind;
use machine::{ExitReason, KernelSource, MicroVm, VmEvent};
use machine_manager::config::{
    parse_cmdline, single_line, Command, LogTarget, SerialConfig, VmConfig, USAGE,
};
use machine_manager::log_limit::LogStats;
use machine_manager::logger::{self, LoggerError};
use machine_manager::process::{
    block_terminating_signals, daemonize, single_malloc_arena, PidFile, ProcessError,
    TerminalGuard, TerminatingSignals,
};
use qmp::{EventHub, QmpServer, QmpServerError, QmpServerHandle, QmpThreadFilters};

/// The guest booted when no `-kernel` is given: prints what it sees
/// (memory map, command line, CPUs) on the serial console and resets.
static DEMO_GUEST: &[u8] = include_bytes!(env!("ALTOVIRT_DEMO_GUEST"));

/// Exit status for errors in what the user supplied.
const EXIT_USAGE: u8 = 2;
/// Exit status for host-side failures.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let start = Instant::now();
    single_malloc_arena();
    let mut args = Vec::new();
    for (i, arg) in std::env::args_os().skip(1).enumerate() {
        match arg.into_string() {
            Ok(a) => args.push(a),
            Err(bad) => {
                eprintln!("altovirt: argument {} is not valid UTF-8: {:?}", i + 1, bad);
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    match parse_cmdline(&args) {
        Err(e) => {
            eprintln!("altovirt: {}", single_line(&e.to_string()));
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("altovirt version {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(cfg)) => match run(&cfg, start) {
            Ok(code) => code,
            Err((code, msg)) => {
                // stderr gets the message once; a log file gets it too.
                if matches!(cfg.log, LogTarget::File(_)) {
                    log::error!("{msg}");
                }
                eprintln!("altovirt: {}", single_line(&msg));
                ExitCode::from(code)
            }
        },
    }
}

type Failure = (u8, String);

fn fail(code: u8) -> impl FnOnce(&dyn std::fmt::Display) -> Failure {
    move |e| (code, e.to_string())
}

/// Exit status for an OS error on a path the user named (`-pidfile`,
/// `-D`, `-serial file:`, `-qmp`): the user's mistake (no such directory,
/// a directory, no permission, …) is a usage error; anything else (out of
/// descriptors, disk full, …) is a host failure.
fn path_status(e: &std::io::Error) -> u8 {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound | PermissionDenied | IsADirectory | NotADirectory | ReadOnlyFilesystem
        | InvalidFilename | AlreadyExists => EXIT_USAGE,
        _ if e.raw_os_error() == Some(libc::ELOOP) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// Exit status for a QMP socket that cannot be created.
fn qmp_status(e: &QmpServerError) -> u8 {
    match e {
        QmpServerError::PathTooLong(_)
        | QmpServerError::InvalidPath(_)
        | QmpServerError::NotASocket(_)
        | QmpServerError::InUse(_) => EXIT_USAGE,
        QmpServerError::Socket {
            op: "bind", source, ..
        } => path_status(source),
        _ => EXIT_FAILURE,
    }
}

/// Binds and starts one QMP server per `-qmp`/`-api-channel` socket; when
/// this returns, every socket is listening.
fn start_qmp(
    cfg: &VmConfig,
    vm: &MicroVm,
    hub: &EventHub,
    log_stats: Arc<LogStats>,
) -> Result<Vec<QmpServerHandle>, Failure> {
    let handler = Arc::new(
        VmQmpHandler::new(vm.shared(), vm.event_sender(), vm.hotplug(), hub.emitter())
            .with_log_stats(log_stats)
            .with_balloon(vm.balloon()),
    );
    let seccomp = vm.seccomp_filters();
    let filters = QmpThreadFilters {
        accept: seccomp.get(ThreadKind::QmpAccept),
        reader: seccomp.get(ThreadKind::QmpReader),
        writer: seccomp.get(ThreadKind::QmpWriter),
    };
    cfg.qmp
        .iter()
        .map(|path| {
            QmpServer::bind(path, handler.clone(), hub)
                .map(|server| server.confine(filters.clone()))
                .and_then(QmpServer::start)
                .map_err(|e| (qmp_status(&e), format!("-qmp: {e}")))
        })
        .collect()
}

/// Reports a panic (a bug: the handlers that catch it go on) as one line
/// naming the thread, without a backtrace: resolving one reads files that
/// no thread's seccomp filter allows, whatever RUST_BACKTRACE says.
fn report_panics_in_one_line(to_log_file: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let current = std::thread::current();
        let line = format!(
            "thread '{}' {}",
            current.name().unwrap_or("unnamed"),
            single_line(&info.to_string())
        );
        if to_log_file {
            log::error!("{line}");
        }
        eprintln!("altovirt: {line}");
    }));
}

/// Says once, at exit, how many lines the rate limiter dropped in all (the
/// last drops of a site are otherwise never reported).
fn report_dropped_log_lines(stats: &LogStats) {
    let dropped = stats.total_dropped();
    if dropped > 0 {
        log::warn!("{dropped} log lines were suppressed by rate limiting in all");
    }
}

/// Runs the VM described by `cfg`; returns the process exit status.
fn run(cfg: &VmConfig, start: Instant) -> Result<ExitCode, Failure> {
    if cfg.daemonize && cfg.serial == SerialConfig::Stdio {
        return Err((
            EXIT_USAGE,
            "-daemonize: the serial console cannot use stdio in the background; \
             add -serial none or -serial file:PATH"
                .into(),
        ));
    }
    let log_stats = logger::init(&cfg.log, start).map_err(|e| {
        let code = match &e {
            LoggerError::Open { source, .. } => path_status(source),
            _ => EXIT_FAILURE,
        };
        (code, e.to_string())
    })?;
    // Before any thread exists: fork, and block the signals the device loop
    // will read.
    let mut daemon = match cfg.daemonize {
        true => Some(daemonize().map_err(|e| fail(EXIT_FAILURE)(&e))?),
        false => None,
    };
    // Before the pidfile exists: whoever reads it may send SIGTERM at once,
    // and that must be a clean quit (pidfile removed), not the default
    // action. The blocked signals stay pending until the device loop reads
    // them from a signalfd.
    block_terminating_signals().map_err(|e| fail(EXIT_FAILURE)(&e))?;
    let _pidfile = match &cfg.pidfile {
        Some(path) => Some(PidFile::acquire(path).map_err(|e| {
            let code = match &e {
                ProcessError::PidFile { source, .. } => path_status(source),
                _ => EXIT_FAILURE,
            };
            (code, e.to_string())
        })?),
        None => None,
    };
    let _terminal = (cfg.serial == SerialConfig::Stdio).then(TerminalGuard::for_stdin);

    let kernel = match &cfg.boot.kernel {
        Some(path) => KernelSource::File(path.clone()),
        None => KernelSource::Builtin(DEMO_GUEST),
    };
    let vm = MicroVm::build(cfg, kernel, start).map_err(|e| {
        let code = match e.user_path_error() {
            _ if e.is_user_error() => EXIT_USAGE,
            Some(os) => path_status(os),
            None => EXIT_FAILURE,
        };
        (code, e.to_string())
    })?;
    if vm.seccomp_filters().enabled() {
        report_panics_in_one_line(matches!(cfg.log, LogTarget::File(_)));
    }
    let events = vm.event_sender();
    let hub = EventHub::new();
    let qmp_servers = start_qmp(cfg, &vm, &hub, log_stats.clone())?;
    // The terminating signals are read on the device loop: no thread of
    // their own (one thread fewer per VM).
    let signals = TerminatingSignals::open().map_err(|e| fail(EXIT_FAILURE)(&e))?;
    vm.watch_readable(signals.as_raw_fd(), move || {
        while let Some(sig) = signals.take() {
            events.send(VmEvent::HostSignal(sig));
        }
    })
    .map_err(|e| fail(EXIT_FAILURE)(&e))?;
    if let Some(d) = daemon.as_mut() {
        d.ready();
    }
    log::info!("VM started ({} ms after exec)", start.elapsed().as_millis());

    let result = vm.run(&QmpEvents(hub.emitter()));
    // Dropping the servers flushes pending replies and events (the SHUTDOWN
    // event included) and removes the sockets.
    drop(qmp_servers);
    report_dropped_log_lines(&log_stats);
    let reason = result.map_err(|e| fail(EXIT_FAILURE)(&e))?;
    match reason {
        ExitReason::Reset => log::info!("guest reset: exiting"),
        ExitReason::Shutdown(why) => log::warn!("guest shut down ({why}): exiting"),
        ExitReason::Halted => log::info!("all vCPUs halted: exiting"),
        ExitReason::PowerOff => log::info!("guest powered off: exiting"),
        ExitReason::HostSignal(sig) => log::info!("terminating on signal {sig}"),
        ExitReason::Quit => log::info!("quit requested: exiting"),
        ExitReason::Error(e) => return Err((EXIT_FAILURE, format!("guest stopped: {e}"))),
    }
    Ok(ExitCode::SUCCESS)
}
