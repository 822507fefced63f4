//! Client library for cohmemd: coherent GPU buffers backed by tracked
//! memfds.
//!
//! A buffer object ([`Bo`]) is shared memory with a GPU copy. The app maps
//! it and writes it like ordinary memory; at every [`Bo::sync`] the daemon
//! finds out which pages were written since the last one and copies only
//! those to the GPU. No driver support and no damage bookkeeping in the
//! app are needed.
//!
//! # A first program
//!
//! ```no_run
//! use cohmem_client::Connection;
//! let conn = Connection::connect_default()?; // $COHMEM_SOCKET, else the default path
//! let bo = conn.create_bo(1 << 20)?;          // 1 MiB, zeroed, with a GPU copy
//! let map = bo.map()?;                        // tracked MAP_SHARED mapping
//! map.write(4096 * 3, b"hello")?;             // an ordinary write, seen by the kernel
//! let done = bo.sync()?;                      // uploads page 3, and only it
//! assert_eq!(done.pages, 1);
//! # Ok::<(), cohmem_client::ClientError>(())
//! ```
//!
//! # Writing pixels safely and fast
//!
//! Mapped memory is shared with the daemon (and other processes that
//! import the BO), so the library never hands it out as `&mut [u8]`: the
//! compiler would assume nobody else changes it. [`Mapping`] offers
//! bounds-checked copies instead, built on vm-memory's [`VolatileSlice`]
//! (the type crosvm and Firecracker use for guest memory). Bulk copies are
//! `memcpy`, as fast as raw stores, so draw a span of pixels at a time:
//!
//! ```no_run
//! use cohmem_client::{fourcc, Connection};
//! let conn = Connection::connect_default()?;
//! let bo = conn.create_image(1920, 1080, fourcc::XRGB8888)?;
//! let map = bo.map()?;
//! let sprite = vec![0x00ff_4000u32; 64 * 64];
//! for (dy, line) in sprite.chunks(64).enumerate() {
//!     map.row(500 + dy as u32)?.write_pixels(900, line)?; // one memcpy per row
//! }
//! let done = bo.sync()?;
//! println!("{} pages, changed rectangles {:?}", done.pages, done.rects);
//! # Ok::<(), cohmem_client::ClientError>(())
//! ```
//!
//! - bytes: [`Mapping::write`], [`Mapping::read`], [`Mapping::fill`];
//! - typed values: [`Mapping::write_slice`] (a `&[u32]` in one copy),
//!   [`Mapping::write_obj`]/[`Mapping::read_obj`] (one value),
//!   [`Mapping::write_u64`] (an atomic word);
//! - image rows: [`Mapping::row`], [`Mapping::rows`], [`Row::write_pixels`],
//!   [`Row::fill_pixels`];
//! - anything else: [`Mapping::as_volatile_slice`] and vm-memory's
//!   [`Bytes`] trait (re-exported, with the crate as [`vm_memory`]);
//! - raw pointers: [`Mapping::as_ptr`], for code that wants `unsafe`.
//!
//! `client/examples/animation.rs` animates a 1920x1080 image this way,
//! without `unsafe` (`cargo run -p cohmem-client --example animation`).
//!
//! # Images
//!
//! [`Connection::create_image`] makes a BO laid out as a linear image in
//! the GPU's own pitch ([`Bo::image`] gives [`ImageInfo`]). Each sync of an
//! image BO reports the rectangles of pixels that changed
//! ([`SyncResult::rects`]), ready to pass on as damage (Wayland, KMS
//! FB_DAMAGE_CLIPS); [`Bo::show`] puts it on the daemon's display output.
//!
//! # Syncing and damage
//!
//! [`Bo::sync`] (or [`Mapping::sync`]) is the only call a frame needs:
//! every write made before it returns reaches the GPU copy. How the daemon
//! finds the writes is its *mechanism*, chosen per process
//! ([`Connection::mechanism`], `COHMEM_MECHANISM`, [`Connection::set_mechanism`]):
//!
//! - `uffd-async` (Linux 6.7+): the kernel marks written pages itself
//!   (userfaultfd write-protection, read back with `PAGEMAP_SCAN`); no
//!   fault reaches the daemon;
//! - `uffd-sync`: each first write to a page since the last sync stops
//!   the writing thread briefly while the daemon records it;
//! - `soft-dirty`: the kernel's soft-dirty bits;
//! - `full`: every sync uploads the whole BO;
//! - `explicit`: nothing is tracked; the app reports what it wrote with
//!   [`Bo::damage`], [`Bo::damage_rects`] or [`Bo::sync_damaged_rects`].
//!
//! Per BO, the daemon tracks in one of two ways, as the vmwgfx driver's
//! emulated coherent memory does, and switches between them by itself:
//! MKWRITE (protect every page, record faults) or PAGETABLE (scan the page
//! tables); [`Bo::set_policy`] pins one. Even under the tracking
//! mechanisms, writes no fault reports (`O_DIRECT` reads into a mapping,
//! io_uring, devices) must be reported with [`Bo::damage`] or
//! [`Mapping::damage`].
//!
//! # Without blocking
//!
//! Every call is one blocking round trip to the daemon. A compositor or a
//! game loop that must not stall starts a frame's sync with
//! [`Bo::sync_in_background`]: it runs on a helper thread, and the
//! [`PendingSync`] it returns is a [`Future`](std::future::Future) (await
//! it in any runtime) and a file descriptor that becomes readable when the
//! sync is done (for epoll-style event loops).
//!
//! # Lifetimes and threads
//!
//! A [`Mapping`] borrows its [`Bo`] ([`Bo::map`]) so it cannot outlive it;
//! [`Bo::map_detached`] gives a `Mapping<'static>` to store next to its BO
//! or send to another thread. Either can sync ([`Mapping::sync`],
//! [`Mapping::bo`]). A [`Bo`] keeps its [`Connection`] alive, so a BO can
//! always sync. All three types are `Send` and `Sync`; calls on one
//! connection are serialised (see [`Connection`]). The daemon restarting
//! is handled by the library: the next call reconnects and re-imports the
//! BOs.
//!
//! A forked child inherits none of this: it must connect again (its calls
//! fail with [`ClientError::ForkedChild`]).
//!
//! # Errors
//!
//! Every fallible call returns [`ClientError`]: the daemon's typed
//! refusals ([`ClientError::Daemon`], with an [`ErrorCode`] and a message),
//! the library's own checks ([`ClientError::InvalidArgument`],
//! [`ClientError::OutOfBounds`]), a daemon that is gone
//! ([`ClientError::Connect`], [`ClientError::Disconnected`]) and failed
//! kernel calls ([`ClientError::Sys`]). It converts into
//! [`std::io::Error`].
//!
//! # How the tracking is set up
//!
//! The first mapping in a process creates the process's write tracking (a
//! userfaultfd and a `/proc/self/pagemap` fd) and hands it to the daemon
//! once; every connection of the process to that daemon shares it (one
//! subscription per client process).

