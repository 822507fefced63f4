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

mod connection;
mod error;
mod mapping;
mod tracking;

pub use cohmem_proto::{
    fourcc, BoPolicy, DirtyStateReport, ErrorCode, ImageInfo, Mechanism, Method, Rect, Run, ScanReport, SnapshotReport,
    DAMAGE_PATH_ATOMIC, DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE, MAX_DAMAGE_RECTS, MODIFIER_LINEAR,
};
pub use connection::{Bo, Connection, ExportedResource, MechanismSwitch, Readback, Shown, SyncResult};
pub use error::ClientError;
pub use mapping::Mapping;

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
