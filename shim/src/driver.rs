//! The hypervisor driver: one VMM child process and its QMP socket.
//!
//! Lifecycle: [`Hypervisor::new`] (from a loaded configuration) →
//! [`Hypervisor::start`] (launch, wait for the socket with 50 ms retries,
//! greeting, negotiation) → [`Hypervisor::pause`] / [`Hypervisor::resume`]
//! → hotplug (see [`crate::hotplug`]) → [`Hypervisor::thread_ids`] →
//! [`Hypervisor::stop`] (quit, wait, SIGKILL after a timeout, reap, remove
//! the sockets). Both flavours share all of this; only the command line
//! differs.
//!
//! A VMM started by another process (`altovirt-shim run`) is driven with
//! [`Hypervisor::attach`] from its saved [`SandboxState`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmdline::{
    build_args, files, mac_for, uuid_for, BootDevices, BootNet, FactoryRole, VmSpec,
};
use crate::config::{Flavour, HypervisorConfig, LoadedConfig};
use crate::qmp_client::{QmpClient, QmpClientError};
use crate::sandbox::SandboxState;
use crate::slots::{SlotEntry, SlotError, SlotTable};

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
    #[error("the VMM exited during start-up ({status}): {last_error} (see {log})")]
    EarlyExit {
        /// Its exit status.
        status: ExitStatus,
        /// Where its output went.
        log: PathBuf,
        /// The last line it printed.
        last_error: String,
    },
    /// A host device the configuration needs could not be opened.
    #[error("cannot open {path} (needed by {what}): {source}")]
    HostDevice {
        /// The device node.
        path: String,
        /// The configuration that needs it.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The operation is not supported: by the flavour (QEMU microvm has no
    /// hotplug; the VMM is not asked), or by this VMM build (it said so).
    #[error("{what} is not supported by {flavour}")]
    Unsupported {
        /// The flavour (or VMM build).
        flavour: String,
        /// The operation.
        what: String,
    },
    /// A hotplug slot problem (full, out of range, unknown device...).
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The operation is only possible before `start`.
    #[error("{0} must be configured before start")]
    Started(&'static str),
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
    /// The jailer failed (`jailer_path`).
    #[error("jailer: {0}")]
    Jailer(String),
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
    /// Each event wait (`DEVICE_DELETED` after `device_del`: Kata's own
    /// wait has no limit, ours does).
    pub event: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            start: Duration::from_secs(10),
            command: Duration::from_secs(5),
            stop: Duration::from_secs(5),
            event: Duration::from_secs(5),
        }
    }
}

