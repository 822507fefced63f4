//! The sync engine: vmwgfx's tracker operations (research spec §3–§4) on
//! top of the client processes' write-tracking mechanisms, and the upload
//! to GPU resources (DESIGN.md §2 and §5.1). This file holds the engine,
//! its errors and limits, and SYNC itself: seed 000's seqcount read section
//! with its exclusive fallback around one scan → transfer → upload.
//!
//! Every operation holds the BO's state lock from start to end, like vmwgfx
//! holds the BO reservation. The vmwgfx page-table steps map onto a
//! mechanism as follows (uffd-async here; "written" is the kernel's
//! PAGE_IS_WRITTEN, i.e. not write-protected):
//!
//! | vmwgfx | here |
//! | --- | --- |
//! | clean-and-record (PAGETABLE harvest, MKWRITE add, switches, pre_unmap) | `harvest`: PAGEMAP_SCAN with WP_MATCHING, atomic per page |
//! | mkwrite fault records a page | `observe`: pages written and not yet known writable are recorded (lazily, before any step that looks at the bitmap) |
//! | MKWRITE scan re-protects writable PTEs in the envelope | `protect` of the view's known-writable pages inside the envelope |
//!
//! Order of operations, which is what makes "no lost write" hold for SYNC:
//! scan (protect before collect) → transfer (bits leave the bitmap before
//! their bytes are copied) → upload; an upload that fails folds its runs back.
//!
//! | file | idea |
//! | --- | --- |
//! | `mod.rs` | the engine; SYNC as a seqcount read section with exclusive fallback (seed 000) |
//! | `harvest.rs` | clean-and-record of views; unprovable views are dirty whole |
//! | `mkwrite.rs` | MKWRITE's page steps: the lazy mkwrite record, re-protects |
//! | `scan.rs` | vmwgfx `scan` (spec §3, §4.3): the method state machine's step |
//! | `method.rs` | switches to PAGETABLE (spec §3.2 step 5) |
//! | `dense.rs` | dense-write pauses and their probes |
//! | `set_policy.rs` | SET_POLICY: an operator pins the method |
//! | `shadow.rs` | the `shadow` policy: compare with the last uploaded copy (VNC's shadow surface) |
//! | `hot.rs` | `auto`'s hot ranges: pages rewritten every sync, compared instead of trapped |
//! | `transfer.rs` | vmwgfx `transfer_to_res` (spec §4.6) and the upload |
//! | `report.rs` | the SYNC / TRANSFER report and upload counters |
//! | `bitmap.rs` | `clear_res`, `dirty_clear`, explicit damage, the dirty state (spec §4.7–§4.8) |
//! | `resources.rs` | `dirty_add`, `dirty_release`, `pre_unmap` (spec §4.1, §4.2, §4.4) |
//! | `readback.rs` | READBACK: GPU → BO |
//! | `snapshot.rs` | SNAPSHOT: an exact copy under quiesce (seed 004) |

mod bitmap;
mod dense;
mod harvest;
mod hot;
mod method;
mod mkwrite;
mod readback;
mod report;
mod resources;
mod scan;
mod set_policy;
mod shadow;
mod snapshot;
mod transfer;

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cohmem_proto::{Mechanism, Method, SyncReport};

use crate::bo::{lock, Bo, BoState, Resource, View};
use crate::gpu::GpuError;
use crate::policy::{DensePolicy, MethodPolicy, TrackingPolicy};
use crate::stats::DaemonCounters;
use crate::tracker::TrackError;

pub use readback::ReadbackDone;

/// Collisions with structural changes after which a sync takes the
/// exclusive path.
pub const MAX_SYNC_COLLISIONS: u32 = 3;
/// Most live resources one BO may carry (each holds a GPU buffer, and for
/// the software backend an fd and a mapping in the daemon).
pub const MAX_RESOURCES_PER_BO: usize = 64;
/// Time after which a colliding sync takes the exclusive path.
pub const SYNC_RETRY_BOUND: std::time::Duration = std::time::Duration::from_millis(20);

