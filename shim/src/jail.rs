//! Launching altovirt through its jailer, `altovirt-ozone`
//! (`jailer_path`, docs/ozone.md).
//!
//! The jail of sandbox ID is `/srv/zozone/<VMM file name>/ID`; it becomes
//! the VMM's root, so the VMM's own paths (sockets, logs, kernel, initrd,
//! image) are relative names there, and the driver reaches the sockets at
//! the jail directory on the host. The jailer stays the VMM's parent; the
//! VMM is PID 1 of its own PID namespace, so its pid and thread ids on the
//! host are looked up (`/proc/PID/task/*/status` `NSpid`). After the VM
//! ends the driver moves `console.log` and `vmm.log` to the run directory
//! and runs `altovirt-ozone -clean-resource` to remove the jail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cmdline::files;
use crate::config::{Flavour, HypervisorConfig};
use crate::config_validate::glob_match;

/// Where altovirt-ozone makes jails.
pub const JAIL_BASE: &str = "/srv/zozone";

fn file_name(p: &str) -> Option<&str> {
    Path::new(p).file_name().and_then(|n| n.to_str())
}

/// Checks the jailer keys of `h` (with a non-empty `jailer_path`); the
/// error is (key, reason).
pub(crate) fn validate(
    h: &HypervisorConfig,
    flavour: Flavour,
) -> Result<(), (&'static str, String)> {
    if flavour != Flavour::StratoVirt {
        return Err((
            "jailer_path",
            "only [hypervisor.stratovirt] (altovirt) can be launched through altovirt-ozone".into(),
        ));
    }
    if !h.jailer_path.starts_with('/') {
        return Err((
            "jailer_path",
            format!("must be an absolute path, got {:?}", h.jailer_path),
        ));
    }
    if !h.valid_jailer_paths.is_empty()
        && !h
            .valid_jailer_paths
            .iter()
            .any(|p| glob_match(p, &h.jailer_path))
    {
        return Err((
            "jailer_path",
            format!(
                "{} is not in valid_jailer_paths {:?}",
                h.jailer_path, h.valid_jailer_paths
            ),
        ));
    }
    if !Path::new(&h.jailer_path).is_file() {
        return Err(("jailer_path", format!("{} does not exist", h.jailer_path)));
    }
    if h.shared_fs == "virtio-fs" {
        return Err((
            "shared_fs",
            "virtio-fs is not supported with jailer_path (virtiofsd's socket is outside the jail)"
                .into(),
        ));
    }
    if h.entropy_source != "/dev/urandom" {
        return Err((
            "entropy_source",
            "must be /dev/urandom with jailer_path (the only entropy node in the jail)".into(),
        ));
    }
    for (key, id) in [("jailer_uid", h.jailer_uid), ("jailer_gid", h.jailer_gid)] {
        if id == u32::MAX {
            return Err((key, "4294967295 is not an id".into()));
        }
    }
    // The jail holds them side by side under their file names.
    let mut names: Vec<(&'static str, &str)> = Vec::new();
    for (key, v) in [
        ("path", &h.path),
        ("kernel", &h.kernel),
        ("initrd", &h.initrd),
        ("image", &h.image),
    ] {
        if v.is_empty() {
            continue;
        }
        let Some(n) = file_name(v) else {
            return Err((key, format!("{v} has no file name")));
        };
        if let Some((other, _)) = names.iter().find(|(_, m)| *m == n) {
            return Err((
                key,
                format!("has the same file name as {other} ({n}); the jail needs distinct names"),
            ));
        }
        names.push((key, n));
    }
    Ok(())
}

/// The jail directory of sandbox `id`, when `hv` has a jailer.
pub fn jail_dir(hv: &HypervisorConfig, id: &str) -> Option<PathBuf> {
    if hv.jailer_path.is_empty() {
        return None;
    }
    Some(
        Path::new(JAIL_BASE)
            .join(file_name(&hv.path).unwrap_or("altovirt"))
            .join(id),
    )
}

/// The path the jailed VMM uses for host file `p`: its file name (the
/// jail holds it under that name, in the VMM's working directory `/`).
pub fn in_jail(p: &str) -> String {
    file_name(p).unwrap_or(p).to_string()
}

/// The jailer's arguments: the jail flags, then `--` and `vmm_args`.
pub fn jailer_args(hv: &HypervisorConfig, id: &str, vmm_args: Vec<String>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-name".into(),
        id.into(),
        "-exec-file".into(),
        hv.path.clone(),
        "-uid".into(),
        hv.jailer_uid.to_string(),
        "-gid".into(),
        hv.jailer_gid.to_string(),
    ];
    for f in [&hv.kernel, &hv.initrd, &hv.image] {
        if !f.is_empty() {
            a.push("-source".into());
            a.push(f.clone());
        }
    }
    a.push("--".into());
    a.extend(vmm_args);
    a
}

