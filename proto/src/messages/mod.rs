//! Requests, replies and their byte layout (`proto/README.md` §2–§5).
//!
//! Each file holds one part of the protocol; this module only re-exports
//! them, so every item is reachable as `cohmem_proto::X`:
//!
//! - `types`: the enums carried in fields (mechanism, vmwgfx method, BO
//!   policy, error code; README §5.3–§5.6);
//! - `flags`: flag bits of request bodies and reply field constants (§5.1);
//! - `kind`: the message kind numbers (§4.1, §4.2);
//! - `frame`: the 8-byte frame header (§2);
//! - `reports`, `stats`: the report bodies of SYNC_DONE, SCANNED,
//!   DIRTY_STATE, SNAPSHOT and STATS replies, with their byte layout (§4.2);
//! - `request`, `request_wire`: the requests and their byte layout (§4.1);
//! - `reply`, `reply_wire`: the replies and their byte layout (§4.2).

mod flags;
mod frame;
pub mod kind;
mod reply;
mod reply_wire;
mod reports;
mod request;
mod request_wire;
mod stats;
mod sync_many;
mod types;

pub use flags::*;
pub use frame::peek_request_id;
pub use reply::Reply;
pub use reports::{DirtyStateReport, Run, ScanReport, SnapshotReport, SyncReport};
pub use request::{ByteRange, Request};
pub use stats::{BoRow, ConnectionRow, DaemonStats, StatsReport, BO_ROW_PAUSED};
pub use sync_many::BoSyncOutcome;
pub use types::{BoPolicy, ErrorCode, Mechanism, Method};
