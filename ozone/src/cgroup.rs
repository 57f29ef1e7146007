//! Cgroup limits (`-cgroup KEY=VALUE`, `-numa NODE`).
//!
//! Each key names a controller (`cpuset`, `memory`, `pids`). The jail's
//! cgroup is `<mount>/<exec file name>/<name>` in the hierarchy that offers
//! the controller, as StratoVirt's ozone lays it out: a cgroup v1 hierarchy
//! mounted with that controller if there is one, else the cgroup v2
//! hierarchy if its `cgroup.controllers` lists it. Keys are translated
//! between the versions (`memory.limit_in_bytes` ↔ `memory.max`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::OzoneError;

/// The keys `-cgroup` accepts.
pub const KEYS: [&str; 5] = [
    "cpuset.cpus",
    "cpuset.mems",
    "memory.limit_in_bytes",
    "memory.max",
    "pids.max",
];

/// One `-cgroup KEY=VALUE` (or `-numa NODE`, which is `cpuset.mems`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key as given (one of [`KEYS`]).
    pub key: String,
    /// The value as given.
    pub value: String,
}

impl Setting {
    /// Parses one `-cgroup` value: `KEY=VALUE`, or several joined with
    /// commas (`cpuset.cpus=0,1,pids.max=64`: a piece without `=` belongs
    /// to the value before it).
    pub fn parse_list(arg: &str) -> Result<Vec<Setting>, OzoneError> {
        let mut out: Vec<Setting> = Vec::new();
        for piece in arg.split(',') {
            match (piece.split_once('='), out.last_mut()) {
                (Some((k, v)), _) => out.push(Setting::new(k, v)?),
                (None, Some(last)) if !piece.is_empty() => {
                    last.value.push(',');
                    last.value.push_str(piece);
                }
                _ => {
                    return Err(OzoneError::usage(format!(
                        "-cgroup {arg}: expected KEY=VALUE with KEY one of {}",
                        KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(out)
    }

    fn new(key: &str, value: &str) -> Result<Setting, OzoneError> {
        if !KEYS.contains(&key) {
            return Err(OzoneError::usage(format!(
                "-cgroup {key}: unsupported key (supported: {})",
                KEYS.join(", ")
            )));
        }
        if value.is_empty() || value.contains(['\n', '/', '=']) {
            return Err(OzoneError::usage(format!(
                "-cgroup {key}={value}: bad value"
            )));
        }
        Ok(Setting {
            key: key.into(),
            value: value.into(),
        })
    }

    /// `-numa NODE`: `cpuset.mems=NODE`.
    pub fn numa(node: &str) -> Result<Setting, OzoneError> {
        if node.is_empty()
            || !node
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
        {
            return Err(OzoneError::usage(format!(
                "-numa: '{node}' is not a NUMA node (e.g. 0, or 0-1)"
            )));
        }
        Ok(Setting {
            key: "cpuset.mems".into(),
            value: node.into(),
        })
    }

    /// The controller the key belongs to.
    pub fn controller(&self) -> &str {
        self.key.split('.').next().unwrap_or("")
    }

    /// The file and value to write on a hierarchy of `version`.
    fn file_and_value(&self, version: Version) -> (&'static str, String) {
        let v = self.value.clone();
        match (self.key.as_str(), version) {
            ("memory.limit_in_bytes" | "memory.max", Version::V1) => (
                "memory.limit_in_bytes",
                if v == "max" { "-1".into() } else { v },
            ),
            ("memory.limit_in_bytes" | "memory.max", Version::V2) => {
                ("memory.max", if v == "-1" { "max".into() } else { v })
            }
            ("cpuset.cpus", _) => ("cpuset.cpus", v),
            ("cpuset.mems", _) => ("cpuset.mems", v),
            _ => ("pids.max", v),
        }
    }
}

/// Cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 hierarchy (one or more controllers per mount).
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mounts {
    /// v1 hierarchies: mount point and controllers (mount options).
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The v2 mount point, if any.
    pub v2: Option<PathBuf>,
}

impl Mounts {
    /// Parses the text of `/proc/self/mounts`.
    pub fn parse(text: &str) -> Mounts {
        let mut m = Mounts::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            // Spaces in mount points are escaped as \040.
            let point = PathBuf::from(f[1].replace("\\040", " "));
            match f[2] {
                "cgroup" => {
                    m.v1.push((point, f[3].split(',').map(String::from).collect()))
                }
                "cgroup2" if m.v2.is_none() => m.v2 = Some(point),
                _ => {}
            }
        }
        m
    }

    /// The hierarchies of this host.
    pub fn read() -> Result<Mounts, OzoneError> {
        fs::read_to_string("/proc/self/mounts")
            .map(|t| Mounts::parse(&t))
            .map_err(|e| OzoneError::host("cannot read", "/proc/self/mounts", e))
    }

    /// Where `controller` lives: a v1 hierarchy with it, else v2 if it
    /// offers it.
    pub fn locate(&self, controller: &str) -> Option<(Version, PathBuf)> {
        if let Some((p, _)) = self
            .v1
            .iter()
            .find(|(_, opts)| opts.iter().any(|o| o == controller))
        {
            return Some((Version::V1, p.clone()));
        }
        let v2 = self.v2.as_ref()?;
        let offered = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        offered
            .split_whitespace()
            .any(|c| c == controller)
            .then(|| (Version::V2, v2.clone()))
    }

    /// Every hierarchy's mount point.
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.v1.iter().map(|(p, _)| p).chain(self.v2.iter())
    }
}

/// One setting resolved to a hierarchy.
#[derive(Debug, Clone)]
struct Entry {
    setting: Setting,
    version: Version,
    mount: PathBuf,
}

/// The cgroups of one jail: where each setting goes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    entries: Vec<Entry>,
    exec: String,
    name: String,
}

/// Reads a cgroup file, trimmed; a missing file reads as empty.
fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// rmdir, retried while the kernel still reports the cgroup busy (its
/// last task is exiting). A missing directory is not an error.
fn rmdir_retry(dir: &Path) -> Result<(), OzoneError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(OzoneError::host("cannot remove cgroup", dir, e)),
        }
    }
}

