//! Connections and BO handles.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cohmem_proto::limits::MAX_FRAME;
use cohmem_proto::{
    caps, BoPolicy, DirtyStateReport, ErrorCode, ImageInfo, Mechanism, Method, Rect, Reply, Request, Run, ScanReport,
    SnapshotReport, StatsReport, ATTACH_MECHANISM_SHIFT, CREATE_NO_RESOURCE, PROTOCOL_VERSION, SYNC_REPORT_RUNS,
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
    /// For an image BO ([`Connection::create_image`]): the rectangles of
    /// pixels this sync (and any background upload since the previous
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
    /// buffer (the page size where they are contiguous, as for every image
    /// BO: an image's row pitch is `image.pitch`).
    pub pitch: u64,
    /// What an importer needs to use an image BO's buffer as the image
    /// (width, height, fourcc, pitch, offset, modifier); `None` for a byte
    /// resource.
    pub image: Option<ImageInfo>,
}

/// What [`Bo::show`] did: where the image is on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The connector (`Virtual-1`, `VGA-1`); empty after [`Bo::hide`].
    pub connector: String,
    /// The mode set on it, width and height.
    pub mode: (u32, u32),
    /// How each sync's rectangles reach the device: atomic commits with
    /// FB_DAMAGE_CLIPS ([`DAMAGE_PATH_ATOMIC`](cohmem_proto::DAMAGE_PATH_ATOMIC))
    /// or DIRTYFB ([`DAMAGE_PATH_DIRTYFB`](cohmem_proto::DAMAGE_PATH_DIRTYFB)).
    pub damage_path: u16,
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

/// The socket of the current session with the daemon.
struct Link {
    sock: SeqpacketSocket,
    /// The daemon process at the other end (SO_PEERCRED at connect).
    daemon_pid: i32,
    /// Closed or out of step: the next call reconnects first.
    broken: bool,
}

pub(crate) struct ConnInner {
    link: Mutex<Link>,
    /// The daemon's socket: the key of this process's tracking for it.
    socket_path: PathBuf,
    next_id: AtomicU32,
    pub caps: u64,
    pub page_size: u64,
    pub max_bo_size: u64,
    tracking: Mutex<Option<Arc<ProcessTracking>>>,
    /// Every BO opened on this connection: re-imported after a reconnect.
    bos: Mutex<Vec<Weak<BoInner>>>,
    reconnects: AtomicU64,
    /// The process that connected: its forked children share the socket
    /// and must not use it (see [`ClientError::ForkedChild`]).
    owner: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hello() -> Request {
    Request::Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        caps: caps::ALL,
    }
}

/// Whether a request that failed to reach the daemon may be sent again on a
/// new session.
enum Reconnect {
    /// Reconnect first if the link is broken (ordinary requests).
    IfBroken,
    /// Fail with [`ClientError::Disconnected`] instead: releasing requests
    /// (DESTROY, UNMAP) have nothing left to release on a dead session.
    Never,
}

impl ConnInner {
    /// Sends one request and waits for its reply. A broken session (the
    /// daemon died or restarted) is re-established first; see
    /// [`ConnInner::reconnect`].
    pub fn call(&self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_with(|| req.clone(), fds)
    }

