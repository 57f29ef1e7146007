//! The jail directory on the host: `/srv/zozone/<exec file name>/<name>`,
//! holding the VMM binary and the `-source` files, and becoming the VMM's
//! root.
//!
//! Files are hard-linked when the jail's uid/gid may already use them
//! (execute the binary, read a source) and the link is possible (same file
//! system); the link shares the host file, whose owner and mode ozone never
//! changes. Otherwise they are copied: the binary as root's, mode 0755; a
//! source as the jail's uid/gid, mode 0600.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::args::Options;
use crate::error::OzoneError;

/// Where jails are made (StratoVirt's ozone uses the same layout).
pub const BASE: &str = "/srv/zozone";

/// Names inside the jail that ozone itself uses.
const RESERVED: [&str; 2] = ["dev", "proc"];

/// A jail directory.
#[derive(Debug, Clone)]
pub struct Jail {
    /// `/srv/zozone/<exec>/<name>`.
    pub dir: PathBuf,
    /// The exec file's name (its name inside the jail).
    pub exec_name: String,
}

/// A file checked for use in the jail.
#[derive(Debug, Clone)]
struct Input {
    /// The file (symbolic links resolved).
    path: PathBuf,
    /// Its name in the jail.
    name: String,
}

/// How a file was placed in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Hard link to the host file.
    Linked,
    /// Copy.
    Copied,
}

/// Whether `uid`/`gid` (without capabilities) have the permission `bits`
/// (4 read, 2 write, 1 execute) on a file with `meta`.
fn permitted(meta: &fs::Metadata, uid: u32, gid: u32, bits: u32) -> bool {
    let mode = meta.mode();
    let class = if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    };
    class & bits == bits
}

fn check_file(flag: &'static str, p: &Path) -> Result<Input, OzoneError> {
    let bad = |reason: String| OzoneError::BadPath {
        flag,
        path: p.to_path_buf(),
        reason,
    };
    let path = fs::canonicalize(p).map_err(|e| bad(e.to_string()))?;
    let meta = fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("has no usable file name".into()))?
        .to_string();
    Ok(Input { path, name })
}

