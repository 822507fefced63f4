//! `auto`'s hot ranges (issue 19, item 5; state and invariant in
//! `bo::HotPages`): pages a client rewrites at every sync stop
//! write-faulting. uffd-async makes each frame's first store to a page a
//! fault (0.8 µs here); a 1080p animation redrawing a sprite and a ticker
//! takes 99 of them per frame. Pages found written at two syncs in a row,
//! in runs dense enough, become a hot range: left out of the harvests, so
//! once written their page-table entries stay writable (an unprotect alone
//! would not do: on a shared mapping the next store still faults, 0.7 µs,
//! to make the entry writable), and compared with a shadow at every sync,
//! until [`COOL_AFTER`] syncs find a page unchanged.
//!
//! Why no write is lost, step by step (syncs hold `bo.sync_lock`, so only
//! they change the shadow; CLEAR and a released resource drop hot ranges
//! under the state lock alone):
//!
//! * chosen at sync k, a range's BO bytes are copied into the shadow at the
//!   start of sync k+1, before its harvest ([`SyncEngine::hot_prepare`]). A
//!   page that harvest finds clean was not written since sync k's harvest
//!   re-protected it, so the copy is what the GPU holds; a page it finds
//!   written is marked dirty, and its upload refreshes the shadow first
//!   (`SyncEngine::upload`). Only after that harvest is the range active.
//! * the harvests of a sync leave active pages out, and every report of one
//!   is dropped (`BoState::record_harvested`), because a compare follows in
//!   the same sync: it runs after the harvest, so it sees every write
//!   completed before the SYNC (`SharedMapping::differing_blocks` reads
//!   each byte once, so a page that differs throughout is always found).
//!   Harvests outside a sync (SCAN, SNAPSHOT, a view's removal) compare
//!   after them too ([`SyncEngine::hot_compare`]), so a TRANSFER finds the
//!   writes in the bitmap.
//! * a TRANSFER uploads to one resource through the shadow: pages of its
//!   runs that another resource's window covers are marked dirty again, so
//!   the next SYNC sends them there (the compare would find nothing).
//! * cooling write-protects pages first and compares them after, so a write
//!   in between is found by the compare or faults and is harvested.
//! * whenever the BO leaves the conditions (another mechanism, a policy, a
//!   pause, a CLEAR, a READBACK), [`SyncEngine::drop_hot`] protects and
//!   compares every active range the same way. A page left unprotected by a
//!   failed protect is reported written by the next harvest.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};

use super::SyncEngine;
use crate::bo::{Bo, BoState, HotRange, Shadow, View, HOT_CHUNK_PAGES, HOT_WHOLE_SHADOW_BYTES};
use crate::policy::MethodPolicy;

/// Syncs in a row whose compare found a hot range unchanged, after which
/// it is tracked again.
pub const COOL_AFTER: u32 = 3;
/// Pages written at two syncs in a row a candidate range must hold (a
/// compare of a page costs about a fifth of a fault).
pub const MIN_HOT_PAGES: u64 = 4;
/// Clean pages a hot range may span between two rewritten ones (a sprite's
/// rows are 1.9 pages apart in a 1080p XRGB8888 image).
pub const HOT_GAP: u64 = 1;

