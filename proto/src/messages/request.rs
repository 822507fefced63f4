//! The requests a client sends ([`Request`], README §4.1): what each one
//! asks, its wire kind and name, and how many fds ride with it. Their byte
//! layout is in `request_wire`.

use super::flags::*;
use super::kind;
use super::types::{BoPolicy, Mechanism};
use crate::image::ImageInfo;
#[cfg(doc)] // named in doc links only
use crate::Reply;

/// A byte range of a BO: `len` bytes at `offset` (DAMAGE_RANGES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteRange {
    /// Offset in bytes from the BO's start.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Requests, client → daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Version and capability negotiation; must be first.
    Hello {
        /// Lowest version the client speaks.
        min_version: u16,
        /// Highest version the client speaks.
        max_version: u16,
        /// Capabilities the client wants ([`crate::caps`]).
        caps: u64,
    },
    /// Create a BO of `size` bytes (rounded up to pages). Reply: [`Reply::Bo`] + memfd.
    CreateBo {
        /// Size in bytes.
        size: u64,
        /// [`CREATE_NO_RESOURCE`] or 0.
        flags: u32,
    },
    /// Open a handle to an existing BO given its memfd (1 fd). Reply: [`Reply::Bo`].
    ImportBo,
    /// Create an image BO: the GPU backend allocates a linear `width` ×
    /// `height` image in `fourcc` first, and the BO's bytes take exactly its
    /// layout (pitch and offset). Reply: [`Reply::Bo`] with its
    /// [`ImageInfo`] + memfd.
    CreateImage {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// DRM fourcc ([`crate::fourcc`]).
        fourcc: u32,
        /// Reserved, 0.
        flags: u32,
    },
    /// Open a handle to an image BO given its memfd (1 fd) and the layout
    /// its creator was given: the client library's re-import after a
    /// daemon restart. A BO this daemon knows must have exactly this
    /// layout; a memfd it does not know is adopted as an image BO if this
    /// daemon's backend lays the image out the same way (same pitch and
    /// offset), with every page dirty. Reply: [`Reply::Bo`].
    ImportImage {
        /// The layout the BO was created with.
        image: ImageInfo,
    },
    /// Put image BO `id` on the daemon's display output (`cohmemd
    /// --display`), or take it off with [`SHOW_HIDE`]: its GPU image becomes
    /// the scanout framebuffer, and after every sync that changes it the
    /// sync's rectangles reach the device as damage (FB_DAMAGE_CLIPS or
    /// DIRTYFB). Root, or a connection holding the BO, may do this. Reply:
    /// [`Reply::Shown`].
    Show {
        /// Daemon-wide BO id (as in STATS and [`Reply::Bo`]).
        id: u64,
        /// [`SHOW_HIDE`] or 0.
        flags: u32,
    },
    /// Attach this process's write tracking: 0 to 6 fds, \[WP_ASYNC uffd,
    /// pagemap\] with [`ATTACH_WITH_FDS`], then \[sync uffd\] with
    /// [`ATTACH_WITH_SYNC_UFFD`], \[pagemap, clear_refs\] with
    /// [`ATTACH_WITH_CLEAR_REFS`], then \[maps\] with [`ATTACH_WITH_MAPS`].
    AttachMm {
        /// Random token identifying the client's per-process subscription.
        token: u64,
        /// UFFDIO_API features the client's WP_ASYNC uffd was created with.
        uffd_features: u64,
        /// [`ATTACH_WITH_FDS`], [`ATTACH_WITH_SYNC_UFFD`],
        /// [`ATTACH_SYNC_ALL_FAULTS`], and the requested [`Mechanism`] at
        /// [`ATTACH_MECHANISM_SHIFT`].
        flags: u32,
    },
    /// Announce a view: `len` bytes of BO `bo` at `offset`, mapped at `addr`.
    Map {
        /// BO handle.
        bo: u32,
        /// Address of the mapping in the client.
        addr: u64,
        /// Length in bytes (page multiple).
        len: u64,
        /// Offset in the BO (page multiple).
        offset: u64,
    },
    /// Remove a view (after a final harvest).
    Unmap {
        /// BO handle.
        bo: u32,
        /// View id from [`Reply::Mapped`].
        view: u32,
    },
    /// Upload every page written since the last sync.
    Sync {
        /// BO handle.
        bo: u32,
        /// [`SYNC_REPORT_RUNS`].
        flags: u32,
    },
    /// Close a BO handle and its views on this connection.
    Destroy {
        /// BO handle.
        bo: u32,
    },
    /// Daemon statistics.
    Stats {
        /// [`STATS_CONNECTIONS`] | [`STATS_BOS`].
        flags: u32,
    },
    /// Export the fd of a BO's GPU resource. Reply: [`Reply::Resource`] + fd.
    ExportResource {
        /// BO handle.
        bo: u32,
        /// Resource index on the BO.
        index: u32,
    },
    /// Bind a new GPU resource to a page-aligned window of the BO (vmwgfx
    /// `dirty_add`). Reply: [`Reply::ResourceAdded`].
    AddResource {
        /// BO handle.
        bo: u32,
        /// Window offset in bytes (page multiple).
        offset: u64,
        /// Window length in bytes (non-zero page multiple).
        len: u64,
    },
    /// Destroy a resource (vmwgfx `dirty_release`).
    ReleaseResource {
        /// BO handle.
        bo: u32,
        /// Resource index.
        index: u32,
    },
    /// vmwgfx `scan` without transfer. Reply: [`Reply::Scanned`].
    Scan {
        /// BO handle.
        bo: u32,
    },
    /// vmwgfx `transfer_to_res` + upload for one resource (no scan first).
    /// Reply: [`Reply::SyncDone`].
    Transfer {
        /// BO handle.
        bo: u32,
        /// Resource index.
        index: u32,
        /// [`SYNC_REPORT_RUNS`].
        flags: u32,
    },
    /// vmwgfx `clear_res`: drop a resource's dirty pages unreported (after a
    /// full upload).
    ClearResource {
        /// BO handle.
        bo: u32,
        /// Resource index.
        index: u32,
    },
    /// vmwgfx `dirty_clear`: drop every dirty page of the BO unreported.
    ClearAll {
        /// BO handle.
        bo: u32,
    },
    /// The BO's tracker state. Reply: [`Reply::DirtyState`].
    DirtyState {
        /// BO handle.
        bo: u32,
    },
    /// An exact copy of a BO, taken with its writers quiesced (seed 004).
    /// Reply: [`Reply::Snapshot`] + a memfd holding the copy.
    Snapshot {
        /// Daemon-wide BO id (as in STATS); root, or a user with a
        /// connection holding the BO, may snapshot it.
        id: u64,
        /// Reserved, 0.
        flags: u32,
    },
    /// Switch the mechanism of the calling process's subscription (seed 004:
    /// under quiesce, never losing a write). The daemon re-registers every
    /// view of the process with the userfaultfd the new mechanism uses (it
    /// holds every fd the process offered in ATTACH_MM) and marks each view
    /// wholly dirty, since writes made during the switch cannot be proven
    /// absent. Reply: [`Reply::MechanismSet`].
    SetMechanism {
        /// The mechanism to switch to ([`Mechanism::None`] is refused).
        mechanism: Mechanism,
    },
    /// GPU → CPU: syncs the BO's dirty pages (no CPU write is lost), then
    /// copies every resource back into its window of the BO. Reply:
    /// [`Reply::ReadbackDone`].
    Readback {
        /// BO handle.
        bo: u32,
        /// Reserved, 0.
        flags: u32,
    },
    /// The `explicit` mechanism: the client reports that it wrote `len`
    /// bytes at `offset` of the BO. Reply: [`Reply::Ok`].
    Damage {
        /// BO handle.
        bo: u32,
        /// Offset in bytes.
        offset: u64,
        /// Length in bytes (non-zero).
        len: u64,
    },
    /// Many written byte ranges of BO `bo` at once, as a cooperative client
    /// knows them (Wayland's `damage_buffer` before `commit`, DIRTYFB clips,
    /// `vkFlushMappedMemoryRanges`); with [`DAMAGE_THEN_SYNC`] the BO is
    /// synced in the same round trip. Every range is checked before any is
    /// recorded. At most [`MAX_DAMAGE_RANGES`](crate::limits::MAX_DAMAGE_RANGES)
    /// ranges. Reply: [`Reply::Ok`], or [`Reply::SyncDone`] with
    /// [`DAMAGE_THEN_SYNC`].
    DamageRanges {
        /// BO handle.
        bo: u32,
        /// [`DAMAGE_THEN_SYNC`], [`SYNC_REPORT_RUNS`](crate::SYNC_REPORT_RUNS).
        flags: u32,
        /// The ranges written (each non-zero and inside the BO).
        ranges: Vec<ByteRange>,
    },
    /// Syncs every BO in `bos` (handles of this connection), in order, as
    /// SYNC would each: a frame's submission, which references many BOs, in
    /// one round trip. At most [`MAX_SYNC_BOS`](crate::limits::MAX_SYNC_BOS).
    /// One BO's failure (an unknown handle, an upload error) is reported in
    /// its outcome and does not stop the others. Reply:
    /// [`Reply::SyncManyDone`].
    SyncMany {
        /// Reserved, 0.
        flags: u32,
        /// BO handles.
        bos: Vec<u32>,
    },
    /// Pins how BO `id` is tracked (never losing a write: leaving a policy
    /// marks the whole BO dirty). Root, or a connection holding the BO, may
    /// set it. Reply: [`Reply::PolicySet`].
    SetPolicy {
        /// Daemon-wide BO id (as in STATS).
        id: u64,
        /// The policy.
        policy: BoPolicy,
    },
    /// The daemon's metrics in the OpenMetrics text format (what
    /// `--metrics-listen` serves). Reply: [`Reply::Metrics`] + a sealed
    /// memfd holding the text.
    Metrics,
    /// A pidfd of the daemon process, with which the client library knows
    /// for certain when the daemon has exited (and only then undoes a
    /// uffd-sync daemon's write protection). Reply: [`Reply::DaemonProcess`]
    /// + the pidfd.
    WatchDaemon,
}

