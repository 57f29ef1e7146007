//! Tests for command-line parsing and the merge with the JSON file.

use std::path::Path;

use super::*;
use crate::config::test_util::TempDir;
use crate::config::{DriveConfig, MIN_MEM_SIZE};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn run(list: &[&str]) -> VmConfig {
    match parse_cmdline(&args(list)) {
        Ok(Command::Run(vm)) => *vm,
        other => panic!("{list:?} gave {other:?}"),
    }
}

fn fail(list: &[&str]) -> String {
    parse_cmdline(&args(list)).unwrap_err().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn no_arguments_give_defaults() {
    assert_eq!(run(&[]), VmConfig::default());
}

#[test]
fn help_and_version() {
    for h in ["-h", "-help", "--help", "--h"] {
        assert_eq!(parse_cmdline(&args(&[h])), Ok(Command::Help));
    }
    assert_eq!(parse_cmdline(&args(&["-version"])), Ok(Command::Version));
    assert_eq!(parse_cmdline(&args(&["--version"])), Ok(Command::Version));
    // The scan stops at -help: later arguments are not looked at ...
    assert_eq!(
        parse_cmdline(&args(&["-m", "1G", "-help", "-bogus"])),
        Ok(Command::Help)
    );
    // ... but earlier ones are.
    assert_eq!(
        fail(&["-bogus", "-help"]),
        "unknown flag -bogus (see altovirt -h)"
    );
}

#[test]
fn usage_lists_every_flag() {
    for flag in [
        "-kernel",
        "-initrd",
        "-append",
        "-m ",
        "-smp",
        "-machine",
        "-name",
        "-uuid",
        "-serial",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-D ",
        "-disable-seccomp",
        "-daemonize",
        "-pidfile",
        "-config",
        "-version",
        "-help",
    ] {
        assert!(USAGE.contains(flag), "{flag} missing from USAGE");
    }
}

#[test]
fn unknown_and_stray_arguments() {
    assert_eq!(fail(&["-foo"]), "unknown flag -foo (see altovirt -h)");
    assert_eq!(fail(&["--foo"]), "unknown flag --foo (see altovirt -h)");
    assert_eq!(fail(&["-"]), "unknown flag - (see altovirt -h)");
    assert_eq!(
        fail(&["---kernel", "x"]),
        "unknown flag ---kernel (see altovirt -h)"
    );
    assert_eq!(
        fail(&["vmlinux"]),
        "unexpected argument 'vmlinux': every argument must be an option or an option's value"
    );
    assert_eq!(
        fail(&["-nographic", "extra"]),
        "unexpected argument 'extra': every argument must be an option or an option's value"
    );
}

#[test]
fn missing_values() {
    for flag in [
        "kernel", "initrd", "append", "m", "smp", "machine", "name", "uuid", "serial", "pidfile",
        "config",
    ] {
        assert_eq!(
            fail(&[&format!("-{flag}")]),
            format!("option '-{flag}' requires a value")
        );
        assert_eq!(
            fail(&[&format!("--{flag}")]),
            format!("option '-{flag}' requires a value")
        );
    }
}

#[test]
fn value_may_start_with_dash() {
    let vm = run(&["-append", "-x"]);
    assert_eq!(vm.boot.cmdline, "-x");
}

#[test]
fn kernel_and_initrd() {
    let dir = TempDir::new("cmd-kernel");
    let kernel = dir.file("vmlinux", b"k");
    let initrd = dir.file("initrd.img", b"i");
    let vm = run(&["-kernel", &s(&kernel), "--initrd", &s(&initrd)]);
    assert_eq!(vm.boot.kernel, Some(kernel.clone()));
    assert_eq!(vm.boot.initrd, Some(initrd.clone()));

    assert_eq!(
        fail(&["-kernel", "/x"]),
        "-kernel: cannot open '/x': No such file or directory"
    );
    assert_eq!(
        fail(&["--kernel", &s(dir.path())]),
        format!("-kernel: '{}' is not a regular file", s(dir.path()))
    );
    assert_eq!(
        fail(&["-kernel", &s(&kernel), "-initrd", "/no/initrd"]),
        "-initrd: cannot open '/no/initrd': No such file or directory"
    );
    assert_eq!(
        fail(&["-initrd", &s(&initrd)]),
        "-initrd: an initrd needs a kernel (-kernel or boot-source.kernel_image_path)"
    );
}

#[test]
fn last_kernel_wins_and_only_it_is_checked() {
    let dir = TempDir::new("cmd-kernel2");
    let kernel = dir.file("vmlinux", b"k");
    let vm = run(&["-kernel", "/no/such", "-kernel", &s(&kernel)]);
    assert_eq!(vm.boot.kernel, Some(kernel));
}

#[test]
fn append_pieces_are_joined() {
    let vm = run(&[
        "-append",
        "console=ttyS0",
        "-append",
        "",
        "-append",
        "quiet panic=1",
    ]);
    assert_eq!(vm.boot.cmdline, "console=ttyS0 quiet panic=1");
}

#[test]
fn memory() {
    let mib = 1u64 << 20;
    assert_eq!(run(&["-m", "512"]).machine.mem_size, 512 * mib);
    assert_eq!(run(&["-m", "1G"]).machine.mem_size, 1024 * mib);
    assert_eq!(run(&["-m", "2g"]).machine.mem_size, 2048 * mib);
    assert_eq!(run(&["-m", "size=128M"]).machine.mem_size, 128 * mib);
    assert_eq!(run(&["-m", "16"]).machine.mem_size, MIN_MEM_SIZE);
    assert_eq!(run(&["-m", "1.5G"]).machine.mem_size, 1536 * mib);
    assert_eq!(run(&["-m", "64", "-m", "96"]).machine.mem_size, 96 * mib);

    assert_eq!(fail(&["-m", "12x"]), "-m: invalid size '12x'");
    assert_eq!(fail(&["-m", "size="]), "-m: invalid size ''");
    assert_eq!(
        fail(&["-m", "8"]),
        "-m: memory size 8388608 bytes is below the minimum of 16 MiB"
    );
    assert_eq!(
        fail(&["-m", "16385K"]),
        "-m: memory size 16778240 bytes is not a multiple of the 4096-byte page size"
    );
    assert_eq!(
        fail(&["-m", "99999999999T"]),
        "-m: size '99999999999T' does not fit in 64 bits"
    );
    assert_eq!(fail(&["-m", "1G,slots=2"]), "-m: unknown key 'slots'");
    assert_eq!(fail(&["-m", ""]), "-m: value must not be empty");
}

#[test]
fn smp() {
    let vcpus = |a: &[&str]| {
        let vm = run(a);
        (vm.machine.nr_vcpus, vm.machine.max_vcpus)
    };
    assert_eq!(vcpus(&["-smp", "4"]), (4, 4));
    assert_eq!(vcpus(&["-smp", "cpus=2,maxcpus=8"]), (2, 8));
    assert_eq!(
        vcpus(&[
            "-smp",
            "2,maxcpus=4,sockets=1,dies=1,clusters=1,cores=2,threads=2"
        ]),
        (2, 4)
    );
    assert_eq!(vcpus(&["-smp", "maxcpus=6"]), (6, 6));
    assert_eq!(vcpus(&["-smp", "sockets=2,cores=3"]), (6, 6));
    assert_eq!(vcpus(&["-smp", "254"]), (254, 254));

    assert_eq!(fail(&["-smp", "0"]), "-smp cpus: 0 is out of range 1..=254");
    assert_eq!(
        fail(&["-smp", "255"]),
        "-smp cpus: 255 is out of range 1..=254"
    );
    assert_eq!(fail(&["-smp", "two"]), "-smp cpus: invalid number 'two'");
    assert_eq!(
        fail(&["-smp", "2,maxcpus=300"]),
        "-smp maxcpus: 300 is out of range 1..=254"
    );
    assert_eq!(
        fail(&["-smp", "4,maxcpus=2"]),
        "-smp: maximum vCPU count 2 is less than the vCPU count 4"
    );
    assert_eq!(
        fail(&["-smp", "2,sockets=0"]),
        "-smp sockets: 0 is out of range 1..=4294967295"
    );
    assert_eq!(
        fail(&["-smp", "2,threads=x"]),
        "-smp threads: invalid number 'x'"
    );
    assert_eq!(
        fail(&["-smp", "sockets=16,cores=16"]),
        "-smp: 256 is out of range 1..=254"
    );
    assert_eq!(fail(&["-smp", "2,books=1"]), "-smp: unknown key 'books'");
}

#[test]
fn machine() {
    let vm = run(&["-machine", "microvm"]);
    assert!(vm.machine.dump_guest_core);
    assert!(!vm.machine.mem_share);
    let vm = run(&[
        "-machine",
        "type=microvm,dump-guest-core=off,mem-share=on,accel=kvm",
    ]);
    assert!(!vm.machine.dump_guest_core);
    assert!(vm.machine.mem_share);
    let vm = run(&["-machine", "dump-guest-core=no,mem-share=yes"]);
    assert!(!vm.machine.dump_guest_core && vm.machine.mem_share);
    let vm = run(&["-machine", "mem-share=true,dump-guest-core=false"]);
    assert!(!vm.machine.dump_guest_core && vm.machine.mem_share);

    assert_eq!(
        fail(&["-machine", "q35"]),
        "-machine: unsupported machine type 'q35' (only 'microvm' is supported)"
    );
    assert_eq!(
        fail(&["-machine", "microvm,accel=tcg"]),
        "-machine accel: unsupported accelerator 'tcg' (only 'kvm' is supported)"
    );
    assert_eq!(
        fail(&["-machine", "microvm,usb=off"]),
        "-machine: unknown key 'usb'"
    );
    assert_eq!(
        fail(&["-machine", "microvm,mem-share=maybe"]),
        "-machine mem-share: invalid on/off value 'maybe' (expected on, off, true, false, yes or no)"
    );
    assert_eq!(
        fail(&["-machine", "microvm,dump-guest-core"]),
        "-machine: 'dump-guest-core' needs a key (key=value)"
    );
}

#[test]
fn name_and_uuid() {
    assert_eq!(run(&["-name", "vm1"]).name.as_deref(), Some("vm1"));
    assert_eq!(run(&["-name", "guest=vm2"]).name.as_deref(), Some("vm2"));
    assert_eq!(run(&["-name", "a,,b"]).name.as_deref(), Some("a,b"));
    assert_eq!(fail(&["-name", "guest="]), "-name: value must not be empty");
    assert_eq!(
        fail(&["-name", "vm,process=x"]),
        "-name: unknown key 'process'"
    );

    let vm = run(&["-uuid", "6C7B3D2A-0000-4ABC-8DEF-0123456789AB"]);
    assert_eq!(
        vm.uuid.as_deref(),
        Some("6c7b3d2a-0000-4abc-8def-0123456789ab")
    );
    assert_eq!(
        fail(&["-uuid", "1234"]),
        "-uuid: invalid UUID '1234' (expected 8-4-4-4-12 hexadecimal digits)"
    );
}

#[test]
fn serial() {
    assert_eq!(run(&["-serial", "stdio"]).serial, SerialConfig::Stdio);
    assert_eq!(run(&["-serial", "none"]).serial, SerialConfig::None);
    assert_eq!(run(&["-serial", "null"]).serial, SerialConfig::None);
    assert_eq!(
        run(&["-serial", "file:/tmp/guest.log"]).serial,
        SerialConfig::File("/tmp/guest.log".into())
    );
    assert_eq!(
        fail(&["-serial", "tcp:127.0.0.1:4444"]),
        "-serial: unsupported serial backend 'tcp:127.0.0.1:4444' (expected stdio, file:PATH, none or null)"
    );
    assert_eq!(
        fail(&["-serial", "file:"]),
        "-serial file:PATH: value must not be empty"
    );
}

#[test]
fn nodefaults_and_serial() {
    let vm = run(&["-nodefaults"]);
    assert!(vm.nodefaults);
    assert_eq!(vm.serial, SerialConfig::None);
    assert_eq!(
        run(&["-nodefaults", "-serial", "stdio"]).serial,
        SerialConfig::Stdio
    );
    assert_eq!(
        run(&["-serial", "stdio", "-nodefaults"]).serial,
        SerialConfig::Stdio
    );

    let dir = TempDir::new("cmd-nodefaults");
    let cfg = dir.file("vm.json", br#"{"serial": {"stdio": true}}"#);
    assert_eq!(
        run(&["-nodefaults", "-config", &s(&cfg)]).serial,
        SerialConfig::Stdio
    );
}

#[test]
fn log_target() {
    assert_eq!(run(&["-D"]).log, LogTarget::Stderr);
    assert_eq!(run(&["-D", "-nographic"]).log, LogTarget::Stderr);
    assert!(run(&["-D", "-nographic"]).nographic);
    assert_eq!(
        run(&["--D", "/tmp/vmm.log"]).log,
        LogTarget::File("/tmp/vmm.log".into())
    );
    assert_eq!(run(&[]).log, LogTarget::None);
    assert_eq!(fail(&["-D", ""]), "-D: value must not be empty");
}

#[test]
fn switches_and_pidfile() {
    let vm = run(&[
        "-disable-seccomp",
        "-daemonize",
        "-no-reboot",
        "--nographic",
        "-pidfile",
        "/run/vm.pid",
    ]);
    assert!(vm.disable_seccomp && vm.daemonize && vm.no_reboot && vm.nographic);
    assert!(!vm.nodefaults);
    assert_eq!(vm.pidfile, Some("/run/vm.pid".into()));
    assert_eq!(fail(&["-pidfile", ""]), "-pidfile: value must not be empty");
}

#[test]
fn json_values_are_used() {
    let dir = TempDir::new("cmd-json");
    let kernel = dir.file("vmlinux", b"k");
    let disk = dir.file("rootfs.ext4", b"d");
    let text = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
            "machine-config": {{"name": "vm1", "vcpu_count": 2, "max_vcpus": 4, "mem_size": 536870912,
                                "dump_guest_core": false, "mem-share": true}},
            "drive": [{{"drive_id": "rootfs", "path_on_host": "{}"}}],
            "serial": {{"stdio": false}}}}"#,
        s(&kernel),
        s(&disk)
    );
    let cfg = dir.file("vm.json", text.as_bytes());
    let vm = run(&["-config", &s(&cfg)]);
    assert_eq!(vm.boot.kernel, Some(kernel));
    assert_eq!(vm.boot.cmdline, "console=ttyS0");
    assert_eq!(vm.name.as_deref(), Some("vm1"));
    assert_eq!(
        vm.machine,
        MachineConfig {
            mem_size: 512 << 20,
            nr_vcpus: 2,
            max_vcpus: 4,
            dump_guest_core: false,
            mem_share: true,
            mem_overcommit: false,
            blk_slots: super::super::DEFAULT_BLK_SLOTS,
            net_slots: super::super::DEFAULT_NET_SLOTS,
            acpi: true,
            pit: true,
        }
    );
    assert_eq!(vm.serial, SerialConfig::None);
    assert_eq!(
        vm.drives,
        vec![DriveConfig {
            id: "rootfs".into(),
            path: disk,
            read_only: false,
            direct: false,
            limits: Default::default(),
        }]
    );
}

