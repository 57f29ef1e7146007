//! Builds every tiny test guest of this directory (ELF64, PVH, bzImage)
//! for the tests; see build_guests.rs.

use std::env;
use std::path::Path;

#[path = "build_guests.rs"]
mod build_guests;

fn main() {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| build_guests::fail("no CARGO_MANIFEST_DIR"));
    let out = env::var_os("OUT_DIR").unwrap_or_else(|| build_guests::fail("no OUT_DIR"));
    let images = build_guests::build(Path::new(&manifest), Path::new(&out), true);
    let (Some(pvh), Some(bzimage)) = (images.pvh, images.bzimage) else {
        build_guests::fail("the PVH and bzImage images were not built");
    };
    println!(
        "cargo:rustc-env=ALTOVIRT_GUEST_ELF64={}",
        images.elf64.display()
    );
    println!("cargo:rustc-env=ALTOVIRT_GUEST_PVH={}", pvh.display());
    println!(
        "cargo:rustc-env=ALTOVIRT_GUEST_BZIMAGE={}",
        bzimage.display()
    );
}
