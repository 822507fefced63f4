//! Syncing a BO (`cohmem_bo_sync`, and `cohmem_bo_sync_rects` with the
//! rectangles an image BO's sync changed), reading the GPU copy back
//! (`cohmem_bo_readback`) and reporting writes no fault sees
//! (`cohmem_bo_damage`).

use std::ffi::c_int;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};

/// Most rectangles one sync of an image BO reports (DIRTYFB takes at most
/// 256 clips); an array of this many always receives them all.
pub const COHMEM_MAX_DAMAGE_RECTS: usize = 256;

const _: () = assert!(COHMEM_MAX_DAMAGE_RECTS == cohmem_client::MAX_DAMAGE_RECTS);

/// What one sync uploaded.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct cohmem_sync_result {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
    /// Runs of consecutive pages uploaded.
    pub run_count: u32,
    /// Write-tracking mechanism (wire value: 1 uffd-async, 2 uffd-sync,
    /// 3 soft-dirty, 4 full, 5 explicit).
    pub mechanism: u32,
}

/// A rectangle of pixels: columns `x` to `x + w - 1`, rows `y` to
/// `y + h - 1`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_rect {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Width in pixels (at least 1).
    pub w: u32,
    /// Height in rows (at least 1).
    pub h: u32,
}

/// Uploads every page written since the last sync to the BO's GPU
/// resource; returns when they are there. `result` may be NULL.
///
/// # Safety
/// `bo` is a live BO; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync(bo: *const cohmem_bo, result: *mut cohmem_sync_result) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync: bo is NULL");
    };
    match bo.0.sync() {
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

pub(crate) fn sync_result(r: &cohmem_client::SyncResult) -> cohmem_sync_result {
    cohmem_sync_result {
        pages: r.pages,
        bytes: r.bytes,
        duration_ns: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
        run_count: r.run_count,
        mechanism: u32::from(r.mechanism as u16),
    }
}

/// `cohmem_bo_sync`, and for an image BO the rectangles of pixels the sync
/// changed on the GPU copy (with any background upload since the BO's
/// previous sync): every pixel of every uploaded page lies in one of them.
/// Tracking is by page, so a rectangle covers every pixel whose bytes share
/// a page with a written byte, not only the pixels written.
///
/// - `result`: NULL, or receives what `cohmem_bo_sync` gives.
/// - `rects`, `capacity`: an array of `capacity` rectangles; the first
///   `min(*count, capacity)` are written, sorted by (y, x). `rects` may be
///   NULL only when `capacity` is 0.
/// - `count` (required): the number of rectangles the daemon reported, at
///   most `COHMEM_MAX_DAMAGE_RECTS`. It may exceed `capacity`: then only
///   `capacity` rectangles were written, the rest are lost (the sync is
///   done) and the call still returns `COHMEM_OK`. A `capacity` of
///   `COHMEM_MAX_DAMAGE_RECTS` always receives them all.
/// - `merged`: NULL, or receives 1 when rectangles were merged to stay
///   under `COHMEM_MAX_DAMAGE_RECTS` (they then cover pixels no uploaded
///   page holds), else 0.
///
/// A byte BO has no rectangles: `*count` and `*merged` are 0. A call
/// refused for a NULL argument (`COHMEM_E_INVALID`) does not sync.
///
/// # Safety
/// `bo` is NULL or a live BO; `result`, `count` and `merged` are NULL or
/// valid for writes; `rects` is NULL or valid for writing `capacity`
/// rectangles.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_rects(
    bo: *const cohmem_bo,
    result: *mut cohmem_sync_result,
    rects: *mut cohmem_rect,
    capacity: usize,
    count: *mut usize,
    merged: *mut c_int,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_rects: bo is NULL");
    };
    if count.is_null() {
        return invalid("cohmem_bo_sync_rects: count is NULL");
    }
    if rects.is_null() && capacity > 0 {
        return invalid(&format!(
            "cohmem_bo_sync_rects: rects is NULL but capacity is {capacity}"
        ));
    }
    match bo.0.sync() {
        Ok(r) => {
            for (i, rect) in r.rects.iter().take(capacity).enumerate() {
                let rect = cohmem_rect {
                    x: rect.x,
                    y: rect.y,
                    w: rect.w,
                    h: rect.h,
                };
                // SAFETY: `rects` holds `capacity` rectangles and
                // `i < capacity` (documented; non-NULL as `capacity` > 0).
                unsafe { rects.add(i).write(rect) };
            }
            // SAFETY: `count` is non-NULL and valid for writes (documented).
            unsafe { count.write(r.rects.len()) };
            // SAFETY: `merged` is NULL or valid for writes (documented).
            if let Some(m) = unsafe { merged.as_mut() } {
                *m = c_int::from(r.rects_merged);
            }
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Syncs, then copies the GPU resource back into the BO (GPU → CPU).
///
/// # Safety
/// `bo` is a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_readback(bo: *const cohmem_bo) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_readback: bo is NULL");
    };
    match bo.0.readback() {
        Ok(_) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Reports `len` bytes at `offset` of the BO written. Needed under the
/// `explicit` mechanism for every write, and under the tracking mechanisms
/// for writes no mapping store reports: pinned I/O into a mapping (an
/// `O_DIRECT` `read`, io_uring, a device) once it completed, and writes
/// through the BO's fd (`pwrite`, `fallocate`, `MADV_REMOVE`) on kernels
/// that raise no inotify events on memfds (Linux 6.14 and later).
///
/// # Safety
/// `bo` is a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_damage(bo: *const cohmem_bo, offset: u64, len: u64) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_damage: bo is NULL");
    };
    match bo.0.damage(offset, len) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}