impl Jail {
    /// The jail of `o` (nothing is created).
    pub fn of(o: &Options) -> Result<Jail, OzoneError> {
        let exec_name = o
            .exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| crate::args::check_name(n).is_ok())
            .ok_or_else(|| OzoneError::BadPath {
                flag: "-exec-file",
                path: o.exec_file.clone(),
                reason: "its file name must be of A-Z a-z 0-9 . _ -".into(),
            })?
            .to_string();
        Ok(Jail {
            dir: Path::new(BASE).join(&exec_name).join(&o.name),
            exec_name,
        })
    }

    /// The path inside the jail of the exec file.
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(&self.exec_name)
    }

    /// Checks the exec file and sources, then creates the directory and
    /// places them. Returns how each source was placed.
    pub fn create(&self, o: &Options) -> Result<Vec<(PathBuf, Placed)>, OzoneError> {
        let exec = check_file("-exec-file", &o.exec_file)?;
        let libs = crate::libs::needed(&exec.path)?;
        // First components the libraries occupy (lib, lib64, usr...).
        let lib_tops: Vec<String> = libs
            .iter()
            .filter_map(|l| l.components().nth(1))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut sources: Vec<Input> = Vec::new();
        for s in &o.sources {
            let i = check_file("-source", s)?;
            if i.name == self.exec_name
                || RESERVED.contains(&i.name.as_str())
                || lib_tops.contains(&i.name)
                || sources.iter().any(|x| x.name == i.name)
            {
                return Err(OzoneError::BadPath {
                    flag: "-source",
                    path: s.clone(),
                    reason: format!("the jail already has a file named '{}'", i.name),
                });
            }
            sources.push(i);
        }
        if let Some(n) = &o.netns {
            if let Err(e) = fs::metadata(n) {
                return Err(OzoneError::BadPath {
                    flag: "-netns",
                    path: n.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let parent = self.dir.parent().unwrap_or(Path::new(BASE));
        fs::create_dir_all(parent).map_err(|e| OzoneError::host("cannot create", parent, e))?;
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(OzoneError::JailExists {
                    name: o.name.clone(),
                    dir: self.dir.clone(),
                })
            }
            Err(e) => return Err(OzoneError::host("cannot create", &self.dir, e)),
        }
        let placed = self.fill(o, &exec, &libs, &sources);
        if placed.is_err() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        placed
    }

    fn fill(
        &self,
        o: &Options,
        exec: &Input,
        libs: &[PathBuf],
        sources: &[Input],
    ) -> Result<Vec<(PathBuf, Placed)>, OzoneError> {
        set_mode(&self.dir, 0o700)?;
        for d in RESERVED {
            let p = self.dir.join(d);
            fs::create_dir(&p).map_err(|e| OzoneError::host("cannot create", &p, e))?;
        }
        let target = self.dir.join(&self.exec_name);
        let meta =
            fs::metadata(&exec.path).map_err(|e| OzoneError::host("cannot stat", &exec.path, e))?;
        if !permitted(&meta, o.uid, o.gid, 1) || !link(&exec.path, &target)? {
            copy(&exec.path, &target)?;
            set_mode(&target, 0o755)?;
        }
        for lib in libs {
            self.place_library(lib)?;
        }
        let mut out = Vec::new();
        for s in sources {
            let target = self.dir.join(&s.name);
            let meta =
                fs::metadata(&s.path).map_err(|e| OzoneError::host("cannot stat", &s.path, e))?;
            let how = if permitted(&meta, o.uid, o.gid, 4) && link(&s.path, &target)? {
                Placed::Linked
            } else {
                copy(&s.path, &target)?;
                chown(&target, o.uid, o.gid)?;
                set_mode(&target, 0o600)?;
                Placed::Copied
            };
            out.push((s.path.clone(), how));
        }
        // The VMM owns its root directory (it creates its sockets there),
        // handed over only now: while root fills it, no other process of
        // that uid can plant links in it.
        chown(&self.dir, o.uid, o.gid)?;
        Ok(out)
    }

    /// Puts library `lib` (an absolute path) at the same path in the jail:
    /// a hard link to the file it resolves to, or a copy (mode 0755).
    fn place_library(&self, lib: &Path) -> Result<(), OzoneError> {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(OzoneError::host(
                "unusable library path",
                lib,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let target = self.dir.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| OzoneError::host("cannot create", parent, e))?;
        }
        let real = fs::canonicalize(lib).map_err(|e| OzoneError::host("cannot resolve", lib, e))?;
        if !link(&real, &target)? {
            copy(&real, &target)?;
            set_mode(&target, 0o755)?;
        }
        Ok(())
    }

    /// Removes the directory and everything in it (symbolic links the VMM
    /// may have made are removed, not followed). Returns whether it
    /// existed.
    pub fn remove(&self) -> Result<bool, OzoneError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(OzoneError::host("cannot remove", &self.dir, e)),
        }
    }

    /// A process whose root directory is this jail, if any. The jail's
    /// processes live in another mount namespace, where their root reads
    /// as `/`, so roots are compared by device and inode.
    pub fn user(&self) -> Option<i32> {
        let me = fs::metadata(&self.dir).ok()?;
        let entries = fs::read_dir("/proc").ok()?;
        entries.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let root = fs::metadata(e.path().join("root")).ok()?;
            (root.dev() == me.dev() && root.ino() == me.ino()).then_some(pid)
        })
    }
}

/// Hard-links `from` to `to`; false when that is impossible across file
/// systems or refused (then the caller copies).
fn link(from: &Path, to: &Path) -> Result<bool, OzoneError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::EPERM | libc::EMLINK)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(OzoneError::host("cannot link into the jail", from, e)),
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), OzoneError> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| OzoneError::host("cannot copy into the jail", from, e))
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), OzoneError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .map_err(|e| OzoneError::host("cannot chown", p, e))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), OzoneError> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| OzoneError::host("cannot chmod", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_classes() {
        let d = std::env::temp_dir().join(format!("ozone-perm-{}", std::process::id()));
        fs::write(&d, b"x").unwrap();
        let me = fs::metadata(&d).unwrap();
        let (u, g) = (me.uid(), me.gid());
        set_mode(&d, 0o640).unwrap();
        let m = fs::metadata(&d).unwrap();
        assert!(permitted(&m, u, g, 4) && permitted(&m, u, g, 2));
        assert!(permitted(&m, u + 1, g, 4) && !permitted(&m, u + 1, g, 2));
        assert!(!permitted(&m, u + 1, g + 1, 4));
        set_mode(&d, 0o751).unwrap();
        let m = fs::metadata(&d).unwrap();
        assert!(permitted(&m, u + 1, g + 1, 1) && !permitted(&m, u + 1, g + 1, 4));
        let _ = fs::remove_file(&d);
    }

    #[test]
    fn jail_path_from_exec_name() {
        let o = Options {
            name: "vm7".into(),
            exec_file: PathBuf::from("/usr/bin/altovirt"),
            ..Default::default()
        };
        let j = Jail::of(&o).unwrap();
        assert_eq!(j.dir, PathBuf::from("/srv/zozone/altovirt/vm7"));
        assert_eq!(j.exec_in_jail(), PathBuf::from("/altovirt"));
        let o = Options {
            exec_file: PathBuf::from("/"),
            ..o
        };
        assert_eq!(Jail::of(&o).unwrap_err().exit_code(), 2);
    }
}
