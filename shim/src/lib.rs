//! A Kata-style hypervisor driver for altovirt and QEMU microvm.
//!
//! - [`config`]: Kata's `configuration.toml` (with `config.d/` drop-ins);
//! - [`qmp_client`]: the QMP client used for both VMMs;
//! - [`cmdline`]: the StratoVirt-flavour (altovirt) and QEMU-flavour
//!   command-line builders;
//! - [`driver`]: the [`driver::Hypervisor`] lifecycle (start, pause, resume,
//!   thread ids, stop);
//! - [`host`]: host checks and facts for `altovirt-shim check` / `env`.
//!
//! See `docs/shim.md`.

#![deny(missing_docs)]

pub mod config;
mod config_validate;
pub mod qmp_client;
pub use config_validate::glob_match;
pub mod cmdline;
pub mod driver;
pub mod host;
