//! The command line: QEMU-style single-dash flags, each value in the next
//! argument, merged over the optional JSON file given with `-config`.

use std::path::PathBuf;

use super::devices::{resolve as resolve_devices, RawDeviceFlags};
use super::error::ConfigError;
use super::json::{load_json_file, FileConfig};
use super::options::{parse_bool, parse_ranged, OptionList};
use super::size::{check_mem_size, parse_size, MIB};
use super::validate::{
    check_file, check_max_vcpus, check_non_empty, parse_uuid, FileKind, MAX_VCPUS, MIN_VCPUS,
};
use super::{balloon, slots};
use super::{LogTarget, MachineConfig, SerialConfig, VmConfig, MAX_BLK_SLOTS, MAX_NET_SLOTS};

/// What the command line asks the program to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start the VM described by the configuration.
    Run(Box<VmConfig>),
    /// Print [`USAGE`] and exit.
    Help,
    /// Print the version and exit.
    Version,
}

/// The text printed for `-help`: every flag, one line each.
pub const USAGE: &str = "\
Usage: altovirt [OPTIONS]

  -kernel PATH          guest kernel image (default: built-in demo guest)
  -initrd PATH          initial RAM disk (needs -kernel)
  -append CMDLINE       kernel command line; repeated pieces are joined with spaces
  -m [size=]N[K|M|G|T]  guest memory; a plain number is in MiB (default 256M, minimum 16M)
  -smp [cpus=]N[,maxcpus=M][,sockets=S,dies=D,clusters=C,cores=C,threads=T]  vCPUs, 1 to 254 (default 1)
  -machine [type=]microvm[,dump-guest-core=on|off][,mem-share=on|off][,mem-overcommit=on|off][,accel=kvm][,blk-slots=N][,net-slots=N][,acpi=on|off][,pit=on|off]
                        machine options (mem-overcommit=on: allow more RAM than the host has)
  -name [guest=]NAME    guest name
  -uuid UUID            guest UUID (8-4-4-4-12 hexadecimal digits)
  -serial stdio|file:PATH|none|null  serial port backend (default stdio)
  -nodefaults           no default devices (no serial port unless -serial is given)
  -nographic            no graphical output (accepted for compatibility)
  -no-reboot            exit when the guest reboots
  -D [LOGFILE]          write the VMM log to LOGFILE, or to stderr without a value
  -disable-seccomp      do not install the per-thread seccomp filters (on by default)
  -daemonize            run in the background after startup
  -pidfile PATH         write the process id to PATH
  -config FILE          read the JSON configuration file FILE (flags override it)
  -qmp unix:PATH,server,nowait  serve QMP on a unix socket (may repeat; also server=on,wait=off)
  -api-channel unix:PATH        the same, StratoVirt spelling
  -S                    do not start the vCPUs until QMP 'cont'
  -incoming file:DIR    restore the snapshot QMP 'migrate' wrote to DIR (same other flags)
  -drive id=ID,file=PATH[,readonly=on|off][,direct=on|off][,format=raw]  a block back-end
                        (a regular file or block device, locked as QEMU locks it)
                        [,iops=N][,bps=N][,iops_max=N][,bps_max=N]: I/O rate limits
                        (per second; _max a one-time burst; also throttling.iops-total & co.)
  -object rng-random,id=ID,filename=PATH  an entropy back-end (also: iothread,id=ID)
  -chardev socket,id=ID,path=PATH[,server,nowait] | stdio,id=ID | file,id=ID,path=PATH
  -device virtio-blk-device,drive=ID[,id=DEV][,serial=S]
  -device virtio-rng-device,rng=ID[,id=DEV]
  -device virtio-serial-device[,id=DEV] -device virtconsole,chardev=ID[,id=DEV]
  -device vhost-user-fs-device,chardev=ID,tag=TAG[,id=DEV][,num-request-queues=N][,queue-size=N]
                        virtio-fs; connects to the chardev's socket (needs mem-share=on)
  -netdev tap,id=ID,ifname=NAME|fd=N|fds=N  a tap back-end (fd, fds: an inherited descriptor)
                        [,tx_iops=N][,tx_bps=N][,tx_iops_max=N][,tx_bps_max=N]: transmit limits
                        [,rx_iops=N][,rx_bps=N][,rx_iops_max=N][,rx_bps_max=N]: receive limits
  -device virtio-net-device,netdev=ID[,id=DEV][,mac=MAC]
  -device vhost-vsock-device,id=DEV,guest-cid=N[,vhostfd=FD]  kernel vsock (needs /dev/vhost-vsock)
  -device vsock-device,id=DEV,guest-cid=N,uds-path=PATH       userspace vsock over unix sockets
  -device virtio-balloon-device[,id=DEV][,deflate-on-oom=on][,free-page-reporting=on]
                        memory balloon (QMP balloon, query-balloon)
  -version              print the version and exit
  -h, -help, --help     print this help and exit

