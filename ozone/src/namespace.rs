//! The jailed process's own view, built in the child after the fork (it is
//! already PID 1 of a new PID namespace): new mount, IPC and UTS
//! namespaces, the `-netns` network namespace, a private `/dev` with only
//! the VM's device nodes, a fresh `/proc` of the new PID namespace, and
//! `pivot_root` into the jail directory.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::OzoneError;

/// A device node of the jail's `/dev`, made when the host has it.
struct Node {
    /// Path under `/dev`.
    name: &'static str,
    /// Mode in the jail.
    mode: libc::mode_t,
    /// Owned by the jail's uid/gid (else by root).
    owned: bool,
}

/// The nodes the VM may need: KVM, taps, entropy, vhost, and `/dev/null`.
const NODES: [Node; 6] = [
    Node {
        name: "kvm",
        mode: 0o600,
        owned: true,
    },
    Node {
        name: "net/tun",
        mode: 0o600,
        owned: true,
    },
    Node {
        name: "vhost-net",
        mode: 0o600,
        owned: true,
    },
    Node {
        name: "vhost-vsock",
        mode: 0o600,
        owned: true,
    },
    Node {
        name: "urandom",
        mode: 0o666,
        owned: false,
    },
    Node {
        name: "null",
        mode: 0o666,
        owned: false,
    },
];

fn cstr(p: &Path) -> Result<CString, OzoneError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        OzoneError::host(
            "path with a NUL byte",
            p,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), OzoneError> {
    let c = |s: Option<&str>| s.map(|s| CString::new(s).unwrap_or_default());
    let (src_c, fs_c, data_c) = (c(src), c(fstype), c(data));
    let t = cstr(target)?;
    let ptr = |o: &Option<CString>| o.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string or null.
    let rc = unsafe {
        libc::mount(
            ptr(&src_c),
            t.as_ptr(),
            ptr(&fs_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if rc != 0 {
        let what = format!(
            "mount {} on",
            fstype.or(src).unwrap_or("(propagation change)")
        );
        return Err(OzoneError::Sys {
            what: format!("{what} {}", target.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Enters new mount, IPC and UTS namespaces (hostname `hostname`) and the
/// network namespace at `netns`.
pub fn unshare(hostname: &str, netns: Option<&Path>) -> Result<(), OzoneError> {
    // SAFETY: unshare with namespace flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) } != 0 {
        return Err(OzoneError::last_os("unshare(mount, IPC, UTS namespaces)"));
    }
    let h = &hostname.as_bytes()[..hostname.len().min(64)];
    // SAFETY: h is a valid buffer of h.len() bytes.
    if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
        return Err(OzoneError::last_os("sethostname"));
    }
    if let Some(p) = netns {
        let f = fs::File::open(p).map_err(|e| OzoneError::host("-netns: cannot open", p, e))?;
        // SAFETY: setns on a descriptor we own.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(OzoneError::host(
                "-netns: cannot join",
                p,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Makes the jail's `/dev` (a small tmpfs) with the host's nodes of
/// [`NODES`] that exist, owned by `uid`/`gid` where the VMM opens them.
fn make_dev(dev: &Path, uid: u32, gid: u32) -> Result<(), OzoneError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=32"),
    )?;
    for n in NODES {
        let host = Path::new("/dev").join(n.name);
        let Ok(meta) = fs::metadata(&host) else {
            continue;
        };
        if !meta.file_type().is_char_device() {
            continue;
        }
        let path = dev.join(n.name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| OzoneError::host("cannot create", parent, e))?;
        }
        let c = cstr(&path)?;
        // SAFETY: c is NUL-terminated; a character device with the host's
        // device number.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, meta.rdev()) } != 0 {
            return Err(OzoneError::host(
                "mknod",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
        let (u, g) = if n.owned { (uid, gid) } else { (0, 0) };
        // SAFETY: chown/chmod of the node just made.
        if unsafe { libc::chown(c.as_ptr(), u, g) } != 0
            // SAFETY: as above.
            || unsafe { libc::chmod(c.as_ptr(), n.mode) } != 0
        {
            return Err(OzoneError::host(
                "cannot set owner and mode of",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Makes `jail` the root: a private bind mount of it (nosuid, nodev),
/// `/dev` and `/proc` inside, then `pivot_root`, detaching the host's tree.
pub fn pivot_into(jail: &Path, uid: u32, gid: u32) -> Result<(), OzoneError> {
    // Nothing done here may reach the host's mount table.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        jail.to_str(),
        jail,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    mount(
        None,
        jail,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    make_dev(&jail.join("dev"), uid, gid)?;
    // A proc of the new PID namespace: the VMM reads /proc/meminfo and sees
    // only the jail's own processes. Read-only.
    mount(
        Some("proc"),
        &jail.join("proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        None,
    )?;
    std::env::set_current_dir(jail).map_err(|e| OzoneError::host("cannot chdir to", jail, e))?;
    let dot = c".";
    // SAFETY: pivot_root(".", "."): the old root is stacked under the new
    // one and detached just below (pivot_root(2), NOTES).
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(OzoneError::host(
            "pivot_root into",
            jail,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: umount2 of the old root, now on ".".
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(OzoneError::last_os("detaching the host's root (umount2)"));
    }
    std::env::set_current_dir("/").map_err(|e| OzoneError::host("cannot chdir to", "/", e))?;
    Ok(())
}
