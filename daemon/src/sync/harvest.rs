//! vmwgfx's clean-and-record (spec §6.2) on a client view: harvest the
//! pages written since they were last protected and write-protect them
//! again, atomically per page (seed 001). A view that cannot be scanned
//! (its process exited, or the scan failed) is unprovable and marked dirty
//! whole (DESIGN.md §5.3: what cannot be proven clean is dirty). The
//! PAGETABLE harvest of non-eager views may run outside the state lock
//! ([`SyncEngine::harvest_raw`], seed 000's sleepable read section).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Harvested, SyncEngine};
use crate::bo::{lock, Bo, BoState, View};
use crate::tracker::TrackError;

impl SyncEngine<'_> {
    /// Converts client address ranges of `view` into BO page ranges.
    pub(super) fn bo_pages(bo: &Bo, view: &View, ranges: &[Range<u64>]) -> Vec<Range<u64>> {
        let ps = bo.page_size;
        ranges
            .iter()
            .filter_map(|r| {
                let s = r.start.max(view.addr);
                let e = r.end.min(view.addr + view.len);
                (s < e).then(|| {
                    let first = (s - view.addr + view.bo_offset) / ps;
                    first..(e - view.addr + view.bo_offset).div_ceil(ps)
                })
            })
            .collect()
    }

    /// The address ranges of `view` mapping sorted BO page ranges `pages`.
    pub(super) fn view_addresses(bo: &Bo, view: &View, pages: &[Range<u64>]) -> Vec<Range<u64>> {
        let ps = bo.page_size;
        let vp = view.bo_pages(ps);
        let addr = |p: u64| view.addr + p * ps - view.bo_offset;
        pages
            .iter()
            .filter_map(|r| {
                let (s, e) = (r.start.max(vp.start), r.end.min(vp.end));
                (s < e).then(|| addr(s)..addr(e))
            })
            .collect()
    }

    /// Marks a view that cannot be scanned (its process exited, or the scan
    /// failed) dirty whole: what cannot be proven clean is dirty.
    pub(super) fn unprovable(&self, bo: &Bo, st: &mut BoState, view: &View, err: &TrackError) {
        match err {
            TrackError::Gone => view.dead.store(true, Ordering::Release),
            // Logged once; the view stays dirty whole at every scan from now on.
            _ if view.broken.swap(true, Ordering::Relaxed) => {}
            _ => crate::limited!(
                warn,
                "view cannot be scanned",
                bo.id,
                bo = bo.id,
                view = view.id,
                error = %err,
                "view cannot be scanned; it is treated as written whole at every scan"
            ),
        }
        let pages = view.bo_pages(bo.page_size);
        let before = st.tracker.as_ref().map(|t| t.dirty.dirty_pages());
        st.record_written(pages);
        if let (Some(before), Some(t)) = (before, st.tracker.as_ref()) {
            let extra = t.dirty.dirty_pages() - before;
            bo.counters.extra_pages.fetch_add(extra, Ordering::Relaxed);
        }
    }

    /// Harvest-and-re-protect of one view (vmwgfx clean-and-record). Returns
    /// the BO pages found written since they were last protected, and the
    /// pages whose emulated dirty bit was left set by MKWRITE re-protects
    /// (`stale`); `None` if the view is unprovable (then already marked dirty
    /// whole). Afterwards no page of the view is writable or dirty.
    pub(super) fn harvest_view(&self, bo: &Bo, st: &mut BoState, view: &View) -> Option<(Vec<Range<u64>>, Vec<u64>)> {
        match self.harvest_raw(bo, view, &[]) {
            Ok(found) => Some(found),
            Err(e) => {
                self.unprovable(bo, st, view, &e);
                None
            }
        }
    }

    /// The page-table work of [`SyncEngine::harvest_view`], which needs no
    /// state lock for non-eager mechanisms (seed 000's sleepable read
    /// section: the scan of a large view does not block anyone). BO pages
    /// `skip` (sorted: active hot ranges, `super::hot`) are left as they
    /// are by mechanisms that can (uffd-async).
    pub(super) fn harvest_raw(
        &self,
        bo: &Bo,
        view: &View,
        skip: &[Range<u64>],
    ) -> Result<(Vec<Range<u64>>, Vec<u64>), TrackError> {
        // Held until the tracker answers: the view cannot be detached (and
        // its address given to another mapping) meanwhile.
        let _live = lock(&view.harvest);
        if view.dead.load(Ordering::Acquire) {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut ranges = Vec::new();
        let first = view.bo_offset / bo.page_size;
        let tracker = view.mm.tracker();
        let result = if tracker.eager() {
            // Faults were resolved by the fault service: the writable set is
            // what was written, unless pages became writable behind the
            // daemon (the tracker finds those too). Re-protect the whole view
            // (the fault service cannot interleave: it needs the state lock
            // the caller holds); protecting all of it also proves it is
            // still there.
            self.writable_ranges(bo, view, &mut ranges);
            let mut unprotected = Vec::new();
            let result = tracker.protect_all(view.range(), &mut unprotected);
            self.count_unrecorded(bo, view, &ranges, &unprotected);
            ranges.extend(unprotected);
            result
        } else if skip.is_empty() {
            tracker.harvest(view.range(), &mut ranges)
        } else {
            tracker.harvest_except(view.range(), &Self::view_addresses(bo, view, skip), &mut ranges)
        };
        lock(&view.writable).clear();
        let stale: Vec<u64> = {
            let mut s = lock(&view.stale_dirty);
            let pages = s.ones_in(0..view.len / bo.page_size).map(|p| p + first).collect();
            s.clear();
            pages
        };
        result.map(|()| (Self::bo_pages(bo, view, &ranges), stale))
    }

    /// Records what views harvested outside the lock found; returns the
    /// pages counted per view.
    pub(super) fn apply_harvest(&self, bo: &Bo, st: &mut BoState, harvested: Vec<Harvested>) -> u64 {
        let mut marked = 0;
        for (view, result) in harvested {
            match result {
                Ok((written, stale)) => {
                    let mut pages: Vec<u64> = written.into_iter().flatten().chain(stale).collect();
                    pages.sort_unstable();
                    pages.dedup();
                    marked += pages.len() as u64;
                    // Without a tracker they wait for the next one.
                    pages.into_iter().for_each(|p| st.record_harvested(p));
                }
                Err(e) => {
                    self.unprovable(bo, st, &view, &e);
                    marked += view.len / bo.page_size;
                }
            }
        }
        marked
    }

    /// Counts and logs the pages of `found` (address ranges a tracker found
    /// writable) outside `known` (the view's writable set, sorted): pages
    /// that were writable without the daemon knowing, whose writes no fault
    /// reported. They are recorded as written by the caller.
    pub(super) fn count_unrecorded(&self, bo: &Bo, view: &View, known: &[Range<u64>], found: &[Range<u64>]) {
        let ps = bo.page_size;
        let mut unknown = 0;
        for r in found {
            let mut at = r.start;
            for k in known.iter().filter(|k| k.end > r.start && k.start < r.end) {
                unknown += k.start.saturating_sub(at) / ps;
                at = at.max(k.end);
            }
            unknown += r.end.saturating_sub(at) / ps;
        }
        if unknown > 0 {
            self.counters.unrecorded_writable.fetch_add(unknown, Ordering::Relaxed);
            crate::limited!(
                warn,
                "writable without the daemon knowing",
                bo.id,
                bo = bo.id,
                view = view.id,
                pages = unknown,
                "pages of a view were writable without the daemon knowing (mapped again behind the library?); recorded as written"
            );
        }
    }

    /// Appends the address ranges of the view's writable set to `out`.
    pub(super) fn writable_ranges(&self, bo: &Bo, view: &View, out: &mut Vec<Range<u64>>) {
        let ps = bo.page_size;
        let w = lock(&view.writable);
        for p in w.ones_in(0..view.len / ps) {
            let addr = view.addr + p * ps;
            match out.last_mut() {
                Some(last) if last.end == addr => last.end = addr + ps,
                _ => out.push(addr..addr + ps),
            }
        }
    }

    /// Harvests every view; records what it finds when `record`; returns the
    /// number of pages found, counted per view (spec item 22).
    pub(super) fn harvest_all(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], record: bool) -> u64 {
        let mut marked = 0;
        for view in views {
            let Some((written, stale)) = self.harvest_view(bo, st, view) else {
                // Marked dirty whole: all of it counts as found.
                marked += view.len / bo.page_size;
                continue;
            };
            let mut pages: Vec<u64> = written.into_iter().flatten().chain(stale).collect();
            pages.sort_unstable();
            pages.dedup();
            marked += pages.len() as u64;
            if record {
                // Without a tracker they wait for the next one.
                pages.into_iter().for_each(|p| st.record_harvested(p));
            }
        }
        marked
    }
}
