//! `uffd-async`: the client's WP_ASYNC userfaultfd and `PAGEMAP_SCAN`
//! (Linux ≥ 6.7): vmwgfx's "protect, then harvest-and-re-protect" cycle
//! (seed 001, spec §4.3) with the kernel doing the fault handling. Views
//! are proven whole by the uffd's mapping-change events where the client
//! asked for them ([`super::map_events`]), else by a walk of every page.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohmem_proto::Mechanism;
use cohmem_sys::pagemap::{PagemapFile, ScanQuery, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC};
use cohmem_sys::uffd::Userfaultfd;
use cohmem_sys::SysError;
use nix::errno::Errno;

use super::map_events::{MapEvents, ProvenViews, ViewTable};
use super::ranges::{merge_runs, subtract};
use super::split_protect::{protect_found, split_pays};
use super::{TrackError, WriteTracker};

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

/// `uffd-async`: the client's WP_ASYNC userfaultfd and its pagemap fd.
///
/// Where the client's uffd delivers mapping changes, a harvest is the
/// kernel's fast scan of written pages and the events prove the view
/// ([`MapEvents`]); a view whose proof fails, and every view of a client
/// without them, is proven by a walk.
///
/// Without events, every harvest and peek proves the view's coverage in
/// the same walk ([`written_and_covered`]). An earlier version harvested with the
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
    /// Present when the uffd delivers mapping changes: they must be read
    /// (a change waits for its message), and prove views where trusted.
    events: Option<Arc<MapEvents>>,
    /// The kernel passed the probe and the uffd asked for every mapping
    /// change: the events prove views (otherwise they are only read, and
    /// walks prove every view).
    trusted: bool,
    /// How far each view is proven by them.
    proven: ProvenViews,
    /// Harvests and peeks proven by a walk rather than the events.
    walks: AtomicU64,
    /// Whether each view's last harvest found runs that were cheaper to
    /// re-protect one call each ([`split_pays`]): a view that had many is
    /// harvested by the protecting scan at once rather than read, counted
    /// and scanned again (a view not in the table is split).
    split_next: ViewTable<bool>,
}

impl UffdAsyncTracker {
    /// Wraps the fds a client handed over in ATTACH_MM; proves views by
    /// walks.
    pub fn new(uffd: Userfaultfd, pagemap: PagemapFile) -> Self {
        Self {
            uffd,
            pagemap,
            events: None,
            trusted: false,
            proven: ProvenViews::default(),
            walks: AtomicU64::new(0),
            split_next: ViewTable::default(),
        }
    }

    /// Like [`UffdAsyncTracker::new`], for a uffd with messages that make
    /// the client wait: the fault service must read them
    /// ([`WriteTracker::drain_map_events`]), counting them in `events`
    /// (shared by every tracker of this uffd), which prove views where
    /// `trusted` (the kernel passed the probe, `KernelCaps::map_events`,
    /// and the uffd asked for every mapping change).
    pub fn with_map_events(uffd: Userfaultfd, pagemap: PagemapFile, events: Arc<MapEvents>, trusted: bool) -> Self {
        Self {
            uffd,
            pagemap,
            events: Some(events),
            trusted,
            proven: ProvenViews::default(),
            walks: AtomicU64::new(0),
            split_next: ViewTable::default(),
        }
    }

    /// Harvests and peeks so far that the events could not prove and a walk
    /// did.
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// `UFFDIO_WRITEPROTECT`, which fails with EAGAIN while a mapping change
    /// of the process waits for its message: reads the messages (as the
    /// fault service would; a new tracker's uffd is not read by it until the
    /// switch ends) and tries again, for at most [`QUIET_BOUND`].
    fn write_protect(&self, range: Range<u64>, protect: bool) -> Result<(), SysError> {
        let deadline = Instant::now() + QUIET_BOUND;
        loop {
            match self.uffd.write_protect(range.start, range.end - range.start, protect) {
                Err(e) if e.errno() == Some(Errno::EAGAIN) => {
                    let Some(events) = &self.events else { return Err(e) };
                    // A change that outlasted a whole wait before (a client
                    // that keeps changing its mappings, or a kernel that
                    // left the counter raised): fail at once, the caller
                    // treats the view as written.
                    if events.stuck() || Instant::now() >= deadline {
                        events.set_stuck(true);
                        return Err(e);
                    }
                    events.drain(&self.uffd);
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(()) => {
                    if let Some(events) = &self.events {
                        events.set_stuck(false);
                    }
                    return Ok(());
                }
                other => return other,
            }
        }
    }

    /// Scans the `parts` of view `range` for written pages (appended to
    /// `out`) as `mode` says, then proves the view whole with the events, or
    /// walks the parts where they cannot prove it (a harvest's walk
    /// re-protects in its own pass). Returns the events counted before the
    /// scan (what the view is proven up to).
    fn scan_and_prove(
        &self,
        events: &MapEvents,
        range: &Range<u64>,
        parts: &[Range<u64>],
        mode: ScanMode,
        out: &mut Vec<Range<u64>>,
    ) -> Result<u64, TrackError> {
        let read_only = ScanQuery {
            flags: PM_SCAN_CHECK_WPASYNC,
            ..ScanQuery::PEEK_WRITTEN
        };
        let (fast, walk) = match mode {
            ScanMode::Peek => (read_only, EVERY_PAGE),
            ScanMode::Harvest => (ScanQuery::HARVEST_WRITTEN, ScanQuery::HARVEST_ALL),
            ScanMode::SplitHarvest => (read_only, ScanQuery::HARVEST_ALL),
        };
        let before = events.seen();
        let first = out.len();
        for part in parts {
            self.pagemap.scan(part.clone(), fast, out)?;
        }
        let proven = match self.proven.get(range) {
            Some(last) if self.trusted => !self.uffd.mm_changing()? && events.seen() == last,
            _ => false,
        };
        if !proven {
            // A split harvest's walk re-finds what its scan found (nothing
            // protected it).
            self.walks.fetch_add(1, Ordering::Relaxed);
            for part in parts {
                written_and_covered(&self.pagemap, part.clone(), walk, out)?;
            }
            merge_runs(out, first);
        } else if mode == ScanMode::SplitHarvest {
            protect_found(&self.pagemap, parts, out, first, |run| self.write_protect(run, true))?;
        }
        Ok(before)
    }
}

/// How [`UffdAsyncTracker::scan_and_prove`] scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanMode {
    /// Report written pages, change nothing.
    Peek,
    /// Report written pages and re-protect them in the same scan.
    Harvest,
    /// Report written pages, then re-protect them run by run
    /// ([`super::split_protect`]).
    SplitHarvest,
}

