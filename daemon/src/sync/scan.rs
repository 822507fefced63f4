//! vmwgfx `scan` (spec §3, §4.3): one step of the method state machine.
//! PAGETABLE harvests every view and may switch to MKWRITE; MKWRITE records
//! pending first writes, re-protects the envelope and may switch back;
//! both count changes (spec §3.3). A paused BO goes to [`super::dense`];
//! an operator's policy pins the method.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method, ScanReport};

use super::{method_of, Harvested, SyncEngine};
use crate::bo::{lock, Bo, BoState, View};
use crate::policy::ScanDecision;

impl SyncEngine<'_> {
    /// vmwgfx `scan` alone.
    pub fn scan(&self, bo: &Bo) -> ScanReport {
        let _serial = lock(&bo.sync_lock);
        let mut st = bo.state();
        let views = bo.views();
        let report = self.scan_locked(bo, &mut st, &views);
        Self::hot_compare(bo, &mut st);
        report
    }

    /// vmwgfx `scan` (spec §3), with the state lock held.
    fn scan_locked(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) -> ScanReport {
        self.scan_locked_pre(bo, st, views, None)
    }

    /// vmwgfx `scan`, where `pre` holds the PAGETABLE harvest of the
    /// non-eager views already done outside the lock (None: harvest here).
    pub(super) fn scan_locked_pre(
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
        let whole_marked = Self::mark_whole_for_full_clients(st, views);
        let num_marked;
        match method {
            Method::PageTable | Method::None => {
                let (marked, to) = self.scan_pagetable(bo, st, views, pre, pinned, whole_marked);
                num_marked = marked;
                if let Some(m) = to {
                    switched = Some(m);
                }
            }
            Method::MkWrite => {
                let Some((marked, to)) = self.scan_mkwrite(bo, st, views, pinned) else {
                    // Empty envelope: return at once, count untouched.
                    return self.scan_report(st, 0, None);
                };
                num_marked = marked;
                if let Some(m) = to {
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

    /// `full` clients: no tracking, the whole BO is written at every scan.
    /// Returns the pages so marked (none without such a client).
    fn mark_whole_for_full_clients(st: &mut BoState, views: &[Arc<View>]) -> u64 {
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
        whole_marked
    }

    /// The PAGETABLE (or no-method) step of a scan (spec §3.1): harvest
    /// every view, or record what the harvest outside the lock found and
    /// harvest the eager views; then the state machine decides whether to
    /// switch to MKWRITE, and a BO that stays may pause for dense writes.
    /// Returns the pages found (with `whole_marked`) and the method
    /// switched to, if any.
    fn scan_pagetable(
        &self,
        bo: &Bo,
        st: &mut BoState,
        views: &[Arc<View>],
        pre: Option<Vec<Harvested>>,
        pinned: bool,
        whole_marked: u64,
    ) -> (u64, Option<Method>) {
        let num_marked = match pre {
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
        let mut switched = None;
        if let ScanDecision::Switch(m) = decision {
            // Write-protect the whole BO, then clean-and-record once
            // more: a harvest does both, atomically per page.
            self.harvest_all(bo, st, views, true);
            switched = Some(m);
        } else if !pinned {
            self.pause_if_dense(bo, st, views, num_marked - whole_marked);
        }
        (num_marked, switched)
    }

    /// The MKWRITE step of a scan (spec §3.2): record pending first writes,
    /// re-protect the known-writable pages in the envelope, then the state
    /// machine decides whether to switch to PAGETABLE. Returns the pages
    /// re-protected and the method switched to, if any; `None` for an
    /// empty envelope (the caller returns at once, count untouched).
    fn scan_mkwrite(
        &self,
        bo: &Bo,
        st: &mut BoState,
        views: &[Arc<View>],
        pinned: bool,
    ) -> Option<(u64, Option<Method>)> {
        self.observe(bo, st, views);
        // Empty envelope: `None`, the caller returns at once.
        let envelope = st.tracker.as_ref().and_then(|t| t.dirty.envelope())?;
        let num_marked = self.reprotect(bo, st, views, envelope);
        let decision = st.tracker.as_mut().map_or(ScanDecision::Stay, |t| match pinned {
            true => {
                t.change_count = 0;
                ScanDecision::Stay
            }
            false => t.after_mkwrite_reprotect(num_marked),
        });
        let mut switched = None;
        if let ScanDecision::Switch(m) = decision {
            self.switch_to_pagetable(bo, st, views);
            switched = Some(m);
        }
        Some((num_marked, switched))
    }

    pub(super) fn scan_report(&self, st: &BoState, num_marked: u64, switched: Option<Method>) -> ScanReport {
        ScanReport {
            method: method_of(st) as u16,
            switched_to: switched.map_or(0, |m| m as u16),
            change_count: st.tracker.as_ref().map_or(0, |t| t.change_count),
            num_marked,
        }
    }
}
