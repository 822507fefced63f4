//! The `shadow` policy (issue 19): no tracking; a SYNC compares the BO with
//! the copy the GPU last received and uploads the pages that differ, the
//! way VNC servers find damage nobody reports (QEMU compares 16-pixel
//! chunks, TigerVNC 64×64 blocks; `shared/research/display.md` §2). For
//! small BOs and dense rewrites a compare costs less than write faults or
//! page-table scans.
//!
//! Why no write is lost: the GPU resources hold exactly the shadow's bytes
//! for every page not marked dirty. A page the compare finds equal to the
//! shadow therefore already is on the GPU; a page that differs is marked
//! dirty, and its upload ([`SyncEngine::upload`]) first copies the BO's
//! page into the shadow and then the shadow's page to the GPU, so the
//! invariant holds again whatever the client writes meanwhile (a write
//! after the compare is found by the next one). Entering the policy, and a
//! resource added under it, mark the whole BO dirty, so pages the shadow
//! has never seen are uploaded through it first.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};

use super::SyncEngine;
use crate::bo::{lock, Bo, BoState, Shadow, View};
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
        if self.methods != MethodPolicy::Auto || bo.size > self.shadow_max_bytes || st.policy != BoPolicy::Auto {
            return;
        }
        let Some(t) = st.tracker.as_ref() else {
            return;
        };
        if t.paused.is_some() {
            return;
        }
        let live: Vec<&Arc<View>> = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).collect();
        if !self.pagetable_only(views) || !live.iter().all(|v| v.mm.tracker().can_pause()) {
            return;
        }
        let mut slot = lock(&bo.shadow);
        // A shadow left from before the BO's tracker stopped is stale.
        *slot = None;
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
        *slot = Some(shadow);
        tracing::debug!(
            bo = bo.id,
            size = bo.size,
            "small BO: compared with a shadow copy instead of tracked"
        );
    }

    /// True when the BO's scans compare with a shadow (the `shadow`
    /// policy, or `auto`'s choice for a small BO).
    pub(super) fn compares(bo: &Bo, st: &BoState) -> bool {
        st.policy == BoPolicy::Shadow || lock(&bo.shadow).is_some()
    }

    /// Gives `bo` its shadow (under the `shadow` policy) or drops it (any
    /// other). Called with `bo.sync_lock` held.
    pub(super) fn keep_shadow(bo: &Bo, wanted: bool) {
        let mut shadow = lock(&bo.shadow);
        if !wanted {
            *shadow = None;
        } else if shadow.is_none() {
            *shadow = Shadow::create(bo.id, bo.size);
        }
    }

    /// The scan of a BO under the `shadow` policy: marks the pages that
    /// differ from the shadow and returns how many; without a shadow (BO
    /// too large, no memory) the whole BO, as `full` does.
    pub(super) fn scan_shadow(bo: &Bo, st: &mut BoState) -> u64 {
        let Some(t) = st.tracker.as_mut() else {
            return 0;
        };
        let n = t.dirty.pages();
        let found = lock(&bo.shadow).as_ref().map(|s| {
            bo.mapping
                .differing_blocks(&s.map, 0, bo.size as usize, bo.page_size as usize)
        });
        match found {
            Some(Ok(runs)) => {
                let mut marked = 0;
                for r in runs {
                    marked += r.end - r.start;
                    t.dirty.record(r);
                }
                marked
            }
            other => {
                if let Some(Err(e)) = other {
                    crate::limited!(warn, "shadow compare failed", bo.id, bo = bo.id, error = %e, "shadow compare failed: whole BO marked");
                }
                t.dirty.record(0..n);
                n
            }
        }
    }

    /// The upload source for `runs` (BO pages): the shadow, refreshed from
    /// the BO for exactly those pages, or `None` without a shadow (upload
    /// from the BO). Called with `bo.sync_lock` held.
    pub(super) fn refresh_shadow<'s>(
        bo: &Bo,
        shadow: &'s Option<Shadow>,
        runs: &[Range<u64>],
    ) -> Result<Option<&'s Shadow>, cohmem_sys::SysError> {
        let Some(s) = shadow.as_ref() else {
            return Ok(None);
        };
        let ps = bo.page_size as usize;
        for r in runs {
            let (at, len) = (r.start as usize * ps, (r.end - r.start) as usize * ps);
            bo.mapping.copy_to(at, &s.map, at, len)?;
        }
        Ok(Some(s))
    }
}
