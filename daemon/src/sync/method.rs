//! Switches to PAGETABLE (spec §3.2 step 5): vmwgfx's, which cleans every
//! view and fills the envelope (method switches never under-report,
//! DESIGN.md §5.3), and the exact one of [`MethodPolicy::Auto`] for BOs
//! whose views all only harvest. (PAGETABLE → MKWRITE is a harvest of every
//! view; its callers do it in place.)

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::Method;

use super::SyncEngine;
use crate::bo::{lock, Bo, BoState, View};
use crate::policy::MethodPolicy;

impl SyncEngine<'_> {
    /// True when [`MethodPolicy::Auto`] keeps this BO in PAGETABLE: every
    /// live view's mechanism only harvests.
    pub(super) fn pagetable_only(&self, views: &[Arc<View>]) -> bool {
        let mut live = views.iter().filter(|v| !v.dead.load(Ordering::Acquire)).peekable();
        self.methods == MethodPolicy::Auto && live.peek().is_some() && live.all(|v| v.mm.tracker().harvests_only())
    }

    /// MKWRITE → PAGETABLE (spec §3.2 step 5): clean every view with a
    /// throw-away envelope, then bitmap := all ones on the envelope. Writes
    /// that arrived after the last observe would have faulted and been
    /// recorded in vmwgfx, so they are recorded here too, not thrown away.
    pub(super) fn switch_to_pagetable(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
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
    pub(super) fn switch_to_pagetable_exact(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
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
}
