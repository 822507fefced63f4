//! Syncing without blocking the calling thread: `cohmem_bo_sync_start`
//! runs a BO's sync on a helper thread and returns a `cohmem_pending_sync`
//! whose file descriptor (`cohmem_pending_sync_fd`) becomes readable when
//! the sync is done, for a compositor's or a game's event loop (epoll,
//! poll, glib); `cohmem_pending_sync_wait` then takes the result.

use std::ffi::c_int;
use std::os::fd::AsRawFd;

use cohmem_client::PendingSync;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::sync::{cohmem_sync_result, sync_result};

/// A sync running on a helper thread (`cohmem_bo_sync_start`).
pub struct cohmem_pending_sync(PendingSync);

/// Starts `cohmem_bo_sync(bo)` on a helper thread and returns at once: the
/// calling thread goes on (drawing the next frame, serving its event loop)
/// while the daemon uploads. Stores made after this call reach this sync or
/// the next one. `*out` is finished with `cohmem_pending_sync_wait` (or
/// dropped with `cohmem_pending_sync_free`). The BO may be freed before:
/// the sync keeps what it needs.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_start(bo: *const cohmem_bo, out: *mut *mut cohmem_pending_sync) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_start: bo is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_sync_start: out is NULL");
    }
    match bo.0.sync_in_background() {
        Ok(p) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_pending_sync(p))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// A file descriptor that becomes readable (`POLLIN`) when the sync is
/// done, and stays readable; owned by `pending` (do not close or read it).
/// -1 for NULL.
///
/// # Safety
/// `pending` is NULL or a live pending sync.
#[no_mangle]
pub unsafe extern "C" fn cohmem_pending_sync_fd(pending: *const cohmem_pending_sync) -> c_int {
    // SAFETY: `pending` is NULL or a live pending sync (documented).
    unsafe { pending.as_ref() }.map_or(-1, |p| p.0.as_fd().as_raw_fd())
}

/// 1 once the sync is done (`cohmem_pending_sync_wait` then returns at
/// once), else 0 (also for NULL).
///
/// # Safety
/// `pending` is NULL or a live pending sync.
#[no_mangle]
pub unsafe extern "C" fn cohmem_pending_sync_done(pending: *const cohmem_pending_sync) -> c_int {
    // SAFETY: `pending` is NULL or a live pending sync (documented).
    unsafe { pending.as_ref() }.map_or(0, |p| c_int::from(p.0.is_done()))
}

/// Waits until the sync is done (at once when `cohmem_pending_sync_done`
/// says so), writes what it uploaded to `result` (NULL or valid for
/// writes), frees `pending` and returns the sync's status, as
/// `cohmem_bo_sync` would have.
///
/// # Safety
/// `pending` is NULL or came from `cohmem_bo_sync_start` and is not used
/// again; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_pending_sync_wait(
    pending: *mut cohmem_pending_sync,
    result: *mut cohmem_sync_result,
) -> c_int {
    if pending.is_null() {
        return invalid("cohmem_pending_sync_wait: pending is NULL");
    }
    // SAFETY: `pending` came from Box::into_raw and is freed once
    // (documented).
    let pending = unsafe { Box::from_raw(pending) };
    match pending.0.wait() {
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

/// Frees a pending sync without waiting: the sync still completes on its
/// thread, and its result is dropped.
///
/// # Safety
/// `pending` is NULL or came from `cohmem_bo_sync_start` and is not used
/// again.
#[no_mangle]
pub unsafe extern "C" fn cohmem_pending_sync_free(pending: *mut cohmem_pending_sync) {
    if !pending.is_null() {
        // SAFETY: `pending` came from Box::into_raw and is freed once
        // (documented).
        drop(unsafe { Box::from_raw(pending) });
    }
}
