//! Tests for the JSON configuration walker.

use super::*;
use crate::config::test_util::TempDir;

fn err(text: &str) -> String {
    parse_json("/p", text).unwrap_err().to_string()
}

/// A directory with a kernel, an initrd and two disk images.
struct Files {
    dir: TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    disk0: PathBuf,
    disk1: PathBuf,
}

fn files() -> Files {
    let dir = TempDir::new("json");
    let kernel = dir.file("vmlinux", b"k");
    let initrd = dir.file("initrd", b"i");
    let disk0 = dir.file("rootfs.ext4", b"d0");
    let disk1 = dir.file("data.img", b"d1");
    Files {
        dir,
        kernel,
        initrd,
        disk0,
        disk1,
    }
}

#[test]
fn empty_object_sets_nothing() {
    assert_eq!(parse_json("/p", "{}"), Ok(FileConfig::default()));
}

#[test]
fn full_example() {
    let f = files();
    let text = format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "{k}", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_fs_path": "{i}"}},
  "machine-config": {{"name": "vm1", "type": "MicroVm", "vcpu_count": 2, "mem_size": 268435456, "max_vcpus": 4,
                      "dump_guest_core": false, "mem-share": true}},
  "drive": [{{"drive_id": "rootfs", "path_on_host": "{d0}", "direct": true, "read_only": false}},
            {{"drive_id": "data", "path_on_host": "{d1}", "read_only": true}}],
  "net": [{{"iface_id": "net0", "host_dev_name": "tap0", "mac": "12:34:56:78:9A:BC"}},
          {{"iface_id": "net1", "host_dev_name": "tap1"}}],
  "vsock": {{"vsock_id": "vsock0", "guest_cid": 3}},
  "rng": {{"random_file": "/dev/urandom"}},
  "serial": {{"stdio": true}}
}}"#,
        k = f.kernel.display(),
        i = f.initrd.display(),
        d0 = f.disk0.display(),
        d1 = f.disk1.display(),
    );
    let cfg = parse_json("/p", &text).unwrap();
    assert_eq!(cfg.name.as_deref(), Some("vm1"));
    assert_eq!(cfg.kernel.as_ref(), Some(&f.kernel));
    assert_eq!(cfg.initrd.as_ref(), Some(&f.initrd));
    assert_eq!(
        cfg.boot_args.as_deref(),
        Some("console=ttyS0 reboot=k panic=1")
    );
    assert_eq!(cfg.mem_size, Some(256 << 20));
    assert_eq!(cfg.vcpus, Some((2, 4)));
    assert_eq!(cfg.dump_guest_core, Some(false));
    assert_eq!(cfg.mem_share, Some(true));
    assert_eq!(cfg.serial, Some(SerialConfig::Stdio));
    assert_eq!(
        cfg.drives,
        vec![
            DriveConfig {
                id: "rootfs".into(),
                path: f.disk0.clone(),
                read_only: false,
                direct: true,
                limits: Default::default(),
            },
            DriveConfig {
                id: "data".into(),
                path: f.disk1.clone(),
                read_only: true,
                direct: false,
                limits: Default::default(),
            },
        ]
    );
    assert_eq!(
        cfg.nets,
        vec![
            NetConfig {
                id: "net0".into(),
                host_dev_name: "tap0".into(),
                mac: Some("12:34:56:78:9A:BC".into()),
                limits: Default::default(),
            },
            NetConfig {
                id: "net1".into(),
                host_dev_name: "tap1".into(),
                mac: None,
                limits: Default::default(),
            },
        ]
    );
    assert_eq!(
        cfg.vsock,
        Some(VsockConfig {
            id: "vsock0".into(),
            guest_cid: 3
        })
    );
    assert_eq!(
        cfg.rng,
        Some(RngConfig {
            random_file: "/dev/urandom".into()
        })
    );
    drop(f.dir);
}

