//! Switching a live process from one write-tracking mechanism to another
//! (seed 004's third use of quiesce: "switch mechanisms without losing
//! writes"), and building a mechanism from what the process offered.
//!
//! A process offers its fds once, in ATTACH_MM ([`MechanismOffer`]). A switch
//! ([`switch_mechanism`]) holds off, for every BO the process has a view of,
//! syncs and transfers (`sync_lock`), view changes (the structural lock) and
//! the fault service (the state lock), then moves each view: unregister from
//! the old mechanism's userfaultfd (which wakes any writer waiting in a fault
//! there), register with the new one (`UFFDIO_REGISTER` acts on the uffd's own
//! address space, so the daemon can do it for the client), write-protect it.
//! Between the two registrations a write cannot be seen by either mechanism,
//! so, as vmwgfx does on a PAGETABLE switch, what cannot be proven clean is
//! marked dirty: the whole view, counted in the extra-pages statistics.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use cohmem_proto::Mechanism;
use cohmem_sys::pagemap::PagemapFile;
use cohmem_sys::procmaps::ProcMapsFile;
use cohmem_sys::softdirty::ClearRefs;
use cohmem_sys::uffd::{features, Userfaultfd};
use thiserror::Error;

use crate::bo::{lock, Bo, BoState, MmSubscription, View};
use crate::faults::FaultService;
pub use crate::mm::MechanismOffer;
use crate::stats::DaemonCounters;
use crate::tracker::map_events::MapEventsRegistry;
use crate::tracker::{ExplicitTracker, FullTracker, SoftDirtyTracker, UffdAsyncTracker, UffdSyncTracker, WriteTracker};

/// Why a mechanism could not be built or switched to.
#[derive(Debug, Error)]
pub enum SwitchError {
    /// An offered fd is not what it was announced to be.
    #[error("{0}")]
    BadFds(String),
    /// The process did not offer what the mechanism needs.
    #[error("{0}")]
    Missing(String),
    /// Duplicating an fd failed.
    #[error("duplicating an offered fd: {0}")]
    Dup(std::io::Error),
    /// The fault service could not watch the new uffd (nothing was moved).
    #[error("the fault service cannot watch the new userfaultfd: {0}")]
    FaultService(std::io::Error),
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, SwitchError> {
    fd.try_clone().map_err(SwitchError::Dup)
}

/// A pagemap fd of the process `pid` (a pagemap of another process would let
/// a client read and clear someone else's written state).
fn own_pagemap(fd: &OwnedFd, pid: i32, checked: bool) -> Result<PagemapFile, SwitchError> {
    let pagemap = if checked {
        PagemapFile::from_fd(dup(fd)?).map_err(|e| SwitchError::BadFds(format!("fd 1: {e}")))?
    } else {
        PagemapFile::from_fd_unchecked(dup(fd)?)
    };
    match pagemap.owner_pid() {
        Some(owner) if owner == pid => Ok(pagemap),
        other => Err(SwitchError::BadFds(format!(
            "fd 1 is the pagemap of {}, not of the connecting process {pid}",
            other.map_or("an unidentifiable process".to_string(), |p| format!("pid {p}")),
        ))),
    }
}

/// The process's maps file, if it sent one: `None` (with a note in the
/// log) when the kernel has no `PROCMAP_QUERY`, an error if it is another
/// process's. Only checked: coverage is proven by the harvest (its walk, or
/// the mapping-change events).
fn own_maps(fd: Option<&OwnedFd>, pid: i32) -> Result<Option<ProcMapsFile>, SwitchError> {
    let Some(fd) = fd else {
        return Ok(None);
    };
    let maps = match ProcMapsFile::from_fd(dup(fd)?) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(pid, error = %e, "maps fd unusable (not needed: coverage is proven by the harvest)");
            return Ok(None);
        }
    };
    match maps.owner_pid() {
        Some(owner) if owner == pid => Ok(Some(maps)),
        other => Err(SwitchError::BadFds(format!(
            "the maps fd is that of {}, not of the connecting process {pid}",
            other.map_or("an unidentifiable process".to_string(), |p| format!("pid {p}")),
        ))),
    }
}

