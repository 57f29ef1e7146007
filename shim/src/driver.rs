//! The hypervisor driver: one VMM child process and its QMP socket.
//!
//! Lifecycle: [`Hypervisor::new`] (from a loaded configuration) →
//! [`Hypervisor::start`] (launch, wait for the socket with 50 ms retries,
//! greeting, negotiation) → [`Hypervisor::pause`] / [`Hypervisor::resume`]
//! → [`Hypervisor::thread_ids`] → [`Hypervisor::stop`] (quit, wait, SIGKILL
//! after a timeout, reap, remove the sockets). Both flavours share all of
//! this; only the command line differs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmdline::{build_args, files, uuid_for, VmSpec};
use crate::config::{Flavour, HypervisorConfig, LoadedConfig};
use crate::qmp_client::{QmpClient, QmpClientError};

/// Driver errors.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The run directory could not be prepared.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The VMM could not be launched.
    #[error("cannot launch {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The VMM exited while starting.
    #[error("the VMM exited during start-up ({status}); see {log}")]
    EarlyExit {
        /// Its exit status.
        status: ExitStatus,
        /// Where its output went.
        log: PathBuf,
    },
    /// The operation needs a running VM.
    #[error("the VM is not running")]
    NotRunning,
    /// The VM was already started.
    #[error("the VM is already started")]
    AlreadyStarted,
    /// A QMP failure.
    #[error(transparent)]
    Qmp(#[from] QmpClientError),
    /// Waiting for the child failed.
    #[error("waiting for the VMM: {0}")]
    Wait(io::Error),
    /// A QMP reply did not have the expected shape.
    #[error("unexpected reply to {command}: {reply}")]
    BadReply {
        /// The command.
        command: String,
        /// The reply.
        reply: String,
    },
}

/// How the driver talks QMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QmpMode {
    /// One connection kept for the VM's life.
    Persistent,
    /// A new connection (greeting, negotiation) for every operation, as Kata
    /// does.
    ReconnectPerOperation,
}

/// Timeouts of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the QMP socket after launch.
    pub start: Duration,
    /// Each QMP command.
    pub command: Duration,
    /// Waiting for the VMM to exit after `quit` before SIGKILL.
    pub stop: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            start: Duration::from_secs(10),
            command: Duration::from_secs(5),
            stop: Duration::from_secs(5),
        }
    }
}

/// What the driver supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Block device hotplug (not yet).
    pub block_device_hotplug: bool,
    /// Multiple queues.
    pub multi_queue: bool,
    /// Shared filesystem.
    pub fs_sharing: bool,
}

/// vCPU thread ids, by vCPU index.
pub type VcpuThreadIds = BTreeMap<u32, i32>;

/// A VM driven through its VMM's QMP socket.
#[derive(Debug)]
pub struct Hypervisor {
    flavour: Flavour,
    spec: VmSpec,
    mode: QmpMode,
    timeouts: Timeouts,
    child: Option<Child>,
    qmp: Option<QmpClient>,
}

impl Hypervisor {
    /// A driver for VM `id` from a loaded configuration; files go to
    /// `run_dir` (created on start).
    pub fn new(config: &LoadedConfig, id: &str, run_dir: &Path) -> Self {
        Self::with_hypervisor(config.flavour, config.hypervisor.clone(), id, run_dir)
    }

    /// A driver from a hypervisor section directly.
    pub fn with_hypervisor(
        flavour: Flavour,
        hv: HypervisorConfig,
        id: &str,
        run_dir: &Path,
    ) -> Self {
        Hypervisor {
            flavour,
            spec: VmSpec {
                id: id.into(),
                uuid: uuid_for(id),
                run_dir: run_dir.to_path_buf(),
                hv,
            },
            mode: QmpMode::Persistent,
            timeouts: Timeouts::default(),
            child: None,
            qmp: None,
        }
    }

    /// Sets the QMP mode.
    pub fn set_qmp_mode(&mut self, mode: QmpMode) {
        self.mode = mode;
    }

    /// Sets the timeouts.
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.timeouts = t;
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// The VM description (paths of the socket and logs).
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The VMM arguments `start` uses.
    pub fn args(&self) -> Vec<String> {
        build_args(self.flavour, &self.spec)
    }