#[test]
fn null_members_count_as_absent() {
    let cfg = parse_json("/p", r#"{"vsock": null, "machine-config": {"name": null}}"#).unwrap();
    assert_eq!(cfg, FileConfig::default());
}

#[test]
fn syntax_error_names_file_line_and_column() {
    assert_eq!(
        err("{\n  \"rng\": {\n    ]\n}"),
        "JSON config /p: parse error at line 3 column 5: key must be a string"
    );
    assert_eq!(
        err("{\"rng\": "),
        "JSON config /p: parse error at line 1 column 8: EOF while parsing a value"
    );
}

#[test]
fn unreadable_file() {
    let e = load_json_file(Path::new("/nonexistent/vm.json")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "JSON config /nonexistent/vm.json: cannot read file: No such file or directory"
    );
    let dir = TempDir::new("json-dir");
    let e = load_json_file(dir.path()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "JSON config {}: cannot read file: Is a directory",
            dir.path().display()
        )
    );
}

#[test]
fn load_from_file() {
    let dir = TempDir::new("json-load");
    let path = dir.file("vm.json", br#"{"machine-config": {"vcpu_count": 3}}"#);
    let cfg = load_json_file(&path).unwrap();
    assert_eq!(cfg.vcpus, Some((3, 3)));
    let bad = dir.file("bad.json", b"{\n}\n}");
    assert_eq!(
        load_json_file(&bad).unwrap_err().to_string(),
        format!(
            "JSON config {}: parse error at line 3 column 1: trailing characters",
            bad.display()
        )
    );
}

#[test]
fn top_level_must_be_object() {
    assert_eq!(err("[]"), "JSON config /p: expected an object");
}

#[test]
fn unknown_fields_are_named() {
    assert_eq!(err(r#"{"foo": 1}"#), "foo: unknown field");
    assert_eq!(
        err(r#"{"boot-source": {"foo": 1}}"#),
        "boot-source.foo: unknown field"
    );
    assert_eq!(
        err(r#"{"machine-config": {"omit_vm_memory": true}}"#),
        "machine-config.omit_vm_memory: unknown field"
    );
    assert_eq!(
        err(r#"{"drive": [{"drive_id": "a", "serial_num": "x"}]}"#),
        "drive[0].serial_num: unknown field"
    );
    assert_eq!(
        err(r#"{"net": [{"vhost_type": "vhost-kernel"}]}"#),
        "net[0].vhost_type: unknown field"
    );
    assert_eq!(err(r#"{"vsock": {"x": 1}}"#), "vsock.x: unknown field");
    assert_eq!(err(r#"{"rng": {"x": 1}}"#), "rng.x: unknown field");
    assert_eq!(err(r#"{"serial": {"x": 1}}"#), "serial.x: unknown field");
}

#[test]
fn section_types() {
    assert_eq!(
        err(r#"{"boot-source": []}"#),
        "boot-source: expected an object"
    );
    assert_eq!(err(r#"{"drive": {}}"#), "drive: expected an array");
    assert_eq!(err(r#"{"net": "tap0"}"#), "net: expected an array");
    assert_eq!(err(r#"{"drive": [1]}"#), "drive[0]: expected an object");
    assert_eq!(err(r#"{"vsock": 3}"#), "vsock: expected an object");
}

#[test]
fn value_types() {
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": "2"}}"#),
        "machine-config.vcpu_count: expected an integer"
    );
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": 1.5}}"#),
        "machine-config.vcpu_count: expected an integer"
    );
    assert_eq!(
        err(r#"{"machine-config": {"mem_size": 1e9}}"#),
        "machine-config.mem_size: expected an integer"
    );
    assert_eq!(
        err(r#"{"machine-config": {"name": 5}}"#),
        "machine-config.name: expected a string"
    );
    assert_eq!(
        err(r#"{"boot-source": {"boot_args": ["a"]}}"#),
        "boot-source.boot_args: expected a string"
    );
    assert_eq!(
        err(r#"{"machine-config": {"dump_guest_core": "off"}}"#),
        "machine-config.dump_guest_core: expected a boolean"
    );
    assert_eq!(
        err(r#"{"serial": {"stdio": 1}}"#),
        "serial.stdio: expected a boolean"
    );
    assert_eq!(
        err(r#"{"drive": [{"drive_id": null}]}"#),
        "drive[0].drive_id: expected a string"
    );
}

#[test]
fn vcpu_rules() {
    let cfg = parse_json("/p", r#"{"machine-config": {"max_vcpus": 8}}"#).unwrap();
    assert_eq!(cfg.vcpus, Some((1, 8)));
    let cfg = parse_json("/p", r#"{"machine-config": {"vcpu_count": 254}}"#).unwrap();
    assert_eq!(cfg.vcpus, Some((254, 254)));
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": 0}}"#),
        "machine-config.vcpu_count: 0 is out of range 1..=254"
    );
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": 255}}"#),
        "machine-config.vcpu_count: 255 is out of range 1..=254"
    );
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": -1}}"#),
        "machine-config.vcpu_count: -1 is out of range 1..=254"
    );
    assert_eq!(
        err(r#"{"machine-config": {"vcpu_count": 4, "max_vcpus": 2}}"#),
        "machine-config.max_vcpus: maximum vCPU count 2 is less than the vCPU count 4"
    );
}

#[test]
fn memory_rules() {
    assert_eq!(
        err(r#"{"machine-config": {"mem_size": 1048576}}"#),
        "machine-config.mem_size: memory size 1048576 bytes is below the minimum of 16 MiB"
    );
    assert_eq!(
        err(r#"{"machine-config": {"mem_size": 16777217}}"#),
        "machine-config.mem_size: memory size 16777217 bytes is not a multiple of the 4096-byte page size"
    );
    assert_eq!(
        err(r#"{"machine-config": {"mem_size": -4096}}"#),
        "machine-config.mem_size: -4096 is out of range 0..=18446744073709551615"
    );
}

#[test]
fn machine_type_and_name() {
    let cfg = parse_json("/p", r#"{"machine-config": {"type": "microvm"}}"#).unwrap();
    assert_eq!(cfg, FileConfig::default());
    assert_eq!(
        err(r#"{"machine-config": {"type": "q35"}}"#),
        "machine-config.type: unsupported machine type 'q35' (only 'microvm' is supported)"
    );
    assert_eq!(
        err(r#"{"machine-config": {"name": ""}}"#),
        "machine-config.name: value must not be empty"
    );
}

#[test]
fn boot_source_files_must_exist() {
    assert_eq!(
        err(r#"{"boot-source": {"kernel_image_path": "/no/vmlinux"}}"#),
        "boot-source.kernel_image_path: cannot open '/no/vmlinux': No such file or directory"
    );
    assert_eq!(
        err(r#"{"boot-source": {"initrd_fs_path": "/no/initrd"}}"#),
        "boot-source.initrd_fs_path: cannot open '/no/initrd': No such file or directory"
    );
    assert_eq!(
        err(r#"{"boot-source": {"kernel_image_path": "/dev/null"}}"#),
        "boot-source.kernel_image_path: '/dev/null' is not a regular file"
    );
}

#[test]
fn drive_rules() {
    let f = files();
    let d0 = f.disk0.display();
    assert_eq!(
        err(&format!(
            r#"{{"drive": [{{"drive_id": "a", "path_on_host": "{d0}"}}, {{"drive_id": "b"}}]}}"#
        )),
        "drive[1].path_on_host: missing field"
    );
    assert_eq!(
        err(r#"{"drive": [{"path_on_host": "/x"}]}"#),
        "drive[0].drive_id: missing field"
    );
    assert_eq!(
        err(r#"{"drive": [{"drive_id": "", "path_on_host": "/x"}]}"#),
        "drive[0].drive_id: value must not be empty"
    );
    assert_eq!(
        err(&format!(
            r#"{{"drive": [{{"drive_id": "a", "path_on_host": "{d0}"}}, {{"drive_id": "a", "path_on_host": "{d0}"}}]}}"#
        )),
        "drive[1].drive_id: id 'a' is already used by drive[0].drive_id"
    );
    assert_eq!(
        err(r#"{"drive": [{"drive_id": "a", "path_on_host": "/no/disk"}]}"#),
        "drive[0].path_on_host: cannot open '/no/disk': No such file or directory"
    );
    assert_eq!(
        err(r#"{"drive": [{"drive_id": "a", "path_on_host": "/dev/null"}]}"#),
        "drive[0].path_on_host: '/dev/null' is not a regular file or block device"
    );
    assert_eq!(
        err(&format!(
            r#"{{"drive": [{{"drive_id": "a", "path_on_host": "{d0}", "read_only": "yes"}}]}}"#
        )),
        "drive[0].read_only: expected a boolean"
    );
}

#[test]
fn net_rules() {
    assert_eq!(
        err(r#"{"net": [{"iface_id": "n", "host_dev_name": "tap0", "mac": "zz"}]}"#),
        "net[0].mac: invalid MAC address 'zz'"
    );
    assert_eq!(
        err(r#"{"net": [{"iface_id": "n", "host_dev_name": "tap0", "mac": "03:00:00:00:00:01"}]}"#),
        "net[0].mac: MAC address '03:00:00:00:00:01' is a multicast address"
    );
    assert_eq!(
        err(r#"{"net": [{"iface_id": "n"}]}"#),
        "net[0].host_dev_name: missing field"
    );
    assert_eq!(
        err(r#"{"net": [{"iface_id": "n", "host_dev_name": ""}]}"#),
        "net[0].host_dev_name: value must not be empty"
    );
    assert_eq!(
        err(r#"{"net": [{"iface_id": "n", "host_dev_name": "a-very-long-tap0"}]}"#),
        "net[0].host_dev_name: 'a-very-long-tap0' is longer than 15 bytes"
    );
    assert_eq!(
        err(
            r#"{"net": [{"iface_id": "n", "host_dev_name": "t"}, {"iface_id": "n", "host_dev_name": "u"}]}"#
        ),
        "net[1].iface_id: id 'n' is already used by net[0].iface_id"
    );
}

#[test]
fn ids_are_unique_across_device_kinds() {
    let f = files();
    let text = format!(
        r#"{{"drive": [{{"drive_id": "dev0", "path_on_host": "{}"}}],
            "net": [{{"iface_id": "n", "host_dev_name": "tap0"}}],
            "vsock": {{"vsock_id": "dev0", "guest_cid": 3}}}}"#,
        f.disk0.display()
    );
    assert_eq!(
        err(&text),
        "vsock.vsock_id: id 'dev0' is already used by drive[0].drive_id"
    );
}

#[test]
fn vsock_rules() {
    let cfg = parse_json(
        "/p",
        r#"{"vsock": {"vsock_id": "v", "guest_cid": 4294967294}}"#,
    )
    .unwrap();
    assert_eq!(cfg.vsock.map(|v| v.guest_cid), Some(u32::MAX - 1));
    assert_eq!(
        err(r#"{"vsock": {"vsock_id": "v", "guest_cid": 2}}"#),
        "vsock.guest_cid: 2 is out of range 3..=4294967294"
    );
    assert_eq!(
        err(r#"{"vsock": {"vsock_id": "v", "guest_cid": 4294967295}}"#),
        "vsock.guest_cid: 4294967295 is out of range 3..=4294967294"
    );
    assert_eq!(
        err(r#"{"vsock": {"vsock_id": "v"}}"#),
        "vsock.guest_cid: missing field"
    );
    assert_eq!(
        err(r#"{"vsock": {"guest_cid": 3}}"#),
        "vsock.vsock_id: missing field"
    );
}

#[test]
fn rng_rules() {
    assert_eq!(err(r#"{"rng": {}}"#), "rng.random_file: missing field");
    assert_eq!(
        err(r#"{"rng": {"random_file": "/no/random"}}"#),
        "rng.random_file: cannot open '/no/random': No such file or directory"
    );
    assert_eq!(
        err(r#"{"rng": {"random_file": "/dev"}}"#),
        "rng.random_file: '/dev' is not a regular file or character device"
    );
}

#[test]
fn serial_section() {
    let cfg = parse_json("/p", r#"{"serial": {"stdio": false}}"#).unwrap();
    assert_eq!(cfg.serial, Some(SerialConfig::None));
    let cfg = parse_json("/p", r#"{"serial": {}}"#).unwrap();
    assert_eq!(cfg.serial, Some(SerialConfig::Stdio));
}

#[test]
fn machine_config_acpi_is_a_boolean() {
    let cfg = parse_json("/p", r#"{"machine-config": {"acpi": false}}"#).unwrap();
    assert_eq!(cfg.acpi, Some(false));
    assert_eq!(parse_json("/p", "{}").unwrap().acpi, None);
    assert_eq!(
        err(r#"{"machine-config": {"acpi": "off"}}"#),
        "machine-config.acpi: expected a boolean"
    );
}

#[test]
fn balloon_section() {
    let cfg = parse_json(
        "/p",
        r#"{"balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 0}}"#,
    )
    .unwrap();
    assert_eq!(
        cfg.balloon,
        Some(JsonBalloon {
            amount_mib: 64,
            deflate_on_oom: true,
            free_page_reporting: false
        })
    );
    let cfg = parse_json("/p", r#"{"balloon": {"free_page_reporting": true}}"#).unwrap();
    assert_eq!(
        cfg.balloon.map(|b| (b.amount_mib, b.free_page_reporting)),
        Some((0, true))
    );
    assert_eq!(
        err(r#"{"balloon": {"stats_polling_interval_s": 1}}"#),
        "balloon.stats_polling_interval_s: 1 is out of range 0..=0"
    );
    assert_eq!(
        err(r#"{"balloon": {"deflate_on_oom": "yes"}}"#),
        "balloon.deflate_on_oom: expected a boolean"
    );
    assert_eq!(
        err(r#"{"balloon": {"amount": 1}}"#),
        "balloon.amount: unknown field"
    );
}

#[test]
fn drive_rate_limiter_is_firecrackers() {
    let f = files();
    let d0 = f.disk0.display();
    let text = format!(
        r#"{{"drive": [{{"drive_id": "a", "path_on_host": "{d0}", "rate_limiter": {{
            "bandwidth": {{"size": 1048576, "one_time_burst": 4096, "refill_time": 500}},
            "ops": {{"size": 100, "refill_time": 1000}}}}}}]}}"#
    );
    let cfg = parse_json("/p", &text).unwrap();
    assert_eq!(
        cfg.drives[0].limits,
        IoLimits {
            bandwidth: LimitBucket {
                size: 1 << 20,
                one_time_burst: 4096,
                refill_time_ms: 500
            },
            ops: LimitBucket {
                size: 100,
                one_time_burst: 0,
                refill_time_ms: 1000
            },
        }
    );
    let bad = |limiter: &str| {
        err(&format!(
            r#"{{"drive": [{{"drive_id": "a", "path_on_host": "{d0}", "rate_limiter": {limiter}}}]}}"#
        ))
    };
    let e = bad(r#"{"ops": {"size": 10}}"#);
    assert!(e.contains("drive[0].rate_limiter.ops.refill_time"), "{e}");
    let e = bad(r#"{"ops": {"size": 10, "refill_time": 0}}"#);
    assert!(e.contains("drive[0].rate_limiter.ops.refill_time"), "{e}");
    let e = bad(r#"{"iops": {}}"#);
    assert!(e.contains("drive[0].rate_limiter.iops"), "{e}");
    let e = bad(r#"{"bandwidth": {"size": -1, "refill_time": 1}}"#);
    assert!(e.contains("drive[0].rate_limiter.bandwidth.size"), "{e}");
}

#[test]
fn net_rx_and_tx_rate_limiters() {
    let cfg = parse_json(
        "/p",
        r#"{"net": [{"iface_id": "n0", "host_dev_name": "tap0",
            "tx_rate_limiter": {"ops": {"size": 10, "one_time_burst": 2, "refill_time": 100}},
            "rx_rate_limiter": {"bandwidth": {"size": 65536, "refill_time": 250}}}]}"#,
    )
    .unwrap();
    let limits = cfg.nets[0].limits;
    assert_eq!(
        limits.tx.ops,
        LimitBucket {
            size: 10,
            one_time_burst: 2,
            refill_time_ms: 100
        }
    );
    assert_eq!(limits.tx.bandwidth, LimitBucket::default());
    assert_eq!(
        limits.rx.bandwidth,
        LimitBucket {
            size: 65536,
            one_time_burst: 0,
            refill_time_ms: 250
        }
    );
    assert_eq!(limits.rx.ops, LimitBucket::default());
    // Errors name the direction's path.
    let e = err(r#"{"net": [{"iface_id": "n0", "host_dev_name": "tap0",
            "rx_rate_limiter": {"ops": {"size": 5}}}]}"#);
    assert!(e.contains("net[0].rx_rate_limiter.ops.refill_time"), "{e}");
    let e = err(
        r#"{"net": [{"iface_id": "n0", "host_dev_name": "tap0", "rx_rate_limiter": {"x": 1}}]}"#,
    );
    assert!(e.contains("net[0].rx_rate_limiter.x: unknown field"), "{e}");
}
