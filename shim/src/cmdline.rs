//! Command-line builders: the StratoVirt flavour (altovirt, the shape Kata's
//! `stratovirt.go` builds) and the QEMU flavour (`qemu-system-x86_64 -M
//! microvm`, Kata's `qemu.go` reduced to what microvm supports).

use std::path::{Path, PathBuf};

use crate::config::{Flavour, HypervisorConfig, DEFAULT_NET_SLOTS};

/// File names inside a VM's run directory.
pub mod files {
    /// QMP socket.
    pub const QMP_SOCKET: &str = "qmp.socket";
    /// Serial console output.
    pub const CONSOLE_LOG: &str = "console.log";
    /// virtio-console socket (`-chardev socket` of the `virtconsole`).
    pub const CONSOLE_SOCKET: &str = "console.sock";
    /// Hybrid vsock socket (altovirt's `vsock-device uds-path`; the name
    /// Kata uses for Firecracker and Cloud Hypervisor).
    pub const HYBRID_VSOCK: &str = "kata.hvsock";
    /// vhost-user-fs socket (virtio-fs).
    pub const VIRTIO_FS_SOCKET: &str = "vhost-fs.sock";
    /// VMM debug log (`-D`).
    pub const VMM_LOG: &str = "vmm.log";
    /// pid file.
    pub const PID_FILE: &str = "pid";
}

/// The virtio-fs mount tag Kata's agent mounts.
pub const VIRTIO_FS_TAG: &str = "kataShared";

/// A network device created at boot on a tap descriptor the VMM inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNet {
    /// Device and netdev id (Kata uses the same for both).
    pub id: String,
    /// The tap descriptor (same number in the VMM).
    pub tap_fd: i32,
    /// Guest MAC address.
    pub mac: String,
}

/// Devices that need descriptors or sockets made by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootDevices {
    /// Taps, in order.
    pub net: Vec<BootNet>,
    /// `/dev/vhost-vsock` descriptor, when `vsock = "vhost"`.
    pub vhost_vsock_fd: Option<i32>,
}

/// What a VM is to the VM factory (docs/shim.md, "VM factory").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FactoryRole {
    /// An ordinary cold boot.
    #[default]
    None,
    /// The template VM `altovirt-shim factory init` boots and snapshots.
    Template,
    /// A sandbox restored from the template in this directory
    /// (`-incoming file:DIR`).
    FromTemplate(PathBuf),
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
    /// Boot devices with descriptors.
    pub devices: BootDevices,
    /// The jail directory when the VMM runs through the jailer
    /// (`jailer_path`): the VMM's files are there, under relative names.
    pub jail: Option<PathBuf>,
    /// Template VM, restored from one, or neither (altovirt only).
    pub factory: FactoryRole,
}

impl VmSpec {
    /// Where the VMM's sockets and logs are on the host: the jail
    /// directory, or the run directory.
    pub fn host_dir(&self) -> &Path {
        self.jail.as_deref().unwrap_or(&self.run_dir)
    }

    /// The path the VMM is given for its file `name`: relative (inside
    /// the jail, whose root is its working directory) or in the run
    /// directory.
    pub fn vmm_path(&self, name: &str) -> PathBuf {
        match self.jail {
            Some(_) => PathBuf::from(name),
            None => self.run_dir.join(name),
        }
    }

    /// The path the VMM is given for host file `host` (kernel, initrd,
    /// image): its name in the jail, or the path itself.
    pub fn vmm_file(&self, host: &str) -> String {
        match self.jail {
            Some(_) => crate::jail::in_jail(host),
            None => host.to_string(),
        }
    }

    /// The QMP socket path (on the host).
    pub fn qmp_socket(&self) -> PathBuf {
        self.host_dir().join(files::QMP_SOCKET)
    }

    /// The console log path (on the host).
    pub fn console_log(&self) -> PathBuf {
        self.host_dir().join(files::CONSOLE_LOG)
    }