    /// Launches the VMM and waits until QMP is negotiated.
    pub fn start(&mut self) -> Result<(), DriverError> {
        if self.child.is_some() {
            return Err(DriverError::AlreadyStarted);
        }
        let dir = &self.spec.run_dir;
        let rd = |source| DriverError::RunDir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(rd)?;
        let _ = fs::remove_file(self.spec.qmp_socket());
        let out = fs::File::create(dir.join("vmm.stderr")).map_err(rd)?;
        let err = out.try_clone().map_err(rd)?;
        let child = Command::new(&self.spec.hv.path)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| DriverError::Spawn {
                path: self.spec.hv.path.clone(),
                source,
            })?;
        log::info!("started {} pid {}", self.spec.hv.path, child.id());
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kill_and_reap();
                Err(e)
            }
        }
    }

    /// Waits for the socket (50 ms retries), the greeting and negotiation,
    /// noticing an early exit of the VMM.
    fn wait_ready(&mut self) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.timeouts.start;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait().map_err(DriverError::Wait)? {
                    self.child = None;
                    return Err(DriverError::EarlyExit {
                        status,
                        log: self.spec.run_dir.join("vmm.stderr"),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = QmpClient::connect(
                &self.spec.qmp_socket(),
                Duration::ZERO,
                self.timeouts
                    .command
                    .min(left.max(Duration::from_millis(1))),
            );
            match attempt {
                Ok(c) => {
                    if self.mode == QmpMode::Persistent {
                        self.qmp = Some(c);
                    }
                    return Ok(());
                }
                Err(e @ QmpClientError::Connect { .. }) if left.is_zero() => return Err(e.into()),
                Err(QmpClientError::Connect { .. }) => {
                    thread::sleep(crate::qmp_client::CONNECT_RETRY)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `f` with a QMP connection (the persistent one, or a new one).
    fn with_qmp<T>(
        &mut self,
        f: impl FnOnce(&mut QmpClient) -> Result<T, QmpClientError>,
    ) -> Result<T, DriverError> {
        if self.child.is_none() {
            return Err(DriverError::NotRunning);
        }
        if let Some(c) = self.qmp.as_mut() {
            return Ok(f(c)?);
        }
        let mut c = QmpClient::connect(
            &self.spec.qmp_socket(),
            self.timeouts.command,
            self.timeouts.command,
        )?;
        Ok(f(&mut c)?)
    }

    /// Runs one QMP command.
    pub fn qmp_execute(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, DriverError> {
        self.with_qmp(|c| c.execute(command, args))
    }

    /// `query-status`'s `status` (`running`, `paused`, ...).
    pub fn status(&mut self) -> Result<String, DriverError> {
        let r = self.qmp_execute("query-status", None)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(DriverError::BadReply {
                command: "query-status".into(),
                reply: r.to_string(),
            })
    }

    /// Pauses the vCPUs (`stop`).
    pub fn pause(&mut self) -> Result<(), DriverError> {
        self.qmp_execute("stop", None).map(|_| ())
    }

    /// Resumes the vCPUs (`cont`).
    pub fn resume(&mut self) -> Result<(), DriverError> {
        self.qmp_execute("cont", None).map(|_| ())
    }

    /// vCPU thread ids: `query-cpus-fast`, falling back to `query-cpus`.
    pub fn thread_ids(&mut self) -> Result<VcpuThreadIds, DriverError> {
        let (cmd, reply) = match self.qmp_execute("query-cpus-fast", None) {
            Ok(r) => ("query-cpus-fast", r),
            Err(DriverError::Qmp(QmpClientError::Command { class, .. }))
                if class == "CommandNotFound" =>
            {
                ("query-cpus", self.qmp_execute("query-cpus", None)?)
            }
            Err(e) => return Err(e),
        };
        let bad = || DriverError::BadReply {
            command: cmd.into(),
            reply: reply.to_string(),
        };
        let (idx_key, tid_key) = if cmd == "query-cpus-fast" {
            ("cpu-index", "thread-id")
        } else {
            ("CPU", "thread_id")
        };
        let mut out = VcpuThreadIds::new();
        for cpu in reply.as_array().ok_or_else(bad)? {
            let i = cpu.get(idx_key).and_then(Value::as_u64).ok_or_else(bad)?;
            let t = cpu.get(tid_key).and_then(Value::as_i64).ok_or_else(bad)?;
            out.insert(i as u32, t as i32);
        }
        Ok(out)
    }

    /// Checks the VMM answers (`query-status`).
    pub fn check(&mut self) -> Result<(), DriverError> {
        self.status().map(|_| ())
    }

    /// What this driver supports in this slice.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_device_hotplug: false,
            multi_queue: false,
            fs_sharing: false,
        }
    }

    /// The VMM's pid (empty when not running).
    pub fn pids(&self) -> Vec<u32> {
        self.child.iter().map(Child::id).collect()
    }

    /// Stops the VM: `quit`, wait up to the stop timeout, SIGKILL, reap,
    /// remove the socket and pid file. Returns the exit status (None if it
    /// was not running).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, DriverError> {
        if self.child.is_none() {
            return Ok(None);
        }
        if let Err(e) = self.qmp_execute("quit", None) {
            log::warn!("quit failed ({e}); the VMM will be killed");
        }
        self.qmp = None;
        let deadline = Instant::now() + self.timeouts.stop;
        let status = loop {
            let Some(c) = self.child.as_mut() else {
                return Ok(None);
            };
            if let Some(s) = c.try_wait().map_err(DriverError::Wait)? {
                self.child = None;
                break Some(s);
            }
            if Instant::now() >= deadline {
                log::warn!("VMM did not exit within {:?}; SIGKILL", self.timeouts.stop);
                break self.kill_and_reap();
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.cleanup();
        Ok(status)
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        self.qmp = None;
        let mut c = self.child.take()?;
        let _ = c.kill();
        let s = c.wait().ok();
        self.cleanup();
        s
    }

    fn cleanup(&self) {
        for f in [files::QMP_SOCKET, files::PID_FILE] {
            let _ = fs::remove_file(self.spec.run_dir.join(f));
        }
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
