//! Parsing and execution of virtio-blk requests.
//!
//! A request is a 16-byte header (type, reserved, sector) in device-readable
//! buffers, data, and a final status byte: the last byte of the
//! device-writable buffers. Any framing of those bytes across descriptors is
//! accepted. A request without a usable status byte cannot be answered and
//! puts the device in DEVICE_NEEDS_RESET; any other malformation (buffers
//! outside RAM, short header, out-of-range sectors, odd lengths) completes
//! with VIRTIO_BLK_S_IOERR.
//!
//! Without an image (empty slot, or after a detach) every data request
//! (IN, OUT, FLUSH, DISCARD, WRITE_ZEROES) completes with IOERR and GET_ID
//! returns an all-zero (empty) serial.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::{AlignedBuf, DiskFile, SECTOR_SIZE};
use super::*;
use crate::chain::{descs_in_memory, Chain, Cursor, Desc};
use crate::rate_limiter::{RateLimitConfig, RateLimiter, Throttle};
use crate::worker::QueueSet;

/// Size of the bounce buffer (one transfer step).
const IO_CHUNK: usize = 128 << 10;
/// Requests served per handler call before yielding to other devices.
const BUDGET: usize = 256;

/// Outcome of one request: status and bytes written to the guest.
struct Done {
    status: u8,
    written: u32,
}

impl Done {
    fn status(status: u8) -> Self {
        Done { status, written: 0 }
    }
}

/// The queue-processing side of an active block device.
pub(super) struct BlockWorker {
    qs: QueueSet,
    /// The image; swapped by `Block::attach`/`detach` under the worker lock,
    /// so a request never sees it change midway.
    disk: Option<Arc<DiskFile>>,
    serial: [u8; SERIAL_LEN],
    features: u64,
    buf: AlignedBuf,
    /// I/O limits; unlimited by default.
    limiter: RateLimiter,
    /// Wakes the queue up when the limiter refused a request.
    throttle: Throttle,
    /// A request taken from the queue that the limiter has not yet let
    /// through; served first.
    pending: Option<Chain>,
}

