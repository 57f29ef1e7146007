//! Intel MultiProcessor Specification 1.4 table: lists every vCPU's local
//! APIC, the IOAPIC and the interrupt routing of all 24 IOAPIC pins, so a
//! guest without ACPI (Linux with `acpi=off`, or a test guest) can find and
//! start the application processors and route the virtio IRQs, which go up
//! to pin 23.

use address_space::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::error::BootError;
use crate::layout::{ioapic_id, APIC_START, EBDA_START, IOAPIC_START};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Legacy ISA interrupts routed through the IOAPIC.
const ISA_IRQS: u8 = 16;
/// Pins of the IOAPIC (KVM's has 24).
const IOAPIC_PINS: u8 = 24;
/// I/O interrupt flags: polarity active high (bits 0-1 = 01), trigger edge
/// (bits 2-3 = 01). The virtio devices pulse their pin through an irqfd.
const IRQ_EDGE_HIGH: u16 = 0x0005;
/// Most CPUs an MP table can hold here (APIC ids 0..=253; 254 is the IOAPIC).
pub const MAX_CPUS: u8 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// Builds the configuration table (header and entries), to sit at `table_addr`.
fn build_config_table(nr_cpus: u8) -> Vec<u8> {
    let ioapic_id = ioapic_id(nr_cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..nr_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC).
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // KVM's default routing sends GSI n to IOAPIC pin n, the PIT's GSI 0
        // included (altovirt installs no routing of its own).
        let pin = irq;
        // ISA IRQs conform to the bus (flags 0: edge, active high). Pins
        // 16-23 have no ISA IRQ of their own; they are listed on the same
        // bus with the flags spelled out, so the guest sets up IRQ n on
        // pin n, as `virtio_mmio.device=...:n` expects.
        let flags = if irq < ISA_IRQS { 0 } else { IRQ_EDGE_HIGH };
        let [f0, f1] = flags.to_le_bytes();
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, f0, f1, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    for (lint, kind) in [(0u8, INT_TYPE_EXTINT), (1u8, INT_TYPE_NMI)] {
        entries.extend_from_slice(&[ENTRY_LINT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }
    let len = 44 + entries.len();
    let mut table = Vec::with_capacity(len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, fixed below
    table.extend_from_slice(b"ALTOVIRT");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 4]); // extended table length/checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the MP floating pointer at the start of the EBDA, followed by the
/// configuration table for `nr_cpus` processors with APIC ids `0..nr_cpus`.
pub fn write_mptable(mem: &GuestMemoryMmap, nr_cpus: u8) -> Result<(), BootError> {
    if nr_cpus == 0 || nr_cpus > MAX_CPUS {
        return Err(BootError::TooManyCpus(nr_cpus));
    }
    let table_addr = EBDA_START + 16;
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    let table = build_config_table(nr_cpus);
    let write = |bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| BootError::GuestWrite {
                what: "MP table",
                source,
            })
    };
    write(&fp, EBDA_START)?;
    write(&table, table_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use address_space::memory::{create_guest_memory, MemoryOptions};

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_to_zero_and_list_every_cpu() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        write_mptable(&mem, 3).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0);
        let table_addr = u32::from_le_bytes([fp[4], fp[5], fp[6], fp[7]]) as u64;
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(table_addr)).unwrap();
        assert_eq!(&hdr[..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0);
        // Walk the entries as a guest would.
        let (mut off, mut cpus, mut bsp) = (44, vec![], 0);
        while off < len {
            match table[off] {
                0 => {
                    cpus.push(table[off + 1]);
                    if table[off + 3] & CPU_BOOTPROCESSOR != 0 {
                        bsp += 1;
                    }
                    off += 20
                }
                _ => off += 8,
            }
        }
        assert_eq!(cpus, vec![0, 1, 2]);
        assert_eq!(bsp, 1);
    }

    /// (source IRQ, destination pin, flags) of every I/O interrupt entry.
    fn io_interrupts(nr_cpus: u8) -> Vec<(u8, u8, u16)> {
        let table = build_config_table(nr_cpus);
        let (mut off, mut out) = (44, vec![]);
        while off < table.len() {
            match table[off] {
                0 => off += 20,
                ENTRY_IOINT => {
                    assert_eq!(table[off + 4], 0, "source bus is ISA");
                    assert_eq!(table[off + 6], ioapic_id(nr_cpus));
                    let flags = u16::from_le_bytes([table[off + 2], table[off + 3]]);
                    out.push((table[off + 5], table[off + 7], flags));
                    off += 8
                }
                _ => off += 8,
            }
        }
        out
    }

    #[test]
    fn every_ioapic_pin_is_routed_and_high_pins_are_edge_high() {
        let ints = io_interrupts(2);
        assert_eq!(ints.len(), 24);
        // Every ISA IRQ on the pin of the same number, the PIT's 0 included,
        // as KVM's default routing delivers them.
        for irq in 0..16u8 {
            assert_eq!(ints[irq as usize], (irq, irq, 0));
        }
        for pin in 16..24u8 {
            assert_eq!(ints[pin as usize], (pin, pin, 0x0005));
        }
    }

    #[test]
    fn cpu_count_is_bounded() {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        assert!(write_mptable(&mem, 0).is_err());
        assert!(write_mptable(&mem, 255).is_err());
        write_mptable(&mem, 254).unwrap();
    }
}
