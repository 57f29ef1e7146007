//! The errors of altovirt-ozone. Each prints as one line naming the flag or
//! the path involved; [`OzoneError::exit_code`] tells usage errors (2) from
//! host failures (1).

use std::io;
use std::path::PathBuf;

/// Everything that can stop altovirt-ozone.
#[derive(Debug, thiserror::Error)]
pub enum OzoneError {
    /// The command line is wrong (unknown flag, missing or bad value).
    #[error("{0}")]
    Usage(String),
    /// A file named on the command line is unusable.
    #[error("{flag} {path}: {reason}")]
    BadPath {
        /// The flag that named it.
        flag: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Not running as root.
    #[error("must run as root (it creates namespaces, device nodes and cgroups); euid is {0}")]
    NotRoot(u32),
    /// The jail of this name exists already.
    #[error("-name {name}: jail directory {dir} already exists (a VM of that name runs, or it was not cleaned: run with -clean-resource and no '--')")]
    JailExists {
        /// The jail name.
        name: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// A jail cannot be cleaned while a process still runs in it.
    #[error("-clean-resource: jail {dir} is in use by pid {pid}; stop the VM first")]
    JailBusy {
        /// The jail directory.
        dir: PathBuf,
        /// A process whose root it is.
        pid: i32,
    },
    /// A `-cgroup` controller is mounted neither as v1 nor as v2.
    #[error("-cgroup {key}: the {controller} controller is not mounted (neither cgroup v1 nor cgroup v2 offers it)")]
    NoController {
        /// The key given.
        key: String,
        /// The controller it needs.
        controller: String,
    },
    /// Writing a cgroup file failed.
    #[error("-cgroup {key}={value}: cannot write {path}: {source}")]
    CgroupWrite {
        /// The key given.
        key: String,
        /// The value given.
        value: String,
        /// The file written.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file-system or system-call step failed on the host.
    #[error("{what} {path}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The path (or object) it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A system call without a path failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its purpose.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The jailed process reported a failure before it could exec.
    #[error("{0}")]
    Child(String),
}

impl OzoneError {
    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        OzoneError::Usage(msg.into())
    }

    /// A host step on `path` failed with `source`.
    pub fn host(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        OzoneError::Host {
            what,
            path: path.into(),
            source,
        }
    }

    /// A system call failed with the current `errno`.
    pub fn last_os(what: impl Into<String>) -> Self {
        OzoneError::Sys {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// The process exit status for this error: 2 for bad input (flags,
    /// paths, values the kernel rejects as invalid), 1 for host failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            OzoneError::Usage(_) | OzoneError::BadPath { .. } => 2,
            OzoneError::CgroupWrite { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ERANGE)) =>
            {
                2
            }
            _ => 1,
        }
    }
}
