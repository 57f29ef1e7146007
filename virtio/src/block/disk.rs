//! The host side of a virtio-blk device: a locked image file with optional
//! O_DIRECT access.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use super::lock::{lock_image, LockError};
use super::BlockError;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Alignment used for O_DIRECT transfers (buffer, offset and length).
pub const DIRECT_ALIGN: usize = 4096;

/// A disk image opened (and locked) for a block device.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    /// Set once an O_DIRECT transfer was refused; buffered I/O from then on.
    direct_failed: AtomicBool,
    read_only: bool,
    size: u64,
}

/// Opens an image without blocking (a FIFO would block a plain open).
fn open_image(path: &Path, read_only: bool, extra: libc::c_int) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | extra)
        .open(path)
}

/// Back to blocking I/O once the file is known to be an image.
fn clear_nonblock(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        // SAFETY: as above.
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a non-image file is, for the error message.
fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl DiskFile {
    /// Opens `path`, locks it the way QEMU does (see [`super::lock`]:
    /// shared with other readers when `read_only`, exclusive otherwise)
    /// and, with `direct`, opens a second O_DIRECT handle (falling back to
    /// buffered I/O with a warning where the filesystem refuses it).
    ///
    /// Only regular files and block devices are images: anything else (a
    /// FIFO, a character device, a socket, a directory) is refused. The
    /// open itself never blocks (O_NONBLOCK, then fstat), so a FIFO cannot
    /// hang the caller.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, BlockError> {
        let name = path.display().to_string();
        let file = open_image(path, read_only, 0).map_err(|source| BlockError::Open {
            path: name.clone(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: name.clone(),
            source,
        })?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(BlockError::NotAnImage {
                path: name,
                kind: describe(kind),
            });
        }
        clear_nonblock(&file).map_err(|source| BlockError::Open {
            path: name.clone(),
            source,
        })?;
        match lock_image(&file, read_only) {
            Ok(()) => {}
            Err(LockError::Conflict(perm)) => {
                return Err(BlockError::Locked { path: name, perm });
            }
            Err(LockError::Os(e)) => {
                log::warn!("virtio-blk: cannot lock {name}: {e}; continuing without a lock");
            }
        }
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: name.clone(),
                source,
            })?;
        let direct = if direct {
            // The same inode again (the path could have been replaced).
            match open_image(path, read_only, libc::O_DIRECT).and_then(|f| {
                let m = f.metadata()?;
                if (m.dev(), m.ino()) != (meta.dev(), meta.ino()) {
                    return Err(io::Error::other("the path now names another file"));
                }
                clear_nonblock(&f)?;
                Ok(f)
            }) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::warn!("virtio-blk: {name}: O_DIRECT refused ({e}); using buffered I/O");
                    None
                }
            }
        } else {
            None
        };
        Ok(DiskFile {
            path: path.to_path_buf(),
            file,
            direct,
            direct_failed: AtomicBool::new(false),
            read_only,
            size: size / SECTOR_SIZE * SECTOR_SIZE,
        })
    }

    /// Path of the image.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Usable size in bytes (whole sectors only).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image is opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether an O_DIRECT handle is in use.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.direct_failed.load(Ordering::Relaxed)
    }

    /// The handle to use for a transfer of `buf` at `offset`.
    fn direct_for(&self, ptr: *const u8, len: usize, offset: u64) -> Option<&File> {
        let aligned = (ptr as usize).is_multiple_of(DIRECT_ALIGN)
            && len.is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        if aligned && !self.direct_failed.load(Ordering::Relaxed) {
            self.direct.as_ref()
        } else {
            None
        }
    }

    fn direct_refused(&self, e: &io::Error) -> bool {
        if e.raw_os_error() == Some(libc::EINVAL) {
            if !self.direct_failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "virtio-blk: {}: O_DIRECT transfer refused; using buffered I/O",
                    self.path.display()
                );
            }
            true
        } else {
            false
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(f) = self.direct_for(buf.as_ptr(), buf.len(), offset) {
            match f.read_exact_at(buf, offset) {
                Err(e) if self.direct_refused(&e) => {}
                r => return r,
            }
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if let Some(f) = self.direct_for(buf.as_ptr(), buf.len(), offset) {
            match f.write_all_at(buf, offset) {
                Err(e) if self.direct_refused(&e) => {}
                r => return r,
            }
        }
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Deallocates a range (punch hole); a no-op where unsupported.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// Zeroes a range, deallocating it when `unmap` allows, and writing
    /// zeroes where the filesystem offers no faster way.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if unmap {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match fallocate(&self.file, mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(e),
        }
        let zeroes = vec![0u8; 64 << 10];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!(
                "virtio-blk: {}: final flush failed: {e}",
                self.path.display()
            );
        }
    }
}

