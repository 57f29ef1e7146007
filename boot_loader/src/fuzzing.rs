//! Entry point for fuzzing kernel image detection and loading: bzImage
//! setup headers, ELF headers and program headers, PVH notes, and what
//! the loader derives from them (command line limit, initrd placement,
//! zero page). Used by the cargo-fuzz target in `boot_loader/fuzz` and by
//! a unit test that replays its seed corpus.

use std::io::Cursor;

use address_space::memory::{create_guest_memory, low_ram_end, MemoryOptions};
use address_space::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::{load_boot_source, BootError, BootProtocol, BootSource, InitrdSource};

/// Guest RAM sizes an input can pick: small, so that a run stays fast and
/// most images are too large for some of them.
const RAM_SIZES: [u64; 3] = [2 << 20, 3 << 20, 8 << 20];

/// An initrd of `len` bytes of a fixed pattern, in memory.
struct PatternInitrd {
    len: u64,
}

impl InitrdSource for PatternInitrd {
    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.len)
    }

    fn copy_into(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<(), BootError> {
        let len = usize::try_from(self.len).map_err(|e| BootError::InitrdCopy(e.to_string()))?;
        mem.write_slice(&vec![0x42u8; len], addr)
            .map_err(|e| BootError::InitrdCopy(e.to_string()))
    }
}

/// Loads `data` as a guest to boot.
///
/// Byte 0: guest RAM size (modulo 3: 2, 3 or 8 MiB); byte 1: command line
/// length (that many `x`, times 16 when bit 7 is set: up to 2032 bytes);
/// bytes 2-3: initrd size in KiB (little endian; 0 = none; at most 4 MiB);
/// byte 4: vCPUs for the MP table. The rest is the kernel image.
///
/// Errors are expected; a panic is a bug, and so is a successful load
/// that is inconsistent: an entry point outside the kernel, a kernel or
/// initrd outside RAM, overlapping kernel and initrd, a 64-bit entry
/// without page tables, or an error message spanning several lines.
/// Returns whether the image was loaded.
pub fn load_image(data: &[u8]) -> bool {
    if data.len() < 5 {
        return false;
    }
    let (ctl, image) = data.split_at(5);
    let ram = RAM_SIZES[usize::from(ctl[0]) % RAM_SIZES.len()];
    let Ok(mem) = create_guest_memory(ram, MemoryOptions::default()) else {
        return false;
    };
    let cmdline_len = if ctl[1] & 0x80 != 0 {
        usize::from(ctl[1] & 0x7f) * 16
    } else {
        usize::from(ctl[1])
    };
    let cmdline = "x".repeat(cmdline_len);
    let initrd_kib = u64::from(u16::from_le_bytes([ctl[2], ctl[3]])).min(4096);
    let mut initrd = PatternInitrd {
        len: initrd_kib << 10,
    };
    let mut kernel = Cursor::new(image);
    let source = BootSource {
        kernel: &mut kernel,
        initrd: (initrd_kib > 0).then_some(&mut initrd as &mut dyn InitrdSource),
        cmdline: &cmdline,
        nr_cpus: ctl[4].max(1),
        acpi: None,
    };
    let info = match load_boot_source(&mem, source) {
        Ok(info) => info,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "empty error message");
            assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
            return false;
        }
    };
    let ram_end = low_ram_end(&mem);
    let (kstart, kend) = info.kernel;
    assert!(kstart < kend, "empty kernel range {kstart:#x}..{kend:#x}");
    assert!(
        kend <= ram_end,
        "kernel ends at {kend:#x}, RAM at {ram_end:#x}"
    );
    assert!(
        (kstart..kend).contains(&info.entry),
        "entry {:#x} outside the kernel {kstart:#x}..{kend:#x}",
        info.entry
    );
    if let Some((istart, iend)) = info.initrd {
        assert!(
            istart <= iend && iend <= ram_end,
            "initrd {istart:#x}..{iend:#x}"
        );
        assert!(
            iend == istart || istart >= kend || iend <= kstart,
            "initrd {istart:#x}..{iend:#x} overlaps the kernel {kstart:#x}..{kend:#x}"
        );
    }
    match info.protocol {
        BootProtocol::Linux64 { zero_page } => {
            assert_ne!(info.cr3, 0, "64-bit entry without page tables");
            assert!(zero_page < ram_end);
        }
        BootProtocol::Pvh { start_info } => assert!(start_info < ram_end),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus of the fuzz target runs on stable Rust too.
    #[test]
    fn seed_corpus_runs_without_panics() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/kernel_image");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read seed");
            load_image(&data);
            n += 1;
        }
        assert!(n >= 4, "only {n} seeds");
    }

    /// The well-formed seeds get through loading (bzImage with an initrd,
    /// ELF, ELF with a PVH note); the broken ones do not.
    #[test]
    fn seeds_load_as_intended() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/kernel_image");
        for (name, loads) in [
            ("seed-bzimage", true),
            ("seed-elf-long-mode", true),
            ("seed-elf-pvh-note", true),
            ("seed-bzimage-old-protocol", false),
            ("seed-elf-bad-segments", false),
            ("seed-garbage", false),
        ] {
            let data = std::fs::read(format!("{dir}/{name}")).expect("seed");
            assert_eq!(load_image(&data), loads, "{name}");
        }
    }
}
