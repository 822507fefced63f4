//! Writes that bypass every tracked mapping (DESIGN.md §5.5; issue 14,
//! item 11): `pwrite` on a BO's memfd, `fallocate(PUNCH_HOLE)` and
//! `madvise(MADV_REMOVE)` change its bytes without any write fault or
//! written PTE. Where the kernel reports them as inotify `IN_MODIFY` on the
//! memfd (up to Linux 6.13; probed at start as `memfd_modify_events`), a BO
//! so modified is marked wholly dirty before its next sync, transfer, scan
//! or readback: the event names the file, not the range.
//!
//! The ordering that makes this exact: the kernel queues the event before
//! the modifying call returns, and every operation drains the queue (under
//! one lock, so an event another request read is recorded before this one
//! looks) before it looks at its BO's dirty state.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, Weak};

use cohmem_sys::inotify::{ModifyWatch, WatchId};

use crate::bo::{lock, Bo};

/// The daemon's inotify watch on every BO's memfd.
pub struct BypassWatch {
    watch: Option<ModifyWatch>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Watched BOs by watch descriptor.
    by_watch: HashMap<WatchId, Weak<Bo>>,
    /// BOs modified since their last [`BypassWatch::take`], by id.
    modified: HashSet<u64>,
}

impl BypassWatch {
    /// Watches for fd writes where the kernel reports them (`events`: the
    /// start-up probe's verdict); a no-op elsewhere.
    pub fn new(events: bool) -> Self {
        let watch = if events {
            match ModifyWatch::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no inotify instance: writes through BO fds go undetected");
                    None
                }
            }
        } else {
            None
        };
        Self {
            watch,
            state: Mutex::new(State::default()),
        }
    }

    /// Starts watching `bo`'s memfd (BOs gone since are forgotten first,
    /// so the table holds live BOs only).
    pub fn add(&self, bo: &Arc<Bo>) {
        let Some(watch) = &self.watch else {
            return;
        };
        let mut st = lock(&self.state);
        st.by_watch.retain(|id, w| {
            let live = w.strong_count() > 0;
            if !live {
                let _ = watch.unwatch(*id);
            }
            live
        });
        match watch.watch(bo.memfd().as_fd()) {
            Ok(id) => {
                st.by_watch.insert(id, Arc::downgrade(bo));
            }
            Err(e) => crate::limited!(
                warn,
                "memfd not watched",
                0,
                bo = bo.id,
                error = %e,
                "cannot watch the BO's memfd: fd writes go undetected"
            ),
        }
    }

    /// True when `bo` was changed through its fd since the last call for
    /// it (the kernel's queue is drained first).
    pub fn take(&self, bo: &Bo) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        let mut st = lock(&self.state);
        match watch.drain() {
            Ok(d) => {
                let st = &mut *st;
                if d.overflowed {
                    // Events were lost: any BO may have been written.
                    let all: Vec<u64> = st.by_watch.values().filter_map(Weak::upgrade).map(|b| b.id).collect();
                    st.modified.extend(all);
                }
                for id in d.modified {
                    if let Some(b) = st.by_watch.get(&id).and_then(Weak::upgrade) {
                        st.modified.insert(b.id);
                    }
                }
                for id in d.removed {
                    st.by_watch.remove(&id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading inotify events failed; marking the BO dirty");
                return true;
            }
        }
        st.modified.remove(&bo.id)
    }

    /// Marks `bo` wholly dirty if it was changed through its fd (before an
    /// operation looks at its dirty state).
    pub fn note(&self, engine: &crate::sync::SyncEngine<'_>, bo: &Bo) {
        if self.take(bo) {
            tracing::debug!(bo = bo.id, "BO changed through its fd: wholly dirty");
            if let Err(e) = engine.damage(bo, 0, bo.size) {
                tracing::warn!(bo = bo.id, error = %e, "marking an fd-written BO dirty failed");
            }
        }
    }
}
