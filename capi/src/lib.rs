//! libcohmem: the C API of the cohmem client library (issue 7).
//!
//! Thin `extern "C"` wrappers around [`cohmem_client`]: opaque handles
//! (`cohmem_connection`, `cohmem_bo`, `cohmem_mapping`) that C owns and frees
//! with their `*_free`/`cohmem_unmap` function, plain structs for results,
//! and errors as negative `COHMEM_E_*` codes with the message kept per
//! thread (`cohmem_last_error`). `cohmem.h` is generated from this crate
//! (this file and its modules, in the order declared below) by cbindgen
//! (`capi/tests/header.rs` checks that the committed header is current).
//! Mapped memory is handed to C as a raw pointer: it is shared with the
//! daemon, so it is never a Rust slice here.
//!
//! Threads: `cohmem.h` promises that connections, BOs and mappings may be
//! used from several threads (the Rust objects are `Send + Sync`, checked
//! below; requests on one connection take turns on its socket lock).

#![allow(non_camel_case_types)]

// cbindgen writes the declarations of cohmem.h in the order of these modules
// (each `mod` stands alone so that rustfmt keeps the order).
mod error;

mod connection;

mod bo;

mod image;

mod mapping;

mod sync;

mod damage;

mod export;

pub use bo::{cohmem_bo, cohmem_bo_create, cohmem_bo_free, cohmem_bo_id, cohmem_bo_size};
pub use connection::{cohmem_connect, cohmem_connection, cohmem_disconnect, cohmem_stats, cohmem_stats_get};
pub use damage::{
    cohmem_bo_damage_ranges, cohmem_bo_sync_damaged, cohmem_bo_sync_damaged_rects, cohmem_range, cohmem_sync_many,
};
pub use error::{
    cohmem_last_daemon_code, cohmem_last_error, cohmem_strerror, COHMEM_E_CONNECT, COHMEM_E_DAEMON,
    COHMEM_E_DISCONNECTED, COHMEM_E_FORKED, COHMEM_E_INVALID, COHMEM_E_PROTOCOL, COHMEM_E_SYSTEM, COHMEM_OK,
};
pub use export::{cohmem_bo_export_dmabuf, cohmem_dmabuf};
pub use image::{
    cohmem_bo_image_info, cohmem_format_bytes_per_pixel, cohmem_image_create, cohmem_image_info,
    COHMEM_FORMAT_ARGB8888, COHMEM_FORMAT_RGB565, COHMEM_FORMAT_XRGB8888, COHMEM_MODIFIER_LINEAR,
};
pub use mapping::{cohmem_bo_map, cohmem_mapping, cohmem_mapping_len, cohmem_mapping_ptr, cohmem_unmap};
pub use sync::{
    cohmem_bo_damage, cohmem_bo_readback, cohmem_bo_sync, cohmem_bo_sync_rects, cohmem_rect, cohmem_sync_result,
    COHMEM_MAX_DAMAGE_RECTS,
};

// The thread-safety `cohmem.h` documents.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<cohmem_client::Connection>();
    shareable::<cohmem_client::Bo>();
    shareable::<cohmem_client::Mapping>();
};
