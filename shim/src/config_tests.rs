use super::*;
use std::fs;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("shim-cfg-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("config.d")).unwrap();
    fs::write(d.join("vmlinux"), b"k").unwrap();
    fs::write(d.join("initrd"), b"i").unwrap();
    fs::write(d.join("vmm"), b"v").unwrap();
    Dir(d)
}

fn base(d: &Dir, section: &str, extra: &str) -> PathBuf {
    let f = d.0.join("configuration.toml");
    fs::write(
        &f,
        format!(
            "[hypervisor.{section}]\npath = \"{0}/vmm\"\nkernel = \"{0}/vmlinux\"\n{extra}\n",
            d.0.display()
        ),
    )
    .unwrap();
    f
}

fn invalid(r: Result<LoadedConfig, ConfigError>) -> (PathBuf, String, String) {
    match r {
        Err(ConfigError::Invalid { file, key, reason }) => (file, key, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn defaults_are_katas() {
    let d = dir("defaults");
    let c = load(&base(&d, "stratovirt", "")).unwrap();
    assert_eq!(c.flavour, Flavour::StratoVirt);
    let h = &c.hypervisor;
    assert_eq!(h.default_vcpus, 1);
    assert!(h.default_maxvcpus >= 1);
    assert_eq!(h.default_memory, 2048);
    assert_eq!(h.machine_type, "microvm");
    assert_eq!(h.block_device_driver, "virtio-mmio");
    assert_eq!(h.entropy_source, "/dev/urandom");
    // Not Kata's virtio-fs: see docs/shim.md.
    assert_eq!(h.shared_fs, "none");
    assert_eq!((h.blk_slots, h.net_slots, h.guest_cid), (4, 2, 3));
    assert_eq!(h.vsock, "hybrid");
    assert!(!h.enable_debug);
    assert_eq!(c.config.agent["kata"].dial_timeout, 45);
    assert_eq!(c.config.runtime.internetworking_model, "tcfilter");
    assert!(c.config.runtime.disable_guest_seccomp);
    assert_eq!(c.config.factory.template_path, "/run/vc/vm/template");
    let q = load(&base(&d, "qemu", "default_vcpus = -1")).unwrap();
    assert_eq!(q.flavour, Flavour::Qemu);
    assert_eq!(q.hypervisor.default_vcpus, 1);
    assert_eq!(q.hypervisor.vsock, "none");
}

#[test]
fn hypervisor_selection() {
    let d = dir("select");
    let p = d.0.display().to_string();
    let f = d.0.join("configuration.toml");
    fs::write(
        &f,
        format!(
            "[hypervisor.stratovirt]\npath = \"{p}/vmm\"\nkernel = \"{p}/vmlinux\"\n\
             [hypervisor.qemu]\npath = \"/nonexistent/qemu\"\n"
        ),
    )
    .unwrap();
    // Two sections: one must be chosen; the other is not validated.
    assert_eq!(invalid(load(&f)).1, "hypervisor");
    let c = load_select(&f, Some(Flavour::StratoVirt)).unwrap();
    assert_eq!(
        (c.flavour, c.hypervisor_name.as_str()),
        (Flavour::StratoVirt, "stratovirt")
    );
    assert_eq!(c.config.hypervisor.len(), 1);
    assert_eq!(
        invalid(load_select(&f, Some(Flavour::Qemu))).1,
        "hypervisor.qemu.path"
    );
    let only = base(&d, "qemu", "");
    let (_, key, reason) = invalid(load_select(&only, Some(Flavour::StratoVirt)));
    assert_eq!(key, "hypervisor.stratovirt");
    assert!(reason.contains("no [hypervisor.stratovirt]"), "{reason}");
}

#[test]
fn drop_ins_apply_in_alphabetical_order() {
    let d = dir("dropins");
    let f = base(&d, "qemu", "default_memory = 512\ndefault_vcpus = 2");
    fs::write(
        d.0.join("config.d/20-mem.toml"),
        "[hypervisor.qemu]\ndefault_memory = 1024\n",
    )
    .unwrap();
    fs::write(
        d.0.join("config.d/10-mem.toml"),
        "[hypervisor.qemu]\ndefault_memory = 768\n[runtime]\nenable_debug = true\n",
    )
    .unwrap();
    fs::write(d.0.join("config.d/ignored.txt"), "garbage").unwrap();
    let c = load(&f).unwrap();
    assert_eq!(c.hypervisor.default_memory, 1024);
    assert_eq!(c.hypervisor.default_vcpus, 2);
    assert!(c.config.runtime.enable_debug);
    assert_eq!(c.drop_ins.len(), 2);
    assert!(c.drop_ins[0].ends_with("10-mem.toml"));
}

#[test]
fn lookup_precedence() {
    let d = dir("lookup");
    let a = d.0.join("a.toml");
    let b = d.0.join("b.toml");
    let s = d.0.join("s.toml");
    for f in [&a, &b, &s] {
        fs::write(f, "").unwrap();
    }
    let sys = vec![d.0.join("missing.toml"), s.clone()];
    assert_eq!(find_config(Some(&a), Some(&b), &sys).unwrap(), a);
    assert_eq!(find_config(None, Some(&b), &sys).unwrap(), b);
    assert_eq!(find_config(None, None, &sys).unwrap(), s);
    assert!(matches!(
        find_config(Some(&d.0.join("nope.toml")), Some(&b), &sys),
        Err(ConfigError::NotFound(_))
    ));
    assert!(matches!(
        find_config(None, None, &sys[..1]),
        Err(ConfigError::NotFound(_))
    ));
}

#[test]
fn validation_errors_name_key_and_file() {
    let d = dir("invalid");
    let p = d.0.display().to_string();
    let cases: &[(&str, &str)] = &[
        ("machine_type = \"q35\"", "machine_type"),
        ("default_vcpus = 300", "default_vcpus"),
        ("default_maxvcpus = 300", "default_maxvcpus"),
        ("default_memory = 8", "default_memory"),
        (
            "block_device_driver = \"virtio-scsi\"",
            "block_device_driver",
        ),
        ("shared_fs = \"nfs\"", "shared_fs"),
        ("shared_fs = \"virtio-9p\"", "shared_fs"),
        ("blk_slots = 17", "blk_slots"),
        ("net_slots = 99", "net_slots"),
        ("vsock = \"hybrid\"", "vsock"),
        ("vsock = \"tcp\"", "vsock"),
        ("guest_cid = 2", "guest_cid"),
        ("entropy_source = \"urandom\"", "entropy_source"),
        ("valid_hypervisor_paths = [\"/usr/bin/*\"]", "path"),
    ];
    for (extra, key) in cases {
        let f = base(&d, "qemu", extra);
        let (file, k, _) = invalid(load(&f));
        assert_eq!(k, format!("hypervisor.qemu.{key}"), "{extra}");
        assert_eq!(file, f);
    }
    let f = base(
        &d,
        "qemu",
        &format!("initrd = \"{p}/initrd\"\nimage = \"{p}/initrd\""),
    );
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.image");
    let f = base(&d, "qemu", "initrd = \"/nonexistent/initrd\"");
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.initrd");
    // Path and kernel.
    let f = d.0.join("configuration.toml");
    fs::write(&f, "[hypervisor.qemu]\npath = \"relative\"\n").unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.path");
    fs::write(&f, "[hypervisor.qemu]\npath = \"/nonexistent/vmm\"\n").unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.path");
    fs::write(&f, format!("[hypervisor.qemu]\npath = \"{p}/vmm\"\n")).unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.kernel");
    fs::write(
        &f,
        format!("[hypervisor.qemu]\npath = \"{p}/vmm\"\nkernel = \"{p}/none\"\n"),
    )
    .unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor.qemu.kernel");
    // Sections.
    fs::write(&f, "").unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor");
    fs::write(&f, format!("[hypervisor.fc]\npath = \"{p}/vmm\"\n")).unwrap();
    assert_eq!(invalid(load(&f)).1, "hypervisor.fc");
    let f = base(&d, "qemu", "[runtime]\ninternetworking_model = \"bridged\"");
    assert_eq!(invalid(load(&f)).1, "runtime.internetworking_model");
    let f = base(&d, "qemu", "[agent.other]");
    assert_eq!(invalid(load(&f)).1, "agent.other");
    // Valid glob passes.
    let f = base(&d, "qemu", &format!("valid_hypervisor_paths = [\"{p}/*\"]"));
    assert!(load(&f).is_ok());
}

#[test]
fn error_names_the_drop_in_that_set_the_key() {
    let d = dir("dropin-err");
    let f = base(&d, "stratovirt", "");
    let di = d.0.join("config.d/50-bad.toml");
    fs::write(&di, "[hypervisor.stratovirt]\ndefault_memory = 1\n").unwrap();
    let (file, key, _) = invalid(load(&f));
    assert_eq!(file, di);
    assert_eq!(key, "hypervisor.stratovirt.default_memory");
    let msg = invalid(load(&f));
    let e = ConfigError::Invalid {
        file: msg.0,
        key: msg.1,
        reason: msg.2,
    }
    .to_string();
    assert!(
        e.contains("50-bad.toml") && e.contains("default_memory"),
        "{e}"
    );
}

#[test]
fn type_errors_and_bad_toml() {
    let d = dir("types");
    let f = base(&d, "qemu", "default_memory = \"lots\"");
    assert!(matches!(load(&f), Err(ConfigError::Parse { .. })));
    fs::write(&f, "[[[").unwrap();
    match load(&f) {
        Err(ConfigError::Parse { file, .. }) => assert_eq!(file, f),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shipped_example_parses() {
    let text = include_str!("../configuration.toml.example");
    let c: Configuration = toml::from_str(text).unwrap();
    assert!(c.hypervisor.contains_key("stratovirt"));
    assert!(c.agent.contains_key("kata"));
    let h = &c.hypervisor["stratovirt"];
    assert_eq!(h.shared_fs, "none");
    assert_eq!((h.blk_slots, h.net_slots), (4, 2));
}