impl SyncEngine<'_> {
    /// A resource of `bo` was exported writable (`Bo::gpu_shared`): hot
    /// ranges and `auto`'s whole-BO compare end now, exactly (protect, then
    /// compare), so from here on every write is tracked and a rewrite with
    /// unchanged bytes is uploaded over what the other side wrote.
    pub fn stop_comparing_shared(&self, bo: &Bo) {
        let _serial = crate::bo::lock(&bo.sync_lock);
        let mut st = bo.state();
        let views = bo.views();
        self.drop_hot(bo, &mut st, &views);
        if st.policy == BoPolicy::Auto {
            self.stop_comparing(bo, &mut st, &views);
        }
    }

    /// Whether BO `bo` may keep hot ranges now: `auto` everywhere, tracked
    /// by PAGETABLE and not paused, not compared whole, every live view
    /// under uffd-async (which can leave pages unprotected).
    fn hot_allowed(&self, bo: &Bo, st: &BoState, views: &[Arc<View>]) -> bool {
        self.methods == MethodPolicy::Auto
            && self.hot_max_pages > 0
            && !bo.gpu_shared.load(Ordering::Acquire)
            && st.policy == BoPolicy::Auto
            && st.shadow.is_none()
            && bo.size > self.shadow_max_bytes
            && st
                .tracker
                .as_ref()
                .is_some_and(|t| t.method == Method::PageTable && t.paused.is_none())
            && self.pagetable_only(views)
            && views
                .iter()
                .filter(|v| !v.dead.load(Ordering::Acquire))
                .all(|v| v.mm.tracker().can_pause() && !v.mm.tracker().eager())
    }

    /// At a sync's start, before its harvest: the ranges chosen at the last
    /// sync are copied into the shadow and wait for this sync's harvest.
    /// The shadow is faulted in and copied without the state lock (up to
    /// 16 MiB at once): only syncs, which hold `bo.sync_lock`, touch it.
    pub(super) fn hot_prepare(&self, bo: &Bo) {
        let (chosen, shadow, mut populated) = {
            let mut st = bo.state();
            if st.hot.chosen.is_empty() {
                return;
            }
            let chosen = std::mem::take(&mut st.hot.chosen);
            if st.hot.shadow.is_none() {
                st.hot.shadow = Shadow::create_sparse(bo.id, bo.size).map(Arc::new);
            }
            let Some(shadow) = st.hot.shadow.clone() else {
                return;
            };
            (chosen, shadow, std::mem::take(&mut st.hot.populated))
        };
        let ps = bo.page_size;
        let mut pending = Vec::new();
        for r in chosen {
            if !Self::populate_hot(bo, &mut populated, &shadow, &r) {
                break;
            }
            let (at, len) = ((r.start * ps) as usize, ((r.end - r.start) * ps) as usize);
            match bo.mapping.copy_to(at, &shadow.map, at, len) {
                Ok(()) => pending.push(r),
                Err(e) => tracing::debug!(bo = bo.id, error = %e, "no hot range: the copy failed"),
            }
        }
        let mut st = bo.state();
        // A CLEAR or a released resource may have dropped the ranges
        // meanwhile (they do not take `bo.sync_lock`): then nothing waits.
        if st.hot.shadow.as_ref().is_some_and(|s| Arc::ptr_eq(s, &shadow)) {
            st.hot.pending.extend(pending);
            st.hot.populated = populated;
        }
    }

    /// Faults in (and charges to the shadow budget) the shadow chunks
    /// `pages` lies in; false when the budget is spent or memory for them
    /// cannot be had.
    fn populate_hot(bo: &Bo, populated: &mut Vec<bool>, shadow: &Shadow, pages: &Range<u64>) -> bool {
        let ps = bo.page_size;
        let chunks = bo.size.div_ceil(HOT_CHUNK_PAGES * ps) as usize;
        populated.resize(chunks, false);
        let wanted = if bo.size <= HOT_WHOLE_SHADOW_BYTES {
            0..chunks as u64
        } else {
            pages.start / HOT_CHUNK_PAGES..pages.end.div_ceil(HOT_CHUNK_PAGES)
        };
        for c in wanted {
            if populated[c as usize] {
                continue;
            }
            let at = c * HOT_CHUNK_PAGES * ps;
            let len = (HOT_CHUNK_PAGES * ps).min(bo.size - at);
            if !shadow.reserve(len) {
                tracing::debug!(bo = bo.id, "no hot range: the shadow budget is spent");
                return false;
            }
            if let Err(e) = shadow.map.populate(at as usize, len as usize) {
                tracing::debug!(bo = bo.id, error = %e, "no hot range: the shadow cannot be faulted in");
                return false;
            }
            populated[c as usize] = true;
        }
        true
    }

    /// After a sync's harvest (state lock held): compares the active
    /// ranges, tracks pages idle for [`COOL_AFTER`] syncs again, activates
    /// the pending ranges and chooses the next.
    pub(super) fn hot_step(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        if !self.hot_allowed(bo, st, views) {
            self.drop_hot(bo, st, views);
            return;
        }
        let Some(shadow) = st.hot.shadow.clone() else {
            self.choose_hot(st);
            return;
        };
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        let mut kept = Vec::new();
        for mut r in std::mem::take(&mut st.hot.active) {
            let changed = Self::compare_hot(bo, st, &shadow, &r.pages);
            let mut next = changed.iter().peekable();
            for (page, idle) in r.pages.clone().zip(r.idle.iter_mut()) {
                while next.next_if(|c| c.end <= page).is_some() {}
                *idle = match next.peek() {
                    Some(c) if c.start <= page => 0,
                    _ => *idle + 1,
                };
            }
            let (stay, cool) = Self::split_idle(r);
            for pages in cool {
                // Protect first, then compare: a write in between is found.
                Self::set_protection(bo, &live, &pages, true);
                Self::compare_hot(bo, st, &shadow, &pages);
            }
            kept.extend(stay);
        }
        // Pending ranges were harvested (and protected) by this sync: their
        // first write faults once, later ones do not.
        kept.extend(std::mem::take(&mut st.hot.pending).into_iter().map(HotRange::new));
        st.hot.active = merged(kept);
        tracing::trace!(bo = bo.id, active = ?st.hot.active_pages(), "hot ranges");
        self.choose_hot(st);
        if st.hot.is_idle() {
            st.hot.shadow = None;
            st.hot.populated.clear();
        }
    }

    /// Splits an active range into the parts that stay hot and the runs of
    /// pages idle for [`COOL_AFTER`] syncs to track again: at its ends, and
    /// inside it where at least [`MIN_HOT_PAGES`] long (a shorter hole
    /// costs less compared than a separate scan).
    fn split_idle(r: HotRange) -> (Vec<HotRange>, Vec<Range<u64>>) {
        let n = r.idle.len();
        let mut cool = Vec::new();
        let mut i = 0;
        while i < n {
            if r.idle[i] < COOL_AFTER {
                i += 1;
                continue;
            }
            let j = (i..n).find(|&k| r.idle[k] < COOL_AFTER).unwrap_or(n);
            if i == 0 || j == n || (j - i) as u64 >= MIN_HOT_PAGES {
                cool.push(i..j);
            }
            i = j;
        }
        let mut stay = Vec::new();
        let mut at = 0;
        for c in cool.iter().chain(std::iter::once(&(n..n))) {
            if at < c.start {
                stay.push(HotRange {
                    pages: r.pages.start + at as u64..r.pages.start + c.start as u64,
                    idle: r.idle[at..c.start].to_vec(),
                });
            }
            at = c.end;
        }
        let cool = cool
            .into_iter()
            .map(|c| r.pages.start + c.start as u64..r.pages.start + c.end as u64)
            .collect();
        (stay, cool)
    }

    /// After a harvest outside a SYNC (SCAN, SNAPSHOT, a view removed),
    /// which dropped its reports of active pages: compares the active
    /// ranges and records what changed, so the bitmap holds their writes
    /// as a harvest's caller expects (a later TRANSFER uploads them).
    pub(super) fn hot_compare(bo: &Bo, st: &mut BoState) {
        let Some(shadow) = st.hot.shadow.clone() else {
            return;
        };
        for pages in st.hot.active_pages() {
            Self::compare_hot(bo, st, &shadow, &pages);
        }
    }

    /// Back to tracking every page exactly: each active range is
    /// write-protected (unless tracking is paused, when every sync uploads
    /// the whole BO), then compared, what changed recorded.
    pub(super) fn drop_hot(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        let hot = std::mem::take(&mut st.hot);
        let Some(shadow) = hot.shadow else {
            return;
        };
        let paused = st.tracker.as_ref().is_some_and(|t| t.paused.is_some());
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        for r in &hot.active {
            if !paused {
                Self::set_protection(bo, &live, &r.pages, true);
            }
            Self::compare_hot(bo, st, &shadow, &r.pages);
        }
        if !hot.active.is_empty() {
            tracing::debug!(bo = bo.id, ranges = hot.active.len(), "hot ranges tracked again");
        }
    }

    /// Chooses the ranges written at this sync and the last one, dense
    /// enough or next to an active range (which they then extend), and the
    /// holes of at most [`HOT_GAP`] pages between active ranges (so one
    /// scan less), within [`crate::policy::TrackingPolicy::hot_max_pages`].
    fn choose_hot(&self, st: &mut BoState) {
        let hot = &mut st.hot;
        let now = normalised(std::mem::take(&mut hot.written_now));
        let last = std::mem::replace(&mut hot.written_last, now);
        let active = hot.active_pages();
        let both = crate::bo::split_runs(&intersect(&hot.written_last, &last), &active).1;
        let mut budget = self.hot_max_pages.saturating_sub(hot.pages());
        // Runs at most HOT_GAP apart make one candidate, with its written count.
        let mut candidates: Vec<(Range<u64>, u64)> = Vec::new();
        for r in both {
            match candidates.last_mut() {
                // Not across an active range: each side may extend it.
                Some((c, n))
                    if r.start <= c.end + HOT_GAP && !active.iter().any(|a| c.end <= a.start && a.end <= r.start) =>
                {
                    c.end = r.end;
                    *n += r.end - r.start;
                }
                _ => candidates.push((r.clone(), r.end - r.start)),
            }
        }
        let holes = active
            .windows(2)
            .filter(|w| w[1].start > w[0].end && w[1].start - w[0].end <= HOT_GAP)
            .map(|w| (w[0].end..w[1].start, MIN_HOT_PAGES));
        let mut chosen = Vec::new();
        for (mut range, written) in candidates.into_iter().chain(holes) {
            // Reach an active range at most HOT_GAP away.
            let mut near = false;
            for a in &active {
                if a.end <= range.start && range.start - a.end <= HOT_GAP {
                    range.start = a.end;
                    near = true;
                }
                if a.start >= range.end && a.start - range.end <= HOT_GAP {
                    range.end = a.start;
                    near = true;
                }
            }
            let len = range.end - range.start;
            let overlaps = active.iter().any(|a| a.start < range.end && range.start < a.end);
            if (written >= MIN_HOT_PAGES || near) && len > 0 && len <= budget && !overlaps {
                budget -= len;
                chosen.push(range);
            }
        }
        hot.chosen = normalised(chosen);
    }

    /// Compares BO pages `pages` with the shadow and records those that
    /// differ, which it returns (a failed compare records them all).
    fn compare_hot(bo: &Bo, st: &mut BoState, shadow: &Shadow, pages: &Range<u64>) -> Vec<Range<u64>> {
        let ps = bo.page_size as usize;
        let (at, len) = (pages.start as usize * ps, (pages.end - pages.start) as usize * ps);
        let runs = match bo.mapping.differing_blocks(&shadow.map, at, len, ps) {
            Ok(runs) => runs,
            Err(e) => {
                crate::limited!(warn, "hot compare failed", bo.id, bo = bo.id, error = %e, "hot range compare failed: range marked");
                vec![pages.clone()]
            }
        };
        runs.iter().for_each(|r| st.record_written(r.clone()));
        runs
    }

    /// Write-protects (or unprotects) BO pages `pages` in every live view
    /// mapping them. A failure leaves pages as they were: protected ones
    /// only fault, unprotected ones are reported by the next harvest.
    fn set_protection(bo: &Bo, live: &[&Arc<View>], pages: &Range<u64>, protect: bool) {
        let ps = bo.page_size;
        for view in live {
            let vp = view.bo_pages(ps);
            let (s, e) = (pages.start.max(vp.start), pages.end.min(vp.end));
            if s >= e {
                continue;
            }
            let addr = |p: u64| view.addr + p * ps - view.bo_offset;
            let range = addr(s)..addr(e);
            let tracker = view.mm.tracker();
            let done = if protect {
                tracker.protect(range)
            } else {
                tracker.unprotect(range)
            };
            if let Err(e) = done {
                tracing::debug!(bo = bo.id, view = view.id, protect, error = %e, "hot range protection change failed");
            }
        }
    }
}

/// Active ranges sorted, touching ones made one.
fn merged(mut ranges: Vec<HotRange>) -> Vec<HotRange> {
    ranges.sort_unstable_by_key(|r| r.pages.start);
    let mut out: Vec<HotRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.pages.end == r.pages.start => {
                last.pages.end = r.pages.end;
                last.idle.extend(r.idle);
            }
            _ => out.push(r),
        }
    }
    out
}

/// `runs` sorted, overlapping and adjacent ones merged.
pub(super) fn normalised(mut runs: Vec<Range<u64>>) -> Vec<Range<u64>> {
    runs.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The pages in both sorted, disjoint run lists.
fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].start.max(b[j].start), a[i].end.min(b[j].end));
        if s < e {
            out.push(s..e);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersect_and_normalise() {
        assert_eq!(intersect(&[0..4, 6..10], &[2..7, 9..12]), vec![2..4, 6..7, 9..10]);
        assert_eq!(normalised(vec![5..6, 0..2, 2..3, 5..8]), vec![0..3, 5..8]);
    }
}
