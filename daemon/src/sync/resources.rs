//! The tracker's users and the BO's views come and go: vmwgfx `dirty_add`
//! with the bind's full copy (spec §4.1), `dirty_release` (§4.2), and
//! `pre_unmap` of a view leaving (§4.4), a structural change for seed 000.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method};

use super::{SyncEngine, SyncError, MAX_RESOURCES_PER_BO};
use crate::bo::{lock, Bo, Resource, View};
use crate::gpu::GpuBackend;
use crate::policy::DirtyTracker;

impl SyncEngine<'_> {
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
    /// ([`BoState::untracked`](crate::bo::BoState::untracked)) are covered
    /// by the copy and dropped, so a new tracker starts empty, as vmwgfx's
    /// `dirty_add` does.
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
        let resource = Arc::new(Resource::new(window.clone(), gpu_resource));
        let mut st = bo.state();
        st.resources.push(Some(resource));
        let index = (st.resources.len() - 1) as u32;
        // Compared: the new resource received the BO's bytes, not the
        // shadow's (`super::shadow`).
        Self::mark_window_if_comparing(bo, &mut st, window);
        Ok(index)
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
                    BoPolicy::Full | BoPolicy::Shadow => {
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
                .then(|| vec![(view.clone(), self.harvest_raw(bo, view, &[]))]);
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
            // Its reports of hot pages were dropped: compared instead.
            Self::hot_compare(bo, &mut st);
            bo.detach_view(view);
            tracker.forget(view.range());
            if tracker.eager() {
                // Nobody resolves faults on a forgotten view: leave it
                // writable (the client is unmapping it, or its connection is
                // gone) and wake anyone already waiting.
                tracker.release(view.range());
            }
        });
    }
}
