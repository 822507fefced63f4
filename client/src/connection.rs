//! A connection to the daemon ([`Connection`]): connecting, creating and
//! importing BOs, and the daemon-wide requests (snapshots, policies,
//! metrics, statistics). Mechanism switching is in `mechanism.rs`, the
//! display output in `display.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method, Reply, Request, SnapshotReport, StatsReport, CREATE_NO_RESOURCE};

use cohmem_sys::memfd::Memfd;

use crate::bo::{set_policy_reply, snapshot_reply, Bo};
use crate::error::{unexpected, ClientError};
use crate::session::ConnInner;

/// Default socket path: `$COHMEM_SOCKET` when set, else
/// `$XDG_RUNTIME_DIR/cohmem.sock`, else `/run/cohmem/cohmem.sock` (the
/// daemon's default too).
pub fn default_socket_path() -> std::path::PathBuf {
    match std::env::var_os("COHMEM_SOCKET") {
        Some(p) if !p.is_empty() => p.into(),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir).join("cohmem.sock"),
            _ => "/run/cohmem/cohmem.sock".into(),
        },
    }
}

/// A connection to cohmemd. Cheap to clone (the clones share one session);
/// BOs keep it alive.
///
/// # Threads
///
/// `Connection`, [`Bo`] and [`Mapping`](crate::Mapping) are `Send` and
/// `Sync`. Calls from several threads on one connection are serialised
/// (one request in flight at a time); writes through mappings need no
/// call at all and run in parallel. A thread that wants its own round
/// trips in parallel with others opens its own connection.
///
/// # Reconnect
///
/// When the daemon dies or restarts, the next call reconnects to the
/// socket (the same path), re-imports every BO of the connection and
/// re-announces its mappings, marking each BO wholly dirty so that no
/// write made in between is lost; the call then goes on as usual.
/// [`Connection::reconnects`] counts this.
#[derive(Clone)]
pub struct Connection {
    pub(crate) inner: Arc<ConnInner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("socket", &self.inner.socket_path)
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

impl Connection {
    /// Connects to the daemon at `path` and negotiates the protocol.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when nothing answers at `path` (the daemon
    /// is not running, or listens elsewhere: see [`default_socket_path`]);
    /// [`ClientError::Daemon`] with `PermissionDenied` when the daemon does
    /// not serve this user (`cohmemd --allow-uid`), `UnsupportedVersion`
    /// for a daemon of another protocol version, `LimitExceeded` over its
    /// connection quota.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Ok(Self {
            inner: Arc::new(ConnInner::connect(path.as_ref())?),
        })
    }

    /// How many times this connection re-established its session after the
    /// daemon went away (each time re-importing its BOs and mappings).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }

    /// Connects to [`default_socket_path`] (`COHMEM_SOCKET` overrides it).
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`].
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(default_socket_path())
    }

    /// Capabilities the daemon granted.
    pub fn caps(&self) -> u64 {
        self.inner.caps
    }

    /// Largest BO the daemon creates.
    pub fn max_bo_size(&self) -> u64 {
        self.inner.max_bo_size
    }

    /// The page size the daemon works in (offsets of
    /// [`Bo::map_range`] and resource windows are multiples of it).
    pub fn page_size(&self) -> u64 {
        self.inner.page_size
    }

    /// Creates a BO of at least `size` bytes (rounded up to pages), with one
    /// GPU resource covering it. The BO starts zeroed, and so does its GPU
    /// copy.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `TooLarge` over
    /// [`Connection::max_bo_size`], `LimitExceeded` over this user's
    /// quota, `Gpu` when the GPU cannot allocate the resource; the errors
    /// of any call.
    pub fn create_bo(&self, size: u64) -> Result<Bo, ClientError> {
        self.create_bo_flags(size, 0)
    }

    /// Creates a BO without any GPU resource (and so without a tracker):
    /// bind windows with [`Bo::add_resource`].
    ///
    /// # Errors
    ///
    /// As [`Connection::create_bo`].
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

    /// Opens a handle to a BO another process shared by passing its memfd
    /// ([`Bo::memfd`], sent over a Unix socket). Both processes then write
    /// the same memory, and either one's sync uploads both's writes.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `BadFds` for an fd that is not a BO's
    /// sealed memfd; the errors of any call.
    pub fn import_bo(&self, memfd: OwnedFd) -> Result<Bo, ClientError> {
        match self.inner.call(&Request::ImportBo, &[memfd.as_fd()])? {
            (Reply::Bo { bo, size, id, image }, _) => {
                Ok(Bo::new(self.inner.clone(), bo, size, id, Memfd::from_fd(memfd)?, image))
            }
            (other, _) => Err(unexpected("IMPORT_BO", &other)),
        }
    }

    /// An exact copy of BO `id` taken with its writers quiesced: a sealed
    /// memfd with the bytes, and how it went.
    ///
    /// For operators and tools (`cohmemctl snapshot`) that know a BO by
    /// its daemon-wide id from [`Connection::stats`]; ids are renumbered
    /// when the daemon restarts. An app snapshots its own BO with
    /// [`Bo::snapshot`], which stays right across a reconnect.
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `NoSuchBo` for an unknown id,
    /// `PermissionDenied` for another user's BO (root may); as
    /// [`Bo::snapshot`].
    pub fn snapshot(&self, id: u64) -> Result<(OwnedFd, SnapshotReport), ClientError> {
        snapshot_reply(self.inner.call(&Request::Snapshot { id, flags: 0 }, &[])?)
    }

    /// Pins how BO `id` is tracked: returns the policy it had and the
    /// tracking method (MKWRITE or PAGETABLE, see [`Bo::set_policy`]) it
    /// has now (root, or a connection holding the BO, may do this).
    ///
    /// For operators and tools (`cohmemctl set-policy`) that know a BO by
    /// its daemon-wide id from [`Connection::stats`]; ids are renumbered
    /// when the daemon restarts. An app uses [`Bo::set_policy`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Daemon`] with `NoSuchBo` for an unknown id,
    /// `PermissionDenied` for a BO this connection does not hold (unless
    /// root); as [`Bo::set_policy`].
    pub fn set_policy(&self, id: u64, policy: BoPolicy) -> Result<(BoPolicy, Method), ClientError> {
        set_policy_reply(self.inner.call(&Request::SetPolicy { id, policy }, &[])?)
    }

    /// The daemon's Prometheus metrics, OpenMetrics text (what
    /// `cohmemd --metrics-listen` serves over HTTP).
    ///
    /// # Errors
    ///
    /// [`ClientError::Protocol`] for a malformed reply; the errors of any
    /// call.
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

    /// Daemon statistics: counters, and with `flags`
    /// [`STATS_CONNECTIONS`](crate::STATS_CONNECTIONS) and/or
    /// [`STATS_BOS`](crate::STATS_BOS) one entry per connection and per BO
    /// (what `cohmemctl status` prints). A non-root connection sees its
    /// user's entries only.
    ///
    /// # Errors
    ///
    /// The errors of any call.
    pub fn stats(&self, flags: u32) -> Result<StatsReport, ClientError> {
        match self.inner.call(&Request::Stats { flags }, &[])? {
            (Reply::Stats(s), _) => Ok(s),
            (other, _) => Err(unexpected("STATS", &other)),
        }
    }
}

/// Largest metrics text accepted from a daemon (the text is a few KiB).
const MAX_METRICS_TEXT: u64 = 16 << 20;
