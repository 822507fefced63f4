//! A buffer object handle (`cohmem_bo`): creating a byte BO, freeing it,
//! its size and id. Image BOs are in `image.rs`, mapping in `mapping.rs`,
//! syncing in `sync.rs`.

use std::ffi::c_int;

use cohmem_client::Bo;

use crate::connection::cohmem_connection;
use crate::error::{fail, invalid, COHMEM_OK};

/// A buffer object: a sealed memfd tracked by cohmemd, with a GPU resource.
pub struct cohmem_bo(pub(crate) Bo);

/// Creates a BO of `size` bytes (rounded up to whole pages) with a GPU
/// resource; `*out` is freed with `cohmem_bo_free`.
///
/// # Safety
/// `conn` came from `cohmem_connect`; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_create(
    conn: *const cohmem_connection,
    size: u64,
    out: *mut *mut cohmem_bo,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_bo_create: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_create: out is NULL");
    }
    match conn.0.create_bo(size) {
        Ok(bo) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_bo(bo))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Frees a BO handle (the daemon frees the BO when no handle and no mapping
/// is left).
///
/// # Safety
/// `bo` is NULL or came from `cohmem_bo_create` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_free(bo: *mut cohmem_bo) {
    if !bo.is_null() {
        // SAFETY: `bo` came from Box::into_raw and is freed once (documented).
        drop(unsafe { Box::from_raw(bo) });
    }
}

/// The BO's size in bytes (0 for NULL).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_size(bo: *const cohmem_bo) -> u64 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.size())
}

/// The BO's daemon-wide id (0 for NULL).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_id(bo: *const cohmem_bo) -> u64 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.id())
}
