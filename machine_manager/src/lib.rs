//! Machine manager: everything that turns user input into a VM description.
//!
//! The [`config`] module parses the command line and the optional JSON
//! configuration file into a validated [`config::VmConfig`].

pub mod config;
pub mod log_limit;
pub mod logger;
pub mod process;
