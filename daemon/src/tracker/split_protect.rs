//! Split harvests for `uffd-async`: a read-only `PAGEMAP_SCAN` finds the
//! written runs, then one `UFFDIO_WRITEPROTECT` per run re-protects them
//! (vmwgfx's harvest-and-re-protect, seed 001, in two steps), where a view's
//! harvests find few runs.
//!
//! Why: `PM_SCAN_WP_MATCHING` flushes the TLB once per 2 MiB step that had
//! a written page, through `flush_tlb_range`, which on x86 counts as
//! freeing page tables and so interrupts every CPU the client ran on, idle
//! ones included; `UFFDIO_WRITEPROTECT` flushes through an mmu_gather that
//! skips CPUs in lazy TLB mode, which is where a client waiting for its
//! SYNC reply is. On the 2-vCPU test VM each such interrupt wakes a halted
//! vCPU: about 10 µs of a 1-page SYNC's 30 µs in the daemon (`perf` and the
//! kernel's `tlb_flush` and `ipi` trace events). A call per run costs
//! 1.5–3 µs, so past [`PROTECT_RUNS_MAX`] runs the one protecting scan is
//! cheaper (the interrupts after the first find the vCPU awake).
//!
//! No write is lost by splitting: a page written before the scan stays
//! writable, and so found, until its run is protected, and the caller
//! copies it only after the harvest returns, so the copy holds every write
//! made before the protect; a page the scan found clean was write-protected
//! then, so a later write faults and leaves it written for the next
//! harvest, as a write after an atomic scan's step would.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use cohmem_sys::pagemap::{PagemapFile, ScanQuery};
use cohmem_sys::SysError;

use super::TrackError;

/// Most written runs a split harvest re-protects one call each. Measured
/// on the test VM (`cohmem-bench sparse --size-mib 64 --density D`, daemon
/// time against the protecting scan): 16 runs 63 µs against 78 µs, 33 runs
/// about even, 66 runs 188–203 µs against 120–155 µs.
pub(super) const PROTECT_RUNS_MAX: usize = 24;

/// Most views whose last run count is kept (a client with more loses the
/// hints, and its next harvests are split).
const MAX_VIEWS: usize = 1 << 16;

/// How many written runs each view's last harvest found: a view that had
/// many is harvested by the protecting scan at once rather than read,
/// counted and scanned again.
#[derive(Default)]
pub(super) struct RunHints {
    last: Mutex<HashMap<(u64, u64), usize>>,
}

impl RunHints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), usize>> {
        // The map holds only hints: a panic elsewhere leaves it usable.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next harvest of `view` should be split.
    pub(super) fn split(&self, view: &Range<u64>) -> bool {
        self.lock()
            .get(&(view.start, view.end))
            .is_none_or(|&runs| runs <= PROTECT_RUNS_MAX)
    }

    /// Records that a harvest of `view` found `runs` written runs.
    pub(super) fn record(&self, view: &Range<u64>, runs: usize) {
        let mut last = self.lock();
        if last.len() >= MAX_VIEWS && !last.contains_key(&(view.start, view.end)) {
            last.clear();
        }
        last.insert((view.start, view.end), runs);
    }

    /// Forgets a view the daemon no longer tracks.
    pub(super) fn forget(&self, view: &Range<u64>) {
        self.lock().remove(&(view.start, view.end));
    }
}

/// Re-protects the written runs `out[first..]` that a read-only scan of
/// `parts` found: with `protect` (`UFFDIO_WRITEPROTECT`) one run at a time,
/// or, past [`PROTECT_RUNS_MAX`] runs, by a protecting scan of their span
/// that replaces them (nothing protected them since, so it finds them all
/// again, with whatever was written meanwhile).
pub(super) fn protect_found(
    pagemap: &PagemapFile,
    parts: &[Range<u64>],
    out: &mut Vec<Range<u64>>,
    first: usize,
    mut protect: impl FnMut(Range<u64>) -> Result<(), SysError>,
) -> Result<(), TrackError> {
    let found = &out[first..];
    let (Some(lo), Some(hi)) = (found.first().map(|r| r.start), found.last().map(|r| r.end)) else {
        return Ok(());
    };
    if found.len() <= PROTECT_RUNS_MAX {
        for run in found {
            protect(run.clone())?;
        }
        return Ok(());
    }
    out.truncate(first);
    for part in parts {
        let (start, end) = (part.start.max(lo), part.end.min(hi));
        if start < end {
            pagemap.scan(start..end, ScanQuery::HARVEST_WRITTEN, out)?;
        }
    }
    Ok(())
}
