//! Tests against real TAP interfaces (CAP_NET_ADMIN needed; skipped with a
//! message when unavailable, unless ALTOVIRT_REQUIRE_KVM=1 or CI=true).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::*;
use crate::net::{Net, NetConfig};
use crate::test_utils::*;
use crate::{EventFd, Interrupt, VirtioDevice};
use util::event_loop::EventLoop;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

/// Local experimental ethertype used by the end-to-end test.
const TEST_ETHERTYPE: u16 = 0x88b5;

fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "avt{}{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn must_run() -> bool {
    std::env::var("ALTOVIRT_REQUIRE_KVM").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns None) or, where nothing may skip, fails.
fn skip<T>(test: &str, why: &dyn std::fmt::Display) -> Option<T> {
    assert!(
        !must_run(),
        "{test}: a tap interface is required here but unusable: {why}"
    );
    eprintln!(
        "SKIP {test}: cannot use a tap interface ({why}); needs CAP_NET_ADMIN and {TUN_DEVICE}"
    );
    None
}

fn tap_or_skip(test: &str) -> Option<Tap> {
    match Tap::open_named(&unique_name()) {
        Ok(t) => Some(t),
        Err(e) => skip(test, &e),
    }
}

fn flags_of(fd: RawFd) -> u16 {
    let mut ifr = IfReq::zeroed();
    ioctl_ptr(fd, libc::TUNGETIFF, &mut ifr).unwrap();
    ifr.flags
}

/// Opens /dev/net/tun and attaches it to a new interface with `flags`.
fn raw_tun(flags: u16) -> std::io::Result<(OwnedFd, String)> {
    let fd = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_DEVICE)?,
    );
    let name = unique_name();
    let mut ifr = IfReq::zeroed();
    ifr.name[..name.len()].copy_from_slice(name.as_bytes());
    ifr.flags = flags;
    ioctl_ptr(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr)?;
    Ok((fd, name))
}

#[test]
fn bad_names_are_refused_before_any_syscall() {
    for (name, why) in [
        ("", "empty"),
        ("sixteen-chars-xx", "longer than 15"),
        ("ta\0p", "NUL"),
    ] {
        let e = Tap::open_named(name).unwrap_err();
        assert!(matches!(e, TapError::InvalidName { .. }), "{name:?}: {e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    // 15 bytes is the limit, not an error of its own.
    assert!(!matches!(
        Tap::open_named("fifteen-chars-x"),
        Err(TapError::InvalidName { .. })
    ));
}

#[test]
fn named_tap_is_set_up_for_virtio_frames() {
    let test = "named_tap_is_set_up_for_virtio_frames";
    let Some(tap) = tap_or_skip(test) else {
        return;
    };
    assert!(tap.if_name().starts_with("avt"));
    assert_eq!(tap.vnet_hdr_len().unwrap(), NET_HDR_LEN);
    let flags = flags_of(tap.as_raw_fd());
    assert_eq!(flags & IFF_TAP, IFF_TAP);
    assert_eq!(flags & IFF_NO_PI, IFF_NO_PI);
    assert_eq!(flags & IFF_VNET_HDR, IFF_VNET_HDR);
    // SAFETY: plain fcntl on our descriptor.
    let fl = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(fl & libc::O_NONBLOCK, 0, "non-blocking");
    // Interface down: nothing to read, and reading does not block.
    let mut buf = [0u8; 64];
    let e = FrameIo::recv(&tap, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // The interface exists while the tap is open.
    let sys = format!("/sys/class/net/{}", tap.if_name());
    assert!(std::path::Path::new(&sys).exists());
    drop(tap);
    assert!(!std::path::Path::new(&sys).exists(), "non-persistent");
}

#[test]
fn from_fd_accepts_an_inherited_tap() {
    let test = "from_fd_accepts_an_inherited_tap";
    let Some(tap) = tap_or_skip(test) else {
        return;
    };
    // A duplicate stands for a descriptor inherited from the parent.
    let dup = tap.fd.try_clone().unwrap();
    let raw = dup.as_raw_fd();
    let t2 = Tap::from_fd(dup).unwrap();
    assert_eq!(t2.if_name(), tap.if_name());
    assert_eq!(t2.vnet_hdr_len().unwrap(), NET_HDR_LEN);
    assert_eq!(t2.as_raw_fd(), raw);

    // A blocking tap without IFF_VNET_HDR (e.g. opened by a tool that
    // forgot it): refused, naming the fd, the interface and the flag.
    let (fd, name) = raw_tun(IFF_TAP | IFF_NO_PI).unwrap();
    let raw = fd.as_raw_fd();
    let e = Tap::from_fd(fd).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TapError::BadFlags { .. }), "{msg}");
    assert!(msg.contains(&format!("fd {raw}")), "{msg}");
    assert!(msg.contains(&name), "{msg}");
    assert!(msg.contains("IFF_VNET_HDR"), "{msg}");

    // IFF_NO_PI shares its bit with IFF_NOFILTER, which TUNGETIFF reports
    // set even for a descriptor attached without IFF_NO_PI: it cannot be
    // checked (documented on from_fd).
    let (fd, _) = raw_tun(IFF_TAP | IFF_VNET_HDR).unwrap();
    assert_eq!(flags_of(fd.as_raw_fd()) & IFF_NO_PI, IFF_NO_PI);

    let (fd, _) = raw_tun(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR).unwrap();
    assert!(Tap::from_fd(fd).unwrap_err().to_string().contains("TUN"));
}

#[test]
fn from_fd_rejects_descriptors_that_are_not_taps() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let raw = r.as_raw_fd();
    let e = Tap::from_fd(r).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TapError::NotTap { fd, .. } if fd == raw),
        "{msg}"
    );
    assert!(msg.contains(&format!("fd {raw}")), "{msg}");
    assert!(msg.contains("not a tap device"), "{msg}");
    assert!(msg.contains("TUNGETIFF"), "{msg}");

    let null = OwnedFd::from(File::open("/dev/null").unwrap());
    assert!(matches!(Tap::from_fd(null), Err(TapError::NotTap { .. })));

    // /dev/net/tun opened but never attached to an interface.
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
    {
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(f)),
            Err(TapError::NotTap { .. })
        ));
    }
}

