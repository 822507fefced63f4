//! The sync engine: vmwgfx's tracker operations (research spec §3–§4) on
//! top of the client processes' write-tracking mechanisms, and the upload
//! to GPU resources (DESIGN.md §2 and §5.1).
//!
//! Every operation holds the BO's state lock from start to end, like vmwgfx
//! holds the BO reservation. The vmwgfx page-table steps map onto a
//! mechanism as follows (uffd-async here; "written" is the kernel's
//! PAGE_IS_WRITTEN, i.e. not write-protected):
//!
//! | vmwgfx | here |
//! | --- | --- |
//! | clean-and-record (PAGETABLE harvest, MKWRITE add, switches, pre_unmap) | `harvest`: PAGEMAP_SCAN with WP_MATCHING, atomic per page |
//! | mkwrite fault records a page | `observe`: pages written and not yet known writable are recorded (lazily, before any step that looks at the bitmap) |
//! | MKWRITE scan re-protects writable PTEs in the envelope | `protect` of the view's known-writable pages inside the envelope |
//!
//! Order of operations, which is what makes "no lost write" hold for SYNC:
//! scan (protect before collect) → transfer (bits leave the bitmap before
//! their bytes are copied) → upload; an upload that fails folds its runs back.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cohmem_proto::limits::MAX_REPORTED_RUNS;
use std::os::fd::AsFd;

use cohmem_proto::{BoPolicy, DirtyStateReport, Mechanism, Method, Run, ScanReport, SnapshotReport, SyncReport};
use cohmem_sys::mapping::SharedMapping;
use cohmem_sys::memfd::Memfd;

use crate::bo::{lock, Bo, BoState, Resource, View};
use crate::gpu::{GpuBackend, GpuError};
use crate::policy::{
    DenseDecision, DensePolicy, DirtyTracker, MethodPolicy, ScanDecision, TrackingPolicy, FIRST_PROBE,
};
use crate::stats::DaemonCounters;
use crate::tracker::TrackError;

/// What a READBACK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadbackDone {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time spent, nanoseconds.
    pub duration_ns: u64,
}

/// Collisions with structural changes after which a sync takes the
/// exclusive path.
pub const MAX_SYNC_COLLISIONS: u32 = 3;
/// Most live resources one BO may carry (each holds a GPU buffer, and for
/// the software backend an fd and a mapping in the daemon).
pub const MAX_RESOURCES_PER_BO: usize = 64;
/// Time after which a colliding sync takes the exclusive path.
pub const SYNC_RETRY_BOUND: std::time::Duration = std::time::Duration::from_millis(20);

/// Why a tracker operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The resource index names no live resource.
    #[error("the BO has no resource {0}")]
    NoSuchResource(u32),
    /// The window is not page aligned or not inside the BO.
    #[error("{0}")]
    BadWindow(String),
    /// The GPU backend failed (pages kept dirty).
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The BO already has [`MAX_RESOURCES_PER_BO`] resources.
    #[error("the BO already has {0} resources (limit MAX_RESOURCES_PER_BO = {MAX_RESOURCES_PER_BO})")]
    TooManyResources(usize),
}

/// A view harvested outside the state lock: BO pages written, stale pages,
/// or why it could not be scanned.
type Harvested = (Arc<View>, Result<(Vec<Range<u64>>, Vec<u64>), TrackError>);

/// A resource and the BO page runs to upload into it.
type Transfer = (Arc<Resource>, Vec<Range<u64>>);

/// Runs tracker operations and keeps the daemon-wide counters.
pub struct SyncEngine<'a> {
    counters: &'a DaemonCounters,
    methods: MethodPolicy,
    dense: DensePolicy,
}

fn to_runs(ranges: &[Range<u64>]) -> Vec<Run> {
    ranges
        .iter()
        .take(MAX_REPORTED_RUNS)
        .map(|r| Run {
            first_page: r.start as u32,
            pages: (r.end - r.start) as u32,
        })
        .collect()
}

fn method_of(st: &BoState) -> Method {
    st.tracker.as_ref().map_or(Method::None, |t| t.method)
}

impl<'a> SyncEngine<'a> {
    /// An engine that accounts into `counters` and tracks exactly as
    /// vmwgfx does ([`TrackingPolicy::VMWGFX`]).
    pub fn new(counters: &'a DaemonCounters) -> Self {
        Self::with_policy(counters, TrackingPolicy::VMWGFX)
    }

    /// An engine that tracks by `policy`.
    pub fn with_policy(counters: &'a DaemonCounters, policy: TrackingPolicy) -> Self {
        Self {
            counters,
            methods: policy.methods,
            dense: policy.dense,
        }
    }