impl Plan {
    /// Resolves `settings` for jail `name` of exec file `exec`.
    pub fn new(
        settings: &[Setting],
        mounts: &Mounts,
        exec: &str,
        name: &str,
    ) -> Result<Plan, OzoneError> {
        let mut entries = Vec::new();
        for s in settings {
            let (version, mount) =
                mounts
                    .locate(s.controller())
                    .ok_or_else(|| OzoneError::NoController {
                        key: s.key.clone(),
                        controller: s.controller().into(),
                    })?;
            entries.push(Entry {
                setting: s.clone(),
                version,
                mount,
            });
        }
        Ok(Plan {
            entries,
            exec: exec.into(),
            name: name.into(),
        })
    }

    /// The jail's cgroup directories (one per hierarchy used).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for e in &self.entries {
            let d = e.mount.join(&self.exec).join(&self.name);
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// Creates the cgroups and writes the settings.
    pub fn apply(&self) -> Result<(), OzoneError> {
        for e in &self.entries {
            let mid = e.mount.join(&self.exec);
            let leaf = mid.join(&self.name);
            let (file, value) = e.setting.file_and_value(e.version);
            let werr = |path: PathBuf| {
                move |source| OzoneError::CgroupWrite {
                    key: e.setting.key.clone(),
                    value: e.setting.value.clone(),
                    path,
                    source,
                }
            };
            let controller = e.setting.controller();
            for dir in [&mid, &leaf] {
                match fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(OzoneError::host("cannot create cgroup", dir, err)),
                }
                let parent = dir.parent().unwrap_or(&e.mount);
                match e.version {
                    // A new v1 cpuset is empty: no task may join until it
                    // has CPUs and memory nodes, so it starts with its
                    // parent's.
                    Version::V1 if controller == "cpuset" => {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            if read_trim(&dir.join(f)).is_empty() {
                                fs::write(dir.join(f), read_trim(&parent.join(f)))
                                    .map_err(werr(dir.join(f)))?;
                            }
                        }
                    }
                    // v2: the parent hands the controller down.
                    Version::V2 => {
                        let ctl = parent.join("cgroup.subtree_control");
                        if !read_trim(&ctl).split_whitespace().any(|c| c == controller) {
                            fs::write(&ctl, format!("+{controller}")).map_err(werr(ctl))?;
                        }
                    }
                    Version::V1 => {}
                }
            }
            fs::write(leaf.join(file), &value).map_err(werr(leaf.join(file)))?;
        }
        Ok(())
    }

    /// Moves process `pid` into the jail's cgroups.
    pub fn join(&self, pid: i32) -> Result<(), OzoneError> {
        for d in self.dirs() {
            let f = d.join("cgroup.procs");
            fs::write(&f, pid.to_string())
                .map_err(|e| OzoneError::host("cannot join cgroup", f, e))?;
        }
        Ok(())
    }

    /// Removes the jail's cgroups (they must be empty).
    pub fn remove(&self) -> Result<(), OzoneError> {
        self.dirs().iter().try_for_each(|d| rmdir_retry(d))
    }
}

