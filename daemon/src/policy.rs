//! vmwgfx's per-BO tracker state machine (research spec §2–§3): method,
//! change count and users, around the bitmap + envelope of [`DirtyState`].
//!
//! This module is pure bookkeeping; the page-table work each step needs
//! (harvest, re-protect) is done by [`crate::sync`] through the mechanisms.

use cohmem_proto::Method;

use crate::dirty::DirtyState;

/// N below which a tracker starts in PAGETABLE: PAGE_SIZE / sizeof(PTE) = 512
/// on x86-64 (spec §2: strict comparison, 511 → PAGETABLE, 512 → MKWRITE).
pub const MKWRITE_MIN_PAGES: u64 = 512;
/// A switch happens when the change count becomes greater than this.
pub const CHANGE_TRIGGERS: u32 = 2;
/// MKWRITE scans trigger when `floor(100 * marked / N) > 10`.
pub const PAGETABLE_PERCENT: u64 = 10;

/// The tracker of one BO.
#[derive(Debug, Clone)]
pub struct DirtyTracker {
    /// Bitmap and envelope.
    pub dirty: DirtyState,
    /// Current method.
    pub method: Method,
    /// Consecutive scans that asked for a switch.
    pub change_count: u32,
    /// Users (resources bound to the BO).
    pub users: u32,
}

/// What a scan decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDecision {
    /// Stay in the current method.
    Stay,
    /// Switch now (the caller performs the page-table side of the switch).
    Switch(Method),
}

impl DirtyTracker {
    /// A fresh tracker for `pages` pages with one user (spec §4.1).
    pub fn new(pages: u64) -> Self {
        Self {
            dirty: DirtyState::new(pages),
            method: Self::initial_method(pages),
            change_count: 0,
            users: 1,
        }
    }

    /// Initial method by size (spec §2).
    pub fn initial_method(pages: u64) -> Method {
        if pages < MKWRITE_MIN_PAGES {
            Method::PageTable
        } else {
            Method::MkWrite
        }
    }

    /// Accounts a PAGETABLE harvest that cleaned `num_marked` PTEs (spec §3.1).
    pub fn after_pagetable_harvest(&mut self, num_marked: u64) -> ScanDecision {
        if num_marked == 0 {
            self.change_count += 1;
        } else {
            self.change_count = 0;
        }
        if self.change_count > CHANGE_TRIGGERS {
            self.change_count = 0;
            self.method = Method::MkWrite;
            return ScanDecision::Switch(Method::MkWrite);
        }
        ScanDecision::Stay
    }

    /// Accounts an MKWRITE re-protect of `num_marked` PTEs (spec §3.2; the
    /// caller has already returned early on an empty envelope). On a switch
    /// the caller must clean the page tables, then call
    /// [`DirtyTracker::finish_switch_to_pagetable`].
    pub fn after_mkwrite_reprotect(&mut self, num_marked: u64) -> ScanDecision {
        let pages = self.dirty.pages().max(1);
        if 100 * num_marked / pages > PAGETABLE_PERCENT {
            self.change_count += 1;
        } else {
            self.change_count = 0;
        }
        if self.change_count > CHANGE_TRIGGERS {
            self.method = Method::PageTable;
            return ScanDecision::Switch(Method::PageTable);
        }
        ScanDecision::Stay
    }

    /// Bitmap := all ones on the envelope, count := 0 (spec §3.2 step 5c–d).
    /// Returns the pages added (never under-report; counted as extra).
    pub fn finish_switch_to_pagetable(&mut self) -> u64 {
        self.change_count = 0;
        self.dirty.fill_envelope()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_method_boundary_is_strict() {
        assert_eq!(DirtyTracker::new(511).method, Method::PageTable);
        assert_eq!(DirtyTracker::new(512).method, Method::MkWrite);
    }

    #[test]
    fn pagetable_switches_on_the_third_empty_harvest() {
        let mut t = DirtyTracker::new(100);
        assert_eq!(t.after_pagetable_harvest(0), ScanDecision::Stay);
        assert_eq!(t.after_pagetable_harvest(0), ScanDecision::Stay);
        assert_eq!(t.after_pagetable_harvest(3), ScanDecision::Stay);
        assert_eq!(t.change_count, 0);
        t.after_pagetable_harvest(0);
        t.after_pagetable_harvest(0);
        assert_eq!(t.after_pagetable_harvest(0), ScanDecision::Switch(Method::MkWrite));
        assert_eq!((t.method, t.change_count), (Method::MkWrite, 0));
    }

    #[test]
    fn mkwrite_threshold_is_floor_of_percent_above_ten() {
        let mut t = DirtyTracker::new(1000);
        for _ in 0..5 {
            assert_eq!(t.after_mkwrite_reprotect(109), ScanDecision::Stay);
        }
        assert_eq!(t.after_mkwrite_reprotect(110), ScanDecision::Stay);
        assert_eq!(t.after_mkwrite_reprotect(110), ScanDecision::Stay);
        assert_eq!(t.after_mkwrite_reprotect(110), ScanDecision::Switch(Method::PageTable));
    }
}
