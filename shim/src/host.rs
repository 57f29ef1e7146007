//! Host checks (`altovirt-shim check`, like `kata-check`) and host facts
//! (`altovirt-shim env`).

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

/// `KVM_GET_API_VERSION` (`_IO(0xAE, 0x00)`).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// `KVM_CHECK_EXTENSION` (`_IO(0xAE, 0x03)`).
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
/// The only stable KVM API version.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities altovirt needs: name and `KVM_CAP_*` number.
pub const REQUIRED_CAPS: [(&str, libc::c_ulong); 7] = [
    ("IRQCHIP", 0),
    ("USER_MEMORY", 3),
    ("SET_TSS_ADDR", 4),
    ("IRQFD", 32),
    ("PIT2", 33),
    ("IOEVENTFD", 36),
    ("IMMEDIATE_EXIT", 136),
];

/// Required capabilities by name, with whether KVM supports each.
pub type CapList = Vec<(&'static str, bool)>;

/// Host check errors.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `/dev/kvm` could not be opened read-write.
    #[error("/dev/kvm is not readable and writable: {0}")]
    KvmOpen(std::io::Error),
    /// Wrong KVM API version.
    #[error("KVM API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
}

/// One line of the check report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckItem {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Whether a failure makes the host unusable.
    pub required: bool,
    /// Details or the reason of a failure.
    pub detail: String,
}

/// CPU facts from `/proc/cpuinfo`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CpuInfo {
    /// `vendor_id`.
    pub vendor: String,
    /// `model name`.
    pub model: String,
    /// `vmx` or `svm` present.
    pub hw_virt: bool,
    /// `hypervisor` flag present (this host is itself a guest).
    pub hypervisor_flag: bool,
    /// Logical CPUs.
    pub count: usize,
}

/// Parses `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut c = CpuInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => c.count += 1,
            "vendor_id" if c.vendor.is_empty() => c.vendor = v.into(),
            "model name" if c.model.is_empty() => c.model = v.into(),
            "flags" => {
                let f: Vec<&str> = v.split_whitespace().collect();
                c.hw_virt |= f.contains(&"vmx") || f.contains(&"svm");
                c.hypervisor_flag |= f.contains(&"hypervisor");
            }
            _ => {}
        }
    }
    c
}

/// Reads `/proc/cpuinfo`.
pub fn cpu_info() -> CpuInfo {
    parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// Opens `/dev/kvm` and reads the API version and the required
/// capabilities (`name`, supported).
pub fn kvm_probe() -> Result<(i32, CapList), HostError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(HostError::KvmOpen)?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a value.
    let ver = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if ver != KVM_API_VERSION {
        return Err(HostError::ApiVersion(ver));
    }
    let caps = REQUIRED_CAPS
        .iter()
        .map(|(n, cap)| {
            // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CHECK_EXTENSION as _, *cap) };
            (*n, r > 0)
        })
        .collect();
    Ok((ver, caps))
}

fn item(name: &str, ok: bool, required: bool, detail: impl Into<String>) -> CheckItem {
    CheckItem {
        name: name.into(),
        ok,
        required,
        detail: detail.into(),
    }
}

/// Describes how KVM is provided, honestly: bare metal, nested with
/// vmx/svm passed through, or a paravirtual/nested KVM (such as PVM) whose
/// CPU shows `hypervisor` but no vmx/svm.
pub fn virtualization_kind(cpu: &CpuInfo) -> &'static str {
    match (cpu.hw_virt, cpu.hypervisor_flag) {
        (true, false) => "bare metal with hardware virtualization (vmx/svm)",
        (true, true) => "nested: running under a hypervisor with vmx/svm exposed",
        (false, true) => "nested/paravirtual KVM (e.g. PVM): running under a hypervisor, no vmx/svm in /proc/cpuinfo",
        (false, false) => "no vmx/svm in /proc/cpuinfo and no hypervisor flag",
    }
}