/// Removes `<mount>/<exec>/<name>` from every hierarchy where it exists
/// (the clean-up invocation, which does not know the launch's settings);
/// returns the directories removed.
pub fn remove_everywhere(
    mounts: &Mounts,
    exec: &str,
    name: &str,
) -> Result<Vec<PathBuf>, OzoneError> {
    let mut removed = Vec::new();
    for m in mounts.all() {
        let d = m.join(exec).join(name);
        if d.is_dir() {
            rmdir_retry(&d)?;
            removed.push(d);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ozone-cg-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn settings_parse_with_commas_inside_values() {
        let s = Setting::parse_list("cpuset.cpus=0-1,3,memory.max=1G").unwrap();
        assert_eq!(s[0].value, "0-1,3");
        assert_eq!(s[1].key, "memory.max");
        assert!(Setting::parse_list("cpu.shares=2").is_err());
        assert!(Setting::parse_list("0,1").is_err());
        assert!(Setting::parse_list("pids.max=").is_err());
        assert!(Setting::parse_list("pids.max=../x").is_err());
        assert!(Setting::numa("0").is_ok());
        assert!(Setting::numa("zero").is_err());
    }

    #[test]
    fn keys_translate_between_versions() {
        let m = Setting::parse_list("memory.max=max").unwrap().remove(0);
        assert_eq!(
            m.file_and_value(Version::V1),
            ("memory.limit_in_bytes", "-1".into())
        );
        let m = Setting::parse_list("memory.limit_in_bytes=1048576")
            .unwrap()
            .remove(0);
        assert_eq!(
            m.file_and_value(Version::V2),
            ("memory.max", "1048576".into())
        );
        let p = Setting::parse_list("pids.max=64").unwrap().remove(0);
        assert_eq!(p.file_and_value(Version::V1), ("pids.max", "64".into()));
    }

    #[test]
    fn v1_preferred_and_cpu_comounts_found() {
        let m = Mounts::parse(MOUNTS);
        assert_eq!(m.v1.len(), 4);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.locate("cpuset"),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpuset")))
        );
        assert_eq!(
            m.locate("cpuacct"),
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")))
        );
        // "name=systemd" is not a controller called "systemd".
        assert_eq!(m.locate("systemd"), None);
    }

    #[test]
    fn v1_cpuset_inherits_then_sets() {
        let root = scratch("v1");
        fs::write(root.join("cpuset.cpus"), "0-3\n").unwrap();
        fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        let mounts = Mounts {
            v1: vec![(root.clone(), vec!["cpuset".into()])],
            v2: None,
        };
        let s = Setting::parse_list("cpuset.cpus=1").unwrap();
        let plan = Plan::new(&s, &mounts, "altovirt", "vm1").unwrap();
        plan.apply().unwrap();
        let leaf = root.join("altovirt/vm1");
        assert_eq!(plan.dirs(), std::slice::from_ref(&leaf));
        assert_eq!(read_trim(&root.join("altovirt/cpuset.cpus")), "0-3");
        assert_eq!(read_trim(&leaf.join("cpuset.mems")), "0");
        assert_eq!(read_trim(&leaf.join("cpuset.cpus")), "1");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn v2_enables_controllers_down_the_tree() {
        let root = scratch("v2");
        fs::write(root.join("cgroup.controllers"), "cpuset memory pids\n").unwrap();
        let mounts = Mounts {
            v1: vec![],
            v2: Some(root.clone()),
        };
        let s = Setting::parse_list("memory.limit_in_bytes=1048576").unwrap();
        let plan = Plan::new(&s, &mounts, "altovirt", "vm2").unwrap();
        plan.apply().unwrap();
        assert_eq!(read_trim(&root.join("cgroup.subtree_control")), "+memory");
        assert_eq!(
            read_trim(&root.join("altovirt/cgroup.subtree_control")),
            "+memory"
        );
        assert_eq!(read_trim(&root.join("altovirt/vm2/memory.max")), "1048576");
        // A controller v2 does not offer, with no v1 hierarchy: refused.
        let hugetlb = vec![Setting {
            key: "pids.max".into(),
            value: "1".into(),
        }];
        fs::write(root.join("cgroup.controllers"), "memory\n").unwrap();
        let e = Plan::new(&hugetlb, &mounts, "altovirt", "vm2").unwrap_err();
        assert!(e
            .to_string()
            .contains("-cgroup pids.max: the pids controller is not mounted"));
        let _ = fs::remove_dir_all(&root);
    }
}
