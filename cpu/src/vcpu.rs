//! One vCPU: creation and set-up, its thread, and the control block that
//! lets the machine pause, resume and stop it from another thread.
//!
//! Stopping a vCPU that sits in KVM_RUN works by "kicking" its thread with
//! a real-time signal whose handler does nothing: KVM_RUN returns EINTR,
//! the loop sees the new requested state and parks. Kicks repeat until the
//! vCPU acknowledges, so a signal that lands just before KVM_RUN is never
//! lost.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use address_space::Bus;
use boot_loader::BootInfo;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{kvm, CpuError};
use crate::state::{self, VcpuState};
use crate::{cpuid, lapic, msrs, regs};

/// KVM_SYSTEM_EVENT_SHUTDOWN.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// KVM_SYSTEM_EVENT_RESET.
const SYSTEM_EVENT_RESET: u32 = 2;
/// KVM_SYSTEM_EVENT_CRASH.
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Something a vCPU reports to the machine; after a terminal event the
/// vCPU thread ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked for a reset (KVM system event).
    Reset,
    /// The guest shut down: triple fault (KVM_EXIT_SHUTDOWN) or a shutdown
    /// system event.
    Shutdown(&'static str),
    /// The guest executed HLT with no in-kernel irqchip to wake it.
    Halted,
    /// KVM reported an error the vCPU cannot continue from.
    Error(String),
}

/// Receives the events vCPUs report (called on the vCPU thread).
pub trait VcpuEventSink: Send + Sync {
    /// vCPU `id` reports `event`.
    fn vcpu_event(&self, id: u8, event: VcpuEvent);
}

/// What the vCPU thread does after consulting its control block.
enum NextStep {
    Run,
    Reset,
    /// Read the whole state for a snapshot (these MSRs).
    Save(Vec<u32>),
    Exit,
}

/// Register state captured right after set-up, restored on reset.
struct InitialState {
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    fpu: kvm_bindings::kvm_fpu,
    lapic: kvm_bindings::kvm_lapic_state,
    mp_state: kvm_bindings::kvm_mp_state,
}

/// What a stopped vCPU was doing, read from KVM when it parked (registers
/// can only be read while the vCPU is outside KVM_RUN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuStopState {
    /// Linear address of the next instruction (RIP plus the CS base).
    pub pc: u64,
    /// The vCPU was waiting in HLT for an interrupt (KVM_MP_STATE_HALTED).
    pub halted: bool,
}

/// The state a vCPU is asked to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Run the guest.
    Running,
    /// Stay out of KVM_RUN until resumed.
    Paused,
    /// Leave the run loop and end the thread.
    Exiting,
}

struct ControlState {
    requested: VcpuRunState,
    /// A reset to the initial state is asked for (honoured while parked).
    reset_requested: bool,
    /// Host thread id of the vCPU thread, once it runs.
    tid: Option<i32>,
    /// True while the vCPU thread is outside KVM_RUN honouring `requested`.
    parked: bool,
    /// Read when the thread parked for a pause (or was reset while paused).
    stopped: Option<VcpuStopState>,
    /// A snapshot of the state is asked for (the MSRs to read).
    save_requested: Option<Vec<u32>>,
    /// The answer to `save_requested`.
    saved: Option<Result<VcpuState, String>>,
}

