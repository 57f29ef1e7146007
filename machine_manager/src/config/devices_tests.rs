//! Tests of the device flags.
use super::super::{parse_cmdline, Command, ConfigError, VmConfig};
use super::*;

fn parse(args: &[&str]) -> Result<VmConfig, ConfigError> {
    match parse_cmdline(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())? {
        Command::Run(cfg) => Ok(*cfg),
        other => panic!("{other:?}"),
    }
}

fn image(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("altovirt-devcfg-{}-{name}.img", std::process::id()));
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    p
}

#[test]
fn kata_device_flags_resolve() {
    let img = image("kata");
    let drive = format!("id=rootfs,file={},readonly=on,direct=off", img.display());
    let cfg = parse(&[
        "-object",
        "rng-random,id=objrng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=objrng0,id=virtio-rng0",
        "-device",
        "virtio-serial-device,id=virtio-serial0",
        "-chardev",
        "socket,id=charconsole0,path=/tmp/c.sock,server,nowait",
        "-device",
        "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-device,drive=rootfs,id=virtio-blk0,serial=S1",
        "-object",
        "iothread,id=io0",
    ])
    .unwrap();
    assert_eq!(
        cfg.devices,
        vec![
            DeviceConfig::Rng {
                id: "virtio-rng0".into(),
                path: "/dev/urandom".into()
            },
            DeviceConfig::Console {
                id: "virtio-console0".into(),
                backend: ChardevBackend::Socket("/tmp/c.sock".into())
            },
            DeviceConfig::Block {
                id: "virtio-blk0".into(),
                drive: DriveConfig {
                    id: "rootfs".into(),
                    path: img.clone(),
                    read_only: true,
                    direct: false,
                    limits: Default::default(),
                },
                serial: Some("S1".into()),
            },
        ]
    );
    let _ = std::fs::remove_file(img);
}

#[test]
fn device_errors_name_the_flag_and_the_problem() {
    let img = image("errors");
    let drive = format!("id=d0,file={}", img.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-device", "virtio-blk-device,drive=nope"],
            "-device virtio-blk-device: drive 'nope' is not defined",
        ),
        (
            vec!["-device", "e1000,id=n0"],
            "-device: unknown driver 'e1000'",
        ),
        (
            vec!["-device", "virtio-net-device,netdev=n0,id=n0"],
            "-device virtio-net-device: netdev 'n0' is not defined",
        ),
        (
            vec!["-netdev", "tap,id=n0,ifname=tap0,vhost=on"],
            "vhost-net is not supported",
        ),
        (vec!["-netdev", "tap,id=n0,fds=3:4"], "multiqueue"),
        (
            vec!["-netdev", "tap,id=n0,fd=987"],
            "fd 987 is not an open inherited descriptor",
        ),
        (vec!["-netdev", "user,id=n0"], "only type tap"),
        (
            vec![
                "-drive",
                &drive,
                "-device",
                "virtio-blk-device,drive=d0,iothread=nope",
            ],
            "iothread 'nope' is not defined",
        ),
        (
            vec!["-object", "iothread,id=a", "-object", "iothread,id=a"],
            "duplicate iothread id 'a'",
        ),
        (
            vec![
                "-netdev",
                "tap,id=n0,ifname=t0",
                "-device",
                "virtio-net-device,netdev=n0,mac=zz",
            ],
            "mac",
        ),
        (
            vec!["-device", "virtconsole,chardev=c0"],
            "needs a -device virtio-serial-device",
        ),
        (
            vec!["-chardev", "socket,id=c0,path=/x,server,wait=on"],
            "wait=on is not supported",
        ),
        (
            vec![
                "-chardev",
                "socket,id=c0,path=/x",
                "-device",
                "virtio-serial-device",
                "-device",
                "virtconsole,chardev=c0",
            ],
            "-device virtconsole: chardev 'c0': socket chardevs must be servers",
        ),
        (
            vec!["-drive", "id=d0,file=/nonexistent.img"],
            "-drive file: cannot open '/nonexistent.img'",
        ),
        (
            vec![
                "-drive",
                &drive,
                "-device",
                "virtio-blk-device,drive=d0,id=x",
                "-object",
                "rng-random,id=r,filename=/dev/urandom",
                "-device",
                "virtio-rng-device,rng=r,id=x",
            ],
            "duplicate device id 'x'",
        ),
        (
            vec!["-drive", "id=d0,file=/x,format=qcow2"],
            "format 'qcow2' is not supported",
        ),
        (
            vec!["-object", "memory-backend-file,id=m"],
            "unsupported object type 'memory-backend-file'",
        ),
    ];
    for (args, needle) in cases {
        let e = parse(&args).expect_err(needle).to_string();
        assert!(e.contains(needle), "{args:?}: {e:?} lacks {needle:?}");
        assert!(!e.contains('\n'));
    }
    let _ = std::fs::remove_file(img);
}

#[test]
fn json_drives_and_rng_become_devices() {
    let img = image("json");
    let cfg_path =
        std::env::temp_dir().join(format!("altovirt-devcfg-{}.json", std::process::id()));
    let json = format!(
        r#"{{"drive":[{{"drive_id":"root","path_on_host":"{}","direct":false,"read_only":true}}],"rng":{{"random_file":"/dev/urandom"}}}}"#,
        img.display()
    );
    std::fs::write(&cfg_path, json).unwrap();
    let cfg = parse(&["-config", cfg_path.to_str().unwrap()]).unwrap();
    assert_eq!(cfg.devices.len(), 2);
    assert_eq!(cfg.devices[0].id(), "root");
    assert!(matches!(&cfg.devices[1], DeviceConfig::Rng { .. }));
    let _ = std::fs::remove_file(img);
    let _ = std::fs::remove_file(cfg_path);
}

