//! Command-line builders: the StratoVirt flavour (altovirt, the shape Kata's
//! `stratovirt.go` builds) and the QEMU flavour (`qemu-system-x86_64 -M
//! microvm`, Kata's `qemu.go` reduced to what microvm supports).

use std::path::{Path, PathBuf};

use crate::config::{Flavour, HypervisorConfig};

/// File names inside a VM's run directory.
pub mod files {
    /// QMP socket.
    pub const QMP_SOCKET: &str = "qmp.socket";
    /// Serial console output.
    pub const CONSOLE_LOG: &str = "console.log";
    /// VMM debug log (`-D`).
    pub const VMM_LOG: &str = "vmm.log";
    /// pid file.
    pub const PID_FILE: &str = "pid";
}

/// Everything the builders need for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Sandbox id (`-name sandbox-ID`).
    pub id: String,
    /// VM UUID.
    pub uuid: String,
    /// Run directory holding the sockets and logs.
    pub run_dir: PathBuf,
    /// The hypervisor section.
    pub hv: HypervisorConfig,
}

impl VmSpec {
    /// The QMP socket path.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join(files::QMP_SOCKET)
    }

    /// The console log path.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join(files::CONSOLE_LOG)
    }

    fn kernel_params(&self) -> String {
        let mut p = String::from("reboot=k panic=1");
        if self.hv.enable_debug {
            p.push_str(" debug");
        } else {
            p.push_str(" quiet");
        }
        if !self.hv.kernel_params.trim().is_empty() {
            p.push(' ');
            p.push_str(self.hv.kernel_params.trim());
        }
        p
    }
}