/// Shared control block between a vCPU thread and the machine.
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    /// A control block that starts in `initial`.
    pub fn new(initial: VcpuRunState) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ControlState {
                requested: initial,
                reset_requested: false,
                tid: None,
                parked: false,
                stopped: None,
                save_requested: None,
                saved: None,
            }),
            changed: Condvar::new(),
        })
    }

    /// Host thread id (as in /proc/PID/task) of the vCPU thread, once started.
    pub fn thread_id(&self) -> Option<i32> {
        self.lock().tid
    }

    fn set_thread_id(&self, tid: i32) {
        self.lock().tid = Some(tid);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until the thread id is known.
    pub fn wait_thread_id(&self, timeout: Duration) -> Option<i32> {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.tid.is_none())
            .unwrap_or_else(|p| p.into_inner());
        st.tid
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the vCPU was doing when it stopped: only while it is paused
    /// (a running vCPU's registers cannot be read), None otherwise or if
    /// KVM could not tell.
    pub fn stopped_state(&self) -> Option<VcpuStopState> {
        let st = self.lock();
        if st.parked && st.requested == VcpuRunState::Paused {
            st.stopped
        } else {
            None
        }
    }

    /// Blocks while paused; says what the vCPU thread must do next.
    /// `capture` reads the vCPU's state when it parks for a pause.
    fn wait_runnable(&self, capture: &mut dyn FnMut() -> Option<VcpuStopState>) -> NextStep {
        let mut st = self.lock();
        loop {
            if st.reset_requested && st.requested != VcpuRunState::Exiting {
                return NextStep::Reset;
            }
            if st.requested == VcpuRunState::Paused {
                if let Some(msrs) = st.save_requested.take() {
                    return NextStep::Save(msrs);
                }
            }
            match st.requested {
                VcpuRunState::Running => {
                    st.parked = false;
                    st.stopped = None;
                    return NextStep::Run;
                }
                VcpuRunState::Paused => {
                    if !st.parked || st.stopped.is_none() {
                        st.stopped = capture();
                    }
                    st.parked = true;
                    self.changed.notify_all();
                    st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                VcpuRunState::Exiting => {
                    st.parked = true;
                    self.changed.notify_all();
                    return NextStep::Exit;
                }
            }
        }
    }

    /// The reset is done; `stopped` is the vCPU's state after it.
    fn reset_done(&self, stopped: Option<VcpuStopState>) {
        let mut st = self.lock();
        st.reset_requested = false;
        st.stopped = stopped;
        self.changed.notify_all();
    }

    /// The state asked for by `save_and_wait` is read (or failed).
    fn save_done(&self, saved: Result<VcpuState, String>) {
        let mut st = self.lock();
        st.saved = Some(saved);
        self.changed.notify_all();
    }

    /// Asks a paused vCPU for its whole state and waits (up to `timeout`).
    fn save_and_wait(&self, msrs: Vec<u32>, timeout: Duration) -> Result<VcpuState, String> {
        let mut st = self.lock();
        if st.requested != VcpuRunState::Paused {
            return Err("the vCPU is not paused".into());
        }
        st.saved = None;
        st.save_requested = Some(msrs);
        self.changed.notify_all();
        let (mut st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.saved.is_none())
            .unwrap_or_else(|p| p.into_inner());
        st.save_requested = None;
        st.saved
            .take()
            .unwrap_or_else(|| Err("the vCPU did not answer".into()))
    }

    /// Asks a paused vCPU to return to its initial state and waits (up to
    /// `timeout`) until it has; false if it did not (e.g. its thread ended).
    fn reset_and_wait(&self, timeout: Duration) -> bool {
        let mut st = self.lock();
        st.reset_requested = true;
        self.changed.notify_all();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.reset_requested)
            .unwrap_or_else(|p| p.into_inner());
        !st.reset_requested
    }

    fn request(&self, state: VcpuRunState) {
        let mut st = self.lock();
        st.requested = state;
        if state == VcpuRunState::Running {
            st.parked = false;
        }
        self.changed.notify_all();
    }

    fn mark_finished(&self) {
        let mut st = self.lock();
        st.parked = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the thread to park; true if it did.
    fn wait_parked(&self, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| !s.parked)
            .unwrap_or_else(|p| p.into_inner());
        st.parked
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) kick handler; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), CpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(CpuError::Signal)
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    initial: InitialState,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    events: Arc<dyn VcpuEventSink>,
}

