//! Connects the QMP server to the VM: answers queries from the shared VM
//! state, sends lifecycle commands through the control loop (so they are
//! serialised with everything else the VM does), and forwards lifecycle
//! events to QMP clients.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use machine_manager::log_limit::LogStats;
use qmp::{EventEmitter, FdLookup, QmpCommand, QmpError, QmpHandler};
use serde_json::{json, Value};

use crate::balloon::BalloonHandle;
use crate::control::{self, ControlRequest, LifecycleListener, VmShared, VmStatus};
use crate::events::{EventSender, VmEvent};
use crate::hotplug::Hotplug;
use crate::kvm_checks;
use crate::qmp_convert::{
    balloon_target, blockdev_request, device_request, migrate_dir, no_balloon, query_balloon_reply,
    query_block_reply, query_migrate_reply, tap_request, throttle_limits, ClientFds,
};

/// How long a QMP command waits for the control loop.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `migrate` may take (writing guest RAM to the file).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

/// The VM as a QMP command handler.
pub struct VmQmpHandler {
    shared: Arc<VmShared>,
    sender: EventSender,
    hotplug: Arc<Mutex<Hotplug>>,
    events: EventEmitter,
    log_stats: Option<Arc<LogStats>>,
    balloon: Option<Arc<BalloonHandle>>,
}

impl VmQmpHandler {
    /// A handler for the VM with `shared` state, posting lifecycle requests
    /// through `sender`.
    pub fn new(
        shared: Arc<VmShared>,
        sender: EventSender,
        hotplug: Arc<Mutex<Hotplug>>,
        events: EventEmitter,
    ) -> Self {
        Self {
            shared,
            sender,
            hotplug,
            events,
            log_stats: None,
            balloon: None,
        }
    }

    /// Answers `balloon` and `query-balloon` with `balloon`; without one
    /// (None) both fail as QEMU's do without a balloon device.
    pub fn with_balloon(mut self, balloon: Option<Arc<BalloonHandle>>) -> Self {
        self.balloon = balloon;
        self
    }

    fn balloon(&self) -> Result<&BalloonHandle, QmpError> {
        self.balloon.as_deref().ok_or_else(no_balloon)
    }

    /// Answers `__io.altovirt_query-log-stats` from `stats` (the counts the
    /// process logger keeps); without it the command fails.
    pub fn with_log_stats(mut self, stats: Arc<LogStats>) -> Self {
        self.log_stats = Some(stats);
        self
    }

    /// `{"error": {"logged": N, "dropped": M}, "warn": …, …}`.
    fn query_log_stats(&self) -> Result<Value, QmpError> {
        let stats = self
            .log_stats
            .as_ref()
            .ok_or_else(|| QmpError::generic("no log statistics are kept"))?;
        let mut out = serde_json::Map::new();
        for (name, counts) in stats.snapshot() {
            out.insert(
                name.to_string(),
                json!({"logged": counts.logged, "dropped": counts.dropped}),
            );
        }
        Ok(Value::Object(out))
    }

    fn hotplug(&self) -> MutexGuard<'_, Hotplug> {
        self.hotplug.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn device_del(&self, id: &str) -> Result<Value, QmpError> {
        let path = self.hotplug().device_del(id)?;
        // Emitted now, delivered after the reply (the server orders them).
        self.events
            .emit("DEVICE_DELETED", json!({"device": id, "path": path}));
        Ok(json!({}))
    }

    fn control(&self, request: ControlRequest) -> Result<Value, QmpError> {
        self.control_within(request, CONTROL_TIMEOUT)
    }

    fn control_within(
        &self,
        request: ControlRequest,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let sender = self.sender.clone();
        control::call(move |c| sender.send(VmEvent::Control(c)), request, timeout)
            .map(|()| json!({}))
            .map_err(QmpError::generic)
    }

    fn cpu_props(index: usize) -> Value {
        json!({"core-id": index, "thread-id": 0, "socket-id": 0})
    }

    fn qom_path(index: usize) -> String {
        format!("/machine/unattached/device[{index}]")
    }

    fn query_cpus_fast(&self) -> Value {
        let cpus: Vec<Value> = self
            .shared
            .vcpu_thread_ids()
            .iter()
            .enumerate()
            .map(|(i, tid)| {
                json!({"cpu-index": i, "qom-path": Self::qom_path(i), "thread-id": tid,
                       "target": "x86_64", "props": Self::cpu_props(i)})
            })
            .collect();
        Value::Array(cpus)
    }

