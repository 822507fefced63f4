//! A BO handle ([`Bo`]) and its operations: mapping it, syncing and
//! transferring, its GPU resources, damage, tracker state, export and
//! readback. Putting it on a display is in `display.rs`.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use cohmem_proto::{DirtyStateReport, ImageInfo, Reply, Request, ScanReport, SYNC_REPORT_RUNS};
use cohmem_sys::memfd::Memfd;

use crate::error::{unexpected, ClientError};
use crate::handle::BoInner;
use crate::mapping::Mapping;
use crate::results::{ExportedResource, Readback, SyncResult};
use crate::session::ConnInner;

/// A BO handle on a connection. Dropping the last `Bo` and [`Mapping`] of it
/// closes the handle.
pub struct Bo {
    pub(crate) inner: Arc<BoInner>,
}

impl std::fmt::Debug for Bo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bo")
            .field("handle", &self.handle())
            .field("id", &self.id())
            .field("size", &self.size())
            .finish()
    }
}

impl Bo {
    pub(crate) fn new(
        conn: Arc<ConnInner>,
        handle: u32,
        size: u64,
        id: u64,
        memfd: Memfd,
        image: Option<ImageInfo>,
    ) -> Self {
        Self {
            inner: BoInner::open(conn, handle, size, id, memfd, image),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The image layout of an image BO
    /// ([`Connection::create_image`](crate::Connection::create_image), or an
    /// import of one), `None` for a byte BO.
    pub fn image(&self) -> Option<ImageInfo> {
        self.inner.image
    }

    /// The daemon-wide id (for display; a daemon restart renumbers it).
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// The connection-local handle (a reconnect renumbers it).
    pub fn handle(&self) -> u32 {
        self.inner.handle()
    }

    /// The BO's memfd: pass a duplicate to another process so it can
    /// [`Connection::import_bo`](crate::Connection::import_bo) the BO.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.inner.memfd.as_fd()
    }

    /// Reads bytes of the BO with `pread` on its memfd (not through a mapping).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.inner.memfd.read_at(offset, buf)?)
    }

    /// Maps the whole BO, tracked.
    pub fn map(&self) -> Result<Mapping, ClientError> {
        self.map_range(0, self.inner.size)
    }

    /// Maps `len` bytes at `offset` (page multiples), tracked.
    pub fn map_range(&self, offset: u64, len: u64) -> Result<Mapping, ClientError> {
        let tracking = self.inner.conn.tracking()?;
        Mapping::new(self.inner.clone(), tracking, offset, len)
    }

    /// Uploads every page written since the last sync.
    pub fn sync(&self) -> Result<SyncResult, ClientError> {
        self.sync_flags(0)
    }

    /// Like [`Bo::sync`], and lists the uploaded runs.
    pub fn sync_with_runs(&self) -> Result<SyncResult, ClientError> {
        self.sync_flags(SYNC_REPORT_RUNS)
    }

    fn sync_flags(&self, flags: u32) -> Result<SyncResult, ClientError> {
        self.sync_like(|bo| Request::Sync { bo, flags }, flags)
    }

    fn sync_like(&self, build: impl Fn(u32) -> Request, flags: u32) -> Result<SyncResult, ClientError> {
        match self.inner.call(&build, &[])? {
            (Reply::SyncDone(s), _) => Ok(SyncResult::from_report(s, flags)),
            (other, _) => Err(unexpected(build(0).name(), &other)),
        }
    }

    fn call_ok(&self, build: impl Fn(u32) -> Request) -> Result<(), ClientError> {
        match self.inner.call(&build, &[])? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(build(0).name(), &other)),
        }
    }
    /// Binds a new GPU resource to the page-aligned window
    /// `[offset, offset+len)` (vmwgfx `dirty_add`); returns its index.
    pub fn add_resource(&self, offset: u64, len: u64) -> Result<u32, ClientError> {
        match self.inner.call(|bo| Request::AddResource { bo, offset, len }, &[])? {
            (Reply::ResourceAdded { index }, _) => Ok(index),
            (other, _) => Err(unexpected("ADD_RESOURCE", &other)),
        }
    }

    /// Destroys resource `index` (vmwgfx `dirty_release`).
    pub fn release_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::ReleaseResource { bo, index })
    }

    /// vmwgfx `scan` without transfer.
    pub fn scan(&self) -> Result<ScanReport, ClientError> {
        match self.inner.call(|bo| Request::Scan { bo }, &[])? {
            (Reply::Scanned(s), _) => Ok(s),
            (other, _) => Err(unexpected("SCAN", &other)),
        }
    }

    /// vmwgfx `transfer_to_res` + upload of resource `index`, without a
    /// scan first (use [`Bo::sync`] for the no-lost-write guarantee).
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

    /// vmwgfx `clear_res`: drops resource `index`'s dirty pages unreported.
    pub fn clear_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::ClearResource { bo, index })
    }

    /// vmwgfx `dirty_clear`: drops every dirty page unreported.
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
    pub fn damage(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        self.call_ok(|bo| Request::Damage { bo, offset, len })
    }

    /// The BO's tracker state (method, change count, users, envelope, bits).
    pub fn dirty_state(&self) -> Result<DirtyStateReport, ClientError> {
        match self.inner.call(|bo| Request::DirtyState { bo }, &[])? {
            (Reply::DirtyState(d), _) => Ok(d),
            (other, _) => Err(unexpected("DIRTY_STATE", &other)),
        }
    }

    /// Exports GPU resource `index` of the BO.
    pub fn export_resource(&self, index: u32) -> Result<ExportedResource, ClientError> {
        match self.inner.call(|bo| Request::ExportResource { bo, index }, &[])? {
            (
                Reply::Resource {
                    size,
                    offset,
                    pitch,
                    image,
                },
                mut fds,
            ) => Ok(ExportedResource {
                fd: fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("RESOURCE reply without fd".into()))?,
                size,
                offset,
                pitch: u64::from(pitch),
                image,
            }),
            (other, _) => Err(unexpected("EXPORT_RESOURCE", &other)),
        }
    }

    /// GPU → CPU: syncs the BO (no write made before this call is lost),
    /// then copies every GPU resource back into the BO. A write racing the
    /// readback may be overwritten by the GPU's bytes; write after it
    /// returns to keep a write (see the protocol's READBACK).
    pub fn readback(&self) -> Result<Readback, ClientError> {
        match self.inner.call(|bo| Request::Readback { bo, flags: 0 }, &[])? {
            (
                Reply::ReadbackDone {
                    synced_pages,
                    bytes,
                    duration_ns,
                },
                _,
            ) => Ok(Readback {
                synced_pages,
                bytes,
                duration: Duration::from_nanos(duration_ns),
            }),
            (other, _) => Err(unexpected("READBACK", &other)),
        }
    }
}
