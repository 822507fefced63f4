//! Requests, replies and their byte layout (see `proto/README.md`).

use crate::codec::{check_limit, truncate_utf8, DecodeError, Reader, Writer};
use crate::image::{ImageDamage, ImageInfo};
use crate::limits::*;
use crate::HEADER_LEN;

/// How a client process's writes are observed. The numeric values are the
/// wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Mechanism {
    /// No tracking attached (nothing mapped yet).
    None = 0,
    /// userfaultfd WP_ASYNC + PAGEMAP_SCAN (Linux >= 6.7).
    UffdAsync = 1,
    /// Synchronous userfaultfd write-protect faults resolved by the daemon.
    UffdSync = 2,
    /// clear_refs + pagemap bit 55.
    SoftDirty = 3,
    /// No tracking: every sync copies the whole BO.
    Full = 4,
    /// The client reports damage ranges itself.
    Explicit = 5,
}

impl Mechanism {
    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::None,
            1 => Self::UffdAsync,
            2 => Self::UffdSync,
            3 => Self::SoftDirty,
            4 => Self::Full,
            5 => Self::Explicit,
            _ => {
                return Err(DecodeError::BadValue {
                    field: "mechanism",
                    value: v.into(),
                })
            }
        })
    }

    /// The name used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UffdAsync => "uffd-async",
            Self::UffdSync => "uffd-sync",
            Self::SoftDirty => "soft-dirty",
            Self::Full => "full",
            Self::Explicit => "explicit",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// vmwgfx's per-BO tracking method (spec §2). The numeric values are the
/// wire encoding; 0 means the BO has no tracker (no resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Method {
    /// No tracker: no resource is bound to the BO.
    None = 0,
    /// Harvest written state by scanning (hardware dirty bits).
    PageTable = 1,
    /// Write-protect; record on first write.
    MkWrite = 2,
}

impl Method {
    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::PageTable),
            2 => Ok(Self::MkWrite),
            _ => Err(DecodeError::BadValue {
                field: "method",
                value: v.into(),
            }),
        }
    }

    /// Name for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PageTable => "pagetable",
            Self::MkWrite => "mkwrite",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an operator asked one BO to be tracked (SET_POLICY,
/// `cohmemctl set-policy`). The numeric values are the wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum BoPolicy {
    /// The daemon's own choice: vmwgfx's state machine, or `--methods auto`,
    /// with dense-write pauses.
    #[default]
    Auto = 0,
    /// MKWRITE, never switched and never paused.
    MkWrite = 1,
    /// PAGETABLE, never switched and never paused.
    PageTable = 2,
    /// No tracking: every sync uploads the whole BO (the views are
    /// unprotected where their mechanism allows).
    Full = 3,
}

impl BoPolicy {
    /// Every policy, in wire order.
    pub const ALL: [Self; 4] = [Self::Auto, Self::MkWrite, Self::PageTable, Self::Full];

    /// Decodes the wire value.
    pub fn from_wire(v: u16) -> Result<Self, DecodeError> {
        Self::ALL.get(usize::from(v)).copied().ok_or(DecodeError::BadValue {
            field: "policy",
            value: v.into(),
        })
    }

    /// The name used on command lines and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::MkWrite => "mkwrite",
            Self::PageTable => "pagetable",
            Self::Full => "full",
        }
    }

    /// Parses a [`BoPolicy::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for BoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error codes carried by the ERROR reply. Unknown codes from a newer peer
/// decode as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadFrame,
    /// No protocol version in common.
    UnsupportedVersion,
    /// A request other than HELLO came before HELLO, or HELLO came twice.
    NotNegotiated,
    /// The message kind is not a request this daemon knows.
    UnknownRequest,
    /// The wrong number or type of file descriptors came with the request.
    BadFds,
    /// The BO handle is not open on this connection.
    NoSuchBo,
    /// The view is not mapped on this connection.
    NoSuchView,
    /// An argument is out of range (alignment, bounds, overlap).
    InvalidArgument,
    /// A size exceeds the daemon's configured maximum.
    TooLarge,
    /// A per-connection or per-user limit was reached.
    LimitExceeded,
    /// ATTACH_MM without fds, but the daemon has no subscription for this process.
    NeedMmFds,
    /// MAP before ATTACH_MM.
    NoMm,
    /// The requested mechanism or feature is not available.
    Unsupported,
    /// A kernel operation failed (the message names it and the errno).
    Kernel,
    /// The GPU backend failed.
    Gpu,
    /// Anything else inside the daemon.
    Internal,
    /// The peer's uid is not allowed to use this daemon.
    PermissionDenied,
    /// A code this crate does not know.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::BadFrame => 1,
            Self::UnsupportedVersion => 2,
            Self::NotNegotiated => 3,
            Self::UnknownRequest => 4,
            Self::BadFds => 5,
            Self::NoSuchBo => 6,
            Self::NoSuchView => 7,
            Self::InvalidArgument => 8,
            Self::TooLarge => 9,
            Self::LimitExceeded => 10,
            Self::NeedMmFds => 11,
            Self::NoMm => 12,
            Self::Unsupported => 13,
            Self::Kernel => 14,
            Self::Gpu => 15,
            Self::Internal => 16,
            Self::PermissionDenied => 17,
            Self::Other(v) => v,
        }
    }

    /// Decodes a wire value; unknown values are kept as [`ErrorCode::Other`].
    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::UnsupportedVersion,
            3 => Self::NotNegotiated,
            4 => Self::UnknownRequest,
            5 => Self::BadFds,
            6 => Self::NoSuchBo,
            7 => Self::NoSuchView,
            8 => Self::InvalidArgument,
            9 => Self::TooLarge,
            10 => Self::LimitExceeded,
            11 => Self::NeedMmFds,
            12 => Self::NoMm,
            13 => Self::Unsupported,
            14 => Self::Kernel,
            15 => Self::Gpu,
            16 => Self::Internal,
            17 => Self::PermissionDenied,
            other => Self::Other(other),
        }
    }
}

