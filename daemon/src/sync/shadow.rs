//! Comparing instead of tracking (issue 19): the `shadow` policy, and
//! `auto`'s choice for small BOs. A SYNC compares the BO with the copy the
//! GPU last received and uploads the pages that differ, the way VNC servers
//! find damage nobody reports (QEMU compares 16-pixel chunks, TigerVNC
//! 64×64 blocks; `shared/research/display.md` §2). For small BOs a compare
//! costs less than write faults and page-table scans.
//!
//! Why no write is lost: every GPU resource holds exactly the shadow's
//! bytes for every page not marked dirty. A page the compare finds equal to
//! the shadow therefore already is on the GPU; a page that differs is
//! marked dirty, and an upload ([`SyncEngine::upload`]) first copies the
//! BO's dirty pages into the shadow, once for all resources, and then the
//! shadow's pages to each resource, so the invariant holds again whatever
//! the client writes meanwhile (a write after the compare is found by the
//! next one). What would break it is kept out:
//!
//! * entering the `shadow` policy marks the whole BO dirty (the shadow is
//!   new), and so does a shadow the scan has to make again;
//! * a resource added while comparing received the BO's bytes, not the
//!   shadow's: its window is marked dirty;
//! * READBACK writes the GPU's bytes into the BO, and into the shadow too
//!   (where windows overlap, they are marked dirty instead);
//! * CLEAR_RESOURCE and CLEAR_ALL drop dirty bits, which compare cannot
//!   honour (the GPU then holds bytes the shadow does not): the BO goes
//!   back to tracking first ([`SyncEngine::stop_comparing`]);
//! * the shadow lives with the tracker (`BoState::shadow`) and dies with it.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};

use super::SyncEngine;
use crate::bo::{Bo, BoState, Shadow, View};
use crate::policy::MethodPolicy;

