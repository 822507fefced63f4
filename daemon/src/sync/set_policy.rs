//! SET_POLICY: an operator pins how a BO is tracked (`auto`, `mkwrite`,
//! `pagetable`, `full`, `shadow`). Leaving a pause marks the BO dirty whole; a pinned
//! method is switched to the way the state machine would switch to it, so
//! no write is lost either way (DESIGN.md §5.1, §5.3).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};

use super::{method_of, SyncEngine};
use crate::bo::{lock, Bo, View};
use crate::policy::FIRST_PROBE;

impl SyncEngine<'_> {
    /// SET_POLICY: pins how `bo` is tracked and returns the policy before
    /// and the method now. Leaving a pause (the `full` policy or a
    /// dense-write pause) marks the whole BO dirty and write-protects the
    /// views again; a pinned method is switched to at once, the way the
    /// state machine would switch to it, so no write is lost either way.
    pub fn set_policy(&self, bo: &Bo, policy: BoPolicy) -> (BoPolicy, Method) {
        let _serial = lock(&bo.sync_lock);
        let mut st = bo.state();
        let previous = std::mem::replace(&mut st.policy, policy);
        // Whatever comes next starts without a shadow: leaving a compare
        // marks the whole BO (it was a pause, below), and the `shadow`
        // policy's first scan makes a new one, marking the whole BO.
        st.shadow = None;
        let views = bo.views();
        // Hot ranges are `auto`'s: compared and tracked again first.
        self.drop_hot(bo, &mut st, &views);
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
            BoPolicy::Full | BoPolicy::Shadow => {
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
}
