//! When a display output commits damage (issue 17, item 3): at once after
//! each sync, or at most once per `--display-interval-us`, coalescing the
//! rectangles of the syncs in between. Pure state, no clock of its own: the
//! caller passes `now`, so the rules are tested without a device.
//!
//! The counterpart of fbdev deferred I/O's fixed delay, with exact
//! rectangles and a flush on unmap and close, so that no frame written
//! before a close is lost (research/display.md §1).

use std::time::{Duration, Instant};

use cohmem_proto::{Rect, MAX_DAMAGE_RECTS};

use crate::damage::merge_under_cap;

/// What to do with the damage of one sync.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Commit these rectangles now (at most [`MAX_DAMAGE_RECTS`]).
    CommitNow(Vec<Rect>),
    /// Kept for a commit at this instant (the pacing thread's deadline).
    Deferred(Instant),
    /// Nothing to commit.
    Nothing,
}

/// The pacing state of one output.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    last_commit: Option<Instant>,
    pending: Vec<Rect>,
}

impl Pacer {
    /// Commits at most once per `interval` (`None`: after every sync).
    pub fn new(interval: Option<Duration>) -> Self {
        Self {
            interval: interval.filter(|i| !i.is_zero()),
            last_commit: None,
            pending: Vec::new(),
        }
    }

    /// The damage of a sync: commit it (with anything pending) if the
    /// interval allows, else keep it.
    pub fn offer(&mut self, now: Instant, rects: &[Rect]) -> Decision {
        self.keep(rects);
        if self.pending.is_empty() {
            return Decision::Nothing;
        }
        match self.next_allowed() {
            Some(at) if at > now => Decision::Deferred(at),
            _ => Decision::CommitNow(self.take()),
        }
    }

    /// Pending rectangles whose time has come (the pacing thread's wake-up).
    pub fn due(&mut self, now: Instant) -> Option<Vec<Rect>> {
        if self.pending.is_empty() || self.next_allowed().is_some_and(|at| at > now) {
            return None;
        }
        Some(self.take())
    }

    /// When the pending rectangles may be committed (`None`: nothing pending).
    pub fn deadline(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.next_allowed().unwrap_or_else(Instant::now))
    }

    /// Everything pending, whatever the interval (unmap, close, hide).
    pub fn flush(&mut self) -> Option<Vec<Rect>> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    /// A commit went to the device at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.last_commit = Some(now);
    }

    /// Puts rectangles back after a failed commit, so the next one sends them.
    pub fn put_back(&mut self, rects: &[Rect]) {
        self.keep(rects);
    }

    fn next_allowed(&self) -> Option<Instant> {
        Some(self.last_commit? + self.interval?)
    }

    fn keep(&mut self, rects: &[Rect]) {
        self.pending.extend(rects.iter().filter(|r| r.w > 0 && r.h > 0));
        if self.pending.len() > MAX_DAMAGE_RECTS {
            let (merged, _) = merge_under_cap(std::mem::take(&mut self.pending), MAX_DAMAGE_RECTS);
            self.pending = merged;
        }
    }

    fn take(&mut self) -> Vec<Rect> {
        let mut rects = std::mem::take(&mut self.pending);
        rects.sort_unstable_by_key(|r| (r.y, r.x, r.h, r.w));
        rects.dedup();
        rects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    #[test]
    fn without_an_interval_every_sync_commits_its_rects() {
        let mut p = Pacer::new(None);
        let t = Instant::now();
        assert_eq!(p.offer(t, &[r(1, 2, 3, 4)]), Decision::CommitNow(vec![r(1, 2, 3, 4)]));
        p.committed(t);
        assert_eq!(p.offer(t, &[r(5, 5, 1, 1)]), Decision::CommitNow(vec![r(5, 5, 1, 1)]));
        assert_eq!(p.offer(t, &[]), Decision::Nothing);
        assert_eq!(p.flush(), None);
    }

    #[test]
    fn within_the_interval_rects_are_coalesced_and_due_when_it_elapses() {
        let ms = Duration::from_millis;
        let mut p = Pacer::new(Some(ms(16)));
        let t0 = Instant::now();
        assert_eq!(p.offer(t0, &[r(0, 0, 1, 1)]), Decision::CommitNow(vec![r(0, 0, 1, 1)]));
        p.committed(t0);
        assert_eq!(p.offer(t0 + ms(5), &[r(1, 1, 1, 1)]), Decision::Deferred(t0 + ms(16)));
        assert_eq!(p.offer(t0 + ms(9), &[r(2, 2, 1, 1)]), Decision::Deferred(t0 + ms(16)));
        assert_eq!(p.deadline(), Some(t0 + ms(16)));
        assert_eq!(p.due(t0 + ms(15)), None, "not before the interval");
        assert_eq!(p.due(t0 + ms(16)), Some(vec![r(1, 1, 1, 1), r(2, 2, 1, 1)]));
        p.committed(t0 + ms(16));
        assert_eq!(p.deadline(), None);
        // Long after the last commit a sync commits at once again.
        assert_eq!(
            p.offer(t0 + ms(100), &[r(3, 3, 1, 1)]),
            Decision::CommitNow(vec![r(3, 3, 1, 1)])
        );
    }

    #[test]
    fn flush_sends_what_is_pending_whatever_the_interval() {
        let mut p = Pacer::new(Some(Duration::from_secs(10)));
        let t = Instant::now();
        p.committed(t);
        assert!(matches!(p.offer(t, &[r(7, 7, 2, 2)]), Decision::Deferred(_)));
        assert_eq!(p.flush(), Some(vec![r(7, 7, 2, 2)]), "a close never loses a frame");
        assert_eq!(p.flush(), None);
    }

    #[test]
    fn pending_rects_stay_under_the_cap_and_cover_everything() {
        let mut p = Pacer::new(Some(Duration::from_secs(10)));
        let t = Instant::now();
        p.committed(t);
        let many: Vec<Rect> = (0..1000).map(|i| r(i % 50 * 3, i / 50 * 3, 1, 1)).collect();
        for chunk in many.chunks(100) {
            let _ = p.offer(t, chunk);
        }
        let out = p.flush().unwrap();
        assert!(out.len() <= MAX_DAMAGE_RECTS, "{} clips", out.len());
        for m in &many {
            assert!(out.iter().any(|o| o.contains(m.x, m.y)), "{m:?} lost");
        }
    }

    #[test]
    fn a_failed_commit_puts_its_rects_back() {
        let mut p = Pacer::new(None);
        let t = Instant::now();
        let Decision::CommitNow(rects) = p.offer(t, &[r(4, 4, 4, 4)]) else {
            panic!("expected a commit")
        };
        p.put_back(&rects);
        assert_eq!(p.flush(), Some(vec![r(4, 4, 4, 4)]));
    }
}
