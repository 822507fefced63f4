//! Dense-write pauses (`crate::policy::DensePolicy`): when a
//! PAGETABLE harvest finds most of the BO written, tracking is paused (every
//! view unprotected, whole-BO uploads) and probed again now and then, so the
//! cost of write faults is not paid for a BO written whole every frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, ScanReport};

use super::{Harvested, SyncEngine};
use crate::bo::{Bo, BoState, View};
use crate::policy::DenseDecision;

impl SyncEngine<'_> {
    /// A scan while tracking is paused for dense writes: the whole BO is
    /// written (the views are unprotected, so nothing else can be known);
    /// every [`DensePolicy::probe_every`](crate::policy::DensePolicy::probe_every)
    /// syncs the views are write-protected again (a harvest does it) so the
    /// next frame's density is measured.
    pub(super) fn scan_paused(
        &self,
        bo: &Bo,
        st: &mut BoState,
        views: &[Arc<View>],
        pre: Option<Vec<Harvested>>,
    ) -> ScanReport {
        // The `full` and `shadow` policies pause for good: no probes.
        let compares = Self::compares(st);
        let pinned = compares || st.policy == BoPolicy::Full;
        let marked = if compares {
            Self::scan_shadow(bo, st)
        } else {
            let Some(t) = st.tracker.as_mut() else {
                return ScanReport::default();
            };
            let n = t.dirty.pages();
            t.dirty.record(0..n);
            n
        };
        let Some(t) = st.tracker.as_mut() else {
            return ScanReport::default();
        };
        let probe = !pinned && t.paused_sync();
        if let Some(found) = pre {
            self.apply_harvest(bo, st, found);
        }
        if probe {
            self.harvest_all(bo, st, views, true);
            tracing::debug!(bo = bo.id, "dense writes: probing with tracking resumed");
        }
        self.scan_report(st, marked, None)
    }

    /// After a PAGETABLE harvest that found `num_marked` pages: pauses
    /// tracking (unprotects every view) when the policy finds the writes
    /// dense and every view's mechanism can be paused.
    pub(super) fn pause_if_dense(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], num_marked: u64) {
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
    pub(super) fn unprotect_all(bo: &Bo, live: &[&Arc<View>]) {
        for view in live {
            if let Err(e) = view.mm.tracker().unprotect(view.range()) {
                // Still protected: it faults, and costs time, nothing else.
                tracing::debug!(bo = bo.id, view = view.id, error = %e, "unprotect for a tracking pause failed");
            }
        }
    }
}
