//! `tapfd IFNAME FD COMMAND [ARG...]`: opens the tap IFNAME (creating it)
//! as Kata's runtime does (/dev/net/tun, TUNSETIFF with IFF_TAP | IFF_NO_PI
//! | IFF_VNET_HDR), puts the descriptor at number FD without close-on-exec
//! and executes COMMAND, which inherits it. The rig's L1 uses it to hand
//! altovirt the tap as `-netdev tap,fds=FD`, verbatim as Kata does. Built by
//! scripts/rig/run.sh with `rustc -C target-feature=+crt-static`; not part
//! of the workspace.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const TUNSETIFF: u64 = 0x4004_54ca;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;

extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn dup2(old: i32, new: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}

const F_SETFD: i32 = 2;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ifname, fd, cmd, rest @ ..] = args.as_slice() else {
        eprintln!("usage: tapfd IFNAME FD COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    let Ok(target) = fd.parse::<i32>() else {
        eprintln!("tapfd: FD {fd:?} is not a number");
        return ExitCode::from(2);
    };
    if ifname.is_empty() || ifname.len() > 15 {
        eprintln!("tapfd: IFNAME must have 1 to 15 bytes");
        return ExitCode::from(2);
    }
    let tun = match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tapfd: /dev/net/tun: {e}");
            return ExitCode::from(1);
        }
    };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is.
    if unsafe { ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        eprintln!("tapfd: TUNSETIFF {ifname}: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    // SAFETY: dup2 and fcntl on descriptors this process owns. dup2's
    // copy has no close-on-exec flag, but when /dev/net/tun already got
    // number FD, dup2 does nothing, so the flag is cleared explicitly.
    if unsafe { dup2(tun.as_raw_fd(), target) } < 0 || unsafe { fcntl(target, F_SETFD, 0) } < 0 {
        eprintln!("tapfd: dup2 to {target}: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    let e = Command::new(cmd).args(rest).exec();
    eprintln!("tapfd: cannot execute {cmd}: {e}");
    ExitCode::from(1)
}
