//! Events that end or affect the running VM, posted from vCPU threads,
//! devices and host-side threads to the machine's control loop.

use std::sync::mpsc::{self, Receiver, Sender};

use cpu::{VcpuEvent, VcpuEventSink};

use crate::control::ControlCall;
use devices::acpi_sleep::PowerOffNotifier;
use devices::i8042::ResetNotifier;

/// An event for the VM's control loop.
#[derive(Debug)]
pub enum VmEvent {
    /// A vCPU reported something.
    Vcpu(u8, VcpuEvent),
    /// The guest reset the machine through the i8042.
    GuestReset,
    /// The guest powered off through the ACPI sleep control register.
    GuestPowerOff,
    /// The host delivered a terminating signal.
    HostSignal(i32),
    /// A lifecycle request from the control plane.
    Control(ControlCall),
    /// The balloon driver changed `actual` (pages in the balloon).
    BalloonActual(u32),
}

/// Cloneable sender of [`VmEvent`]s.
#[derive(Clone)]
pub struct EventSender(Sender<VmEvent>);

impl EventSender {
    /// Posts an event; a closed loop (VM already stopping) is not an error.
    pub fn send(&self, event: VmEvent) {
        let _ = self.0.send(event);
    }
}

/// Creates the channel between event sources and the control loop.
pub fn channel() -> (EventSender, Receiver<VmEvent>) {
    let (tx, rx) = mpsc::channel();
    (EventSender(tx), rx)
}

impl VcpuEventSink for EventSender {
    fn vcpu_event(&self, id: u8, event: VcpuEvent) {
        self.send(VmEvent::Vcpu(id, event));
    }
}

impl ResetNotifier for EventSender {
    fn reset(&self) {
        self.send(VmEvent::GuestReset);
    }
}

impl PowerOffNotifier for EventSender {
    fn power_off(&self) {
        self.send(VmEvent::GuestPowerOff);
    }
}