impl Request {
    /// Wire kind of this request.
    pub fn kind(&self) -> u16 {
        match self {
            Self::Hello { .. } => kind::HELLO,
            Self::CreateBo { .. } => kind::CREATE_BO,
            Self::CreateImage { .. } => kind::CREATE_IMAGE,
            Self::ImportImage { .. } => kind::IMPORT_IMAGE,
            Self::Show { .. } => kind::SHOW,
            Self::ImportBo => kind::IMPORT_BO,
            Self::AttachMm { .. } => kind::ATTACH_MM,
            Self::Map { .. } => kind::MAP,
            Self::Unmap { .. } => kind::UNMAP,
            Self::Sync { .. } => kind::SYNC,
            Self::Destroy { .. } => kind::DESTROY,
            Self::Stats { .. } => kind::STATS,
            Self::ExportResource { .. } => kind::EXPORT_RESOURCE,
            Self::AddResource { .. } => kind::ADD_RESOURCE,
            Self::ReleaseResource { .. } => kind::RELEASE_RESOURCE,
            Self::Scan { .. } => kind::SCAN,
            Self::Transfer { .. } => kind::TRANSFER,
            Self::ClearResource { .. } => kind::CLEAR_RESOURCE,
            Self::ClearAll { .. } => kind::CLEAR_ALL,
            Self::DirtyState { .. } => kind::DIRTY_STATE,
            Self::Damage { .. } => kind::DAMAGE,
            Self::DamageRanges { .. } => kind::DAMAGE_RANGES,
            Self::SyncMany { .. } => kind::SYNC_MANY,
            Self::Snapshot { .. } => kind::SNAPSHOT,
            Self::SetMechanism { .. } => kind::SET_MECHANISM,
            Self::Readback { .. } => kind::READBACK,
            Self::SetPolicy { .. } => kind::SET_POLICY,
            Self::Metrics => kind::METRICS,
            Self::WatchDaemon => kind::WATCH_DAEMON,
        }
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "HELLO",
            Self::CreateBo { .. } => "CREATE_BO",
            Self::CreateImage { .. } => "CREATE_IMAGE",
            Self::ImportImage { .. } => "IMPORT_IMAGE",
            Self::Show { .. } => "SHOW",
            Self::ImportBo => "IMPORT_BO",
            Self::AttachMm { .. } => "ATTACH_MM",
            Self::Map { .. } => "MAP",
            Self::Unmap { .. } => "UNMAP",
            Self::Sync { .. } => "SYNC",
            Self::Destroy { .. } => "DESTROY",
            Self::Stats { .. } => "STATS",
            Self::ExportResource { .. } => "EXPORT_RESOURCE",
            Self::AddResource { .. } => "ADD_RESOURCE",
            Self::ReleaseResource { .. } => "RELEASE_RESOURCE",
            Self::Scan { .. } => "SCAN",
            Self::Transfer { .. } => "TRANSFER",
            Self::ClearResource { .. } => "CLEAR_RESOURCE",
            Self::ClearAll { .. } => "CLEAR_ALL",
            Self::DirtyState { .. } => "DIRTY_STATE",
            Self::Damage { .. } => "DAMAGE",
            Self::DamageRanges { .. } => "DAMAGE_RANGES",
            Self::SyncMany { .. } => "SYNC_MANY",
            Self::Snapshot { .. } => "SNAPSHOT",
            Self::SetMechanism { .. } => "SET_MECHANISM",
            Self::Readback { .. } => "READBACK",
            Self::SetPolicy { .. } => "SET_POLICY",
            Self::Metrics => "METRICS",
            Self::WatchDaemon => "WATCH_DAEMON",
        }
    }

    /// The numbers of fds this request may carry (inclusive range).
    pub fn fd_count(&self) -> (usize, usize) {
        match self {
            Self::ImportBo | Self::ImportImage { .. } => (1, 1),
            Self::AttachMm { flags, .. } => {
                let n = 2 * usize::from(flags & ATTACH_WITH_FDS != 0)
                    + usize::from(flags & ATTACH_WITH_SYNC_UFFD != 0)
                    + 2 * usize::from(flags & ATTACH_WITH_CLEAR_REFS != 0)
                    + usize::from(flags & ATTACH_WITH_MAPS != 0);
                (n, n)
            }
            _ => (0, 0),
        }
    }
}
