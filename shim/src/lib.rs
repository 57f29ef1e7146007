//! A Kata-style hypervisor driver for altovirt and QEMU microvm.
//!
//! - [`config`]: Kata's `configuration.toml` (with `config.d/` drop-ins);
//! - [`qmp_client`]: the QMP client used for both VMMs;
//! - [`cmdline`]: the StratoVirt-flavour (altovirt) and QEMU-flavour
//!   command-line builders;
//! - [`driver`]: the [`driver::Hypervisor`] lifecycle (start, pause, resume,
//!   thread ids, stop, attach to a VMM another process started);
//! - [`factory`]: Kata's VM factory (templates: `factory init|status|destroy`,
//!   sandboxes restored from the template);
//! - [`hotplug`]: block and network hotplug into altovirt's slots;
//! - [`slots`]: the slot tables;
//! - [`sandbox`]: per-sandbox state shared by `altovirt-shim` commands;
//! - [`metrics`]: Prometheus text metrics of a sandbox;
//! - [`tap`], [`signals`]: taps by name, and the stop signals of `run`;
//! - [`host`]: host checks and facts for `altovirt-shim check` / `env`;
//! - [`jail`]: launching altovirt through `altovirt-ozone` (`jailer_path`).
//!
//! See `docs/shim.md`.

#![deny(missing_docs)]

pub mod config;
pub mod config_load;
mod config_validate;
/// Fuzzing entry points (feature `fuzzing`, used by `shim/fuzz`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod qmp_client;
pub use config_validate::glob_match;
pub mod cmdline;
pub mod driver;
pub mod factory;
pub mod host;
pub mod hotplug;
pub mod jail;
pub mod metrics;
pub mod rate_limits;
pub mod sandbox;
pub mod signals;
pub mod slots;
pub mod tap;
