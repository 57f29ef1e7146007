//! The ACPI power button behind QMP `system_powerdown`: a Generic Event
//! Device (`devices::acpi_ged`) on the MMIO bus whose interrupt is a KVM
//! irqfd on [`ACPI_GED_IRQ`], described in the DSDT with the `PNP0C0C`
//! button it notifies (`boot_loader::acpi`). Only a machine with ACPI
//! tables has it.

use std::sync::{Arc, Mutex};

use address_space::Bus;
use boot_loader::GedDesc;
use devices::acpi_ged::{AcpiGed, GED_MMIO_LEN};
use devices::{ACPI_GED_IRQ, ACPI_GED_MMIO_BASE};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::error::MachineError;

/// Why `system_powerdown` cannot reach the guest, or the button.
enum Button {
    /// The GED, shared with the MMIO bus.
    Ged(Arc<Mutex<AcpiGed>>),
    /// `-machine acpi=off`: no tables, so no button.
    NoAcpi,
    /// The tables and the GED exist, but the kernel command line says
    /// `acpi=off`: the guest ignores them (as Kata's guests do).
    GuestIgnoresAcpi(Arc<Mutex<AcpiGed>>),
}

/// The machine's power button, or the reason it has none.
pub struct PowerButton(Button);

/// Where the DSDT says the GED is: its register and interrupt.
pub fn ged_desc() -> GedDesc {
    GedDesc {
        base: ACPI_GED_MMIO_BASE,
        gsi: ACPI_GED_IRQ,
    }
}

impl PowerButton {
    /// Creates the GED on `mmio_bus` with its irqfd when the machine has
    /// ACPI tables (`acpi_tables`); `guest_acpi_off` tells that the kernel
    /// command line turns ACPI off.
    pub fn attach(
        vm: &VmFd,
        mmio_bus: &mut Bus,
        acpi_tables: bool,
        guest_acpi_off: bool,
    ) -> Result<Self, MachineError> {
        if !acpi_tables {
            return Ok(PowerButton(Button::NoAcpi));
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Kvm {
            what: "eventfd for the ACPI GED interrupt",
            source: source.into(),
        })?;
        vm.register_irqfd(&irq, ACPI_GED_IRQ)
            .map_err(|source| MachineError::Kvm {
                what: "KVM_IRQFD (ACPI GED)",
                source,
            })?;
        let ged = Arc::new(Mutex::new(AcpiGed::new(irq)));
        mmio_bus
            .insert(ACPI_GED_MMIO_BASE, GED_MMIO_LEN, ged.clone())
            .map_err(|source| MachineError::Bus {
                what: "ACPI GED",
                source,
            })?;
        Ok(PowerButton(if guest_acpi_off {
            Button::GuestIgnoresAcpi(ged)
        } else {
            Button::Ged(ged)
        }))
    }

    /// Presses the button (QMP `system_powerdown`); the error is the
    /// one-line reason for the QMP client when there is no button the
    /// guest would see.
    pub fn press(&self) -> Result<(), String> {
        match &self.0 {
            Button::Ged(ged) => {
                let mut ged = ged.lock().unwrap_or_else(|p| p.into_inner());
                ged.press_power_button().map_err(|e| {
                    format!("system_powerdown: cannot raise the ACPI GED interrupt: {e}")
                })?;
                log::info!("ACPI power button pressed (events {:#x})", ged.pending());
                Ok(())
            }
            Button::NoAcpi => Err("system_powerdown: this VM has no ACPI power button \
                 (-machine acpi=off); use quit, or have the guest power off"
                .into()),
            Button::GuestIgnoresAcpi(_) => Err("system_powerdown: the guest kernel was \
                 started with acpi=off and ignores the ACPI power button; use quit, or have \
                 the guest power off"
                .into()),
        }
    }

    /// Machine reset: no event stays pending.
    pub fn reset(&self) {
        if let Button::Ged(ged) | Button::GuestIgnoresAcpi(ged) = &self.0 {
            ged.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }
}
