//! A BO handle ([`Bo`]) and its operations: mapping it, syncing, damage,
//! policy,
//! snapshots, export and readback; and a mapping's way back to its BO
//! ([`Mapping::bo`], [`Mapping::sync`]). Putting it on a display is in
//! `display.rs`; vmwgfx's per-resource operations are in `resources.rs`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use cohmem_proto::{BoPolicy, ImageInfo, Method, Reply, Request, SnapshotReport, SYNC_REPORT_RUNS};
use cohmem_sys::memfd::Memfd;

use crate::error::{unexpected, ClientError};
use crate::handle::BoInner;
use crate::mapping::Mapping;
use crate::results::{ExportedResource, Readback, SyncResult};
use crate::session::ConnInner;

/// A buffer object (BO): a sealed memfd of this process and the daemon,
/// with a GPU copy the daemon keeps up to date at every [`Bo::sync`].
///
/// Made by [`Connection::create_bo`](crate::Connection::create_bo),
/// [`Connection::create_image`](crate::Connection::create_image) or
/// [`Connection::import_bo`](crate::Connection::import_bo). Cloning gives
/// another handle to the same BO; dropping the last handle and the last
/// [`Mapping`] of it closes it on the daemon.
///
/// A BO keeps its connection alive (a reference count): a BO can always
/// sync, whatever became of the [`Connection`](crate::Connection) value it
/// was made through. After a daemon restart the library reconnects and
/// re-imports the BO by itself (its [`Bo::id`] and [`Bo::handle`] change;
/// calls on the `Bo` keep working).
///
/// `Bo` is `Send` and `Sync`: calls from several threads are serialised on
/// the connection (one request in flight at a time per connection).
#[derive(Clone)]
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
    ///
    /// # Errors
    ///
    /// [`ClientError::Sys`] when `pread` fails or the range reaches past
    /// the BO.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.inner.memfd.read_at(offset, buf)?)
    }

    /// Maps the whole BO, tracked: every write through the mapping reaches
    /// the GPU copy at the next [`Bo::sync`]. The mapping borrows the BO
    /// (it cannot outlive it); see [`Mapping`] for the ways to write it
    /// and [`Bo::map_detached`] for a mapping to store next to its BO.
    ///
    /// ```no_run
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// let bo = conn.create_bo(1 << 20)?;
    /// let map = bo.map()?;
    /// map.write(4096 * 3, b"hello")?;
    /// assert_eq!(bo.sync()?.pages, 1); // only the page written
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Bo::map_range`].
    pub fn map(&self) -> Result<Mapping<'_>, ClientError> {
        self.map_range(0, self.inner.size)
    }

    /// Maps `len` bytes at `offset` of the BO, tracked. `offset` must be a
    /// multiple of the page size ([`Connection::page_size`](crate::Connection::page_size)),
    /// as for `mmap`; `len` is rounded up to pages by the kernel.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for an unaligned `offset`, an empty
    /// range or one past the BO; [`ClientError::Daemon`] when the daemon
    /// refuses the mapping (`Unsupported` when the kernel lacks the
    /// process's tracking mechanism, `LimitExceeded` over the view quota);
    /// [`ClientError::Sys`] when `mmap` or `UFFDIO_REGISTER` fails;
    /// [`ClientError::ForkedChild`] in a forked child.
    pub fn map_range(&self, offset: u64, len: u64) -> Result<Mapping<'_>, ClientError> {
        self.map_with(offset, len)
    }

    /// Like [`Bo::map`], but the mapping does not borrow this `Bo`: it
    /// holds a reference count on the BO instead, so it can be stored next
    /// to the BO in a struct, moved to another thread or kept by C code.
    /// It can still always sync ([`Mapping::sync`]).
    ///
    /// ```no_run
    /// use cohmem_client::{Bo, Mapping};
    /// struct Surface {
    ///     bo: Bo,
    ///     map: Mapping<'static>,
    /// }
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// let bo = conn.create_bo(1 << 20)?;
    /// let map = bo.map_detached()?;
    /// let surface = Surface { bo, map };
    /// surface.map.write(0, b"hi")?;
    /// surface.bo.sync()?;
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Bo::map_range`].
    pub fn map_detached(&self) -> Result<Mapping<'static>, ClientError> {
        self.map_with(0, self.inner.size)
    }

    /// [`Bo::map_range`] as a detached mapping ([`Bo::map_detached`]).
    ///
    /// # Errors
    ///
    /// As [`Bo::map_range`].
    pub fn map_range_detached(&self, offset: u64, len: u64) -> Result<Mapping<'static>, ClientError> {
        self.map_with(offset, len)
    }

    fn map_with<'a>(&self, offset: u64, len: u64) -> Result<Mapping<'a>, ClientError> {
        let page = self.inner.conn.page_size;
        if offset % page != 0 {
            return Err(ClientError::InvalidArgument(format!(
                "map_range offset {offset} is not a multiple of the page size ({page}): map from {} (the page \
                 below) and add {} to your offsets in the mapping",
                offset / page * page,
                offset % page
            )));
        }
        let size = self.inner.size;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ClientError::InvalidArgument(format!(
                "map_range {offset}+{len} is empty or reaches past the BO's {size} bytes"
            )));
        }
        let tracking = self.inner.conn.tracking()?;
        Mapping::new(self.inner.clone(), tracking, offset, len)
    }

    /// Uploads every page written since the last sync to the GPU copy,
    /// and returns what it did: the pages and bytes, the mechanism that
    /// found them and, for an image BO, the rectangles of pixels that
    /// changed. No write made before the call is lost; writes made during
    /// it reach this sync or the next.
    ///
    /// ```no_run
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// # let bo = conn.create_bo(1 << 20)?;
    /// # let map = bo.map()?;
    /// map.write(0, &[1, 2, 3])?;
    /// let done = bo.sync()?;
    /// println!("{} pages in {:?} ({:?})", done.pages, done.duration, done.mechanism);
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Gpu` when the upload failed (the
    /// pages stay dirty for the next sync) or `Kernel` when harvesting the
    /// writes failed; [`ClientError::Disconnected`] when the daemon is gone
    /// and no new one answers on the socket (with a new daemon the call
    /// reconnects and succeeds, uploading the whole BO once);
    /// [`ClientError::ForkedChild`] in a forked child.
    pub fn sync(&self) -> Result<SyncResult, ClientError> {
        self.sync_flags(0)
    }

    /// Like [`Bo::sync`], and lists the uploaded runs of pages
    /// ([`SyncResult::runs`], [`SyncResult::pages_list`]).
    ///
    /// # Errors
    ///
    /// As [`Bo::sync`].
    pub fn sync_with_runs(&self) -> Result<SyncResult, ClientError> {
        self.sync_flags(SYNC_REPORT_RUNS)
    }

    fn sync_flags(&self, flags: u32) -> Result<SyncResult, ClientError> {
        self.sync_like(|bo| Request::Sync { bo, flags }, flags)
    }

    pub(crate) fn sync_like(&self, build: impl Fn(u32) -> Request, flags: u32) -> Result<SyncResult, ClientError> {
        match self.inner.call(&build, &[])? {
            (Reply::SyncDone(s), _) => Ok(SyncResult::from_report(s, flags)),
            (other, _) => Err(unexpected(build(0).name(), &other)),
        }
    }

    pub(crate) fn call_ok(&self, build: impl Fn(u32) -> Request) -> Result<(), ClientError> {
        match self.inner.call(&build, &[])? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(build(0).name(), &other)),
        }
    }
    /// Exports GPU resource `index` of the BO: an fd another process (or
    /// API: EGL, Vulkan) can import, with its layout. On DRM devices a
    /// dma-buf (PRIME); on the software GPU a read-only memfd.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `InvalidArgument` for an unknown
    /// resource, `Unsupported` when the backend cannot export.
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
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Gpu` when reading the GPU copy fails
    /// (the BO is unchanged then); the errors of [`Bo::sync`].
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

    /// Pins how this BO's writes are tracked ([`BoPolicy`]: `Auto` lets
    /// the daemon switch as vmwgfx does; `MkWrite`, `PageTable`, `Full`
    /// pin one way). Returns the policy it had and the method it has now.
    ///
    /// ```no_run
    /// use cohmem_client::BoPolicy;
    /// # let conn = cohmem_client::Connection::connect_default()?;
    /// let bo = conn.create_bo(64 << 20)?;
    /// // A BO rewritten whole every frame: skip per-page tracking.
    /// bo.set_policy(BoPolicy::Full)?;
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `Unsupported` for a policy this daemon
    /// does not offer; the errors of any call.
    pub fn set_policy(&self, policy: BoPolicy) -> Result<(BoPolicy, Method), ClientError> {
        let inner = &self.inner;
        set_policy_reply(
            inner
                .conn
                .call_with(|| Request::SetPolicy { id: inner.id(), policy }, &[])?,
        )
    }

    /// An exact copy of the BO taken with its writers quiesced: a sealed
    /// memfd holding the bytes, and how the quiesce went. For debugging
    /// and screenshots; an app reads its own bytes through its mapping.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `LimitExceeded` when the daemon's
    /// snapshot memory is used up; the errors of any call.
    pub fn snapshot(&self) -> Result<(OwnedFd, SnapshotReport), ClientError> {
        let inner = &self.inner;
        snapshot_reply(inner.conn.call_with(
            || Request::Snapshot {
                id: inner.id(),
                flags: 0,
            },
            &[],
        )?)
    }
}

