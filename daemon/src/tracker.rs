//! Write-tracking mechanisms behind one trait.
//!
//! A [`WriteTracker`] belongs to one client process's mm subscription and observes
//! the views that process maps: `uffd-async`
//! (userfaultfd WP_ASYNC + `PAGEMAP_SCAN`): the MKWRITE-like
//! "protect, then harvest-and-re-protect" cycle of vmwgfx with the kernel
//! doing the fault handling; and `uffd-sync`, where the faults come to the
//! daemon ([`crate::faults`]), the true MKWRITE analogue; `full` (no
//! tracking, everything is written); `explicit` (the client reports its
//! damage); and `soft-dirty` (clear_refs + pagemap bit 55, with the process's
//! writers quiesced around every read-and-clear). A process's mechanism can be
//! switched while its views stay mapped ([`crate::switch`]).

use std::ops::Range;

use cohmem_proto::Mechanism;
use cohmem_sys::pagemap::{PagemapFile, ScanQuery, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC};

/// PAGEMAP_SCAN category: the page is present (`PAGE_IS_PRESENT` in
/// `<linux/fs.h>`; next to PAGE_IS_WRITTEN, 1 << 1).
const PAGE_IS_PRESENT: u64 = 1 << 3;
use cohmem_sys::softdirty::ClearRefs;
use cohmem_sys::uffd::Userfaultfd;
use cohmem_sys::SysError;
use nix::errno::Errno;
use thiserror::Error;

/// Why a tracker operation failed.
#[derive(Debug, Error)]
pub enum TrackError {
    /// The client process is gone (its mm has exited).
    #[error("client process has exited")]
    Gone,
    /// Part of the view is no longer mapped and registered where it was
    /// announced (unmapped, moved or replaced behind the daemon's back).
    #[error("{missing} of the view's bytes are no longer mapped and registered at its address")]
    Moved {
        /// Bytes of the view found missing.
        missing: u64,
    },
    /// The view cannot be tracked as announced.
    #[error("{0}")]
    BadView(String),
    /// A kernel call failed.
    #[error("{0}")]
    Sys(SysError),
}

impl From<SysError> for TrackError {
    fn from(e: SysError) -> Self {
        match e.errno() {
            Some(Errno::ESRCH) => Self::Gone,
            _ => Self::Sys(e),
        }
    }
}

/// Where the tracked process's views are, as a mechanism may ask: soft-dirty
/// clears the bits of the whole process, so each of its cycles reads every
/// view. Implemented by the mm subscription ([`crate::mm`]), which sits
/// above the mechanisms and hands itself over with
/// [`WriteTracker::bind_mm`].
pub trait ProcessViews: Send + Sync {
    /// Address ranges of the process's live views.
    fn view_ranges(&self) -> Vec<Range<u64>>;
    /// The address range of the live view containing `addr`, if any.
    fn view_range_at(&self, addr: u64) -> Option<Range<u64>>;
}