/// Escapes commas in a path for a QEMU option string.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A UUID-shaped string derived from `id` (stable, not random).
pub fn uuid_for(id: &str) -> String {
    // FNV-1a over the id, twice with different seeds, formatted as a v4-ish UUID.
    let h = |seed: u64| {
        id.bytes().fold(seed, |a, b| {
            (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let (a, b) = (h(0xcbf2_9ce4_8422_2325), h(0x8422_2325_cbf2_9ce4));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// The StratoVirt-flavour arguments (for altovirt).
pub fn stratovirt_args(spec: &VmSpec) -> Vec<String> {
    let hv = &spec.hv;
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("sandbox-{}", spec.id),
        "-uuid".into(),
        spec.uuid.clone(),
        "-smp".into(),
        hv.default_vcpus.to_string(),
        "-m".into(),
        hv.default_memory.to_string(),
        "-kernel".into(),
        hv.kernel.clone(),
        "-append".into(),
        spec.kernel_params(),
        "-qmp".into(),
        format!("unix:{},server,nowait", opt_path(&spec.qmp_socket())),
        "-D".into(),
        spec.run_dir.join(files::VMM_LOG).display().to_string(),
        "-disable-seccomp".into(),
    ];
    let mut machine = String::from("type=microvm,dump-guest-core=off,mem-share=on");
    if !hv.machine_accelerators.is_empty() {
        machine.push(',');
        machine.push_str(&hv.machine_accelerators);
    }
    a.extend(["-machine".into(), machine]);
    if !hv.initrd.is_empty() {
        a.extend(["-initrd".into(), hv.initrd.clone()]);
    }
    if !hv.image.is_empty() {
        a.extend([
            "-drive".into(),
            format!(
                "id=rootfs,file={},readonly=on,direct=off",
                opt_path(Path::new(&hv.image))
            ),
            "-device".into(),
            "virtio-blk-device,drive=rootfs,id=virtio-blk0".into(),
        ]);
    }
    a.extend([
        "-object".into(),
        format!(
            "rng-random,id=objrng0,filename={}",
            opt_path(Path::new(&hv.entropy_source))
        ),
        "-device".into(),
        "virtio-rng-device,rng=objrng0,id=virtio-rng0".into(),
        "-serial".into(),
        format!("file:{}", spec.console_log().display()),
        "-pidfile".into(),
        spec.run_dir.join(files::PID_FILE).display().to_string(),
    ]);
    a
}

/// The QEMU-flavour arguments (for `qemu-system-x86_64 -M microvm`).
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let hv = &spec.hv;
    let mut machine = String::from("microvm,accel=kvm,acpi=off,x-option-roms=off,rtc=off");
    if !hv.machine_accelerators.is_empty() {
        machine.push(',');
        machine.push_str(&hv.machine_accelerators);
    }
    let mut cpu = String::from("host,pmu=off");
    if !hv.cpu_features.is_empty() {
        cpu.push(',');
        cpu.push_str(&hv.cpu_features);
    }
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("sandbox-{}", spec.id),
        "-uuid".into(),
        spec.uuid.clone(),
        "-machine".into(),
        machine,
        "-cpu".into(),
        cpu,
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt_path(&spec.qmp_socket())),
        "-m".into(),
        format!("{}M", hv.default_memory),
        "-smp".into(),
        format!(
            "{},maxcpus={}",
            hv.default_vcpus,
            hv.default_maxvcpus.max(hv.default_vcpus as u32)
        ),
        "-kernel".into(),
        hv.kernel.clone(),
        "-append".into(),
        spec.kernel_params(),
    ];
    if !hv.initrd.is_empty() {
        a.extend(["-initrd".into(), hv.initrd.clone()]);
    }
    if !hv.image.is_empty() {
        a.extend([
            "-drive".into(),
            format!(
                "id=rootfs,file={},format=raw,if=none,readonly=on",
                opt_path(Path::new(&hv.image))
            ),
            "-device".into(),
            "virtio-blk-device,drive=rootfs,id=virtio-blk0".into(),
        ]);
    }
    a.extend([
        "-object".into(),
        format!(
            "rng-random,id=objrng0,filename={}",
            opt_path(Path::new(&hv.entropy_source))
        ),
        "-device".into(),
        "virtio-rng-device,rng=objrng0,id=virtio-rng0".into(),
        "-serial".into(),
        format!("file:{}", spec.console_log().display()),
        "-pidfile".into(),
        spec.run_dir.join(files::PID_FILE).display().to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
    ]);
    if hv.enable_debug {
        a.extend([
            "-D".into(),
            spec.run_dir.join(files::VMM_LOG).display().to_string(),
        ]);
    }
    a
}

/// The arguments for `flavour`.
pub fn build_args(flavour: Flavour, spec: &VmSpec) -> Vec<String> {
    match flavour {
        Flavour::StratoVirt => stratovirt_args(spec),
        Flavour::Qemu => qemu_args(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "abc".into(),
            uuid: uuid_for("abc"),
            run_dir: PathBuf::from("/run/vc/abc"),
            hv: HypervisorConfig {
                kernel: "/k".into(),
                initrd: "/i".into(),
                default_vcpus: 2,
                default_maxvcpus: 4,
                default_memory: 512,
                kernel_params: "guest.exit=halt".into(),
                ..Default::default()
            },
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a.iter().position(|x| x == flag).unwrap();
        &a[i + 1]
    }

    #[test]
    fn stratovirt_shape() {
        let a = stratovirt_args(&spec());
        assert_eq!(after(&a, "-name"), "sandbox-abc");
        assert_eq!(after(&a, "-smp"), "2");
        assert_eq!(after(&a, "-m"), "512");
        assert_eq!(
            after(&a, "-qmp"),
            "unix:/run/vc/abc/qmp.socket,server,nowait"
        );
        assert_eq!(
            after(&a, "-machine"),
            "type=microvm,dump-guest-core=off,mem-share=on"
        );
        assert_eq!(after(&a, "-initrd"), "/i");
        assert_eq!(
            after(&a, "-object"),
            "rng-random,id=objrng0,filename=/dev/urandom"
        );
        assert_eq!(
            after(&a, "-device"),
            "virtio-rng-device,rng=objrng0,id=virtio-rng0"
        );
        assert!(after(&a, "-append").ends_with("guest.exit=halt"));
        assert!(a.contains(&"-disable-seccomp".to_string()));
    }

    #[test]
    fn qemu_shape() {
        let mut s = spec();
        s.hv.cpu_features = "-arch-capabilities".into();
        let a = qemu_args(&s);
        assert!(after(&a, "-machine").starts_with("microvm,accel=kvm"));
        assert_eq!(after(&a, "-cpu"), "host,pmu=off,-arch-capabilities");
        assert_eq!(after(&a, "-m"), "512M");
        assert_eq!(after(&a, "-smp"), "2,maxcpus=4");
        assert_eq!(
            after(&a, "-qmp"),
            "unix:/run/vc/abc/qmp.socket,server=on,wait=off"
        );
        assert!(a.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn commas_escaped_and_uuid_stable() {
        let mut s = spec();
        s.run_dir = PathBuf::from("/run/a,b");
        assert_eq!(
            after(&stratovirt_args(&s), "-qmp"),
            "unix:/run/a,,b/qmp.socket,server,nowait"
        );
        assert_eq!(uuid_for("x"), uuid_for("x"));
        assert_ne!(uuid_for("x"), uuid_for("y"));
        assert_eq!(uuid_for("x").len(), 36);
    }
}