/// Flag of SYNC: list the uploaded runs in the reply.
pub const SYNC_REPORT_RUNS: u32 = 1;
/// Flag of STATS: include one row per connection.
pub const STATS_CONNECTIONS: u32 = 1;
/// Flag of STATS: include one row per BO.
pub const STATS_BOS: u32 = 2;
/// Flag of ATTACH_MM: the WP_ASYNC uffd and pagemap fds are attached.
pub const ATTACH_WITH_FDS: u32 = 1;
/// Flag of ATTACH_MM: a synchronous (no WP_ASYNC) uffd is attached, after
/// the fds of [`ATTACH_WITH_FDS`] if those are attached too.
pub const ATTACH_WITH_SYNC_UFFD: u32 = 2;
/// Flag of ATTACH_MM: the synchronous uffd handles kernel-mode faults too
/// (created without `UFFD_USER_MODE_ONLY`), so `read(2)` into a protected page
/// waits for the daemon instead of failing with EFAULT.
pub const ATTACH_SYNC_ALL_FAULTS: u32 = 4;
/// Flag of ATTACH_MM: for the soft-dirty mechanism, the process's
/// `/proc/self/pagemap` and `/proc/self/clear_refs` (opened for writing) are
/// attached last (2 fds; kernels without WP_ASYNC send no other pagemap).
pub const ATTACH_WITH_CLEAR_REFS: u32 = 16;
/// Flag of ATTACH_MM: the process's `/proc/self/maps` is attached last (1
/// fd): with `PROCMAP_QUERY` (Linux 6.11) the daemon proves a view is still
/// mapped with one query per VMA instead of a page-by-page walk.
pub const ATTACH_WITH_MAPS: u32 = 32;
/// ATTACH_MM flags bits 8..16: the [`Mechanism`] the client asks for (0 =
/// the daemon's choice).
pub const ATTACH_MECHANISM_SHIFT: u32 = 8;
/// Flag of SHOW: take the BO off the display (the output goes dark or
/// keeps its last picture, as the device does).
pub const SHOW_HIDE: u32 = 1;
/// [`Reply::Shown`] `damage_path`: nothing shown.
pub const DAMAGE_PATH_NONE: u16 = 0;
/// [`Reply::Shown`] `damage_path`: atomic commits with FB_DAMAGE_CLIPS.
pub const DAMAGE_PATH_ATOMIC: u16 = 1;
/// [`Reply::Shown`] `damage_path`: DIRTYFB with clips (legacy modesetting).
pub const DAMAGE_PATH_DIRTYFB: u16 = 2;
/// Flag of CREATE_BO: create the BO without its default whole-BO resource
/// (so without a tracker until ADD_RESOURCE).
pub const CREATE_NO_RESOURCE: u32 = 1;

/// A run of consecutive BO pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First page, counted from the start of the BO.
    pub first_page: u32,
    /// Number of pages (at least 1).
    pub pages: u32,
}

/// What one SYNC did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Number of runs uploaded (may exceed `runs.len()`).
    pub run_count: u32,
    /// Mechanism that found the pages.
    pub mechanism: u16,
    /// vmwgfx method of the BO after the sync ([`Method`] wire value).
    pub method: u16,
    /// True when `runs` lists fewer runs than `run_count` (or none was asked for).
    pub runs_truncated: bool,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
    /// Views scanned.
    pub views_scanned: u32,
    /// The uploaded runs, ascending, at most [`MAX_REPORTED_RUNS`].
    pub runs: Vec<Run>,
    /// For an image BO: the rectangles of pixels that changed on its GPU
    /// copy; `None` for a byte BO.
    pub damage: Option<ImageDamage>,
}

/// Daemon-wide counters in a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonStats {
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u32,
    /// Live mm subscriptions (client processes).
    pub mm_subscriptions: u32,
    /// Live BOs.
    pub bos: u32,
    /// Live views.
    pub views: u32,
    /// Completed syncs.
    pub syncs: u64,
    /// Pages uploaded by all syncs.
    pub pages_uploaded: u64,
    /// Bytes uploaded by all syncs.
    pub bytes_uploaded: u64,
    /// Uploads that failed (their runs were folded back).
    pub upload_failures: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// vmwgfx method switches.
    pub method_switches: u64,
    /// Pages marked dirty without proof of a write (switches, dead views).
    pub extra_pages: u64,
    /// Sync read sections retried after colliding with a structural change.
    pub sync_retries: u64,
    /// Syncs that took the exclusive path.
    pub sync_exclusive: u64,
    /// Write-protect faults resolved by the fault service (uffd-sync).
    pub faults: u64,
    /// GPU backend name.
    pub backend: String,
}