/// Runs a `PAGEMAP_SCAN` whose category mask is 0, so that every page of
/// the range's VMAs is reported: appends the written ranges to `out`, and
/// fails with [`TrackError::Moved`] if part of the range has no VMA (it was
/// unmapped or moved since it was announced).
///
/// The coverage proof and the harvest are the same walk: the kernel walks
/// the range in steps of at most 2 MiB, each under the mmap lock, and each
/// step both harvests its pages and reports which of them are mapped, so no
/// unmap and remap can fall between the two. With `PM_SCAN_CHECK_WPASYNC`
/// in `query`, a step that meets a VMA not registered with a WP_ASYNC
/// userfaultfd (a mapping put back behind the library) fails with EPERM.
fn written_and_covered(
    pagemap: &PagemapFile,
    range: Range<u64>,
    query: ScanQuery,
    out: &mut Vec<Range<u64>>,
) -> Result<(), TrackError> {
    let mut covered = 0;
    pagemap.scan_each(range.clone(), query, |r, categories| {
        covered += r.end - r.start;
        if categories & PAGE_IS_WRITTEN != 0 {
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
    })?;
    let len = range.end - range.start;
    if covered < len {
        return Err(TrackError::Moved { missing: len - covered });
    }
    Ok(())
}

/// Observes writes to the views of one client process.
pub trait WriteTracker: Send + Sync {
    /// Which mechanism this is.
    fn mechanism(&self) -> Mechanism;
    /// Whether collection is exact under concurrent writers.
    fn exact(&self) -> bool;
    /// Checks a newly announced view and write-protects it, so that only
    /// writes from now on are reported.
    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError>;
    /// Appends the address ranges written since they were last protected
    /// and re-protects them (protect before collect: one atomic step per
    /// page). Afterwards the whole range is protected.
    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError>;
    /// Appends the address ranges written since they were last protected,
    /// changing nothing.
    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError>;
    /// Write-protects a range again (the MKWRITE re-protect).
    fn protect(&self, range: Range<u64>) -> Result<(), TrackError>;
    /// Write-protects a whole view, failing with [`TrackError::Moved`] if any
    /// part of it is no longer registered where it was announced. Eager
    /// mechanisms append to `unprotected` the pages they found writable
    /// before protecting them (the known-writable ones, and any the daemon
    /// did not know of: see [`WriteTracker::verify`]).
    fn protect_all(&self, range: Range<u64>, _unprotected: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        self.protect(range)
    }
    /// Proves that `range` is still mapped and registered where it was
    /// announced, leaving the pages of `writable` (known to be unprotected)
    /// as they are. Used by eager mechanisms, whose writes the daemon
    /// otherwise only learns about from faults. A page outside `writable`
    /// found writable anyway (a mapping put back and registered again behind
    /// the library has no protection) may have been written without a
    /// fault: it is appended to `unrecorded`, for the caller to record as
    /// written, and protected.
    fn verify(
        &self,
        _range: Range<u64>,
        _writable: &[Range<u64>],
        _unrecorded: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        Ok(())
    }
    /// Gives the mechanism its subscription (mm-wide mechanisms need the
    /// process's other views).
    fn bind_mm(&self, _mm: std::sync::Weak<dyn ProcessViews>) {}
    /// Called by the fault service for each fault; true when the mechanism
    /// parks it (it wakes the writer itself later).
    fn park(&self, _addr: u64) -> bool {
        false
    }
    /// True when the kernel resolves write faults itself and the daemon
    /// learns of writes only by harvesting (PAGETABLE is then the cheaper
    /// method: [`crate::policy::MethodPolicy::Auto`]).
    fn harvests_only(&self) -> bool {
        false
    }
    /// True when the views of this mechanism may be left unprotected while
    /// a BO's writes are dense ([`crate::policy::DensePolicy`]).
    fn can_pause(&self) -> bool {
        false
    }
    /// Write-unprotects a range (tracking paused for dense writes: every
    /// sync uploads the whole BO meanwhile).
    fn unprotect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }
    /// Lifts tracking from a range the daemon forgets, waking any thread
    /// waiting in a fault there (eager mechanisms; best effort).
    fn release(&self, _range: Range<u64>) {}
    /// True when every sync must treat the whole BO as written (`full`).
    fn whole_bo(&self) -> bool {
        false
    }
    /// True when first writes are delivered as faults and recorded by the
    /// fault service as they happen (the view's writable set is then the
    /// truth, and `harvest`/`peek` are not used to find writes).
    fn eager(&self) -> bool {
        false
    }
    /// The synchronous userfaultfd whose fault messages the fault service
    /// reads, if this mechanism has one.
    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        None
    }
    /// The userfaultfd the process's views are registered with under this
    /// mechanism, if any: a mechanism switch ([`crate::switch`]) moves every
    /// view from the old one to the new one.
    fn registration_uffd(&self) -> Option<&Userfaultfd> {
        self.fault_uffd()
    }
}

/// `uffd-async`: the client's WP_ASYNC userfaultfd and its pagemap fd.
///
/// Every harvest and peek proves the view's coverage in the same walk
/// ([`written_and_covered`]). An earlier version harvested with the
/// kernel's fast path (written pages only) and proved coverage afterwards
/// with `PROCMAP_QUERY`; those are two steps, and a view unmapped when its
/// pages were scanned and mapped again (same file, offset and address, so
/// indistinguishable to any later query) before the proof passed as clean
/// (issue 14, item 9: 3,637 lost writes in 18,717 syncs in
/// `tests/tests/remap_behind_library.rs`). No pair of queries around the
/// fast harvest can tell such a remap apart, so the walk is the proof; it
/// costs more on large clean views (docs/bench).
pub struct UffdAsyncTracker {
    uffd: Userfaultfd,
    pagemap: PagemapFile,
}

impl UffdAsyncTracker {
    /// Wraps the fds a client handed over in ATTACH_MM.
    pub fn new(uffd: Userfaultfd, pagemap: PagemapFile) -> Self {
        Self { uffd, pagemap }
    }
}