/// A packet socket on interface `ifindex`, for TEST_ETHERTYPE frames.
fn packet_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    let proto = TEST_ETHERTYPE.to_be();
    // SAFETY: plain syscall; checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the given size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Brings interface `name` up (with IPv6 off, so that the kernel sends no
/// frames of its own on it); returns its index.
fn bring_up(name: &str) -> std::io::Result<u32> {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    // SAFETY: plain syscall; checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut ifr = IfReq::zeroed();
    ifr.name[..name.len()].copy_from_slice(name.as_bytes());
    ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)?;
    ifr.flags |= libc::IFF_UP as u16;
    ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr)?;
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(idx)
}

/// Waits up to 5 s for a frame on `fd`.
fn recv_timeout(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 5000) } != 1 {
        return None;
    }
    let mut buf = vec![0u8; 2048];
    // SAFETY: valid buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    buf.truncate(usize::try_from(n).ok()?);
    Some(buf)
}

fn test_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    let test = "frames_cross_a_real_tap_both_ways";
    let Some(tap) = tap_or_skip(test) else {
        return;
    };
    let name = tap.if_name().to_string();
    let ifindex = match bring_up(&name) {
        Ok(i) => i,
        Err(e) => {
            skip::<()>(test, &format!("cannot bring {name} up: {e}"));
            return;
        }
    };
    let host = match packet_socket(ifindex) {
        Ok(s) => s,
        Err(e) => {
            skip::<()>(test, &format!("no packet socket: {e}"));
            return;
        }
    };
    let guest_mac = [0x02, 0, 0, 0, 0x4e, 0x7a];
    let el = EventLoop::new("net-realtap").unwrap();
    let mut net = Net::new(
        NetConfig {
            tap,
            mac: Some(guest_mac),
        },
        el.clone(),
    )
    .unwrap();
    assert_eq!(net.if_name(), name);
    let mem = guest_memory();
    let rx = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), QSIZE);
    let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    net.activate(
        mem.clone(),
        Arc::new(Interrupt::new().unwrap()),
        vec![
            (rx.create_queue().unwrap(), rx_evt.try_clone().unwrap()),
            (tx.create_queue().unwrap(), tx_evt.try_clone().unwrap()),
        ],
    )
    .unwrap();

    // Guest to host: header + frame in one buffer.
    let out = test_frame([0xff; 6], guest_mac, b"from the guest, via virtio-net");
    let mut chain = vec![0u8; NET_HDR_LEN];
    chain.extend_from_slice(&out);
    mem.write_slice(&chain, GuestAddress(0x80_0000)).unwrap();
    write_chain(&tx, 0, &[(0x80_0000, chain.len() as u32, false)]);
    publish(&tx, &[0]);
    tx_evt.write(1).unwrap();
    assert!(wait_for(|| tx.used().idx().load() == 1));
    assert_eq!(recv_timeout(&host).as_deref(), Some(&out[..]));

    // Host to guest.
    for i in 0..4u16 {
        write_chain(&rx, i, &[(0x40_0000 + u64::from(i) * 0x1000, 1526, true)]);
    }
    publish(&rx, &[0, 1, 2, 3]);
    rx_evt.write(1).unwrap();
    let inbound = test_frame(guest_mac, [0x02, 0, 0, 0, 0, 1], &[0x5a; 100]);
    // SAFETY: valid buffer; the socket is bound to the interface.
    let n = unsafe { libc::send(host.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
    assert_eq!(n, inbound.len() as isize);
    let mut found = false;
    assert!(wait_for(|| {
        let used = rx.used().idx().load();
        for u in 0..used {
            let (id, len) = used_elem(&rx, u);
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(0x40_0000 + u64::from(id) * 0x1000))
                .unwrap();
            if buf.get(NET_HDR_LEN..) == Some(&inbound[..]) {
                assert_eq!(&buf[..NET_HDR_LEN], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
                found = true;
            }
        }
        found
    }));
    net.reset();
    assert_eq!(el.registrations(), 0);
    el.stop();
}
