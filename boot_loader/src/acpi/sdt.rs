//! System description table headers: OEM identity, and a header-plus-body
//! builder on top of `acpi_tables::sdt::Sdt`, which keeps the length and
//! checksum fields right as the body is appended.

use acpi_tables::sdt::Sdt;

/// OEM ID in every table header and in the RSDP.
pub(crate) const OEM_ID: [u8; 6] = *b"ALTOVT";
/// OEM revision of every table.
pub(crate) const OEM_REVISION: u32 = 1;
/// Size of the standard table header.
pub(crate) const HEADER_LEN: usize = 36;

/// A table: standard header (signature, length, revision, checksum, OEM
/// ids, creator) followed by `body`, checksummed.
pub(crate) fn table(
    signature: [u8; 4],
    revision: u8,
    oem_table_id: [u8; 8],
    body: &[u8],
) -> Vec<u8> {
    let mut sdt = Sdt::new(
        signature,
        HEADER_LEN as u32,
        revision,
        OEM_ID,
        oem_table_id,
        OEM_REVISION,
    );
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

/// A name for error messages, from the table's signature.
pub(crate) fn name_of(bytes: &[u8]) -> &'static str {
    match bytes.get(..4) {
        Some(b"RSD ") => "RSDP",
        Some(b"XSDT") => "XSDT",
        Some(b"FACP") => "FADT",
        Some(b"APIC") => "MADT",
        Some(b"DSDT") => "DSDT",
        _ => "ACPI table",
    }
}
