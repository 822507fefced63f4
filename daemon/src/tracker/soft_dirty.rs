//! `soft-dirty`: pagemap bit 55, cleared for the whole process by
//! `clear_refs`, made exact by quiescing the process's writers around every
//! read-and-clear (seed 004's quiesce).

use std::ops::Range;

use cohmem_proto::Mechanism;
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::softdirty::ClearRefs;
use cohmem_sys::uffd::Userfaultfd;
use nix::errno::Errno;

use super::{ProcessViews, TrackError, WriteTracker};

/// `soft-dirty`: the kernel's soft-dirty bits (pagemap bit 55), cleared for
/// the whole process by `clear_refs`. Exact only with the process's writers
/// quiesced around read-and-clear, so every harvest is one mm-wide cycle:
/// write-protect every view of the process through its synchronous uffd
/// (writers now wait in a fault, parked), read the bits of every view,
/// clear them, unprotect, wake the parked writers. Bits read for views other
/// than the one being harvested are kept in a per-view pending set until
/// that view's own harvest (no cross-BO locking).
pub struct SoftDirtyTracker {
    uffd: Userfaultfd,
    pagemap: PagemapFile,
    clear_refs: std::sync::Mutex<ClearRefs>,
    mm: std::sync::OnceLock<std::sync::Weak<dyn ProcessViews>>,
    /// Held for a whole cycle; faults arriving meanwhile are parked.
    cycle: std::sync::Mutex<()>,
    parking: std::sync::atomic::AtomicBool,
    parked: std::sync::Mutex<Vec<u64>>,
    /// View start address → pages (from the view start) read dirty by
    /// another view's cycle, not yet handed to this view's BO.
    pending: std::sync::Mutex<std::collections::HashMap<u64, Vec<u64>>>,
}

