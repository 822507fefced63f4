//! A BO's hot ranges (issue 19, item 5): pages a client rewrites at every
//! sync (a sprite, a clock, a ticker strip) are left writable in its views
//! and compared with a shadow copy at each sync instead of write-faulting
//! every frame, as a VNC server compares its shadow surface
//! (`shared/research/display.md` §2). The rest of the BO stays tracked.
//! This file holds the state; the steps are in `sync::hot`.
//!
//! The invariant that makes it exact: for every page of an active range
//! not marked dirty, each GPU resource holds the shadow's bytes. A harvest
//! may report an active page (it is unprotected) or not (a write faulted
//! after a re-protect); either way the compare that follows every harvest
//! finds what changed, so harvests of active pages are not recorded.

use std::ops::Range;
use std::sync::Arc;

use super::Shadow;

/// An active hot range: left out of harvests (so its pages stay writable
/// once written), compared at each sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotRange {
    /// BO pages.
    pub pages: Range<u64>,
    /// Per page: syncs in a row whose compare found it unchanged.
    pub idle: Vec<u32>,
}

impl HotRange {
    /// A range just made active.
    pub fn new(pages: Range<u64>) -> Self {
        let idle = vec![0; (pages.end - pages.start) as usize];
        Self { pages, idle }
    }
}

/// The hot ranges of a BO and what chooses them.
#[derive(Debug, Default)]
pub struct HotPages {
    /// The bytes the GPU holds for the pages of active ranges (BO-sized and
    /// sparse: only the pages of ranges made active are ever written).
    /// `None` while no range is active or on the way.
    pub shadow: Option<Arc<Shadow>>,
    /// Active ranges, sorted and disjoint.
    pub active: Vec<HotRange>,
    /// Ranges whose shadow was copied at this sync's start, before its
    /// harvest; they become active after it.
    pub pending: Vec<Range<u64>>,
    /// Ranges chosen at the last sync, copied at the next one's start.
    pub chosen: Vec<Range<u64>>,
    /// Pages the last sync's harvests found written outside active ranges.
    pub written_last: Vec<Range<u64>>,
    /// Pages this sync's harvests found written outside active ranges.
    pub written_now: Vec<Range<u64>>,
    /// Shadow chunks of [`HOT_CHUNK_PAGES`] faulted in (and charged to the
    /// shadow budget) ahead of their first copy.
    pub populated: Vec<bool>,
}

/// Most runs of written pages a BO notes between two syncs.
pub const MAX_NOTED_RUNS: usize = 4096;

/// Pages of the shadow faulted in at once (2 MiB of 4 KiB pages): a
/// moving sprite reaches new pages every frame, and a fault per page
/// (2.8 µs of a frame here) would cost more than the copy.
pub const HOT_CHUNK_PAGES: u64 = 512;

/// BOs up to this size have their whole shadow faulted in at once, the
/// first time one of their ranges gets hot (about 5 ms for a 1080p
/// image): once rather than a little in many frames.
pub const HOT_WHOLE_SHADOW_BYTES: u64 = 16 << 20;

impl HotPages {
    /// True when BO page `page` is in an active range.
    pub fn covers(&self, page: u64) -> bool {
        let i = self.active.partition_point(|r| r.pages.end <= page);
        self.active.get(i).is_some_and(|r| r.pages.start <= page)
    }

    /// Notes BO page `page` as found written by a harvest of this sync.
    pub fn note_written(&mut self, page: u64) {
        // Bounded: harvests without a SYNC in between (a client looping
        // SCAN) only add; past the bound this sync's notes are dropped,
        // which only delays a choice.
        let full = self.written_now.len() >= MAX_NOTED_RUNS;
        match self.written_now.last_mut() {
            Some(last) if last.end == page => last.end = page + 1,
            Some(last) if last.contains(&page) => {}
            _ if full => {}
            _ => self.written_now.push(page..page + 1),
        }
    }

    /// The active ranges' pages, sorted.
    pub fn active_pages(&self) -> Vec<Range<u64>> {
        self.active.iter().map(|r| r.pages.clone()).collect()
    }

    /// Pages in active, pending and chosen ranges.
    pub fn pages(&self) -> u64 {
        let len = |r: &Range<u64>| r.end - r.start;
        self.active.iter().map(|r| len(&r.pages)).sum::<u64>()
            + self.pending.iter().map(len).sum::<u64>()
            + self.chosen.iter().map(len).sum::<u64>()
    }

    /// True when nothing is active, pending or chosen.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.pending.is_empty() && self.chosen.is_empty()
    }
}

/// Splits sorted page `runs` into the parts inside the sorted, disjoint
/// `ranges` and the parts outside them.
pub fn split_runs(runs: &[Range<u64>], ranges: &[Range<u64>]) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for run in runs {
        let mut at = run.start;
        for r in ranges.iter().filter(|r| r.end > run.start && r.start < run.end) {
            if at < r.start {
                outside.push(at..r.start);
            }
            let (s, e) = (r.start.max(at), r.end.min(run.end));
            if s < e {
                inside.push(s..e);
            }
            at = at.max(e);
        }
        if at < run.end {
            outside.push(at..run.end);
        }
    }
    (inside, outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_runs_cuts_at_range_edges() {
        let (i, o) = split_runs(&[0..10, 12..14, 20..30], &[2..4, 8..13, 25..40]);
        assert_eq!(i, vec![2..4, 8..10, 12..13, 25..30]);
        assert_eq!(o, vec![0..2, 4..8, 13..14, 20..25]);
    }

    #[test]
    fn covers_and_notes() {
        let mut h = HotPages {
            active: vec![HotRange::new(4..8), HotRange::new(10..11)],
            ..HotPages::default()
        };
        let covered: Vec<u64> = (0..12).filter(|&p| h.covers(p)).collect();
        assert_eq!(covered, vec![4, 5, 6, 7, 10]);
        for p in [1, 2, 2, 3, 9] {
            h.note_written(p);
        }
        assert_eq!(h.written_now, vec![1..4, 9..10]);
        assert_eq!(h.pages(), 5);
    }
}