/// Removes the jail of sandbox `id` (`altovirt-ozone -clean-resource`),
/// first moving the VMM's logs to `run_dir`. Returns the jailer's error
/// line on failure.
pub fn teardown(hv: &HypervisorConfig, id: &str, run_dir: &Path) -> Result<(), String> {
    let Some(dir) = jail_dir(hv, id) else {
        return Ok(());
    };
    for f in [files::CONSOLE_LOG, files::VMM_LOG] {
        let from = dir.join(f);
        if from.is_file() {
            let _ = fs::copy(&from, run_dir.join(f));
        }
    }
    let out = Command::new(&hv.jailer_path)
        .args(["-name", id, "-exec-file", &hv.path, "-clean-resource"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", hv.jailer_path))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The jailed VMM's host pid: the jailer's only child, once it runs the
/// VMM binary (before its exec the child is still the jailer's copy).
pub fn vmm_pid(jailer_pid: u32, vmm_path: &str) -> Option<u32> {
    let kids = fs::read_to_string(format!("/proc/{jailer_pid}/task/{jailer_pid}/children")).ok()?;
    let pid: u32 = kids.split_whitespace().next()?.parse().ok()?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = file_name(vmm_path)?;
    (exe.file_name()?.to_str()? == name).then_some(pid)
}

/// The host thread id of the thread of process `pid` whose id in its own
/// PID namespace is `ns_tid` (the last `NSpid` field).
pub fn host_tid(pid: u32, ns_tid: i32) -> Option<i32> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let status = fs::read_to_string(t.path().join("status")).ok()?;
        let ids: Vec<i32> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        (ids.last() == Some(&ns_tid)).then(|| ids.first().copied())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv() -> HypervisorConfig {
        HypervisorConfig {
            path: "/usr/bin/altovirt".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            jailer_path: "/usr/bin/altovirt-ozone".into(),
            ..Default::default()
        }
    }

    #[test]
    fn jailer_command_line() {
        let h = hv();
        assert_eq!(
            jail_dir(&h, "sb1"),
            Some(PathBuf::from("/srv/zozone/altovirt/sb1"))
        );
        let a = jailer_args(&h, "sb1", vec!["-kernel".into(), "vmlinux".into()]);
        assert_eq!(
            a.join(" "),
            "-name sb1 -exec-file /usr/bin/altovirt -uid 65534 -gid 65534 \
             -source /k/vmlinux -source /k/initrd.img -- -kernel vmlinux"
        );
        assert_eq!(in_jail("/k/vmlinux"), "vmlinux");
        let mut none = h.clone();
        none.jailer_path.clear();
        assert_eq!(jail_dir(&none, "sb1"), None);
    }

    #[test]
    fn validation() {
        let mut h = hv();
        h.jailer_path = "/bin/sh".into();
        assert!(validate(&h, Flavour::StratoVirt).is_ok());
        assert_eq!(validate(&h, Flavour::Qemu).unwrap_err().0, "jailer_path");
        let mut r = h.clone();
        r.jailer_path = "rel".into();
        assert!(validate(&r, Flavour::StratoVirt)
            .unwrap_err()
            .1
            .contains("absolute"));
        let mut v = h.clone();
        v.valid_jailer_paths = vec!["/opt/*".into()];
        assert!(validate(&v, Flavour::StratoVirt)
            .unwrap_err()
            .1
            .contains("valid_jailer_paths"));
        let mut f = h.clone();
        f.shared_fs = "virtio-fs".into();
        assert_eq!(
            validate(&f, Flavour::StratoVirt).unwrap_err().0,
            "shared_fs"
        );
        let mut e = h.clone();
        e.entropy_source = "/dev/random".into();
        assert_eq!(
            validate(&e, Flavour::StratoVirt).unwrap_err().0,
            "entropy_source"
        );
        let mut d = h.clone();
        d.initrd = "/other/vmlinux".into();
        let (key, why) = validate(&d, Flavour::StratoVirt).unwrap_err();
        assert_eq!(key, "initrd");
        assert!(why.contains("same file name as kernel"), "{why}");
    }

    #[test]
    fn own_thread_maps_to_itself() {
        // Outside any new PID namespace NSpid has one field, equal to the
        // host id.
        let me = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        assert_eq!(host_tid(me, tid), Some(tid));
        assert_eq!(host_tid(me, -5), None);
    }
}
