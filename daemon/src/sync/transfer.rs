//! vmwgfx `transfer_to_res` (spec §4.6) and the upload: dirty runs leave
//! the bitmap under the state lock, then are copied into their resources
//! without it; an upload that fails folds its runs back (DESIGN.md §5.1,
//! "collect before copy"). Image resources keep the damage they received,
//! handed to the next SYNC or TRANSFER reply.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cohmem_proto::SyncReport;

use super::hot::normalised;
use super::{SyncEngine, SyncError, Transfer};
use cohmem_sys::mapping::SharedMapping;

use crate::bo::{lock, split_runs, Bo, BoState, Resource};

impl SyncEngine<'_> {
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

    /// vmwgfx `transfer_to_res`: takes resource `index`'s dirty runs out of
    /// the bitmap (state lock held). The caller uploads them.
    fn take_runs(&self, bo: &Bo, st: &mut BoState, index: u32) -> Result<(Arc<Resource>, Vec<Range<u64>>), SyncError> {
        let res = Self::resource(st, index)?;
        let Some(t) = st.tracker.as_mut() else {
            return Ok((res, Vec::new()));
        };
        let ps = bo.page_size;
        let window = res.window.start / ps..res.window.end / ps;
        let mut runs = t.dirty.transfer_window(window.clone());
        // What a shadow owes every resource, this one's share too (it stays
        // owed to the others).
        let (owed, _) = split_runs(&st.shadow_owed, std::slice::from_ref(&window));
        if !owed.is_empty() {
            runs.extend(owed);
            runs = normalised(runs);
        }
        self.protect_clean_writable(bo, st);
        Ok((res, runs))
    }

    /// The transfer of a SYNC: every resource gets every dirty page of its
    /// window, then the bits leave the bitmap. vmwgfx's `transfer_to_res`
    /// one resource after the other would hand a page of two overlapping
    /// windows (a resource added over part of the default whole-BO one) to
    /// the first only, and the second would never receive it (nor would a
    /// READBACK then copy the right bytes back). Windows that do not
    /// overlap get exactly what `transfer_to_res` hands them.
    pub(super) fn take_all_runs(
        &self,
        bo: &Bo,
        st: &mut BoState,
        order: &[(u64, u32)],
    ) -> Result<Vec<Transfer>, SyncError> {
        let ps = bo.page_size;
        let resources = order
            .iter()
            .map(|&(_, index)| Self::resource(st, index))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(t) = st.tracker.as_mut() else {
            return Ok(resources.into_iter().map(|r| (r, Vec::new())).collect());
        };
        // Every resource gets what a shadow owes some of them.
        for r in std::mem::take(&mut st.shadow_owed) {
            t.dirty.record(r);
        }
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

    /// Copies taken runs into their resources without the state lock (writers
    /// and the fault service go on meanwhile); on failure the runs not yet
    /// uploaded are folded back. Returns every run uploaded. Pages whose new
    /// bytes the shadow took and that a resource left out of `work` covers
    /// are owed to it (`BoState::shadow_owed`), whatever happens next.
    pub(super) fn upload(
        &self,
        bo: &Bo,
        work: Vec<(Arc<Resource>, Vec<Range<u64>>)>,
    ) -> Result<Vec<Range<u64>>, SyncError> {
        let ps = bo.page_size;
        let mut done = Vec::new();
        // While the BO compares, the pages go BO → shadow (once, for every
        // resource) → GPU (`super::shadow`); with hot ranges, their pages
        // do (`super::hot`), the others go BO → GPU.
        let (shadow, hot) = {
            let st = bo.state();
            let hot = match (&st.shadow, &st.hot.shadow) {
                (None, Some(s)) if !st.hot.active.is_empty() => Some((s.clone(), st.hot.active_pages())),
                _ => None,
            };
            (st.shadow.clone(), hot)
        };
        let mut every_run: Vec<Range<u64>> = work.iter().flat_map(|(_, runs)| runs.iter().cloned()).collect();
        every_run.sort_unstable_by_key(|r| r.start);
        let refreshed = match (&shadow, &hot) {
            (Some(s), _) => Self::refresh_shadow(bo, s, &every_run),
            (None, Some((s, ranges))) => Self::refresh_shadow(bo, s, &split_runs(&every_run, ranges).0),
            (None, None) => Ok(Vec::new()),
        }
        .map_err(crate::gpu::GpuError::from);
        let mut failed = match refreshed {
            Ok(changed) => {
                Self::owe_to_others(bo, &work, &changed);
                None
            }
            Err(e) => Some(e),
        };
        let mut pending = work.into_iter();
        let mut failed_runs = Vec::new();
        if failed.is_none() {
            for (res, runs) in pending.by_ref() {
                if runs.is_empty() {
                    continue;
                }
                let parts = match (&shadow, &hot) {
                    (Some(s), _) => vec![(&s.map, runs.clone())],
                    (None, Some((s, ranges))) => {
                        let (inside, outside) = split_runs(&runs, ranges);
                        vec![(&bo.mapping, outside), (&s.map, inside)]
                    }
                    (None, None) => vec![(&bo.mapping, runs.clone())],
                };
                let first = res.window.start / ps;
                let bytes = |runs: &[Range<u64>]| -> Vec<Range<u64>> {
                    runs.iter()
                        .map(|r| (r.start - first) * ps..(r.end - first) * ps)
                        .collect()
                };
                let parts: Vec<(&SharedMapping, Vec<Range<u64>>)> =
                    parts.into_iter().map(|(source, part)| (source, bytes(&part))).collect();
                if let Err(e) = res.upload_parts(&parts, &bytes(&runs)) {
                    failed = Some(e);
                    failed_runs = runs;
                    break;
                }
                done.extend(runs);
            }
        }
        if let Some(e) = failed {
            let mut st = bo.state();
            if let Some(t) = st.tracker.as_mut() {
                t.dirty.fold_back(&failed_runs);
                for (_, later) in pending {
                    t.dirty.fold_back(&later);
                }
            }
            self.counters.upload_failures.fetch_add(1, Ordering::Relaxed);
            crate::limited!(warn, "upload failed", bo.id, bo = bo.id, error = %e, "upload failed; runs folded back");
            return Err(e.into());
        }
        Ok(done)
    }

    /// Records as owed (`BoState::shadow_owed`) the pages of `changed` (new
    /// bytes the shadow just took) that a live resource not in `work`
    /// covers: it has not received them, and no compare will find them.
    fn owe_to_others(bo: &Bo, work: &[(Arc<Resource>, Vec<Range<u64>>)], changed: &[Range<u64>]) {
        if changed.is_empty() {
            return;
        }
        let ps = bo.page_size;
        let mut st = bo.state();
        let others: Vec<Range<u64>> = st
            .resources
            .iter()
            .flatten()
            .filter(|r| !work.iter().any(|(w, _)| Arc::ptr_eq(w, r)))
            .map(|r| r.window.start / ps..r.window.end / ps)
            .collect();
        let mut owed = std::mem::take(&mut st.shadow_owed);
        for w in others {
            owed.extend(split_runs(changed, std::slice::from_ref(&w)).0);
        }
        st.shadow_owed = normalised(owed);
    }

    pub(super) fn resource(st: &BoState, index: u32) -> Result<Arc<Resource>, SyncError> {
        st.resources
            .get(index as usize)
            .and_then(Option::clone)
            .ok_or(SyncError::NoSuchResource(index))
    }

    /// The rectangles the BO's image resource received since the last
    /// report (DESIGN.md §8); `None` for a byte BO.
    pub(super) fn take_damage(st: &BoState) -> Option<cohmem_proto::ImageDamage> {
        st.resources.iter().flatten().find_map(|r| r.take_damage())
    }
}