impl MechanismOffer {
    /// Builds `mechanism` (already checked against the kernel and the
    /// offer's flags) for process `pid` from duplicates of the offered fds.
    /// `map_events`: the kernel passed the mapping-change probe
    /// (`KernelCaps::map_events`), so uffd-async may prove views with the
    /// events where the client's uffd delivers them; their counts are kept
    /// in `registry`, one per uffd file.
    pub fn build(
        &self,
        mechanism: Mechanism,
        pid: i32,
        map_events: bool,
        registry: &MapEventsRegistry,
    ) -> Result<Box<dyn WriteTracker>, SwitchError> {
        let sync_uffd = || -> Result<Userfaultfd, SwitchError> {
            let fd = self
                .synchronous
                .as_ref()
                .ok_or_else(|| SwitchError::Missing("the process offered no synchronous uffd".into()))?;
            Userfaultfd::from_fd(dup(fd)?).map_err(|e| SwitchError::BadFds(format!("synchronous uffd: {e}")))
        };
        Ok(match mechanism {
            Mechanism::Full => Box::new(FullTracker),
            Mechanism::Explicit => Box::new(ExplicitTracker),
            Mechanism::UffdAsync => {
                let (uffd, pagemap) = self
                    .asynchronous
                    .as_ref()
                    .ok_or_else(|| SwitchError::Missing("the process offered no WP_ASYNC uffd".into()))?;
                let uffd = Userfaultfd::from_fd(dup(uffd)?).map_err(|e| SwitchError::BadFds(format!("fd 0: {e}")))?;
                // A maps fd of another process is refused; the fd itself is
                // no longer used for coverage proofs (see UffdAsyncTracker).
                own_maps(self.maps.as_ref(), pid)?;
                let pagemap = own_pagemap(pagemap, pid, true)?;
                // What the uffd really does, not what the client says: a uffd
                // with mapping changes must be read (its munmaps wait for
                // it), whether or not the kernel's probe lets the daemon
                // prove views with them.
                let enabled = uffd
                    .enabled_features()
                    .map_err(|e| SwitchError::BadFds(format!("fd 0: features unknown: {e}")))?;
                if enabled & features::WAITING_EVENTS != 0 {
                    // Read whatever makes the client wait; prove views only
                    // with every mapping change.
                    let trusted = map_events && enabled & features::MAP_EVENTS == features::MAP_EVENTS;
                    let events = registry
                        .for_uffd(&uffd)
                        .map_err(|e| SwitchError::BadFds(format!("fd 0: {e}")))?;
                    Box::new(UffdAsyncTracker::with_map_events(uffd, pagemap, events, trusted))
                } else {
                    Box::new(UffdAsyncTracker::new(uffd, pagemap))
                }
            }
            Mechanism::UffdSync => {
                // Keep the pagemap if it came along: it proves views are
                // still mapped. (Without it, a view moved behind the daemon's
                // back is not detected; see the README.)
                let pagemap = match &self.asynchronous {
                    Some((_, pagemap)) => Some(own_pagemap(pagemap, pid, true)?),
                    None => None,
                };
                Box::new(UffdSyncTracker::new(sync_uffd()?, pagemap))
            }
            Mechanism::SoftDirty => {
                let (pagemap, clear_refs) = self
                    .soft_dirty
                    .as_ref()
                    .ok_or_else(|| SwitchError::Missing("the process offered no pagemap and clear_refs fds".into()))?;
                Box::new(SoftDirtyTracker::new(
                    sync_uffd()?,
                    own_pagemap(pagemap, pid, false)?,
                    ClearRefs::from_fd(dup(clear_refs)?),
                ))
            }
            Mechanism::None => return Err(SwitchError::Missing("no mechanism named".into())),
        })
    }
}

/// What a switch did.
#[derive(Debug, Clone, Copy)]
pub struct SwitchReport {
    /// Mechanism before.
    pub from: Mechanism,
    /// Views moved.
    pub views: u32,
    /// Pages marked dirty that were not.
    pub extra_pages: u64,
}

/// Every lock a switch holds on one BO, in acquisition order (dropped in
/// reverse: state, structural change, syncs).
struct HeldBo<'b> {
    state: MutexGuard<'b, BoState>,
    _structure: crate::bo::StructuralChange<'b>,
    _syncs: MutexGuard<'b, ()>,
}