    /// True when [`MethodPolicy::Auto`] keeps this BO in PAGETABLE: every
    /// live view's mechanism only harvests.
    fn pagetable_only(&self, views: &[Arc<View>]) -> bool {
        let mut live = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).peekable();
        self.methods == MethodPolicy::Auto && live.peek().is_some() && live.all(|v| v.mm.tracker().harvests_only())
    }

    /// Converts client address ranges of `view` into BO page ranges.
    fn bo_pages(bo: &Bo, view: &View, ranges: &[Range<u64>]) -> Vec<Range<u64>> {
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

    /// Marks a view that cannot be scanned (its process exited, or the scan
    /// failed) dirty whole: what cannot be proven clean is dirty.
    fn unprovable(&self, bo: &Bo, st: &mut BoState, view: &View, err: &TrackError) {
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
    fn harvest_view(&self, bo: &Bo, st: &mut BoState, view: &View) -> Option<(Vec<Range<u64>>, Vec<u64>)> {
        match self.harvest_raw(bo, view) {
            Ok(found) => Some(found),
            Err(e) => {
                self.unprovable(bo, st, view, &e);
                None
            }
        }
    }

    /// The page-table work of [`SyncEngine::harvest_view`], which needs no
    /// state lock for non-eager mechanisms (seed 000's sleepable read
    /// section: the scan of a large view does not block anyone).
    fn harvest_raw(&self, bo: &Bo, view: &View) -> Result<(Vec<Range<u64>>, Vec<u64>), TrackError> {
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
        } else {
            tracker.harvest(view.range(), &mut ranges)
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
    fn apply_harvest(&self, bo: &Bo, st: &mut BoState, harvested: Vec<Harvested>) -> u64 {
        let mut marked = 0;
        for (view, result) in harvested {
            match result {
                Ok((written, stale)) => {
                    let mut pages: Vec<u64> = written.into_iter().flatten().chain(stale).collect();
                    pages.sort_unstable();
                    pages.dedup();
                    marked += pages.len() as u64;
                    // Without a tracker they wait for the next one.
                    pages.into_iter().for_each(|p| st.record_written(p..p + 1));
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
    fn count_unrecorded(&self, bo: &Bo, view: &View, known: &[Range<u64>], found: &[Range<u64>]) {
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
    fn writable_ranges(&self, bo: &Bo, view: &View, out: &mut Vec<Range<u64>>) {
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
    fn harvest_all(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], record: bool) -> u64 {
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
                pages.into_iter().for_each(|p| st.record_written(p..p + 1));
            }
        }
        marked
    }

    /// MKWRITE: records the first writes since the last look (vmwgfx's
    /// mkwrite handler, applied lazily before any step that reads the
    /// bitmap). Pages written and not yet known writable are "faults".
    fn observe(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        if !matches!(st.tracker.as_ref().map(|t| t.method), Some(Method::MkWrite)) {
            return;
        }
        for view in views {
            if view.dead.load(Ordering::Acquire) {
                continue;
            }
            let tracker = view.mm.tracker();
            if tracker.eager() {
                // Eager mechanisms recorded their faults as they happened;
                // only check that the view is still there to be faulted on.
                let mut writable = Vec::new();
                self.writable_ranges(bo, view, &mut writable);
                let mut unrecorded = Vec::new();
                let verified = tracker.verify(view.range(), &writable, &mut unrecorded);
                // Found writable behind the daemon's back (and protected
                // now): written as far as anyone can tell.
                self.count_unrecorded(bo, view, &writable, &unrecorded);
                for r in Self::bo_pages(bo, view, &unrecorded) {
                    st.record_written(r);
                }
                if let Err(e) = verified {
                    self.unprovable(bo, st, view, &e);
                }
                continue;
            }
            let mut ranges = Vec::new();
            if let Err(e) = tracker.peek(view.range(), &mut ranges) {
                self.unprovable(bo, st, view, &e);
                continue;
            }
            let first = view.bo_offset / bo.page_size;
            let mut writable = lock(&view.writable);
            let Some(t) = st.tracker.as_mut() else {
                return;
            };
            for r in Self::bo_pages(bo, view, &ranges) {
                for p in r {
                    if writable.insert(p - first) {
                        t.dirty.record(p..p + 1);
                    }
                }
            }
        }
    }

    /// vmwgfx `scan` (spec §3), with the state lock held.
    fn scan_locked(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) -> ScanReport {
        self.scan_locked_pre(bo, st, views, None)
    }

    /// vmwgfx `scan`, where `pre` holds the PAGETABLE harvest of the
    /// non-eager views already done outside the lock (None: harvest here).
    fn scan_locked_pre(
        &self,
        bo: &Bo,
        st: &mut BoState,
        views: &[Arc<View>],
        mut pre: Option<Vec<Harvested>>,
    ) -> ScanReport {
        let method = st.tracker.as_ref().map(|t| t.method);
        if method != Some(Method::PageTable) {
            // The method changed after the unlocked harvest: what it found
            // are real writes all the same.
            if let Some(found) = pre.take() {
                self.apply_harvest(bo, st, found);
            }
        }
        let Some(method) = method else {
            return ScanReport::default();
        };
        if st.tracker.as_ref().is_some_and(|t| t.paused.is_some()) {
            return self.scan_paused(bo, st, views, pre.take());
        }
        // An operator's policy pins the method: no switch, no pause.
        let pinned = st.policy != BoPolicy::Auto;
        let mut method = method;
        let mut switched = None;
        if method == Method::MkWrite && !pinned && self.pagetable_only(views) {
            // MethodPolicy::Auto: PAGETABLE at once, exactly.
            self.switch_to_pagetable_exact(bo, st, views);
            method = Method::PageTable;
            switched = Some(Method::PageTable);
        }
        // `full` clients: no tracking, the whole BO is written at every scan.
        let whole = views
            .iter()
            .any(|v| !v.dead.load(Ordering::Relaxed) && v.mm.tracker().whole_bo());
        let mut whole_marked = 0;
        if let (true, Some(t)) = (whole, st.tracker.as_mut()) {
            let n = t.dirty.pages();
            t.dirty.record(0..n);
            // Everything was found written: what a PAGETABLE harvest counts.
            whole_marked = n;
        }
        let num_marked;
        match method {
            Method::PageTable | Method::None => {
                num_marked = match pre {
                    Some(found) => {
                        let eager: Vec<Arc<View>> = views.iter().filter(|v| v.mm.tracker().eager()).cloned().collect();
                        self.apply_harvest(bo, st, found) + self.harvest_all(bo, st, &eager, true)
                    }
                    None => self.harvest_all(bo, st, views, true),
                } + whole_marked;
                let decision = match st.tracker.as_mut() {
                    // MethodPolicy::Auto never leaves PAGETABLE for MKWRITE
                    // where MKWRITE would cost more.
                    Some(t) if pinned || self.pagetable_only(views) => {
                        t.change_count = 0;
                        ScanDecision::Stay
                    }
                    Some(t) => t.after_pagetable_harvest(num_marked),
                    None => ScanDecision::Stay,
                };
                if let ScanDecision::Switch(m) = decision {
                    // Write-protect the whole BO, then clean-and-record once
                    // more: a harvest does both, atomically per page.
                    self.harvest_all(bo, st, views, true);
                    switched = Some(m);
                } else if !pinned {
                    self.pause_if_dense(bo, st, views, num_marked - whole_marked);
                }
            }
            Method::MkWrite => {
                self.observe(bo, st, views);
                let envelope = st.tracker.as_ref().and_then(|t| t.dirty.envelope());
                let Some(envelope) = envelope else {
                    // Empty envelope: return at once, count untouched.
                    return self.scan_report(st, 0, None);
                };
                num_marked = self.reprotect(bo, st, views, envelope);
                let decision = st.tracker.as_mut().map_or(ScanDecision::Stay, |t| match pinned {
                    true => {
                        t.change_count = 0;
                        ScanDecision::Stay
                    }
                    false => t.after_mkwrite_reprotect(num_marked),
                });
                if let ScanDecision::Switch(m) = decision {
                    self.switch_to_pagetable(bo, st, views);
                    switched = Some(m);
                }
            }
        }
        if switched.is_some() {
            bo.counters.method_switches.fetch_add(1, Ordering::Relaxed);
            self.counters.method_switches.fetch_add(1, Ordering::Relaxed);
            crate::limited!(info, "tracking method switched", bo.id, bo = bo.id, method = %method_of(st), "tracking method switched");
        }
        self.scan_report(st, num_marked, switched)
    }

    /// A scan while tracking is paused for dense writes: the whole BO is
    /// written (the views are unprotected, so nothing else can be known);
    /// every [`DensePolicy::probe_every`] syncs the views are write-protected
    /// again (a harvest does it) so the next frame's density is measured.
    fn scan_paused(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], pre: Option<Vec<Harvested>>) -> ScanReport {
        // The `full` policy pauses for good: no probes.
        let full = st.policy == BoPolicy::Full;
        let Some(t) = st.tracker.as_mut() else {
            return ScanReport::default();
        };
        let n = t.dirty.pages();
        t.dirty.record(0..n);
        let probe = !full && t.paused_sync();
        if let Some(found) = pre {
            self.apply_harvest(bo, st, found);
        }
        if probe {
            self.harvest_all(bo, st, views, true);
            tracing::debug!(bo = bo.id, "dense writes: probing with tracking resumed");
        }
        self.scan_report(st, n, None)
    }

    /// After a PAGETABLE harvest that found `num_marked` pages: pauses
    /// tracking (unprotects every view) when the policy finds the writes
    /// dense and every view's mechanism can be paused.
    fn pause_if_dense(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], num_marked: u64) {
        if !self.dense.enabled() {
            return;
        }
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        if live.is_empty() || !live.iter().all(|v| v.mm.tracker().can_pause()) {
            return;
        }
        let Some(t) = st.tracker.as_mut() else {
            return;
        };
        let after_probe = t.probing;
        if t.after_dense_check(num_marked, &self.dense) != DenseDecision::Pause {
            if after_probe {
                crate::limited!(
                    info,
                    "dense writes stopped",
                    bo.id,
                    bo = bo.id,
                    "dense writes stopped: tracking resumed"
                );
            }
            return;
        }
        Self::unprotect_all(bo, &live);
        bo.counters.dense_pauses.fetch_add(1, Ordering::Relaxed);
        self.counters.dense_pauses.fetch_add(1, Ordering::Relaxed);
        // One line when tracking pauses and one when it resumes; the probes
        // in between (every 2 to --dense-probe-every syncs) log at debug.
        if after_probe {
            tracing::debug!(bo = bo.id, "dense writes go on: paused again after a probe");
        } else {
            crate::limited!(
                info,
                "dense writes paused",
                bo.id,
                bo = bo.id,
                percent = self.dense.percent,
                "dense writes: tracking paused, whole-BO uploads"
            );
        }
    }

    /// Unprotects paused views: their writes no longer fault.
    fn unprotect_all(bo: &Bo, live: &[&Arc<View>]) {
        for view in live {
            if let Err(e) = view.mm.tracker().unprotect(view.range()) {
                // Still protected: it faults, and costs time, nothing else.
                tracing::debug!(bo = bo.id, view = view.id, error = %e, "unprotect for a tracking pause failed");
            }
        }
    }

    /// SET_POLICY: pins how `bo` is tracked and returns the policy before
    /// and the method now. Leaving a pause (the `full` policy or a
    /// dense-write pause) marks the whole BO dirty and write-protects the
    /// views again; a pinned method is switched to at once, the way the
    /// state machine would switch to it, so no write is lost either way.
    pub fn set_policy(&self, bo: &Bo, policy: BoPolicy) -> (BoPolicy, Method) {
        let _serial = lock(&bo.sync_lock);
        let mut st = bo.state();
        let previous = std::mem::replace(&mut st.policy, policy);
        let views = bo.views();
        let Some(t) = st.tracker.as_mut() else {
            return (previous, Method::None);
        };
        let before = t.method;
        let n = t.dirty.pages();
        let was_paused = t.paused.take().is_some();
        t.probing = false;
        t.dense_streak = 0;
        t.change_count = 0;
        t.probe_interval = FIRST_PROBE;
        if was_paused {
            // Unprotected until now: anything may have been written.
            t.dirty.record(0..n);
        }
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        match policy {
            BoPolicy::Full => {
                t.dirty.record(0..n);
                t.paused = Some(0);
                // PAGETABLE: MKWRITE's steps after a transfer (observe,
                // re-protecting clean writable pages) would write-protect
                // the unprotected views again, and every write would fault.
                t.method = Method::PageTable;
                if live.iter().all(|v| v.mm.tracker().can_pause()) {
                    Self::unprotect_all(bo, &live);
                }
            }
            BoPolicy::MkWrite if before != Method::MkWrite || was_paused => {
                // PAGETABLE → MKWRITE as the state machine does it: a
                // harvest write-protects the whole BO and records once more.
                self.harvest_all(bo, &mut st, &views, true);
                if let Some(t) = st.tracker.as_mut() {
                    t.method = Method::MkWrite;
                }
            }
            BoPolicy::PageTable if before != Method::PageTable => {
                if self.pagetable_only(&views) {
                    self.switch_to_pagetable_exact(bo, &mut st, &views);
                } else {
                    self.switch_to_pagetable(bo, &mut st, &views);
                    if let Some(t) = st.tracker.as_mut() {
                        t.method = Method::PageTable;
                    }
                }
            }
            _ if was_paused => {
                // Tracking resumes: protect every view again (a harvest does
                // it, recording what it finds).
                self.harvest_all(bo, &mut st, &views, true);
            }
            _ => {}
        }
        let now = method_of(&st);
        if now != before {
            bo.counters.method_switches.fetch_add(1, Ordering::Relaxed);
            self.counters.method_switches.fetch_add(1, Ordering::Relaxed);
        }
        crate::limited!(info, "tracking policy set", bo.id, bo = bo.id, from = %previous, to = %policy, method = %now, "tracking policy set");
        (previous, now)
    }

    fn scan_report(&self, st: &BoState, num_marked: u64, switched: Option<Method>) -> ScanReport {
        ScanReport {
            method: method_of(st) as u16,
            switched_to: switched.map_or(0, |m| m as u16),
            change_count: st.tracker.as_ref().map_or(0, |t| t.change_count),
            num_marked,
        }
    }

    /// MKWRITE re-protect of the known-writable pages inside `envelope`;
    /// returns how many were re-protected, per view.
    fn reprotect(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], envelope: Range<u64>) -> u64 {
        let ps = bo.page_size;
        let mut marked = 0;
        for view in views {
            if view.dead.load(Ordering::Acquire) {
                continue;
            }
            let first = view.bo_offset / ps;
            let vp = view.bo_pages(ps);
            let (lo, hi) = (envelope.start.max(vp.start), envelope.end.min(vp.end));
            let mut runs: Vec<Range<u64>> = Vec::new();
            for vp in lock(&view.writable).ones_in(lo.saturating_sub(first)..hi.saturating_sub(first)) {
                let p = vp + first;
                match runs.last_mut() {
                    Some(last) if last.end == p => last.end = p + 1,
                    _ => runs.push(p..p + 1),
                }
            }
            for r in &runs {
                let addr = view.addr + (r.start - first) * ps;
                if let Err(e) = view.mm.tracker().protect(addr..addr + (r.end - r.start) * ps) {
                    // Protect before forget: pages not protected stay known
                    // writable (issue 14, suspicion c).
                    self.unprovable(bo, st, view, &e);
                    break;
                }
                Self::forget_protected(view, (r.start - first)..(r.end - first));
                marked += r.end - r.start;
            }
        }
        marked
    }

    /// MKWRITE → PAGETABLE (spec §3.2 step 5): clean every view with a
    /// throw-away envelope, then bitmap := all ones on the envelope. Writes
    /// that arrived after the last observe would have faulted and been
    /// recorded in vmwgfx, so they are recorded here too, not thrown away.
    fn switch_to_pagetable(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        self.harvest_for_switch(bo, st, views, false);
        if let Some(t) = st.tracker.as_mut() {
            let extra = t.finish_switch_to_pagetable();
            bo.counters.extra_pages.fetch_add(extra, Ordering::Relaxed);
            self.counters.extra_pages.fetch_add(extra, Ordering::Relaxed);
        }
    }

    /// The [`MethodPolicy::Auto`] switch to PAGETABLE of a BO whose views
    /// all only harvest: a harvest reports every page written since it was
    /// last protected, the known-writable ones included (they are
    /// unprotected, so reported), so recording what it finds is exact and
    /// vmwgfx's fill of the envelope is not needed.
    fn switch_to_pagetable_exact(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        self.harvest_for_switch(bo, st, views, true);
        if let Some(t) = st.tracker.as_mut() {
            t.method = Method::PageTable;
            t.change_count = 0;
        }
    }

    /// Harvests every view for a switch to PAGETABLE and records what it
    /// found; pages known writable are recorded too only with `record_known`
    /// (vmwgfx's switch covers them by filling the envelope instead).
    fn harvest_for_switch(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], record_known: bool) {
        for view in views {
            let known: Vec<u64> = {
                let w = lock(&view.writable);
                let first = view.bo_offset / bo.page_size;
                w.ones_in(0..view.len / bo.page_size).map(|p| p + first).collect()
            };
            let Some((found, _stale)) = self.harvest_view(bo, st, view) else {
                continue;
            };
            if let Some(t) = st.tracker.as_mut() {
                for r in found {
                    for p in r {
                        if record_known || known.binary_search(&p).is_err() {
                            t.dirty.record(p..p + 1);
                        }
                    }
                }
            }
        }
    }

    /// vmwgfx `transfer_to_res`: takes resource `index`'s dirty runs out of
    /// the bitmap (state lock held). The caller uploads them.
    fn take_runs(&self, bo: &Bo, st: &mut BoState, index: u32) -> Result<(Arc<Resource>, Vec<Range<u64>>), SyncError> {
        let res = Self::resource(st, index)?;
        let Some(t) = st.tracker.as_mut() else {
            return Ok((res, Vec::new()));
        };
        let ps = bo.page_size;
        let runs = t.dirty.transfer_window(res.window.start / ps..res.window.end / ps);
        self.protect_clean_writable(bo, st);
        Ok((res, runs))
    }

    /// After bits left the bitmap without a scan (TRANSFER, CLEAR, CLEAR_ALL,
    /// or the transfer of a SYNC), MKWRITE: re-protects every writable page
    /// whose bit is now clear, outside the envelope or inside it (a TRANSFER
    /// of one resource while others keep the envelope open). vmwgfx leaves
    /// them writable, so a later write to one would never be recorded (its
    /// transfers always follow a scan; ours need not): a test found the
    /// inside case losing a write. The pages keep their emulated dirty bit
    /// (stale), as any re-protected page. The reference model does the same
    /// (`ModelConfig::protect_clean_writable`).
    fn protect_clean_writable(&self, bo: &Bo, st: &mut BoState) {
        let Some(t) = st.tracker.as_ref().filter(|t| t.method == Method::MkWrite) else {
            return;
        };
        let ps = bo.page_size;
        // Which writable pages are clean, per view (the bitmap is borrowed
        // here; the protects below may mark a view dirty).
        let views: Vec<(Arc<View>, Vec<u64>)> = bo
            .views()
            .into_iter()
            .filter(|v| !v.dead.load(Ordering::Relaxed))
            .map(|view| {
                let first = view.bo_offset / ps;
                let clean = lock(&view.writable)
                    .ones_in(0..view.len / ps)
                    .filter(|vp| !t.dirty.contains(vp + first))
                    .collect();
                (view, clean)
            })
            .collect();
        for (view, clean) in views {
            let mut runs: Vec<Range<u64>> = Vec::new();
            for vp in clean {
                match runs.last_mut() {
                    Some(last) if last.end == vp => last.end = vp + 1,
                    _ => runs.push(vp..vp + 1),
                }
            }
            for r in runs {
                let addr = view.addr + r.start * ps;
                if let Err(e) = view.mm.tracker().protect(addr..addr + (r.end - r.start) * ps) {
                    // Protect before forget: pages not protected stay known
                    // writable (issue 14, suspicion c).
                    self.unprovable(bo, st, &view, &e);
                    break;
                }
                Self::forget_protected(&view, r);
            }
        }
    }

    /// After the view pages `pages` were write-protected again: they are no
    /// longer writable, and keep their emulated dirty bit (stale).
    fn forget_protected(view: &View, pages: Range<u64>) {
        let mut writable = lock(&view.writable);
        let mut stale = lock(&view.stale_dirty);
        for vp in pages {
            writable.remove(vp);
            stale.insert(vp);
        }
    }

    /// Copies taken runs into their resources without the state lock (writers
    /// and the fault service go on meanwhile); on failure the runs not yet
    /// uploaded are folded back. Returns every run uploaded.
    fn upload(&self, bo: &Bo, work: Vec<(Arc<Resource>, Vec<Range<u64>>)>) -> Result<Vec<Range<u64>>, SyncError> {
        let ps = bo.page_size;
        let mut done = Vec::new();
        let mut pending = work.into_iter();
        while let Some((res, runs)) = pending.next() {
            if runs.is_empty() {
                continue;
            }
            let first = res.window.start / ps;
            let byte_runs: Vec<Range<u64>> = runs
                .iter()
                .map(|r| (r.start - first) * ps..(r.end - first) * ps)
                .collect();
            if let Err(e) = res.upload(&bo.mapping, &byte_runs) {
                let mut st = bo.state();
                if let Some(t) = st.tracker.as_mut() {
                    t.dirty.fold_back(&runs);
                    for (_, later) in pending {
                        t.dirty.fold_back(&later);
                    }
                }
                self.counters.upload_failures.fetch_add(1, Ordering::Relaxed);
                crate::limited!(warn, "upload failed", bo.id, bo = bo.id, error = %e, "upload failed; runs folded back");
                return Err(e.into());
            }
            done.extend(runs);
        }
        Ok(done)
    }

    /// The rectangles the BO's image resource received since the last
    /// report (DESIGN.md §8); `None` for a byte BO.
    fn take_damage(st: &BoState) -> Option<cohmem_proto::ImageDamage> {
        st.resources.iter().flatten().find_map(|r| r.take_damage())
    }

    fn resource(st: &BoState, index: u32) -> Result<Arc<Resource>, SyncError> {
        st.resources
            .get(index as usize)
            .and_then(Option::clone)
            .ok_or(SyncError::NoSuchResource(index))
    }

    fn report(
        &self,
        bo: &Bo,
        st: &BoState,
        views: &[Arc<View>],
        runs: &[Range<u64>],
        t0: Instant,
        with_runs: bool,
    ) -> SyncReport {
        let pages: u64 = runs.iter().map(|r| r.end - r.start).sum();
        let bytes = pages * bo.page_size;
        bo.counters.syncs.fetch_add(1, Ordering::Relaxed);
        bo.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        bo.counters.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        self.counters.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
        let listed = if with_runs { to_runs(runs) } else { Vec::new() };
        let mechanism = views.first().map_or(Mechanism::None, |v| v.mm.tracker().mechanism());
        SyncReport {
            pages,
            bytes,
            run_count: runs.len() as u32,
            mechanism: mechanism as u16,
            method: method_of(st) as u16,
            runs_truncated: listed.len() < runs.len(),
            duration_ns: t0.elapsed().as_nanos() as u64,
            views_scanned: views.iter().filter(|v| !v.dead.load(Ordering::Relaxed)).count() as u32,
            runs: listed,
            damage: None,
        }
    }

    /// SYNC: scan, then transfer and upload every resource in ascending
    /// window order. Every page written through any view before this call
    /// reaches the GPU resources before it returns.
    ///
    /// Seed 000: the scan-and-copy is a read section against structural
    /// changes (views added or removed, which harvest a leaving view into
    /// the bitmap). If one overlapped, the section runs again to pick up what
    /// it recorded; after [`MAX_SYNC_COLLISIONS`] collisions or
    /// [`SYNC_RETRY_BOUND`] the sync blocks structural changes and runs once
    /// more exclusively, so it can never live-lock.
    ///
    /// For an image BO the report carries the rectangles uploaded since the
    /// previous SYNC or TRANSFER reply (background uploads included).
    pub fn sync(&self, bo: &Bo, with_runs: bool) -> Result<SyncReport, SyncError> {
        let _serial = lock(&bo.sync_lock);
        let mut report = self.sync_serialised(bo, with_runs)?;
        report.damage = Self::take_damage(&bo.state());
        Ok(report)
    }

    /// [`SyncEngine::sync`] unless another sync of the BO is running
    /// (`None` then): the background upload never waits for a client's.
    pub fn sync_if_idle(&self, bo: &Bo) -> Option<Result<SyncReport, SyncError>> {
        let _serial = match bo.sync_lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        Some(self.sync_serialised(bo, false))
    }

    /// GPU → CPU (READBACK): syncs the BO, then, with further syncs held
    /// off, copies every resource back into its window of the BO. A CPU
    /// write racing the copy may be overwritten (its page is dirty, so the
    /// next sync makes the GPU agree with the BO again); see proto/README.md.
    pub fn readback(&self, bo: &Bo) -> Result<ReadbackDone, SyncError> {
        let _serial = lock(&bo.sync_lock);
        let t0 = Instant::now();
        let synced = self.sync_serialised(bo, false)?;
        let resources: Vec<Arc<Resource>> = bo.state().resources.iter().flatten().cloned().collect();
        let mut bytes = 0;
        if !resources.is_empty() {
            // The daemon's own mapping is read-only; the copy-back gets a
            // writable one for its duration.
            let dst = SharedMapping::map(bo.memfd().as_fd(), bo.size, 0, true).map_err(GpuError::from)?;
            for r in &resources {
                let len = r.window.end - r.window.start;
                r.gpu.download(&dst, r.window.start, std::slice::from_ref(&(0..len)))?;
                bytes += len;
            }
        }
        Ok(ReadbackDone {
            synced_pages: synced.pages,
            bytes,
            duration_ns: t0.elapsed().as_nanos() as u64,
        })
    }

    /// [`SyncEngine::sync`] with `bo.sync_lock` already held.
    fn sync_serialised(&self, bo: &Bo, with_runs: bool) -> Result<SyncReport, SyncError> {
        let t0 = Instant::now();
        let mut all = Vec::new();
        let mut collisions = 0u32;
        loop {
            let exclusive = collisions >= MAX_SYNC_COLLISIONS || t0.elapsed() >= SYNC_RETRY_BOUND;
            let _blocked = exclusive.then(|| bo.block_structural_changes());
            let seq = bo.structure_seq();
            if !exclusive && seq % 2 == 1 {
                collisions += 1;
                std::thread::yield_now();
                continue;
            }
            all.extend(self.sync_section(bo)?);
            if exclusive {
                bo.counters.sync_exclusive.fetch_add(1, Ordering::Relaxed);
                self.counters.sync_exclusive.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if bo.structure_seq() == seq {
                break;
            }
            collisions += 1;
            bo.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
            self.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
        }
        let all = Self::union_of(all);
        let st = bo.state();
        let report = self.report(bo, &st, &bo.views(), &all, t0, with_runs);
        tracing::debug!(
            bo = bo.id,
            pages = report.pages,
            runs = report.run_count,
            collisions,
            ns = report.duration_ns,
            "sync"
        );
        let mechanism = Mechanism::from_wire(report.mechanism).map_or("unknown", Mechanism::name);
        self.counters
            .latency
            .sync
            .get_or_create(&[("mechanism", mechanism)])
            .observe(report.duration_ns as f64 * 1e-9);
        Ok(report)
    }

    /// One scan → transfer (state lock held) → upload (lock released).
    fn sync_section(&self, bo: &Bo) -> Result<Vec<Range<u64>>, SyncError> {
        let views = bo.views();
        // PAGETABLE: the expensive harvest of non-eager views runs without the
        // state lock; a view removed meanwhile records its last pages under
        // the lock after us, which the sequence count makes the caller retry.
        let pagetable = bo
            .state()
            .tracker
            .as_ref()
            .is_some_and(|t| t.method == Method::PageTable && t.paused.is_none());
        let pre: Option<Vec<Harvested>> = pagetable.then(|| {
            views
                .iter()
                .filter(|v| !v.mm.tracker().eager())
                .map(|v| (v.clone(), self.harvest_raw(bo, v)))
                .collect()
        });
        let work = {
            let mut st = bo.state();
            // Views are added and removed with the state lock held, so this
            // list is exact for the whole locked part (the method-switch
            // harvests must see every view).
            let views = bo.views();
            self.scan_locked_pre(bo, &mut st, &views, pre);
            let mut order: Vec<(u64, u32)> = st
                .resources
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|r| (r.window.start, i as u32)))
                .collect();
            order.sort_unstable();
            self.take_all_runs(bo, &mut st, &order)?
        };
        self.upload(bo, work)
    }

    /// The transfer of a SYNC: every resource gets every dirty page of its
    /// window, then the bits leave the bitmap. vmwgfx's `transfer_to_res`
    /// one resource after the other would hand a page of two overlapping
    /// windows (a resource added over part of the default whole-BO one) to
    /// the first only, and the second would never receive it (nor would a
    /// READBACK then copy the right bytes back). Windows that do not
    /// overlap get exactly what `transfer_to_res` hands them.
    fn take_all_runs(&self, bo: &Bo, st: &mut BoState, order: &[(u64, u32)]) -> Result<Vec<Transfer>, SyncError> {
        let ps = bo.page_size;
        let resources = order
            .iter()
            .map(|&(_, index)| Self::resource(st, index))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(t) = st.tracker.as_mut() else {
            return Ok(resources.into_iter().map(|r| (r, Vec::new())).collect());
        };
        let dirty = t.dirty.runs();
        let work = resources
            .into_iter()
            .map(|res| {
                let (ws, we) = (res.window.start / ps, res.window.end / ps);
                let runs = dirty
                    .iter()
                    .filter_map(|r| {
                        let (s, e) = (r.start.max(ws), r.end.min(we));
                        (s < e).then_some(s..e)
                    })
                    .collect();
                (res, runs)
            })
            .collect::<Vec<_>>();
        for (res, _) in &work {
            t.dirty.transfer_window(res.window.start / ps..res.window.end / ps);
        }
        self.protect_clean_writable(bo, st);
        Ok(work)
    }

    /// The pages a sync made coherent, once each: `runs` sorted, runs of
    /// overlapping windows merged (adjacent runs stay apart, as the
    /// resources' transfers reported them).
    fn union_of(mut runs: Vec<Range<u64>>) -> Vec<Range<u64>> {
        runs.sort_unstable_by_key(|r| (r.start, r.end));
        let mut out: Vec<Range<u64>> = Vec::with_capacity(runs.len());
        for r in runs {
            match out.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }

    /// An exact copy of the BO (seed 004's quiesce): every view is harvested
    /// and write-protected; uffd-sync writers are then blocked (their faults
    /// parked) while the BO is copied; uffd-async writers cannot be blocked,
    /// so the copy is checked afterwards and retried if they wrote. Bounded
    /// by `bound`; the parked writers are always released.
    ///
    /// The quiesce holds only the views present when it starts: a view
    /// mapped during the copy was never write-protected by it, and one
    /// unmapped during it is no longer checked, so writes through either can
    /// tear the copy unseen. An attempt is therefore a read section against
    /// structural changes (seed 000, as in SYNC): one that overlapped a
    /// change is not exact and is retried; after [`MAX_SYNC_COLLISIONS`]
    /// such attempts, the next blocks structural changes for its duration
    /// (a MAP or UNMAP then waits, at most `bound`).
    pub fn snapshot(&self, bo: &Bo, bound: std::time::Duration) -> Result<(Memfd, SnapshotReport), SyncError> {
        let _serial = lock(&bo.sync_lock);
        let deadline = Instant::now() + bound;
        let mut report = SnapshotReport {
            size: bo.size,
            image: bo.image,
            ..SnapshotReport::default()
        };
        /// Releases the parked writers however the attempt ends (even by a
        /// panic), so a quiesce can never hold them forever.
        struct Release<'e, 'b>(&'e SyncEngine<'e>, &'b Bo);
        impl Drop for Release<'_, '_> {
            fn drop(&mut self) {
                self.0.release_quiesce(self.1);
            }
        }
        let mut collisions = 0u32;
        loop {
            report.attempts += 1;
            let exclusive = collisions >= MAX_SYNC_COLLISIONS;
            // Declared before the release: dropped after it (lock order:
            // structural changes, then the state lock).
            let _blocked = exclusive.then(|| bo.block_structural_changes());
            let seq = bo.structure_seq();
            let release = Release(self, bo);
            let views = {
                let mut st = bo.state();
                let views = bo.views();
                st.quiesced = true;
                // Protect before collect: afterwards every write either
                // blocks (uffd-sync) or shows up in the check below.
                self.harvest_all(bo, &mut st, &views, true);
                views
            };
            let copied = Self::copy_bo(bo);
            let mut written = Vec::new();
            let (mut blocked, mut unblocked, mut checkable) = (0, 0, true);
            for view in views.iter().filter(|v| !v.dead.load(Ordering::Relaxed)) {
                let t = view.mm.tracker();
                if t.eager() {
                    blocked += 1;
                } else {
                    unblocked += 1;
                    checkable &= !t.whole_bo() && t.mechanism() != cohmem_proto::Mechanism::Explicit;
                    if t.peek(view.range(), &mut written).is_err() {
                        checkable = false;
                    }
                }
            }
            drop(release);
            let memfd = copied?;
            let stable = exclusive || (seq % 2 == 0 && bo.structure_seq() == seq);
            if !stable {
                collisions += 1;
                bo.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
            }
            report.blocked_views = blocked;
            report.unblocked_views = unblocked;
            report.exact = stable && checkable && written.is_empty();
            if report.exact || !checkable || Instant::now() >= deadline {
                return Ok((memfd, report));
            }
        }
    }

    /// Ends a quiesce: resolves every parked fault (recording it).
    fn release_quiesce(&self, bo: &Bo) {
        let mut st = bo.state();
        st.quiesced = false;
        for (view, page) in std::mem::take(&mut st.deferred) {
            crate::faults::resolve_one(&mut st, &view, page);
        }
    }

    /// Copies the BO into a new memfd sealed against any change.
    fn copy_bo(bo: &Bo) -> Result<Memfd, SyncError> {
        let memfd = Memfd::create(
            &format!("cohmem-snapshot-{}", bo.id),
            bo.size,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
        .map_err(GpuError::from)?;
        {
            let dst = SharedMapping::map(memfd.as_fd(), bo.size, 0, true).map_err(GpuError::from)?;
            bo.mapping
                .copy_to(0, &dst, 0, bo.size as usize)
                .map_err(GpuError::from)?;
        }
        memfd
            .add_seals(libc::F_SEAL_WRITE | libc::F_SEAL_SEAL)
            .map_err(GpuError::from)?;
        Ok(memfd)
    }

    /// vmwgfx `scan` alone.
    pub fn scan(&self, bo: &Bo) -> ScanReport {
        let _serial = lock(&bo.sync_lock);
        let mut st = bo.state();
        let views = bo.views();
        self.scan_locked(bo, &mut st, &views)
    }

    /// vmwgfx `transfer_to_res` + upload of one resource, without a scan.
    pub fn transfer(&self, bo: &Bo, index: u32, with_runs: bool) -> Result<SyncReport, SyncError> {
        let _serial = lock(&bo.sync_lock);
        let t0 = Instant::now();
        let work = {
            let mut st = bo.state();
            let views = bo.views();
            self.observe(bo, &mut st, &views);
            vec![self.take_runs(bo, &mut st, index)?]
        };
        let runs = self.upload(bo, work)?;
        let st = bo.state();
        let mut report = self.report(bo, &st, &bo.views(), &runs, t0, with_runs);
        report.damage = Self::take_damage(&st);
        Ok(report)
    }

    /// vmwgfx `clear_res`.
    pub fn clear_resource(&self, bo: &Bo, index: u32) -> Result<(), SyncError> {
        let mut st = bo.state();
        let views = bo.views();
        self.observe(bo, &mut st, &views);
        let res = Self::resource(&st, index)?;
        if let Some(t) = st.tracker.as_mut() {
            let ps = bo.page_size;
            t.dirty.clear_window(res.window.start / ps..res.window.end / ps);
        }
        self.protect_clean_writable(bo, &mut st);
        Ok(())
    }

    /// `explicit`: records client-reported damage (bytes `offset..offset+len`).
    pub fn damage(&self, bo: &Bo, offset: u64, len: u64) -> Result<(), SyncError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| len > 0 && e <= bo.size)
            .ok_or_else(|| {
                SyncError::BadWindow(format!(
                    "damage {offset}+{len} is not inside the BO's {} bytes",
                    bo.size
                ))
            })?;
        bo.state()
            .record_written(offset / bo.page_size..end.div_ceil(bo.page_size));
        Ok(())
    }

    /// vmwgfx `dirty_clear`.
    pub fn clear_all(&self, bo: &Bo) {
        let mut st = bo.state();
        let views = bo.views();
        self.observe(bo, &mut st, &views);
        if let Some(t) = st.tracker.as_mut() {
            let n = t.dirty.pages();
            t.dirty.clear_window(0..n);
        }
        self.protect_clean_writable(bo, &mut st);
    }

    /// The tracker as vmwgfx would hold it now.
    pub fn dirty_state(&self, bo: &Bo) -> DirtyStateReport {
        let mut st = bo.state();
        let views = bo.views();
        self.observe(bo, &mut st, &views);
        let Some(t) = st.tracker.as_ref() else {
            return DirtyStateReport {
                pages: bo.pages(),
                start: bo.pages(),
                ..DirtyStateReport::default()
            };
        };
        let runs = t.dirty.runs();
        let (start, end) = t.dirty.envelope().map_or((t.dirty.pages(), 0), |e| (e.start, e.end));
        DirtyStateReport {
            method: t.method as u16,
            change_count: t.change_count,
            users: t.users,
            pages: t.dirty.pages(),
            start,
            end,
            dirty_pages: t.dirty.dirty_pages(),
            truncated: runs.len() > MAX_REPORTED_RUNS,
            runs: to_runs(&runs),
        }
    }

    /// vmwgfx `dirty_add` with a new resource at `window` (bytes), and
    /// vmwgfx's bind: the new resource receives the window's whole content,
    /// so a resource added after pages were written (or synced into another
    /// resource) never starts empty, and a READBACK never copies an empty
    /// resource over the client's data. Returns the resource index.
    ///
    /// Holds the BO's sync lock throughout (no sync, transfer or readback
    /// meanwhile). The tracker counts the resource before the copy is
    /// taken: a write completed before the copy of its page is in the copy;
    /// a later one is recorded by the tracker (by its fault, or found by
    /// the next harvest, which may also come during the copy), so the next
    /// sync uploads it. Pages harvested while the BO had no tracker
    /// ([`BoState::untracked`]) are covered by the copy and dropped, so a
    /// new tracker starts empty, as vmwgfx's `dirty_add` does.
    pub fn add_resource(&self, bo: &Bo, gpu: &dyn GpuBackend, window: Range<u64>) -> Result<u32, SyncError> {
        let ps = bo.page_size;
        if window.start % ps != 0 || window.end % ps != 0 || window.is_empty() || window.end > bo.size {
            return Err(SyncError::BadWindow(format!(
                "resource window {}..{} must be a non-empty page-aligned range inside the BO's {} bytes",
                window.start, window.end, bo.size
            )));
        }
        let _serial = lock(&bo.sync_lock);
        let live = bo.state().resources.iter().filter(|r| r.is_some()).count();
        if live >= MAX_RESOURCES_PER_BO {
            return Err(SyncError::TooManyResources(live));
        }
        let len = window.end - window.start;
        let gpu_resource = gpu
            .create_resource(len)
            .map_err(|e| SyncError::BadWindow(format!("creating the GPU resource: {e}")))?;
        self.count_resource(bo);
        if let Err(e) = gpu_resource.upload(&bo.mapping, window.start, std::slice::from_ref(&(0..len))) {
            let mut st = bo.state();
            if let Some(t) = st.tracker.as_mut() {
                t.users = t.users.saturating_sub(1);
                if t.users == 0 {
                    st.stop_tracker();
                }
            }
            return Err(e.into());
        }
        let pages = len / ps;
        bo.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        bo.counters.bytes_uploaded.fetch_add(len, Ordering::Relaxed);
        self.counters.pages_uploaded.fetch_add(pages, Ordering::Relaxed);
        self.counters.bytes_uploaded.fetch_add(len, Ordering::Relaxed);
        let resource = Arc::new(Resource::new(window, gpu_resource));
        let mut st = bo.state();
        st.resources.push(Some(resource));
        Ok((st.resources.len() - 1) as u32)
    }

    /// vmwgfx `dirty_add`'s count: one more user of the tracker, or a new
    /// tracker under the BO's policy (MKWRITE write-protects the BO and
    /// records what was written before).
    fn count_resource(&self, bo: &Bo) {
        let mut st = bo.state();
        let views = bo.views();
        match st.tracker.as_mut() {
            Some(t) => t.users += 1,
            None => {
                let mut t = DirtyTracker::new(bo.pages());
                match st.policy {
                    BoPolicy::Auto => {}
                    BoPolicy::MkWrite => t.method = Method::MkWrite,
                    BoPolicy::PageTable => t.method = Method::PageTable,
                    BoPolicy::Full => {
                        t.dirty.record(0..bo.pages());
                        t.paused = Some(0);
                        t.method = Method::PageTable;
                    }
                }
                let mkwrite = t.method == Method::MkWrite && t.paused.is_none();
                // The whole window is copied next: what was harvested while
                // there was no tracker is in that copy.
                st.untracked = None;
                st.start_tracker(t);
                if mkwrite {
                    // Write-protect the whole BO, then clean-and-record:
                    // pages written before the add are recorded now.
                    self.harvest_all(bo, &mut st, &views, true);
                }
            }
        }
    }

    /// vmwgfx `dirty_release` of resource `index`.
    pub fn release_resource(&self, bo: &Bo, index: u32) -> Result<(), SyncError> {
        let mut st = bo.state();
        let slot = st
            .resources
            .get_mut(index as usize)
            .filter(|s| s.is_some())
            .ok_or(SyncError::NoSuchResource(index))?;
        *slot = None;
        let gone = match st.tracker.as_mut() {
            Some(t) => {
                t.users = t.users.saturating_sub(1);
                t.users == 0
            }
            None => false,
        };
        if gone {
            // The page-table state (writable, dirty) stays as it is, as in
            // vmwgfx; harvests until a new add record into the BO's
            // untracked pages, which the next tracker starts from.
            st.stop_tracker();
        }
        Ok(())
    }

    /// Removes a view after harvesting it (vmwgfx `pre_unmap`, spec §4.4):
    /// in PAGETABLE mode its written pages are cleaned and recorded; in
    /// MKWRITE mode its pending first writes are recorded. A view whose
    /// process is gone is marked dirty whole.
    pub fn remove_view(&self, bo: &Bo, view: &Arc<View>) {
        bo.structural_change(|| {
            // PAGETABLE, non-eager: the harvest runs without the state lock
            // (it may be long); a sync that took its runs meanwhile misses
            // what it records, which the sequence count makes it retry.
            // Stable for the whole change: a mechanism switch is a
            // structural change too.
            let tracker = view.mm.tracker();
            let method = bo.state().tracker.as_ref().map(|t| t.method);
            let pre = (method == Some(Method::PageTable) && !tracker.eager())
                .then(|| vec![(view.clone(), self.harvest_raw(bo, view))]);
            let mut st = bo.state();
            let one = [view.clone()];
            match (st.tracker.as_ref().map(|t| t.method), pre) {
                (_, Some(found)) => {
                    self.apply_harvest(bo, &mut st, found);
                }
                (Some(Method::MkWrite), None) => self.observe(bo, &mut st, &one),
                // Without a tracker too: what it finds waits for the next
                // tracker (the view's written state dies with it).
                (_, None) => {
                    self.harvest_all(bo, &mut st, &one, true);
                }
            }
            bo.detach_view(view);
            if tracker.eager() {
                // Nobody resolves faults on a forgotten view: leave it
                // writable (the client is unmapping it, or its connection is
                // gone) and wake anyone already waiting.
                tracker.release(view.range());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use cohmem_sys::mapping::SharedMapping;

    use super::SyncEngine;
    use crate::bo::Bo;
    use crate::gpu::soft::SoftGpu;
    use crate::gpu::{GpuBackend, GpuError, GpuResource};
    use crate::stats::DaemonCounters;

    /// A software GPU whose uploads fail while `fail` is set (unit-test
    /// fault injection; the real backends are tested end to end).
    struct FlakyGpu(Arc<AtomicBool>);
    struct FlakyResource(Box<dyn GpuResource>, Arc<AtomicBool>);

    impl GpuBackend for FlakyGpu {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
            Ok(Box::new(FlakyResource(
                SoftGpu::new().create_resource(size)?,
                self.0.clone(),
            )))
        }
        fn create_image(&self, width: u32, height: u32, fourcc: u32) -> Result<Box<dyn GpuResource>, GpuError> {
            Ok(Box::new(FlakyResource(
                SoftGpu::new().create_image(width, height, fourcc)?,
                self.0.clone(),
            )))
        }
    }

    impl GpuResource for FlakyResource {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn image(&self) -> Option<cohmem_proto::ImageInfo> {
            self.0.image()
        }
        fn upload(&self, src: &SharedMapping, base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
            if self.1.load(Ordering::Relaxed) {
                return Err(GpuError::Unsupported("injected upload failure".into()));
            }
            self.0.upload(src, base, runs)
        }
        fn download(&self, dst: &SharedMapping, base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
            self.0.download(dst, base, runs)
        }
        fn export_fd(&self) -> Result<OwnedFd, GpuError> {
            self.0.export_fd()
        }
    }

    fn record(bo: &Bo, r: Range<u64>) {
        bo.state().tracker.as_mut().unwrap().dirty.record(r);
    }

    #[test]
    fn failed_upload_folds_its_runs_back_and_the_next_sync_uploads_them() {
        let fail = Arc::new(AtomicBool::new(true));
        let ps = cohmem_sys::page_size();
        let bo = Bo::create(1, 16 * ps, &FlakyGpu(fail.clone()), true).unwrap();
        record(&bo, 3..5);
        record(&bo, 9..10);
        let counters = DaemonCounters::default();
        let engine = SyncEngine::new(&counters);
        assert!(engine.sync(&bo, true).is_err());
        assert_eq!(
            engine.dirty_state(&bo).dirty_pages,
            3,
            "runs of a failed upload must be folded back"
        );
        assert_eq!(counters.upload_failures.load(Ordering::Relaxed), 1);
        fail.store(false, Ordering::Relaxed);
        let report = engine.sync(&bo, true).unwrap();
        assert_eq!(report.pages, 3);
        assert_eq!(report.run_count, 2);
        assert_eq!(engine.dirty_state(&bo).dirty_pages, 0);
        assert_eq!(engine.sync(&bo, true).unwrap().pages, 0);
    }

    #[test]
    fn resources_take_only_their_window_and_the_last_release_drops_the_tracker() {
        let ps = cohmem_sys::page_size();
        let gpu = SoftGpu::new();
        let bo = Bo::create(1, 20 * ps, &gpu, false).unwrap();
        let counters = DaemonCounters::default();
        let engine = SyncEngine::new(&counters);
        assert_eq!(engine.dirty_state(&bo).method, 0, "no resource, no tracker");
        let a = engine.add_resource(&bo, &gpu, 0..10 * ps).unwrap();
        let b = engine.add_resource(&bo, &gpu, 10 * ps..20 * ps).unwrap();
        assert_eq!(engine.dirty_state(&bo).users, 2);
        record(&bo, 3..4);
        record(&bo, 15..16);
        let t = engine.transfer(&bo, a, true).unwrap();
        assert_eq!(t.pages, 1);
        assert_eq!(
            engine.dirty_state(&bo).dirty_pages,
            1,
            "the neighbouring window keeps its page"
        );
        engine.clear_resource(&bo, b).unwrap();
        assert_eq!(engine.dirty_state(&bo).dirty_pages, 0);
        engine.release_resource(&bo, a).unwrap();
        engine.release_resource(&bo, b).unwrap();
        assert_eq!(engine.dirty_state(&bo).users, 0);
        assert!(engine.release_resource(&bo, b).is_err());
        assert!(engine.add_resource(&bo, &gpu, 0..21 * ps).is_err());
    }

    #[test]
    fn pages_recorded_without_a_tracker_are_in_the_next_resources_copy() {
        let ps = cohmem_sys::page_size();
        let gpu = SoftGpu::new();
        let bo = Bo::create(1, 8 * ps, &gpu, false).unwrap();
        let counters = DaemonCounters::default();
        let engine = SyncEngine::new(&counters);
        // A client's mapping (the daemon's own is read-only).
        let back = SharedMapping::map(std::os::fd::AsFd::as_fd(bo.memfd()), 8 * ps, 0, true).unwrap();
        back.write_at((2 * ps) as usize, b"before any resource").unwrap();
        engine.damage(&bo, 2 * ps, ps).unwrap();
        assert!(bo.state().untracked.is_some(), "kept while there is no tracker");
        let a = engine.add_resource(&bo, &gpu, 0..8 * ps).unwrap();
        let st = bo.state();
        assert!(st.untracked.is_none());
        assert_eq!(
            st.tracker.as_ref().map(|t| t.dirty.dirty_pages()),
            Some(0),
            "a new tracker starts empty, as vmwgfx's"
        );
        let res = st.resources[a as usize].clone().unwrap();
        drop(st);
        back.fill(0, (8 * ps) as usize, 0).unwrap();
        res.gpu.download(&back, 0, std::slice::from_ref(&(0..8 * ps))).unwrap();
        let mut got = [0u8; 19];
        back.read_at((2 * ps) as usize, &mut got).unwrap();
        assert_eq!(&got, b"before any resource", "the add copied the window");
    }
}