#[test]
fn flags_override_json_in_any_order() {
    let dir = TempDir::new("cmd-override");
    let k1 = dir.file("k1", b"1");
    let k2 = dir.file("k2", b"2");
    let initrd = dir.file("initrd", b"i");
    let text = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "from=file"}},
            "machine-config": {{"name": "file", "vcpu_count": 2, "max_vcpus": 8, "mem_size": 268435456,
                                "dump_guest_core": false}},
            "serial": {{"stdio": true}}}}"#,
        s(&k1)
    );
    let cfg = dir.file("vm.json", text.as_bytes());
    let cfg = s(&cfg);
    let overrides = [
        "-kernel",
        &s(&k2),
        "-initrd",
        &s(&initrd),
        "-append",
        "from=cmdline",
        "-m",
        "1G",
        "-smp",
        "3",
        "-serial",
        "none",
        "-name",
        "cli",
        "-machine",
        "dump-guest-core=on",
    ];
    let mut before = vec!["-config", cfg.as_str()];
    before.extend_from_slice(&overrides);
    let mut after: Vec<&str> = overrides.to_vec();
    after.extend_from_slice(&["-config", cfg.as_str()]);
    for list in [before, after] {
        let vm = run(&list);
        assert_eq!(vm.boot.kernel, Some(k2.clone()));
        assert_eq!(vm.boot.initrd, Some(initrd.clone()));
        assert_eq!(vm.boot.cmdline, "from=cmdline");
        assert_eq!(vm.machine.mem_size, 1 << 30);
        // -smp replaces both counts from the file.
        assert_eq!((vm.machine.nr_vcpus, vm.machine.max_vcpus), (3, 3));
        assert!(vm.machine.dump_guest_core);
        assert_eq!(vm.serial, SerialConfig::None);
        assert_eq!(vm.name.as_deref(), Some("cli"));
    }
}

