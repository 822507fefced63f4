//! vmwgfx's per-BO tracker state machine (research spec §2–§3): method,
//! change count and users, around the bitmap + envelope of [`DirtyState`].
//!
//! This module is pure bookkeeping; the page-table work each step needs
//! (harvest, re-protect) is done by `sync` through the mechanisms.
//!
//! Beyond vmwgfx, [`DensePolicy`] pauses tracking of a BO whose writes are
//! dense (issue 6, target 2): when most pages are rewritten between syncs,
//! a write-protect fault on every page costs more than copying the whole BO.
//! vmwgfx never needs this (its MKWRITE faults are the GPU driver's and its
//! PAGETABLE method reads hardware dirty bits, which cost nothing to set);
//! a uffd harvest must write-protect every page again, so every page written
//! faults once per frame.

use cohmem_proto::Method;

use crate::dirty::DirtyState;

/// N below which a tracker starts in PAGETABLE: PAGE_SIZE / sizeof(PTE) = 512
/// on x86-64 (spec §2: strict comparison, 511 → PAGETABLE, 512 → MKWRITE).
pub const MKWRITE_MIN_PAGES: u64 = 512;
/// A switch happens when the change count becomes greater than this.
pub const CHANGE_TRIGGERS: u32 = 2;
/// MKWRITE scans trigger when `floor(100 * marked / N) > 10`.
pub const PAGETABLE_PERCENT: u64 = 10;

/// When to pause tracking a BO whose writes are dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DensePolicy {
    /// A PAGETABLE harvest is dense when it finds at least this percentage
    /// of the BO's pages written (0: never pause).
    pub percent: u64,
    /// Consecutive dense harvests after which tracking pauses.
    pub after: u32,
    /// While paused, the views are write-protected again for one frame to
    /// measure whether writes are still dense: first [`FIRST_PROBE`] syncs
    /// after pausing, then after twice as many each time the probe finds
    /// them still dense, up to this many.
    pub probe_every: u32,
}

/// Paused syncs before the first probe: when dense writes stop, whole-BO
/// uploads stop this soon; while they go on, probes back off to
/// [`DensePolicy::probe_every`].
pub const FIRST_PROBE: u32 = 8;

impl Default for DensePolicy {
    fn default() -> Self {
        Self {
            percent: 50,
            after: CHANGE_TRIGGERS + 1,
            probe_every: 60,
        }
    }
}

impl DensePolicy {
    /// Never pause (vmwgfx's behaviour exactly).
    pub const OFF: Self = Self {
        percent: 0,
        after: 0,
        probe_every: 0,
    };

    /// True when pausing is enabled.
    pub fn enabled(&self) -> bool {
        self.percent > 0 && self.after > 0
    }
}

/// How each BO's vmwgfx method is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodPolicy {
    /// vmwgfx's state machine exactly (spec §2–§3), whatever the mechanism.
    Vmwgfx,
    /// The cheapest method for the mechanisms of the BO's views: PAGETABLE
    /// where the kernel resolves write faults itself and the daemon can only
    /// learn of writes by scanning (uffd-async: MKWRITE would scan *and*
    /// re-protect page by page, PAGETABLE's harvest does both in one walk);
    /// vmwgfx's state machine otherwise (uffd-sync's faults make MKWRITE
    /// cheap for sparse writes, as in vmwgfx).
    Auto,
}

/// Everything beyond vmwgfx's bookkeeping that decides how a BO is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingPolicy {
    /// How the method is chosen.
    pub methods: MethodPolicy,
    /// When tracking pauses for dense writes.
    pub dense: DensePolicy,
    /// Under [`MethodPolicy::Auto`], BOs of at most this many bytes whose
    /// views can all be left unprotected are not tracked but compared with
    /// a shadow copy at each sync (the `shadow` policy's way, issue 19),
    /// which costs less than scanning and write faults there; 0: never.
    pub shadow_max_bytes: u64,
    /// Under [`MethodPolicy::Auto`], most pages of a BO kept as hot ranges
    /// (rewritten at every sync: left writable and compared with a shadow
    /// instead of write-faulting every frame; `bo::HotPages`); 0: never.
    pub hot_max_pages: u64,
}

/// Default [`TrackingPolicy::shadow_max_bytes`]: 64 KiB, where the bench
/// measured the compare cheaper than a page-table harvest (daemon side
/// 1.4 µs against 2.8 µs) and the client's first writes fault no more.
pub const DEFAULT_SHADOW_MAX_BYTES: u64 = 64 << 10;

/// Default [`TrackingPolicy::hot_max_pages`]: 16 MiB of 4 KiB pages.
pub const DEFAULT_HOT_MAX_PAGES: u64 = 4096;

