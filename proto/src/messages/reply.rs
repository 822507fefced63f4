//! The replies the daemon sends ([`Reply`], README §4.2): what each one
//! carries, its wire kind, and how many fds ride with it. Their byte layout
//! is in `reply_wire`.

use super::kind;
use super::reports::{DirtyStateReport, ScanReport, SnapshotReport, SyncReport};
use super::request::Request;
use super::stats::StatsReport;
use super::sync_many::BoSyncOutcome;
use super::types::{BoPolicy, ErrorCode, Mechanism};
use crate::image::ImageInfo;
#[cfg(doc)] // named in doc links only
use crate::{limits::MAX_ERROR_MESSAGE, Method, DAMAGE_PATH_ATOMIC, DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE};

/// Replies, daemon → client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Negotiated version and capabilities.
    Hello {
        /// Version both speak.
        version: u16,
        /// Capabilities granted.
        caps: u64,
        /// Largest frame the daemon accepts.
        max_frame: u32,
        /// Daemon page size.
        page_size: u32,
        /// Largest BO the daemon will create.
        max_bo_size: u64,
    },
    /// A BO handle (CREATE_BO carries the memfd, IMPORT_BO none).
    Bo {
        /// Connection-local handle.
        bo: u32,
        /// Size in bytes (page multiple).
        size: u64,
        /// Daemon-wide id (for status displays, not a capability).
        id: u64,
        /// The image layout of an image BO, `None` for a byte BO.
        image: Option<ImageInfo>,
    },
    /// The process's subscription is attached to this connection.
    MmAttached {
        /// Mechanism chosen for this process.
        mechanism: Mechanism,
        /// Whether the mechanism is exact under concurrent writers.
        exact: bool,
        /// True when an existing subscription was joined.
        joined: bool,
        /// Daemon-wide subscription id.
        mm_id: u64,
    },
    /// A view was added.
    Mapped {
        /// View id, local to the connection.
        view: u32,
    },
    /// Success without data.
    Ok,
    /// SYNC result.
    SyncDone(SyncReport),
    /// SYNC_MANY result: one outcome per BO of the request, in its order.
    SyncManyDone(Vec<BoSyncOutcome>),
    /// STATS result.
    Stats(StatsReport),
    /// A resource fd is attached.
    Resource {
        /// Resource size in bytes.
        size: u64,
        /// Offset of the resource's window in the BO.
        offset: u64,
        /// Bytes between the starts of two consecutive pages of the window
        /// in the exported buffer (the page size where they are contiguous;
        /// a DRM dumb buffer lays one page out per row of the driver's pitch).
        /// An image resource's pages are contiguous (the page size); its
        /// row pitch is `image.pitch`.
        pitch: u32,
        /// The exported buffer's image description (an image BO's resource),
        /// `None` for a byte resource.
        image: Option<ImageInfo>,
    },
    /// A resource was bound.
    ResourceAdded {
        /// Resource index on the BO.
        index: u32,
    },
    /// SCAN result.
    Scanned(ScanReport),
    /// DIRTY_STATE result.
    DirtyState(DirtyStateReport),
    /// SNAPSHOT result; a memfd with the copy is attached.
    Snapshot(SnapshotReport),
    /// READBACK result.
    ReadbackDone {
        /// Pages the sync before the copy uploaded.
        synced_pages: u64,
        /// Bytes copied from the GPU resources into the BO.
        bytes: u64,
        /// Time the daemon spent, in nanoseconds.
        duration_ns: u64,
    },
    /// SET_MECHANISM result.
    MechanismSet {
        /// Mechanism before the switch.
        from: Mechanism,
        /// Mechanism now.
        to: Mechanism,
        /// Whether the new mechanism is exact under concurrent writers.
        exact: bool,
        /// Views moved to the new mechanism.
        views: u32,
        /// Pages marked dirty without proof of a write (counted in STATS).
        extra_pages: u64,
    },
    /// SET_POLICY result.
    PolicySet {
        /// The policy before.
        previous: BoPolicy,
        /// [`Method`] wire value now (0: the BO has no tracker yet; the
        /// policy applies when it gets one).
        method: u16,
    },
    /// METRICS result; a memfd with `len` bytes of text is attached.
    Metrics {
        /// Bytes of text in the memfd.
        len: u64,
    },
    /// WATCH_DAEMON result; the daemon's pidfd is attached.
    DaemonProcess,
    /// SHOW result.
    Shown {
        /// The connector shown on (`Virtual-1`, `VGA-1`); empty when hidden.
        connector: String,
        /// Width of the mode set on it.
        mode_width: u32,
        /// Height of the mode set on it.
        mode_height: u32,
        /// How damage reaches the device ([`DAMAGE_PATH_ATOMIC`],
        /// [`DAMAGE_PATH_DIRTYFB`], [`DAMAGE_PATH_NONE`]).
        damage_path: u16,
    },
    /// A typed error.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail (at most [`MAX_ERROR_MESSAGE`] bytes).
        message: String,
    },
}

impl Reply {
    /// Wire kind of this reply.
    pub fn kind(&self) -> u16 {
        match self {
            Self::Hello { .. } => kind::R_HELLO,
            Self::Bo { .. } => kind::R_BO,
            Self::MmAttached { .. } => kind::R_MM_ATTACHED,
            Self::Mapped { .. } => kind::R_MAPPED,
            Self::Ok => kind::R_OK,
            Self::SyncDone(_) => kind::R_SYNC_DONE,
            Self::SyncManyDone(_) => kind::R_SYNC_MANY_DONE,
            Self::Stats(_) => kind::R_STATS,
            Self::Resource { .. } => kind::R_RESOURCE,
            Self::ResourceAdded { .. } => kind::R_RESOURCE_ADDED,
            Self::Scanned(_) => kind::R_SCANNED,
            Self::DirtyState(_) => kind::R_DIRTY_STATE,
            Self::Snapshot(_) => kind::R_SNAPSHOT,
            Self::MechanismSet { .. } => kind::R_MECHANISM_SET,
            Self::ReadbackDone { .. } => kind::R_READBACK_DONE,
            Self::PolicySet { .. } => kind::R_POLICY_SET,
            Self::Metrics { .. } => kind::R_METRICS,
            Self::Shown { .. } => kind::R_SHOWN,
            Self::DaemonProcess => kind::R_DAEMON_PROCESS,
            Self::Error { .. } => kind::R_ERROR,
        }
    }

    /// Convenience constructor for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    /// Number of fds this reply carries when answering `request`.
    pub fn fd_count(&self, request: &Request) -> usize {
        match (self, request) {
            (Self::Bo { .. }, Request::CreateBo { .. } | Request::CreateImage { .. }) => 1,
            (Self::Resource { .. }, _) => 1,
            (Self::Snapshot(_), _) => 1,
            (Self::Metrics { .. }, _) => 1,
            (Self::DaemonProcess, _) => 1,
            _ => 0,
        }
    }
}
