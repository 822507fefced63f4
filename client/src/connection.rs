//! A connection to the daemon ([`Connection`]): connecting, creating and
//! importing BOs, and the daemon-wide requests (snapshots, policies,
//! metrics, statistics). Mechanism switching is in `mechanism.rs`, the
//! display output in `display.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use cohmem_proto::{BoPolicy, Method, Reply, Request, SnapshotReport, StatsReport, CREATE_NO_RESOURCE};
use cohmem_sys::memfd::Memfd;

use crate::bo::Bo;
use crate::error::{unexpected, ClientError};
use crate::session::ConnInner;

/// Default socket path: `$XDG_RUNTIME_DIR/cohmem.sock`, else
/// `/run/cohmem/cohmem.sock` (the daemon's default too).
pub fn default_socket_path() -> std::path::PathBuf {
    match std::env::var_os("COHMEM_SOCKET") {
        Some(p) if !p.is_empty() => p.into(),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir).join("cohmem.sock"),
            _ => "/run/cohmem/cohmem.sock".into(),
        },
    }
}

/// A connection to cohmemd. Cheap to clone; BOs keep it alive.
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
