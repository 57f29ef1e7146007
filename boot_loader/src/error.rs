//! Errors of the boot loader; each names the step that failed.

/// A boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file is neither a bzImage nor an ELF64 image.
    #[error("failed to load kernel: not a kernel image (no bzImage header and no ELF64 magic)")]
    NotAKernel,
    /// The bzImage is too old or lacks a 64-bit entry point.
    #[error("failed to load kernel: unsupported bzImage: {0}")]
    UnsupportedBzImage(String),
    /// The ELF image has neither a usable 64-bit entry nor a PVH note.
    #[error("failed to load kernel: unsupported ELF image: {0}")]
    UnsupportedElf(String),
    /// linux-loader refused the image.
    #[error("failed to load kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// Reading the kernel image failed.
    #[error("failed to load kernel: read error: {0}")]
    KernelRead(std::io::Error),
    /// The kernel (including its in-place decompression area) does not fit in RAM.
    #[error(
        "failed to load kernel: it needs memory up to {end:#x} but low RAM ends at {ram_end:#x}"
    )]
    KernelTooLarge {
        /// End of the memory the kernel needs.
        end: u64,
        /// End of RAM below the MMIO gap.
        ram_end: u64,
    },
    /// The command line exceeds what the kernel accepts.
    #[error(
        "failed to write kernel command line: {len} bytes exceeds the kernel's limit of {max}"
    )]
    CmdlineTooLong {
        /// Length of the command line.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("failed to write kernel command line: it contains a NUL byte")]
    CmdlineNul,
    /// The initrd could not be read.
    #[error("failed to load initrd: read error: {0}")]
    InitrdRead(std::io::Error),
    /// The initrd does not fit where the kernel can find it.
    #[error("failed to load initrd: {size} bytes do not fit between the kernel end {lowest:#x} and {highest:#x}")]
    InitrdTooLarge {
        /// Size of the initrd.
        size: u64,
        /// Lowest usable address (after the kernel).
        lowest: u64,
        /// Highest address the kernel accepts (exclusive).
        highest: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("failed to load initrd: copy into guest memory failed: {0}")]
    InitrdCopy(String),
    /// Writing a boot structure failed.
    #[error("failed to write {what}: {source}")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// linux-loader could not write a boot parameter block.
    #[error("failed to write {what}: {source}")]
    BootParams {
        /// What was being written.
        what: &'static str,
        /// linux-loader's error.
        source: linux_loader::configurator::Error,
    },
    /// The ACPI tables could not be built or written.
    #[error("failed to write ACPI tables: {0}")]
    Acpi(#[from] crate::acpi::AcpiError),
    /// Too many CPUs for the MP table.
    #[error("failed to write MP table: {0} CPUs is more than the 254 it can describe")]
    TooManyCpus(u8),
}

impl BootError {
    /// Whether the error is about the kernel image itself (rather than the
    /// initrd, the command line or a boot structure).
    pub fn is_kernel_error(&self) -> bool {
        matches!(
            self,
            BootError::NotAKernel
                | BootError::UnsupportedBzImage(_)
                | BootError::UnsupportedElf(_)
                | BootError::Loader(_)
                | BootError::KernelRead(_)
                | BootError::KernelTooLarge { .. }
        )
    }
}