/// A walk that reports every page of the range's VMAs (category mask 0) and
/// changes nothing.
const EVERY_PAGE: ScanQuery = ScanQuery {
    flags: PM_SCAN_CHECK_WPASYNC,
    category_mask: 0,
    return_mask: PAGE_IS_WRITTEN,
};

/// How long a write-protect call waits out a mapping change in flight.
const QUIET_BOUND: Duration = Duration::from_millis(100);

impl WriteTracker for UffdAsyncTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::UffdAsync
    }

    fn exact(&self) -> bool {
        true
    }

    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError> {
        // Changes counted from here on are the ones that can remove a page
        // of the view before its first harvest.
        let before = self.events.as_deref().map(MapEvents::seen);
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
        match self.write_protect(range.clone(), true) {
            Ok(()) => {
                if let Some(before) = before {
                    self.proven.set(&range, before);
                }
                Ok(())
            }
            Err(e) if e.errno() == Some(Errno::ENOENT) || e.errno() == Some(Errno::EINVAL) => Err(TrackError::BadView(
                format!("cannot write-protect {:#x}..{:#x}: {e}", range.start, range.end),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn harvest(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        self.harvest_except(range, &[], out)
    }

    fn harvest_except(
        &self,
        range: Range<u64>,
        skip: &[Range<u64>],
        out: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        let mut parts = Vec::new();
        subtract(range.clone(), skip, &mut parts);
        if let Some(events) = &self.events {
            // The events prove the whole view, skipped parts included.
            let mode = if self.split_next.get(&range).unwrap_or(true) {
                ScanMode::SplitHarvest
            } else {
                ScanMode::Harvest
            };
            let first = out.len();
            let before = self.scan_and_prove(events, &range, &parts, mode, out)?;
            self.split_next.set(&range, split_pays(&out[first..]));
            self.proven.set(&range, before);
            return Ok(());
        }
        // A part of the range that is missing was unmapped or moved, and can
        // never be proven clean again: one walk harvests the written pages
        // and reports every other page of the range, so the proof and the
        // harvest see the same page tables.
        for part in parts {
            written_and_covered(&self.pagemap, part, ScanQuery::HARVEST_ALL, out)?;
        }
        Ok(())
    }

    fn peek(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        // Like harvest, proves the view is still there in the same walk.
        if let Some(events) = &self.events {
            // A peek re-protects nothing, so it leaves the view's proof as
            // it was.
            return self
                .scan_and_prove(events, &range, std::slice::from_ref(&range), ScanMode::Peek, out)
                .map(|_| ());
        }
        written_and_covered(&self.pagemap, range, EVERY_PAGE, out)
    }

    fn protect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.write_protect(range, true)?;
        Ok(())
    }

    fn can_pause(&self) -> bool {
        true
    }

    fn harvests_only(&self) -> bool {
        true
    }

    fn unprotect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.write_protect(range, false)?;
        Ok(())
    }

    fn registration_uffd(&self) -> Option<&Userfaultfd> {
        Some(&self.uffd)
    }

    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        // Only to be read: the kernel resolves the faults, the fault
        // service reads the mapping changes.
        self.events.as_ref().map(|_| &self.uffd)
    }

    fn drain_map_events(&self) -> bool {
        match &self.events {
            Some(events) => {
                events.drain(&self.uffd);
                true
            }
            None => false,
        }
    }

    fn forget(&self, range: Range<u64>) {
        self.proven.forget(&range);
        self.split_next.forget(&range);
    }

    fn release_map_events(&self, wait: Duration) {
        if let Some(events) = &self.events {
            events.read_until_quiet(&self.uffd, wait);
        }
    }
}

#[cfg(test)]
mod tests;