#[test]
fn vhost_user_fs_resolves_from_kata_and_qemu_style_chardevs() {
    // Kata's StratoVirt flags, verbatim.
    let cfg = parse(&[
        "-chardev",
        "socket,id=virtio_fs,path=/run/vc/sb/virtiofs_kata.socket,server,nowait",
        "-device",
        "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0",
    ])
    .unwrap();
    assert_eq!(
        cfg.devices,
        vec![DeviceConfig::VhostUserFs {
            id: "virtio-fs0".into(),
            chardev: "virtio_fs".into(),
            socket: "/run/vc/sb/virtiofs_kata.socket".into(),
            tag: "kataShared".into(),
            num_request_queues: 1,
            queue_size: 128,
        }]
    );
    // QEMU style: a client chardev, queue options, no id.
    let cfg = parse(&[
        "-chardev",
        "socket,id=char0,path=/tmp/vfsd.sock",
        "-device",
        "vhost-user-fs-mmio,chardev=char0,tag=myfs,queue-size=1024,num-request-queues=2",
    ])
    .unwrap();
    assert_eq!(
        cfg.devices,
        vec![DeviceConfig::VhostUserFs {
            id: "char0".into(),
            chardev: "char0".into(),
            socket: "/tmp/vfsd.sock".into(),
            tag: "myfs".into(),
            num_request_queues: 2,
            queue_size: 1024,
        }]
    );
}

#[test]
fn vhost_user_fs_errors_name_the_flag_and_key() {
    let chardev = ["-chardev", "socket,id=c,path=/tmp/fs.sock"];
    let cases: Vec<(&str, &str)> = vec![
        (
            "vhost-user-fs-device,tag=t",
            "-device vhost-user-fs-device: 'chardev' is required",
        ),
        (
            "vhost-user-fs-device,chardev=c",
            "-device vhost-user-fs-device: 'tag' is required",
        ),
        (
            "vhost-user-fs-device,chardev=nope,tag=t",
            "-device vhost-user-fs-device: chardev 'nope' is not defined",
        ),
        (
            "vhost-user-fs-device,chardev=c,tag=0123456789012345678901234567890123456",
            "is longer than 36 bytes",
        ),
        (
            "vhost-user-fs-device,chardev=c,tag=t,queue-size=100",
            "-device vhost-user-fs-device: queue-size '100' must be a power of two from 2 to 1024",
        ),
        (
            "vhost-user-fs-device,chardev=c,tag=t,num-request-queues=0",
            "num-request-queues '0' must be 1 to 63",
        ),
        ("vhost-user-fs-device,chardev=c,tag=t,cache=always", "cache"),
    ];
    for (device, needle) in cases {
        let mut args = chardev.to_vec();
        args.extend(["-device", device]);
        let e = parse(&args).unwrap_err().to_string();
        assert!(e.contains(needle), "{device}: {e}");
        assert_eq!(e.lines().count(), 1);
    }
    let e = parse(&[
        "-chardev",
        "file,id=c,path=/tmp/x",
        "-device",
        "vhost-user-fs-device,chardev=c,tag=t",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("chardev 'c' must be a unix socket chardev"),
        "{e}"
    );
}

#[test]
fn balloon_device_flags() {
    let cfg = parse(&[
        "-device",
        "virtio-balloon-device,id=b0,deflate-on-oom=on,free-page-reporting=on",
    ])
    .unwrap();
    assert_eq!(
        cfg.devices,
        vec![DeviceConfig::Balloon {
            id: "b0".into(),
            deflate_on_oom: true,
            free_page_reporting: true,
            amount_mib: 0
        }]
    );
    let cfg = parse(&["-device", "virtio-balloon-mmio,bus=virtio-mmio-bus.0"]).unwrap();
    assert_eq!(
        cfg.devices,
        vec![DeviceConfig::Balloon {
            id: "balloon0".into(),
            deflate_on_oom: false,
            free_page_reporting: false,
            amount_mib: 0
        }]
    );
    let e = parse(&["-device", "virtio-balloon-device,deflate-on-oom=maybe"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("-device virtio-balloon-device deflate-on-oom: invalid on/off value"),
        "{e}"
    );
    let e = parse(&[
        "-device",
        "virtio-balloon-device,guest-stats-polling-interval=2",
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "-device virtio-balloon-device: unknown key 'guest-stats-polling-interval'"
    );
    let e = parse(&[
        "-device",
        "virtio-balloon-device",
        "-device",
        "virtio-balloon-device,id=b1",
    ])
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("only one balloon device is supported"),
        "{e}"
    );
}

#[test]
fn json_balloon_comes_after_the_json_devices_and_fits_in_ram() {
    let dir = crate::config::test_util::TempDir::new("balloon");
    let ok = dir.file(
        "ok.json",
        br#"{"balloon": {"amount_mib": 64, "deflate_on_oom": true}}"#,
    );
    let cfg = parse(&["-config", ok.to_str().unwrap(), "-m", "128"]).unwrap();
    assert_eq!(
        cfg.devices,
        vec![DeviceConfig::Balloon {
            id: "balloon0".into(),
            deflate_on_oom: true,
            free_page_reporting: false,
            amount_mib: 64
        }]
    );
    let e = parse(&["-config", ok.to_str().unwrap(), "-m", "32"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "balloon.amount_mib: 64 is out of range 0..=32"
    );
    // The JSON balloon and a -device balloon are two.
    let e = parse(&[
        "-config",
        ok.to_str().unwrap(),
        "-device",
        "virtio-balloon-device,id=b1",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("only one balloon"), "{e}");
}