impl WriteTracker for UffdAsyncTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::UffdAsync
    }

    fn exact(&self) -> bool {
        true
    }

    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError> {
        // PM_SCAN_CHECK_WPASYNC fails with EPERM unless every VMA in the
        // range is registered with a WP_ASYNC userfaultfd: a view the client
        // did not register (or registered with a sync uffd) is refused here
        // instead of silently reporting nothing.
        let check = ScanQuery {
            flags: PM_SCAN_CHECK_WPASYNC,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
        };
        let mut scratch = Vec::new();
        match self.pagemap.scan(range.clone(), check, &mut scratch) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(Errno::EPERM) => {
                return Err(TrackError::BadView(format!(
                    "range {:#x}..{:#x} is not registered with a WP_ASYNC userfaultfd of this process",
                    range.start, range.end
                )))
            }
            Err(e) => return Err(e.into()),
        }
        match self.uffd.write_protect(range.start, range.end - range.start, true) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENOENT) || e.errno() == Some(Errno::EINVAL) => Err(TrackError::BadView(
                format!("cannot write-protect {:#x}..{:#x}: {e}", range.start, range.end),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        // A part of the range that is missing was unmapped or moved, and can
        // never be proven clean again: one walk harvests the written pages
        // and reports every other page of the range, so the proof and the
        // harvest see the same page tables.
        written_and_covered(&self.pagemap, range, ScanQuery::HARVEST_ALL, out)
    }

    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        // Like harvest, proves the view is still there in the same walk.
        let every_page = ScanQuery {
            flags: PM_SCAN_CHECK_WPASYNC,
            category_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        written_and_covered(&self.pagemap, range, every_page, out)
    }

    fn protect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.uffd.write_protect(range.start, range.end - range.start, true)?;
        Ok(())
    }

    fn can_pause(&self) -> bool {
        true
    }

    fn harvests_only(&self) -> bool {
        true
    }

    fn unprotect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.uffd.write_protect(range.start, range.end - range.start, false)?;
        Ok(())
    }

    fn registration_uffd(&self) -> Option<&Userfaultfd> {
        Some(&self.uffd)
    }
}

/// `uffd-sync`: write-protect faults are delivered to the daemon's fault
/// service, which records the page and unprotects it in one step under the
/// BO's lock (spec item 17c) — vmwgfx's MKWRITE, with the client's thread
/// waiting in the kernel meanwhile.
pub struct UffdSyncTracker {
    uffd: Userfaultfd,
    /// The client's pagemap, when it sent one: used to prove a view is still
    /// mapped where it was announced (write-protecting an empty range
    /// succeeds, so the uffd alone cannot tell).
    pagemap: Option<PagemapFile>,
}

impl UffdSyncTracker {
    /// Wraps the synchronous uffd (and, if the client sent it, its pagemap).
    pub fn new(uffd: Userfaultfd, pagemap: Option<PagemapFile>) -> Self {
        Self { uffd, pagemap }
    }
}

impl UffdSyncTracker {
    /// Write-protects `range`; ENOENT (part of it is not a registered
    /// mapping: unmapped, moved or replaced) becomes [`TrackError::Moved`].
    fn protect_checked(&self, range: Range<u64>) -> Result<(), TrackError> {
        match self.uffd.write_protect(range.start, range.end - range.start, true) {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Err(TrackError::Moved {
                missing: range.end - range.start,
            }),
            other => Ok(other?),
        }
    }

