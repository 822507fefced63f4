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
//! 1.5–3 µs, so where there are many runs, or several in each 2 MiB step,
//! the one protecting scan is cheaper (the interrupts after the first find
//! the vCPU awake): [`split_pays`].
//!
//! No write is lost by splitting: a page written before the scan stays
//! writable, and so found, until its run is protected, and the caller
//! copies it only after the harvest returns, so the copy holds every write
//! made before the protect; a page the scan found clean was write-protected
//! then, so a later write faults and leaves it written for the next
//! harvest, as a write after an atomic scan's step would.

use std::ops::Range;

use cohmem_sys::pagemap::{PagemapFile, ScanQuery};
use cohmem_sys::SysError;

use super::ranges::merge_runs;
use super::TrackError;

/// Most written runs a split harvest re-protects one call each. Measured
/// on the test VM (`cohmem-bench sparse --size-mib 64 --density D`, daemon
/// time against the protecting scan): 16 runs 63 µs against 78 µs in one
/// pair, 82–94 µs against 76–93 µs in seven alternated pairs (about even);
/// 33 runs about even; 66 runs 188–203 µs against 120–155 µs; 262 runs of
/// a 1 GiB view 1.4 ms against 0.75 ms.
pub(super) const PROTECT_RUNS_MAX: usize = 24;

/// `PAGEMAP_SCAN`'s step (one PMD of x86-64's 4 KiB pages): the protecting
/// scan flushes once per step that had a written page.
const STEP_SHIFT: u32 = 21;

/// Whether re-protecting `runs` (sorted) one call each costs less than a
/// protecting scan's flushes: at most [`PROTECT_RUNS_MAX`] runs, and at
/// most 4 more runs than steps with a written page (the scan's first
/// interrupt costs about 10 µs, later ones about 2 µs while the vCPU is
/// awake, a call 1.5–3 µs: a cost model from the figures above, not
/// measured at each run count; 10 runs in the 2 steps of a 4 MiB view, the
/// scale scenario's BOs, take the scan).
pub(super) fn split_pays(runs: &[Range<u64>]) -> bool {
    if runs.len() > PROTECT_RUNS_MAX {
        return false;
    }
    let mut steps = 0u64;
    let mut last = None;
    for r in runs.iter().filter(|r| r.start < r.end) {
        let (first, end) = (r.start >> STEP_SHIFT, (r.end - 1) >> STEP_SHIFT);
        steps += end - first + 1 - u64::from(last == Some(first));
        last = Some(end);
    }
    runs.len() as u64 <= 4 + steps
}

/// Re-protects the written runs `out[first..]` that a read-only scan of
/// `parts` found: with `protect` (`UFFDIO_WRITEPROTECT`) one run at a time
/// where that [`split_pays`], else by a protecting scan of their span,
/// whose runs are merged with the found ones. The found runs stay: a page
/// unmapped behind the library since the scan is skipped by the second
/// scan without an error, and its write (made before the SYNC, found by
/// the scan the events proved) must still be copied.
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
    if split_pays(found) {
        for run in found {
            protect(run.clone())?;
        }
        return Ok(());
    }
    let found = out.split_off(first);
    for part in parts {
        let (start, end) = (part.start.max(lo), part.end.min(hi));
        if start < end {
            pagemap.scan(start..end, ScanQuery::HARVEST_WRITTEN, out)?;
        }
    }
    out.extend(found);
    merge_runs(out, first);
    Ok(())
}