    /// The pre-6.0 `query-cpus`. `current` is true for vCPU 0, as in QEMU
    /// (the monitor's default CPU). `halted` and `pc` can only be read from
    /// a stopped vCPU: they are given while the VM is paused (`stop`, `-S`)
    /// and left out while it runs, rather than guessed.
    fn query_cpus(&self) -> Value {
        let tids = self.shared.vcpu_thread_ids();
        let stopped = self.shared.vcpu_stop_states();
        let cpus: Vec<Value> = tids
            .iter()
            .enumerate()
            .map(|(i, tid)| {
                let mut cpu = json!({"CPU": i, "current": i == 0, "qom_path": Self::qom_path(i),
                                     "thread_id": tid, "arch": "x86", "props": Self::cpu_props(i)});
                if let Some(Some(state)) = stopped.get(i) {
                    cpu["halted"] = json!(state.halted);
                    cpu["pc"] = json!(state.pc);
                }
                cpu
            })
            .collect();
        Value::Array(cpus)
    }

    /// `query-kvm`: `enabled` is true by construction (altovirt runs every
    /// VM on KVM and exits without it); `present` is whether `/dev/kvm` is
    /// the KVM device now.
    fn query_kvm() -> Value {
        json!({"enabled": true, "present": kvm_checks::kvm_device_present()})
    }
}

impl QmpHandler for VmQmpHandler {
    fn execute(&self, cmd: QmpCommand, fds: &mut dyn FdLookup) -> Result<Value, QmpError> {
        match cmd {
            QmpCommand::QueryStatus => {
                let status = self.shared.status();
                Ok(
                    json!({"running": status == VmStatus::Running, "singlestep": false,
                          "status": status.as_str()}),
                )
            }
            QmpCommand::Stop => self.control(ControlRequest::Stop),
            QmpCommand::Cont => self.control(ControlRequest::Cont),
            QmpCommand::Quit => self.control(ControlRequest::Quit),
            QmpCommand::SystemReset => self.control(ControlRequest::SystemReset),
            QmpCommand::SystemPowerdown => self.control(ControlRequest::SystemPowerdown),
            QmpCommand::QueryName => Ok(match &self.shared.name {
                Some(name) => json!({"name": name}),
                None => json!({}),
            }),
            QmpCommand::QueryUuid => Ok(json!({"UUID": self.shared.uuid.clone()
                .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into())})),
            QmpCommand::QueryKvm => Ok(Self::query_kvm()),
            QmpCommand::QueryCpus => Ok(self.query_cpus()),
            QmpCommand::QueryCpusFast => Ok(self.query_cpus_fast()),
            // As on QEMU's microvm: the vCPUs are fixed at boot.
            QmpCommand::QueryHotpluggableCpus => Err(QmpError::generic(
                "machine does not support hot-plugging CPUs",
            )),
            QmpCommand::BlockdevAdd(args) => {
                let request = blockdev_request(&args)?;
                self.hotplug().block.blockdev_add(&request)?;
                Ok(json!({}))
            }
            QmpCommand::BlockdevDel { node_name } => {
                self.hotplug().block.blockdev_del(&node_name)?;
                Ok(json!({}))
            }
            QmpCommand::DeviceAdd(args) => {
                self.hotplug().device_add(&device_request(&args))?;
                Ok(json!({}))
            }
            QmpCommand::DeviceDel { id } => self.device_del(&id),
            QmpCommand::NetdevAdd(args) => {
                self.hotplug()
                    .netdev_add(&tap_request(&args), &mut ClientFds(fds))?;
                Ok(json!({}))
            }
            QmpCommand::NetdevDel { id } => {
                self.hotplug().net.netdev_del(&id)?;
                Ok(json!({}))
            }
            QmpCommand::BlockSetIoThrottle(args) => {
                self.hotplug()
                    .block
                    .set_io_limits(&args.id, throttle_limits(&args))?;
                Ok(json!({}))
            }
            QmpCommand::QueryBlock => Ok(query_block_reply(&self.hotplug().block.query_block())),
            QmpCommand::QueryLogStats => self.query_log_stats(),
            QmpCommand::Balloon { value } => {
                let balloon = self.balloon()?;
                balloon.set_target(balloon_target(value)?);
                Ok(json!({}))
            }
            QmpCommand::QueryBalloon => Ok(query_balloon_reply(self.balloon()?.actual_bytes())),
            QmpCommand::Migrate { uri } => {
                let dir = migrate_dir(&uri)?;
                self.control_within(ControlRequest::Migrate(dir), MIGRATE_TIMEOUT)
            }
            QmpCommand::QueryMigrate => Ok(query_migrate_reply(self.shared.migration().as_ref())),
            other => Err(QmpError::not_supported(other.name())),
        }
    }
}

/// Lifecycle events go out to every negotiated QMP client.
pub struct QmpEvents(pub EventEmitter);

impl LifecycleListener for QmpEvents {
    fn lifecycle_event(&self, name: &'static str, data: Value) {
        self.0.emit(name, data);
    }
}