    /// Write-protects `range` except the pages of `keep` (sorted, disjoint),
    /// and appends to `found` every page of `range` that may have been
    /// written without the daemon seeing a fault: the pages that were
    /// writable before the protect (the kernel's PAGE_IS_WRITTEN: present
    /// and not write-protected), and the pages that became present during
    /// it (a page neither present nor protected, as in a mapping registered
    /// again behind the library, can be written between the look and the
    /// protect). Pages of `keep` are reported too when `report_keep`.
    /// Holes (moved with mremap, or unmapped) show in the closing walk:
    /// every page of a mapped range is reported, a hole is not.
    ///
    /// Without a pagemap (the client sent none) nothing is found and holes
    /// are not detected (see the README).
    fn protect_observed(
        &self,
        range: Range<u64>,
        keep: &[Range<u64>],
        report_keep: bool,
        found: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        let Some(pagemap) = &self.pagemap else {
            return self.protect_gaps(range, keep);
        };
        let look = ScanQuery {
            flags: 0,
            category_mask: 0,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
        };
        let (mut writable, mut present) = (Vec::new(), Vec::new());
        pagemap.scan_each(range.clone(), look, |r, categories| {
            if categories & PAGE_IS_WRITTEN != 0 {
                push_merged(&mut writable, r.clone());
            }
            if categories & PAGE_IS_PRESENT != 0 {
                push_merged(&mut present, r);
            }
        })?;
        self.protect_gaps(range.clone(), keep)?;
        let mut covered = 0;
        let mut appeared = Vec::new();
        let mut before = present.iter().peekable();
        pagemap.scan_each(range.clone(), look, |r, categories| {
            covered += r.end - r.start;
            if categories & PAGE_IS_PRESENT != 0 {
                // The parts of `r` that were not present before.
                let mut at = r.start;
                while let Some(p) = before.peek() {
                    if p.end <= at {
                        before.next();
                        continue;
                    }
                    if p.start >= r.end {
                        break;
                    }
                    if p.start > at {
                        push_merged(&mut appeared, at..p.start);
                    }
                    at = at.max(p.end);
                    if p.end >= r.end {
                        break;
                    }
                    before.next();
                }
                if at < r.end {
                    push_merged(&mut appeared, at..r.end);
                }
            }
        })?;
        let len = range.end - range.start;
        if covered < len {
            return Err(TrackError::Moved { missing: len - covered });
        }
        let mut all: Vec<Range<u64>> = writable.into_iter().chain(appeared).collect();
        all.sort_unstable_by_key(|r| r.start);
        for r in all {
            if report_keep {
                push_merged(found, r);
            } else {
                subtract(r, keep, found);
            }
        }
        Ok(())
    }

    /// Write-protects the parts of `range` outside `keep` (sorted); ENOENT
    /// (part of it is not a registered mapping: unmapped, moved or
    /// replaced) becomes [`TrackError::Moved`].
    fn protect_gaps(&self, range: Range<u64>, keep: &[Range<u64>]) -> Result<(), TrackError> {
        let mut gaps = Vec::new();
        subtract(range, keep, &mut gaps);
        for g in gaps {
            self.protect_checked(g)?;
        }
        Ok(())
    }
}

/// Appends `r` to `out`, merged with the last range if adjacent or
/// overlapping (`out` sorted, `r` not before its last range's start).
fn push_merged(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}

/// Appends the parts of `r` outside `holes` (sorted, disjoint) to `out`.
fn subtract(r: Range<u64>, holes: &[Range<u64>], out: &mut Vec<Range<u64>>) {
    let mut at = r.start;
    for h in holes {
        if h.end <= at {
            continue;
        }
        if h.start >= r.end {
            break;
        }
        if h.start > at {
            push_merged(out, at..h.start);
        }
        at = at.max(h.end);
    }
    if at < r.end {
        push_merged(out, at..r.end);
    }
}

impl WriteTracker for UffdSyncTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::UffdSync
    }

    fn exact(&self) -> bool {
        true
    }

    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError> {
        match self.uffd.write_protect(range.start, range.end - range.start, true) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENOENT) || e.errno() == Some(Errno::EINVAL) => {
                Err(TrackError::BadView(format!(
                    "range {:#x}..{:#x} is not registered with this process's synchronous userfaultfd: {e}",
                    range.start, range.end
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn harvest(&self, range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        // Writes were delivered as faults; only the protection is restored.
        self.protect(range)
    }

    fn protect_all(&self, range: Range<u64>, unprotected: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        self.protect_observed(range, &[], true, unprotected)
    }

    fn verify(
        &self,
        range: Range<u64>,
        writable: &[Range<u64>],
        unrecorded: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        // Re-protect what should be protected already: no change, except
        // where a page was writable unknown to the daemon (reported), and
        // ENOENT where the range is no longer registered. Re-protecting
        // such a page silently would hide its writes for good (issue 14,
        // suspicion d: tests/tests/suspicion_reregistered_view.rs).
        self.protect_observed(range, writable, false, unrecorded)
    }

    fn peek(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn protect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.uffd.write_protect(range.start, range.end - range.start, true)?;
        Ok(())
    }

    fn eager(&self) -> bool {
        true
    }

    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        Some(&self.uffd)
    }

    fn release(&self, range: Range<u64>) {
        let _ = self.uffd.write_protect(range.start, range.end - range.start, false);
        let _ = self.uffd.wake(range.start, range.end - range.start);
    }
}

/// `full`: no tracking at all; every scan finds the whole BO written, so
/// every sync uploads everything (what a user without tracking does).
pub struct FullTracker;

impl WriteTracker for FullTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Full
    }

    fn exact(&self) -> bool {
        // Never under-reports; trivially "exact" in the no-lost-write sense.
        true
    }

    fn attach_view(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        out.push(range);
        Ok(())
    }

    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        out.push(range);
        Ok(())
    }

    fn protect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn whole_bo(&self) -> bool {
        true
    }
}