    /// The virtio-console socket path (on the host).
    pub fn console_socket(&self) -> PathBuf {
        self.host_dir().join(files::CONSOLE_SOCKET)
    }

    /// The hybrid vsock socket path (when `vsock = "hybrid"`; on the host).
    pub fn hybrid_vsock(&self) -> PathBuf {
        self.host_dir().join(files::HYBRID_VSOCK)
    }

    /// The vhost-user-fs socket path (when `shared_fs = "virtio-fs"`).
    pub fn virtio_fs_socket(&self) -> PathBuf {
        self.run_dir.join(files::VIRTIO_FS_SOCKET)
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
    let (a, b) = (
        fnv(id, 0xcbf2_9ce4_8422_2325),
        fnv(id, 0x8422_2325_cbf2_9ce4),
    );
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// FNV-1a over `id` from `seed`.
fn fnv(id: &str, seed: u64) -> u64 {
    id.bytes().fold(seed, |a, b| {
        (a ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A locally administered unicast MAC derived from `id` (stable).
pub fn mac_for(id: &str) -> String {
    let h = fnv(id, 0xcbf2_9ce4_8422_2325).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h[0], h[1], h[2], h[3], h[4]
    )
}

/// How the two flavours spell the options the shared tail uses.
struct Style {
    /// Options of a listening `-chardev socket`.
    server: &'static str,
    /// `-drive` options of the read-only rootfs image, after `file=`.
    rootfs_drive: &'static str,
    /// Disk limits spelt `throttling.*` (QEMU) rather than `iops=`/`bps=`.
    qemu_throttle: bool,
    /// Taps take altovirt's transmit limits (QEMU has none for taps).
    tap_limits: bool,
}

const STRATOVIRT_STYLE: Style = Style {
    server: "server,nowait",
    rootfs_drive: "readonly=on,direct=off",
    qemu_throttle: false,
    tap_limits: true,
};

const QEMU_STYLE: Style = Style {
    server: "server=on,wait=off",
    rootfs_drive: "format=raw,if=none,readonly=on",
    qemu_throttle: true,
    tap_limits: false,
};

fn push(a: &mut Vec<String>, flag: &str, value: String) {
    a.push(flag.into());
    a.push(value);
}

/// The part both flavours share: initrd or rootfs image, entropy, the
/// virtio console, vsock, taps, the serial log and the pid file.
fn shared_tail(spec: &VmSpec, style: &Style, a: &mut Vec<String>) {
    let hv = &spec.hv;
    if !hv.initrd.is_empty() {
        push(a, "-initrd", spec.vmm_file(&hv.initrd));
    }
    if !hv.image.is_empty() {
        push(
            a,
            "-drive",
            format!(
                "id=rootfs,file={},{}{}",
                opt_path(Path::new(&spec.vmm_file(&hv.image))),
                style.rootfs_drive,
                crate::rate_limits::drive_options(hv, style.qemu_throttle)
            ),
        );
        push(
            a,
            "-device",
            "virtio-blk-device,drive=rootfs,id=virtio-blk0".into(),
        );
    }
    push(
        a,
        "-object",
        format!(
            "rng-random,id=objrng0,filename={}",
            opt_path(Path::new(&hv.entropy_source))
        ),
    );
    push(
        a,
        "-device",
        "virtio-rng-device,rng=objrng0,id=virtio-rng0".into(),
    );
    // Kata's console: a virtio-serial controller with one virtconsole on a
    // listening socket.
    push(
        a,
        "-device",
        "virtio-serial-device,id=virtio-serial0".into(),
    );
    push(
        a,
        "-chardev",
        format!(
            "socket,id=charconsole0,path={},{}",
            opt_path(&spec.vmm_path(files::CONSOLE_SOCKET)),
            style.server
        ),
    );
    push(
        a,
        "-device",
        "virtconsole,chardev=charconsole0,id=virtio-console0".into(),
    );
    match (hv.vsock.as_str(), spec.devices.vhost_vsock_fd) {
        ("vhost", Some(fd)) => push(
            a,
            "-device",
            format!(
                "vhost-vsock-device,id=vsock-{},guest-cid={},vhostfd={fd}",
                hv.guest_cid, hv.guest_cid
            ),
        ),
        ("hybrid", _) => push(
            a,
            "-device",
            format!(
                "vsock-device,id=vsock0,guest-cid={},uds-path={}",
                hv.guest_cid,
                opt_path(&spec.vmm_path(files::HYBRID_VSOCK))
            ),
        ),
        _ => {}
    }
    for n in &spec.devices.net {
        push(
            a,
            "-netdev",
            format!(
                "tap,id={},fds={}{}",
                n.id,
                n.tap_fd,
                if style.tap_limits {
                    crate::rate_limits::netdev_options(hv)
                } else {
                    String::new()
                }
            ),
        );
        push(
            a,
            "-device",
            format!("virtio-net-device,netdev={0},id={0},mac={1}", n.id, n.mac),
        );
    }
    if hv.reclaim_guest_freed_memory {
        // An empty balloon whose driver reports free memory: the VMM
        // discards it (madvise), so the sandbox shrinks by itself.
        push(
            a,
            "-device",
            "virtio-balloon-device,id=balloon0,free-page-reporting=on".into(),
        );
    }
    push(
        a,
        "-serial",
        format!("file:{}", spec.vmm_path(files::CONSOLE_LOG).display()),
    );
    push(
        a,
        "-pidfile",
        spec.vmm_path(files::PID_FILE).display().to_string(),
    );
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
        spec.vmm_file(&hv.kernel),
        "-append".into(),
        spec.kernel_params(),
        "-qmp".into(),
        format!(
            "unix:{},server,nowait",
            opt_path(&spec.vmm_path(files::QMP_SOCKET))
        ),
        "-D".into(),
        spec.vmm_path(files::VMM_LOG).display().to_string(),
        "-disable-seccomp".into(),
    ];
    let mut machine = String::from("type=microvm,dump-guest-core=off");
    // altovirt restores a snapshot into private memory only (the template
    // file mapped copy-on-write), so the template VM and its clones go
    // without mem-share (the factory refuses virtio-fs, which needs it).
    if spec.factory == FactoryRole::None {
        machine.push_str(",mem-share=on");
    }
    machine.push_str(&format!(",blk-slots={}", hv.blk_slots));
    // Only when it differs from altovirt's default, so that a VMM without
    // network hotplug still accepts the default configuration.
    if hv.net_slots != DEFAULT_NET_SLOTS {
        machine.push_str(&format!(",net-slots={}", hv.net_slots));
    }
    if !hv.machine_accelerators.is_empty() {
        machine.push(',');
        machine.push_str(&hv.machine_accelerators);
    }
    push(&mut a, "-machine", machine);
    shared_tail(spec, &STRATOVIRT_STYLE, &mut a);
    if hv.shared_fs == "virtio-fs" {
        // Kata's StratoVirt shape: the VMM listens, virtiofsd connects.
        push(
            &mut a,
            "-chardev",
            format!(
                "socket,id=virtio_fs,path={},server,nowait",
                opt_path(&spec.virtio_fs_socket())
            ),
        );
        push(
            &mut a,
            "-device",
            format!("vhost-user-fs-device,chardev=virtio_fs,tag={VIRTIO_FS_TAG},id=virtio-fs0"),
        );
    }
    if let FactoryRole::FromTemplate(dir) = &spec.factory {
        push(&mut a, "-incoming", format!("file:{}", dir.display()));
    }
    a
}

/// The QEMU-flavour arguments (for `qemu-system-x86_64 -M microvm`).
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let hv = &spec.hv;
    let virtio_fs = hv.shared_fs == "virtio-fs";
    let mut machine = String::from("microvm,accel=kvm,acpi=off,x-option-roms=off,rtc=off");
    if virtio_fs {
        // vhost-user needs guest memory the daemon can map.
        machine.push_str(",memory-backend=mem0");
    }
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
    shared_tail(spec, &QEMU_STYLE, &mut a);
    if virtio_fs {
        // Kata's qemu.go shape: QEMU connects to a running virtiofsd.
        push(
            &mut a,
            "-object",
            format!(
                "memory-backend-file,id=mem0,size={}M,mem-path=/dev/shm,share=on",
                hv.default_memory
            ),
        );
        push(
            &mut a,
            "-chardev",
            format!(
                "socket,id=virtio_fs,path={}",
                opt_path(&spec.virtio_fs_socket())
            ),
        );
        push(
            &mut a,
            "-device",
            format!(
                "vhost-user-fs-device,chardev=virtio_fs,tag={VIRTIO_FS_TAG},id=virtio-fs0,queue-size=1024"
            ),
        );
    }
    a.extend([
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
    ]);
    if hv.enable_debug {
        push(
            &mut a,
            "-D",
            spec.run_dir.join(files::VMM_LOG).display().to_string(),
        );
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
                vsock: "none".into(),
                ..Default::default()
            },
            devices: BootDevices::default(),
            jail: None,
            factory: FactoryRole::None,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> &'a str {
        let i = a.iter().position(|x| x == flag).unwrap();
        &a[i + 1]
    }

    /// Every value given with `flag`, in order.
    fn all<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
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
            "type=microvm,dump-guest-core=off,mem-share=on,blk-slots=4"
        );
        assert_eq!(after(&a, "-initrd"), "/i");
        assert_eq!(
            after(&a, "-object"),
            "rng-random,id=objrng0,filename=/dev/urandom"
        );
        assert_eq!(
            all(&a, "-device"),
            [
                "virtio-rng-device,rng=objrng0,id=virtio-rng0",
                "virtio-serial-device,id=virtio-serial0",
                "virtconsole,chardev=charconsole0,id=virtio-console0",
            ]
        );
        assert_eq!(
            all(&a, "-chardev"),
            ["socket,id=charconsole0,path=/run/vc/abc/console.sock,server,nowait"]
        );
        assert!(after(&a, "-append").ends_with("guest.exit=halt"));
        assert!(a.contains(&"-disable-seccomp".to_string()));
        assert_eq!(after(&a, "-serial"), "file:/run/vc/abc/console.log");
        assert_eq!(after(&a, "-pidfile"), "/run/vc/abc/pid");
        assert!(!a.iter().any(|x| x.contains("vhost-user-fs")));
    }