// Every fallible public call says how it fails (issue 20); CI's clippy
// runs with -D warnings, so this holds.
#![warn(clippy::missing_errors_doc)]

// The modules, each using only those listed before it (bottom first):
// error; sync_guard (unprotecting the mappings when a uffd-sync daemon
// dies); tracking (the process's write tracking); link (one session's
// socket); attach (handing the tracking to a session); session (the
// connection state, its calls and reconnect); handle (a BO's shared state,
// reopened by a reconnect); mapping (and its accessors); rows (image rows
// of a mapping); results; bo; resources (vmwgfx's per-resource operations
// on `Bo`); damage (batched damage on `Bo`); connection; sync_many (many
// BOs in one request); display and mechanism (the display output and
// mechanism switching, on `Bo` and `Connection`); pending (syncing on a
// helper thread, as a future and a pollable fd).
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
mod pending;
mod resources;
mod results;
mod rows;
mod session;
mod sync_guard;
mod sync_many;
mod tracking;

pub use bo::Bo;
pub use cohmem_proto::{
    fourcc, BoPolicy, BoRow, ByteRange, ConnectionRow, DaemonStats, DecodeError, DirtyStateReport, ErrorCode,
    ImageInfo, Mechanism, Method, Rect, Run, ScanReport, SnapshotReport, StatsReport, DAMAGE_PATH_ATOMIC,
    DAMAGE_PATH_DIRTYFB, DAMAGE_PATH_NONE, MAX_DAMAGE_RECTS, MODIFIER_LINEAR, STATS_BOS, STATS_CONNECTIONS,
};
pub use cohmem_sys::SysError;
pub use connection::{default_socket_path, Connection};
pub use display::Shown;
pub use error::ClientError;
pub use mapping::Mapping;
pub use mechanism::MechanismSwitch;
pub use pending::PendingSync;
pub use results::{ExportedResource, Readback, SyncResult};
pub use rows::{Row, Rows};
pub use sync_many::BoSynced;
/// vm-memory, whose [`VolatileSlice`] and [`Bytes`] the mapping accessors
/// use (the same version, so its traits apply to what they return).
pub use vm_memory;
pub use vm_memory::{ByteValued, Bytes, VolatileSlice};
