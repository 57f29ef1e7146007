//! Reads the tables back the way a guest would: from guest memory, through
//! the RSDP, with every checksum and length checked, and the DSDT's AML
//! parsed (for the subset of AML the DSDT uses).

use super::*;
use crate::layout::{APIC_START, IOAPIC_START};
use address_space::memory::{create_guest_memory, MemoryOptions};

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn virtio(n: u32) -> Vec<MmioDeviceDesc> {
    (0..n)
        .map(|i| MmioDeviceDesc {
            base: 0xd000_0000 + u64::from(i) * 0x1000,
            size: 0x1000,
            gsi: 5 + i,
        })
        .collect()
}

fn layout(vcpus: u8, devices: u32, com1: bool) -> AcpiLayout {
    AcpiLayout {
        vcpus,
        virtio_mmio: virtio(devices),
        com1,
        sleep_port: None,
        ged: None,
    }
}

/// Reads the table at `addr`, checking its length and checksum.
fn read_table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let mut hdr = [0u8; 36];
    mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
    assert_eq!(&hdr[..4], sig, "signature at {addr:#x}");
    let len = u32_at(&hdr, 4) as usize;
    assert!(len >= 36);
    let mut t = vec![0u8; len];
    mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
    assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
    assert_eq!(&t[10..16], b"ALTOVT", "OEM id");
    t
}

/// What a guest finds by following the RSDP.
struct Found {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn walk(mem: &GuestMemoryMmap, rsdp: u64) -> Found {
    let mut r = [0u8; 36];
    mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
    assert_eq!(&r[..8], b"RSD PTR ");
    assert_eq!(rsdp % 16, 0, "RSDP on a 16-byte boundary");
    assert_eq!(sum(&r[..20]), 0, "RSDP checksum (first 20 bytes)");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    assert_eq!(r[15], 2, "RSDP revision");
    assert_eq!(u32_at(&r, 16), 0, "no RSDT");
    assert_eq!(u32_at(&r, 20), 36, "RSDP length");
    let xsdt = read_table(mem, u64_at(&r, 24), b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    assert_eq!(entries.len(), 2);
    let fadt = read_table(mem, entries[0], b"FACP");
    let madt = read_table(mem, entries[1], b"APIC");
    assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
    let dsdt = read_table(mem, u64_at(&fadt, 140), b"DSDT");
    Found { fadt, madt, dsdt }
}

fn written(l: &AcpiLayout) -> (GuestMemoryMmap, Found) {
    let mem = create_guest_memory(64 << 20, MemoryOptions::default()).unwrap();
    let rsdp = write_tables(&mem, l).unwrap();
    assert_eq!(rsdp, GuestAddress(ACPI_START));
    let found = walk(&mem, rsdp.0);
    (mem, found)
}

#[test]
fn fadt_is_hardware_reduced_acpi_6_5_with_no_fixed_hardware() {
    let (_, f) = written(&layout(1, 0, false));
    let fadt = f.fadt;
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major revision");
    assert_eq!(fadt[131], 5, "FADT minor revision");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 4), 0, "no fixed power button");
    assert_ne!(flags & (1 << 5), 0, "no fixed sleep button");
    assert_eq!(flags & (1 << 10), 0, "no reset register");
    assert_eq!(u16_at(&fadt, 109), 0b10_1100, "no VGA, no MSI, no CMOS RTC");
    assert_eq!(u16_at(&fadt, 46), 0, "no SCI");
    assert_eq!(u32_at(&fadt, 76), 0, "no PM timer");
    assert_eq!(u64_at(&fadt, 132), 0, "no FACS");
    assert_eq!(u32_at(&fadt, 36), 0, "no FACS");
}

/// MADT structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    let mut off = 44;
    while off < madt.len() {
        let len = madt[off + 1] as usize;
        assert!(len >= 2 && off + len <= madt.len(), "MADT entry at {off}");
        out.push((madt[off], madt[off + 2..off + len].to_vec()));
        off += len;
    }
    out
}

