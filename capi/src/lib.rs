//! libcohmem: the C API of the cohmem client library (issues 7 and 20).
//!
//! Thin `extern "C"` wrappers around [`cohmem_client`]: opaque handles
//! (`cohmem_connection`, `cohmem_bo`, `cohmem_mapping`) that C owns and frees
//! with their `*_free`/`cohmem_unmap` function, plain structs for results,
//! C enums with names for every code (`cohmem_status`,
//! `cohmem_daemon_error`, `cohmem_mechanism`, `cohmem_method`,
//! `cohmem_policy`, `cohmem_damage_path`), and errors as negative
//! `COHMEM_E_*` codes with the message kept per thread
//! (`cohmem_last_error`). Every operation of the Rust client has its C call
//! (`capi/tests/parity.rs` lists them). `cohmem.h` is generated from this
//! crate (this file and its modules, in the order declared below) by
//! cbindgen (`capi/tests/header.rs` checks that the committed header is
//! current). Mapped memory is handed to C as a raw pointer: it is shared
//! with the daemon, so it is never a Rust slice here.
//!
//! Threads: `cohmem.h` promises that connections, BOs and mappings may be
//! used from several threads (the Rust objects are `Send + Sync`, checked
//! below; requests on one connection take turns on its socket lock).

#![allow(non_camel_case_types)]

// cbindgen writes the declarations of cohmem.h in the order of these modules
// (each `mod` stands alone so that rustfmt keeps the order).
mod error;

mod tracking;

mod connection;

mod bo;

mod tracker_state;

mod image;

mod mapping;

mod sync;

mod damage;

mod pending;

mod resource;

mod display;

mod export;

pub use bo::{
    cohmem_bo, cohmem_bo_create, cohmem_bo_create_without_resource, cohmem_bo_free, cohmem_bo_handle, cohmem_bo_id,
    cohmem_bo_import, cohmem_bo_memfd, cohmem_bo_read, cohmem_bo_size,
};
pub use connection::{
    cohmem_connect, cohmem_connection, cohmem_connection_caps, cohmem_connection_max_bo_size,
    cohmem_connection_page_size, cohmem_connection_reconnects, cohmem_disconnect, cohmem_metrics, cohmem_stats,
    cohmem_stats_get,
};
pub use damage::{
    cohmem_bo_damage_ranges, cohmem_bo_damage_rects, cohmem_bo_sync_damaged, cohmem_bo_sync_damaged_rects,
    cohmem_range, cohmem_sync_many,
};
pub use display::{cohmem_bo_hide, cohmem_bo_show, cohmem_damage_path, cohmem_shown};
pub use error::{
    cohmem_daemon_error, cohmem_daemon_error_name, cohmem_last_daemon_code, cohmem_last_error, cohmem_status,
    cohmem_strerror, COHMEM_E_CONNECT, COHMEM_E_DAEMON, COHMEM_E_DISCONNECTED, COHMEM_E_FORKED, COHMEM_E_INVALID,
    COHMEM_E_OTHER, COHMEM_E_PROTOCOL, COHMEM_E_SYSTEM, COHMEM_OK,
};
pub use export::{
    cohmem_bo_export_dmabuf, cohmem_bo_export_resource, cohmem_bo_snapshot, cohmem_dmabuf, cohmem_snapshot,
};
pub use image::{
    cohmem_bo_image_info, cohmem_format_bytes_per_pixel, cohmem_image_create, cohmem_image_info,
    COHMEM_FORMAT_ARGB8888, COHMEM_FORMAT_RGB565, COHMEM_FORMAT_XRGB8888, COHMEM_MODIFIER_LINEAR,
};
pub use mapping::{
    cohmem_bo_map, cohmem_bo_map_range, cohmem_mapping, cohmem_mapping_bo_offset, cohmem_mapping_damage,
    cohmem_mapping_len, cohmem_mapping_ptr, cohmem_unmap,
};
pub use pending::{
    cohmem_bo_sync_start, cohmem_pending_sync, cohmem_pending_sync_done, cohmem_pending_sync_fd,
    cohmem_pending_sync_free, cohmem_pending_sync_wait,
};
pub use resource::{
    cohmem_bo_add_resource, cohmem_bo_clear_all, cohmem_bo_clear_resource, cohmem_bo_release_resource,
    cohmem_bo_transfer,
};
pub use sync::{
    cohmem_bo_damage, cohmem_bo_readback, cohmem_bo_sync, cohmem_bo_sync_rects, cohmem_bo_sync_runs, cohmem_readback,
    cohmem_rect, cohmem_sync_result, COHMEM_MAX_DAMAGE_RECTS,
};
pub use tracker_state::{
    cohmem_bo_dirty_state, cohmem_bo_scan, cohmem_bo_stats, cohmem_bo_stats_get, cohmem_dirty_state, cohmem_run,
    cohmem_scan_report,
};
pub use tracking::{
    cohmem_bo_set_policy, cohmem_get_mechanism, cohmem_mechanism, cohmem_mechanism_int, cohmem_mechanism_name,
    cohmem_mechanism_switch, cohmem_method, cohmem_method_int, cohmem_method_name, cohmem_policy, cohmem_policy_int,
    cohmem_policy_name, cohmem_set_mechanism,
};

// The thread-safety `cohmem.h` documents.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<cohmem_client::Connection>();
    shareable::<cohmem_client::Bo>();
    shareable::<cohmem_client::Mapping>();
    shareable::<cohmem_client::PendingSync>();
};
