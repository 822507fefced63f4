//! Batched damage (`cohmem_bo_damage_ranges`, `cohmem_bo_damage_rects`
//! for an image BO's rectangles) and damage with the sync in
//! one round trip (`cohmem_bo_sync_damaged`, and `cohmem_bo_sync_damaged_rects`
//! for an image BO's rectangles): what a cooperative client that knows what
//! it drew sends at commit; and a frame's many BOs synced in one round trip
//! (`cohmem_sync_many`).

use std::ffi::c_int;
use std::ops::Range;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::sync::{cohmem_rect, cohmem_sync_result, sync_result};
use crate::tracking::{cohmem_mechanism, cohmem_method};

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

/// Reports the `count` rectangles of pixels at `rects` of an image BO
/// written (each inside the image, else `COHMEM_E_INVALID` and nothing is
/// reported), as the byte ranges of their rows. Needed under the `explicit`
/// mechanism for every write; harmless under the others.
///
/// # Safety
/// `bo` is NULL or a live BO; `rects` is NULL (with `count` 0) or valid for
/// reading `count` rectangles.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_damage_rects(
    bo: *const cohmem_bo,
    rects: *const cohmem_rect,
    count: usize,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_damage_rects: bo is NULL");
    };
    // SAFETY: `rects` is NULL or valid for `count` reads (documented).
    let Some(rects) = (unsafe { elements(rects, count) }) else {
        return invalid(&format!("cohmem_bo_damage_rects: rects is NULL but count is {count}"));
    };
    match bo.0.damage_rects(&client_rects(rects)) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

fn client_rects(rects: &[cohmem_rect]) -> Vec<cohmem_client::Rect> {
    rects
        .iter()
        .map(|r| cohmem_client::Rect {
            x: r.x,
            y: r.y,
            w: r.w,
            h: r.h,
        })
        .collect()
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
    let synced = bo.0.sync_damaged_rects(&client_rects(rects));
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

/// Syncs the `count` BOs at `bos` (all of connection `conn`) in one round
/// trip per 256 BOs: a frame's submission. `results` (NULL or room for
/// `count`) receives what each sync uploaded; `daemon_codes` (NULL or room
/// for `count`) receives 0 for each BO synced and the daemon's error code
/// (as `cohmem_last_daemon_code` gives it) for each that was not, whose
/// pages stay dirty for its next sync. Returns `COHMEM_OK` when every BO
/// was synced, `COHMEM_E_DAEMON` when one was not (the others were synced
/// all the same; the last error names the first), `COHMEM_E_INVALID` for a
/// BO of another connection (nothing synced).
///
/// # Safety
/// `conn` is NULL or a live connection; `bos` is NULL (with `count` 0) or
/// valid for reading `count` pointers to live BOs; `results` and
/// `daemon_codes` are NULL or valid for writing `count` elements.
#[no_mangle]
pub unsafe extern "C" fn cohmem_sync_many(
    conn: *const crate::connection::cohmem_connection,
    bos: *const *const cohmem_bo,
    count: usize,
    results: *mut cohmem_sync_result,
    daemon_codes: *mut c_int,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_sync_many: conn is NULL");
    };
    // SAFETY: `bos` is NULL or valid for `count` reads (documented).
    let Some(ptrs) = (unsafe { elements(bos, count) }) else {
        return invalid(&format!("cohmem_sync_many: bos is NULL but count is {count}"));
    };
    let mut list = Vec::with_capacity(count);
    for (i, &p) in ptrs.iter().enumerate() {
        // SAFETY: each pointer is NULL or a live BO (documented).
        match unsafe { p.as_ref() } {
            Some(bo) => list.push(&bo.0),
            None => return invalid(&format!("cohmem_sync_many: bos[{i}] is NULL")),
        }
    }
    let outcomes = match conn.0.sync_many(&list) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let mut first_error = None;
    for (i, outcome) in outcomes.iter().enumerate() {
        let (result, code) = match outcome {
            Ok(s) => (
                cohmem_sync_result {
                    pages: s.pages,
                    bytes: s.bytes,
                    duration_ns: u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX),
                    run_count: 0,
                    mechanism: cohmem_mechanism::from_client(s.mechanism),
                    method: cohmem_method::COHMEM_METHOD_NONE,
                },
                0,
            ),
            Err(e) => {
                first_error.get_or_insert(e);
                (
                    cohmem_sync_result::default(),
                    e.code().map_or(0, |c| c_int::from(c.to_wire())),
                )
            }
        };
        if !results.is_null() {
            // SAFETY: `results` holds `count` elements, `i < count`.
            unsafe { results.add(i).write(result) };
        }
        if !daemon_codes.is_null() {
            // SAFETY: `daemon_codes` holds `count` elements, `i < count`.
            unsafe { daemon_codes.add(i).write(code) };
        }
    }
    match first_error {
        Some(e) => fail(e),
        None => COHMEM_OK,
    }
}
