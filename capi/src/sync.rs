//! Syncing a BO (`cohmem_bo_sync`, `cohmem_bo_sync_rects` with the
//! rectangles an image BO's sync changed, `cohmem_bo_sync_runs` with the
//! pages uploaded), reading the GPU copy back (`cohmem_bo_readback`) and
//! reporting writes no fault sees (`cohmem_bo_damage`).

use std::ffi::c_int;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::tracker_state::{cohmem_run, write_runs};
use crate::tracking::{cohmem_mechanism, cohmem_method};

/// Most rectangles one sync of an image BO reports (DIRTYFB takes at most
/// 256 clips); an array of this many always receives them all.
pub const COHMEM_MAX_DAMAGE_RECTS: usize = 256;

const _: () = assert!(COHMEM_MAX_DAMAGE_RECTS == cohmem_client::MAX_DAMAGE_RECTS);

/// What one sync uploaded.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cohmem_sync_result {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
    /// Runs of consecutive pages uploaded (0 from `cohmem_sync_many`).
    pub run_count: u32,
    /// The mechanism that found the pages. Under
    /// `COHMEM_MECHANISM_EXPLICIT` only reported damage was uploaded.
    pub mechanism: cohmem_mechanism,
    /// The BO's method after the sync (`COHMEM_METHOD_NONE` from
    /// `cohmem_sync_many`).
    pub method: cohmem_method,
}

impl Default for cohmem_sync_result {
    fn default() -> Self {
        Self {
            pages: 0,
            bytes: 0,
            duration_ns: 0,
            run_count: 0,
            mechanism: cohmem_mechanism::COHMEM_MECHANISM_NONE,
            method: cohmem_method::COHMEM_METHOD_NONE,
        }
    }
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
/// Under `COHMEM_MECHANISM_EXPLICIT` only the damage reported since the
/// last sync is uploaded (`cohmem_bo_damage*`); under the others, every
/// store to a mapping is found by itself.
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
        mechanism: cohmem_mechanism::from_client(r.mechanism),
        method: cohmem_method::from_client(r.method),
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

/// What `cohmem_bo_readback` did.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_readback {
    /// Pages the sync before the copy uploaded.
    pub synced_pages: u64,
    /// Bytes copied from the GPU into the BO.
    pub bytes: u64,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
}

/// GPU → CPU: syncs the BO (no write made before this call is lost), then
/// copies every GPU resource back into the BO, for a BO the GPU wrote. A
/// store racing the readback may be overwritten by the GPU's bytes: store
/// after it returns. `out` (NULL or valid for writes) receives what it did.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_readback(bo: *const cohmem_bo, out: *mut cohmem_readback) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_readback: bo is NULL");
    };
    match bo.0.readback() {
        Ok(r) => {
            // SAFETY: `out` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { out.as_mut() } {
                *slot = cohmem_readback {
                    synced_pages: r.synced_pages,
                    bytes: r.bytes,
                    duration_ns: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
                };
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// `cohmem_bo_sync`, and the runs of pages it uploaded: up to `capacity`
/// of them to `runs` (NULL when `capacity` is 0), ascending, their number
/// to `*count` (NULL or valid for writes). The daemon lists at most a few
/// thousand runs: `result->run_count` is the true number, and `*count` is
/// less when the list was cut.
///
/// # Safety
/// `bo` is NULL or a live BO; `result` and `count` are NULL or valid for
/// writes; `runs` is valid for writing `capacity` runs when `capacity` > 0.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_runs(
    bo: *const cohmem_bo,
    result: *mut cohmem_sync_result,
    runs: *mut cohmem_run,
    capacity: usize,
    count: *mut usize,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_runs: bo is NULL");
    };
    if runs.is_null() && capacity > 0 {
        return invalid(&format!("cohmem_bo_sync_runs: runs is NULL but capacity is {capacity}"));
    }
    match bo.0.sync_with_runs() {
        Ok(r) => {
            // SAFETY: `runs` holds `capacity` runs, `count` is NULL or valid
            // (documented).
            unsafe { write_runs(&r.runs, runs, capacity, count) };
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
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