/// Why a tracker operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The resource index names no live resource.
    #[error("the BO has no resource {0}")]
    NoSuchResource(u32),
    /// The window is not page aligned or not inside the BO.
    #[error("{0}")]
    BadWindow(String),
    /// The GPU backend failed (pages kept dirty).
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The BO already has [`MAX_RESOURCES_PER_BO`] resources.
    #[error("the BO already has {0} resources (limit MAX_RESOURCES_PER_BO = {MAX_RESOURCES_PER_BO})")]
    TooManyResources(usize),
}

/// A view harvested outside the state lock: BO pages written, stale pages,
/// or why it could not be scanned.
type Harvested = (Arc<View>, Result<(Vec<Range<u64>>, Vec<u64>), TrackError>);

/// A resource and the BO page runs to upload into it.
type Transfer = (Arc<Resource>, Vec<Range<u64>>);

/// Runs tracker operations and keeps the daemon-wide counters.
pub struct SyncEngine<'a> {
    counters: &'a DaemonCounters,
    methods: MethodPolicy,
    dense: DensePolicy,
    shadow_max_bytes: u64,
    hot_max_pages: u64,
}

fn method_of(st: &BoState) -> Method {
    st.tracker.as_ref().map_or(Method::None, |t| t.method)
}

impl<'a> SyncEngine<'a> {
    /// An engine that accounts into `counters` and tracks exactly as
    /// vmwgfx does ([`TrackingPolicy::VMWGFX`]).
    pub fn new(counters: &'a DaemonCounters) -> Self {
        Self::with_policy(counters, TrackingPolicy::VMWGFX)
    }

    /// An engine that tracks by `policy`.
    pub fn with_policy(counters: &'a DaemonCounters, policy: TrackingPolicy) -> Self {
        Self {
            counters,
            methods: policy.methods,
            dense: policy.dense,
            shadow_max_bytes: policy.shadow_max_bytes,
            hot_max_pages: policy.hot_max_pages,
        }
    }

    /// SYNC: scan, then transfer and upload every resource in ascending
    /// window order. Every page written through any view before this call
    /// reaches the GPU resources before it returns.
    ///
    /// Seed 000: the scan-and-copy is a read section against structural
    /// changes (views added or removed, which harvest a leaving view into
    /// the bitmap). If one overlapped, the section runs again to pick up what
    /// it recorded; after [`MAX_SYNC_COLLISIONS`] collisions or
    /// [`SYNC_RETRY_BOUND`] the sync blocks structural changes and runs once
    /// more exclusively, so it can never live-lock.
    ///
    /// For an image BO the report carries the rectangles uploaded since the
    /// previous SYNC or TRANSFER reply (background uploads included).
    pub fn sync(&self, bo: &Bo, with_runs: bool) -> Result<SyncReport, SyncError> {
        let _serial = lock(&bo.sync_lock);
        let mut report = self.sync_serialised(bo, with_runs)?;
        report.damage = Self::take_damage(&bo.state());
        Ok(report)
    }

    /// [`SyncEngine::sync`] unless another sync of the BO (or a quiesce, a
    /// mechanism switch) holds it (`None` then): for a caller that must not
    /// wait for another client.
    pub fn try_sync(&self, bo: &Bo, with_runs: bool) -> Option<Result<SyncReport, SyncError>> {
        let _serial = Self::try_serial(bo)?;
        Some(self.sync_serialised(bo, with_runs).map(|mut report| {
            report.damage = Self::take_damage(&bo.state());
            report
        }))
    }

    /// [`SyncEngine::sync`] unless another sync of the BO is running
    /// (`None` then): the background upload never waits for a client's.
    pub fn sync_if_idle(&self, bo: &Bo) -> Option<Result<SyncReport, SyncError>> {
        let _serial = Self::try_serial(bo)?;
        Some(self.sync_serialised(bo, false))
    }

