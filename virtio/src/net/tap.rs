//! A TAP interface used as the host end of a virtio-net device.
//!
//! The file descriptor is attached (or verified to be attached) with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame read from or written
//! to it is preceded by a virtio-net header. The header length is set to
//! [`NET_HDR_LEN`] (the virtio 1.x layout, `num_buffers` included) and all
//! offloads are turned off, so the kernel only ever hands over complete,
//! checksummed frames and the header can be written as zeros.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{FrameIo, NET_HDR_LEN};

/// Path of the TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

// Flags as the kernel reports them in `ifr_flags` (a C short).
const IFF_TAP: u16 = libc::IFF_TAP as u16;
const IFF_TUN: u16 = libc::IFF_TUN as u16;
const IFF_NO_PI: u16 = libc::IFF_NO_PI as u16;
const IFF_VNET_HDR: u16 = libc::IFF_VNET_HDR as u16;

/// Errors of TAP set-up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL byte.
    #[error("invalid tap interface name '{name}': {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE} for tap interface {name}: {source}")]
    OpenTun {
        /// The interface that was to be created or attached.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// An ioctl (or fcntl) on the TAP descriptor failed.
    #[error("{target}: {op} failed: {source}")]
    Ioctl {
        /// "tap interface NAME" or "fd N".
        target: String,
        /// The failing request (e.g. "TUNSETIFF").
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The inherited descriptor is not an attached TUN/TAP descriptor.
    #[error("fd {fd} is not a tap device (TUNGETIFF failed: {source})")]
    NotTap {
        /// The descriptor.
        fd: RawFd,
        /// The OS error of TUNGETIFF.
        source: io::Error,
    },
    /// The inherited descriptor is a TAP opened with unsuitable flags.
    #[error("fd {fd} (interface {name}) cannot be used: {problem}")]
    BadFlags {
        /// The descriptor.
        fd: RawFd,
        /// The interface it is attached to.
        name: String,
        /// What is wrong (e.g. "opened without IFF_VNET_HDR").
        problem: &'static str,
    },
}

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: u16,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    /// The NUL-terminated name, lossily decoded.
    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// ioctl with a pointer argument.
fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` points to a live, writable object at least as large as
    // what `req` transfers (checked by the callers' choice of `T`).
    let ret = unsafe { libc::ioctl(fd, req, arg as *mut T as *mut c_void) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// ioctl with an integer argument passed by value.
fn ioctl_val(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the request takes its argument by value; no memory is shared.
    let ret = unsafe { libc::ioctl(fd, req, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open TAP queue: a non-blocking descriptor exchanging frames with a
/// 12-byte virtio-net header and no offloads.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    if_name: String,
}

impl Tap {
    /// Creates the TAP interface `ifname`, or attaches to it if it already
    /// exists (e.g. made with `ip tuntap add mode tap`). Needs CAP_NET_ADMIN
    /// unless the interface is owned by the caller.
    pub fn open_named(ifname: &str) -> Result<Tap, TapError> {
        let invalid = |reason| TapError::InvalidName {
            name: ifname.to_string(),
            reason,
        };
        if ifname.is_empty() {
            return Err(invalid("empty"));
        }
        if ifname.len() > MAX_IFNAME_LEN {
            return Err(invalid("longer than 15 bytes"));
        }
        if ifname.as_bytes().contains(&0) {
            return Err(invalid("contains a NUL byte"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| TapError::OpenTun {
                name: ifname.to_string(),
                source,
            })?;
        let fd = OwnedFd::from(file);
        let mut ifr = IfReq::zeroed();
        ifr.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        ifr.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        ioctl_ptr(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr).map_err(|source| TapError::Ioctl {
            target: format!("tap interface {ifname}"),
            op: "TUNSETIFF",
            source,
        })?;
        // The kernel writes back the name it used.
        let name = ifr.name();
        let tap = Tap {
            fd,
            if_name: if name.is_empty() {
                ifname.to_string()
            } else {
                name
            },
        };
        tap.configure(&format!("tap interface {}", tap.if_name))?;
        Ok(tap)
    }

    /// Takes over an already attached TAP descriptor (inherited from the
    /// parent, e.g. `fds=3`, or received over QMP `getfd`). It must have
    /// been opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the flags
    /// cannot be changed once attached. `IFF_NO_PI` cannot be verified:
    /// TUNGETIFF reports the same bit as `IFF_NOFILTER`, set either way. The
    /// descriptor is made non-blocking (which also affects other holders of
    /// the same open file).
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let mut ifr = IfReq::zeroed();
        ioctl_ptr(raw, libc::TUNGETIFF, &mut ifr)
            .map_err(|source| TapError::NotTap { fd: raw, source })?;
        let name = ifr.name();
        let bad = |problem| TapError::BadFlags {
            fd: raw,
            name: name.clone(),
            problem,
        };
        if ifr.flags & IFF_TAP == 0 || ifr.flags & IFF_TUN != 0 {
            return Err(bad("it is a TUN (layer 3) device, not a TAP"));
        }
        if ifr.flags & IFF_VNET_HDR == 0 {
            return Err(bad("opened without IFF_VNET_HDR"));
        }
        let tap = Tap { fd, if_name: name };
        tap.configure(&format!("fd {raw} (tap interface {})", tap.if_name))?;
        Ok(tap)
    }

    /// Sets the header size, turns offloads off and makes the descriptor
    /// non-blocking; `target` names it in errors.
    fn configure(&self, target: &str) -> Result<(), TapError> {
        let fd = self.fd.as_raw_fd();
        let err = |op| {
            move |source| TapError::Ioctl {
                target: target.to_string(),
                op,
                source,
            }
        };
        let mut hdr_len = NET_HDR_LEN as libc::c_int;
        ioctl_ptr(fd, libc::TUNSETVNETHDRSZ, &mut hdr_len).map_err(err("TUNSETVNETHDRSZ"))?;
        ioctl_val(fd, libc::TUNSETOFFLOAD, 0).map_err(err("TUNSETOFFLOAD"))?;
        set_nonblocking(fd).map_err(err("fcntl(O_NONBLOCK)"))?;
        Ok(())
    }

    /// Name of the interface the descriptor is attached to.
    pub fn if_name(&self) -> &str {
        &self.if_name
    }

    /// The virtio-net header length the kernel uses on this descriptor
    /// (TUNGETVNETHDRSZ); [`NET_HDR_LEN`] once set up.
    pub fn vnet_hdr_len(&self) -> Result<usize, TapError> {
        let mut len: libc::c_int = 0;
        ioctl_ptr(self.fd.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len).map_err(|source| {
            TapError::Ioctl {
                target: format!("tap interface {}", self.if_name),
                op: "TUNGETVNETHDRSZ",
                source,
            }
        })?;
        Ok(usize::try_from(len).unwrap_or(0))
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FrameIo for Tap {
    fn name(&self) -> &str {
        &self.if_name
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // No offloads: an all-zero header means "complete frame".
        let hdr = [0u8; NET_HDR_LEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut c_void,
                iov_len: frame.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs describe live buffers the kernel only reads.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                // A TAP takes a frame whole or not at all.
                return if n as usize == hdr.len() + frame.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::WriteZero, "short tap write"))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; NET_HDR_LEN];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr() as *mut c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut c_void,
                iov_len: buf.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs describe live buffers we own exclusively.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                // The kernel reports the whole frame length even when it
                // had to truncate it to fit `buf`.
                return (n as usize).checked_sub(NET_HDR_LEN).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "tap read shorter than header")
                });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
