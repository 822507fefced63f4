//! Per-BO dirty state: a page bitmap plus the conservative `[start, end)`
//! envelope of seed 001 (vmwgfx's `vmw_bo_dirty`: `bitmap`, `start`, `end`).
//!
//! Behaviour follows `research/vmwgfx-dirty-spec.md` §1 and §4.6–4.7:
//! recording a page extends the envelope; transferring a resource window hands
//! out ascending runs and clears them, walking only to `min(window end,
//! envelope end)` (the May 2026 `min` fix, so a window never steals another
//! window's pages); the envelope shrinks only at its edges.

use std::ops::Range;

/// Bitmap and envelope of one BO, in BO-relative pages.
#[derive(Debug, Clone)]
pub struct DirtyState {
    bits: Vec<u64>,
    pages: u64,
    start: u64,
    end: u64,
    count: u64,
}

impl DirtyState {
    /// A clean state for a BO of `pages` pages (envelope `start = N, end = 0`).
    pub fn new(pages: u64) -> Self {
        Self {
            bits: vec![0; pages.div_ceil(64) as usize],
            pages,
            start: pages,
            end: 0,
            count: 0,
        }
    }

    /// Number of pages tracked (N).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages whose bit is set.
    pub fn dirty_pages(&self) -> u64 {
        self.count
    }

    /// The envelope, or `None` when empty. It may be wider than the set bits.
    pub fn envelope(&self) -> Option<Range<u64>> {
        (self.start < self.end).then_some(self.start..self.end)
    }

    /// vmwgfx `is_dirty`: true iff the envelope is non-empty.
    pub fn is_dirty(&self) -> bool {
        self.start < self.end
    }

