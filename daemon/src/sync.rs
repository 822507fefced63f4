//! The sync engine: scan every view, transfer dirty runs per resource,
//! upload (DESIGN.md §2 and §5.1).
//!
//! Order of operations, which is what makes "no lost write" hold:
//! 1. *protect before collect*: each view is harvested with an atomic
//!    harvest-and-re-protect, so a write after the harvest faults again and is
//!    reported by the next sync;
//! 2. *collect before copy*: runs are taken out of the dirty state (vmwgfx
//!    `transfer_to_res`) before their bytes are copied, so a write racing the
//!    copy is either copied now or recorded for the next sync;
//! 3. an upload that fails folds its runs back into the dirty state.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cohmem_proto::limits::MAX_REPORTED_RUNS;
use cohmem_proto::{Mechanism, Run, SyncReport};

use crate::bo::{lock, Bo};
use crate::gpu::GpuError;
use crate::stats::DaemonCounters;

/// Runs syncs and keeps the daemon-wide counters.
pub struct SyncEngine<'a> {
    counters: &'a DaemonCounters,
}

impl<'a> SyncEngine<'a> {
    /// An engine that accounts into `counters`.
    pub fn new(counters: &'a DaemonCounters) -> Self {
        Self { counters }
    }

    /// Syncs `bo`: every page written through any view since the last sync
    /// reaches the BO's GPU resources before this returns.
    pub fn sync(&self, bo: &Bo, report_runs: bool) -> Result<SyncReport, GpuError> {
        let _serial = lock(&bo.sync_lock);
        let t0 = Instant::now();
        let views = bo.views();
        let mut mechanism = Mechanism::None;
        for view in &views {
            mechanism = view.mm.tracker.mechanism();
            // A failed harvest marks the view dirty whole; nothing to do here.
            let _ = bo.harvest_view(view);
        }
        let ps = bo.page_size;
        let mut all_runs: Vec<Range<u64>> = Vec::new();
        for res in &bo.resources {
            let window = res.window.start / ps..res.window.end / ps;
            let runs = bo.dirty().transfer_window(window.clone());
            if runs.is_empty() {
                continue;
            }
            let byte_runs: Vec<Range<u64>> = runs
                .iter()
                .map(|r| (r.start - window.start) * ps..(r.end - window.start) * ps)
                .collect();
            if let Err(e) = res.gpu.upload(&bo.mapping, res.window.start, &byte_runs) {
                bo.dirty().fold_back(&runs);
                self.counters
                    .upload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(bo = bo.id, error = %e, "upload failed; runs folded back");
                return Err(e);
            }
            all_runs.extend(runs);
        }
        let pages: u64 = all_runs.iter().map(|r| r.end - r.start).sum();
        let bytes = pages * ps;
        bo.counters.syncs.fetch_add(1, Ordering::Relaxed);
        bo.counters
            .pages_uploaded
            .fetch_add(pages, Ordering::Relaxed);
        bo.counters
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .pages_uploaded
            .fetch_add(pages, Ordering::Relaxed);
        self.counters
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
        let runs: Vec<Run> = if report_runs {
            all_runs
                .iter()
                .take(MAX_REPORTED_RUNS)
                .map(|r| Run {
                    first_page: r.start as u32,
                    pages: (r.end - r.start) as u32,
                })
                .collect()
        } else {
            Vec::new()
        };
        let report = SyncReport {
            pages,
            bytes,
            run_count: all_runs.len() as u32,
            mechanism: mechanism as u16,
            runs_truncated: runs.len() < all_runs.len(),
            duration_ns: t0.elapsed().as_nanos() as u64,
            views_scanned: views.len() as u32,
            runs,
        };
        tracing::debug!(
            bo = bo.id,
            pages,
            runs = report.run_count,
            ns = report.duration_ns,
            "sync"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use cohmem_sys::mapping::SharedMapping;

    use super::SyncEngine;
    use crate::bo::Bo;
    use crate::gpu::soft::SoftGpu;
    use crate::gpu::{GpuBackend, GpuError, GpuResource};
    use crate::stats::DaemonCounters;

    /// A software GPU whose uploads fail while `fail` is set (unit-test
    /// fault injection; the real backends are tested end to end).
    struct FlakyGpu(Arc<AtomicBool>);
    struct FlakyResource(Box<dyn GpuResource>, Arc<AtomicBool>);

    impl GpuBackend for FlakyGpu {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
            Ok(Box::new(FlakyResource(
                SoftGpu::new().create_resource(size)?,
                self.0.clone(),
            )))
        }
    }

    impl GpuResource for FlakyResource {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn upload(
            &self,
            src: &SharedMapping,
            base: u64,
            runs: &[Range<u64>],
        ) -> Result<(), GpuError> {
            if self.1.load(Ordering::Relaxed) {
                return Err(GpuError::Unsupported("injected upload failure".into()));
            }
            self.0.upload(src, base, runs)
        }
        fn export_fd(&self) -> Result<OwnedFd, GpuError> {
            self.0.export_fd()
        }
    }

    #[test]
    fn failed_upload_folds_its_runs_back_and_the_next_sync_uploads_them() {
        let fail = Arc::new(AtomicBool::new(true));
        let ps = cohmem_sys::page_size();
        let bo = Bo::create(1, 16 * ps, &FlakyGpu(fail.clone())).unwrap();
        bo.dirty().record(3..5);
        bo.dirty().record(9..10);
        let counters = DaemonCounters::default();
        let engine = SyncEngine::new(&counters);
        assert!(engine.sync(&bo, true).is_err());
        assert_eq!(
            bo.dirty().dirty_pages(),
            3,
            "runs of a failed upload must be folded back"
        );
        assert_eq!(counters.upload_failures.load(Ordering::Relaxed), 1);
        fail.store(false, Ordering::Relaxed);
        let report = engine.sync(&bo, true).unwrap();
        assert_eq!(report.pages, 3);
        assert_eq!(report.run_count, 2);
        assert_eq!(bo.dirty().dirty_pages(), 0);
        assert_eq!(engine.sync(&bo, true).unwrap().pages, 0);
    }
}
