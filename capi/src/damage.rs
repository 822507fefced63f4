//! Batched damage (`cohmem_bo_damage_ranges`) and damage with the sync in
//! one round trip (`cohmem_bo_sync_damaged`, and `cohmem_bo_sync_damaged_rects`
//! for an image BO's rectangles): what a cooperative client that knows what
//! it drew sends at commit.

use std::ffi::c_int;
use std::ops::Range;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::sync::{cohmem_rect, cohmem_sync_result, sync_result};

/// `len` bytes at `offset` of a BO.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_range {
    /// Offset in bytes from the BO's start.
    pub offset: u64,
    /// Length in bytes (at least 1).
    pub len: u64,
}

/// The `count` elements at `ptr` as a slice (`None` for NULL with a
/// non-zero count).
///
/// # Safety
/// `ptr` is NULL or valid for reading `count` elements.
unsafe fn elements<'a, T>(ptr: *const T, count: usize) -> Option<&'a [T]> {
    if count == 0 {
        return Some(&[]);
    }
    // SAFETY: non-NULL `ptr` is valid for `count` reads (the caller's
    // contract); these are the caller's own structs, not shared memory.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr, count) })
}

fn byte_ranges(ranges: &[cohmem_range]) -> Vec<Range<u64>> {
    ranges
        .iter()
        .map(|r| r.offset..r.offset.saturating_add(r.len))
        .collect()
}

/// Reports the `count` byte ranges at `ranges` of the BO written, in one
/// request per 4000 ranges. Every range is checked first: an empty one or
/// one past the BO's end fails with `COHMEM_E_INVALID` and reports nothing.
/// Needed under the `explicit` mechanism for every write; harmless under
/// the others.
///
/// # Safety
/// `bo` is NULL or a live BO; `ranges` is NULL (with `count` 0) or valid
/// for reading `count` ranges.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_damage_ranges(
    bo: *const cohmem_bo,
    ranges: *const cohmem_range,
    count: usize,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_damage_ranges: bo is NULL");
    };
    // SAFETY: `ranges` is NULL or valid for `count` reads (documented).
    let Some(ranges) = (unsafe { elements(ranges, count) }) else {
        return invalid(&format!("cohmem_bo_damage_ranges: ranges is NULL but count is {count}"));
    };
    match bo.0.damage_ranges(&byte_ranges(ranges)) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Reports the `count` byte ranges at `ranges` written and syncs the BO, in
/// one round trip when `count` is at most 4000 (a compositor client's
/// damage and commit). As `cohmem_bo_damage_ranges` then `cohmem_bo_sync`;
/// `result` may be NULL.
///
/// # Safety
/// `bo` is NULL or a live BO; `ranges` is NULL (with `count` 0) or valid
/// for reading `count` ranges; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_damaged(
    bo: *const cohmem_bo,
    ranges: *const cohmem_range,
    count: usize,
    result: *mut cohmem_sync_result,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_damaged: bo is NULL");
    };
    // SAFETY: `ranges` is NULL or valid for `count` reads (documented).
    let Some(ranges) = (unsafe { elements(ranges, count) }) else {
        return invalid(&format!("cohmem_bo_sync_damaged: ranges is NULL but count is {count}"));
    };
    let synced = bo.0.sync_damaged(&byte_ranges(ranges));
    // SAFETY: `result` is NULL or valid for writes (documented).
    unsafe { finish(synced, result) }
}

/// `cohmem_bo_sync_damaged` for an image BO, by the `count` rectangles of
/// pixels at `rects` (each inside the image, else `COHMEM_E_INVALID` and
/// nothing is reported).
///
/// # Safety
/// `bo` is NULL or a live BO; `rects` is NULL (with `count` 0) or valid for
/// reading `count` rectangles; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_damaged_rects(
    bo: *const cohmem_bo,
    rects: *const cohmem_rect,
    count: usize,
    result: *mut cohmem_sync_result,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_damaged_rects: bo is NULL");
    };
    // SAFETY: `rects` is NULL or valid for `count` reads (documented).
    let Some(rects) = (unsafe { elements(rects, count) }) else {
        return invalid(&format!(
            "cohmem_bo_sync_damaged_rects: rects is NULL but count is {count}"
        ));
    };
    let rects: Vec<cohmem_client::Rect> = rects
        .iter()
        .map(|r| cohmem_client::Rect {
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
        })
        .collect();
    let synced = bo.0.sync_damaged_rects(&rects);
    // SAFETY: `result` is NULL or valid for writes (documented).
    unsafe { finish(synced, result) }
}

/// Writes a sync's result to `result` (if non-NULL) or records its error.
///
/// # Safety
/// `result` is NULL or valid for writes.
unsafe fn finish(
    synced: Result<cohmem_client::SyncResult, cohmem_client::ClientError>,
    result: *mut cohmem_sync_result,
) -> c_int {
    match synced {
        Ok(r) => {
            // SAFETY: `result` is NULL or valid for writes (the caller's contract).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}
