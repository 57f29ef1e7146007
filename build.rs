//! Builds the demo guest (the tiny ELF64 guest of `tests/guests/`, booted
//! when no `-kernel` is given) and tells the crate where it is
//! (`ALTOVIRT_DEMO_GUEST`). The other test images are built by the
//! `test_guests` crate (tests/guests), only for the tests.

use std::env;
use std::path::Path;

// The PVH and bzImage parts are the test_guests crate's.
#[allow(dead_code)]
#[path = "tests/guests/build_guests.rs"]
mod build_guests;

fn main() {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| build_guests::fail("no CARGO_MANIFEST_DIR"));
    let out = env::var_os("OUT_DIR").unwrap_or_else(|| build_guests::fail("no OUT_DIR"));
    let images = build_guests::build(
        &Path::new(&manifest).join("tests/guests"),
        Path::new(&out),
        false,
    );
    println!(
        "cargo:rustc-env=ALTOVIRT_DEMO_GUEST={}",
        images.elf64.display()
    );
}