/// Switches `mm` to `new` (see the module comment). The caller holds the
/// daemon's quiesce lock.
pub fn switch_mechanism(
    counters: &DaemonCounters,
    faults: &Arc<FaultService>,
    mm: &Arc<MmSubscription>,
    new: Box<dyn WriteTracker>,
) -> Result<SwitchReport, SwitchError> {
    let new: Arc<dyn WriteTracker> = Arc::from(new);
    // Before any view moves: a synchronous uffd that nobody reads would
    // leave every writer of a protected view waiting forever, so a refusal
    // here fails the switch with nothing changed.
    let registration = faults.register_tracker(mm, &new).map_err(SwitchError::FaultService)?;
    let _no_new_views = mm.switching();
    let old = mm.tracker();
    let views = mm.live_views();
    let mut bos: Vec<Arc<Bo>> = views.iter().filter_map(|v| v.bo.upgrade()).collect();
    bos.sort_by_key(|b| b.id);
    bos.dedup_by_key(|b| b.id);
    // One order for every switch (BO id), and the same order per BO as the
    // sync path (sync_lock, then structure, then state): no deadlock.
    let mut held: Vec<HeldBo<'_>> = bos
        .iter()
        .map(|b| {
            let syncs = lock(&b.sync_lock);
            let structure = b.begin_structural_change();
            HeldBo {
                state: b.state(),
                _structure: structure,
                _syncs: syncs,
            }
        })
        .collect();
    let mut report = SwitchReport {
        from: old.mechanism(),
        views: 0,
        extra_pages: 0,
    };
    for view in views.iter().filter(|v| !v.dead.load(Ordering::Acquire)) {
        let Some(bo) = view.bo.upgrade() else { continue };
        let Some(i) = bos.iter().position(|b| b.id == bo.id) else {
            continue;
        };
        report.extra_pages += move_view(&bo, &mut held[i].state, view, old.as_ref(), new.as_ref());
        report.views += 1;
    }
    mm.replace_tracker(new, registration.map(|r| Box::new(r) as Box<dyn crate::mm::FaultHook>));
    counters.extra_pages.fetch_add(report.extra_pages, Ordering::Relaxed);
    drop(held);
    // No view is registered with the old uffd now: read the mapping
    // changes still in flight on it, which nobody may read once it is gone
    // (counted where every tracker of that uffd looks).
    old.release_map_events(std::time::Duration::from_millis(100));
    Ok(report)
}

/// Moves one view from `old` to `new`; returns the extra dirty pages.
fn move_view(bo: &Bo, st: &mut BoState, view: &View, old: &dyn WriteTracker, new: &dyn WriteTracker) -> u64 {
    let range = view.range();
    let len = range.end - range.start;
    if let Some(uffd) = old.registration_uffd() {
        // Unregistering clears the write protection and wakes writers
        // waiting in a fault here; they retry under the new mechanism.
        if let Err(e) = uffd.unregister(range.start, len) {
            tracing::debug!(bo = bo.id, view = view.id, error = %e, "unregistering a view from the old uffd");
        }
        let _ = uffd.wake(range.start, len);
    }
    let registered = match new.registration_uffd() {
        Some(uffd) => uffd.register_wp(range.start, len).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    lock(&view.writable).clear();
    lock(&view.stale_dirty).clear();
    let attached = registered.and_then(|()| {
        if st.tracker.is_some() {
            new.attach_view(range.clone()).map_err(|e| e.to_string())
        } else {
            // No resource, so no tracker: leave the view unprotected, which
            // every mechanism reads as "written" when a resource is added
            // (pages written before the switch are never forgotten).
            if new.eager() {
                let mut writable = lock(&view.writable);
                for p in 0..len / bo.page_size {
                    writable.insert(p);
                }
            }
            Ok(())
        }
    });
    if let Err(e) = attached {
        crate::limited!(
            warn,
            "view cannot be moved",
            bo.id,
            bo = bo.id,
            view = view.id,
            error = %e,
            "view cannot be moved to the new mechanism; it is treated as written whole at every scan"
        );
        view.broken.store(true, Ordering::Relaxed);
    }
    let Some(t) = st.tracker.as_mut() else {
        return 0;
    };
    let before = t.dirty.dirty_pages();
    t.dirty.record(view.bo_pages(bo.page_size));
    let extra = t.dirty.dirty_pages() - before;
    bo.counters.extra_pages.fetch_add(extra, Ordering::Relaxed);
    extra
}
