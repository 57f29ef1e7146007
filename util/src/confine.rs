//! How a thread confines itself: it installs its seccomp filter before it
//! handles anything a guest or a client controls, and a thread that cannot
//! do so never runs unconfined.

use seccompiler::BpfProgram;

/// Installs `filter` on the calling thread (`None`: filters are off, e.g.
/// `-disable-seccomp`). If the kernel refuses it, logs one line naming
/// `thread` and ends the process with status 1: the thread must not go on
/// unconfined.
pub fn confine_or_exit(thread: &str, filter: Option<&BpfProgram>) {
    if let Some(filter) = filter {
        if let Err(e) = seccompiler::apply_filter(filter) {
            log::error!("{thread}: cannot install the seccomp filter: {e}");
            eprintln!("altovirt: {thread}: cannot install the seccomp filter: {e}");
            std::process::exit(1);
        }
    }
}
