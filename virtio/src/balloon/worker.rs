//! The balloon's queues: inflate (pages to discard), deflate (pages the
//! guest takes back: nothing to do without MUST_TELL_HOST) and, when
//! negotiated, free page reporting (ranges of free guest memory to
//! discard). Every buffer goes back to the driver with length 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::chain::{Chain, Cursor, Desc};
use crate::worker::QueueSet;

use super::discard::{Discarder, Outcome, BALLOON_PAGE};

/// Most page frame numbers taken from one inflate or deflate buffer (1 MiB
/// of them, 1 GiB of guest memory; Linux sends at most 256); the rest of a
/// larger buffer is ignored.
pub(crate) const MAX_PFNS_PER_REQUEST: usize = 256 << 10;
/// Page frame numbers read from guest memory at a time.
const PFN_CHUNK: usize = 1024;
/// Requests served per handler call before yielding to other devices.
const BUDGET: usize = 32;

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// Pages the guest gives up.
    Inflate,
    /// Pages the guest takes back.
    Deflate,
    /// Free memory the guest reports.
    Report,
}

/// Counters shared with the device (and read by tests and the machine).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub inflated: AtomicU64,
    pub deflated: AtomicU64,
    pub reported: AtomicU64,
    pub refused: AtomicU64,
}

/// Processes the queues of an active balloon.
pub(crate) struct BalloonWorker {
    pub qs: QueueSet,
    pub kinds: Vec<QueueKind>,
    pub discarder: Discarder,
    pub counters: Arc<Counters>,
}

impl BalloonWorker {
    /// Serves queue `q`; true when work is left over (budget exhausted).
    pub fn process(&mut self, q: usize) -> bool {
        let Some(&kind) = self.kinds.get(q) else {
            return false;
        };
        let mut served = 0;
        while served < BUDGET {
            let Some(chain) = self.qs.pop(q) else {
                break;
            };
            match kind {
                QueueKind::Inflate => self.inflate(&chain),
                QueueKind::Deflate => self.deflate(&chain),
                QueueKind::Report => self.report(&chain),
            }
            if !self.qs.add_used(q, chain.head, 0) {
                break;
            }
            served += 1;
        }
        if served > 0 {
            self.qs.interrupt.signal_used_queue();
        }
        served == BUDGET && !self.qs.is_broken()
    }

    /// Calls `f` with the page frame numbers of the readable buffers of
    /// `chain`, a chunk at a time.
    fn for_each_pfn_chunk(&self, chain: &Chain, mut f: impl FnMut(&[u32])) {
        let readable: Vec<Desc> = chain
            .descs
            .iter()
            .filter(|d| !d.writable)
            .copied()
            .collect();
        let mut cursor = Cursor::new(&self.qs.mem, &readable);
        let total = usize::try_from(cursor.remaining() / 4).unwrap_or(usize::MAX);
        if total > MAX_PFNS_PER_REQUEST {
            log::warn!(
                "virtio-balloon: request of {total} pages; only the first {MAX_PFNS_PER_REQUEST} are used"
            );
        }
        let mut left = total.min(MAX_PFNS_PER_REQUEST);
        let mut bytes = vec![0u8; PFN_CHUNK * 4];
        let mut pfns = Vec::with_capacity(PFN_CHUNK);
        while left > 0 {
            let n = left.min(PFN_CHUNK);
            match cursor.read(&mut bytes[..n * 4]) {
                Ok(got) if got == n * 4 => {}
                Ok(_) | Err(_) => {
                    log::warn!("virtio-balloon: page list outside guest RAM; ignored");
                    return;
                }
            }
            pfns.clear();
            pfns.extend(
                bytes[..n * 4]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            f(&pfns);
            left -= n;
        }
    }

    fn inflate(&mut self, chain: &Chain) {
        let mut total = Outcome::default();
        self.for_each_pfn_chunk(chain, |pfns| {
            let o = self.discarder.discard_pfns(pfns);
            total.discarded += o.discarded;
            total.refused += o.refused;
        });
        self.count(&self.counters.inflated, total);
    }

    fn deflate(&mut self, chain: &Chain) {
        let mut pages = 0u64;
        self.for_each_pfn_chunk(chain, |pfns| pages += pfns.len() as u64);
        self.counters.deflated.fetch_add(pages, Ordering::Relaxed);
    }

    fn report(&mut self, chain: &Chain) {
        let mut total = Outcome::default();
        for d in &chain.descs {
            let o = self.discarder.discard_range(d.addr.0, u64::from(d.len));
            total.discarded += o.discarded;
            total.refused += o.refused;
        }
        if total.discarded > 0 {
            self.counters
                .reported
                .fetch_add(total.discarded, Ordering::Relaxed);
        }
        if total.refused > 0 {
            log::warn!(
                "virtio-balloon: {} reported bytes outside usable RAM refused",
                total.refused
            );
            self.counters
                .refused
                .fetch_add(total.refused.div_ceil(BALLOON_PAGE), Ordering::Relaxed);
        }
    }

    /// Adds an inflate outcome to the counters (in pages).
    fn count(&self, discarded: &AtomicU64, o: Outcome) {
        discarded.fetch_add(o.discarded / BALLOON_PAGE, Ordering::Relaxed);
        if o.refused > 0 {
            log::warn!(
                "virtio-balloon: {} inflated pages outside usable RAM refused",
                o.refused / BALLOON_PAGE
            );
            self.counters
                .refused
                .fetch_add(o.refused / BALLOON_PAGE, Ordering::Relaxed);
        }
    }
}
