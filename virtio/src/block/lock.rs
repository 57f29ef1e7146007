//! Image locking that QEMU understands.
//!
//! QEMU's `file-posix` driver expresses who uses an image with
//! open-file-description (OFD) byte-range locks, one byte per block-layer
//! permission: byte `100 + n` is read-locked by every user that *holds*
//! permission `n`, byte `200 + n` by every user that does *not share*
//! permission `n` with others. Before it uses an image, a user takes its
//! own bytes and then tests, with a write-lock probe, that nobody holds the
//! "unshared" byte of a permission it needs, nor the "held" byte of a
//! permission it does not share. All locks are shared (read) locks, so
//! compatible users coexist; the probes find conflicts.
//!
//! altovirt takes the permissions QEMU's virtio-blk takes with
//! `share-rw=off`: a writable image holds CONSISTENT_READ and WRITE, a
//! read-only one CONSISTENT_READ; both share everything except WRITE. So
//! two readers coexist, and a writer excludes every other user — QEMU,
//! `qemu-img`/`qemu-io`, or another altovirt — and is excluded by them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// First byte of the "permission held" range.
const PERM_BASE: i64 = 100;
/// First byte of the "permission not shared" range.
const SHARED_BASE: i64 = 200;

/// Block-layer permissions, by bit number (QEMU's `BLK_PERM_*` order).
const PERMS: [(u32, &str); 4] = [
    (0, "consistent read"),
    (1, "write"),
    (2, "write unchanged"),
    (3, "resize"),
];
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;
const RESIZE: u8 = 1 << 3;

/// Why an image could not be locked.
#[derive(Debug)]
pub(super) enum LockError {
    /// Another user holds or excludes a permission this one needs; the
    /// name of that permission.
    Conflict(&'static str),
    /// The filesystem does not do OFD locks (or another OS error).
    Os(io::Error),
}

/// The permissions a user of an image holds and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Perms {
    held: u8,
    shared: u8,
}

impl Perms {
    fn for_image(read_only: bool) -> Perms {
        let held = if read_only {
            CONSISTENT_READ
        } else {
            CONSISTENT_READ | WRITE
        };
        Perms {
            held,
            shared: CONSISTENT_READ | WRITE_UNCHANGED | RESIZE,
        }
    }
}

fn ofd(file: &File, cmd: libc::c_int, kind: libc::c_short, byte: i64) -> io::Result<libc::flock> {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: fcntl on a descriptor we own with a valid flock structure.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether somebody else holds a lock on `byte` (a write-lock probe; the
/// locks of this open file description do not count).
fn taken(file: &File, byte: i64) -> io::Result<bool> {
    let fl = ofd(
        file,
        libc::F_OFD_GETLK,
        libc::F_WRLCK as libc::c_short,
        byte,
    )?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes the lock bytes of an image opened as `file` (read-only or not),
/// then checks that no other user conflicts. The locks belong to the open
/// file description: closing `file` releases them.
pub(super) fn lock_image(file: &File, read_only: bool) -> Result<(), LockError> {
    let perms = Perms::for_image(read_only);
    let read_lock = libc::F_RDLCK as libc::c_short;
    for (bit, _) in PERMS {
        if perms.held & (1 << bit) != 0 {
            ofd(
                file,
                libc::F_OFD_SETLK,
                read_lock,
                PERM_BASE + i64::from(bit),
            )
            .map_err(classify)?;
        }
        if perms.shared & (1 << bit) == 0 {
            ofd(
                file,
                libc::F_OFD_SETLK,
                read_lock,
                SHARED_BASE + i64::from(bit),
            )
            .map_err(classify)?;
        }
    }
    for (bit, name) in PERMS {
        let needed = perms.held & (1 << bit) != 0;
        if needed && taken(file, SHARED_BASE + i64::from(bit)).map_err(LockError::Os)? {
            return Err(LockError::Conflict(name));
        }
        let unshared = perms.shared & (1 << bit) == 0;
        if unshared && taken(file, PERM_BASE + i64::from(bit)).map_err(LockError::Os)? {
            return Err(LockError::Conflict(name));
        }
    }
    Ok(())
}

/// A refused read lock means a writer probe holds the byte: a conflict.
fn classify(e: io::Error) -> LockError {
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => LockError::Conflict("lock byte"),
        _ => LockError::Os(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::temp_dir;

    fn open(path: &std::path::Path, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let p = temp_dir("lock").join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let r1 = open(&p, false);
        lock_image(&r1, true).unwrap();
        let r2 = open(&p, false);
        lock_image(&r2, true).unwrap();
        let w = open(&p, true);
        assert!(matches!(
            lock_image(&w, false),
            Err(LockError::Conflict("write"))
        ));
        drop((r1, r2, w));
        let w = open(&p, true);
        lock_image(&w, false).unwrap();
        let r = open(&p, false);
        assert!(matches!(
            lock_image(&r, true),
            Err(LockError::Conflict("write"))
        ));
    }

    #[test]
    fn the_bytes_are_qemus() {
        let p = temp_dir("lock").join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let w = open(&p, true);
        lock_image(&w, false).unwrap();
        // Another open file description sees read locks on 100, 101
        // (consistent read, write held) and 201 (write not shared) only.
        let other = open(&p, false);
        let held: Vec<i64> = (100..104)
            .chain(200..204)
            .filter(|&b| taken(&other, b).unwrap())
            .collect();
        assert_eq!(held, vec![100, 101, 201]);
    }
}
