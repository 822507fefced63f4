//! Unit tests of the engine: a failed upload folds its runs back,
//! resources take only their window, and a resource added late starts
//! from a full copy of its window.

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
    fn create_image(&self, width: u32, height: u32, fourcc: u32) -> Result<Box<dyn GpuResource>, GpuError> {
        Ok(Box::new(FlakyResource(
            SoftGpu::new().create_image(width, height, fourcc)?,
            self.0.clone(),
        )))
    }
}

impl GpuResource for FlakyResource {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn image(&self) -> Option<cohmem_proto::ImageInfo> {
        self.0.image()
    }
    fn upload(&self, src: &SharedMapping, base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        if self.1.load(Ordering::Relaxed) {
            return Err(GpuError::Unsupported("injected upload failure".into()));
        }
        self.0.upload(src, base, runs)
    }
    fn download(&self, dst: &SharedMapping, base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        self.0.download(dst, base, runs)
    }
    fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        self.0.export_fd()
    }
}

fn record(bo: &Bo, r: Range<u64>) {
    bo.state().tracker.as_mut().unwrap().dirty.record(r);
}

#[test]
fn failed_upload_folds_its_runs_back_and_the_next_sync_uploads_them() {
    let fail = Arc::new(AtomicBool::new(true));
    let ps = cohmem_sys::page_size();
    let bo = Bo::create(1, 16 * ps, &FlakyGpu(fail.clone()), true).unwrap();
    record(&bo, 3..5);
    record(&bo, 9..10);
    let counters = DaemonCounters::default();
    let engine = SyncEngine::new(&counters);
    assert!(engine.sync(&bo, true).is_err());
    assert_eq!(
        engine.dirty_state(&bo).dirty_pages,
        3,
        "runs of a failed upload must be folded back"
    );
    assert_eq!(counters.upload_failures.load(Ordering::Relaxed), 1);
    fail.store(false, Ordering::Relaxed);
    let report = engine.sync(&bo, true).unwrap();
    assert_eq!(report.pages, 3);
    assert_eq!(report.run_count, 2);
    assert_eq!(engine.dirty_state(&bo).dirty_pages, 0);
    assert_eq!(engine.sync(&bo, true).unwrap().pages, 0);
}

#[test]
fn resources_take_only_their_window_and_the_last_release_drops_the_tracker() {
    let ps = cohmem_sys::page_size();
    let gpu = SoftGpu::new();
    let bo = Bo::create(1, 20 * ps, &gpu, false).unwrap();
    let counters = DaemonCounters::default();
    let engine = SyncEngine::new(&counters);
    assert_eq!(engine.dirty_state(&bo).method, 0, "no resource, no tracker");
    let a = engine.add_resource(&bo, &gpu, 0..10 * ps).unwrap();
    let b = engine.add_resource(&bo, &gpu, 10 * ps..20 * ps).unwrap();
    assert_eq!(engine.dirty_state(&bo).users, 2);
    record(&bo, 3..4);
    record(&bo, 15..16);
    let t = engine.transfer(&bo, a, true).unwrap();
    assert_eq!(t.pages, 1);
    assert_eq!(
        engine.dirty_state(&bo).dirty_pages,
        1,
        "the neighbouring window keeps its page"
    );
    engine.clear_resource(&bo, b).unwrap();
    assert_eq!(engine.dirty_state(&bo).dirty_pages, 0);
    engine.release_resource(&bo, a).unwrap();
    engine.release_resource(&bo, b).unwrap();
    assert_eq!(engine.dirty_state(&bo).users, 0);
    assert!(engine.release_resource(&bo, b).is_err());
    assert!(engine.add_resource(&bo, &gpu, 0..21 * ps).is_err());
}

#[test]
fn pages_recorded_without_a_tracker_are_in_the_next_resources_copy() {
    let ps = cohmem_sys::page_size();
    let gpu = SoftGpu::new();
    let bo = Bo::create(1, 8 * ps, &gpu, false).unwrap();
    let counters = DaemonCounters::default();
    let engine = SyncEngine::new(&counters);
    // A client's mapping (the daemon's own is read-only).
    let back = SharedMapping::map(std::os::fd::AsFd::as_fd(bo.memfd()), 8 * ps, 0, true).unwrap();
    back.write_at((2 * ps) as usize, b"before any resource").unwrap();
    engine.damage(&bo, 2 * ps, ps).unwrap();
    assert!(bo.state().untracked.is_some(), "kept while there is no tracker");
    let a = engine.add_resource(&bo, &gpu, 0..8 * ps).unwrap();
    let st = bo.state();
    assert!(st.untracked.is_none());
    assert_eq!(
        st.tracker.as_ref().map(|t| t.dirty.dirty_pages()),
        Some(0),
        "a new tracker starts empty, as vmwgfx's"
    );
    let res = st.resources[a as usize].clone().unwrap();
    drop(st);
    back.fill(0, (8 * ps) as usize, 0).unwrap();
    res.gpu.download(&back, 0, std::slice::from_ref(&(0..8 * ps))).unwrap();
    let mut got = [0u8; 19];
    back.read_at((2 * ps) as usize, &mut got).unwrap();
    assert_eq!(&got, b"before any resource", "the add copied the window");
}