#[test]
fn madt_lists_every_cpu_and_the_ioapic_with_identity_isa_irqs() {
    let (_, f) = written(&layout(3, 2, false));
    let madt = f.madt;
    assert_eq!(madt[8], 5, "MADT revision");
    assert_eq!(u32_at(&madt, 36), APIC_START as u32);
    assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
    let e = madt_entries(&madt);
    let cpus: Vec<(u8, u8, u32)> = e
        .iter()
        .filter(|(t, _)| *t == 0)
        .map(|(_, b)| (b[0], b[1], u32_at(b, 2)))
        .collect();
    assert_eq!(cpus, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
    let ioapics: Vec<&Vec<u8>> = e.iter().filter(|(t, _)| *t == 1).map(|(_, b)| b).collect();
    assert_eq!(ioapics.len(), 1);
    assert_eq!(
        ioapics[0][0],
        crate::layout::ioapic_id(3),
        "same id as the MP table"
    );
    assert_eq!(u32_at(ioapics[0], 2), IOAPIC_START as u32);
    assert_eq!(u32_at(ioapics[0], 6), 0, "GSI base");
    let overrides: Vec<(u8, u8, u32, u16)> = e
        .iter()
        .filter(|(t, _)| *t == 2)
        .map(|(_, b)| (b[0], b[1], u32_at(b, 2), u16_at(b, 6)))
        .collect();
    assert_eq!(
        overrides,
        vec![],
        "no override: the PIT's IRQ 0 is GSI 0, as KVM routes it"
    );
    let nmis: Vec<&Vec<u8>> = e.iter().filter(|(t, _)| *t == 4).map(|(_, b)| b).collect();
    assert_eq!(nmis, vec![&vec![0xff, 0, 0, 1]], "LINT1 NMI on all CPUs");
}

#[test]
fn the_most_cpus_fit_and_bad_counts_are_refused() {
    let (_, f) = written(&layout(254, 19, true));
    let lapics = madt_entries(&f.madt)
        .iter()
        .filter(|(t, _)| *t == 0)
        .count();
    assert_eq!(lapics, 254);
    for n in [0u8, 255] {
        let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
        let err = write_tables(&mem, &layout(n, 1, false)).unwrap_err();
        assert!(matches!(err, AcpiError::BadCpuCount(c) if c == n), "{err}");
    }
}

#[test]
fn bad_windows_are_refused() {
    let mut l = layout(1, 1, false);
    l.virtio_mmio[0].gsi = 24;
    let err = build_tables(&l).unwrap_err();
    assert_eq!(
        err.to_string(),
        "virtio-mmio window 0xd0000000 uses GSI 24, but the IOAPIC has pins 0-23"
    );
    let mut l = layout(1, 1, false);
    l.virtio_mmio[0].base = 0xffff_f800;
    assert!(matches!(
        build_tables(&l),
        Err(AcpiError::WindowAbove4G { .. })
    ));
    let mut l = layout(1, 0, false);
    l.virtio_mmio = vec![virtio(1)[0]; 1001];
    assert!(matches!(
        build_tables(&l),
        Err(AcpiError::TooManyDevices(1001))
    ));
}

#[test]
fn tables_stay_inside_the_reserved_bios_area_and_stale_data_is_cleared() {
    // The largest description: every CPU, and as many windows as there
    // are names (GSIs repeat; only the size matters here).
    let mut l = layout(254, 0, true);
    l.virtio_mmio = vec![virtio(1)[0]; 1000];
    let (addrs, tables) = build_tables(&l).unwrap();
    for (addr, bytes) in &tables {
        assert!(*addr >= ACPI_START && addr + bytes.len() as u64 <= ACPI_END);
        assert_eq!(addr % 16, 0);
    }
    assert_eq!(addrs.rsdp, ACPI_START);
    let mem = create_guest_memory(16 << 20, MemoryOptions::default()).unwrap();
    mem.write_slice(b"RSD PTR stale", GuestAddress(ACPI_END - 16))
        .unwrap();
    write_tables(&mem, &layout(1, 0, false)).unwrap();
    let mut tail = [0u8; 16];
    mem.read_slice(&mut tail, GuestAddress(ACPI_END - 16))
        .unwrap();
    assert_eq!(tail, [0; 16]);
}

// ---- A reader for the AML the DSDT uses --------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(u64),
    Str(String),
    Buffer(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Scope(String, Vec<Node>),
    Device(String, Vec<Node>),
    Name(String, Value),
    /// OperationRegion: name, space, offset, length.
    OpRegion(String, u8, u64, u64),
    /// Field: region, flags, (name, bits) entries.
    Field(String, u8, Vec<(String, usize)>),
    /// Method: name, flags, the body's bytes (not parsed).
    Method(String, u8, Vec<u8>),
}

struct Aml<'a> {
    b: &'a [u8],
    i: usize,
}