    fn test(&self, p: u64) -> bool {
        self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    /// The first set page in `[from, limit)`, skipping clear words whole.
    fn next_set(&self, from: u64, limit: u64) -> Option<u64> {
        next_one(&self.bits, from, limit)
    }

    /// Records pages `range` (clamped to the BO) as written.
    pub fn record(&mut self, range: Range<u64>) {
        let r = range.start.min(self.pages)..range.end.min(self.pages);
        if r.is_empty() {
            return;
        }
        for p in r.clone() {
            let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.bits[w] & b == 0 {
                self.bits[w] |= b;
                self.count += 1;
            }
        }
        self.start = self.start.min(r.start);
        self.end = self.end.max(r.end);
    }

    /// Hands the dirty runs inside window `[rs, re)` to the caller, ascending,
    /// clearing their bits (vmwgfx `transfer_to_res`).
    pub fn transfer_window(&mut self, window: Range<u64>) -> Vec<Range<u64>> {
        let mut runs = Vec::new();
        let (rs, re) = (window.start, window.end.min(self.pages));
        if rs >= re || re <= self.start || rs >= self.end {
            return runs;
        }
        let limit = re.min(self.end);
        let mut p = rs.max(self.start);
        while let Some(a) = self.next_set(p, limit) {
            p = a;
            while p < limit && self.test(p) {
                self.clear_bit(p);
                p += 1;
            }
            runs.push(a..p);
        }
        self.shrink_envelope(rs, limit);
        runs
    }

    /// Drops the dirty pages of window `[rs, re)` without reporting them
    /// (vmwgfx `clear_res`, after a full upload of the window).
    pub fn clear_window(&mut self, window: Range<u64>) {
        let (rs, re) = (window.start, window.end.min(self.pages));
        if rs >= re || re <= self.start || rs >= self.end {
            return;
        }
        let limit = re.min(self.end);
        let mut p = rs.max(self.start);
        while let Some(set) = self.next_set(p, limit) {
            self.clear_bit(set);
            p = set + 1;
        }
        self.shrink_envelope(rs, limit);
    }

    /// Puts runs back after a failed upload (nothing lost).
    pub fn fold_back(&mut self, runs: &[Range<u64>]) {
        for r in runs {
            self.record(r.clone());
        }
    }

    fn clear_bit(&mut self, p: u64) {
        self.bits[(p / 64) as usize] &= !(1 << (p % 64));
        self.count -= 1;
    }

    fn shrink_envelope(&mut self, rs: u64, limit: u64) {
        let covers_start = rs <= self.start && self.start < limit;
        let covers_end = rs < self.end && self.end <= limit;
        match (covers_start, covers_end) {
            (true, true) => {
                self.start = self.pages;
                self.end = 0;
            }
            (true, false) => self.start = limit,
            (false, true) => self.end = rs,
            (false, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_state_is_clean_with_canonical_empty_envelope() {
        let d = DirtyState::new(100);
        assert!(!d.is_dirty());
        assert_eq!((d.start, d.end), (100, 0));
    }

    #[test]
    fn record_extends_envelope_and_transfer_returns_ascending_runs() {
        let mut d = DirtyState::new(100);
        d.record(40..42);
        d.record(5..6);
        d.record(41..45);
        assert_eq!(d.envelope(), Some(5..45));
        assert_eq!(d.dirty_pages(), 6);
        assert_eq!(d.transfer_window(0..100), vec![5..6, 40..45]);
        assert!(!d.is_dirty());
        assert_eq!(d.dirty_pages(), 0);
    }

    #[test]
    fn window_transfer_uses_min_and_never_steals_other_windows_pages() {
        // Two resources on one BO: [0,10) and [10,20). Pages 3 and 15 dirty.
        let mut d = DirtyState::new(20);
        d.record(3..4);
        d.record(15..16);
        assert_eq!(d.transfer_window(0..10), vec![3..4]);
        // The second window's page is still there and the envelope still covers it.
        assert_eq!(d.dirty_pages(), 1);
        assert_eq!(d.envelope(), Some(10..16));
        assert_eq!(d.transfer_window(10..20), vec![15..16]);
        assert!(!d.is_dirty());
    }

    #[test]
    fn inner_window_leaves_envelope_loose() {
        let mut d = DirtyState::new(30);
        d.record(0..1);
        d.record(12..13);
        d.record(29..30);
        assert_eq!(d.transfer_window(10..20), vec![12..13]);
        assert_eq!(d.envelope(), Some(0..30));
        assert!(d.is_dirty());
    }

    #[test]
    fn clear_window_and_fold_back() {
        let mut d = DirtyState::new(10);
        d.record(2..8);
        d.clear_window(0..5);
        assert_eq!(d.dirty_pages(), 3);
        assert_eq!(d.envelope(), Some(5..8));
        let runs = d.transfer_window(0..10);
        d.fold_back(&runs);
        assert_eq!(d.dirty_pages(), 3);
        assert_eq!(d.transfer_window(0..10), vec![5..8]);
    }

    #[test]
    fn record_is_clamped_to_the_bo() {
        let mut d = DirtyState::new(4);
        d.record(2..1000);
        assert_eq!(d.dirty_pages(), 2);
        assert_eq!(d.envelope(), Some(2..4));
    }
}

impl DirtyState {
    /// True if page `p`'s bit is set.
    pub fn contains(&self, p: u64) -> bool {
        p < self.pages && self.test(p)
    }

    /// Maximal runs of set bits, ascending.
    pub fn runs(&self) -> Vec<Range<u64>> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        let Some(env) = self.envelope() else {
            return runs;
        };
        let mut at = env.start;
        while let Some(p) = self.next_set(at, env.end) {
            match runs.last_mut() {
                Some(last) if last.end == p => last.end = p + 1,
                _ => runs.push(p..p + 1),
            }
            at = p + 1;
        }
        runs
    }

    /// vmwgfx's MKWRITE → PAGETABLE switch: the bitmap becomes all ones on
    /// the envelope and zeros elsewhere. Returns how many pages were added
    /// (the over-report, counted in the statistics).
    pub fn fill_envelope(&mut self) -> u64 {
        let Some(env) = self.envelope() else {
            return 0;
        };
        let before = self.count;
        for p in env {
            let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.bits[w] & b == 0 {
                self.bits[w] |= b;
                self.count += 1;
            }
        }
        self.count - before
    }
}

/// The first set bit of `words` in `[from, limit)`: one look per 64-page
/// word, so walking a large, sparse bitmap costs words, not pages.
fn next_one(words: &[u64], from: u64, limit: u64) -> Option<u64> {
    let mut p = from;
    while p < limit {
        let word = *words.get((p / 64) as usize)? >> (p % 64);
        if word != 0 {
            let set = p + u64::from(word.trailing_zeros());
            return (set < limit).then_some(set);
        }
        p = (p / 64 + 1) * 64;
    }
    None
}

/// A plain set of pages (no envelope): the per-view shadow of which pages
/// are writable (unprotected) right now.
#[derive(Debug, Clone, Default)]
pub struct PageSet {
    words: Vec<u64>,
    len: u64,
}

impl PageSet {
    /// An empty set for pages `0..pages`.
    pub fn new(pages: u64) -> Self {
        Self {
            words: vec![0; pages.div_ceil(64) as usize],
            len: 0,
        }
    }

    /// Inserts `p`; returns true if it was absent. Out-of-range pages are ignored.
    pub fn insert(&mut self, p: u64) -> bool {
        let Some(w) = self.words.get_mut((p / 64) as usize) else {
            return false;
        };
        let b = 1u64 << (p % 64);
        let fresh = *w & b == 0;
        *w |= b;
        self.len += u64::from(fresh);
        fresh
    }

    /// True if `p` is in the set.
    pub fn contains(&self, p: u64) -> bool {
        self.words
            .get((p / 64) as usize)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    /// Removes `p`; returns true if it was present.
    pub fn remove(&mut self, p: u64) -> bool {
        let Some(w) = self.words.get_mut((p / 64) as usize) else {
            return false;
        };
        let b = 1u64 << (p % 64);
        let was = *w & b != 0;
        *w &= !b;
        self.len -= u64::from(was);
        was
    }

    /// The pages of the set inside `range`, ascending (word by word: a
    /// sparse set of a large view is walked in `len / 64` steps).
    pub fn ones_in(&self, range: Range<u64>) -> impl Iterator<Item = u64> + '_ {
        let mut at = range.start;
        std::iter::from_fn(move || {
            let p = next_one(&self.words, at, range.end)?;
            at = p + 1;
            Some(p)
        })
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }

    /// Number of pages in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn fill_envelope_sets_every_page_between_the_edges() {
        let mut d = DirtyState::new(20);
        d.record(3..4);
        d.record(9..10);
        assert_eq!(d.fill_envelope(), 5);
        assert_eq!(d.runs(), vec![3..10]);
    }

    #[test]
    fn page_set_counts() {
        let mut s = PageSet::new(100);
        assert!(s.insert(5));
        assert!(!s.insert(5));
        assert!(!s.insert(1000));
        assert_eq!(s.len(), 1);
        assert!(s.remove(5));
        assert!(s.is_empty());
    }
}

#[cfg(test)]
mod word_walk_tests {
    use super::*;

    /// The word-skipping walks agree with a page-by-page look, across word
    /// boundaries and range edges.
    #[test]
    fn ones_in_and_runs_match_a_page_by_page_walk() {
        let pages = 1000;
        let picks = [0u64, 1, 63, 64, 65, 127, 128, 500, 501, 502, 998, 999];
        let mut set = PageSet::new(pages);
        let mut d = DirtyState::new(pages);
        for &p in &picks {
            set.insert(p);
            d.record(p..p + 1);
        }
        for (a, b) in [
            (0, pages),
            (1, 64),
            (64, 65),
            (2, 63),
            (100, 999),
            (600, 600),
            (700, 10),
        ] {
            let want: Vec<u64> = (a..b).filter(|p| set.contains(*p)).collect();
            assert_eq!(set.ones_in(a..b).collect::<Vec<_>>(), want, "{a}..{b}");
        }
        assert_eq!(d.runs(), vec![0..2, 63..66, 127..129, 500..503, 998..1000]);
        assert_eq!(d.transfer_window(64..501), vec![64..66, 127..129, 500..501]);
        assert_eq!(d.dirty_pages(), 7);
        d.clear_window(0..1000);
        assert_eq!(d.dirty_pages(), 0);
        assert!(!d.is_dirty());
    }
}