/// A zeroed heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` (> 0) zeroed bytes aligned to [`DIRECT_ALIGN`].
    pub fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, DIRECT_ALIGN).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialized bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::temp_dir;

    fn image(len: u64) -> PathBuf {
        let p = temp_dir("disk").join("disk.img");
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn size_is_whole_sectors() {
        let p = image(4096 + 100);
        let d = DiskFile::open(&p, true, false).unwrap();
        assert_eq!(d.size(), 4096);
        assert!(d.read_only());
    }

    #[test]
    fn second_writer_is_refused_with_the_path() {
        let p = image(4096);
        let _first = DiskFile::open(&p, false, false).unwrap();
        let err = DiskFile::open(&p, false, false).unwrap_err();
        assert!(matches!(err, BlockError::Locked { .. }));
        assert!(err.to_string().contains(&p.display().to_string()));
        // Readers are refused too while a writer holds it.
        assert!(DiskFile::open(&p, true, false).is_err());
    }

    #[test]
    fn readers_share_but_exclude_writers() {
        let p = image(4096);
        let _a = DiskFile::open(&p, true, false).unwrap();
        let _b = DiskFile::open(&p, true, false).unwrap();
        assert!(matches!(
            DiskFile::open(&p, false, false),
            Err(BlockError::Locked { .. })
        ));
    }

    #[test]
    fn fifos_and_character_devices_are_refused_without_blocking() {
        let fifo = temp_dir("disk").join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for read_only in [false, true] {
            let err = DiskFile::open(&fifo, read_only, false).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "disk image {} is a FIFO, not a regular file or block device",
                    fifo.display()
                )
            );
        }
        let err = DiskFile::open(Path::new("/dev/zero"), true, false).unwrap_err();
        assert!(err.to_string().contains("is a character device"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let p = temp_dir("disk").join("nope.img");
        let err = DiskFile::open(&p, false, false).unwrap_err();
        assert!(err.to_string().contains("nope.img"));
    }

    #[test]
    fn direct_io_round_trip_or_fallback() {
        let p = image(64 << 10);
        let d = DiskFile::open(&p, false, true).unwrap();
        let mut buf = AlignedBuf::new(8192).unwrap();
        buf.fill(0x5a);
        d.write_at(&buf, 4096).unwrap();
        // Unaligned transfers go through the buffered handle.
        d.write_at(&[1, 2, 3], 10).unwrap();
        let mut back = AlignedBuf::new(8192).unwrap();
        d.read_at(&mut back, 4096).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
        let mut small = [0u8; 3];
        d.read_at(&mut small, 10).unwrap();
        assert_eq!(small, [1, 2, 3]);
        d.flush().unwrap();
    }

    #[test]
    fn zeroes_and_discard_clear_data() {
        let p = image(1 << 20);
        let d = DiskFile::open(&p, false, false).unwrap();
        d.write_at(&[0xff; 8192], 0).unwrap();
        d.write_zeroes(0, 4096, false).unwrap();
        d.write_zeroes(4096, 512, true).unwrap();
        let mut back = [0u8; 8192];
        d.read_at(&mut back, 0).unwrap();
        assert!(back[..4608].iter().all(|&b| b == 0));
        assert!(back[4608..].iter().all(|&b| b == 0xff));
        d.discard(0, 8192).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20, "size kept");
    }

    #[test]
    fn read_only_refuses_writes() {
        let p = image(4096);
        let d = DiskFile::open(&p, true, false).unwrap();
        assert!(d.write_at(&[1], 0).is_err());
        assert!(d.discard(0, 512).is_err());
        assert!(d.write_zeroes(0, 512, false).is_err());
    }
}
