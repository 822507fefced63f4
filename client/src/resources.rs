//! vmwgfx's per-resource tracker operations on a [`Bo`], for a driver-like
//! client (a VMM emulating a GPU) that keeps several GPU resources per BO
//! and drives the tracker step by step: `dirty_add` / `dirty_release`
//! ([`Bo::add_resource`], [`Bo::release_resource`]), `scan`,
//! `transfer_to_res`, `clear_res` / `dirty_clear`, and the dirty state as
//! vmwgfx would hold it. An app that only writes and syncs needs none of
//! them.

use cohmem_proto::{DirtyStateReport, Reply, Request, ScanReport, SYNC_REPORT_RUNS};

use crate::bo::Bo;
use crate::error::{unexpected, ClientError};
use crate::results::SyncResult;

impl Bo {
    /// Binds a new GPU resource (another GPU copy, of part of the BO) to
    /// the page-aligned window `[offset, offset+len)`; returns its index.
    /// Syncs then upload the window's dirty pages to it too. (vmwgfx's
    /// `dirty_add`, for a driver-like client that keeps several resources
    /// per BO; most apps keep the one a BO is created with.)
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for an unaligned or
    /// out-of-range window, `LimitExceeded` over the resource quota,
    /// `Gpu` when the backend cannot allocate it.
    pub fn add_resource(&self, offset: u64, len: u64) -> Result<u32, ClientError> {
        match self.inner.call(|bo| Request::AddResource { bo, offset, len }, &[])? {
            (Reply::ResourceAdded { index }, _) => Ok(index),
            (other, _) => Err(unexpected("ADD_RESOURCE", &other)),
        }
    }

    /// Destroys resource `index` (vmwgfx `dirty_release`).
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for an index that
    /// names no resource of the BO.
    pub fn release_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::ReleaseResource { bo, index })
    }

    /// Harvests the writes made since the last harvest into the BO's dirty
    /// state without uploading anything (vmwgfx's `scan`); a later
    /// [`Bo::transfer`] or [`Bo::sync`] uploads them. For clients that
    /// separate finding writes from uploading them (a driver-like client,
    /// tests); an app calls [`Bo::sync`], which does both.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Kernel` when harvesting fails; the
    /// errors of any call.
    pub fn scan(&self) -> Result<ScanReport, ClientError> {
        match self.inner.call(|bo| Request::Scan { bo }, &[])? {
            (Reply::Scanned(s), _) => Ok(s),
            (other, _) => Err(unexpected("SCAN", &other)),
        }
    }

    /// Uploads to resource `index` what earlier harvests ([`Bo::scan`])
    /// found dirty in its window, without harvesting first (vmwgfx's
    /// `transfer_to_res`). Writes made since the last scan are not
    /// uploaded: use [`Bo::sync`] for the no-lost-write guarantee.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for an unknown
    /// resource, `Gpu` when the upload fails.
    pub fn transfer(&self, index: u32) -> Result<SyncResult, ClientError> {
        self.sync_like(
            |bo| Request::Transfer {
                bo,
                index,
                flags: SYNC_REPORT_RUNS,
            },
            SYNC_REPORT_RUNS,
        )
    }

    /// Forgets resource `index`'s dirty pages without uploading them
    /// (vmwgfx's `clear_res`): for a client that rewrote the resource
    /// another way and knows its GPU copy is current.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for an unknown
    /// resource.
    pub fn clear_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::ClearResource { bo, index })
    }

    /// Forgets every dirty page of the BO without uploading it (vmwgfx's
    /// `dirty_clear`): the GPU copy keeps its old bytes there.
    ///
    /// # Errors
    ///
    /// The errors of any call ([`ClientError::Daemon`],
    /// [`ClientError::Disconnected`]).
    pub fn clear_all(&self) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::ClearAll { bo })
    }

    /// Reports that `len` bytes at `offset` were written (the `explicit`
    /// mechanism; harmless, if redundant, under the others).
    ///
    /// Under the tracking mechanisms, call it for changes no mapping
    /// write reports:
    ///
    /// - **pinned I/O**: an `O_DIRECT` read (or io_uring, RDMA, a device)
    ///   into a mapping pins its pages and fills them through the pin, with
    ///   no write fault; a sync that runs while the I/O is in flight can
    ///   miss what lands after it. Damage the range once the I/O completed
    ///   (no kernel interface reports pins);
    /// - **writes through the BO's fd** (`pwrite`, `fallocate`,
    ///   `MADV_REMOVE`) on kernels that raise no inotify events on memfds
    ///   (Linux 6.14 and later; `cohmemctl caps` says "fd writes"). Where
    ///   the kernel raises them, the daemon marks the BO dirty itself.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for a range past the
    /// BO; the errors of any call.
    pub fn damage(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::Damage { bo, offset, len })
    }

    /// The BO's tracker state: how its writes are tracked now (the vmwgfx
    /// method, MKWRITE or PAGETABLE), the dirty pages not uploaded yet and
    /// the counters behind the method's switching. For diagnostics.
    ///
    /// # Errors
    ///
    /// The errors of any call.
    pub fn dirty_state(&self) -> Result<DirtyStateReport, ClientError> {
        match self.inner.call(|bo| Request::DirtyState { bo }, &[])? {
            (Reply::DirtyState(d), _) => Ok(d),
            (other, _) => Err(unexpected("DIRTY_STATE", &other)),
        }
    }
}