impl BlockWorker {
    /// The live queue state (snapshots).
    pub fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.qs.states()
    }

    pub fn new(
        qs: QueueSet,
        disk: Option<Arc<DiskFile>>,
        serial: [u8; SERIAL_LEN],
        features: u64,
        limits: RateLimitConfig,
        throttle: Throttle,
    ) -> Option<Self> {
        Some(BlockWorker {
            qs,
            disk,
            serial,
            features,
            buf: AlignedBuf::new(IO_CHUNK)?,
            limiter: RateLimiter::new(limits),
            throttle,
            pending: None,
        })
    }

    /// The descriptor of the throttle timer.
    pub fn throttle_fd(&self) -> std::os::fd::RawFd {
        self.throttle.fd()
    }

    /// Replaces the limits (with full buckets); a queue waiting for the old
    /// limits is looked at again at once.
    pub fn set_limits(&mut self, limits: RateLimitConfig) {
        self.limiter = RateLimiter::new(limits);
        if self.throttle.is_armed() {
            self.throttle.arm(std::time::Duration::ZERO);
        }
    }

    /// The throttle timer fired: serves what it held back. If requests are
    /// left for later, the timer is re-armed to come back at once.
    pub fn resume(&mut self) {
        if self.throttle.expired() && self.process() {
            self.throttle.arm(std::time::Duration::ZERO);
        }
    }

    /// Takes the next request the limiter lets through; `None` when the
    /// queue is empty or the limiter said to wait (the timer is then armed).
    fn next_admitted(&mut self) -> Option<Chain> {
        if self.throttle.is_armed() {
            return None;
        }
        let chain = self.pending.take().or_else(|| self.qs.pop(0))?;
        if self.limiter.is_limited() {
            // Data bytes: everything but the 16-byte header and status byte.
            let total: u64 = chain.descs.iter().map(|d| u64::from(d.len)).sum();
            if let Err(wait) = self.limiter.consume(total.saturating_sub(17)) {
                self.pending = Some(chain);
                self.throttle.arm(wait);
                return None;
            }
        }
        Some(chain)
    }

    /// Replaces the image and the GET_ID serial; returns the previous image.
    pub fn set_disk(
        &mut self,
        disk: Option<Arc<DiskFile>>,
        serial: [u8; SERIAL_LEN],
    ) -> Option<Arc<DiskFile>> {
        self.serial = serial;
        std::mem::replace(&mut self.disk, disk)
    }

    /// Serves available requests; true if some were left for later.
    pub fn process(&mut self) -> bool {
        let mut served = 0;
        while served < BUDGET {
            let Some(chain) = self.next_admitted() else {
                break;
            };
            let Some(len) = self.handle(&chain) else {
                break;
            };
            if !self.qs.add_used(0, chain.head, len) {
                break;
            }
            served += 1;
        }
        if served > 0 {
            self.qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !self.qs.is_broken()
    }

    /// Executes one request; returns the used length, or None when the
    /// request cannot even be answered (device marked as needing reset).
    fn handle(&mut self, chain: &Chain) -> Option<u32> {
        let readable: Vec<Desc> = chain
            .descs
            .iter()
            .filter(|d| !d.writable)
            .copied()
            .collect();
        let mut writable: Vec<Desc> = chain.descs.iter().filter(|d| d.writable).copied().collect();
        let status_addr = match writable.last_mut() {
            Some(last) if last.len > 0 => {
                last.len -= 1;
                last.addr
                    .0
                    .checked_add(u64::from(last.len))
                    .map(GuestAddress)
            }
            _ => None,
        };
        let Some(status_addr) = status_addr.filter(|a| self.qs.mem.check_range(*a, 1)) else {
            self.qs
                .fail(&format_args!("request {} has no status byte", chain.head));
            return None;
        };
        let done = if descs_in_memory(&self.qs.mem, &readable)
            && descs_in_memory(&self.qs.mem, &writable)
        {
            self.execute(&readable, &writable)
        } else {
            log::warn!("virtio-blk: request buffers outside guest RAM");
            Done::status(VIRTIO_BLK_S_IOERR)
        };
        if let Err(e) = self.qs.mem.write_obj(done.status, status_addr) {
            self.qs
                .fail(&format_args!("cannot write request status: {e}"));
            return None;
        }
        Some(done.written.saturating_add(1))
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    fn execute(&mut self, readable: &[Desc], writable: &[Desc]) -> Done {
        let mem = self.qs.mem.clone();
        let mut reader = Cursor::new(&mem, readable);
        let mut header = [0u8; 16];
        if !matches!(reader.read(&mut header), Ok(16)) {
            log::warn!("virtio-blk: request header too short");
            return Done::status(VIRTIO_BLK_S_IOERR);
        }
        let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let mut writer = Cursor::new(&mem, writable);
        let needs_disk = matches!(
            req_type,
            VIRTIO_BLK_T_IN
                | VIRTIO_BLK_T_OUT
                | VIRTIO_BLK_T_FLUSH
                | VIRTIO_BLK_T_DISCARD
                | VIRTIO_BLK_T_WRITE_ZEROES
        );
        // One reference count per request; the slot may be empty.
        let disk = match self.disk.clone() {
            Some(d) => d,
            None if needs_disk => {
                log::debug!("virtio-blk: request type {req_type} on an empty slot");
                return Done::status(VIRTIO_BLK_S_IOERR);
            }
            None => {
                return match req_type {
                    VIRTIO_BLK_T_GET_ID => self.get_id(&mut writer),
                    _ => Done::status(VIRTIO_BLK_S_UNSUPP),
                }
            }
        };
        let result = match req_type {
            VIRTIO_BLK_T_IN => self.read(&disk, sector, &mut writer),
            VIRTIO_BLK_T_OUT => self.write(&disk, sector, &mut reader),
            VIRTIO_BLK_T_FLUSH => disk
                .flush()
                .map(|()| Done::status(VIRTIO_BLK_S_OK))
                .map_err(|e| format!("flush: {e}")),
            VIRTIO_BLK_T_GET_ID => Ok(self.get_id(&mut writer)),
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard_or_zero(&disk, req_type, &mut reader)
            }
            other => {
                log::debug!("virtio-blk: unsupported request type {other}");
                Ok(Done::status(VIRTIO_BLK_S_UNSUPP))
            }
        };
        result.unwrap_or_else(|e| {
            log::warn!("virtio-blk: {}: {e}", disk.path().display());
            Done::status(VIRTIO_BLK_S_IOERR)
        })
    }

    /// Answers GET_ID with the (zero-padded) serial.
    fn get_id(&self, writer: &mut Cursor<'_>) -> Done {
        let n = writer.write(&self.serial).unwrap_or(0);
        Done {
            status: VIRTIO_BLK_S_OK,
            written: n as u32,
        }
    }

    /// Byte offset of `sector` if `[sector, sector + len)` fits the disk
    /// and `len` is whole sectors.
    fn range(disk: &DiskFile, sector: u64, len: u64) -> Result<u64, String> {
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= disk.size()))
            .ok_or_else(|| format!("sector {sector} (+{len} bytes) beyond the disk"))?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(format!("length {len} is not whole sectors"));
        }
        Ok(offset)
    }

    fn read(
        &mut self,
        disk: &DiskFile,
        sector: u64,
        writer: &mut Cursor<'_>,
    ) -> Result<Done, String> {
        let len = writer.remaining();
        let mut offset = Self::range(disk, sector, len)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(IO_CHUNK as u64) as usize;
            let chunk = &mut self.buf[..n];
            disk.read_at(chunk, offset)
                .map_err(|e| format!("read at {offset}: {e}"))?;
            writer
                .write(chunk)
                .map_err(|e| format!("guest memory: {e}"))?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(Done {
            status: VIRTIO_BLK_S_OK,
            written: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }

    fn write(
        &mut self,
        disk: &DiskFile,
        sector: u64,
        reader: &mut Cursor<'_>,
    ) -> Result<Done, String> {
        if disk.read_only() {
            return Err("write to a read-only disk".into());
        }
        let len = reader.remaining();
        let mut offset = Self::range(disk, sector, len)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(IO_CHUNK as u64) as usize;
            let chunk = &mut self.buf[..n];
            match reader.read(chunk) {
                Ok(got) if got == n => {}
                Ok(_) => return Err("short guest buffer".into()),
                Err(e) => return Err(format!("guest memory: {e}")),
            }
            disk.write_at(chunk, offset)
                .map_err(|e| format!("write at {offset}: {e}"))?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(Done::status(VIRTIO_BLK_S_OK))
    }

    fn discard_or_zero(
        &mut self,
        disk: &DiskFile,
        req_type: u32,
        reader: &mut Cursor<'_>,
    ) -> Result<Done, String> {
        let zero = req_type == VIRTIO_BLK_T_WRITE_ZEROES;
        let feature = if zero {
            VIRTIO_BLK_F_WRITE_ZEROES
        } else {
            VIRTIO_BLK_F_DISCARD
        };
        if !self.negotiated(feature) {
            return Ok(Done::status(VIRTIO_BLK_S_UNSUPP));
        }
        if disk.read_only() {
            return Err("discard/write-zeroes on a read-only disk".into());
        }
        let len = reader.remaining();
        let count = len / 16;
        if !len.is_multiple_of(16) || count == 0 || count > u64::from(MAX_DISCARD_SEGMENTS) {
            return Err(format!("bad discard/write-zeroes payload of {len} bytes"));
        }
        let max = if zero {
            MAX_WRITE_ZEROES_SECTORS
        } else {
            MAX_DISCARD_SECTORS
        };
        for _ in 0..count {
            let mut seg = [0u8; 16];
            match reader.read(&mut seg) {
                Ok(16) => {}
                _ => return Err("unreadable segment".into()),
            }
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&seg[0..8]);
            let sector = u64::from_le_bytes(sector);
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            let allowed = if zero {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Ok(Done::status(VIRTIO_BLK_S_UNSUPP));
            }
            if num > max {
                return Err(format!("segment of {num} sectors exceeds {max}"));
            }
            let bytes = u64::from(num) * SECTOR_SIZE;
            let offset = Self::range(disk, sector, bytes)?;
            let r = if zero {
                let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                disk.write_zeroes(offset, bytes, unmap)
            } else {
                disk.discard(offset, bytes)
            };
            r.map_err(|e| format!("discard/write-zeroes at {offset}: {e}"))?;
        }
        Ok(Done::status(VIRTIO_BLK_S_OK))
    }
}