impl Vcpu {
    /// Creates vCPU `id` and sets up CPUID, MSRs, FPU and LAPIC; the boot
    /// vCPU (`boot` given) also gets its entry registers. Application
    /// processors stay in wait-for-SIPI, as on real hardware.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm_handle: &Kvm,
        vm: &VmFd,
        id: u8,
        nr_vcpus: u8,
        boot: Option<&BootInfo>,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        events: Arc<dyn VcpuEventSink>,
    ) -> Result<Self, CpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm(id, "KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm_handle
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm(id, "KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::adjust_cpuid(&mut cpuid, id, nr_vcpus);
        fd.set_cpuid2(&cpuid).map_err(kvm(id, "KVM_SET_CPUID2"))?;

        let entries = msrs::boot_msr_entries();
        let list = msrs::to_kvm_msrs(&entries).ok_or(CpuError::Fam {
            id,
            what: "MSR list",
        })?;
        let set = fd.set_msrs(&list).map_err(kvm(id, "KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(CpuError::Msrs {
                id,
                set,
                total: entries.len(),
                first_refused: entries.get(set).map(|e| e.0).unwrap_or(0),
            });
        }
        fd.set_fpu(&regs::boot_fpu())
            .map_err(kvm(id, "KVM_SET_FPU"))?;
        let mut lapic_state = fd.get_lapic().map_err(kvm(id, "KVM_GET_LAPIC"))?;
        lapic::set_lint(&mut lapic_state);
        fd.set_lapic(&lapic_state)
            .map_err(kvm(id, "KVM_SET_LAPIC"))?;

        if let Some(boot) = boot {
            let mut sregs = fd.get_sregs().map_err(kvm(id, "KVM_GET_SREGS"))?;
            regs::boot_sregs(boot, &mut sregs);
            fd.set_sregs(&sregs).map_err(kvm(id, "KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(boot))
                .map_err(kvm(id, "KVM_SET_REGS"))?;
        }
        let initial = InitialState {
            regs: fd.get_regs().map_err(kvm(id, "KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm(id, "KVM_GET_SREGS"))?,
            fpu: fd.get_fpu().map_err(kvm(id, "KVM_GET_FPU"))?,
            lapic: fd.get_lapic().map_err(kvm(id, "KVM_GET_LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(kvm(id, "KVM_GET_MP_STATE"))?,
        };
        Ok(Self {
            id,
            fd,
            initial,
            io_bus,
            mmio_bus,
            events,
        })
    }

    /// Puts the vCPU in a snapshot's state (before its thread starts).
    pub fn restore_state(&self, saved: &VcpuState) -> Result<(), CpuError> {
        state::apply(&self.fd, saved)
    }

    /// Starts the vCPU on its own thread, named `vcpu<N>`. The thread
    /// installs `filter` (a seccomp program) before its first KVM_RUN; if
    /// that fails the vCPU reports an error and never runs.
    pub fn start(
        self,
        control: Arc<VcpuControl>,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<VcpuHandle, CpuError> {
        let id = self.id;
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Some(filter) = filter {
                    if let Err(e) = seccompiler::apply_filter(&filter) {
                        self.events.vcpu_event(
                            id,
                            VcpuEvent::Error(format!("cannot install the seccomp filter: {e}")),
                        );
                        thread_control.mark_finished();
                        return;
                    }
                }
                self.run_loop(&thread_control)
            })
            .map_err(|source| CpuError::Spawn { id, source })?;
        Ok(VcpuHandle {
            id,
            thread: Some(thread),
            control,
        })
    }

    fn run_loop(mut self, control: &VcpuControl) {
        let id = self.id;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        control.set_thread_id(tid);
        log::debug!("vCPU {id} running on thread {tid}");
        loop {
            match control.wait_runnable(&mut || self.stop_state()) {
                NextStep::Run => {}
                NextStep::Exit => break,
                NextStep::Reset => {
                    if let Err(e) = self.restore_initial() {
                        log::error!("vCPU {id}: reset failed: {e}");
                    }
                    control.reset_done(self.stop_state());
                    continue;
                }
                NextStep::Save(msrs) => {
                    let saved = state::capture(&self.fd, id, &msrs).map_err(|e| e.to_string());
                    control.save_done(saved);
                    continue;
                }
            }
            if let Some(event) = self.run_once() {
                log::info!("vCPU {id}: {event:?}");
                self.events.vcpu_event(id, event);
                break;
            }
        }
        control.mark_finished();
    }

    /// Reads where the (parked) vCPU is and whether it waits in HLT.
    fn stop_state(&self) -> Option<VcpuStopState> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        let mp = self.fd.get_mp_state().ok()?;
        Some(VcpuStopState {
            pc: regs.rip.wrapping_add(sregs.cs.base),
            halted: mp.mp_state == kvm_bindings::KVM_MP_STATE_HALTED,
        })
    }

    /// Puts the vCPU back in the state it had before its first KVM_RUN
    /// (MSRs re-applied, registers, FPU, LAPIC and MP state restored).
    fn restore_initial(&mut self) -> Result<(), CpuError> {
        let id = self.id;
        let entries = msrs::boot_msr_entries();
        let list = msrs::to_kvm_msrs(&entries).ok_or(CpuError::Fam {
            id,
            what: "MSR list",
        })?;
        self.fd.set_msrs(&list).map_err(kvm(id, "KVM_SET_MSRS"))?;
        self.fd
            .set_lapic(&self.initial.lapic)
            .map_err(kvm(id, "KVM_SET_LAPIC"))?;
        self.fd
            .set_sregs(&self.initial.sregs)
            .map_err(kvm(id, "KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&self.initial.regs)
            .map_err(kvm(id, "KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&self.initial.fpu)
            .map_err(kvm(id, "KVM_SET_FPU"))?;
        self.fd
            .set_mp_state(self.initial.mp_state)
            .map_err(kvm(id, "KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// One KVM_RUN; returns a terminal event, or None to keep going.
    fn run_once(&mut self) -> Option<VcpuEvent> {
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !self.io_bus.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    if !self.io_bus.write(u64::from(port), data) {
                        log::trace!("unhandled port write {port:#x}");
                    }
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.mmio_bus.read(addr, data) {
                        data.fill(0);
                    }
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !self.mmio_bus.write(addr, data) {
                        log::trace!("unhandled MMIO write {addr:#x}");
                    }
                    None
                }
                VcpuExit::Hlt => Some(VcpuEvent::Halted),
                VcpuExit::Shutdown => Some(VcpuEvent::Shutdown("triple fault")),
                VcpuExit::SystemEvent(kind, _) => match kind {
                    SYSTEM_EVENT_RESET => Some(VcpuEvent::Reset),
                    SYSTEM_EVENT_SHUTDOWN => Some(VcpuEvent::Shutdown("guest shutdown")),
                    SYSTEM_EVENT_CRASH => Some(VcpuEvent::Shutdown("guest crash")),
                    other => {
                        log::warn!("vCPU {}: ignoring system event {other}", self.id);
                        None
                    }
                },
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                VcpuExit::FailEntry(reason, cpu) => Some(VcpuEvent::Error(format!(
                    "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
                ))),
                VcpuExit::InternalError => Some(VcpuEvent::Error(
                    "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate a guest instruction)".into(),
                )),
                other => Some(VcpuEvent::Error(format!("unexpected KVM exit {other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuEvent::Error(format!("KVM_RUN failed: {e}"))),
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: u8,
    thread: Option<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

impl VcpuHandle {
    /// vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The control block shared with the vCPU thread.
    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Sends kick signals until the vCPU parks (or its thread ends).
    fn kick_until_parked(&self) {
        loop {
            if self.finished() {
                return;
            }
            if let Some(t) = &self.thread {
                // SAFETY: the thread is alive (not yet joined); pthread_kill
                // on a live pthread_t with a handled signal is sound.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            }
            if self.control.wait_parked(Duration::from_millis(2)) {
                return;
            }
        }
    }

    /// Takes the vCPU out of KVM_RUN and keeps it out; returns once parked.
    pub fn pause(&self) {
        self.control.request(VcpuRunState::Paused);
        self.kick_until_parked();
    }

    /// Returns a paused vCPU to its initial (boot) state; false if the
    /// vCPU could not be reset (its thread has ended).
    pub fn reset(&self) -> bool {
        !self.finished() && self.control.reset_and_wait(Duration::from_secs(5))
    }

    /// The whole state of a paused vCPU, for a snapshot; `msrs` are the
    /// MSR indices to save. Read on the vCPU's thread (which owns it).
    pub fn save_state(&self, msrs: Vec<u32>) -> Result<VcpuState, String> {
        if self.finished() {
            return Err(format!("vCPU {}: its thread has ended", self.id));
        }
        self.control
            .save_and_wait(msrs, Duration::from_secs(5))
            .map_err(|e| format!("vCPU {}: {e}", self.id))
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) {
        self.control.request(VcpuRunState::Running);
    }

    /// Stops the vCPU and joins its thread.
    pub fn stop(&mut self) {
        self.control.request(VcpuRunState::Exiting);
        self.kick_until_parked();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("vCPU {} thread panicked", self.id);
            }
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