    /// Like [`ConnInner::call`], building the request only once the session
    /// is established: requests naming handles read them then, because a
    /// reconnect renumbers them.
    pub fn call_with(
        &self,
        build: impl Fn() -> Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&|| Some(build()), fds, Reconnect::IfBroken, &mut |_| {})
    }

    /// Like [`ConnInner::call_with`]; `record` sees a successful reply
    /// before any other request (or a reconnect) can run.
    pub fn call_and_record(
        &self,
        build: impl Fn() -> Request,
        fds: &[BorrowedFd<'_>],
        mut record: impl FnMut(&Reply),
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&|| Some(build()), fds, Reconnect::IfBroken, &mut record)
    }

    /// Like [`ConnInner::call_with`] but never reconnects; `build` may
    /// decide, under the link lock, that there is nothing to send (`None`:
    /// the call returns [`Reply::Ok`]).
    pub fn call_if_connected(
        &self,
        build: impl Fn() -> Option<Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.call_inner(&build, fds, Reconnect::Never, &mut |_| {})
    }

    /// Sessions established so far after the first (read under the link
    /// lock by requests that name views of one session).
    pub fn generation(&self) -> u64 {
        self.reconnects.load(Ordering::Acquire)
    }

    fn call_inner(
        &self,
        build: &dyn Fn() -> Option<Request>,
        fds: &[BorrowedFd<'_>],
        reconnect: Reconnect,
        record: &mut dyn FnMut(&Reply),
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.check_owner()?;
        // BOs held during a reconnect are released only after the link lock
        // (dropping the last one sends DESTROY, which takes the lock).
        let mut held = Vec::new();
        let mut link = lock(&self.link);
        let result = (|| {
            for attempt in 0..2 {
                if link.broken {
                    match reconnect {
                        Reconnect::IfBroken => self.reconnect(&mut link, &mut held)?,
                        Reconnect::Never => return Err(ClientError::Disconnected),
                    }
                }
                let Some(req) = build() else {
                    return Ok((Reply::Ok, Vec::new()));
                };
                match self.exchange(&mut link, &req, fds) {
                    // The request never left: the daemon was gone before it
                    // was sent, so it is safe to send it to the next one.
                    Err(Exchange::NotSent(e)) if attempt == 0 && matches!(reconnect, Reconnect::IfBroken) => {
                        let _ = e;
                        continue;
                    }
                    Err(Exchange::NotSent(e) | Exchange::Failed(e)) => return Err(e),
                    Ok(r) => {
                        record(&r.0);
                        return Ok(r);
                    }
                }
            }
            Err(ClientError::Disconnected)
        })();
        drop(link);
        drop(held);
        result
    }

    /// One request/reply exchange on `link`; a transport failure marks the
    /// link broken (a late reply would answer the next request).
    fn exchange(
        &self,
        link: &mut Link,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), Exchange> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut broken = |e: cohmem_sys::SysError| {
            link.broken = true;
            if SeqpacketSocket::is_disconnect(&e) {
                ClientError::Disconnected
            } else {
                e.into()
            }
        };
        if let Err(e) = link.sock.send(&req.encode(id), fds) {
            return Err(Exchange::NotSent(broken(e)));
        }
        let mut buf = vec![0u8; MAX_FRAME];
        let got = link.sock.recv(&mut buf).map_err(|e| Exchange::Failed(broken(e)))?;
        if got.len == 0 && got.fds.is_empty() {
            link.broken = true;
            return Err(Exchange::Failed(ClientError::Disconnected));
        }
        let failed = Exchange::Failed;
        if got.truncated {
            return Err(failed(ClientError::Protocol(
                "reply larger than the frame limit".into(),
            )));
        }
        let (rid, reply) = Reply::decode(&buf[..got.len])
            .map_err(|e| failed(ClientError::Protocol(format!("undecodable reply: {e}"))))?;
        if rid != id {
            link.broken = true;
            return Err(failed(ClientError::Protocol(format!(
                "reply to request {rid}, expected {id}"
            ))));
        }
        if let Reply::Error { code, message } = reply {
            return Err(failed(ClientError::Daemon {
                request: req.name(),
                code,
                message,
            }));
        }
        let want = reply.fd_count(req);
        if got.fds.len() != want {
            return Err(failed(ClientError::Protocol(format!(
                "{} reply carried {} fds, expected {want}",
                req.name(),
                got.fds.len()
            ))));
        }
        Ok((reply, got.fds))
    }

    /// Fails in a forked child of the process that connected.
    fn check_owner(&self) -> Result<(), ClientError> {
        let pid = std::process::id();
        if pid != self.owner {
            return Err(ClientError::ForkedChild { owner: self.owner, pid });
        }
        Ok(())
    }

    /// Re-establishes the session after the daemon died or restarted, or
    /// after the session fell out of step (DESIGN.md §5.6): closes the old
    /// session and waits until the daemon has released it (a live daemon
    /// would otherwise still hold its views), connects again, re-attaches
    /// the process's tracking, re-imports every live BO by its memfd (a new
    /// daemon adopts it with every page dirty), re-announces every live
    /// mapping and reports each whole BO damaged, so the next sync uploads
    /// everything that could have been written while this process's
    /// writes were not tracked, whichever sharing process reconnected first.
    /// The BOs are put in `held`.
    fn reconnect(&self, link: &mut Link, held: &mut Vec<Arc<BoInner>>) -> Result<(), ClientError> {
        link.sock.close_and_wait(OLD_SESSION_BOUND);
        let mut fresh = connect_link(&self.socket_path)?;
        match self.exchange(&mut fresh, &hello(), &[]).map_err(Exchange::into_inner)? {
            (Reply::Hello { .. }, _) => {}
            (other, _) => return Err(unexpected("HELLO", &other)),
        }
        let tracking = lock(&self.tracking).clone();
        if let Some(pt) = &tracking {
            pt.settle_daemon(fresh.daemon_pid);
            let mechanism = attach(pt, &mut |r, f| {
                self.exchange(&mut fresh, r, f).map_err(Exchange::into_inner)
            })?;
            pt.reattach(mechanism, &mut || {
                watch_daemon(&mut |r, f| self.exchange(&mut fresh, r, f).map_err(Exchange::into_inner))
            })?;
        }
        held.extend(lock(&self.bos).iter().filter_map(Weak::upgrade));
        for bo in held.iter() {
            // An image BO is re-imported as the image it was created as, so
            // the new daemon's GPU copy keeps its layout and its syncs keep
            // reporting rectangles. A daemon whose backend lays the image
            // out differently refuses; the BO then goes on as a byte BO
            // (every write still reaches the GPU copy, without rectangles).
            let as_image = bo.image.and_then(|image| {
                match self.exchange(&mut fresh, &Request::ImportImage { image }, &[bo.memfd.as_fd()]) {
                    Ok(reply) => Some(Ok(reply)),
                    Err(Exchange::Failed(ClientError::Daemon { .. })) => None,
                    Err(e) => Some(Err(e)),
                }
            });
            let reply = match as_image {
                Some(r) => r,
                None => self.exchange(&mut fresh, &Request::ImportBo, &[bo.memfd.as_fd()]),
            };
            let handle = match reply.map_err(Exchange::into_inner)? {
                (Reply::Bo { bo: h, id, .. }, _) => {
                    bo.id.store(id, Ordering::Release);
                    h
                }
                (other, _) => return Err(unexpected("IMPORT_BO", &other)),
            };
            bo.handle.store(handle, Ordering::Release);
            for v in bo.live_views() {
                let map = Request::Map {
                    bo: handle,
                    addr: v.addr,
                    len: v.len,
                    offset: v.offset,
                };
                match self.exchange(&mut fresh, &map, &[]).map_err(Exchange::into_inner)? {
                    (Reply::Mapped { view }, _) => {
                        v.view.store(view, Ordering::Release);
                        v.generation.store(self.generation() + 1, Ordering::Release);
                    }
                    (other, _) => return Err(unexpected("MAP", &other)),
                }
            }
            // The whole BO, not only the live views: a mapping dropped while
            // the session was dead could not say what it wrote.
            let damage = Request::Damage {
                bo: handle,
                offset: 0,
                len: bo.size,
            };
            self.exchange(&mut fresh, &damage, &[]).map_err(Exchange::into_inner)?;
        }
        *link = fresh;
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Attaches this process's tracking to the connection (once); returns
    /// it with the mechanism the daemon chose for the process.
    pub fn tracking(&self) -> Result<Arc<ProcessTracking>, ClientError> {
        if let Some(t) = lock(&self.tracking).as_ref() {
            return Ok(t.clone());
        }
        // Not held across the calls: a reconnect inside them reads it.
        let pt = process_tracking(&self.socket_path)?;
        let mechanism = attach(&pt, &mut |r, f| self.call(r, f))?;
        pt.set_mechanism(mechanism, &mut || watch_daemon(&mut |r, f| self.call(r, f)))?;
        Ok(lock(&self.tracking).get_or_insert(pt).clone())
    }

    /// Reconnects now if the session is known to be broken, or if the
    /// process's lifeline says the daemon died.
    pub fn ensure_connected(&self) -> Result<(), ClientError> {
        self.check_owner()?;
        let gone = lock(&self.tracking).as_ref().is_some_and(|t| t.daemon_gone());
        let mut held = Vec::new();
        let mut link = lock(&self.link);
        if gone {
            link.broken = true;
        }
        let result = if link.broken {
            self.reconnect(&mut link, &mut held)
        } else {
            Ok(())
        };
        drop(link);
        drop(held);
        result
    }

    /// Records a BO opened on this connection.
    fn register_bo(&self, bo: &Arc<BoInner>) {
        let mut bos = lock(&self.bos);
        bos.retain(|w| w.strong_count() > 0);
        bos.push(Arc::downgrade(bo));
    }
}