/// One connection row of a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionRow {
    /// Daemon-wide connection id.
    pub id: u64,
    /// Peer pid (SO_PEERCRED).
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// BO handles open on the connection.
    pub bos: u32,
    /// Views mapped through the connection.
    pub views: u32,
    /// Requests handled.
    pub requests: u64,
}

/// One BO row of a STATS reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoRow {
    /// Daemon-wide BO id.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Views across all processes.
    pub views: u32,
    /// Pages recorded dirty and not uploaded yet.
    pub dirty_pages: u64,
    /// Syncs done on this BO.
    pub syncs: u64,
    /// Pages uploaded by those syncs.
    pub pages_uploaded: u64,
    /// Bytes uploaded by those syncs.
    pub bytes_uploaded: u64,
    /// [`Method`] wire value (0: no tracker).
    pub method: u16,
    /// Sync read sections retried.
    pub sync_retries: u64,
    /// Syncs that took the exclusive path.
    pub sync_exclusive: u64,
    /// [`BoPolicy`] wire value set by SET_POLICY.
    pub policy: u16,
    /// [`BO_ROW_PAUSED`] when tracking is paused (dense writes or the
    /// `full` policy: every sync uploads the whole BO).
    pub flags: u16,
}

/// [`BoRow::flags`]: tracking is paused, every sync uploads the whole BO.
pub const BO_ROW_PAUSED: u16 = 1;

/// Reply to STATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReport {
    /// Daemon-wide counters.
    pub daemon: DaemonStats,
    /// Connection rows visible to the caller.
    pub connections: Vec<ConnectionRow>,
    /// BO rows visible to the caller.
    pub bos: Vec<BoRow>,
    /// True when more rows existed than the limits allow.
    pub truncated: bool,
}

/// Reply to DIRTY_STATE: the BO's tracker as vmwgfx would hold it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirtyStateReport {
    /// [`Method`] wire value (0: no tracker).
    pub method: u16,
    /// Consecutive scans that asked for a method switch.
    pub change_count: u32,
    /// Users of the tracker (resources bound to the BO).
    pub users: u32,
    /// Pages of the BO (N).
    pub pages: u64,
    /// Envelope start (N when empty).
    pub start: u64,
    /// Envelope end (0 when empty).
    pub end: u64,
    /// Pages whose bit is set.
    pub dirty_pages: u64,
    /// True when `runs` is not the complete list of set bits.
    pub truncated: bool,
    /// Maximal runs of set bits, ascending, at most [`MAX_REPORTED_RUNS`].
    pub runs: Vec<Run>,
}

/// Reply to SNAPSHOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotReport {
    /// Bytes in the snapshot (the BO's size).
    pub size: u64,
    /// True when no write can have changed the BO while it was copied.
    pub exact: bool,
    /// Copy attempts (writers that cannot be blocked are checked afterwards,
    /// and the copy is retried if they wrote).
    pub attempts: u32,
    /// Views whose writers were blocked (uffd-sync).
    pub blocked_views: u32,
    /// Views whose writers could not be blocked, only checked (uffd-async),
    /// or not even checked (full, explicit: then `exact` is false).
    pub unblocked_views: u32,
    /// The layout of an image BO (so a snapshot can be saved as a picture),
    /// `None` for a byte BO.
    pub image: Option<ImageInfo>,
}

/// Reply to SCAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// [`Method`] wire value after the scan.
    pub method: u16,
    /// [`Method`] wire value switched to by this scan, 0 if none.
    pub switched_to: u16,
    /// Change count after the scan.
    pub change_count: u32,
    /// PTEs cleaned (PAGETABLE) or re-protected (MKWRITE), per mapping.
    pub num_marked: u64,
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
    /// Attach this process's write tracking: 0 to 6 fds, [WP_ASYNC uffd,
    /// pagemap] with [`ATTACH_WITH_FDS`], then [sync uffd] with
    /// [`ATTACH_WITH_SYNC_UFFD`], [pagemap, clear_refs] with
    /// [`ATTACH_WITH_CLEAR_REFS`], then [maps] with [`ATTACH_WITH_MAPS`].
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

