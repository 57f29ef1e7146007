//! A Kata-style hypervisor driver for altovirt and QEMU.
//!
//! Not implemented yet: this crate is part of the workspace layout and is
//! filled by the shim issue.