/// `explicit`: no tracking; the client reports its damage with DAMAGE
/// requests (like Wayland damage), which go straight into the bitmap.
pub struct ExplicitTracker;

impl WriteTracker for ExplicitTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Explicit
    }

    fn exact(&self) -> bool {
        // Exactly as exact as the client's reports.
        false
    }

    fn attach_view(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }

    fn harvest(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn peek(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn protect(&self, _range: Range<u64>) -> Result<(), TrackError> {
        Ok(())
    }
}

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

    fn release(&self, range: Range<u64>) {
        let _ = self.uffd.write_protect(range.start, range.end - range.start, false);
        let _ = self.uffd.wake(range.start, range.end - range.start);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use cohmem_sys::mapping::SharedMapping;
    use cohmem_sys::memfd::Memfd;
    use cohmem_sys::uffd::{features, UffdFlavor};

    use super::*;

    /// A WP_ASYNC-registered memfd mapping of this process and its tracker.
    fn tracked(pages: u64) -> Option<(Memfd, SharedMapping, UffdAsyncTracker)> {
        let ps = cohmem_sys::page_size();
        let (uffd, _) = Userfaultfd::open(
            UffdFlavor::UserModeOnly,
            features::WP_ASYNC | features::WP_UNPOPULATED,
            features::WP_ASYNC,
        )
        .ok()?;
        let m = Memfd::create_sealed("t", pages * ps).unwrap();
        let map = SharedMapping::map(m.as_fd(), pages * ps, 0, true).unwrap();
        uffd.register_wp(map.addr(), pages * ps).unwrap();
        let t = UffdAsyncTracker::new(uffd, PagemapFile::open_self().unwrap());
        t.attach_view(map.addr()..map.addr() + pages * ps).unwrap();
        Some((m, map, t))
    }

    /// The harvest finds the written pages, reports a hole punched into the
    /// view as `Moved` with its size, and refuses a mapping put back into
    /// the hole that is not registered with the userfaultfd (never clean).
    #[test]
    fn harvest_finds_writes_holes_and_unregistered_remaps() {
        let ps = cohmem_sys::page_size();
        let Some((m, map, t)) = tracked(64) else {
            eprintln!("skipping: no WP_ASYNC here");
            return;
        };
        let (base, len) = (map.addr(), 64 * ps);
        map.write_u64((3 * ps) as usize, 1).unwrap();
        map.write_u64((40 * ps) as usize, 1).unwrap();
        let mut out = Vec::new();
        t.peek(base..base + len, &mut out).unwrap();
        assert_eq!(out, vec![base + 3 * ps..base + 4 * ps, base + 40 * ps..base + 41 * ps]);
        out.clear();
        t.harvest(base..base + len, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        out.clear();
        t.harvest(base..base + len, &mut out).unwrap();
        assert!(out.is_empty(), "the harvest re-protected what it found");
        let hole = std::ptr::NonNull::new((base + 10 * ps) as *mut libc::c_void).unwrap();
        // SAFETY: pages 10..14 of our own mapping, which nothing else uses.
        unsafe { nix::sys::mman::munmap(hole, (4 * ps) as usize) }.unwrap();
        match t.harvest(base..base + len, &mut out) {
            Err(TrackError::Moved { missing }) => assert_eq!(missing, 4 * ps),
            other => panic!("a hole went unnoticed: {other:?}"),
        }
        assert!(matches!(
            t.peek(base..base + len, &mut out),
            Err(TrackError::Moved { .. })
        ));
        // SAFETY: maps the memfd back into the hole just made (NOREPLACE:
        // fails rather than replace anything that appeared there).
        let again = unsafe {
            nix::sys::mman::mmap(
                std::num::NonZeroUsize::new(hole.as_ptr() as usize),
                std::num::NonZeroUsize::new((4 * ps) as usize).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED | nix::sys::mman::MapFlags::MAP_FIXED_NOREPLACE,
                m.as_fd(),
                (10 * ps) as i64,
            )
        }
        .unwrap();
        assert_eq!(again, hole);
        assert!(
            t.harvest(base..base + len, &mut out).is_err(),
            "an unregistered mapping in the view passed the harvest"
        );
        assert!(t.peek(base..base + len, &mut out).is_err());
    }
}
