//! A BO's tracker state as vmwgfx would hold it (`cohmem_bo_dirty_state`),
//! one vmwgfx `scan` (`cohmem_bo_scan`) and the BO's counters
//! (`cohmem_bo_stats_get`).

use std::ffi::c_int;

use cohmem_client::Run;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::tracking::{cohmem_method, cohmem_policy};

/// A run of consecutive pages of a BO.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_run {
    /// First page, counted from the BO's start.
    pub first_page: u32,
    /// Number of pages (at least 1).
    pub pages: u32,
}

/// Writes up to `capacity` of `runs` to `out` (NULL when `capacity` is 0)
/// and their number to `count`.
///
/// # Safety
/// `out` is valid for writing `capacity` runs when `capacity` > 0; `count`
/// is NULL or valid for writes.
pub(crate) unsafe fn write_runs(runs: &[Run], out: *mut cohmem_run, capacity: usize, count: *mut usize) {
    for (i, run) in runs.iter().take(capacity).enumerate() {
        let run = cohmem_run {
            first_page: run.first_page,
            pages: run.pages,
        };
        // SAFETY: `out` holds `capacity` runs and `i < capacity` (the
        // caller's contract).
        unsafe { out.add(i).write(run) };
    }
    // SAFETY: `count` is NULL or valid for writes (the caller's contract).
    if let Some(count) = unsafe { count.as_mut() } {
        *count = runs.len();
    }
}

/// A BO's tracker, as vmwgfx holds it: which pages are dirty (written and
/// not uploaded yet) and how the BO is tracked.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_dirty_state {
    /// The BO's method now.
    pub method: cohmem_method,
    /// Consecutive scans that asked for a method switch.
    pub change_count: u32,
    /// GPU resources bound to the BO (users of the tracker).
    pub users: u32,
    /// Pages of the BO.
    pub pages: u64,
    /// First dirty page (`pages` when none is).
    pub start: u64,
    /// One past the last dirty page (0 when none is).
    pub end: u64,
    /// Dirty pages.
    pub dirty_pages: u64,
    /// 1 when the runs reported are not all the dirty pages, else 0.
    pub truncated: c_int,
}

/// Writes `bo`'s tracker state to `*out`, and its dirty pages as runs: up
/// to `capacity` of them to `runs` (NULL when `capacity` is 0), their
/// number to `*count` (NULL or valid for writes; it may exceed `capacity`:
/// then only the first `capacity` were written). Pages written but not yet
/// harvested (no sync, no scan since) are not dirty yet: `cohmem_bo_scan`
/// first to see them.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes; `runs` is
/// valid for writing `capacity` runs when `capacity` > 0; `count` is NULL or
/// valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_dirty_state(
    bo: *const cohmem_bo,
    out: *mut cohmem_dirty_state,
    runs: *mut cohmem_run,
    capacity: usize,
    count: *mut usize,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_dirty_state: bo is NULL");
    };
    // SAFETY: `out` is NULL or valid for writes (documented).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return invalid("cohmem_bo_dirty_state: out is NULL");
    };
    if runs.is_null() && capacity > 0 {
        return invalid(&format!(
            "cohmem_bo_dirty_state: runs is NULL but capacity is {capacity}"
        ));
    }
    match bo.0.dirty_state() {
        Ok(d) => {
            *out = cohmem_dirty_state {
                method: cohmem_method::from_wire(d.method),
                change_count: d.change_count,
                users: d.users,
                pages: d.pages,
                start: d.start,
                end: d.end,
                dirty_pages: d.dirty_pages,
                truncated: c_int::from(d.truncated),
            };
            // SAFETY: `runs` holds `capacity` runs, `count` is NULL or
            // valid (documented).
            unsafe { write_runs(&d.runs, runs, capacity, count) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// What `cohmem_bo_scan` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_scan_report {
    /// The BO's method after the scan.
    pub method: cohmem_method,
    /// The method this scan switched to, `COHMEM_METHOD_NONE` if none.
    pub switched_to: cohmem_method,
    /// Consecutive scans that asked for a switch, after this one.
    pub change_count: u32,
    /// Page-table entries cleaned (PAGETABLE) or re-protected (MKWRITE).
    pub num_marked: u64,
}

/// Harvests the pages written to `bo` since the last sync or scan into its
/// dirty state without uploading anything (vmwgfx's `scan`): for tools that
/// inspect the tracker (`cohmem_bo_dirty_state`). An application syncs
/// instead, which scans first. `out` is NULL or receives the report.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_scan(bo: *const cohmem_bo, out: *mut cohmem_scan_report) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_scan: bo is NULL");
    };
    match bo.0.scan() {
        Ok(s) => {
            // SAFETY: `out` is NULL or valid for writes (documented).
            if let Some(out) = unsafe { out.as_mut() } {
                *out = cohmem_scan_report {
                    method: cohmem_method::from_wire(s.method),
                    switched_to: cohmem_method::from_wire(s.switched_to),
                    change_count: s.change_count,
                    num_marked: s.num_marked,
                };
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// One BO's counters, as `cohmemctl status` shows them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_bo_stats {
    /// Size in bytes.
    pub size: u64,
    /// Mappings of the BO (in every process).
    pub views: u32,
    /// The BO's method now.
    pub method: cohmem_method,
    /// The BO's policy.
    pub policy: cohmem_policy,
    /// 1 while tracking is paused for dense writes (every sync uploads the
    /// whole BO), else 0.
    pub paused: c_int,
    /// Pages dirty now (written, harvested, not uploaded yet).
    pub dirty_pages: u64,
    /// Completed syncs.
    pub syncs: u64,
    /// Pages uploaded.
    pub pages_uploaded: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Syncs retried after a writer raced them.
    pub sync_retries: u64,
    /// Syncs that had to block the writers to finish.
    pub sync_exclusive: u64,
}

/// Reads `bo`'s counters (from the daemon's statistics) into `*out`.
///
/// Errors: `COHMEM_E_INVALID` when the daemon's list of BOs was cut before
/// this one (a daemon with very many BOs).
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_stats_get(bo: *const cohmem_bo, out: *mut cohmem_bo_stats) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_stats_get: bo is NULL");
    };
    // SAFETY: `out` is NULL or valid for writes (documented).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return invalid("cohmem_bo_stats_get: out is NULL");
    };
    let report = match bo.1.stats(cohmem_proto::STATS_BOS) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let id = bo.0.id();
    let Some(row) = report.bos.iter().find(|r| r.id == id) else {
        return invalid(&format!(
            "cohmem_bo_stats_get: BO {id} is not in the daemon's statistics (its list of {} BOs was cut)",
            report.bos.len()
        ));
    };
    *out = cohmem_bo_stats {
        size: row.size,
        views: row.views,
        method: cohmem_method::from_wire(row.method),
        policy: cohmem_policy::from_wire(row.policy),
        paused: c_int::from(row.flags & cohmem_proto::BO_ROW_PAUSED != 0),
        dirty_pages: row.dirty_pages,
        syncs: row.syncs,
        pages_uploaded: row.pages_uploaded,
        bytes_uploaded: row.bytes_uploaded,
        sync_retries: row.sync_retries,
        sync_exclusive: row.sync_exclusive,
    };
    COHMEM_OK
}