/// What the driver supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Block device hotplug (altovirt, into `blk_slots`).
    pub block_device_hotplug: bool,
    /// Network device hotplug (altovirt, into `net_slots`; the VMM build
    /// must support it too, see [`Hypervisor::net_hotplug_supported`]).
    pub net_device_hotplug: bool,
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
    pub(crate) flavour: Flavour,
    pub(crate) spec: VmSpec,
    mode: QmpMode,
    pub(crate) timeouts: Timeouts,
    child: Option<Child>,
    /// The host pid of the jailed VMM (the jailer's child), when jailed.
    jailed_vmm: Option<u32>,
    /// The pid of a VMM another process started (see [`Hypervisor::attach`]).
    attached: Option<u32>,
    qmp: Option<QmpClient>,
    /// Descriptors the VMM inherits (taps, vhost-vsock), kept until stop.
    inherited: Vec<OwnedFd>,
    pub(crate) blk: SlotTable,
    pub(crate) net: SlotTable,
    /// Launch to QMP negotiated, of the last `start` (or from the state).
    started_in: Option<Duration>,
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
        let (nb, nn) = match flavour {
            Flavour::StratoVirt => (hv.blk_slots as usize, hv.net_slots as usize),
            Flavour::Qemu => (0, 0),
        };
        Hypervisor {
            flavour,
            spec: VmSpec {
                id: id.into(),
                uuid: uuid_for(id),
                run_dir: run_dir.to_path_buf(),
                jail: crate::jail::jail_dir(&hv, id),
                hv,
                devices: BootDevices::default(),
                factory: FactoryRole::None,
            },
            mode: QmpMode::Persistent,
            timeouts: Timeouts::default(),
            child: None,
            jailed_vmm: None,
            attached: None,
            qmp: None,
            inherited: Vec::new(),
            blk: SlotTable::new("blk", nb),
            net: SlotTable::new("net", nn),
            started_in: None,
        }
    }

    /// A driver for a VMM started by another process, from its saved
    /// state. It reconnects for every operation, as Kata does.
    pub fn attach(state: &SandboxState) -> Self {
        let mut h = Self::with_hypervisor(
            state.flavour,
            state.hypervisor.clone(),
            &state.id,
            &state.run_dir,
        );
        h.mode = QmpMode::ReconnectPerOperation;
        h.attached = Some(state.vmm_pid);
        h.blk = state.blk_slots.clone().with_kind("blk");
        h.net = state.net_slots.clone().with_kind("net");
        h.spec.factory = state
            .template
            .clone()
            .map_or(FactoryRole::None, FactoryRole::FromTemplate);
        h.started_in = state
            .start_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        h
    }

    /// The state another process needs to [`attach`](Self::attach).
    pub fn sandbox_state(&self, config_file: &Path, shim_pid: u32) -> SandboxState {
        SandboxState {
            id: self.spec.id.clone(),
            flavour: self.flavour,
            hypervisor: self.spec.hv.clone(),
            config_file: config_file.to_path_buf(),
            run_dir: self.spec.run_dir.clone(),
            qmp_socket: self.spec.qmp_socket(),
            vmm_pid: self.pids().first().copied().unwrap_or(0),
            shim_pid,
            blk_slots: self.blk.clone(),
            net_slots: self.net.clone(),
            template: match &self.spec.factory {
                FactoryRole::FromTemplate(dir) => Some(dir.clone()),
                _ => None,
            },
            start_seconds: self.started_in.map(|d| d.as_secs_f64()),
        }
    }

    /// Makes this VM the factory's template VM, or a clone of the template
    /// in `dir` (see [`FactoryRole`]); before `start` only.
    pub fn set_factory_role(&mut self, role: FactoryRole) -> Result<(), DriverError> {
        if self.is_running() {
            return Err(DriverError::Started("the factory role"));
        }
        self.spec.factory = role;
        Ok(())
    }

    /// How long the last `start` took from launch to QMP negotiated (for a
    /// clone of the template: the restore included).
    pub fn start_duration(&self) -> Option<Duration> {
        self.started_in
    }

    /// The block slot table.
    pub fn block_slots(&self) -> &SlotTable {
        &self.blk
    }

    /// The network slot table.
    pub fn net_slots(&self) -> &SlotTable {
        &self.net
    }

    /// Adds a network device on `tap` (an open tap descriptor the VMM
    /// inherits), created at boot: `-netdev tap,id=ID,fds=N -device
    /// virtio-net-device,netdev=ID,id=ID,mac=MAC`. `mac` defaults to one
    /// derived from the sandbox and device ids. On altovirt the boot NICs
    /// fill the network slots from 0 (as on StratoVirt's microVM), so the
    /// NIC takes the lowest free slot of the table; none left is an error.
    pub fn add_boot_net(
        &mut self,
        id: &str,
        tap: OwnedFd,
        mac: Option<&str>,
    ) -> Result<(), DriverError> {
        if self.child.is_some() || self.attached.is_some() {
            return Err(DriverError::Started("a boot network device"));
        }
        if !self.net.is_empty() {
            self.net.allocate(
                None,
                SlotEntry {
                    device: id.into(),
                    backend: id.into(),
                    source: format!("fd {}", tap.as_raw_fd()),
                },
            )?;
        }
        let mac = mac.map_or_else(|| mac_for(&format!("{}/{id}", self.spec.id)), String::from);
        self.spec.devices.net.push(BootNet {
            id: id.into(),
            tap_fd: tap.as_raw_fd(),
            mac,
        });
        self.inherited.push(tap);
        Ok(())
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
        for f in [
            self.spec.qmp_socket(),
            self.spec.console_socket(),
            self.spec.hybrid_vsock(),
        ] {
            let _ = fs::remove_file(f);
        }
        // The virtio-fs socket is not ours: virtiofsd listens on it before
        // the VMM starts (as in Kata), and the VMM connects to it.
        if self.spec.hv.vsock == "vhost" && self.spec.devices.vhost_vsock_fd.is_none() {
            // As Kata does: the shim opens /dev/vhost-vsock and the VMM
            // inherits the descriptor (vhostfd=N).
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/vhost-vsock")
                .map_err(|source| DriverError::HostDevice {
                    path: "/dev/vhost-vsock".into(),
                    what: "vsock = \"vhost\"".into(),
                    source,
                })?;
            let fd = OwnedFd::from(f);
            self.spec.devices.vhost_vsock_fd = Some(fd.as_raw_fd());
            self.inherited.push(fd);
        }
        let out = fs::File::create(dir.join("vmm.stderr")).map_err(rd)?;
        let err = out.try_clone().map_err(rd)?;
        let keep: Vec<i32> = self.inherited.iter().map(AsRawFd::as_raw_fd).collect();
        let (program, args) = if self.spec.jail.is_some() {
            // A jail left by a VMM that died with its jailer goes first.
            crate::jail::teardown(&self.spec.hv, &self.spec.id, dir)
                .map_err(DriverError::Jailer)?;
            let a = crate::jail::jailer_args(&self.spec.hv, &self.spec.id, self.args());
            (self.spec.hv.jailer_path.clone(), a)
        } else {
            (self.spec.hv.path.clone(), self.args())
        };
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal's ^C reaches the shim,
            // which stops the VM cleanly, not the VMM directly.
            .process_group(0);
        // SAFETY: the closure only calls fcntl, which is async-signal-safe,
        // on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| DriverError::Spawn {
            path: program.clone(),
            source,
        })?;
        log::info!("started {program} pid {}", child.id());
        let launched = Instant::now();
        let launcher = child.id();
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => {
                self.started_in = Some(launched.elapsed());
                if self.spec.jail.is_some() {
                    // QMP answers, so the VMM runs: the jailer's child.
                    self.jailed_vmm = crate::jail::vmm_pid(launcher, &self.spec.hv.path);
                }
                Ok(())
            }
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
                    let log = self.spec.run_dir.join("vmm.stderr");
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let last_error = text
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output")
                        .trim()
                        .to_string();
                    return Err(DriverError::EarlyExit {
                        status,
                        log,
                        last_error,
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

    /// True while the VMM is ours and running, or attached.
    pub fn is_running(&self) -> bool {
        self.child.is_some() || self.attached.is_some()
    }

    /// Notices a VMM that exited on its own: reaps it, cleans up and
    /// returns its status (None while it runs, or if it is not ours).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, DriverError> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        match c.try_wait().map_err(DriverError::Wait)? {
            Some(s) => {
                self.child = None;
                self.qmp = None;
                self.cleanup();
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }

    /// Runs `f` with a QMP connection (the persistent one, or a new one).
    /// A command or event error is returned as is; the caller maps it.
    pub(crate) fn with_qmp_raw<T>(
        &mut self,
        f: impl FnOnce(&mut QmpClient, &Timeouts) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        if !self.is_running() {
            return Err(DriverError::NotRunning);
        }
        let t = self.timeouts;
        if let Some(c) = self.qmp.as_mut() {
            return f(c, &t);
        }
        let mut c = QmpClient::connect(&self.spec.qmp_socket(), t.command, t.command)?;
        f(&mut c, &t)
    }

    /// Runs `f` with a QMP connection (the persistent one, or a new one).
    pub(crate) fn with_qmp<T>(
        &mut self,
        f: impl FnOnce(&mut QmpClient) -> Result<T, QmpClientError>,
    ) -> Result<T, DriverError> {
        self.with_qmp_raw(|c, _| Ok(f(c)?))
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
            let t = cpu.get(tid_key).and_then(Value::as_i64).ok_or_else(bad)? as i32;
            // A jailed VMM reports the ids of its own PID namespace.
            let t = match (self.spec.jail.is_some(), self.pids().first()) {
                (true, Some(&pid)) => crate::jail::host_tid(pid, t).unwrap_or(t),
                _ => t,
            };
            out.insert(i as u32, t);
        }
        Ok(out)
    }

    /// Checks the VMM answers (`query-status`).
    pub fn check(&mut self) -> Result<(), DriverError> {
        self.status().map(|_| ())
    }

    /// What this driver supports with this flavour and configuration.
    /// QEMU microvm has no hotplug at all; altovirt hotplugs into the slots
    /// it creates at boot. Shared filesystems need vhost-user-fs, which
    /// altovirt does not have yet.
    pub fn capabilities(&self) -> Capabilities {
        let alto = self.flavour == Flavour::StratoVirt;
        Capabilities {
            block_device_hotplug: alto && !self.blk.is_empty() && self.spec.jail.is_none(),
            net_device_hotplug: alto && !self.net.is_empty(),
            multi_queue: false,
            fs_sharing: self.spec.hv.shared_fs == "virtio-fs",
        }
    }

    /// The VMM's pid (empty when not running): the jailed VMM's host pid
    /// rather than its jailer's, when jailed.
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .iter()
            .map(|c| self.jailed_vmm.unwrap_or(c.id()))
            .chain(self.attached)
            .collect()
    }

    /// Stops the VM: `quit`, wait up to the stop timeout, SIGKILL, reap,
    /// remove the socket and pid file. Returns the exit status (None if it
    /// was not running).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, DriverError> {
        if let Some(pid) = self.attached {
            self.stop_attached(pid);
            return Ok(None);
        }
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

    /// Stops a VMM this process did not start: `quit`, wait for it to go
    /// (its parent reaps it), SIGKILL after the stop timeout.
    fn stop_attached(&mut self, pid: u32) {
        if let Err(e) = self.qmp_execute("quit", None) {
            log::warn!("quit failed ({e}); the VMM will be killed");
        }
        self.attached = None;
        let deadline = Instant::now() + self.timeouts.stop;
        while crate::sandbox::pid_alive(pid) {
            if Instant::now() >= deadline {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        self.qmp = None;
        let mut c = self.child.take()?;
        let _ = c.kill();
        let s = c.wait().ok();
        self.cleanup();
        s
    }

    fn cleanup(&mut self) {
        for f in [
            files::QMP_SOCKET,
            files::PID_FILE,
            files::CONSOLE_SOCKET,
            files::HYBRID_VSOCK,
        ] {
            let _ = fs::remove_file(self.spec.run_dir.join(f));
        }
        if self.spec.jail.is_some() {
            self.jailed_vmm = None;
            if let Err(e) = crate::jail::teardown(&self.spec.hv, &self.spec.id, &self.spec.run_dir)
            {
                log::warn!("cannot remove the jail of {}: {e}", self.spec.id);
            }
        }
        // The descriptors were for this VMM only.
        self.inherited.clear();
        self.spec.devices = BootDevices::default();
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
