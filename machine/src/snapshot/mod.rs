//! Snapshot and restore, StratoVirt's way: with the VM paused, QMP
//! `migrate {"uri": "file:DIR"}` writes `DIR/memory` (guest RAM) and
//! `DIR/state` (vCPUs, interrupt controllers, PIT, clock and every
//! device); `altovirt <same arguments> -incoming file:DIR` continues the
//! guest from there.

pub mod devices;
pub mod error;

pub use error::SnapshotError;