impl Aml<'_> {
    fn byte(&mut self) -> u8 {
        let v = self.b[self.i];
        self.i += 1;
        v
    }

    /// PkgLength; returns the end offset of the package it starts.
    fn pkg_end(&mut self) -> usize {
        let start = self.i;
        let lead = self.byte();
        let follow = lead >> 6;
        let mut len = if follow == 0 {
            usize::from(lead & 0x3f)
        } else {
            assert_eq!(lead & 0x30, 0, "reserved PkgLength bits");
            usize::from(lead & 0x0f)
        };
        for k in 0..follow {
            len |= usize::from(self.byte()) << (4 + 8 * k);
        }
        // A one-byte encoding must be used when the length fits.
        if follow > 0 {
            assert!(len > 63, "PkgLength {len} could use one byte");
        }
        start + len
    }

    fn name_seg(&mut self) -> String {
        let s = &self.b[self.i..self.i + 4];
        assert!(s
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_'));
        assert!(!s[0].is_ascii_digit());
        self.i += 4;
        String::from_utf8(s.to_vec()).unwrap()
    }

    fn name_string(&mut self) -> String {
        if self.b[self.i] == b'\\' {
            self.i += 1;
            format!("\\{}", self.name_seg())
        } else {
            self.name_seg()
        }
    }

    fn integer(&mut self) -> u64 {
        match self.byte() {
            0x00 => 0,
            0x01 => 1,
            0xff => u64::MAX,
            0x0a => u64::from(self.byte()),
            0x0b => {
                let v = u16_at(self.b, self.i);
                self.i += 2;
                u64::from(v)
            }
            0x0c => {
                let v = u32_at(self.b, self.i);
                self.i += 4;
                u64::from(v)
            }
            0x0e => {
                let v = u64_at(self.b, self.i);
                self.i += 8;
                v
            }
            op => panic!("unexpected integer opcode {op:#x} at {}", self.i - 1),
        }
    }

    fn data(&mut self) -> Value {
        match self.b[self.i] {
            0x0d => {
                self.i += 1;
                let end = self.i + self.b[self.i..].iter().position(|&c| c == 0).unwrap();
                let s = String::from_utf8(self.b[self.i..end].to_vec()).unwrap();
                self.i = end + 1;
                Value::Str(s)
            }
            0x11 => {
                self.i += 1;
                let end = self.pkg_end();
                let size = self.integer() as usize;
                assert_eq!(end - self.i, size, "buffer size matches its package");
                let v = self.b[self.i..end].to_vec();
                self.i = end;
                Value::Buffer(v)
            }
            _ => Value::Int(self.integer()),
        }
    }

    fn terms(&mut self, end: usize) -> Vec<Node> {
        let mut out = vec![];
        while self.i < end {
            match self.byte() {
                0x10 => {
                    let e = self.pkg_end();
                    let name = self.name_string();
                    out.push(Node::Scope(name, self.terms(e)));
                }
                0x5b if self.b[self.i] == 0x82 => {
                    self.i += 1;
                    let e = self.pkg_end();
                    let name = self.name_seg();
                    out.push(Node::Device(name, self.terms(e)));
                }
                0x08 => {
                    let name = self.name_string();
                    out.push(Node::Name(name, self.data()));
                }
                0x5b if self.b[self.i] == 0x80 => {
                    self.i += 1;
                    let name = self.name_seg();
                    let space = self.byte();
                    let (offset, len) = (self.integer(), self.integer());
                    out.push(Node::OpRegion(name, space, offset, len));
                }
                0x5b if self.b[self.i] == 0x81 => {
                    self.i += 1;
                    let e = self.pkg_end();
                    let region = self.name_seg();
                    let flags = self.byte();
                    let mut fields = vec![];
                    while self.i < e {
                        let name = self.name_seg();
                        // A field's PkgLength counts bits, not bytes.
                        let start = self.i;
                        let bits = self.pkg_end() - start;
                        fields.push((name, bits));
                    }
                    out.push(Node::Field(region, flags, fields));
                }
                0x14 => {
                    let e = self.pkg_end();
                    let name = self.name_seg();
                    let flags = self.byte();
                    out.push(Node::Method(name, flags, self.b[self.i..e].to_vec()));
                    self.i = e;
                }
                op => panic!("unexpected opcode {op:#x} at {}", self.i - 1),
            }
        }
        assert_eq!(self.i, end, "package overrun");
        out
    }
}