#[test]
fn json_initrd_rules() {
    let dir = TempDir::new("cmd-json-initrd");
    let kernel = dir.file("vmlinux", b"k");
    let initrd = dir.file("initrd", b"i");
    let text = format!(
        r#"{{"boot-source": {{"initrd_fs_path": "{}"}}}}"#,
        s(&initrd)
    );
    let cfg = dir.file("vm.json", text.as_bytes());
    assert_eq!(
        fail(&["-config", &s(&cfg)]),
        "boot-source.initrd_fs_path: an initrd needs a kernel (-kernel or boot-source.kernel_image_path)"
    );
    let vm = run(&["-config", &s(&cfg), "-kernel", &s(&kernel)]);
    assert_eq!(vm.boot.initrd, Some(initrd));
    assert_eq!(vm.boot.kernel, Some(kernel));
}

#[test]
fn config_file_errors() {
    assert_eq!(
        fail(&["-config", "/no/vm.json"]),
        "JSON config /no/vm.json: cannot read file: No such file or directory"
    );
    let dir = TempDir::new("cmd-json-err");
    let cfg = dir.file("vm.json", br#"{"machine-config": {"vcpu_count": "2"}}"#);
    assert_eq!(
        fail(&["-config", &s(&cfg)]),
        "machine-config.vcpu_count: expected an integer"
    );
    // The last -config wins.
    let good = dir.file("good.json", br#"{"machine-config": {"vcpu_count": 2}}"#);
    assert_eq!(
        run(&["-config", &s(&cfg), "-config", &s(&good)])
            .machine
            .nr_vcpus,
        2
    );
}

#[cfg(test)]
mod qmp_socket_tests {
    use super::super::{parse_cmdline, Command, ConfigError};
    use std::path::PathBuf;

    fn run(args: &[&str]) -> Result<Command, ConfigError> {
        parse_cmdline(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn qmp_paths(args: &[&str]) -> Vec<PathBuf> {
        match run(args) {
            Ok(Command::Run(cfg)) => cfg.qmp.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qmp_forms_kata_and_qemu_use() {
        assert_eq!(
            qmp_paths(&["-qmp", "unix:/run/vm/qmp.sock,server,nowait"]),
            vec![PathBuf::from("/run/vm/qmp.sock")]
        );
        assert_eq!(
            qmp_paths(&[
                "-qmp",
                "unix:/a,server=on,wait=off",
                "-api-channel",
                "unix:/b"
            ]),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn qmp_refuses_what_it_cannot_serve() {
        let e = run(&["-qmp", "tcp:localhost:4444,server,nowait"]).unwrap_err();
        assert!(
            e.to_string().starts_with("-qmp: unsupported QMP socket"),
            "{e}"
        );
        let e = run(&["-qmp", "unix:/a,server,wait=on"]).unwrap_err();
        assert!(e.to_string().contains("wait=on"), "{e}");
        let e = run(&["-qmp", "unix:/a,bogus=1"]).unwrap_err();
        assert_eq!(e.to_string(), "-qmp: unknown key 'bogus'");
        let e = run(&["-qmp", "unix:"]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn start_paused_flag() {
        match run(&["-S"]) {
            Ok(Command::Run(cfg)) => assert!(cfg.start_paused),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn net_slots_option() {
    let vm = run(&["-machine", "microvm,net-slots=0,blk-slots=1"]);
    assert_eq!((vm.machine.net_slots, vm.machine.blk_slots), (0, 1));
    let vm = run(&[]);
    assert_eq!(vm.machine.net_slots, super::super::DEFAULT_NET_SLOTS);
    let e = parse_cmdline(&["-machine".to_string(), "microvm,net-slots=9".to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("-machine net-slots: 9 is out of range"),
        "{e}"
    );
}

#[test]
fn blk_slots_option() {
    let vm = run(&["-machine", "microvm,blk-slots=2"]);
    assert_eq!(vm.machine.blk_slots, 2);
    let vm = run(&["-machine", "type=microvm,dump-guest-core=off,mem-share=on"]);
    assert_eq!(vm.machine.blk_slots, super::super::DEFAULT_BLK_SLOTS);
    let e = parse_cmdline(&["-machine".to_string(), "microvm,blk-slots=99".to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("-machine blk-slots: 99 is out of range"),
        "{e}"
    );
}

#[test]
fn acpi_option_and_json_field() {
    assert!(run(&[]).machine.acpi);
    assert!(!run(&["-machine", "microvm,acpi=off"]).machine.acpi);
    assert!(
        run(&["-machine", "type=microvm,acpi=on,blk-slots=1"])
            .machine
            .acpi
    );
    let e = fail(&["-machine", "microvm,acpi=maybe"]);
    assert!(e.starts_with("-machine acpi"), "{e}");
    let dir = TempDir::new("cmd-acpi");
    let cfg = dir.file("vm.json", br#"{"machine-config": {"acpi": false}}"#);
    assert!(!run(&["-config", &s(&cfg)]).machine.acpi);
    // A -machine switch replaces the file's value.
    assert!(
        run(&["-config", &s(&cfg), "-machine", "microvm,acpi=on"])
            .machine
            .acpi
    );
}

#[test]
fn pit_option() {
    assert!(run(&[]).machine.pit, "the PIT is on by default");
    assert!(!run(&["-machine", "microvm,pit=off"]).machine.pit);
    assert!(run(&["-machine", "microvm,pit=on,acpi=off"]).machine.pit);
    let e = fail(&["-machine", "microvm,pit=2"]);
    assert!(e.contains("-machine pit"), "{e}");
}