Every flag may also be spelled with two dashes (--kernel).
";

/// Switches set by `-machine`; `None` means "not given".
#[derive(Debug, Default, Clone, PartialEq)]
struct MachineFlags {
    dump_guest_core: Option<bool>,
    mem_share: Option<bool>,
    mem_overcommit: Option<bool>,
    blk_slots: Option<u8>,
    net_slots: Option<u8>,
    acpi: Option<bool>,
    pit: Option<bool>,
}

/// Everything read from the command line; `None` means "not given".
#[derive(Debug, Default, Clone, PartialEq)]
struct Flags {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<Vec<String>>,
    mem_size: Option<u64>,
    vcpus: Option<(u8, u8)>,
    machine: MachineFlags,
    name: Option<String>,
    uuid: Option<String>,
    serial: Option<SerialConfig>,
    log: Option<LogTarget>,
    disable_seccomp: bool,
    daemonize: bool,
    pidfile: Option<PathBuf>,
    no_reboot: bool,
    nographic: bool,
    nodefaults: bool,
    config: Option<PathBuf>,
    qmp: Vec<PathBuf>,
    start_paused: bool,
    incoming: Option<PathBuf>,
    raw_devices: RawDeviceFlags,
}

/// Parse the program's arguments (without `argv[0]`).
///
/// Arguments are read in order: `-help` or `-version` stops the scan and
/// returns [`Command::Help`] / [`Command::Version`]. Otherwise the flags are
/// checked, the `-config` file (if any) is read, and the flags are laid over
/// it as described in `docs/config.md`.
pub fn parse_cmdline(args: &[String]) -> Result<Command, ConfigError> {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let Some(name) = flag_name(arg) else {
            return Err(ConfigError::UnexpectedArgument(arg.into()));
        };
        match name {
            "h" | "help" => return Ok(Command::Help),
            "version" => return Ok(Command::Version),
            "disable-seccomp" => flags.disable_seccomp = true,
            "nodefaults" => flags.nodefaults = true,
            "nographic" => flags.nographic = true,
            "no-reboot" => flags.no_reboot = true,
            "daemonize" => flags.daemonize = true,
            "S" => flags.start_paused = true,
            "D" => {
                // The log file is optional: a following flag is not a value.
                flags.log = match args.get(i) {
                    Some(next) if !next.starts_with('-') => {
                        i += 1;
                        check_non_empty("-D", next)?;
                        Some(LogTarget::File(next.into()))
                    }
                    _ => Some(LogTarget::Stderr),
                };
            }
            "kernel" | "initrd" | "append" | "m" | "smp" | "machine" | "name" | "uuid"
            | "serial" | "pidfile" | "config" | "qmp" | "api-channel" | "drive" | "device"
            | "object" | "chardev" | "netdev" | "incoming" => {
                let flag = format!("-{name}");
                let value = args
                    .get(i)
                    .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?;
                i += 1;
                apply_valued(&mut flags, &flag, value)?;
            }
            _ => return Err(ConfigError::UnknownOption(arg.into())),
        }
    }
    let file = match &flags.config {
        Some(path) => {
            log::debug!("reading JSON configuration {}", path.display());
            load_json_file(path)?
        }
        None => FileConfig::default(),
    };
    merge(flags, file).map(|vm| Command::Run(Box::new(vm)))
}

