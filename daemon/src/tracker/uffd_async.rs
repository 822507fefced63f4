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

use super::map_events::{MapEvents, ProvenViews};
use super::ranges::{merge_runs, subtract};
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

    /// Scans the `parts` of view `range` with `fast` (written pages only,
    /// appended to `out`), then proves the view whole with the events, or
    /// walks the parts with `walk` where they cannot prove it. Returns the
    /// events counted before the scan (what the view is proven up to).
    fn scan_and_prove(
        &self,
        events: &MapEvents,
        range: &Range<u64>,
        parts: &[Range<u64>],
        fast: ScanQuery,
        walk: ScanQuery,
        out: &mut Vec<Range<u64>>,
    ) -> Result<u64, TrackError> {
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
            self.walks.fetch_add(1, Ordering::Relaxed);
            for part in parts {
                written_and_covered(&self.pagemap, part.clone(), walk, out)?;
            }
            merge_runs(out, first);
        }
        Ok(before)
    }
}

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
            let before = self.scan_and_prove(
                events,
                &range,
                &parts,
                ScanQuery::HARVEST_WRITTEN,
                ScanQuery::HARVEST_ALL,
                out,
            )?;
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
        let every_page = ScanQuery {
            flags: PM_SCAN_CHECK_WPASYNC,
            category_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        if let Some(events) = &self.events {
            // A peek re-protects nothing, so it leaves the view's proof as
            // it was.
            let fast = ScanQuery {
                flags: PM_SCAN_CHECK_WPASYNC,
                ..ScanQuery::PEEK_WRITTEN
            };
            return self
                .scan_and_prove(events, &range, std::slice::from_ref(&range), fast, every_page, out)
                .map(|_| ());
        }
        written_and_covered(&self.pagemap, range, every_page, out)
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
    }

    fn release_map_events(&self, wait: Duration) {
        if let Some(events) = &self.events {
            events.read_until_quiet(&self.uffd, wait);
        }
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
    /// With `events`, the uffd delivers mapping changes and the tracker
    /// proves views with them.
    fn tracked(pages: u64, events: bool) -> Option<(Memfd, SharedMapping, UffdAsyncTracker)> {
        let ps = cohmem_sys::page_size();
        let mut wanted = features::WP_ASYNC | features::WP_UNPOPULATED;
        if events {
            wanted |= features::MAP_EVENTS;
        }
        let (uffd, _) = Userfaultfd::open(UffdFlavor::UserModeOnly, wanted, wanted).ok()?;
        let m = Memfd::create_sealed("t", pages * ps).unwrap();
        let map = SharedMapping::map(m.as_fd(), pages * ps, 0, true).unwrap();
        uffd.register_wp(map.addr(), pages * ps).unwrap();
        let pagemap = PagemapFile::open_self().unwrap();
        let t = if events {
            UffdAsyncTracker::with_map_events(uffd, pagemap, Arc::default(), true)
        } else {
            UffdAsyncTracker::new(uffd, pagemap)
        };
        t.attach_view(map.addr()..map.addr() + pages * ps).unwrap();
        Some((m, map, t))
    }

    /// The harvest finds the written pages, reports a hole punched into the
    /// view as `Moved` with its size, and refuses a mapping put back into
    /// the hole that is not registered with the userfaultfd (never clean).
    #[test]
    fn harvest_finds_writes_holes_and_unregistered_remaps() {
        let ps = cohmem_sys::page_size();
        let Some((m, map, t)) = tracked(64, false) else {
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

    /// Unmaps `pages` pages at `addr` on another thread; the munmap waits
    /// for its message to be read. Returns once the change is under way.
    fn unmap_in_background(t: &UffdAsyncTracker, addr: u64, pages: u64) -> std::thread::JoinHandle<()> {
        let len = (pages * cohmem_sys::page_size()) as usize;
        let unmapper = std::thread::spawn(move || {
            let hole = std::ptr::NonNull::new(addr as *mut libc::c_void).unwrap();
            // SAFETY: pages of the test's own mapping, which nothing uses.
            unsafe { nix::sys::mman::munmap(hole, len) }.unwrap();
        });
        let uffd = t.fault_uffd().unwrap();
        while !uffd.mm_changing().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        unmapper
    }

    /// Clean and written views are proven by the events (no walk); a hole
    /// punched while its message waits (`mm_changing`) and one whose message
    /// was read since (the count moved) both make the next harvest walk and
    /// find it. Without the events' check both holes would pass as clean.
    #[test]
    fn events_prove_views_and_send_changed_ones_to_a_walk() {
        let ps = cohmem_sys::page_size();
        let Some((_m, map, t)) = tracked(64, true) else {
            eprintln!("skipping: no WP_ASYNC with mapping-change events here");
            return;
        };
        let (base, len) = (map.addr(), 64 * ps);
        let mut out = Vec::new();
        t.harvest(base..base + len, &mut out).unwrap();
        assert!(out.is_empty());
        map.write_u64((3 * ps) as usize, 1).unwrap();
        t.harvest(base..base + len, &mut out).unwrap();
        assert_eq!(out, vec![base + 3 * ps..base + 4 * ps]);
        assert_eq!(t.walks(), 0, "the events proved the view");

        // A hole whose message waits: mm_changing.
        let unmapper = unmap_in_background(&t, base + 10 * ps, 4);
        out.clear();
        match t.harvest(base..base + len, &mut out) {
            Err(TrackError::Moved { missing }) => assert_eq!(missing, 4 * ps),
            other => panic!("a hole under way went unnoticed: {other:?}"),
        }
        assert_eq!(t.walks(), 1);
        t.drain_map_events();
        unmapper.join().unwrap();

        // A hole whose message was read before the harvest: the count.
        let unmapper = unmap_in_background(&t, base + 30 * ps, 2);
        t.drain_map_events();
        unmapper.join().unwrap();
        assert!(!t.fault_uffd().unwrap().mm_changing().unwrap());
        match t.harvest(base..base + len, &mut out) {
            // Both holes: the first one's harvest failed, so the view's
            // proof still dates from before it.
            Err(TrackError::Moved { missing }) => assert_eq!(missing, 6 * ps),
            other => panic!("a hole whose message was read went unnoticed: {other:?}"),
        }
    }
}
