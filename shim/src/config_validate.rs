//! Validation of a merged [`Configuration`](crate::config::Configuration).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{
    ConfigError, Configuration, Flavour, LoadedConfig, MAX_HOTPLUG_SLOTS, MAX_VCPUS,
};

/// Matches `name` against a glob `pat` with `*` and `?`.
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Validates and normalizes `config` (loaded from `file` plus `drop_ins`;
/// `origin` maps dotted keys to the file that set them).
pub(crate) fn validate(
    file: &Path,
    drop_ins: Vec<PathBuf>,
    mut config: Configuration,
    origin: &BTreeMap<String, PathBuf>,
    select: Option<Flavour>,
) -> Result<LoadedConfig, ConfigError> {
    let err = |key: String, reason: String| ConfigError::Invalid {
        file: origin
            .get(&key)
            .cloned()
            .unwrap_or_else(|| file.to_path_buf()),
        key,
        reason,
    };
    if let Some(want) = select {
        let name = want.section();
        let Some(h) = config.hypervisor.remove(name) else {
            let names: Vec<&String> = config.hypervisor.keys().collect();
            return Err(err(
                format!("hypervisor.{name}"),
                format!("no [hypervisor.{name}] section (found {names:?})"),
            ));
        };
        config.hypervisor.clear();
        config.hypervisor.insert(name.to_string(), h);
    }
    if config.hypervisor.len() != 1 {
        let names: Vec<&String> = config.hypervisor.keys().collect();
        return Err(err(
            "hypervisor".into(),
            format!("exactly one [hypervisor.stratovirt] or [hypervisor.qemu] section is needed, found {names:?}"),
        ));
    }
    let Some((name, mut h)) = config.hypervisor.pop_first() else {
        return Err(err("hypervisor".into(), "no hypervisor section".into()));
    };
    let k = |f: &str| format!("hypervisor.{name}.{f}");
    let Some(flavour) = Flavour::from_section(&name) else {
        return Err(err(
            format!("hypervisor.{name}"),
            "unknown hypervisor; use stratovirt (altovirt) or qemu".into(),
        ));
    };
    if !h.path.starts_with('/') {
        return Err(err(
            k("path"),
            format!("must be an absolute path, got {:?}", h.path),
        ));
    }
    if !h.valid_hypervisor_paths.is_empty()
        && !h
            .valid_hypervisor_paths
            .iter()
            .any(|p| glob_match(p, &h.path))
    {
        return Err(err(
            k("path"),
            format!(
                "{} is not in valid_hypervisor_paths {:?}",
                h.path, h.valid_hypervisor_paths
            ),
        ));
    }
    if !Path::new(&h.path).is_file() {
        return Err(err(k("path"), format!("{} does not exist", h.path)));
    }
    if h.kernel.is_empty() {
        return Err(err(k("kernel"), "a guest kernel is required".into()));
    }
    if !Path::new(&h.kernel).is_file() {
        return Err(err(k("kernel"), format!("{} does not exist", h.kernel)));
    }
    if !h.initrd.is_empty() && !h.image.is_empty() {
        return Err(err(
            k("image"),
            "initrd and image cannot both be set".into(),
        ));
    }
    for (key, v) in [("initrd", &h.initrd), ("image", &h.image)] {
        if !v.is_empty() && !Path::new(v).is_file() {
            return Err(err(k(key), format!("{v} does not exist")));
        }
    }
    if h.machine_type != "microvm" {
        return Err(err(
            k("machine_type"),
            format!("{:?} is not supported; only microvm", h.machine_type),
        ));
    }
    if h.default_vcpus <= 0 {
        h.default_vcpus = 1;
    }
    if h.default_vcpus as u32 > MAX_VCPUS {
        return Err(err(
            k("default_vcpus"),
            format!("{} exceeds {MAX_VCPUS}", h.default_vcpus),
        ));
    }
    if h.default_maxvcpus == 0 {
        h.default_maxvcpus = host_cpus().clamp(1, MAX_VCPUS);
    }
    if h.default_maxvcpus > MAX_VCPUS {
        return Err(err(
            k("default_maxvcpus"),
            format!("{} exceeds {MAX_VCPUS}", h.default_maxvcpus),
        ));
    }
    if h.default_maxvcpus < h.default_vcpus as u32 {
        h.default_maxvcpus = h.default_vcpus as u32;
    }
    if h.default_memory < 16 {
        return Err(err(
            k("default_memory"),
            format!("{} MiB is below the 16 MiB minimum", h.default_memory),
        ));
    }
    if !matches!(h.block_device_driver.as_str(), "virtio-mmio" | "virtio-blk") {
        return Err(err(
            k("block_device_driver"),
            format!(
                "{:?} is not supported on microvm; use virtio-mmio or virtio-blk",
                h.block_device_driver
            ),
        ));
    }
    match h.shared_fs.as_str() {
        "virtio-fs" | "none" => {}
        "" => h.shared_fs = "none".into(),
        "virtio-9p" => {
            return Err(err(
                k("shared_fs"),
                "virtio-9p is not supported on microvm by altovirt-shim; use virtio-fs or none"
                    .into(),
            ))
        }
        other => {
            return Err(err(
                k("shared_fs"),
                format!("{other:?} is not virtio-fs, virtio-9p or none"),
            ))
        }
    }
    for (key, v) in [("blk_slots", h.blk_slots), ("net_slots", h.net_slots)] {
        if v > MAX_HOTPLUG_SLOTS {
            return Err(err(
                k(key),
                format!("{v} exceeds the {MAX_HOTPLUG_SLOTS} slots altovirt supports"),
            ));
        }
    }
    if h.vsock.is_empty() {
        h.vsock = match flavour {
            Flavour::StratoVirt => "hybrid".into(),
            Flavour::Qemu => "none".into(),
        };
    }
    match (h.vsock.as_str(), flavour) {
        ("vhost" | "none", _) | ("hybrid", Flavour::StratoVirt) => {}
        ("hybrid", Flavour::Qemu) => {
            return Err(err(
                k("vsock"),
                "QEMU has no hybrid (userspace) vsock; use vhost or none".into(),
            ))
        }
        (other, _) => {
            return Err(err(
                k("vsock"),
                format!("{other:?} is not vhost, hybrid or none"),
            ))
        }
    }
    if !(3..u32::MAX).contains(&h.guest_cid) {
        return Err(err(
            k("guest_cid"),
            format!("{} is reserved; use 3 or more", h.guest_cid),
        ));
    }
    if !h.jailer_path.is_empty() {
        crate::jail::validate(&h, flavour).map_err(|(key, reason)| err(k(key), reason))?;
    }
    if !h.entropy_source.starts_with('/') {
        return Err(err(
            k("entropy_source"),
            format!("must be an absolute path, got {:?}", h.entropy_source),
        ));
    }
    if !matches!(
        config.runtime.internetworking_model.as_str(),
        "tcfilter" | "macvtap" | "none"
    ) {
        return Err(err(
            "runtime.internetworking_model".into(),
            format!(
                "{:?} is not tcfilter, macvtap or none",
                config.runtime.internetworking_model
            ),
        ));
    }
    if let Some(a) = config.agent.keys().find(|a| a.as_str() != "kata") {
        return Err(err(format!("agent.{a}"), "only [agent.kata] exists".into()));
    }
    config.agent.entry("kata".into()).or_default();
    config.hypervisor.insert(name.clone(), h.clone());
    Ok(LoadedConfig {
        file: file.to_path_buf(),
        drop_ins,
        config,
        flavour,
        hypervisor_name: name,
        hypervisor: h,
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("/usr/bin/*", "/usr/bin/qemu"));
        assert!(glob_match(
            "/usr/bin/qemu-system-?86_64",
            "/usr/bin/qemu-system-x86_64"
        ));
        assert!(!glob_match("/usr/bin/*", "/opt/qemu"));
        assert!(glob_match("/a", "/a"));
    }
}