    #[test]
    fn factory_roles_drop_mem_share_and_restore_adds_incoming() {
        let mut s = spec();
        s.factory = FactoryRole::Template;
        let t = stratovirt_args(&s);
        assert_eq!(
            after(&t, "-machine"),
            "type=microvm,dump-guest-core=off,blk-slots=4"
        );
        assert!(!t.contains(&"-incoming".to_string()));
        s.factory = FactoryRole::FromTemplate("/run/vc/vm/template".into());
        let r = stratovirt_args(&s);
        assert_eq!(after(&r, "-incoming"), "file:/run/vc/vm/template");
        assert_eq!(&r[..r.len() - 2], &t[..]);
    }

    #[test]
    fn qemu_shape() {
        let mut s = spec();
        s.hv.cpu_features = "-arch-capabilities".into();
        let a = qemu_args(&s);
        assert!(after(&a, "-machine").starts_with("microvm,accel=kvm"));
        assert!(!after(&a, "-machine").contains("slots"));
        assert_eq!(after(&a, "-cpu"), "host,pmu=off,-arch-capabilities");
        assert_eq!(after(&a, "-m"), "512M");
        assert_eq!(after(&a, "-smp"), "2,maxcpus=4");
        assert_eq!(
            after(&a, "-qmp"),
            "unix:/run/vc/abc/qmp.socket,server=on,wait=off"
        );
        assert_eq!(
            all(&a, "-chardev"),
            ["socket,id=charconsole0,path=/run/vc/abc/console.sock,server=on,wait=off"]
        );
        assert!(a.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn both_flavours_share_the_tail() {
        // initrd → rng → console → vsock → net → serial → pidfile, in the
        // same words except the socket server options.
        let mut s = spec();
        s.hv.vsock = "vhost".into();
        s.devices.vhost_vsock_fd = Some(7);
        s.devices.net.push(BootNet {
            id: "eth0".into(),
            tap_fd: 9,
            mac: "02:00:00:00:00:01".into(),
        });
        let tail = |a: Vec<String>| {
            let i = a.iter().position(|x| x == "-initrd").unwrap();
            let j = a.iter().position(|x| x == "-pidfile").unwrap();
            a[i..j + 2]
                .join(" ")
                .replace("server=on,wait=off", "server,nowait")
        };
        let sv = tail(stratovirt_args(&s));
        assert_eq!(sv, tail(qemu_args(&s)));
        assert_eq!(
            sv,
            "-initrd /i -object rng-random,id=objrng0,filename=/dev/urandom \
             -device virtio-rng-device,rng=objrng0,id=virtio-rng0 \
             -device virtio-serial-device,id=virtio-serial0 \
             -chardev socket,id=charconsole0,path=/run/vc/abc/console.sock,server,nowait \
             -device virtconsole,chardev=charconsole0,id=virtio-console0 \
             -device vhost-vsock-device,id=vsock-3,guest-cid=3,vhostfd=7 \
             -netdev tap,id=eth0,fds=9 \
             -device virtio-net-device,netdev=eth0,id=eth0,mac=02:00:00:00:00:01 \
             -serial file:/run/vc/abc/console.log -pidfile /run/vc/abc/pid"
        );
    }

    #[test]
    fn hybrid_vsock_slots_and_rootfs_image() {
        let mut s = spec();
        s.hv.vsock = "hybrid".into();
        s.hv.guest_cid = 42;
        s.hv.blk_slots = 0;
        s.hv.net_slots = 3;
        s.hv.initrd.clear();
        s.hv.image = "/img,x".into();
        let a = stratovirt_args(&s);
        assert_eq!(
            after(&a, "-machine"),
            "type=microvm,dump-guest-core=off,mem-share=on,blk-slots=0,net-slots=3"
        );
        assert!(all(&a, "-device")
            .contains(&"vsock-device,id=vsock0,guest-cid=42,uds-path=/run/vc/abc/kata.hvsock"));
        assert_eq!(
            after(&a, "-drive"),
            "id=rootfs,file=/img,,x,readonly=on,direct=off"
        );
        let q = qemu_args(&s);
        assert_eq!(
            after(&q, "-drive"),
            "id=rootfs,file=/img,,x,format=raw,if=none,readonly=on"
        );
        // vhost without a descriptor yet (before start) adds nothing.
        s.hv.vsock = "vhost".into();
        assert!(!stratovirt_args(&s).iter().any(|x| x.contains("vsock")));
    }

    #[test]
    fn kata_rate_limits_reach_the_rootfs_drive_and_taps() {
        let mut s = spec();
        s.hv.image = "/img".into();
        s.hv.disk_rate_limiter_ops_max_rate = 300;
        s.hv.net_rate_limiter_bw_max_rate = 8000;
        s.devices.net.push(BootNet {
            id: "eth0".into(),
            tap_fd: 9,
            mac: "02:00:00:00:00:01".into(),
        });
        let a = stratovirt_args(&s);
        assert_eq!(
            after(&a, "-drive"),
            "id=rootfs,file=/img,readonly=on,direct=off,iops=300"
        );
        assert_eq!(
            after(&a, "-netdev"),
            "tap,id=eth0,fds=9,rx_bps=1000,tx_bps=1000"
        );
        let q = qemu_args(&s);
        assert!(after(&q, "-drive").ends_with(",throttling.iops-total=300"));
        assert_eq!(after(&q, "-netdev"), "tap,id=eth0,fds=9");
    }

    #[test]
    fn reclaim_guest_freed_memory_adds_a_reporting_balloon() {
        let mut s = spec();
        for a in [stratovirt_args(&s), qemu_args(&s)] {
            assert!(!a.iter().any(|x| x.contains("balloon")), "{a:?}");
        }
        s.hv.reclaim_guest_freed_memory = true;
        for a in [stratovirt_args(&s), qemu_args(&s)] {
            assert_eq!(
                all(&a, "-device").last().copied(),
                Some("virtio-balloon-device,id=balloon0,free-page-reporting=on"),
                "{a:?}"
            );
        }
    }

    #[test]
    fn virtio_fs_only_when_configured() {
        let mut s = spec();
        s.hv.shared_fs = "virtio-fs".into();
        let a = stratovirt_args(&s);
        assert_eq!(
            all(&a, "-chardev")[1],
            "socket,id=virtio_fs,path=/run/vc/abc/vhost-fs.sock,server,nowait"
        );
        assert_eq!(
            *all(&a, "-device").last().unwrap(),
            "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0"
        );
        let q = qemu_args(&s);
        assert!(after(&q, "-machine").contains(",memory-backend=mem0"));
        assert!(all(&q, "-object")
            .contains(&"memory-backend-file,id=mem0,size=512M,mem-path=/dev/shm,share=on"));
        assert!(all(&q, "-device").contains(
            &"vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0,queue-size=1024"
        ));
        s.hv.shared_fs = "none".into();
        assert!(!qemu_args(&s).iter().any(|x| x.contains("virtio_fs")));
    }

    #[test]
    fn jailed_paths_are_relative_and_host_paths_in_the_jail() {
        let mut s = spec();
        s.hv.vsock = "hybrid".into();
        s.hv.initrd = "/images/initrd.img".into();
        s.jail = Some(PathBuf::from("/srv/zozone/altovirt/abc"));
        let a = stratovirt_args(&s);
        assert_eq!(after(&a, "-kernel"), "k");
        assert_eq!(after(&a, "-initrd"), "initrd.img");
        assert_eq!(after(&a, "-qmp"), "unix:qmp.socket,server,nowait");
        assert_eq!(after(&a, "-D"), "vmm.log");
        assert_eq!(after(&a, "-serial"), "file:console.log");
        assert_eq!(after(&a, "-pidfile"), "pid");
        assert!(
            all(&a, "-device").contains(&"vsock-device,id=vsock0,guest-cid=3,uds-path=kata.hvsock")
        );
        assert_eq!(
            s.qmp_socket(),
            PathBuf::from("/srv/zozone/altovirt/abc/qmp.socket")
        );
        assert_eq!(
            s.hybrid_vsock(),
            PathBuf::from("/srv/zozone/altovirt/abc/kata.hvsock")
        );
    }

    #[test]
    fn commas_escaped_uuid_and_mac_stable() {
        let mut s = spec();
        s.run_dir = PathBuf::from("/run/a,b");
        assert_eq!(
            after(&stratovirt_args(&s), "-qmp"),
            "unix:/run/a,,b/qmp.socket,server,nowait"
        );
        assert_eq!(uuid_for("x"), uuid_for("x"));
        assert_ne!(uuid_for("x"), uuid_for("y"));
        assert_eq!(uuid_for("x").len(), 36);
        let m = mac_for("sb/eth0");
        assert_eq!(m, mac_for("sb/eth0"));
        assert_ne!(m, mac_for("sb/eth1"));
        assert!(m.starts_with("02:") && m.len() == 17, "{m}");
    }
}
