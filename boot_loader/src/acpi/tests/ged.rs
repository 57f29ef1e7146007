//! The Generic Event Device and the power button in the DSDT.

use super::*;

const GED: GedDesc = GedDesc {
    base: 0xfea0_0000,
    gsi: 3,
};

fn with_ged(devices: u32, com1: bool) -> AcpiLayout {
    let mut l = layout(1, devices, com1);
    l.ged = Some(GED);
    l
}

#[test]
fn ged_and_power_button_encode_to_the_hand_computed_aml() {
    #[rustfmt::skip]
    let ged: Vec<u8> = [
        &[0x5b, 0x82, 0x4e, 0x06][..],         // Device, PkgLength 110
        b"GED_",
        &[0x08], b"_HID", &[0x0d], b"ACPI0013", &[0x00],
        &[0x08], b"_UID", &[0x00],             // Zero
        &[0x08], b"_CRS", &[0x11, 0x0e, 0x0a, 0x0b], // Buffer, PkgLength 14, size 11
        &[0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0x00, 0x00, 0x00], // edge, high, GSI 3
        &[0x79, 0x00],
        // OperationRegion (EREG, SystemMemory, 0xFEA00000, 4)
        &[0x5b, 0x80], b"EREG", &[0x00, 0x0c, 0x00, 0x00, 0xa0, 0xfe, 0x0a, 0x04],
        // Field (EREG, DWordAcc, NoLock, WriteAsZeros) { ESEL, 32 }
        &[0x5b, 0x81, 0x0b], b"EREG", &[0x43], b"ESEL", &[0x20],
        // Method (_EVT, 1, Serialized)
        &[0x14, 0x23], b"_EVT", &[0x09],
        &[0x70], b"ESEL", &[0x60],             // Store (ESEL, Local0)
        &[0xa0, 0x16],                         // If, PkgLength 22
        &[0x93, 0x7b, 0x60, 0x0a, 0x02, 0x00, 0x0a, 0x02], // LEqual (And (Local0, 2), 2)
        &[0x86, 0x5c, 0x2e], b"_SB_", b"PWRB", &[0x0a, 0x80], // Notify (\_SB.PWRB, 0x80)
    ]
    .concat();
    assert_eq!(crate::acpi::dsdt::ged(&GED), ged);
    #[rustfmt::skip]
    let pwrb: Vec<u8> = [
        &[0x5b, 0x82, 0x19][..],               // Device, PkgLength 25
        b"PWRB",
        &[0x08], b"_HID", &[0x0d], b"PNP0C0C", &[0x00],
        &[0x08], b"_UID", &[0x00],
    ]
    .concat();
    assert_eq!(crate::acpi::dsdt::power_button(), pwrb);
}

#[test]
fn the_dsdt_has_the_ged_and_the_button_after_the_other_devices() {
    let (_, f) = written(&with_ged(2, true));
    let devices = sb_devices(&f.dsdt[36..]);
    let names: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["COM1", "V000", "V001", "GED_", "PWRB"]);
    let ged = &devices[3].1;
    assert_eq!(name(ged, "_HID"), &Value::Str("ACPI0013".into()));
    let Value::Buffer(crs) = name(ged, "_CRS") else {
        panic!("_CRS is not a buffer")
    };
    assert_eq!(
        resources(crs),
        vec![Resource::Irq {
            flags: 0b0011,
            gsis: vec![3]
        }],
        "an edge-triggered, active-high interrupt on GSI 3, nothing else"
    );
    assert!(ged.contains(&Node::OpRegion("EREG".into(), 0, 0xfea0_0000, 4)));
    assert!(ged.contains(&Node::Field("EREG".into(), 0x43, vec![("ESEL".into(), 32)])));
    assert!(
        ged.iter()
            .any(|n| matches!(n, Node::Method(m, 0x09, _) if m == "_EVT")),
        "{ged:?}"
    );
    let pwrb = &devices[4].1;
    assert_eq!(name(pwrb, "_HID"), &Value::Str("PNP0C0C".into()));
    // Without a GED: neither device.
    let (_, f) = written(&layout(1, 2, true));
    assert!(!f.dsdt.windows(4).any(|w| w == b"GED_" || w == b"PWRB"));
}

#[test]
fn a_ged_on_a_taken_or_missing_pin_or_above_4g_is_refused() {
    let mut l = with_ged(2, true);
    for gsi in [4, 5, 6, 24] {
        l.ged = Some(GedDesc { gsi, ..GED });
        assert_eq!(
            build_tables(&l).unwrap_err().to_string(),
            format!("the GED cannot use GSI {gsi}: not a free IOAPIC pin")
        );
    }
    // Pin 4 is free when there is no serial port.
    let mut l = with_ged(0, false);
    l.ged = Some(GedDesc { gsi: 4, ..GED });
    assert!(build_tables(&l).is_ok());
    l.ged = Some(GedDesc {
        base: 0xffff_fffe,
        gsi: 3,
    });
    assert!(matches!(
        build_tables(&l),
        Err(AcpiError::GedAbove4G(0xffff_fffe))
    ));
}
