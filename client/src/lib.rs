//! Client library for cohmemd.
//!
//! ```no_run
//! use cohmem_client::Connection;
//! let conn = Connection::connect_default()?;
//! let bo = conn.create_bo(1 << 20)?;
//! let map = bo.map()?;              // mmap + UFFDIO_REGISTER(WP) + MAP
//! map.write(4096 * 3, b"hello")?;   // ordinary writes, tracked by the kernel
//! let done = bo.sync()?;            // only page 3 is uploaded
//! assert_eq!(done.pages, 1);
//! # Ok::<(), cohmem_client::ClientError>(())
//! ```
//!
//! The first mapping in a process creates the process's write tracking (a
//! WP_ASYNC userfaultfd and a `/proc/self/pagemap` fd) and hands it to the
//! daemon once; every connection of the process shares it (seed 003).
//! Mapped memory is shared with the daemon and possibly other processes, so
//! [`Mapping`] never exposes it as a Rust slice: access is by copy
//! ([`Mapping::write`], [`Mapping::read`]) or through the raw pointer.

// The modules, each using only those listed before it (bottom first):
// error; sync_guard (unprotecting the mappings when a uffd-sync daemon
// dies); tracking (the process's write tracking); link (one session's
// socket); attach (handing the tracking to a session); session (the
// connection state, its calls and reconnect); handle (a BO's shared state,
// reopened by a reconnect); mapping; results; bo; damage (batched damage
// on `Bo`); connection; sync_many (many BOs in one request); display and
// mechanism (the display output and mechanism switching, on `Bo` and
// `Connection`).
mod attach;
mod bo;
mod connection;
mod damage;
mod display;
mod error;
mod handle;
mod link;
mod mapping;
mod mechanism;
mod results;
mod session;
mod sync_guard;
mod sync_many;
mod tracking;

pub use bo::Bo;
pub use cohmem_proto::{
    fourcc, BoPolicy, ByteRange, DirtyStateReport, ErrorCode, ImageInfo, Mechanism, Method, Rect, Run, ScanReport,
    SnapshotReport, DAMAGE_PATH_ATOMIC, DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE, MAX_DAMAGE_RECTS, MODIFIER_LINEAR,
};
pub use connection::{default_socket_path, Connection};
pub use display::Shown;
pub use error::ClientError;
pub use mapping::Mapping;
pub use mechanism::MechanismSwitch;
pub use results::{ExportedResource, Readback, SyncResult};
pub use sync_many::BoSynced;
