//! What a BO's GPU-side operations report: a sync or transfer
//! ([`SyncResult`]), a readback ([`Readback`]) and an exported resource
//! ([`ExportedResource`]).

use std::os::fd::OwnedFd;
use std::time::Duration;

use cohmem_proto::{ImageInfo, Mechanism, Method, Rect, Run};

/// What one sync uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Mechanism that found them.
    pub mechanism: Mechanism,
    /// The BO's vmwgfx method after the sync.
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
pub struct Readback {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time the daemon spent.
    pub duration: Duration,
}
