//! cohmem wire format.
//!
//! One message is one `SOCK_SEQPACKET` datagram: an 8-byte header (kind, flags,
//! request id) followed by a kind-specific little-endian body. File descriptors
//! ride in the same datagram as `SCM_RIGHTS`. `proto/README.md` documents every
//! message byte by byte; this crate is the reference encoder/decoder.
//!
//! Decoding never panics, never reads past the frame, and allocates at most
//! what the hard limits in [`limits`] allow (bounded strings and run lists).
//! The crate does no I/O: sockets and fds are the caller's business; only the
//! number of fds each message carries is specified here ([`Request::fd_count`],
//! [`Reply::fd_count`]).

mod codec;
mod image;
mod messages;

pub use codec::{DecodeError, Reader, Writer};
pub use image::*;
pub use messages::*;

/// Protocol version spoken by this crate. HELLO negotiates the highest version
/// both sides support; version 1 is the only one so far.
pub const PROTOCOL_VERSION: u16 = 1;

/// Size of the frame header: `u16 kind, u16 flags, u32 request_id`.
pub const HEADER_LEN: usize = 8;

/// Hard limits of the wire format. Every length and count on the wire is
/// bounded by one of these; a decoder rejects anything larger.
pub mod limits {
    /// Largest datagram either side may send, header included.
    pub const MAX_FRAME: usize = 64 * 1024;
    /// Largest error message, in bytes of UTF-8.
    pub const MAX_ERROR_MESSAGE: usize = 1024;
    /// Largest backend description in STATS (name and why it was chosen),
    /// in bytes of UTF-8.
    pub const MAX_NAME: usize = 255;
    /// Most dirty runs a SYNC_DONE or DIRTY_STATE reply lists (the rest is
    /// only counted or flagged).
    pub const MAX_REPORTED_RUNS: usize = 4096;
    /// Most connection rows in a STATS reply.
    pub const MAX_STATS_CONNECTIONS: usize = 256;
    /// Most BO rows in a STATS reply.
    pub const MAX_STATS_BOS: usize = 256;
    /// Largest BO the protocol can describe (a daemon may configure less).
    pub const MAX_BO_SIZE: u64 = 64 << 30;
    /// Most byte ranges one DAMAGE_RANGES request carries (16 bytes each:
    /// 4000 fill a frame). A client with more sends several requests.
    pub const MAX_DAMAGE_RANGES: usize = 4000;
    /// Most BOs one SYNC_MANY syncs (a frame's submission).
    pub const MAX_SYNC_BOS: usize = 256;
    /// Most file descriptors in one message.
    pub const MAX_FDS: usize = 6;
}

/// Capability bits exchanged in HELLO. The reply carries the intersection of
/// what the client asked for and what the daemon offers.
pub mod caps {
    /// Write tracking with userfaultfd WP_ASYNC + PAGEMAP_SCAN.
    pub const UFFD_ASYNC: u64 = 1 << 0;
    /// Write tracking with synchronous userfaultfd write-protect faults.
    pub const UFFD_SYNC: u64 = 1 << 1;
    /// Write tracking with soft-dirty bits.
    pub const SOFT_DIRTY: u64 = 1 << 2;
    /// EXPORT_RESOURCE: the GPU resource of a BO can be exported as an fd.
    pub const EXPORT_RESOURCE: u64 = 1 << 3;
    /// SYNC_DONE may list the dirty runs it uploaded.
    pub const SYNC_RUNS: u64 = 1 << 4;
    /// CREATE_IMAGE: BOs laid out as the GPU backend's image, with damage
    /// rectangles in every SYNC reply.
    pub const IMAGES: u64 = 1 << 5;
    /// The daemon reads the mapping-change messages (munmap, mremap,
    /// madvise) of a uffd-async client's userfaultfd and proves its views
    /// with them. A change of a registered range waits until its message is
    /// read, so a client asks its kernel for them only from a daemon that
    /// offers this.
    pub const MAP_EVENTS: u64 = 1 << 6;
    /// Every capability this version of the crate knows.
    pub const ALL: u64 = UFFD_ASYNC | UFFD_SYNC | SOFT_DIRTY | EXPORT_RESOURCE | SYNC_RUNS | IMAGES | MAP_EVENTS;
}
