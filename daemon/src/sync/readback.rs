//! READBACK, GPU → CPU: a sync, then every resource copied back into its
//! window of the BO with further syncs held off (vmwgfx's readback of a
//! resource into its backing BO).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use cohmem_sys::mapping::SharedMapping;

use super::{SyncEngine, SyncError};
use crate::bo::{lock, Bo, Resource};
use crate::gpu::GpuError;

/// What a READBACK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadbackDone {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time spent, nanoseconds.
    pub duration_ns: u64,
}

impl SyncEngine<'_> {
    /// GPU → CPU (READBACK): syncs the BO, then, with further syncs held
    /// off, copies every resource back into its window of the BO. A CPU
    /// write racing the copy may be overwritten (its page is dirty, so the
    /// next sync makes the GPU agree with the BO again); see proto/README.md.
    pub fn readback(&self, bo: &Bo) -> Result<ReadbackDone, SyncError> {
        let _serial = lock(&bo.sync_lock);
        let t0 = Instant::now();
        let synced = self.sync_serialised(bo, false)?;
        {
            // The copy-back changes the BO behind hot ranges' shadow: they
            // are tracked again first (`super::hot`).
            let mut st = bo.state();
            self.drop_hot(bo, &mut st, &bo.views());
        }
        let resources: Vec<Arc<Resource>> = bo.state().resources.iter().flatten().cloned().collect();
        let mut bytes = 0;
        if !resources.is_empty() {
            // The daemon's own mapping is read-only; the copy-back gets a
            // writable one for its duration.
            let dst = SharedMapping::map(bo.memfd().as_fd(), bo.size, 0, true).map_err(GpuError::from)?;
            for r in &resources {
                let len = r.window.end - r.window.start;
                r.gpu.download(&dst, r.window.start, std::slice::from_ref(&(0..len)))?;
                bytes += len;
            }
            // Compared: the shadow must hold the GPU's bytes too
            // (`super::shadow`); where windows overlap it cannot hold two
            // resources' bytes, so those windows are marked instead.
            let shadow = bo.state().shadow.clone();
            if let Some(s) = shadow {
                for r in &resources {
                    let len = r.window.end - r.window.start;
                    r.gpu
                        .download(&s.map, r.window.start, std::slice::from_ref(&(0..len)))?;
                }
                let mut windows: Vec<_> = resources.iter().map(|r| r.window.clone()).collect();
                windows.sort_unstable_by_key(|w| w.start);
                if windows.windows(2).any(|w| w[1].start < w[0].end) {
                    let mut st = bo.state();
                    for w in windows {
                        Self::mark_window_if_comparing(bo, &mut st, w);
                    }
                }
            }
        }
        Ok(ReadbackDone {
            synced_pages: synced.pages,
            bytes,
            duration_ns: t0.elapsed().as_nanos() as u64,
        })
    }
}