/// Request kinds on the wire.
pub mod kind {
    #![allow(missing_docs)]
    pub const HELLO: u16 = 0x0001;
    pub const CREATE_BO: u16 = 0x0002;
    pub const IMPORT_BO: u16 = 0x0003;
    pub const ATTACH_MM: u16 = 0x0004;
    pub const MAP: u16 = 0x0005;
    pub const UNMAP: u16 = 0x0006;
    pub const SYNC: u16 = 0x0007;
    pub const DESTROY: u16 = 0x0008;
    pub const STATS: u16 = 0x0009;
    pub const EXPORT_RESOURCE: u16 = 0x000a;
    pub const ADD_RESOURCE: u16 = 0x000b;
    pub const RELEASE_RESOURCE: u16 = 0x000c;
    pub const SCAN: u16 = 0x000d;
    pub const TRANSFER: u16 = 0x000e;
    pub const CLEAR_RESOURCE: u16 = 0x000f;
    pub const CLEAR_ALL: u16 = 0x0010;
    pub const DIRTY_STATE: u16 = 0x0011;
    pub const DAMAGE: u16 = 0x0012;
    pub const SNAPSHOT: u16 = 0x0013;
    pub const SET_MECHANISM: u16 = 0x0014;
    pub const READBACK: u16 = 0x0015;
    pub const SET_POLICY: u16 = 0x0016;
    pub const METRICS: u16 = 0x0017;
    pub const WATCH_DAEMON: u16 = 0x0018;
    pub const CREATE_IMAGE: u16 = 0x0019;
    pub const IMPORT_IMAGE: u16 = 0x001a;
    pub const SHOW: u16 = 0x001b;

    pub const R_HELLO: u16 = 0x8001;
    pub const R_BO: u16 = 0x8002;
    pub const R_MM_ATTACHED: u16 = 0x8003;
    pub const R_MAPPED: u16 = 0x8004;
    pub const R_OK: u16 = 0x8005;
    pub const R_SYNC_DONE: u16 = 0x8006;
    pub const R_STATS: u16 = 0x8007;
    pub const R_RESOURCE: u16 = 0x8008;
    pub const R_RESOURCE_ADDED: u16 = 0x8009;
    pub const R_SCANNED: u16 = 0x800a;
    pub const R_DIRTY_STATE: u16 = 0x800b;
    pub const R_SNAPSHOT: u16 = 0x800c;
    pub const R_MECHANISM_SET: u16 = 0x800d;
    pub const R_READBACK_DONE: u16 = 0x800e;
    pub const R_POLICY_SET: u16 = 0x800f;
    pub const R_METRICS: u16 = 0x8010;
    pub const R_DAEMON_PROCESS: u16 = 0x8011;
    pub const R_SHOWN: u16 = 0x8012;
    pub const R_ERROR: u16 = 0x80ff;
}

fn header(buf: &mut Vec<u8>, kind: u16, id: u32) {
    let mut w = Writer::new(buf);
    w.u16(kind);
    w.u16(0);
    w.u32(id);
}

fn read_header(buf: &[u8]) -> Result<(u16, u32, Reader<'_>), DecodeError> {
    if buf.len() > MAX_FRAME {
        return Err(DecodeError::TooLong(buf.len()));
    }
    let mut r = Reader::new(buf);
    let kind = r.u16("kind")?;
    let flags = r.u16("flags")?;
    let id = r.u32("request id")?;
    if flags != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    Ok((kind, id, r))
}