impl Default for TrackingPolicy {
    fn default() -> Self {
        Self {
            methods: MethodPolicy::Auto,
            dense: DensePolicy::default(),
            shadow_max_bytes: DEFAULT_SHADOW_MAX_BYTES,
            hot_max_pages: DEFAULT_HOT_MAX_PAGES,
        }
    }
}

impl TrackingPolicy {
    /// vmwgfx's behaviour exactly (the reference model's).
    pub const VMWGFX: Self = Self {
        methods: MethodPolicy::Vmwgfx,
        dense: DensePolicy::OFF,
        shadow_max_bytes: 0,
        hot_max_pages: 0,
    };
}

/// What a dense-write check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseDecision {
    /// Keep tracking.
    Track,
    /// Pause: unprotect the views; every sync uploads the whole BO.
    Pause,
}

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
    /// Consecutive PAGETABLE harvests that found dense writes.
    pub dense_streak: u32,
    /// `Some(n)`: tracking is paused for dense writes (views unprotected,
    /// every sync uploads the whole BO), `n` syncs since it paused.
    pub paused: Option<u32>,
    /// Paused syncs before the next probe.
    pub probe_interval: u32,
    /// The last probe's frame is being tracked: its harvest decides alone.
    pub probing: bool,
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
            dense_streak: 0,
            paused: None,
            probe_interval: FIRST_PROBE,
            probing: false,
        }
    }

    /// Accounts a PAGETABLE harvest that found `num_marked` pages written
    /// against `policy` (called only where pausing is possible).
    pub fn after_dense_check(&mut self, num_marked: u64, policy: &DensePolicy) -> DenseDecision {
        let pages = self.dirty.pages().max(1);
        let probing = std::mem::take(&mut self.probing);
        if !policy.enabled() || 100 * num_marked.min(pages) / pages < policy.percent {
            self.dense_streak = 0;
            self.probe_interval = FIRST_PROBE;
            return DenseDecision::Track;
        }
        self.dense_streak += 1;
        if probing || self.dense_streak >= policy.after {
            // Still dense at a probe: probe half as often next time.
            self.probe_interval = match probing {
                true => (self.probe_interval * 2).min(policy.probe_every.max(1)),
                false => FIRST_PROBE.min(policy.probe_every.max(1)),
            };
            self.dense_streak = 0;
            self.paused = Some(0);
            return DenseDecision::Pause;
        }
        DenseDecision::Track
    }

    /// Accounts one sync while paused; true when this sync must probe
    /// (after [`DirtyTracker::probe_interval`] paused syncs, which
    /// [`DirtyTracker::after_dense_check`] set from the policy):
    /// write-protect the views again and resume tracking. The probe's next
    /// harvest alone decides whether to pause again.
    pub fn paused_sync(&mut self) -> bool {
        let Some(n) = self.paused else {
            return false;
        };
        if n + 1 >= self.probe_interval.max(1) {
            self.paused = None;
            self.probing = true;
            return true;
        }
        self.paused = Some(n + 1);
        false
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
    fn dense_writes_pause_after_a_streak_and_probe_periodically() {
        let policy = DensePolicy {
            percent: 50,
            after: 3,
            probe_every: 20,
        };
        let mut t = DirtyTracker::new(100);
        assert_eq!(t.after_dense_check(50, &policy), DenseDecision::Track);
        assert_eq!(t.after_dense_check(49, &policy), DenseDecision::Track);
        assert_eq!(t.dense_streak, 0, "a sparse harvest breaks the streak");
        assert_eq!(t.after_dense_check(100, &policy), DenseDecision::Track);
        assert_eq!(t.after_dense_check(300, &policy), DenseDecision::Track);
        assert_eq!(t.after_dense_check(60, &policy), DenseDecision::Pause);
        assert_eq!(t.paused, Some(0));
        // Probes after FIRST_PROBE paused syncs, then twice as late while the
        // writes stay dense, at most every probe_every.
        for interval in [FIRST_PROBE, 2 * FIRST_PROBE, 20, 20] {
            for _ in 1..interval {
                assert!(!t.paused_sync(), "probe before {interval} syncs");
            }
            assert!(t.paused_sync(), "no probe after {interval} syncs");
            assert_eq!(t.paused, None);
            assert_eq!(t.after_dense_check(90, &policy), DenseDecision::Pause, "still dense");
        }
        for _ in 1..20 {
            assert!(!t.paused_sync());
        }
        assert!(t.paused_sync());
        // Sparse at a probe: tracking resumes, and back-off starts over.
        assert_eq!(t.after_dense_check(1, &policy), DenseDecision::Track);
        assert_eq!((t.paused, t.probe_interval), (None, FIRST_PROBE));
        assert_eq!(
            DirtyTracker::new(10).after_dense_check(10, &DensePolicy::OFF),
            DenseDecision::Track
        );
    }

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
