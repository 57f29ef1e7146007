//! Paths of the tiny test guests (freestanding C and assembly in this
//! directory, built by build.rs with gcc), for the tests of every crate.
//! Not part of altovirt's production build, which builds only the demo
//! guest (the ELF64 image).

/// ELF64 with a 64-bit entry (Linux 64-bit boot protocol).
pub const ELF64: &str = env!("ALTOVIRT_GUEST_ELF64");
/// The same program with a Xen PVH note.
pub const PVH: &str = env!("ALTOVIRT_GUEST_PVH");
/// The same program as a bzImage (boot protocol 2.15).
pub const BZIMAGE: &str = env!("ALTOVIRT_GUEST_BZIMAGE");
