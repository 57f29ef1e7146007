//! Per-sandbox state shared by `altovirt-shim run` and the commands that
//! reach its VM later (`status`, `hotplug`, `metrics`, `stop`).
//!
//! `run` keeps everything of sandbox ID in `RUN_DIR/ID/` (default run
//! directory [`DEFAULT_RUN_DIR`]): the VMM's sockets and logs, and
//! `state.json` (flavour, hypervisor section, QMP socket, VMM and shim
//! pids, slot tables). Readers and writers of `state.json` hold an `flock`
//! on `state.lock`, so two `hotplug` commands cannot hand out one slot
//! twice. The block slot table is in any case rebuilt from the VMM's
//! `query-block` before it is used; the network one (no query exists)
//! relies on the lock.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Flavour, HypervisorConfig};
use crate::slots::SlotTable;

/// Default parent of the sandbox directories.
pub const DEFAULT_RUN_DIR: &str = "/run/altovirt-shim";

/// The state file in a sandbox directory.
pub const STATE_FILE: &str = "state.json";

/// The lock file in a sandbox directory.
pub const LOCK_FILE: &str = "state.lock";

/// Sandbox state errors.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The id cannot name a directory.
    #[error(
        "invalid sandbox id {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -"
    )]
    BadId(String),
    /// No such sandbox.
    #[error("no sandbox {id} in {dir} (is `altovirt-shim run --id {id}` running with the same --run-dir?)")]
    NotFound {
        /// The id.
        id: String,
        /// The run directory searched.
        dir: PathBuf,
    },
    /// Its VMM is gone but the state is still there.
    #[error("sandbox {id}: its VMM (pid {pid}) is not running; stale state in {dir}")]
    Stale {
        /// The id.
        id: String,
        /// The VMM pid recorded.
        pid: u32,
        /// The sandbox directory.
        dir: PathBuf,
    },
    /// It is running already.
    #[error("sandbox {id} is already running (altovirt-shim pid {pid})")]
    Running {
        /// The id.
        id: String,
        /// The `run` process.
        pid: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `state.json` is not valid.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

/// What another process needs to reach a sandbox's VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    /// Sandbox id.
    pub id: String,
    /// Which command-line flavour started it.
    pub flavour: Flavour,
    /// The hypervisor section it was started with.
    pub hypervisor: HypervisorConfig,
    /// The configuration file it came from.
    pub config_file: PathBuf,
    /// The sandbox directory (sockets, logs, this state).
    pub run_dir: PathBuf,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The VMM's pid.
    pub vmm_pid: u32,
    /// The `altovirt-shim run` process.
    pub shim_pid: u32,
    /// Block hotplug slots (rebuilt from `query-block` before use).
    pub blk_slots: SlotTable,
    /// Network hotplug slots.
    pub net_slots: SlotTable,
    /// The VM factory template it was restored from (none: cold boot).
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Seconds from launching the VMM to QMP negotiated.
    #[serde(default)]
    pub start_seconds: Option<f64>,
}

/// Checks that `id` is a plain file name.
pub fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::BadId(id.into()))
    }
}

/// `RUN_DIR/ID`, after checking the id.
pub fn sandbox_dir(run_dir: &Path, id: &str) -> Result<PathBuf, SandboxError> {
    check_id(id)?;
    Ok(run_dir.join(id))
}

/// Creates the sandbox directory (mode 0700; parents as needed).
pub fn create_dir(dir: &Path) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SandboxError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// An `flock` on a sandbox's lock file, released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

/// Locks the sandbox directory `dir`: shared for readers, exclusive for
/// writers. Blocks until the lock is free.
pub fn lock(dir: &Path, exclusive: bool) -> Result<StateLock, SandboxError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| SandboxError::Io {
        path: path.clone(),
        source,
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io(e));
        }
    }
    Ok(StateLock { _file: file })
}

/// Writes `state.json` atomically (temporary file, then rename).
pub fn save(dir: &Path, state: &SandboxState) -> Result<(), SandboxError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let io = |source| SandboxError::Io {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_string_pretty(state).map_err(|e| SandboxError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)
}

/// Reads `state.json` of sandbox `id` under `run_dir`.
pub fn load(run_dir: &Path, id: &str) -> Result<SandboxState, SandboxError> {
    let dir = sandbox_dir(run_dir, id)?;
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SandboxError::NotFound {
                id: id.into(),
                dir: run_dir.to_path_buf(),
            })
        }
        Err(source) => return Err(SandboxError::Io { path, source }),
    };
    serde_json::from_str(&text).map_err(|e| SandboxError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

/// Like [`load`], and also checks that the VMM still runs.
pub fn load_live(run_dir: &Path, id: &str) -> Result<SandboxState, SandboxError> {
    let s = load(run_dir, id)?;
    if !pid_alive(s.vmm_pid) {
        return Err(SandboxError::Stale {
            id: id.into(),
            pid: s.vmm_pid,
            dir: s.run_dir,
        });
    }
    Ok(s)
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "sb-1", "A.b_c", &"x".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(sandbox_dir(Path::new("/run/x"), "../etc").is_err());
    }

    #[test]
    fn save_load_lock_and_liveness() {
        let dir = std::env::temp_dir().join(format!("shim-state-{}", std::process::id()));
        let sb = dir.join("sb");
        create_dir(&sb).unwrap();
        let st = SandboxState {
            id: "sb".into(),
            flavour: Flavour::StratoVirt,
            hypervisor: HypervisorConfig::default(),
            config_file: "/c.toml".into(),
            run_dir: sb.clone(),
            qmp_socket: sb.join("qmp.socket"),
            vmm_pid: std::process::id(),
            shim_pid: std::process::id(),
            blk_slots: SlotTable::new("blk", 2),
            net_slots: SlotTable::new("net", 1),
            template: Some("/run/vc/vm/template".into()),
            start_seconds: Some(0.25),
        };
        {
            let _l = lock(&sb, true).unwrap();
            save(&sb, &st).unwrap();
        }
        let _r1 = lock(&sb, false).unwrap();
        let _r2 = lock(&sb, false).unwrap();
        assert_eq!(load_live(&dir, "sb").unwrap(), st);
        assert!(matches!(
            load(&dir, "nope"),
            Err(SandboxError::NotFound { .. })
        ));
        let mut dead = st.clone();
        dead.vmm_pid = u32::MAX - 1;
        save(&sb, &dead).unwrap();
        assert!(matches!(
            load_live(&dir, "sb"),
            Err(SandboxError::Stale { .. })
        ));
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        let _ = fs::remove_dir_all(&dir);
    }
}