    /// `bo.sync_lock` if nobody holds it.
    fn try_serial(bo: &Bo) -> Option<std::sync::MutexGuard<'_, ()>> {
        match bo.sync_lock.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        }
    }

    /// [`SyncEngine::sync`] with `bo.sync_lock` already held.
    fn sync_serialised(&self, bo: &Bo, with_runs: bool) -> Result<SyncReport, SyncError> {
        let t0 = Instant::now();
        let mut all = Vec::new();
        let mut collisions = 0u32;
        loop {
            let exclusive = collisions >= MAX_SYNC_COLLISIONS || t0.elapsed() >= SYNC_RETRY_BOUND;
            let _blocked = exclusive.then(|| bo.block_structural_changes());
            let seq = bo.structure_seq();
            if !exclusive && seq % 2 == 1 {
                collisions += 1;
                std::thread::yield_now();
                continue;
            }
            all.extend(self.sync_section(bo)?);
            if exclusive {
                bo.counters.sync_exclusive.fetch_add(1, Ordering::Relaxed);
                self.counters.sync_exclusive.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if bo.structure_seq() == seq {
                break;
            }
            collisions += 1;
            bo.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
            self.counters.sync_retries.fetch_add(1, Ordering::Relaxed);
        }
        let all = Self::union_of(all);
        let st = bo.state();
        let report = self.report(bo, &st, &bo.views(), &all, t0, with_runs);
        bo.counters
            .last_sync_ns
            .store(report.duration_ns.max(1), Ordering::Relaxed);
        tracing::debug!(
            bo = bo.id,
            pages = report.pages,
            runs = report.run_count,
            collisions,
            ns = report.duration_ns,
            "sync"
        );
        let mechanism = Mechanism::from_wire(report.mechanism).map_or("unknown", Mechanism::name);
        self.counters
            .latency
            .sync
            .get_or_create(&[("mechanism", mechanism)])
            .observe(report.duration_ns as f64 * 1e-9);
        Ok(report)
    }

    /// One scan → transfer (state lock held) → upload (lock released).
    fn sync_section(&self, bo: &Bo) -> Result<Vec<Range<u64>>, SyncError> {
        let views = bo.views();
        // PAGETABLE: the expensive harvest of non-eager views runs without the
        // state lock; a view removed meanwhile records its last pages under
        // the lock after us, which the sequence count makes the caller retry.
        let (pagetable, hot) = {
            let st = bo.state();
            let pagetable = st
                .tracker
                .as_ref()
                .is_some_and(|t| t.method == Method::PageTable && t.paused.is_none());
            (pagetable, st.hot.active_pages())
        };
        self.hot_prepare(bo);
        // Active hot ranges are compared after the harvest (`hot.rs`), and
        // left writable: they do not fault every frame.
        let pre: Option<Vec<Harvested>> = pagetable.then(|| {
            views
                .iter()
                .filter(|v| !v.mm.tracker().eager())
                .map(|v| (v.clone(), self.harvest_raw(bo, v, &hot)))
                .collect()
        });
        let work = {
            let mut st = bo.state();
            // Views are added and removed with the state lock held, so this
            // list is exact for the whole locked part (the method-switch
            // harvests must see every view).
            let views = bo.views();
            self.scan_locked_pre(bo, &mut st, &views, pre);
            self.hot_step(bo, &mut st, &views);
            self.maybe_shadow_small(bo, &mut st, &views);
            let mut order: Vec<(u64, u32)> = st
                .resources
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|r| (r.window.start, i as u32)))
                .collect();
            order.sort_unstable();
            self.take_all_runs(bo, &mut st, &order)?
        };
        self.upload(bo, work)
    }

    /// The pages a sync made coherent, once each: `runs` sorted, runs of
    /// overlapping windows merged (adjacent runs stay apart, as the
    /// resources' transfers reported them).
    fn union_of(mut runs: Vec<Range<u64>>) -> Vec<Range<u64>> {
        runs.sort_unstable_by_key(|r| (r.start, r.end));
        let mut out: Vec<Range<u64>> = Vec::with_capacity(runs.len());
        for r in runs {
            match out.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
