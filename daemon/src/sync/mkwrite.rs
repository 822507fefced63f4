//! MKWRITE's page steps (spec §3.2, §4.9): `observe` records the first
//! writes since the last look, as vmwgfx's mkwrite handler would have at
//! fault time; `reprotect` is the MKWRITE scan's re-protect of writable
//! pages inside the envelope; `protect_clean_writable` re-protects writable
//! pages whose bit left the bitmap without a scan (a fix over vmwgfx, which
//! a test found losing a write). Re-protected pages keep their emulated
//! dirty bit (stale).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohmem_proto::Method;

use super::SyncEngine;
use crate::bo::{lock, Bo, BoState, View};

impl SyncEngine<'_> {
    /// MKWRITE: records the first writes since the last look (vmwgfx's
    /// mkwrite handler, applied lazily before any step that reads the
    /// bitmap). Pages written and not yet known writable are "faults".
    pub(super) fn observe(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>]) {
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

    /// MKWRITE re-protect of the known-writable pages inside `envelope`;
    /// returns how many were re-protected, per view.
    pub(super) fn reprotect(&self, bo: &Bo, st: &mut BoState, views: &[Arc<View>], envelope: Range<u64>) -> u64 {
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

    /// After bits left the bitmap without a scan (TRANSFER, CLEAR, CLEAR_ALL,
    /// or the transfer of a SYNC), MKWRITE: re-protects every writable page
    /// whose bit is now clear, outside the envelope or inside it (a TRANSFER
    /// of one resource while others keep the envelope open). vmwgfx leaves
    /// them writable, so a later write to one would never be recorded (its
    /// transfers always follow a scan; ours need not): a test found the
    /// inside case losing a write. The pages keep their emulated dirty bit
    /// (stale), as any re-protected page. The reference model does the same
    /// (`ModelConfig::protect_clean_writable`).
    pub(super) fn protect_clean_writable(&self, bo: &Bo, st: &mut BoState) {
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
}