fn parse_aml(b: &[u8]) -> Vec<Node> {
    Aml { b, i: 0 }.terms(b.len())
}

#[derive(Debug, PartialEq)]
enum Resource {
    Mem32 {
        rw: bool,
        base: u32,
        len: u32,
    },
    Io {
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
    Irq {
        flags: u8,
        gsis: Vec<u32>,
    },
}

/// The descriptors of a resource template, checking its end tag.
fn resources(b: &[u8]) -> Vec<Resource> {
    let mut out = vec![];
    let mut i = 0;
    loop {
        let tag = b[i];
        if tag & 0x80 != 0 {
            let len = usize::from(u16_at(b, i + 1));
            let d = &b[i + 3..i + 3 + len];
            out.push(match tag {
                0x86 => {
                    assert_eq!(len, 9);
                    Resource::Mem32 {
                        rw: d[0] == 1,
                        base: u32_at(d, 1),
                        len: u32_at(d, 5),
                    }
                }
                0x89 => {
                    let n = usize::from(d[1]);
                    assert_eq!(len, 2 + 4 * n);
                    Resource::Irq {
                        flags: d[0],
                        gsis: (0..n).map(|k| u32_at(d, 2 + 4 * k)).collect(),
                    }
                }
                _ => panic!("unexpected large descriptor {tag:#x}"),
            });
            i += 3 + len;
        } else {
            let len = usize::from(tag & 7);
            match tag >> 3 {
                0x0f => {
                    assert_eq!(len, 1);
                    assert_eq!(i + 2, b.len(), "end tag ends the template");
                    return out;
                }
                0x08 => {
                    assert_eq!(len, 7);
                    let d = &b[i + 1..];
                    assert_eq!(d[0], 1, "16-bit decode");
                    out.push(Resource::Io {
                        min: u16_at(d, 1),
                        max: u16_at(d, 3),
                        align: d[5],
                        len: d[6],
                    });
                }
                t => panic!("unexpected small descriptor {t:#x}"),
            }
            i += 1 + len;
        }
    }
}

fn name<'a>(children: &'a [Node], n: &str) -> &'a Value {
    children
        .iter()
        .find_map(|c| match c {
            Node::Name(k, v) if k == n => Some(v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {n} in {children:?}"))
}

/// The devices under `\_SB_`.
fn sb_devices(dsdt_body: &[u8]) -> Vec<(String, Vec<Node>)> {
    let nodes = parse_aml(dsdt_body);
    assert_eq!(nodes.len(), 1);
    let Node::Scope(scope, children) = &nodes[0] else {
        panic!("{nodes:?}")
    };
    assert_eq!(scope, "\\_SB_");
    children
        .iter()
        .map(|c| match c {
            Node::Device(n, ch) => (n.clone(), ch.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

mod ged;

#[test]
fn dsdt_has_one_lnro0005_device_per_window_with_its_resources() {
    let (_, f) = written(&layout(2, 19, false));
    assert_eq!(f.dsdt[8], 2, "DSDT revision 2 (64-bit integers)");
    let devices = sb_devices(&f.dsdt[36..]);
    assert_eq!(devices.len(), 19);
    for (i, (dev, children)) in devices.iter().enumerate() {
        assert_eq!(dev, &format!("V{i:03}"));
        assert_eq!(name(children, "_HID"), &Value::Str("LNRO0005".into()));
        assert_eq!(name(children, "_UID"), &Value::Int(i as u64));
        assert_eq!(name(children, "_CCA"), &Value::Int(1));
        let Value::Buffer(crs) = name(children, "_CRS") else {
            panic!("_CRS is not a buffer")
        };
        assert_eq!(
            resources(crs),
            vec![
                Resource::Mem32 {
                    rw: true,
                    base: 0xd000_0000 + 0x1000 * i as u32,
                    len: 0x1000
                },
                // Consumer, edge, active high, exclusive.
                Resource::Irq {
                    flags: 0b0011,
                    gsis: vec![5 + i as u32]
                },
            ]
        );
    }
}

#[test]
fn dsdt_describes_com1_when_present() {
    let (_, f) = written(&layout(1, 1, true));
    let devices = sb_devices(&f.dsdt[36..]);
    assert_eq!(devices.len(), 2);
    let (dev, children) = &devices[0];
    assert_eq!(dev, "COM1");
    // EisaId ("PNP0501").
    assert_eq!(name(children, "_HID"), &Value::Int(0x0105_d041));
    let Value::Buffer(crs) = name(children, "_CRS") else {
        panic!("_CRS is not a buffer")
    };
    assert_eq!(
        resources(crs),
        vec![
            Resource::Io {
                min: 0x3f8,
                max: 0x3f8,
                align: 0,
                len: 8
            },
            Resource::Irq {
                flags: 0b0011,
                gsis: vec![4]
            },
        ]
    );
    assert_eq!(devices[1].0, "V000");
    let (_, f) = written(&layout(1, 0, false));
    assert!(sb_devices(&f.dsdt[36..]).is_empty());
}

#[test]
fn one_device_encodes_to_the_hand_computed_aml() {
    let aml = dsdt_aml(&layout(1, 1, false));
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[0x10, 0x4a, 0x04][..],               // Scope, PkgLength 74
        b"\\_SB_",
        &[0x5b, 0x82, 0x41, 0x04],             // Device, PkgLength 65
        b"V000",
        &[0x08], b"_HID", &[0x0d], b"LNRO0005", &[0x00],
        &[0x08], b"_UID", &[0x00],             // Zero
        &[0x08], b"_CCA", &[0x01],             // One
        &[0x08], b"_CRS", &[0x11, 0x1a, 0x0a, 0x17], // Buffer, PkgLength 26, size 23
        &[0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00],
        &[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00],
        &[0x79, 0x00],
    ]
    .concat();
    assert_eq!(aml, expected);
}

#[test]
fn acpi_off_on_the_kernel_command_line_is_recognised() {
    assert!(cmdline_disables_acpi("console=ttyS0 acpi=off"));
    assert!(cmdline_disables_acpi("acpi=force acpi=off quiet"));
    assert!(!cmdline_disables_acpi("acpi=off acpi=force"));
    assert!(!cmdline_disables_acpi("console=ttyS0"));
    assert!(!cmdline_disables_acpi("noacpi=off xacpi=off"));
    assert!(!cmdline_disables_acpi("acpi=noirq"));
}

#[test]
fn sleep_registers_and_s5_let_the_guest_power_off() {
    let mut l = layout(1, 1, false);
    l.sleep_port = Some(0x600);
    let (_, f) = written(&l);
    // SLEEP_CONTROL_REG (offset 244) and SLEEP_STATUS_REG (256): system I/O,
    // 8 bits, offset 0, byte access, port 0x600.
    for off in [244, 256] {
        assert_eq!(&f.fadt[off..off + 4], &[1, 8, 0, 1], "GAS at {off}");
        assert_eq!(u64_at(&f.fadt, off + 4), 0x600, "GAS address at {off}");
    }
    // After \_SB_: Name (_S5_, Package (4) { 5, 5, Zero, Zero }).
    let body = &f.dsdt[36..];
    let s5: &[u8] = &[
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
    ];
    assert!(body.ends_with(s5), "{body:02x?}");
    // Without the port: no registers and no \_S5, so no poweroff method.
    let (_, f) = written(&layout(1, 1, false));
    assert_eq!(u64_at(&f.fadt, 248), 0);
    assert_eq!(u64_at(&f.fadt, 260), 0);
    assert!(!f.dsdt.windows(4).any(|w| w == b"_S5_"));
}