impl SyncEngine<'_> {
    /// `auto`'s choice for a small BO (`TrackingPolicy::shadow_max_bytes`)
    /// whose views all use uffd-async: after this sync's scan, stop
    /// tracking and compare from now on. Called with the state lock and
    /// `bo.sync_lock` held, right after the scan.
    ///
    /// The shadow must equal the GPU for every page not marked dirty. The
    /// scan's harvest left exactly the pages written since their upload
    /// dirty, so a clean page's BO bytes are on the GPU; the BO is copied
    /// into the shadow, then a second harvest marks the pages written since
    /// the first (during the copy included). A page clean after both was
    /// not written in between, so its copy is what the GPU has. Only then
    /// are the views unprotected.
    pub(super) fn maybe_shadow_small(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        if self.methods != MethodPolicy::Auto
            || bo.gpu_shared.load(Ordering::Acquire)
            || bo.size > self.shadow_max_bytes
            || st.policy != BoPolicy::Auto
            || st.shadow.is_some()
        {
            return;
        }
        if st.tracker.as_ref().is_none_or(|t| t.paused.is_some()) {
            return;
        }
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        if !self.pagetable_only(views) || !live.iter().all(|v| v.mm.tracker().can_pause()) {
            return;
        }
        let Some(shadow) = Shadow::create_automatic(bo.id, bo.size) else {
            return;
        };
        if let Err(e) = bo.mapping.copy_to(0, &shadow.map, 0, bo.size as usize) {
            tracing::debug!(bo = bo.id, error = %e, "no shadow for a small BO: the copy failed");
            return;
        }
        self.harvest_all(bo, st, views, true);
        let Some(t) = st.tracker.as_mut() else {
            return;
        };
        t.paused = Some(0);
        t.method = Method::PageTable;
        Self::unprotect_all(bo, &live);
        st.shadow = Some(Arc::new(shadow));
        tracing::debug!(
            bo = bo.id,
            size = bo.size,
            "small BO: compared with a shadow copy instead of tracked"
        );
    }

    /// True when the BO's scans compare with a shadow (the `shadow`
    /// policy, or `auto`'s choice for a small BO).
    pub(super) fn compares(st: &BoState) -> bool {
        st.policy == BoPolicy::Shadow || st.shadow.is_some()
    }

    /// Back from comparing to tracking, before an operation compare cannot
    /// honour (CLEAR_*). `auto`'s small BO: the views are write-protected
    /// first (nothing recorded: unprotected, they would report every page),
    /// then the compare records what changed before that, and tracking
    /// resumes exactly (a later sync may compare again). Under the `shadow`
    /// policy the copy is dropped and the next scan makes it again, with
    /// the whole BO marked (as `full` would upload it).
    pub(super) fn stop_comparing(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
        // Hot ranges too: they compare, so a CLEAR could not drop their bits.
        self.drop_hot(bo, st, views);
        if st.shadow.is_none() {
            return;
        }
        if st.policy != BoPolicy::Shadow {
            self.harvest_all(bo, st, views, false);
            Self::scan_shadow(bo, st);
            if let Some(t) = st.tracker.as_mut() {
                t.paused = None;
                t.probing = false;
            }
        }
        st.shadow = None;
    }

    /// The scan of a compared BO: marks the pages that differ from the
    /// shadow and returns how many. Under the `shadow` policy without a
    /// shadow (new, dropped, or none to be had: over `MAX_SHADOW_BYTES` or
    /// the uid's byte quota, which the shadow is charged to) one is made
    /// and the whole BO marked, as `full` does.
    pub(super) fn scan_shadow(bo: &Bo, st: &mut BoState) -> u64 {
        let Some(t) = st.tracker.as_mut() else {
            return 0;
        };
        let n = t.dirty.pages();
        let found = match &st.shadow {
            Some(s) => bo
                .mapping
                .differing_blocks(&s.map, 0, bo.size as usize, bo.page_size as usize),
            None => {
                st.shadow = Shadow::create(bo.id, bo.size, bo.charge()).map(Arc::new);
                t.dirty.record(0..n);
                return n;
            }
        };
        match found {
            Ok(runs) => {
                let mut marked = 0;
                for r in runs {
                    marked += r.end - r.start;
                    t.dirty.record(r);
                }
                marked
            }
            Err(e) => {
                crate::limited!(warn, "shadow compare failed", bo.id, bo = bo.id, error = %e, "shadow compare failed: whole BO marked");
                t.dirty.record(0..n);
                n
            }
        }
    }

    /// Marks BO byte `window` dirty while the BO compares (a resource
    /// added, a READBACK of overlapping windows): its GPU bytes may differ
    /// from the shadow's.
    pub(super) fn mark_window_if_comparing(bo: &Bo, st: &mut BoState, window: Range<u64>) {
        let ps = bo.page_size;
        let pages = window.start / ps..window.end.div_ceil(ps);
        // Hot ranges compare too: their part of the window.
        let (hot, _) = crate::bo::split_runs(std::slice::from_ref(&pages), &st.hot.active_pages());
        hot.into_iter().for_each(|r| st.record_written(r));
        if st.shadow.is_none() {
            return;
        }
        if let Some(t) = st.tracker.as_mut() {
            t.dirty.record(window.start / ps..window.end.div_ceil(ps));
        }
    }

    /// Before an upload of BO page `runs` (every resource's, together): the
    /// pages whose BO bytes differ from the shadow's are copied into it,
    /// once, so every resource then receives the same bytes from it; they
    /// are returned. A page found equal keeps the shadow's bytes, which are
    /// the BO's as of the compare (a write after it is found by the next
    /// one). Called with `bo.sync_lock` held.
    pub(super) fn refresh_shadow(
        bo: &Bo,
        shadow: &Shadow,
        runs: &[Range<u64>],
    ) -> Result<Vec<Range<u64>>, cohmem_sys::SysError> {
        let mut all: Vec<Range<u64>> = runs.to_vec();
        all.sort_unstable_by_key(|r| r.start);
        let ps = bo.page_size as usize;
        let mut done = 0u64;
        let mut changed = Vec::new();
        for r in all {
            let start = r.start.max(done);
            if start < r.end {
                let (at, len) = (start as usize * ps, (r.end - start) as usize * ps);
                for d in bo.mapping.differing_blocks(&shadow.map, at, len, ps)? {
                    let (at, len) = (d.start as usize * ps, (d.end - d.start) as usize * ps);
                    bo.mapping.copy_to(at, &shadow.map, at, len)?;
                    changed.push(d);
                }
                done = r.end;
            }
        }
        Ok(changed)
    }
}
