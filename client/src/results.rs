//! What a BO's GPU-side operations report: a sync or transfer
//! ([`SyncResult`]), a readback ([`Readback`]) and an exported resource
//! ([`ExportedResource`]).

use std::os::fd::OwnedFd;
use std::time::Duration;

use cohmem_proto::{ImageInfo, Mechanism, Method, Rect, Run, SyncReport, SYNC_REPORT_RUNS};

/// What one sync uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncResult {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Mechanism that found them.
    pub mechanism: Mechanism,
    /// How the BO's writes are tracked after the sync: MKWRITE (every page
    /// protected, writes recorded by faults) or PAGETABLE (page tables
    /// scanned); the daemon switches between them by the BO's write
    /// pattern, as the vmwgfx driver does (see the crate docs).
    pub method: Method,
    /// Time the daemon spent.
    pub duration: Duration,
    /// Number of runs uploaded.
    pub run_count: u32,
    /// The runs (when asked for with
    /// [`Bo::sync_with_runs`](crate::Bo::sync_with_runs); may be cut).
    pub runs: Vec<Run>,
    /// True when `runs` is not the complete list.
    pub runs_truncated: bool,
    /// Views scanned.
    pub views_scanned: u32,
    /// For an image BO
    /// ([`Connection::create_image`](crate::Connection::create_image)): the
    /// rectangles of pixels this sync (and any background upload since the previous
    /// sync) changed on the GPU copy, at most
    /// [`MAX_DAMAGE_RECTS`](cohmem_proto::MAX_DAMAGE_RECTS). Every pixel
    /// of every uploaded page lies in one; empty for a byte BO.
    pub rects: Vec<Rect>,
    /// True when rectangles were merged to stay under the cap, so they may
    /// cover pixels no dirty page touched.
    pub rects_merged: bool,
}

impl SyncResult {
    /// The result of a SYNC_DONE reply to a request sent with `flags`
    /// (runs are listed only with [`SYNC_REPORT_RUNS`]).
    pub(crate) fn from_report(s: SyncReport, flags: u32) -> Self {
        Self {
            pages: s.pages,
            bytes: s.bytes,
            mechanism: Mechanism::from_wire(s.mechanism).unwrap_or(Mechanism::None),
            method: Method::from_wire(s.method).unwrap_or(Method::None),
            duration: Duration::from_nanos(s.duration_ns),
            run_count: s.run_count,
            runs_truncated: s.runs_truncated || flags & SYNC_REPORT_RUNS == 0,
            runs: s.runs,
            views_scanned: s.views_scanned,
            rects_merged: s.damage.as_ref().is_some_and(|d| d.merged),
            rects: s.damage.map(|d| d.rects).unwrap_or_default(),
        }
    }

    /// The uploaded pages, one entry per page, ascending.
    pub fn pages_list(&self) -> Vec<u64> {
        self.runs
            .iter()
            .flat_map(|r| u64::from(r.first_page)..u64::from(r.first_page) + u64::from(r.pages))
            .collect()
    }
}

/// An exported GPU resource.
#[derive(Debug)]
#[non_exhaustive]
pub struct ExportedResource {
    /// An fd another process can map (read-only for the software backend;
    /// a dma-buf on real devices).
    pub fd: OwnedFd,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the resource's window in the BO.
    pub offset: u64,
    /// Bytes between the starts of two consecutive pages in the exported
    /// buffer (the page size where they are contiguous, as for every image
    /// BO: an image's row pitch is `image.pitch`).
    pub pitch: u64,
    /// What an importer needs to use an image BO's buffer as the image
    /// (width, height, fourcc, pitch, offset, modifier); `None` for a byte
    /// resource.
    pub image: Option<ImageInfo>,
}

/// What [`Bo::readback`](crate::Bo::readback) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Readback {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time the daemon spent.
    pub duration: Duration,
}