/// The result of a SET_POLICY reply.
pub(crate) fn set_policy_reply(reply: (Reply, Vec<OwnedFd>)) -> Result<(BoPolicy, Method), ClientError> {
    match reply {
        (Reply::PolicySet { previous, method }, _) => Ok((
            previous,
            Method::from_wire(method).map_err(|e| ClientError::Protocol(format!("SET_POLICY reply: {e}")))?,
        )),
        (other, _) => Err(unexpected("SET_POLICY", &other)),
    }
}

/// The result of a SNAPSHOT reply.
pub(crate) fn snapshot_reply(reply: (Reply, Vec<OwnedFd>)) -> Result<(OwnedFd, SnapshotReport), ClientError> {
    match reply {
        (Reply::Snapshot(r), mut fds) => Ok((
            fds.pop()
                .ok_or_else(|| ClientError::Protocol("SNAPSHOT reply without memfd".into()))?,
            r,
        )),
        (other, _) => Err(unexpected("SNAPSHOT", &other)),
    }
}

impl Mapping<'_> {
    /// A handle to the BO this mapping is of (the same BO, sharing its
    /// state): a mapping can always reach its BO, also a detached one whose
    /// `Bo` values were all dropped.
    pub fn bo(&self) -> Bo {
        Bo {
            inner: self.bo_inner().clone(),
        }
    }

    /// Syncs the BO this mapping is of ([`Bo::sync`]): uploads every page
    /// of the BO written since the last sync, through this mapping or any
    /// other.
    ///
    /// # Errors
    ///
    /// As [`Bo::sync`].
    pub fn sync(&self) -> Result<SyncResult, ClientError> {
        self.bo().sync()
    }
}
