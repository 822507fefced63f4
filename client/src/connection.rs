//! Connections and BO handles.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{
    caps, DirtyStateReport, ErrorCode, Mechanism, Method, Reply, Request, Run, ScanReport, SnapshotReport, StatsReport,
    ATTACH_MECHANISM_SHIFT, CREATE_NO_RESOURCE, PROTOCOL_VERSION, SYNC_REPORT_RUNS,
};
use cohmem_sys::memfd::Memfd;
use cohmem_sys::seqpacket::SeqpacketSocket;

use crate::mapping::Mapping;
use crate::tracking::{process_tracking, requested_mechanism, ProcessTracking};
use crate::ClientError;

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
    /// The runs (when asked for with [`Bo::sync_with_runs`]; may be cut).
    pub runs: Vec<Run>,
    /// True when `runs` is not the complete list.
    pub runs_truncated: bool,
    /// Views scanned.
    pub views_scanned: u32,
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

/// What [`Connection::set_mechanism`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MechanismSwitch {
    /// Mechanism before.
    pub from: Mechanism,
    /// Mechanism now.
    pub to: Mechanism,
    /// Whether the new mechanism is exact under concurrent writers.
    pub exact: bool,
    /// Mappings (of every connection of this process) moved.
    pub views: u32,
    /// Pages the switch marked dirty that were not.
    pub extra_pages: u64,
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
    /// buffer (the page size where they are contiguous).
    pub pitch: u64,
}

/// What [`Bo::readback`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readback {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time the daemon spent.
    pub duration: Duration,
}

pub(crate) struct ConnInner {
    sock: Mutex<SeqpacketSocket>,
    /// The daemon's socket: the key of this process's tracking for it.
    socket_path: std::path::PathBuf,
    broken: std::sync::atomic::AtomicBool,
    next_id: AtomicU32,
    pub caps: u64,
    pub page_size: u64,
    pub max_bo_size: u64,
    tracking: Mutex<Option<Arc<ProcessTracking>>>,
}

impl ConnInner {
    /// Sends one request and waits for its reply.
    pub fn call(&self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        if self.broken.load(Ordering::Relaxed) {
            return Err(ClientError::Disconnected);
        }
        // Any failure between send and a complete receive leaves the
        // connection out of step (a late reply would answer the next
        // request), so it is marked broken for good.
        let broken = |e: cohmem_sys::SysError| {
            self.broken.store(true, Ordering::Relaxed);
            if SeqpacketSocket::is_disconnect(&e) {
                ClientError::Disconnected
            } else {
                e.into()
            }
        };
        sock.send(&req.encode(id), fds).map_err(broken)?;
        let mut buf = vec![0u8; MAX_FRAME];
        let got = sock.recv(&mut buf).map_err(broken)?;
        drop(sock);
        if got.len == 0 && got.fds.is_empty() {
            self.broken.store(true, Ordering::Relaxed);
        }
        if got.len == 0 && got.fds.is_empty() {
            return Err(ClientError::Disconnected);
        }
        if got.truncated {
            return Err(ClientError::Protocol("reply larger than the frame limit".into()));
        }
        let (rid, reply) =
            Reply::decode(&buf[..got.len]).map_err(|e| ClientError::Protocol(format!("undecodable reply: {e}")))?;
        if rid != id {
            return Err(ClientError::Protocol(format!("reply to request {rid}, expected {id}")));
        }
        if let Reply::Error { code, message } = reply {
            return Err(ClientError::Daemon {
                request: req.name(),
                code,
                message,
            });
        }
        let want = reply.fd_count(req);
        if got.fds.len() != want {
            return Err(ClientError::Protocol(format!(
                "{} reply carried {} fds, expected {want}",
                req.name(),
                got.fds.len()
            )));
        }
        Ok((reply, got.fds))
    }

