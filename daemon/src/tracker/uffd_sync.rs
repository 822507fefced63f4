//! `uffd-sync`: write-protect faults delivered to the daemon's fault
//! service (`faults`), the true analogue of vmwgfx's MKWRITE
//! (spec §4.9, item 17c).

use std::ops::Range;

use cohmem_proto::Mechanism;
use cohmem_sys::pagemap::{PagemapFile, ScanQuery, PAGE_IS_WRITTEN};
use cohmem_sys::uffd::Userfaultfd;
use nix::errno::Errno;

use super::ranges::{push_merged, subtract};
use super::{TrackError, WriteTracker};

/// PAGEMAP_SCAN category: the page is present (`PAGE_IS_PRESENT` in
/// `<linux/fs.h>`; next to PAGE_IS_WRITTEN, 1 << 1).
const PAGE_IS_PRESENT: u64 = 1 << 3;

/// `uffd-sync`: write-protect faults are delivered to the daemon's fault
/// service, which records the page and unprotects it in one step under the
/// BO's lock (spec item 17c) — vmwgfx's MKWRITE, with the client's thread
/// waiting in the kernel meanwhile.
pub struct UffdSyncTracker {
    uffd: Userfaultfd,
    /// The client's pagemap, when it sent one: used to prove a view is still
    /// mapped where it was announced (write-protecting an empty range
    /// succeeds, so the uffd alone cannot tell).
    pagemap: Option<PagemapFile>,
}

impl UffdSyncTracker {
    /// Wraps the synchronous uffd (and, if the client sent it, its pagemap).
    pub fn new(uffd: Userfaultfd, pagemap: Option<PagemapFile>) -> Self {
        Self { uffd, pagemap }
    }
}

impl UffdSyncTracker {
    /// Write-protects `range`; ENOENT (part of it is not a registered
    /// mapping: unmapped, moved or replaced) becomes [`TrackError::Moved`].
    fn protect_checked(&self, range: Range<u64>) -> Result<(), TrackError> {
        match self.uffd.write_protect(range.start, range.end - range.start, true) {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Err(TrackError::Moved {
                missing: range.end - range.start,
            }),
            other => Ok(other?),
        }
    }

    /// Write-protects `range` except the pages of `keep` (sorted, disjoint),
    /// and appends to `found` every page of `range` that may have been
    /// written without the daemon seeing a fault: the pages that were
    /// writable before the protect (the kernel's PAGE_IS_WRITTEN: present
    /// and not write-protected), and the pages that became present during
    /// it (a page neither present nor protected, as in a mapping registered
    /// again behind the library, can be written between the look and the
    /// protect). Pages of `keep` are reported too when `report_keep`.
    /// Holes (moved with mremap, or unmapped) show in the closing walk:
    /// every page of a mapped range is reported, a hole is not.
    ///
    /// Without a pagemap (the client sent none) nothing is found and holes
    /// are not detected (see the README).
    fn protect_observed(
        &self,
        range: Range<u64>,
        keep: &[Range<u64>],
        report_keep: bool,
        found: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        let Some(pagemap) = &self.pagemap else {
            return self.protect_gaps(range, keep);
        };
        let look = ScanQuery {
            flags: 0,
            category_mask: 0,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
        };
        let (mut writable, mut present) = (Vec::new(), Vec::new());
        pagemap.scan_each(range.clone(), look, |r, categories| {
            if categories & PAGE_IS_WRITTEN != 0 {
                push_merged(&mut writable, r.clone());
            }
            if categories & PAGE_IS_PRESENT != 0 {
                push_merged(&mut present, r);
            }
        })?;
        self.protect_gaps(range.clone(), keep)?;
        let mut covered = 0;
        let mut appeared = Vec::new();
        let mut before = present.iter().peekable();
        pagemap.scan_each(range.clone(), look, |r, categories| {
            covered += r.end - r.start;
            if categories & PAGE_IS_PRESENT != 0 {
                // The parts of `r` that were not present before.
                let mut at = r.start;
                while let Some(p) = before.peek() {
                    if p.end <= at {
                        before.next();
                        continue;
                    }
                    if p.start >= r.end {
                        break;
                    }
                    if p.start > at {
                        push_merged(&mut appeared, at..p.start);
                    }
                    at = at.max(p.end);
                    if p.end >= r.end {
                        break;
                    }
                    before.next();
                }
                if at < r.end {
                    push_merged(&mut appeared, at..r.end);
                }
            }
        })?;
        let len = range.end - range.start;
        if covered < len {
            return Err(TrackError::Moved { missing: len - covered });
        }
        let mut all: Vec<Range<u64>> = writable.into_iter().chain(appeared).collect();
        all.sort_unstable_by_key(|r| r.start);
        for r in all {
            if report_keep {
                push_merged(found, r);
            } else {
                subtract(r, keep, found);
            }
        }
        Ok(())
    }

    /// Write-protects the parts of `range` outside `keep` (sorted); ENOENT
    /// (part of it is not a registered mapping: unmapped, moved or
    /// replaced) becomes [`TrackError::Moved`].
    fn protect_gaps(&self, range: Range<u64>, keep: &[Range<u64>]) -> Result<(), TrackError> {
        let mut gaps = Vec::new();
        subtract(range, keep, &mut gaps);
        for g in gaps {
            self.protect_checked(g)?;
        }
        Ok(())
    }
}

impl WriteTracker for UffdSyncTracker {
    fn mechanism(&self) -> Mechanism {
        Mechanism::UffdSync
    }

    fn exact(&self) -> bool {
        true
    }

    fn attach_view(&self, range: Range<u64>) -> Result<(), TrackError> {
        match self.uffd.write_protect(range.start, range.end - range.start, true) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENOENT) || e.errno() == Some(Errno::EINVAL) => {
                Err(TrackError::BadView(format!(
                    "range {:#x}..{:#x} is not registered with this process's synchronous userfaultfd: {e}",
                    range.start, range.end
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn harvest(&self, range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        // Writes were delivered as faults; only the protection is restored.
        self.protect(range)
    }

    fn protect_all(&self, range: Range<u64>, unprotected: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        self.protect_observed(range, &[], true, unprotected)
    }

    fn verify(
        &self,
        range: Range<u64>,
        writable: &[Range<u64>],
        unrecorded: &mut Vec<Range<u64>>,
    ) -> Result<(), TrackError> {
        // Re-protect what should be protected already: no change, except
        // where a page was writable unknown to the daemon (reported), and
        // ENOENT where the range is no longer registered. Re-protecting
        // such a page silently would hide its writes for good (issue 14,
        // suspicion d: tests/tests/suspicion_reregistered_view.rs).
        self.protect_observed(range, writable, false, unrecorded)
    }

    fn peek(&self, _range: Range<u64>, _out: &mut Vec<Range<u64>>) -> Result<(), TrackError> {
        Ok(())
    }

    fn protect(&self, range: Range<u64>) -> Result<(), TrackError> {
        self.uffd.write_protect(range.start, range.end - range.start, true)?;
        Ok(())
    }

    fn eager(&self) -> bool {
        true
    }

    fn fault_uffd(&self) -> Option<&Userfaultfd> {
        Some(&self.uffd)
    }

    fn release(&self, range: Range<u64>) {
        let _ = self.uffd.write_protect(range.start, range.end - range.start, false);
        let _ = self.uffd.wake(range.start, range.end - range.start);
    }
}
