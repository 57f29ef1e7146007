//! `altovirt-ozone`: runs altovirt jailed, with StratoVirt ozone's command
//! line. See docs/ozone.md.
//!
//! Modules: [`args`] (the command line), [`jail`] (the directory),
//! [`cgroup`] (limits), [`namespace`] (the jailed process's view),
//! [`libs`] (a dynamic binary's libraries), [`caps`] (rlimits, ids,
//! capabilities), [`launch`] (fork, wait, clean-up).

#![deny(missing_docs)]

mod args;
mod caps;
mod cgroup;
mod error;
mod jail;
mod launch;
mod libs;
mod namespace;

use args::Command;
use error::OzoneError;

fn run(argv: &[String]) -> Result<i32, OzoneError> {
    match args::parse(argv)? {
        Command::Help => {
            println!("{}", args::HELP);
            Ok(0)
        }
        Command::Version => {
            println!("altovirt-ozone {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Launch(o) => {
            require_root()?;
            launch::launch(&o)
        }
        Command::Clean(o) => {
            require_root()?;
            launch::clean(&o).map(|()| 0)
        }
    }
}

fn require_root() -> Result<(), OzoneError> {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => Ok(()),
        uid => Err(OzoneError::NotRoot(uid)),
    }
}

fn main() {
    let mut argv = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => argv.push(s),
            Err(raw) => {
                eprintln!("altovirt-ozone: argument {raw:?} is not valid UTF-8");
                std::process::exit(2);
            }
        }
    }
    match run(&argv) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("altovirt-ozone: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
