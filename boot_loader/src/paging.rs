//! The GDT and identity-mapped page tables a 64-bit entry needs.

use address_space::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::error::BootError;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, IDENTITY_MAP_GIB, PDE_START, PDPTE_START, PML4_START,
};

/// Selector of the code segment in the boot GDT.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segments in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS in the boot GDT.
pub const TSS_SELECTOR: u16 = 0x18;

/// Packs a segment descriptor from its access/flags word, base and limit
/// (the encoding of the x86 GDT entry).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (64-bit or 32-bit), data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code_flags = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMemoryMmap, long_mode: bool) -> Result<(), BootError> {
    for (i, entry) in boot_gdt(long_mode).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|source| BootError::GuestWrite {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| BootError::GuestWrite {
            what: "IDT",
            source,
        })
}

/// Writes page tables identity-mapping the first [`IDENTITY_MAP_GIB`] GiB
/// with 2 MiB pages; returns the CR3 value.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let err = |source| BootError::GuestWrite {
        what: "page tables",
        source,
    };
    mem.write_obj(PDPTE_START | 0x3, GuestAddress(PML4_START))
        .map_err(err)?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(PDPTE_START + gib * 8))
            .map_err(err)?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) | (i << 21)) | 0x83).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd)).map_err(err)?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use address_space::memory::{create_guest_memory, MemoryOptions};

    #[test]
    fn gdt_entries_encode_flat_segments() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn page_tables_map_4gib_identity() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        assert_eq!(write_identity_page_tables(&mem).unwrap(), PML4_START);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        assert_eq!(pdpte & !0xfff, PDE_START + 0x3000);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0083);
    }
}