/// The flag name without its one or two leading dashes; `None` for an
/// argument that does not start with `-`.
fn flag_name(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix('-')?;
    Some(rest.strip_prefix('-').unwrap_or(rest))
}

/// Record one flag that takes a value; `flag` is the single-dash spelling.
fn apply_valued(flags: &mut Flags, flag: &str, value: &str) -> Result<(), ConfigError> {
    match flag {
        "-kernel" => flags.kernel = Some(value.into()),
        "-initrd" => flags.initrd = Some(value.into()),
        "-append" => flags.append.get_or_insert_with(Vec::new).push(value.into()),
        "-m" => flags.mem_size = Some(parse_mem(value)?),
        "-smp" => flags.vcpus = Some(parse_smp(value)?),
        "-machine" => flags.machine = parse_machine(value)?,
        "-name" => {
            let list = OptionList::parse(flag, value, Some("guest"), &["guest"])?;
            let name = list.get("guest").unwrap_or_default();
            check_non_empty(flag, name)?;
            flags.name = Some(name.into());
        }
        "-uuid" => flags.uuid = Some(parse_uuid(flag, value)?),
        "-serial" => flags.serial = Some(parse_serial(value)?),
        "-qmp" | "-api-channel" => flags.qmp.push(parse_qmp_socket(flag, value)?),
        "-drive" => flags.raw_devices.drives.push(value.into()),
        "-device" => flags.raw_devices.devices.push(value.into()),
        "-object" => flags.raw_devices.objects.push(value.into()),
        "-chardev" => flags.raw_devices.chardevs.push(value.into()),
        "-netdev" => flags.raw_devices.netdevs.push(value.into()),
        "-incoming" => flags.incoming = Some(parse_incoming(value)?),
        "-pidfile" => {
            check_non_empty(flag, value)?;
            flags.pidfile = Some(value.into());
        }
        // Only "-config" is left; its file is read once all flags are known.
        _ => flags.config = Some(value.into()),
    }
    Ok(())
}

/// `-m [size=]N[K|M|G|T]`.
fn parse_mem(value: &str) -> Result<u64, ConfigError> {
    let list = OptionList::parse("-m", value, Some("size"), &["size"])?;
    let size = list.get("size").unwrap_or_default();
    let bytes = parse_size("-m", size, MIB)?;
    check_mem_size("-m", bytes)
}

/// `-smp [cpus=]N[,maxcpus=M][,topology...]`, returning `(cpus, maxcpus)`.
///
/// Without `cpus` the count is `maxcpus`, or else the product of the
/// topology values. Topology values only have to be positive integers.
fn parse_smp(value: &str) -> Result<(u8, u8), ConfigError> {
    const TOPOLOGY: [&str; 5] = ["sockets", "dies", "clusters", "cores", "threads"];
    let list = OptionList::parse(
        "-smp",
        value,
        Some("cpus"),
        &[
            "cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads",
        ],
    )?;
    let (min, max) = (u64::from(MIN_VCPUS), u64::from(MAX_VCPUS));
    let mut product: u64 = 1;
    for key in TOPOLOGY {
        if let Some(v) = list.get(key) {
            let n = parse_ranged(&format!("-smp {key}"), v, 1, u64::from(u32::MAX))?;
            product = product.saturating_mul(n);
        }
    }
    let maxcpus = list
        .get("maxcpus")
        .map(|v| parse_ranged("-smp maxcpus", v, min, max))
        .transpose()?;
    let cpus = match list.get("cpus") {
        Some(v) => parse_ranged("-smp cpus", v, min, max)?,
        None => match maxcpus {
            Some(m) => m,
            None if (min..=max).contains(&product) => product,
            None => {
                return Err(ConfigError::OutOfRange {
                    at: "-smp".into(),
                    value: product.to_string(),
                    min,
                    max,
                })
            }
        },
    };
    // Both were range-checked against MAX_VCPUS, so they fit in a u8.
    let cpus = u8::try_from(cpus).unwrap_or(MAX_VCPUS);
    let maxcpus = maxcpus.map_or(cpus, |m| u8::try_from(m).unwrap_or(MAX_VCPUS));
    check_max_vcpus("-smp", cpus, maxcpus)?;
    Ok((cpus, maxcpus))
}

