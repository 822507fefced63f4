//! A BO's GPU resources one by one, as vmwgfx's driver calls its tracker:
//! binding a window of the BO to a new resource
//! (`cohmem_bo_add_resource`), releasing one, transferring one's dirty
//! pages without a scan (`cohmem_bo_transfer`), and dropping dirty pages
//! unreported (`cohmem_bo_clear_resource`, `cohmem_bo_clear_all`). An
//! application that syncs whole BOs needs none of these.

use std::ffi::c_int;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::sync::{cohmem_sync_result, sync_result};

/// The BO of a C call as a reference, or the error for NULL.
///
/// # Safety
/// `bo` is NULL or a live BO.
unsafe fn live<'a>(bo: *const cohmem_bo, call: &str) -> Result<&'a cohmem_bo, c_int> {
    // SAFETY: `bo` is NULL or a live BO (the caller's contract).
    unsafe { bo.as_ref() }.ok_or_else(|| invalid(&format!("{call}: bo is NULL")))
}

/// Binds a new GPU resource to the page-aligned window `[offset, offset +
/// len)` of the BO (vmwgfx's `dirty_add`); `*index` (NULL or valid for
/// writes) receives its index for `cohmem_bo_transfer`,
/// `cohmem_bo_clear_resource`, `cohmem_bo_release_resource` and
/// `cohmem_bo_export_resource`. A BO from `cohmem_bo_create` has resource 0
/// over all of it.
///
/// Errors: `COHMEM_E_DAEMON` with `COHMEM_DAEMON_E_INVALID_ARGUMENT` for a
/// window not page-aligned or past the BO's end.
///
/// # Safety
/// `bo` is NULL or a live BO; `index` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_add_resource(bo: *const cohmem_bo, offset: u64, len: u64, index: *mut u32) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let bo = match unsafe { live(bo, "cohmem_bo_add_resource") } {
        Ok(bo) => bo,
        Err(code) => return code,
    };
    match bo.0.add_resource(offset, len) {
        Ok(i) => {
            // SAFETY: `index` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { index.as_mut() } {
                *slot = i;
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Destroys resource `index` of the BO (vmwgfx's `dirty_release`).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_release_resource(bo: *const cohmem_bo, index: u32) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let bo = match unsafe { live(bo, "cohmem_bo_release_resource") } {
        Ok(bo) => bo,
        Err(code) => return code,
    };
    match bo.0.release_resource(index) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Uploads the pages of resource `index` already dirty (vmwgfx's
/// `transfer_to_res`) without harvesting new writes first: a store since
/// the last sync or `cohmem_bo_scan` may be missing. `cohmem_bo_sync`
/// scans first and is what an application wants. `result` is NULL or
/// receives what was uploaded.
///
/// # Safety
/// `bo` is NULL or a live BO; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_transfer(
    bo: *const cohmem_bo,
    index: u32,
    result: *mut cohmem_sync_result,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let bo = match unsafe { live(bo, "cohmem_bo_transfer") } {
        Ok(bo) => bo,
        Err(code) => return code,
    };
    match bo.0.transfer(index) {
        Ok(r) => {
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Drops the dirty pages of resource `index` without uploading them
/// (vmwgfx's `clear_res`: the GPU's copy is to be kept as it is).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_clear_resource(bo: *const cohmem_bo, index: u32) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let bo = match unsafe { live(bo, "cohmem_bo_clear_resource") } {
        Ok(bo) => bo,
        Err(code) => return code,
    };
    match bo.0.clear_resource(index) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Drops every dirty page of the BO without uploading it (vmwgfx's
/// `dirty_clear`).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_clear_all(bo: *const cohmem_bo) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let bo = match unsafe { live(bo, "cohmem_bo_clear_all") } {
        Ok(bo) => bo,
        Err(code) => return code,
    };
    match bo.0.clear_all() {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}
