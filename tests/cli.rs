//! The command line and process behaviour of the real binary: clear
//! one-line errors with exit status 2, -version/-help, -pidfile,
//! -daemonize, and termination by signal.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

/// Runs altovirt with `args` (no KVM needed: these fail before the VM).
fn run(args: &[&str]) -> Outcome {
    let mut cmd = altovirt();
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

#[test]
fn bad_command_lines_fail_with_one_clear_line() {
    assert_usage_error(&["-frobnicate"], "-frobnicate");
    assert_usage_error(&["-kernel"], "-kernel");
    assert_usage_error(&["-m", "12x"], "12x");
    assert_usage_error(&["-smp", "zero"], "-smp");
    assert_usage_error(&["-kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
    assert_usage_error(
        &["-kernel", GUEST_ELF64, "-initrd", "/nonexistent/initrd"],
        "/nonexistent/initrd",
    );
    assert_usage_error(&["-machine", "pc"], "pc");
    assert_usage_error(&["-serial", "tcp:1234"], "-serial");
    assert_usage_error(&["-config", "/nonexistent.json"], "/nonexistent.json");
    assert_usage_error(&["stray"], "stray");
}

#[test]
fn bad_json_config_names_the_field() {
    let dir = scratch("badjson");
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, r#"{"machine-config": {"vcpu_count": "two"}}"#).unwrap();
    assert_usage_error(
        &["-config", cfg.to_str().unwrap()],
        "machine-config.vcpu_count",
    );
    std::fs::write(
        &cfg,
        r#"{"boot-source": {"kernel_image_path": "/x", "bogus": 1}}"#,
    )
    .unwrap();
    assert_usage_error(&["-config", cfg.to_str().unwrap()], "boot-source.bogus");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_images_fail_with_the_boot_step_named() {
    if !kvm_usable("bad_images") {
        return;
    }
    let dir = scratch("badimg");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    assert_usage_error(&["-kernel", junk.to_str().unwrap()], "not a kernel image");

    let long = "x".repeat(3000);
    assert_usage_error(
        &["-kernel", GUEST_BZIMAGE, "-append", &long],
        "command line",
    );

    let big = dir.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    assert_usage_error(
        &[
            "-kernel",
            GUEST_ELF64,
            "-m",
            "32",
            "-initrd",
            big.to_str().unwrap(),
        ],
        "failed to load initrd",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn more_devices_than_irq_lines_is_refused() {
    if !kvm_usable("too_many_devices") {
        return;
    }
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        GUEST_ELF64.into(),
        "-object".into(),
        "rng-random,id=r,filename=/dev/urandom".into(),
    ];
    for i in 0..20 {
        args.push("-device".into());
        args.push(format!("virtio-rng-device,rng=r,id=rng{i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_usage_error(
        &args,
        "26 virtio devices configured (hotplug slots included), at most 19 fit",
    );
}

#[test]
fn more_boot_disks_or_nics_than_slots_is_refused_naming_the_device_and_the_key() {
    let dir = scratch("slots-full");
    let mut args: Vec<String> = vec!["-kernel".into(), GUEST_ELF64.into()];
    for i in 0..3 {
        let img = dir.join(format!("d{i}.img"));
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        args.push("-drive".into());
        args.push(format!("id=d{i},file={}", img.display()));
        args.push("-device".into());
        args.push(format!("virtio-blk-device,drive=d{i},id=disk{i}"));
    }
    args.extend(["-machine".into(), "microvm,blk-slots=2".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_usage_error(
        &a,
        "-device virtio-blk-device,id=disk2: 3 disks at boot but -machine blk-slots=2; \
         boot disks fill the slots from 0 (raise blk-slots",
    );
    // Two NICs, one network slot (the check comes before any tap is opened).
    assert_usage_error(
        &[
            "-kernel",
            GUEST_ELF64,
            "-netdev",
            "tap,id=n0,ifname=avt-none0",
            "-device",
            "virtio-net-device,netdev=n0,id=eth0",
            "-netdev",
            "tap,id=n1,ifname=avt-none1",
            "-device",
            "virtio-net-device,netdev=n1,id=eth1",
            "-machine",
            "microvm,net-slots=1",
        ],
        "-device virtio-net-device,id=eth1: 2 NICs at boot but -machine net-slots=1",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_command_line_too_long_with_the_device_tokens_says_so() {
    if !kvm_usable("cmdline_tokens_overflow") {
        return;
    }
    // 1900 bytes fit the limit of an ELF kernel (2047 bytes and the NUL)
    // alone, but not with the six tokens of the default slots (35 bytes
    // each with its space).
    let long = "x".repeat(1900);
    assert_usage_error(
        &["-kernel", GUEST_ELF64, "-append", &long],
        "-append: the kernel command line would be 2111 bytes, over the kernel's limit of 2047: \
         1900 bytes given plus 6 virtio_mmio.device= tokens",
    );
    // Without slots there are no tokens, and it boots.
    let out = boot(
        GUEST_ELF64,
        &[
            "-append",
            &long,
            "-machine",
            "microvm,blk-slots=0,net-slots=0",
        ],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("boot-complete"), "{out:?}");
}

#[test]
fn version_and_help() {
    let out = run(&["-version"]);
    assert_eq!(out.code(), 0);
    assert!(
        out.stdout.starts_with("altovirt version "),
        "{}",
        out.stdout
    );
    let out = run(&["-help"]);
    assert_eq!(out.code(), 0);
    for flag in [
        "-kernel",
        "-append",
        "-initrd",
        "-m",
        "-smp",
        "-machine",
        "-serial",
        "-config",
        "-daemonize",
        "-pidfile",
    ] {
        assert!(out.stdout.contains(flag), "help lacks {flag}");
    }
    assert_eq!(run(&["-h"]).code(), 0);
}

/// Starts a VM whose guest halts and stays up, with `-pidfile`, and waits
/// for the pidfile to appear.
fn start_halted_with_pidfile(pidfile: &std::path::Path) -> std::process::Child {
    let child = altovirt()
        .args(["-kernel", GUEST_ELF64, "-append", "guest.exit=halt"])
        .args(["-serial", "none", "-pidfile"])
        .arg(pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for_path(pidfile, Duration::from_secs(10)),
        "pidfile not created"
    );
    child
}

#[test]
fn pidfile_is_exclusive_and_removed_on_sigterm() {
    if !kvm_usable("pidfile") {
        return;
    }
    let dir = scratch("pidfile");
    let pidfile = dir.join("vm.pid");
    let mut first = start_halted_with_pidfile(&pidfile);
    let text = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(text.trim(), first.id().to_string());

    let second = run(&[
        "-kernel",
        GUEST_ELF64,
        "-serial",
        "none",
        "-pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert_ne!(second.code(), 0);
    assert!(
        second.stderr.contains("held by another running altovirt"),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains(&first.id().to_string()));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM should end altovirt with status 0: {status:?}"
    );
    assert!(!pidfile.exists(), "pidfile left behind");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigint_and_sighup_also_quit_cleanly_even_right_after_the_pidfile_appears() {
    if !kvm_usable("signals") {
        return;
    }
    // The signal goes out as soon as the pidfile exists, which may be before
    // the device loop watches the signalfd: it must wait, pending, not kill.
    for sig in [libc::SIGINT, libc::SIGHUP] {
        let dir = scratch(&format!("signal-{sig}"));
        let pidfile = dir.join("vm.pid");
        let mut vm = start_halted_with_pidfile(&pidfile);
        assert!(
            vm.try_wait().unwrap().is_none(),
            "exited before signal {sig}"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(vm.id() as i32, sig) };
        let out = wait_with_timeout(vm, Duration::from_secs(10));
        assert_eq!(out.code(), 0, "signal {sig}: {out:?}");
        assert!(!pidfile.exists(), "signal {sig}: pidfile left behind");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn daemonize_returns_after_the_pidfile_is_written() {
    if !kvm_usable("daemonize") {
        return;
    }
    let dir = scratch("daemon");
    let pidfile = dir.join("vm.pid");
    let console = dir.join("console.log");
    let qmp = dir.join("qmp.sock");
    let out = run(&[
        "-kernel",
        GUEST_ELF64,
        "-append",
        "guest.exit=halt",
        "-daemonize",
        "-pidfile",
        pidfile.to_str().unwrap(),
        "-serial",
        &format!("file:{}", console.display()),
        "-qmp",
        &format!("unix:{},server,nowait", qmp.display()),
    ]);
    assert_eq!(out.code(), 0, "{out:?}");
    // The parent returned: the pidfile must already be there.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile exists when -daemonize returns")
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    // ... and the QMP socket must already accept connections.
    let mut stream = std::os::unix::net::UnixStream::connect(&qmp)
        .expect("QMP socket listening when -daemonize returns");
    let mut greeting = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut greeting).unwrap();
    assert_eq!(&greeting, br#"{"QMP":{"#);
    // The daemon keeps running the guest.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("halting")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "guest never reached halt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pidfile.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn daemonize_refuses_a_stdio_console() {
    assert_usage_error(&["-daemonize", "-kernel", GUEST_ELF64], "-daemonize");
}

#[test]
fn devices_not_built_yet_are_refused_clearly() {
    if !kvm_usable("unsupported_devices") {
        return;
    }
    // Descriptor 3 is what Kata passes; the caller of the tests may have
    // left its own descriptor 3 open (`3>file`, `time -o`, CI runners), so
    // the child closes it before exec: the outcome is this test's doing.
    let mut cmd = altovirt();
    cmd.args([
        "-device",
        "vhost-vsock-device,id=vsock-id,guest-cid=3,vhostfd=3",
    ]);
    // SAFETY: close(2) is async-signal-safe; nothing else runs in the
    // child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            Ok(())
        });
    }
    assert_command_usage_error(cmd, "vhostfd 3 is not an open inherited descriptor");
    if !std::path::Path::new("/dev/vhost-vsock").exists() {
        // This host has no vhost-vsock: the error must say so and how to fix it.
        assert_usage_error(
            &["-device", "vhost-vsock-device,id=vsock-id,guest-cid=3"],
            "cannot open /dev/vhost-vsock",
        );
    }
    assert_usage_error(
        &[
            "-chardev",
            "socket,id=fs,path=/tmp/x,server,nowait",
            "-device",
            "vhost-user-fs-device,chardev=fs,tag=kataShared,id=virtio-fs0",
        ],
        // Without -machine mem-share=on no backend could map guest RAM.
        "device 'virtio-fs0': guest RAM at 0x0 is not shareable",
    );
}

#[test]
fn errors_quoting_control_characters_stay_on_one_line() {
    // Found by the config fuzz target: a stray argument with newlines.
    assert_usage_error(
        &["-m", "64", "stray\nargument"],
        "unexpected argument 'stray\\nargument'",
    );
    assert_usage_error(&["-kernel", "/no/such\n\tkernel"], "/no/such\\n\\tkernel");
}

/// The words of a README flag form that `-h` must show too: flag names,
/// `key=` option keys, `scheme:` prefixes and literal values, but not the
/// upper-case placeholders (PATH, N, ID, …).
fn form_words(form: &str) -> Vec<String> {
    form.replace("\\|", "|")
        .split(|c: char| c.is_whitespace() || ",[]|()+…".contains(c))
        .filter_map(|tok| {
            let word = match (tok.find('='), tok.find(':')) {
                (Some(eq), _) => &tok[..=eq],
                (None, Some(colon)) => &tok[..=colon],
                (None, None) => tok,
            };
            let placeholder = word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_-=:".contains(c));
            (!word.is_empty() && !placeholder && !word.starts_with('/')).then(|| word.to_string())
        })
        .collect()
}

#[test]
fn every_form_in_the_readme_flag_table_is_in_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| Flag | Meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() > 20, "README flag table not found");
    let help = run(&["-h"]).stdout;
    let mut missing = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for row in table {
        // The first cell, without the escaped pipes that separate choices.
        let cell = row.replace("\\|", "\u{1}");
        let first = cell
            .split('|')
            .nth(1)
            .unwrap_or_default()
            .replace('\u{1}', "\\|");
        for form in first.split('`').skip(1).step_by(2) {
            for word in form_words(form) {
                if !help.contains(&word) {
                    missing.push(format!("{word} (from `{form}`)"));
                }
                checked.insert(word);
            }
        }
    }
    // The table was really read, options and all.
    for word in [
        "-netdev",
        "fds=",
        "mem-overcommit=",
        "vhostfd=",
        "-pidfile",
        "server=",
        "unix:",
    ] {
        assert!(checked.contains(word), "{word} not among {checked:?}");
    }
    assert!(missing.is_empty(), "-h lacks: {missing:#?}");
}

#[test]
fn an_unknown_flag_points_at_help() {
    assert_usage_error(&["-foo"], "altovirt: unknown flag -foo (see altovirt -h)");
}
