//! Opening a tap device by name, for a network device the VMM inherits
//! (boot-time `-netdev tap,fds=N`, or hotplug with `getfd`), as Kata
//! passes taps to its VMMs.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` with the name and flags members only.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating if needed) tap `name` in this network namespace, with
/// the flags altovirt and QEMU expect (`IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`). The descriptor is close-on-exec; the driver hands it to
/// the VMM explicitly.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name {name:?} must be 1 to 15 bytes without '/', ' '"),
        ));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is
    // laid out as (40 bytes).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("tap {name}: {e}")));
    }
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_size_and_bad_names() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
        for bad in ["", "a/b", "0123456789abcdef"] {
            assert!(super::open_tap(bad).is_err(), "{bad}");
        }
    }
}