/// Reads the request id of a frame without decoding it, so that an error
/// reply can answer even an undecodable request (0 when the header is short).
pub fn peek_request_id(buf: &[u8]) -> u32 {
    if buf.len() < HEADER_LEN {
        return 0;
    }
    u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])
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

    /// Encodes the request as one frame.
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        header(&mut buf, self.kind(), id);
        let mut w = Writer::new(&mut buf);
        match *self {
            Self::Hello {
                min_version,
                max_version,
                caps,
            } => {
                w.u16(min_version);
                w.u16(max_version);
                w.u64(caps);
            }
            Self::CreateBo { size, flags } => {
                w.u64(size);
                w.u32(flags);
            }
            Self::ImportBo => {}
            Self::ImportImage { ref image } => image.write(&mut w),
            Self::CreateImage {
                width,
                height,
                fourcc,
                flags,
            } => {
                w.u32(width);
                w.u32(height);
                w.u32(fourcc);
                w.u32(flags);
            }
            Self::AttachMm {
                token,
                uffd_features,
                flags,
            } => {
                w.u64(token);
                w.u64(uffd_features);
                w.u32(flags);
            }
            Self::Map { bo, addr, len, offset } => {
                w.u32(bo);
                w.u64(addr);
                w.u64(len);
                w.u64(offset);
            }
            Self::Unmap { bo, view } => {
                w.u32(bo);
                w.u32(view);
            }
            Self::Sync { bo, flags } | Self::Readback { bo, flags } => {
                w.u32(bo);
                w.u32(flags);
            }
            Self::Destroy { bo } => w.u32(bo),
            Self::Stats { flags } => w.u32(flags),
            Self::ExportResource { bo, index }
            | Self::ReleaseResource { bo, index }
            | Self::ClearResource { bo, index } => {
                w.u32(bo);
                w.u32(index);
            }
            Self::AddResource { bo, offset, len } | Self::Damage { bo, offset, len } => {
                w.u32(bo);
                w.u64(offset);
                w.u64(len);
            }
            Self::Scan { bo } | Self::ClearAll { bo } | Self::DirtyState { bo } => w.u32(bo),
            Self::Snapshot { id, flags } | Self::Show { id, flags } => {
                w.u64(id);
                w.u32(flags);
            }
            Self::SetMechanism { mechanism } => {
                w.u16(mechanism as u16);
                w.u16(0);
            }
            Self::SetPolicy { id, policy } => {
                w.u64(id);
                w.u16(policy as u16);
                w.u16(0);
            }
            Self::Metrics | Self::WatchDaemon => {}
            Self::Transfer { bo, index, flags } => {
                w.u32(bo);
                w.u32(index);
                w.u32(flags);
            }
        }
        buf
    }

    /// Decodes one frame into its request id and request.
    pub fn decode(buf: &[u8]) -> Result<(u32, Request), DecodeError> {
        let (k, id, mut r) = read_header(buf)?;
        let req = match k {
            kind::HELLO => Self::Hello {
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
                caps: r.u64("caps")?,
            },
            kind::CREATE_BO => Self::CreateBo {
                size: r.u64("size")?,
                flags: r.u32("flags")?,
            },
            kind::IMPORT_BO => Self::ImportBo,
            kind::SHOW => Self::Show {
                id: r.u64("id")?,
                flags: r.u32("flags")?,
            },
            kind::IMPORT_IMAGE => Self::ImportImage {
                image: ImageInfo::read(&mut r)?,
            },
            kind::CREATE_IMAGE => Self::CreateImage {
                width: r.u32("width")?,
                height: r.u32("height")?,
                fourcc: r.u32("fourcc")?,
                flags: r.u32("flags")?,
            },
            kind::ATTACH_MM => Self::AttachMm {
                token: r.u64("token")?,
                uffd_features: r.u64("uffd_features")?,
                flags: r.u32("flags")?,
            },
            kind::MAP => Self::Map {
                bo: r.u32("bo")?,
                addr: r.u64("addr")?,
                len: r.u64("len")?,
                offset: r.u64("offset")?,
            },
            kind::UNMAP => Self::Unmap {
                bo: r.u32("bo")?,
                view: r.u32("view")?,
            },
            kind::SYNC => Self::Sync {
                bo: r.u32("bo")?,
                flags: r.u32("flags")?,
            },
            kind::DESTROY => Self::Destroy { bo: r.u32("bo")? },
            kind::STATS => Self::Stats { flags: r.u32("flags")? },
            kind::EXPORT_RESOURCE => Self::ExportResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::ADD_RESOURCE => Self::AddResource {
                bo: r.u32("bo")?,
                offset: r.u64("offset")?,
                len: r.u64("len")?,
            },
            kind::RELEASE_RESOURCE => Self::ReleaseResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::SCAN => Self::Scan { bo: r.u32("bo")? },
            kind::TRANSFER => Self::Transfer {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
                flags: r.u32("flags")?,
            },
            kind::CLEAR_RESOURCE => Self::ClearResource {
                bo: r.u32("bo")?,
                index: r.u32("index")?,
            },
            kind::CLEAR_ALL => Self::ClearAll { bo: r.u32("bo")? },
            kind::DIRTY_STATE => Self::DirtyState { bo: r.u32("bo")? },
            kind::SNAPSHOT => Self::Snapshot {
                id: r.u64("id")?,
                flags: r.u32("flags")?,
            },
            kind::READBACK => Self::Readback {
                bo: r.u32("bo")?,
                flags: r.u32("flags")?,
            },
            kind::SET_MECHANISM => {
                let mechanism = Mechanism::from_wire(r.u16("mechanism")?)?;
                let reserved = r.u16("reserved")?;
                if reserved != 0 {
                    return Err(DecodeError::BadValue {
                        field: "reserved",
                        value: u64::from(reserved),
                    });
                }
                Self::SetMechanism { mechanism }
            }
            kind::DAMAGE => Self::Damage {
                bo: r.u32("bo")?,
                offset: r.u64("offset")?,
                len: r.u64("len")?,
            },
            kind::SET_POLICY => {
                let id = r.u64("id")?;
                let policy = BoPolicy::from_wire(r.u16("policy")?)?;
                let reserved = r.u16("reserved")?;
                if reserved != 0 {
                    return Err(DecodeError::BadValue {
                        field: "reserved",
                        value: u64::from(reserved),
                    });
                }
                Self::SetPolicy { id, policy }
            }
            kind::METRICS => Self::Metrics,
            kind::WATCH_DAEMON => Self::WatchDaemon,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((id, req))
    }
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

    /// Encodes the reply as one frame. Lists and strings longer than the
    /// limits are cut (and flagged as truncated where the format has a flag).
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        header(&mut buf, self.kind(), id);
        let mut w = Writer::new(&mut buf);
        match self {
            Self::Hello {
                version,
                caps,
                max_frame,
                page_size,
                max_bo_size,
            } => {
                w.u16(*version);
                w.u16(0);
                w.u64(*caps);
                w.u32(*max_frame);
                w.u32(*page_size);
                w.u64(*max_bo_size);
            }
            Self::Bo { bo, size, id, image } => {
                w.u32(*bo);
                w.u64(*size);
                w.u64(*id);
                ImageInfo::write_optional(image, &mut w);
            }
            Self::MmAttached {
                mechanism,
                exact,
                joined,
                mm_id,
            } => {
                w.u16(*mechanism as u16);
                w.u16(u16::from(*exact) | (u16::from(*joined) << 1));
                w.u64(*mm_id);
            }
            Self::Mapped { view } => w.u32(*view),
            Self::Ok => {}
            Self::SyncDone(s) => {
                let n = s.runs.len().min(MAX_REPORTED_RUNS);
                let truncated = s.runs_truncated || n < s.runs.len();
                w.u64(s.pages);
                w.u64(s.bytes);
                w.u32(s.run_count);
                w.u16(s.mechanism);
                w.u16(s.method);
                w.u16(u16::from(truncated));
                w.u64(s.duration_ns);
                w.u32(s.views_scanned);
                w.u16(n as u16);
                for run in &s.runs[..n] {
                    w.u32(run.first_page);
                    w.u32(run.pages);
                }
                ImageDamage::write_optional(&s.damage, &mut w);
            }
            Self::Stats(s) => {
                let d = &s.daemon;
                w.u64(d.uptime_ms);
                w.u32(d.connections);
                w.u32(d.mm_subscriptions);
                w.u32(d.bos);
                w.u32(d.views);
                w.u64(d.syncs);
                w.u64(d.pages_uploaded);
                w.u64(d.bytes_uploaded);
                w.u64(d.upload_failures);
                w.u64(d.errors);
                w.u64(d.method_switches);
                w.u64(d.extra_pages);
                w.u64(d.sync_retries);
                w.u64(d.sync_exclusive);
                w.u64(d.faults);
                let name = truncate_utf8(&d.backend, MAX_NAME);
                w.u8(name.len() as u8);
                w.bytes(name.as_bytes());
                let nc = s.connections.len().min(MAX_STATS_CONNECTIONS);
                let nb = s.bos.len().min(MAX_STATS_BOS);
                let truncated = s.truncated || nc < s.connections.len() || nb < s.bos.len();
                w.u8(u8::from(truncated));
                w.u16(nc as u16);
                for c in &s.connections[..nc] {
                    w.u64(c.id);
                    w.u32(c.pid);
                    w.u32(c.uid);
                    w.u32(c.bos);
                    w.u32(c.views);
                    w.u64(c.requests);
                }
                w.u16(nb as u16);
                for b in &s.bos[..nb] {
                    w.u64(b.id);
                    w.u64(b.size);
                    w.u32(b.views);
                    w.u64(b.dirty_pages);
                    w.u64(b.syncs);
                    w.u64(b.pages_uploaded);
                    w.u64(b.bytes_uploaded);
                    w.u16(b.method);
                    w.u64(b.sync_retries);
                    w.u64(b.sync_exclusive);
                    w.u16(b.policy);
                    w.u16(b.flags);
                }
            }
            Self::Resource {
                size,
                offset,
                pitch,
                image,
            } => {
                w.u64(*size);
                w.u64(*offset);
                w.u32(*pitch);
                ImageInfo::write_optional(image, &mut w);
            }
            Self::ReadbackDone {
                synced_pages,
                bytes,
                duration_ns,
            } => {
                w.u64(*synced_pages);
                w.u64(*bytes);
                w.u64(*duration_ns);
            }
            Self::ResourceAdded { index } => w.u32(*index),
            Self::PolicySet { previous, method } => {
                w.u16(*previous as u16);
                w.u16(*method);
            }
            Self::Metrics { len } => w.u64(*len),
            Self::Shown {
                connector,
                mode_width,
                mode_height,
                damage_path,
            } => {
                w.u32(*mode_width);
                w.u32(*mode_height);
                w.u16(*damage_path);
                let name = truncate_utf8(connector, MAX_NAME);
                w.u8(name.len() as u8);
                w.bytes(name.as_bytes());
            }
            Self::DaemonProcess => {}
            Self::Snapshot(r) => {
                w.u64(r.size);
                w.u8(u8::from(r.exact));
                w.u32(r.attempts);
                w.u32(r.blocked_views);
                w.u32(r.unblocked_views);
                ImageInfo::write_optional(&r.image, &mut w);
            }
            Self::MechanismSet {
                from,
                to,
                exact,
                views,
                extra_pages,
            } => {
                w.u16(*from as u16);
                w.u16(*to as u16);
                w.u8(u8::from(*exact));
                w.u32(*views);
                w.u64(*extra_pages);
            }
            Self::Scanned(s) => {
                w.u16(s.method);
                w.u16(s.switched_to);
                w.u32(s.change_count);
                w.u64(s.num_marked);
            }
            Self::DirtyState(d) => {
                let n = d.runs.len().min(MAX_REPORTED_RUNS);
                let truncated = d.truncated || n < d.runs.len();
                w.u16(d.method);
                w.u32(d.change_count);
                w.u32(d.users);
                w.u64(d.pages);
                w.u64(d.start);
                w.u64(d.end);
                w.u64(d.dirty_pages);
                w.u8(u8::from(truncated));
                w.u16(n as u16);
                for run in &d.runs[..n] {
                    w.u32(run.first_page);
                    w.u32(run.pages);
                }
            }
            Self::Error { code, message } => {
                let m = truncate_utf8(message, MAX_ERROR_MESSAGE);
                w.u16(code.to_wire());
                w.u16(m.len() as u16);
                w.bytes(m.as_bytes());
            }
        }
        buf
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

    /// Decodes one frame into its request id and reply.
    pub fn decode(buf: &[u8]) -> Result<(u32, Reply), DecodeError> {
        let (k, id, mut r) = read_header(buf)?;
        let reply = match k {
            kind::R_HELLO => {
                let version = r.u16("version")?;
                let _reserved = r.u16("reserved")?;
                Self::Hello {
                    version,
                    caps: r.u64("caps")?,
                    max_frame: r.u32("max_frame")?,
                    page_size: r.u32("page_size")?,
                    max_bo_size: r.u64("max_bo_size")?,
                }
            }
            kind::R_BO => Self::Bo {
                bo: r.u32("bo")?,
                size: r.u64("size")?,
                id: r.u64("id")?,
                image: ImageInfo::read_optional(&mut r)?,
            },
            kind::R_MM_ATTACHED => {
                let mechanism = Mechanism::from_wire(r.u16("mechanism")?)?;
                let flags = r.u16("flags")?;
                Self::MmAttached {
                    mechanism,
                    exact: flags & 1 != 0,
                    joined: flags & 2 != 0,
                    mm_id: r.u64("mm_id")?,
                }
            }
            kind::R_MAPPED => Self::Mapped { view: r.u32("view")? },
            kind::R_OK => Self::Ok,
            kind::R_SYNC_DONE => {
                let pages = r.u64("pages")?;
                let bytes = r.u64("bytes")?;
                let run_count = r.u32("run_count")?;
                let mechanism = r.u16("mechanism")?;
                let method = r.u16("method")?;
                let flags = r.u16("flags")?;
                let duration_ns = r.u64("duration_ns")?;
                let views_scanned = r.u32("views_scanned")?;
                let n = r.count_u16("reported runs", MAX_REPORTED_RUNS)?;
                check_limit("reported runs", n * 8, r.remaining())?;
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    runs.push(Run {
                        first_page: r.u32("run.first_page")?,
                        pages: r.u32("run.pages")?,
                    });
                }
                Self::SyncDone(SyncReport {
                    pages,
                    bytes,
                    run_count,
                    mechanism,
                    method,
                    runs_truncated: flags & 1 != 0,
                    duration_ns,
                    views_scanned,
                    runs,
                    damage: ImageDamage::read_optional(&mut r)?,
                })
            }
            kind::R_STATS => {
                let mut d = DaemonStats {
                    uptime_ms: r.u64("uptime_ms")?,
                    connections: r.u32("connections")?,
                    mm_subscriptions: r.u32("mm_subscriptions")?,
                    bos: r.u32("bos")?,
                    views: r.u32("views")?,
                    syncs: r.u64("syncs")?,
                    pages_uploaded: r.u64("pages_uploaded")?,
                    bytes_uploaded: r.u64("bytes_uploaded")?,
                    upload_failures: r.u64("upload_failures")?,
                    errors: r.u64("errors")?,
                    method_switches: r.u64("method_switches")?,
                    extra_pages: r.u64("extra_pages")?,
                    sync_retries: r.u64("sync_retries")?,
                    sync_exclusive: r.u64("sync_exclusive")?,
                    faults: r.u64("faults")?,
                    backend: String::new(),
                };
                let name_len = r.u8("backend length")? as usize;
                check_limit("backend length", name_len, MAX_NAME)?;
                d.backend = r.str(name_len, "backend")?;
                let truncated = r.u8("truncated")? != 0;
                let nc = r.count_u16("connection rows", MAX_STATS_CONNECTIONS)?;
                check_limit("connection rows", nc * 32, r.remaining())?;
                let mut connections = Vec::with_capacity(nc);
                for _ in 0..nc {
                    connections.push(ConnectionRow {
                        id: r.u64("connection.id")?,
                        pid: r.u32("connection.pid")?,
                        uid: r.u32("connection.uid")?,
                        bos: r.u32("connection.bos")?,
                        views: r.u32("connection.views")?,
                        requests: r.u64("connection.requests")?,
                    });
                }
                let nb = r.count_u16("bo rows", MAX_STATS_BOS)?;
                check_limit("bo rows", nb * 74, r.remaining())?;
                let mut bos = Vec::with_capacity(nb);
                for _ in 0..nb {
                    bos.push(BoRow {
                        id: r.u64("bo.id")?,
                        size: r.u64("bo.size")?,
                        views: r.u32("bo.views")?,
                        dirty_pages: r.u64("bo.dirty_pages")?,
                        syncs: r.u64("bo.syncs")?,
                        pages_uploaded: r.u64("bo.pages_uploaded")?,
                        bytes_uploaded: r.u64("bo.bytes_uploaded")?,
                        method: r.u16("bo.method")?,
                        sync_retries: r.u64("bo.sync_retries")?,
                        sync_exclusive: r.u64("bo.sync_exclusive")?,
                        policy: r.u16("bo.policy")?,
                        flags: r.u16("bo.flags")?,
                    });
                }
                Self::Stats(StatsReport {
                    daemon: d,
                    connections,
                    bos,
                    truncated,
                })
            }
            kind::R_RESOURCE => Self::Resource {
                size: r.u64("size")?,
                offset: r.u64("offset")?,
                pitch: r.u32("pitch")?,
                image: ImageInfo::read_optional(&mut r)?,
            },
            kind::R_READBACK_DONE => Self::ReadbackDone {
                synced_pages: r.u64("synced_pages")?,
                bytes: r.u64("bytes")?,
                duration_ns: r.u64("duration_ns")?,
            },
            kind::R_SNAPSHOT => Self::Snapshot(SnapshotReport {
                size: r.u64("size")?,
                exact: r.u8("exact")? != 0,
                attempts: r.u32("attempts")?,
                blocked_views: r.u32("blocked_views")?,
                unblocked_views: r.u32("unblocked_views")?,
                image: ImageInfo::read_optional(&mut r)?,
            }),
            kind::R_MECHANISM_SET => Self::MechanismSet {
                from: Mechanism::from_wire(r.u16("from")?)?,
                to: Mechanism::from_wire(r.u16("to")?)?,
                exact: r.u8("exact")? != 0,
                views: r.u32("views")?,
                extra_pages: r.u64("extra_pages")?,
            },
            kind::R_RESOURCE_ADDED => Self::ResourceAdded { index: r.u32("index")? },
            kind::R_POLICY_SET => Self::PolicySet {
                previous: BoPolicy::from_wire(r.u16("previous")?)?,
                method: r.u16("method")?,
            },
            kind::R_METRICS => Self::Metrics { len: r.u64("len")? },
            kind::R_SHOWN => {
                let mode_width = r.u32("mode_width")?;
                let mode_height = r.u32("mode_height")?;
                let damage_path = r.u16("damage_path")?;
                let len = r.u8("connector length")? as usize;
                check_limit("connector length", len, MAX_NAME)?;
                Self::Shown {
                    connector: r.str(len, "connector")?,
                    mode_width,
                    mode_height,
                    damage_path,
                }
            }
            kind::R_DAEMON_PROCESS => Self::DaemonProcess,
            kind::R_SCANNED => Self::Scanned(ScanReport {
                method: r.u16("method")?,
                switched_to: r.u16("switched_to")?,
                change_count: r.u32("change_count")?,
                num_marked: r.u64("num_marked")?,
            }),
            kind::R_DIRTY_STATE => {
                let mut d = DirtyStateReport {
                    method: r.u16("method")?,
                    change_count: r.u32("change_count")?,
                    users: r.u32("users")?,
                    pages: r.u64("pages")?,
                    start: r.u64("start")?,
                    end: r.u64("end")?,
                    dirty_pages: r.u64("dirty_pages")?,
                    truncated: r.u8("truncated")? != 0,
                    runs: Vec::new(),
                };
                let n = r.count_u16("dirty runs", MAX_REPORTED_RUNS)?;
                check_limit("dirty runs", n * 8, r.remaining())?;
                d.runs.reserve_exact(n);
                for _ in 0..n {
                    d.runs.push(Run {
                        first_page: r.u32("run.first_page")?,
                        pages: r.u32("run.pages")?,
                    });
                }
                Self::DirtyState(d)
            }
            kind::R_ERROR => {
                let code = ErrorCode::from_wire(r.u16("code")?);
                let len = r.u16("message length")? as usize;
                check_limit("message length", len, MAX_ERROR_MESSAGE)?;
                Self::Error {
                    code,
                    message: r.str(len, "message")?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok((id, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_round_trip() {
        for v in 0..40u16 {
            assert_eq!(ErrorCode::from_wire(v).to_wire(), v);
        }
    }

    #[test]
    fn header_flags_rejected() {
        let mut f = Request::Stats { flags: 0 }.encode(7);
        f[2] = 1;
        assert_eq!(Request::decode(&f), Err(DecodeError::BadFlags(1)));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut f = Request::Destroy { bo: 3 }.encode(1);
        f.push(0);
        assert_eq!(Request::decode(&f), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn oversized_run_count_rejected_before_allocation() {
        let mut f = Reply::SyncDone(SyncReport::default()).encode(1);
        let n = f.len();
        f[n - 2..].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            Reply::decode(&f),
            Err(DecodeError::OverLimit {
                field: "reported runs",
                ..
            })
        ));
    }

    #[test]
    fn long_error_message_is_cut_on_a_char_boundary() {
        let msg = "é".repeat(MAX_ERROR_MESSAGE);
        let f = Reply::error(ErrorCode::Internal, msg).encode(9);
        let (id, r) = Reply::decode(&f).unwrap();
        assert_eq!(id, 9);
        match r {
            Reply::Error { message, .. } => {
                assert!(message.len() <= MAX_ERROR_MESSAGE);
                assert!(message.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