/// `-machine [type=]microvm[,dump-guest-core=..][,mem-share=..][,accel=kvm]`.
fn parse_machine(value: &str) -> Result<MachineFlags, ConfigError> {
    let list = OptionList::parse(
        "-machine",
        value,
        Some("type"),
        &[
            "type",
            "dump-guest-core",
            "mem-share",
            "mem-overcommit",
            "accel",
            "blk-slots",
            "net-slots",
            "acpi",
            "pit",
        ],
    )?;
    if let Some(kind) = list.get("type") {
        if kind != "microvm" {
            return Err(ConfigError::UnsupportedMachine {
                at: "-machine".into(),
                value: kind.into(),
            });
        }
    }
    if let Some(accel) = list.get("accel") {
        if accel != "kvm" {
            return Err(ConfigError::UnsupportedAccel {
                at: "-machine accel".into(),
                value: accel.into(),
            });
        }
    }
    let switch = |key: &str| {
        list.get(key)
            .map(|v| parse_bool(&format!("-machine {key}"), v))
            .transpose()
    };
    let blk_slots = list
        .get("blk-slots")
        .map(|v| parse_ranged("-machine blk-slots", v, 0, u64::from(MAX_BLK_SLOTS)))
        .transpose()?
        .map(|n| n as u8);
    let net_slots = list
        .get("net-slots")
        .map(|v| parse_ranged("-machine net-slots", v, 0, u64::from(MAX_NET_SLOTS)))
        .transpose()?
        .map(|n| n as u8);
    Ok(MachineFlags {
        dump_guest_core: switch("dump-guest-core")?,
        mem_share: switch("mem-share")?,
        mem_overcommit: switch("mem-overcommit")?,
        blk_slots,
        net_slots,
        acpi: switch("acpi")?,
        pit: switch("pit")?,
    })
}

/// `-serial stdio|file:PATH|none|null`.
fn parse_serial(value: &str) -> Result<SerialConfig, ConfigError> {
    match value {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" | "null" => Ok(SerialConfig::None),
        _ => match value.strip_prefix("file:") {
            Some(path) => {
                check_non_empty("-serial file:PATH", path)?;
                Ok(SerialConfig::File(path.into()))
            }
            None => Err(ConfigError::InvalidSerial {
                at: "-serial".into(),
                value: value.into(),
            }),
        },
    }
}