impl SoftDirtyTracker {
    /// Wraps a client's synchronous uffd, pagemap and clear_refs fds.
    pub fn new(uffd: Userfaultfd, pagemap: PagemapFile, clear_refs: ClearRefs) -> Self {
        Self {
            uffd,
            pagemap,
            clear_refs: std::sync::Mutex::new(clear_refs),
            mm: std::sync::OnceLock::new(),
            cycle: std::sync::Mutex::new(()),
            parking: std::sync::atomic::AtomicBool::new(false),
            parked: std::sync::Mutex::new(Vec::new()),
            pending: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One mm-wide quiesced read-and-clear. Returns `range`'s dirty pages
    /// (from `range.start`), including what earlier cycles left pending.
    fn cycle(&self, range: Range<u64>) -> Result<Vec<u64>, TrackError> {
        use std::sync::atomic::Ordering;
        let ps = cohmem_sys::page_size();
        let _one = Self::lock(&self.cycle);
        let mut ranges: Vec<Range<u64>> = self
            .mm
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|mm| mm.view_ranges())
            .unwrap_or_default();
        if !ranges.contains(&range) {
            ranges.push(range.clone());
        }
        self.parking.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        let mut protected = Vec::new();
        // clear_refs below clears the bits of every view of the process, read
        // or not: another view that cannot be protected or read counts as
        // wholly written (its own harvest could no longer see its writes).
        let whole = |r: &Range<u64>| (r.start, (0..(r.end - r.start) / ps).collect::<Vec<u64>>());
        let mut read = Vec::new();
        for r in &ranges {
            match self.uffd.write_protect(r.start, r.end - r.start, true) {
                Ok(()) => protected.push(r.clone()),
                Err(e) if *r == range => {
                    result = Err(match e.errno() {
                        Some(Errno::ENOENT) => TrackError::Moved {
                            missing: r.end - r.start,
                        },
                        _ => e.into(),
                    })
                }
                Err(_) => read.push(whole(r)),
            }
        }
        // Writers of every protected view now wait; read, then clear.
        for r in &protected {
            match self.pagemap.soft_dirty_pages(r.clone(), ps) {
                Ok(pages) => read.push((r.start, pages)),
                Err(e) if *r == range => result = Err(e.into()),
                Err(_) => read.push(whole(r)),
            }
        }
        let cleared = Self::lock(&self.clear_refs).clear_soft_dirty();
        for r in &protected {
            let _ = self.uffd.write_protect(r.start, r.end - r.start, false);
        }
        {
            // Under the parked lock, so that no fault is parked after the
            // drain and then forgotten.
            let mut parked = Self::lock(&self.parked);
            self.parking.store(false, Ordering::SeqCst);
            for addr in parked.drain(..) {
                let _ = self.uffd.wake(addr, ps);
            }
        }
        // What was read is kept before any error returns: clear_refs may have
        // cleared those bits already.
        let mut pending = Self::lock(&self.pending);
        for (start, pages) in read {
            let set = pending.entry(start).or_default();
            set.extend(pages);
        }
        result?;
        cleared?;
        let mut mine = pending.remove(&range.start).unwrap_or_default();
        mine.sort_unstable();
        mine.dedup();
        Ok(mine)
    }

    fn to_ranges(base: u64, pages: &[u64], out: &mut Vec<Range<u64>>) {
        let ps = cohmem_sys::page_size();
        for &p in pages {
            let addr = base + p * ps;
            match out.last_mut() {
                Some(last) if last.end == addr => last.end = addr + ps,
                _ => out.push(addr..addr + ps),
            }
        }
    }
}

impl WriteTracker for SoftDirtyTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::SoftDirty
    }

    fn exact(&self) -> bool {
        // Exact because every read-and-clear runs with writers quiesced.
        true
    }

    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError> {
        // The view must be registered with the synchronous uffd (quiesce);
        // a new mapping is soft-dirty whole, so clear it once now.
        self.cycle(range).map(|_| ())
    }

    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        let pages = self.cycle(range.clone())?;
        Self::to_ranges(range.start, &pages, out);
        Ok(())
    }

    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        let ps = cohmem_sys::page_size();
        let mut pages = self.pagemap.soft_dirty_pages(range.clone(), ps)?;
        if let Some(p) = Self::lock(&self.pending).get(&range.start) {
            pages.extend(p.iter().copied());
        }
        pages.sort_unstable();
        pages.dedup();
        Self::to_ranges(range.start, &pages, out);
        Ok(())
    }

    fn protect(&self, range: Range<u64>) -> Result<(), TrackError> {
        // "Re-protect" = clear these pages' bits; the only way is a cycle.
        // The pages of `range` it reads were already recorded (the caller
        // re-protects known-writable pages), so they are not handed on.
        let base = self
            .mm
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|mm| mm.view_range_at(range.start));
        let view_start = base.as_ref().map_or(range.start, |v| v.start);
        let ps = cohmem_sys::page_size();
        let mut pages = self.cycle(base.clone().unwrap_or_else(|| range.clone()))?;
        pages.retain(|p| {
            let addr = view_start + p * ps;
            !(range.start..range.end).contains(&addr)
        });
        if !pages.is_empty() {
            Self::lock(&self.pending).entry(view_start).or_default().extend(pages);
        }
        Ok(())
    }

    fn bind_mm(&self, mm: std::sync::Weak<dyn ProcessViews>) {
        let _ = self.mm.set(mm);
    }

    fn park(&self, addr: u64) -> bool {
        // Protection belongs to the cycles alone: a fault is never resolved
        // by unprotecting (a late resolution could unprotect a page in the
        // middle of the next cycle, between its read and its clear). During
        // a cycle the writer waits for it; otherwise it is only woken, and
        // faults again if its page is still protected.
        let mut parked = Self::lock(&self.parked);
        if self.parking.load(std::sync::atomic::Ordering::SeqCst) {
            parked.push(addr);
        } else {
            let _ = self.uffd.wake(addr, cohmem_sys::page_size());
        }
        true
    }

    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        Some(&self.uffd)
    }

    fn forget(&self, range: Range<u64>) {
        // Bits other views' cycles read for it: a later view at the same
        // address must not inherit them.
        Self::lock(&self.pending).remove(&range.start);
    }

    fn release(&self, range: Range<u64>) {
        let _ = self.uffd.write_protect(range.start, range.end - range.start, false);
        let _ = self.uffd.wake(range.start, range.end - range.start);
    }
}