/// How one exchange failed.
enum Exchange {
    /// Before the request was sent.
    NotSent(ClientError),
    /// After: the daemon may have acted on it.
    Failed(ClientError),
}

impl Exchange {
    fn into_inner(self) -> ClientError {
        match self {
            Self::NotSent(e) | Self::Failed(e) => e,
        }
    }
}

/// Connects a new link to the daemon at `path`.
fn connect_link(path: &Path) -> Result<Link, ClientError> {
    let sock = SeqpacketSocket::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let daemon_pid = sock.peer_cred().map(|c| c.pid).unwrap_or(0);
    Ok(Link {
        sock,
        daemon_pid,
        broken: false,
    })
}

/// A reply with its fds, or why there is none.
type CallResult = Result<(Reply, Vec<OwnedFd>), ClientError>;

/// How long a reconnect waits for a live daemon to release the old session
/// after closing it.
const OLD_SESSION_BOUND: Duration = Duration::from_secs(5);

/// WATCH_DAEMON through `call`: the daemon's pidfd, or `None` where the
/// daemon cannot give one (no pidfds in its kernel, or an older daemon).
fn watch_daemon(
    call: &mut dyn FnMut(&Request, &[BorrowedFd<'_>]) -> CallResult,
) -> Result<Option<OwnedFd>, ClientError> {
    match call(&Request::WatchDaemon, &[]) {
        Ok((Reply::DaemonProcess, mut fds)) => Ok(fds.pop()),
        Ok((other, _)) => Err(unexpected("WATCH_DAEMON", &other)),
        Err(e) if matches!(e.code(), Some(ErrorCode::Kernel | ErrorCode::UnknownRequest)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// ATTACH_MM through `call`: first without fds (another connection of the
/// process may have attached it already), then offering the fds.
fn attach(
    pt: &ProcessTracking,
    call: &mut dyn FnMut(&Request, &[BorrowedFd<'_>]) -> CallResult,
) -> Result<Mechanism, ClientError> {
    let requested = u32::from(requested_mechanism()? as u16) << ATTACH_MECHANISM_SHIFT;
    let (offer_flags, features, fds) = pt.offer();
    let bare = Request::AttachMm {
        token: pt.token,
        uffd_features: features,
        flags: requested,
    };
    let result = match call(&bare, &[]) {
        Err(e) if e.code() == Some(ErrorCode::NeedMmFds) => {
            let with_fds = Request::AttachMm {
                token: pt.token,
                uffd_features: features,
                flags: requested | offer_flags,
            };
            call(&with_fds, &fds)
        }
        other => other,
    };
    match result? {
        (Reply::MmAttached { mechanism, .. }, _) => Ok(mechanism),
        (other, _) => Err(unexpected("ATTACH_MM", &other)),
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
        let mut inner = ConnInner {
            link: Mutex::new(connect_link(path)?),
            socket_path: path.to_owned(),
            next_id: AtomicU32::new(1),
            caps: 0,
            page_size: 4096,
            max_bo_size: 0,
            tracking: Mutex::new(None),
            bos: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            owner: std::process::id(),
        };
        match inner.call_if_connected(|| Some(hello()), &[])? {
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

    /// How many times this connection re-established its session after the
    /// daemon went away (each time re-importing its BOs and mappings).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
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
        let mut fetch = || watch_daemon(&mut |r, f| self.inner.call(r, f));
        // The daemon moves mappings to the synchronous uffd and protects
        // them during the switch: the guard that undoes that if the daemon
        // dies half way must be watching before.
        if matches!(mechanism, Mechanism::UffdSync | Mechanism::SoftDirty) && pt.synchronous.is_some() {
            pt.sync_guard(&mut fetch)?;
        }
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
                pt.set_mechanism(to, &mut fetch)?;
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
        self.create_with(&Request::CreateBo { size, flags })
    }

    /// Creates an image BO: the daemon's GPU backend allocates a linear
    /// `width` × `height` image in DRM format `fourcc`
    /// ([`fourcc::XRGB8888`](cohmem_proto::fourcc::XRGB8888),
    /// [`ARGB8888`](cohmem_proto::fourcc::ARGB8888),
    /// [`RGB565`](cohmem_proto::fourcc::RGB565)) with the device's own
    /// pitch, and the BO's bytes take exactly that layout ([`Bo::image`]:
    /// pixel (x, y) is at `offset + y * pitch + x * bytes_per_pixel`). Every
    /// [`Bo::sync`] then reports the changed rectangles, and
    /// [`Bo::export_resource`] describes the image to importers.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::Unsupported`](cohmem_proto::ErrorCode::Unsupported) for
    /// a format or size the device refuses (the message names it),
    /// [`ErrorCode::TooLarge`](cohmem_proto::ErrorCode::TooLarge) over the
    /// daemon's `max_bo_size`, and the errors of any request.
    pub fn create_image(&self, width: u32, height: u32, fourcc: u32) -> Result<Bo, ClientError> {
        self.create_with(&Request::CreateImage {
            width,
            height,
            fourcc,
            flags: 0,
        })
    }

    fn create_with(&self, req: &Request) -> Result<Bo, ClientError> {
        match self.inner.call(req, &[])? {
            (Reply::Bo { bo, size, id, image }, mut fds) => {
                let fd = fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol(format!("{} reply without memfd", req.name())))?;
                let memfd = Memfd::from_fd(fd)?;
                Ok(Bo::new(self.inner.clone(), bo, size, id, memfd, image))
            }
            (other, _) => Err(unexpected(req.name(), &other)),
        }
    }

    /// Puts image BO `id` (daemon-wide, as in STATS) on the daemon's
    /// display output (`cohmemd --display`), or takes it off with `hide`;
    /// see [`Bo::show`]. For operators (`cohmemctl show`): root, or a
    /// connection holding the BO, may do this.
    pub fn show(&self, id: u64, hide: bool) -> Result<Shown, ClientError> {
        let flags = if hide { cohmem_proto::SHOW_HIDE } else { 0 };
        shown(self.inner.call(&Request::Show { id, flags }, &[])?.0)
    }

    /// Opens a handle to a BO another process shared by passing its memfd.
    pub fn import_bo(&self, memfd: OwnedFd) -> Result<Bo, ClientError> {
        match self.inner.call(&Request::ImportBo, &[memfd.as_fd()])? {
            (Reply::Bo { bo, size, id, image }, _) => {
                Ok(Bo::new(self.inner.clone(), bo, size, id, Memfd::from_fd(memfd)?, image))
            }
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

    /// Pins how BO `id` (daemon-wide id, as in STATS) is tracked: returns
    /// the policy it had and the vmwgfx method it has now (root, or a
    /// connection holding the BO, may do this).
    pub fn set_policy(&self, id: u64, policy: BoPolicy) -> Result<(BoPolicy, Method), ClientError> {
        match self.inner.call(&Request::SetPolicy { id, policy }, &[])? {
            (Reply::PolicySet { previous, method }, _) => Ok((
                previous,
                Method::from_wire(method).map_err(|e| ClientError::Protocol(format!("SET_POLICY reply: {e}")))?,
            )),
            (other, _) => Err(unexpected("SET_POLICY", &other)),
        }
    }

    /// The daemon's Prometheus metrics, OpenMetrics text (what
    /// `cohmemd --metrics-listen` serves over HTTP).
    pub fn metrics(&self) -> Result<String, ClientError> {
        match self.inner.call(&Request::Metrics, &[])? {
            (Reply::Metrics { len }, mut fds) => {
                let fd = fds
                    .pop()
                    .ok_or_else(|| ClientError::Protocol("METRICS reply without memfd".into()))?;
                let memfd = Memfd::from_fd(fd)?;
                if memfd.size() != len || len > MAX_METRICS_TEXT {
                    return Err(ClientError::Protocol(format!(
                        "METRICS reply says {len} bytes, its memfd holds {}",
                        memfd.size()
                    )));
                }
                let mut text = vec![0u8; len as usize];
                memfd.read_at(0, &mut text)?;
                String::from_utf8(text).map_err(|_| ClientError::Protocol("METRICS text is not UTF-8".into()))
            }
            (other, _) => Err(unexpected("METRICS", &other)),
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

/// Largest metrics text accepted from a daemon (the text is a few KiB).
const MAX_METRICS_TEXT: u64 = 16 << 20;

pub(crate) struct BoInner {
    pub conn: Arc<ConnInner>,
    /// The handle on the current session (renumbered by a reconnect).
    handle: AtomicU32,
    pub size: u64,
    /// The daemon-wide id on the current session.
    id: AtomicU64,
    pub memfd: Memfd,
    /// The layout of an image BO.
    pub image: Option<ImageInfo>,
    /// The live mappings of this BO through this connection.
    views: Mutex<Vec<Weak<ViewSlot>>>,
}

/// One mapping as the daemon knows it: re-announced after a reconnect.
pub(crate) struct ViewSlot {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    /// The view id on the current session.
    pub view: AtomicU32,
    /// Set by the UNMAP that retires it: a reconnect skips it.
    pub retired: std::sync::atomic::AtomicBool,
    /// The session ([`ConnInner::generation`]) its view id belongs to.
    pub generation: AtomicU64,
}

/// The [`Shown`] of a SHOW reply.
fn shown(reply: Reply) -> Result<Shown, ClientError> {
    match reply {
        Reply::Shown {
            connector,
            mode_width,
            mode_height,
            damage_path,
        } => Ok(Shown {
            connector,
            mode: (mode_width, mode_height),
            damage_path,
        }),
        other => Err(unexpected("SHOW", &other)),
    }
}

impl BoInner {
    /// SHOW of this BO by its id on the current session (a reconnect
    /// renumbers ids).
    fn conn_show(&self, hide: bool) -> Result<Shown, ClientError> {
        let flags = if hide { cohmem_proto::SHOW_HIDE } else { 0 };
        let build = || Request::Show {
            id: self.id.load(Ordering::Acquire),
            flags,
        };
        shown(self.conn.call_with(build, &[])?.0)
    }

    /// The handle on the current session.
    pub fn handle(&self) -> u32 {
        self.handle.load(Ordering::Acquire)
    }

    /// Sends the request `build` makes from the current handle.
    pub fn call(
        &self,
        build: impl Fn(u32) -> Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        self.conn.call_with(|| build(self.handle()), fds)
    }

    /// Records a mapping announced to the daemon.
    pub fn add_view(&self, slot: &Arc<ViewSlot>) {
        let mut views = lock(&self.views);
        views.retain(|w| w.strong_count() > 0);
        views.push(Arc::downgrade(slot));
    }

    fn live_views(&self) -> Vec<Arc<ViewSlot>> {
        lock(&self.views)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|v| !v.retired.load(Ordering::Acquire))
            .collect()
    }
}

impl Drop for BoInner {
    fn drop(&mut self) {
        // Best effort: the daemon releases the handle with the connection
        // anyway, and a dead session has nothing to release.
        let handle = self.handle();
        let _ = self
            .conn
            .call_if_connected(|| Some(Request::Destroy { bo: handle }), &[]);
    }
}

/// A BO handle on a connection. Dropping the last `Bo` and [`Mapping`] of it
/// closes the handle.
pub struct Bo {
    inner: Arc<BoInner>,
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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("socket", &self.inner.socket_path)
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

impl Bo {
    fn new(conn: Arc<ConnInner>, handle: u32, size: u64, id: u64, memfd: Memfd, image: Option<ImageInfo>) -> Self {
        let inner = Arc::new(BoInner {
            conn,
            handle: AtomicU32::new(handle),
            size,
            id: AtomicU64::new(id),
            memfd,
            image,
            views: Mutex::new(Vec::new()),
        });
        inner.conn.register_bo(&inner);
        Self { inner }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The image layout of an image BO ([`Connection::create_image`], or
    /// an import of one), `None` for a byte BO.
    pub fn image(&self) -> Option<ImageInfo> {
        self.inner.image
    }

    /// The daemon-wide id (for display; a daemon restart renumbers it).
    pub fn id(&self) -> u64 {
        self.inner.id.load(Ordering::Acquire)
    }

    /// The connection-local handle (a reconnect renumbers it).
    pub fn handle(&self) -> u32 {
        self.inner.handle()
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
        self.sync_like(|bo| Request::Sync { bo, flags }, flags)
    }

    fn sync_like(&self, build: impl Fn(u32) -> Request, flags: u32) -> Result<SyncResult, ClientError> {
        match self.inner.call(&build, &[])? {
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
                rects_merged: s.damage.as_ref().is_some_and(|d| d.merged),
                rects: s.damage.map(|d| d.rects).unwrap_or_default(),
            }),
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

    /// Puts this image BO on the daemon's display output (`cohmemd
    /// --display CONNECTOR|auto` on a DRM device): its GPU image becomes the
    /// scanout framebuffer, and after every [`Bo::sync`] the rectangles it
    /// changed are committed to the device as damage (FB_DAMAGE_CLIPS or
    /// DIRTYFB), so what the app writes appears on displays that keep
    /// their own copy (virtio-gpu, USB and BMC displays). Make the image
    /// the mode's size ([`Shown::mode`]); a larger one shows its top-left
    /// part.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the daemon has no display output,
    /// `PermissionDenied` when another process (a compositor) is DRM master
    /// of the device, `InvalidArgument` for a byte BO.
    pub fn show(&self) -> Result<Shown, ClientError> {
        self.inner.conn_show(false)
    }

    /// Takes this BO off the display after committing what is pending.
    pub fn hide(&self) -> Result<(), ClientError> {
        self.inner.conn_show(true).map(|_| ())
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