/// Runs the static checks (no VM is booted).
pub fn static_checks() -> Vec<CheckItem> {
    let mut v = Vec::new();
    let cpu = cpu_info();
    v.push(item(
        "cpu",
        true,
        false,
        format!("{} ({}), {} CPUs", cpu.model, cpu.vendor, cpu.count),
    ));
    match kvm_probe() {
        Ok((ver, caps)) => {
            v.push(item("/dev/kvm", true, true, "readable and writable"));
            v.push(item("KVM API version", true, true, ver.to_string()));
            for (n, ok) in caps {
                let d = if ok { "supported" } else { "missing" };
                v.push(item(&format!("KVM_CAP_{n}"), ok, true, d));
            }
        }
        Err(e) => v.push(item("/dev/kvm", false, true, e.to_string())),
    }
    // KVM working without vmx/svm is fine: say what kind it is.
    v.push(item(
        "virtualization",
        true,
        false,
        virtualization_kind(&cpu),
    ));
    for (p, what) in [
        ("/dev/net/tun", "tap networking"),
        (
            "/dev/vhost-vsock",
            "kernel vhost-vsock (userspace vsock works without it)",
        ),
        ("/dev/vhost-net", "vhost-net"),
    ] {
        let ok = Path::new(p).exists();
        v.push(item(
            p,
            ok,
            false,
            if ok {
                format!("present ({what})")
            } else {
                format!("absent ({what})")
            },
        ));
    }
    v
}

/// Boots altovirt's built-in guest (`altovirt -serial none`), which resets
/// and makes altovirt exit 0.
pub fn boot_check(altovirt: &Path, timeout: Duration) -> CheckItem {
    let name = "boot built-in guest";
    let mut child = match Command::new(altovirt)
        .args(["-serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return item(
                name,
                false,
                true,
                format!("cannot run {}: {e}", altovirt.display()),
            )
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return item(name, true, true, "can create microVMs"),
            Ok(Some(s)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return item(
                    name,
                    false,
                    true,
                    format!("altovirt exited with {s}: {}", err.trim()),
                );
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return item(name, false, true, format!("no exit within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return item(name, false, true, format!("wait: {e}")),
        }
    }
}

/// Host facts for `env`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostFacts {
    /// `/proc/version`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os: String,
    /// CPU facts.
    pub cpu: CpuInfo,
    /// How virtualization is provided.
    pub virtualization: String,
    /// `MemTotal` in KiB.
    pub memory_kib: u64,
    /// `/dev/vhost-vsock` exists.
    pub vhost_vsock: bool,
    /// `/dev/vsock` exists.
    pub vsock: bool,
    /// Whether `/dev/kvm` opens read-write.
    pub kvm_usable: bool,
}

/// `PRETTY_NAME` (or `NAME`) of os-release text.
pub fn parse_os_release(text: &str) -> String {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim_matches('"').to_string())
    };
    get("PRETTY_NAME")
        .or_else(|| get("NAME"))
        .unwrap_or_default()
}

/// `MemTotal` in KiB from meminfo text.
pub fn parse_mem_total(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Gathers the host facts.
pub fn host_facts() -> HostFacts {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = cpu_info();
    HostFacts {
        kernel_version: read("/proc/version").trim().to_string(),
        os: parse_os_release(&read("/etc/os-release")),
        virtualization: virtualization_kind(&cpu).into(),
        cpu,
        memory_kib: parse_mem_total(&read("/proc/meminfo")),
        vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
        vsock: Path::new("/dev/vsock").exists(),
        kvm_usable: kvm_probe().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_nested_pvm() {
        let t = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: fpu hypervisor lm\n\nprocessor\t: 1\nflags\t\t: fpu hypervisor lm\n";
        let c = parse_cpuinfo(t);
        assert_eq!(
            (c.count, c.vendor.as_str(), c.model.as_str()),
            (2, "GenuineIntel", "Xeon")
        );
        assert!(c.hypervisor_flag && !c.hw_virt);
        assert!(virtualization_kind(&c).contains("nested/paravirtual"));
        let bare = parse_cpuinfo("flags : vmx lm\n");
        assert!(virtualization_kind(&bare).starts_with("bare metal"));
    }

    #[test]
    fn os_release_and_meminfo() {
        assert_eq!(
            parse_os_release("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n"),
            "Debian GNU/Linux 12"
        );
        assert_eq!(parse_os_release("NAME=Foo\n"), "Foo");
        assert_eq!(
            parse_mem_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            16384
        );
    }

    #[test]
    fn this_host_kvm() {
        // This host has a working /dev/kvm with every required capability.
        let (ver, caps) = kvm_probe().unwrap();
        assert_eq!(ver, KVM_API_VERSION);
        assert!(caps.iter().all(|(_, ok)| *ok), "{caps:?}");
    }
}
