//! The VM's lifecycle as the control plane (QMP) sees it: the run status,
//! lifecycle requests answered by the VM's control loop, and the listener
//! that receives lifecycle events (STOP, RESUME, SHUTDOWN, …).

use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cpu::{VcpuControl, VcpuStopState};

/// Run status, with the names QMP's `query-status` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    /// Built, vCPUs not started yet (`-S`).
    Prelaunch,
    /// vCPUs running.
    Running,
    /// vCPUs stopped by `stop`.
    Paused,
    /// The VM has shut down; the process is exiting.
    Shutdown,
}

impl VmStatus {
    /// The QMP name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Prelaunch => "prelaunch",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Shutdown => "shutdown",
        }
    }
}

/// A lifecycle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Stop every vCPU (QMP `stop`).
    Stop,
    /// Resume the vCPUs (QMP `cont`).
    Cont,
    /// End the VM (QMP `quit`).
    Quit,
    /// Reset the machine (QMP `system_reset`).
    SystemReset,
    /// Ask the guest to power off (QMP `system_powerdown`).
    SystemPowerdown,
    /// Save a snapshot of the paused VM into this directory (QMP
    /// `migrate file:DIR`).
    Migrate(PathBuf),
}

/// Where the last snapshot is (QMP `query-migrate` status names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationStatus {
    /// Checked, about to start.
    Setup,
    /// Being written.
    Active,
    /// Written completely.
    Completed,
    /// Failed (the reason was the reply to `migrate`).
    Failed,
}

impl MigrationStatus {
    /// The QMP name.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
        }
    }
}

/// The last snapshot, for `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    /// How far it got.
    pub status: MigrationStatus,
    /// Milliseconds from start to end (0 while it runs).
    pub total_time_ms: u64,
    /// Guest RAM size in bytes.
    pub ram_total: u64,
    /// Bytes of guest RAM written (all-zero pages are not).
    pub ram_written: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A request travelling to the control loop with the channel for its answer.
#[derive(Debug)]
pub struct ControlCall {
    /// What is asked.
    pub request: ControlRequest,
    /// Where the answer goes: `Err` carries a one-line reason.
    pub reply: Sender<Result<(), String>>,
}

/// Receives lifecycle events (QMP event name and its `data`).
pub trait LifecycleListener: Send + Sync {
    /// Called from the control loop after the state change took effect.
    fn lifecycle_event(&self, name: &'static str, data: serde_json::Value);
}

/// A listener that drops every event (no control plane attached).
pub struct NoListener;

impl LifecycleListener for NoListener {
    fn lifecycle_event(&self, _: &'static str, _: serde_json::Value) {}
}

/// How long a vCPU query waits for the vCPU threads to be started.
const VCPU_START_WAIT: Duration = Duration::from_secs(10);

/// Facts the control plane reads without going through the control loop.
pub struct VmShared {
    status: Mutex<VmStatus>,
    /// The vCPUs, once their threads are started.
    vcpus: Mutex<Option<Vec<Arc<VcpuControl>>>>,
    vcpus_started: Condvar,
    /// The last snapshot (`migrate`), if any.
    migration: Mutex<Option<MigrationInfo>>,
    /// Number of vCPUs at boot.
    pub nr_vcpus: u8,
    /// Guest name.
    pub name: Option<String>,
    /// Guest UUID.
    pub uuid: Option<String>,
}

impl VmShared {
    /// Shared state for a VM with the given identity and vCPU count.
    pub fn new(name: Option<String>, uuid: Option<String>, nr_vcpus: u8) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(VmStatus::Prelaunch),
            vcpus: Mutex::new(None),
            vcpus_started: Condvar::new(),
            migration: Mutex::new(None),
            nr_vcpus,
            name,
            uuid,
        })
    }

    /// Current run status.
    pub fn status(&self) -> VmStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_status(&self, status: VmStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// The last snapshot's progress, if `migrate` was ever asked for.
    pub fn migration(&self) -> Option<MigrationInfo> {
        self.migration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_migration(&self, info: MigrationInfo) {
        *self.migration.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    pub(crate) fn set_vcpus(&self, vcpus: Vec<Arc<VcpuControl>>) {
        *self.vcpus.lock().unwrap_or_else(|p| p.into_inner()) = Some(vcpus);
        self.vcpus_started.notify_all();
    }

    /// The vCPUs. QMP serves before the vCPU threads exist, so a query that
    /// arrives first waits for them (bounded: empty if they never start).
    fn vcpu_controls(&self) -> Vec<Arc<VcpuControl>> {
        let guard = self.vcpus.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .vcpus_started
            .wait_timeout_while(guard, VCPU_START_WAIT, |v| v.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone().unwrap_or_default()
    }

    /// Host thread ids of the vCPU threads, by vCPU index (0 if unknown).
    pub fn vcpu_thread_ids(&self) -> Vec<i32> {
        self.vcpu_controls()
            .iter()
            .map(|c| c.wait_thread_id(Duration::from_secs(1)).unwrap_or(0))
            .collect()
    }
}

impl VmShared {
    /// What each vCPU was doing when it stopped, by vCPU index: `None` for
    /// a vCPU that runs (its registers cannot be read then).
    pub fn vcpu_stop_states(&self) -> Vec<Option<VcpuStopState>> {
        self.vcpu_controls()
            .iter()
            .map(|c| c.stopped_state())
            .collect()
    }
}

/// Sends `request` to the control loop through `post` and waits for the
/// answer (bounded, so a wedged loop cannot hang the caller).
pub fn call(
    post: impl FnOnce(ControlCall),
    request: ControlRequest,
    timeout: Duration,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    post(ControlCall { request, reply: tx });
    match rx.recv_timeout(timeout) {
        Ok(answer) => answer,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "the VM did not answer within {} s",
            timeout.as_secs()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the VM is shutting down".into()),
    }
}
