//! Wires the legacy devices onto the port-I/O bus and their interrupts to
//! KVM: COM1 (IRQ 4 through an irqfd), the i8042, the CMOS RTC, the
//! boot-complete port, the ACPI sleep registers.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use address_space::Bus;
use devices::acpi_sleep::AcpiSleep;
use devices::boot_complete::BootCompletePort;
use devices::cmos_rtc::CmosRtc;
use devices::i8042::I8042;
use devices::serial::{spawn_input_thread, SerialDevice};
use devices::{
    DeviceError, ACPI_SLEEP_PORT, BOOT_COMPLETE_PORT, CMOS_RTC_PORT, CMOS_RTC_PORT_LEN, COM1_IRQ,
    COM1_PORT, COM1_PORT_LEN, I8042_IRQ, I8042_PORT, I8042_PORT_LEN,
};
use kvm_ioctls::VmFd;
use machine_manager::config::SerialConfig;
use vmm_sys_util::eventfd::EventFd;

use crate::error::MachineError;
use crate::events::EventSender;

/// The legacy devices of a running VM.
pub struct LegacyDevices {
    serial: Option<Arc<Mutex<SerialDevice>>>,
    /// The stdin reader of `-serial stdio`, until it is started.
    pending_input: Option<PendingInput>,
    i8042: Arc<Mutex<I8042>>,
    rtc: Arc<Mutex<CmosRtc>>,
    boot_complete: Arc<Mutex<BootCompletePort>>,
}

/// What the serial input thread needs to start.
struct PendingInput {
    filter: Option<Arc<seccompiler::BpfProgram>>,
}

impl LegacyDevices {
    /// Creates the devices and registers them on `io_bus`.
    pub fn attach(
        vm: &VmFd,
        io_bus: &mut Bus,
        serial_cfg: &SerialConfig,
        events: EventSender,
        start: Instant,
        stdin_filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<Self, MachineError> {
        let bus_err = |what| move |source| MachineError::Bus { what, source };
        let serial = match serial_output(serial_cfg)? {
            Some(out) => {
                let (dev, irq) = SerialDevice::new(out)?;
                vm.register_irqfd(&irq, COM1_IRQ)
                    .map_err(|source| MachineError::Kvm {
                        what: "KVM_IRQFD (serial)",
                        source,
                    })?;
                // The irqfd holds its own reference; the device keeps the original.
                drop(irq);
                let dev = Arc::new(Mutex::new(dev));
                io_bus
                    .insert(COM1_PORT, COM1_PORT_LEN, dev.clone())
                    .map_err(bus_err("serial"))?;
                Some(dev)
            }
            None => None,
        };
        // The keyboard's IRQ 1, through an irqfd like COM1's.
        let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Kvm {
            what: "eventfd for IRQ 1 (i8042)",
            source: source.into(),
        })?;
        vm.register_irqfd(&kbd_irq, I8042_IRQ)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IRQFD (i8042)",
                source,
            })?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            Box::new(events.clone()),
            Some(kbd_irq),
        )));
        io_bus
            .insert(I8042_PORT, I8042_PORT_LEN, i8042.clone())
            .map_err(bus_err("i8042"))?;
        io_bus
            .insert(
                ACPI_SLEEP_PORT,
                1,
                Arc::new(Mutex::new(AcpiSleep::new(Box::new(events.clone())))),
            )
            .map_err(bus_err("ACPI sleep registers"))?;
        let rtc = Arc::new(Mutex::new(CmosRtc::new()));
        io_bus
            .insert(CMOS_RTC_PORT, CMOS_RTC_PORT_LEN, rtc.clone())
            .map_err(bus_err("CMOS RTC"))?;
        let boot_complete = Arc::new(Mutex::new(BootCompletePort::new(start)));
        io_bus
            .insert(BOOT_COMPLETE_PORT, 1, boot_complete.clone())
            .map_err(bus_err("boot-complete port"))?;
        // The thread reading stdin starts later (start_input): a snapshot
        // restored in between would replace the UART's receive FIFO and
        // lose what was typed meanwhile.
        let pending_input = (matches!(serial_cfg, SerialConfig::Stdio) && serial.is_some())
            .then_some(PendingInput {
                filter: stdin_filter,
            });
        Ok(Self {
            serial,
            pending_input,
            i8042,
            rtc,
            boot_complete,
        })
    }

    /// Starts feeding stdin to COM1 (`-serial stdio`), once the UART's
    /// state is final (after a snapshot's restore). Does nothing the
    /// second time or without a stdio console.
    pub fn start_input(&mut self) -> Result<(), MachineError> {
        if let (Some(input), Some(dev)) = (self.pending_input.take(), &self.serial) {
            spawn_input_thread(dev.clone(), Box::new(std::io::stdin()), input.filter)?;
        }
        Ok(())
    }

    /// COM1, if the VM has one (snapshots).
    pub(crate) fn serial(&self) -> Option<&Arc<Mutex<SerialDevice>>> {
        self.serial.as_ref()
    }

    /// The i8042 (snapshots).
    pub(crate) fn i8042(&self) -> &Arc<Mutex<I8042>> {
        &self.i8042
    }

    /// The CMOS RTC (snapshots).
    pub(crate) fn rtc(&self) -> &Arc<Mutex<CmosRtc>> {
        &self.rtc
    }

    /// Flushes guest console output.
    pub fn flush(&mut self) {
        if let Some(s) = &self.serial {
            s.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    /// Time from VMM start to the guest's boot-complete signal, if seen.
    pub fn boot_time(&self) -> Option<std::time::Duration> {
        self.boot_complete
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .boot_time()
    }
}

fn serial_output(cfg: &SerialConfig) -> Result<Option<Box<dyn Write + Send>>, MachineError> {
    Ok(match cfg {
        SerialConfig::Stdio => Some(Box::new(std::io::stdout())),
        SerialConfig::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|source| DeviceError::SerialFile {
                    path: path.display().to_string(),
                    source,
                })?;
            Some(Box::new(file))
        }
        SerialConfig::None => None,
    })
}
