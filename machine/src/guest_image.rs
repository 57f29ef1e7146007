//! What the VM boots (kernel, initrd, command line), kept so the guest can
//! be loaded again on `system_reset`, and the in-kernel interrupt
//! controller and PIT state captured at creation, restored on reset.

use std::fs::File;
use std::io::Cursor;
use std::path::PathBuf;

use address_space::GuestMemoryMmap;
use boot_loader::{load_boot_source, AcpiLayout, BootInfo, BootSource, InitrdSource};
use kvm_bindings::{kvm_irqchip, kvm_pit_state2};
use kvm_ioctls::VmFd;

use crate::error::MachineError;

/// The kernel to boot: a file, or an image built into the binary.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// A kernel image on disk.
    File(PathBuf),
    /// An in-memory image (the built-in demo guest).
    Builtin(&'static [u8]),
}

/// Everything needed to (re)load the guest into memory.
pub struct GuestImage {
    /// The kernel.
    pub kernel: KernelSource,
    /// The initrd file, if any.
    pub initrd: Option<PathBuf>,
    /// The full kernel command line (user part plus device tokens).
    pub cmdline: String,
    /// vCPUs listed in the MP table.
    pub nr_cpus: u8,
    /// What the ACPI tables describe; `None` with `-machine acpi=off`.
    pub acpi: Option<AcpiLayout>,
}

impl GuestImage {
    /// Loads the kernel, command line and initrd and writes the boot tables
    /// (the ACPI tables too, so a reset restores them).
    pub fn load(&self, mem: &GuestMemoryMmap) -> Result<BootInfo, MachineError> {
        let mut initrd_file = match &self.initrd {
            Some(path) => Some(File::open(path).map_err(|source| MachineError::InitrdOpen {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let initrd = initrd_file.as_mut().map(|f| f as &mut dyn InitrdSource);
        let (cmdline, nr_cpus, acpi) = (self.cmdline.as_str(), self.nr_cpus, self.acpi.as_ref());
        let info = match &self.kernel {
            KernelSource::File(path) => {
                let mut file = File::open(path).map_err(|source| MachineError::KernelOpen {
                    path: path.display().to_string(),
                    source,
                })?;
                load_boot_source(
                    mem,
                    BootSource {
                        kernel: &mut file,
                        initrd,
                        cmdline,
                        nr_cpus,
                        acpi,
                    },
                )
                .map_err(|e| match e.is_kernel_error() {
                    true => MachineError::KernelLoad {
                        path: path.display().to_string(),
                        source: e,
                    },
                    false => MachineError::Boot(e),
                })?
            }
            KernelSource::Builtin(bytes) => load_boot_source(
                mem,
                BootSource {
                    kernel: &mut Cursor::new(*bytes),
                    initrd,
                    cmdline,
                    nr_cpus,
                    acpi,
                },
            )?,
        };
        Ok(info)
    }
}

/// PIC master, PIC slave and IOAPIC, in KVM's chip-id order.
const IRQCHIPS: [u32; 3] = [0, 1, 2];

/// In-kernel interrupt controller and PIT state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PlatformSnapshot {
    irqchips: Vec<kvm_irqchip>,
    /// None without a PIT (`-machine pit=off`).
    pit: Option<kvm_pit_state2>,
}

impl PlatformSnapshot {
    /// Captures the current state (call right after creating them).
    pub fn capture(vm: &VmFd) -> Result<Self, MachineError> {
        let mut irqchips = Vec::with_capacity(IRQCHIPS.len());
        for chip_id in IRQCHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(|source| MachineError::Kvm {
                    what: "KVM_GET_IRQCHIP",
                    source,
                })?;
            irqchips.push(chip);
        }
        let pit = match vm.get_pit2() {
            Ok(pit) => Some(pit),
            // The VM has no PIT (-machine pit=off).
            Err(e) if e.errno() == libc::ENXIO => None,
            Err(source) => {
                return Err(MachineError::Kvm {
                    what: "KVM_GET_PIT2",
                    source,
                })
            }
        };
        Ok(Self { irqchips, pit })
    }

    /// Whether the VM has a PIT.
    pub fn has_pit(&self) -> bool {
        self.pit.is_some()
    }

    /// Puts the captured state back.
    pub fn restore(&self, vm: &VmFd) -> Result<(), MachineError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(|source| MachineError::Kvm {
                what: "KVM_SET_IRQCHIP",
                source,
            })?;
        }
        match &self.pit {
            Some(pit) => vm.set_pit2(pit).map_err(|source| MachineError::Kvm {
                what: "KVM_SET_PIT2",
                source,
            }),
            None => Ok(()),
        }
    }
}
