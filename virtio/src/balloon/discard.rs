//! Giving guest pages back to the host: the guest-physical pages a balloon
//! request names are checked against the RAM the guest may give back,
//! coalesced into runs and discarded with one `madvise` per run.
//!
//! Private RAM (an anonymous `MAP_PRIVATE` mapping) is discarded with
//! `MADV_DONTNEED`: the host frees the pages and the guest reads zeros the
//! next time it touches them. Shared RAM (`-machine mem-share=on`, a memfd
//! mapped `MAP_SHARED`) needs `MADV_REMOVE`, which punches a hole in the
//! file: `MADV_DONTNEED` would only drop this process's page table entries
//! and leave the memory allocated in the memfd.

use address_space::GuestMemoryMmap;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

use super::VIRTIO_BALLOON_PFN_SHIFT;

/// Size of a balloon page (4 KiB, whatever the guest's page size).
pub(crate) const BALLOON_PAGE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;

/// What one discard request achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Bytes given back to the host.
    pub discarded: u64,
    /// Bytes refused: outside the usable RAM, or `madvise` failed.
    pub refused: u64,
}

/// Discards guest pages inside the usable RAM ranges only.
pub(crate) struct Discarder {
    mem: GuestMemoryMmap,
    /// Usable RAM as sorted, non-overlapping `(start, end)` pairs.
    usable: Vec<(u64, u64)>,
}

impl Discarder {
    /// `usable` lists `(start, length)` ranges of guest RAM the guest may
    /// give back (its e820 RAM); they are sorted and clipped to whole pages
    /// here. Pages outside them, or outside `mem`, are always refused.
    pub fn new(mem: GuestMemoryMmap, usable: &[(u64, u64)]) -> Self {
        let mut ranges: Vec<(u64, u64)> = usable
            .iter()
            .filter_map(|&(start, len)| {
                let end = start.checked_add(len)?;
                let start = start.checked_next_multiple_of(BALLOON_PAGE)?;
                let end = end - end % BALLOON_PAGE;
                (start < end).then_some((start, end))
            })
            .collect();
        ranges.sort_unstable();
        Discarder {
            mem,
            usable: ranges,
        }
    }

    /// Whether the page at `gpa` (page aligned) lies entirely in usable RAM.
    fn page_usable(&self, gpa: u64) -> bool {
        let i = self.usable.partition_point(|&(start, _)| start <= gpa);
        i > 0 && gpa + BALLOON_PAGE <= self.usable[i - 1].1
    }

    /// Discards the 4 KiB pages with the given page frame numbers (any
    /// order, repeats allowed). Contiguous pages are discarded together.
    pub fn discard_pfns(&self, pfns: &[u32]) -> Outcome {
        let mut out = Outcome::default();
        let mut pages: Vec<u64> = Vec::with_capacity(pfns.len());
        for &pfn in pfns {
            let gpa = u64::from(pfn) << VIRTIO_BALLOON_PFN_SHIFT;
            if self.page_usable(gpa) {
                pages.push(gpa);
            } else {
                out.refused += BALLOON_PAGE;
            }
        }
        for (start, end) in coalesce(pages) {
            self.discard_run(start, end, &mut out);
        }
        out
    }

    /// Discards the whole pages of `[addr, addr + len)` that lie in usable
    /// RAM (a free page report); the rest is refused.
    pub fn discard_range(&self, addr: u64, len: u64) -> Outcome {
        let mut out = Outcome::default();
        let Some(end) = addr.checked_add(len) else {
            out.refused = len;
            return out;
        };
        let mut covered = 0;
        for &(start, stop) in &self.usable {
            let (lo, hi) = (addr.max(start), end.min(stop));
            if lo >= hi {
                continue;
            }
            let lo_page = lo.next_multiple_of(BALLOON_PAGE);
            let hi_page = hi - hi % BALLOON_PAGE;
            if lo_page < hi_page {
                self.discard_run(lo_page, hi_page, &mut out);
                covered += hi_page - lo_page;
            }
        }
        out.refused += len - covered;
        out
    }

    /// Discards `[start, end)` (page aligned, usable), region by region.
    fn discard_run(&self, start: u64, end: u64, out: &mut Outcome) {
        let mut at = start;
        while at < end {
            let Some(region) = self.mem.find_region(GuestAddress(at)) else {
                out.refused += end - at;
                return;
            };
            let offset = at - region.start_addr().0;
            let len = (end - at).min(region.len() - offset);
            match advise(region, offset, len) {
                Ok(()) => out.discarded += len,
                Err(e) => {
                    log::warn!("virtio-balloon: cannot discard {len:#x} bytes at {at:#x}: {e}");
                    out.refused += len;
                }
            }
            at += len;
        }
    }
}

/// Sorts page addresses and merges neighbours: `(start, end)` runs, each
/// discarded with one `madvise`.
pub(crate) fn coalesce(mut pages: Vec<u64>) -> Vec<(u64, u64)> {
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some((_, end)) if *end == page => *end += BALLOON_PAGE,
            _ => runs.push((page, page + BALLOON_PAGE)),
        }
    }
    runs
}

/// Gives `[offset, offset + len)` of `region` back to the host.
fn advise(region: &GuestRegionMmap<()>, offset: u64, len: u64) -> std::io::Result<()> {
    let advice = if region.flags() & libc::MAP_SHARED != 0 {
        libc::MADV_REMOVE
    } else {
        libc::MADV_DONTNEED
    };
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let len = usize::try_from(len).map_err(|_| std::io::Error::other("length overflows"))?;
    // SAFETY: `host` points into a mapping of `region`, which the caller
    // clipped so that `offset + len` stays inside it; madvise only tells
    // the kernel the guest no longer needs these pages (they read as zero
    // afterwards) and never invalidates the mapping itself.
    let ret = unsafe { libc::madvise(host.cast(), len, advice) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