/// Lay the command-line flags over the JSON file and the defaults.
fn merge(flags: Flags, file: FileConfig) -> Result<VmConfig, ConfigError> {
    if let Some(kernel) = &flags.kernel {
        check_file("-kernel", kernel, FileKind::Regular)?;
    }
    if let Some(initrd) = &flags.initrd {
        check_file("-initrd", initrd, FileKind::Regular)?;
    }
    let kernel = flags.kernel.or(file.kernel);
    let initrd_at = if flags.initrd.is_some() {
        "-initrd"
    } else {
        "boot-source.initrd_fs_path"
    };
    let initrd = flags.initrd.or(file.initrd);
    if initrd.is_some() && kernel.is_none() {
        return Err(ConfigError::InitrdWithoutKernel {
            at: initrd_at.into(),
        });
    }
    let cmdline = match flags.append {
        Some(pieces) => join_pieces(&pieces),
        None => file.boot_args.unwrap_or_default(),
    };

    let defaults = MachineConfig::default();
    let (nr_vcpus, max_vcpus) = flags
        .vcpus
        .or(file.vcpus)
        .unwrap_or((defaults.nr_vcpus, defaults.max_vcpus));
    let machine = MachineConfig {
        mem_size: flags
            .mem_size
            .or(file.mem_size)
            .unwrap_or(defaults.mem_size),
        nr_vcpus,
        max_vcpus,
        dump_guest_core: flags
            .machine
            .dump_guest_core
            .or(file.dump_guest_core)
            .unwrap_or(defaults.dump_guest_core),
        mem_share: flags
            .machine
            .mem_share
            .or(file.mem_share)
            .unwrap_or(defaults.mem_share),
        mem_overcommit: flags
            .machine
            .mem_overcommit
            .or(file.mem_overcommit)
            .unwrap_or(defaults.mem_overcommit),
        blk_slots: flags.machine.blk_slots.unwrap_or(defaults.blk_slots),
        net_slots: flags.machine.net_slots.unwrap_or(defaults.net_slots),
        acpi: flags.machine.acpi.or(file.acpi).unwrap_or(defaults.acpi),
        pit: flags.machine.pit.unwrap_or(defaults.pit),
    };

    let resolved = resolve_devices(
        &flags.raw_devices,
        file.drives.clone(),
        file.nets.clone(),
        file.vsock.clone(),
        file.rng.clone(),
        file.balloon.as_ref(),
    )?;
    balloon::check_balloons(&resolved.devices, machine.mem_size)?;
    slots::check_slot_counts(
        &resolved.devices,
        file.drives.len(),
        file.nets.len(),
        &machine,
    )?;
    let serial = match flags.serial.or(file.serial) {
        Some(serial) => serial,
        None if flags.nodefaults => SerialConfig::None,
        None => SerialConfig::Stdio,
    };

    Ok(VmConfig {
        name: flags.name.or(file.name),
        uuid: flags.uuid,
        machine,
        boot: super::BootConfig {
            kernel,
            initrd,
            cmdline,
        },
        serial,
        log: flags.log.unwrap_or(LogTarget::None),
        disable_seccomp: flags.disable_seccomp,
        daemonize: flags.daemonize,
        pidfile: flags.pidfile,
        no_reboot: flags.no_reboot,
        nographic: flags.nographic,
        nodefaults: flags.nodefaults,
        drives: file.drives,
        nets: file.nets,
        vsock: file.vsock,
        rng: file.rng,
        qmp: flags.qmp,
        start_paused: flags.start_paused,
        incoming: flags.incoming,
        devices: resolved.devices,
        iothreads: resolved.iothreads,
        iothread_of: resolved.iothread_of,
    })
}

/// `-incoming file:DIR`: restore the snapshot `migrate` wrote to DIR
/// (StratoVirt's form; QEMU's network and `defer` forms are refused).
fn parse_incoming(value: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidIncoming {
        at: "-incoming".into(),
        value: value.into(),
        reason: reason.into(),
    };
    match value.split_once(':') {
        Some(("file", "")) => Err(invalid("the directory is missing (file:DIR)")),
        Some(("file", dir)) => Ok(PathBuf::from(dir)),
        _ => Err(invalid(
            "only file:DIR (a snapshot written by QMP migrate) is supported",
        )),
    }
}

/// `-qmp unix:PATH,server,nowait` (also `server=on,wait=off`) and
/// StratoVirt's `-api-channel unix:PATH`: the path of a listening unix
/// socket. altovirt only serves (never connects) and never waits for a
/// client before starting the guest.
fn parse_qmp_socket(flag: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidQmpSocket {
        at: flag.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let mut items = value.split(',');
    let target = items.next().unwrap_or_default();
    let Some(path) = target.strip_prefix("unix:") else {
        return Err(invalid("only unix:PATH sockets are supported"));
    };
    if path.is_empty() {
        return Err(invalid("the socket path is empty"));
    }
    for item in items {
        let (key, val) = item.split_once('=').unwrap_or((item, "on"));
        if !matches!(key, "server" | "wait" | "nowait") {
            return Err(ConfigError::UnknownKey {
                at: flag.into(),
                key: key.into(),
            });
        }
        let on = parse_bool(&format!("{flag} {key}"), val)?;
        match (key, on) {
            ("server", true) | ("wait", false) => {}
            ("nowait", true) => {}
            ("server", false) => return Err(invalid("client mode (server=off) is not supported")),
            _ => return Err(invalid("waiting for a client (wait=on) is not supported")),
        }
    }
    Ok(PathBuf::from(path))
}

/// Join `-append` pieces with single spaces, skipping empty pieces.
fn join_pieces(pieces: &[String]) -> String {
    pieces
        .iter()
        .filter(|p| !p.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[path = "cmdline_tests.rs"]
mod tests;