    /// Attaches this process's tracking to the connection (once); returns
    /// it with the mechanism the daemon chose for the process.
    pub fn tracking(&self) -> Result<Arc<ProcessTracking>, ClientError> {
        let mut slot = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let pt = process_tracking(&self.socket_path)?;
        let requested = u32::from(requested_mechanism()? as u16) << ATTACH_MECHANISM_SHIFT;
        let (offer_flags, features, fds) = pt.offer();
        let bare = Request::AttachMm {
            token: pt.token,
            uffd_features: features,
            flags: requested,
        };
        let result = match self.call(&bare, &[]) {
            Err(e) if e.code() == Some(ErrorCode::NeedMmFds) => {
                let with_fds = Request::AttachMm {
                    token: pt.token,
                    uffd_features: features,
                    flags: requested | offer_flags,
                };
                self.call(&with_fds, &fds)
            }
            other => other,
        };
        let mechanism = match result? {
            (Reply::MmAttached { mechanism, .. }, _) => mechanism,
            (other, _) => return Err(unexpected("ATTACH_MM", &other)),
        };
        pt.set_mechanism(mechanism)?;
        *slot = Some(pt.clone());
        Ok(pt)
    }
}

pub(crate) fn unexpected(request: &str, reply: &Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply to {request}: {reply:?}"))
}

/// A connection to cohmemd. Cheap to clone; BOs keep it alive.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

impl Connection {
    /// Connects to the daemon at `path` and negotiates the protocol.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let sock = SeqpacketSocket::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut inner = ConnInner {
            sock: Mutex::new(sock),
            socket_path: path.to_owned(),
            broken: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU32::new(1),
            caps: 0,
            page_size: 4096,
            max_bo_size: 0,
            tracking: Mutex::new(None),
        };
        let hello = Request::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            caps: caps::ALL,
        };
        match inner.call(&hello, &[])? {
            (
                Reply::Hello {
                    caps,
                    page_size,
                    max_bo_size,
                    ..
                },
                _,
            ) => {
                inner.caps = caps;
                inner.page_size = u64::from(page_size);
                inner.max_bo_size = max_bo_size;
            }
            (other, _) => return Err(unexpected("HELLO", &other)),
        }
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Connects to [`crate::default_socket_path`] (`COHMEM_SOCKET` overrides it).
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(crate::default_socket_path())
    }

    /// Switches this process's write tracking to `mechanism` while its
    /// mappings stay mapped and in use (seed 004). The daemon moves every
    /// mapping of the process to the new mechanism under quiesce and marks
    /// each one wholly dirty (writes made during the switch cannot be proven
    /// absent), so the next sync of each BO uploads its mapped pages once;
    /// no write is lost. Fails with [`ErrorCode::Unsupported`] (and the
    /// reason) when the kernel or this process cannot offer the mechanism.
    pub fn set_mechanism(&self, mechanism: Mechanism) -> Result<MechanismSwitch, ClientError> {
        let pt = self.inner.tracking()?;
        let _no_mapping_changes = pt.switch_guard();
        let req = Request::SetMechanism { mechanism };
        match self.inner.call(&req, &[])? {
            (
                Reply::MechanismSet {
                    from,
                    to,
                    exact,
                    views,
                    extra_pages,
                },
                _,
            ) => {
                pt.set_mechanism(to)?;
                Ok(MechanismSwitch {
                    from,
                    to,
                    exact,
                    views,
                    extra_pages,
                })
            }
            (other, _) => Err(unexpected("SET_MECHANISM", &other)),
        }
    }

    /// The mechanism the daemon tracks this process with (attaching the
    /// process first if needed).
    pub fn mechanism(&self) -> Result<Mechanism, ClientError> {
        Ok(self.inner.tracking()?.mechanism())
    }

    /// Capabilities the daemon granted.
    pub fn caps(&self) -> u64 {
        self.inner.caps
    }

    /// Largest BO the daemon creates.
    pub fn max_bo_size(&self) -> u64 {
        self.inner.max_bo_size
    }

    /// Creates a BO of at least `size` bytes (rounded up to pages), with one
    /// GPU resource covering it.
    pub fn create_bo(&self, size: u64) -> Result<Bo, ClientError> {
        self.create_bo_flags(size, 0)
    }

    /// Creates a BO without any GPU resource (and so without a tracker):
    /// bind windows with [`Bo::add_resource`].
    pub fn create_bo_without_resource(&self, size: u64) -> Result<Bo, ClientError> {
        self.create_bo_flags(size, CREATE_NO_RESOURCE)
    }

    fn create_bo_flags(&self, size: u64, flags: u32) -> Result<Bo, ClientError> {
        let req = Request::CreateBo { size, flags };
        match self.inner.call(&req, &[])? {
            (Reply::Bo { bo, size, id }, mut fds) => {
                let fd = fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("CREATE_BO reply without memfd".into()))?;
                let memfd = Memfd::from_fd(fd)?;
                Ok(Bo::new(self.inner.clone(), bo, size, id, memfd))
            }
            (other, _) => Err(unexpected("CREATE_BO", &other)),
        }
    }

    /// Opens a handle to a BO another process shared by passing its memfd.
    pub fn import_bo(&self, memfd: OwnedFd) -> Result<Bo, ClientError> {
        match self.inner.call(&Request::ImportBo, &[memfd.as_fd()])? {
            (Reply::Bo { bo, size, id }, _) => Ok(Bo::new(self.inner.clone(), bo, size, id, Memfd::from_fd(memfd)?)),
            (other, _) => Err(unexpected("IMPORT_BO", &other)),
        }
    }

    /// An exact copy of BO `id` (daemon-wide id, as in STATS) taken with its
    /// writers quiesced: a sealed memfd with the bytes, and how it went.
    pub fn snapshot(&self, id: u64) -> Result<(OwnedFd, SnapshotReport), ClientError> {
        match self.inner.call(&Request::Snapshot { id, flags: 0 }, &[])? {
            (Reply::Snapshot(r), mut fds) => Ok((
                fds.pop()
                    .ok_or_else(|| ClientError::Protocol("SNAPSHOT reply without memfd".into()))?,
                r,
            )),
            (other, _) => Err(unexpected("SNAPSHOT", &other)),
        }
    }

    /// Daemon statistics (`flags`: [`cohmem_proto::STATS_CONNECTIONS`] | [`cohmem_proto::STATS_BOS`]).
    pub fn stats(&self, flags: u32) -> Result<StatsReport, ClientError> {
        match self.inner.call(&Request::Stats { flags }, &[])? {
            (Reply::Stats(s), _) => Ok(s),
            (other, _) => Err(unexpected("STATS", &other)),
        }
    }
}

pub(crate) struct BoInner {
    pub conn: Arc<ConnInner>,
    pub handle: u32,
    pub size: u64,
    pub id: u64,
    pub memfd: Memfd,
}

impl Drop for BoInner {
    fn drop(&mut self) {
        // Best effort: the daemon releases the handle with the connection anyway.
        let _ = self.conn.call(&Request::Destroy { bo: self.handle }, &[]);
    }
}

/// A BO handle on a connection. Dropping the last `Bo` and [`Mapping`] of it
/// closes the handle.
pub struct Bo {
    inner: Arc<BoInner>,
}

impl Bo {
    fn new(conn: Arc<ConnInner>, handle: u32, size: u64, id: u64, memfd: Memfd) -> Self {
        Self {
            inner: Arc::new(BoInner {
                conn,
                handle,
                size,
                id,
                memfd,
            }),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The daemon-wide id (for display).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The connection-local handle.
    pub fn handle(&self) -> u32 {
        self.inner.handle
    }

    /// The BO's memfd: pass a duplicate to another process so it can
    /// [`Connection::import_bo`] the BO.
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
        let req = Request::Sync {
            bo: self.inner.handle,
            flags,
        };
        self.sync_like(&req, flags)
    }

    fn sync_like(&self, req: &Request, flags: u32) -> Result<SyncResult, ClientError> {
        match self.inner.conn.call(req, &[])? {
            (Reply::SyncDone(s), _) => Ok(SyncResult {
                pages: s.pages,
                bytes: s.bytes,
                mechanism: Mechanism::from_wire(s.mechanism).unwrap_or(Mechanism::None),
                method: Method::from_wire(s.method).unwrap_or(Method::None),
                duration: Duration::from_nanos(s.duration_ns),
                run_count: s.run_count,
                runs_truncated: s.runs_truncated || flags & SYNC_REPORT_RUNS == 0,
                runs: s.runs,
                views_scanned: s.views_scanned,
            }),
            (other, _) => Err(unexpected(req.name(), &other)),
        }
    }

    fn call_ok(&self, req: &Request) -> Result<(), ClientError> {
        match self.inner.conn.call(req, &[])? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(req.name(), &other)),
        }
    }

    /// Binds a new GPU resource to the page-aligned window
    /// `[offset, offset+len)` (vmwgfx `dirty_add`); returns its index.
    pub fn add_resource(&self, offset: u64, len: u64) -> Result<u32, ClientError> {
        let req = Request::AddResource {
            bo: self.inner.handle,
            offset,
            len,
        };
        match self.inner.conn.call(&req, &[])? {
            (Reply::ResourceAdded { index }, _) => Ok(index),
            (other, _) => Err(unexpected("ADD_RESOURCE", &other)),
        }
    }

    /// Destroys resource `index` (vmwgfx `dirty_release`).
    pub fn release_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(&Request::ReleaseResource {
            bo: self.inner.handle,
            index,
        })
    }

    /// vmwgfx `scan` without transfer.
    pub fn scan(&self) -> Result<ScanReport, ClientError> {
        match self.inner.conn.call(&Request::Scan { bo: self.inner.handle }, &[])? {
            (Reply::Scanned(s), _) => Ok(s),
            (other, _) => Err(unexpected("SCAN", &other)),
        }
    }

    /// vmwgfx `transfer_to_res` + upload of resource `index`, without a
    /// scan first (use [`Bo::sync`] for the no-lost-write guarantee).
    pub fn transfer(&self, index: u32) -> Result<SyncResult, ClientError> {
        let req = Request::Transfer {
            bo: self.inner.handle,
            index,
            flags: SYNC_REPORT_RUNS,
        };
        self.sync_like(&req, SYNC_REPORT_RUNS)
    }

    /// vmwgfx `clear_res`: drops resource `index`'s dirty pages unreported.
    pub fn clear_resource(&self, index: u32) -> Result<(), ClientError> {
        self.call_ok(&Request::ClearResource {
            bo: self.inner.handle,
            index,
        })
    }

    /// vmwgfx `dirty_clear`: drops every dirty page unreported.
    pub fn clear_all(&self) -> Result<(), ClientError> {
        self.call_ok(&Request::ClearAll { bo: self.inner.handle })
    }

    /// Reports that `len` bytes at `offset` were written (the `explicit`
    /// mechanism; harmless, if redundant, under the others).
    pub fn damage(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        self.call_ok(&Request::Damage {
            bo: self.inner.handle,
            offset,
            len,
        })
    }

    /// The BO's tracker state (method, change count, users, envelope, bits).
    pub fn dirty_state(&self) -> Result<DirtyStateReport, ClientError> {
        match self
            .inner
            .conn
            .call(&Request::DirtyState { bo: self.inner.handle }, &[])?
        {
            (Reply::DirtyState(d), _) => Ok(d),
            (other, _) => Err(unexpected("DIRTY_STATE", &other)),
        }
    }

    /// Exports GPU resource `index` of the BO.
    pub fn export_resource(&self, index: u32) -> Result<ExportedResource, ClientError> {
        let req = Request::ExportResource {
            bo: self.inner.handle,
            index,
        };
        match self.inner.conn.call(&req, &[])? {
            (Reply::Resource { size, offset, pitch }, mut fds) => Ok(ExportedResource {
                fd: fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("RESOURCE reply without fd".into()))?,
                size,
                offset,
                pitch: u64::from(pitch),
            }),
            (other, _) => Err(unexpected("EXPORT_RESOURCE", &other)),
        }
    }

    /// GPU → CPU: syncs the BO (no write made before this call is lost),
    /// then copies every GPU resource back into the BO. A write racing the
    /// readback may be overwritten by the GPU's bytes; write after it
    /// returns to keep a write (see the protocol's READBACK).
    pub fn readback(&self) -> Result<Readback, ClientError> {
        let req = Request::Readback {
            bo: self.inner.handle,
            flags: 0,
        };
        match self.inner.conn.call(&req, &[])? {
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
