//! Merging damage rectangles under a cap (DIRTYFB takes at most 256 clips):
//! neighbours are merged where their bounding box adds the fewest pixels,
//! with a 4-ary heap and lazy deletion, O(n log n); and leaving out rectangles
//! that lie inside another. Pure.

use cohmem_proto::Rect;

/// Pixels the bounding box of `a` and `b` covers that neither does.
pub(super) fn merge_cost(a: &Rect, b: &Rect) -> u64 {
    let overlap = |a0: u32, al: u32, b0: u32, bl: u32| {
        let hi = (u64::from(a0) + u64::from(al)).min(u64::from(b0) + u64::from(bl));
        hi.saturating_sub(u64::from(a0.max(b0)))
    };
    let both = i128::from(overlap(a.x, a.w, b.x, b.w) * overlap(a.y, a.h, b.y, b.h));
    let cost = i128::from(a.union(b).area()) - i128::from(a.area()) - i128::from(b.area()) + both;
    cost.max(0) as u64
}

/// Merges `rects` until at most `cap` remain (cap >= 1; 0 counts as 1), each step merging
/// the pair of neighbours in (y, x) order whose union's bounding box adds the fewest pixels
/// not already covered by the two (area(union) - area(a) - area(b) + overlap), found with a
/// heap with lazy deletion over a linked list: O(n log n). Empty rects are dropped and exact
/// duplicates kept once. Returns the rects, sorted by (y, x), and whether any merge that
/// added pixels happened (`merged`). Every pixel covered by the input is covered by the
/// output; every input rect lies inside one output rect. Rects must have `x + w` and `y + h`
/// within u32 (true of any image's), and there must be fewer than 2^32 of them.
pub fn merge_under_cap(rects: Vec<Rect>, cap: usize) -> (Vec<Rect>, bool) {
    const NONE: u32 = u32::MAX;
    let mut rects: Vec<Rect> = rects.into_iter().filter(|r| r.w > 0 && r.h > 0).collect();
    rects.sort_unstable_by_key(|r| (r.y, r.x, r.h, r.w));
    rects.dedup();
    let n = rects.len();
    if n <= cap.max(1) {
        return (rects, false);
    }
    assert!(n < NONE as usize, "too many rects");
    // A linked list in (y, x) order; a dead node has no next. A heap entry is a u64
    // (cost key << 32 | left node): small, as the heap is the memory-bound part. Entries
    // are not removed when a merge changes a pair: one is stale, and skipped, unless it
    // still is its node's current pair and cost.
    let mut next: Vec<u32> = (1..=n as u32)
        .map(|i| if (i as usize) < n { i } else { NONE })
        .collect();
    let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect(); // 0 → NONE
    let pair = |rects: &[Rect], l: u32, r: u32| {
        let cost = merge_cost(&rects[l as usize], &rects[r as usize]);
        // Exact below 2^31 pixels, then coarser: still ordered, and 0 only when free.
        let key = if cost < 1 << 31 { cost } else { 1 << 31 | cost >> 33 };
        key << 32 | u64::from(l)
    };
    let mut heap = Heap4::new((0..n as u32 - 1).map(|i| pair(&rects, i, i + 1)).collect());
    let (mut left, mut merged) = (n, false);
    // A new pair no dearer than the heap's top is merged next without a trip through it.
    let mut soon: Option<u64> = None;
    while left > cap.max(1) {
        let Some(entry) = soon.take().or_else(|| heap.pop()) else {
            break; // unreachable: every adjacent pair has a current entry
        };
        let (a, b) = (entry as u32, next[entry as u32 as usize]);
        if b == NONE || pair(&rects, a, b) != entry {
            continue;
        }
        let (ai, bi) = (a as usize, b as usize);
        merged |= entry >> 32 > 0;
        rects[ai] = rects[ai].union(&rects[bi]);
        left -= 1;
        next[ai] = std::mem::replace(&mut next[bi], NONE);
        let (p, c) = (prev[ai], next[ai]);
        if c != NONE {
            prev[c as usize] = a;
        }
        for (l, r) in [(p, a), (a, c)] {
            if l != NONE && r != NONE {
                let e = pair(&rects, l, r);
                if soon.or(heap.0.first().copied()).is_none_or(|best| e <= best) {
                    if let Some(later) = soon.replace(e) {
                        heap.push(later);
                    }
                } else {
                    heap.push(e);
                }
            }
        }
    }
    // Node 0 is never merged away (only right nodes are).
    let mut out = Vec::with_capacity(left);
    let mut i = 0;
    while i != NONE {
        out.push(rects[i as usize]);
        i = next[i as usize];
    }
    out.sort_unstable_by_key(|r| (r.y, r.x));
    (out, merged)
}

/// `rects` (sorted by y, distinct) without those lying inside another. A rect
/// can only lie inside one that starts on its row or above, so each is compared
/// with those before it in the order and those after it on its first row:
/// O(n²) compares of four integers at worst (n <= `MAX_DAMAGE_RECTS` plus one
/// SYNC's rects), where it took a union per pair before (a third of the
/// daemon's time in the 1080p animation).
pub(super) fn without_contained(rects: &[Rect]) -> Vec<Rect> {
    let ends: Vec<(u64, u64)> = rects
        .iter()
        .map(|r| (u64::from(r.x) + u64::from(r.w), u64::from(r.y) + u64::from(r.h)))
        .collect();
    let holds = |b: usize, a: usize| {
        let (ra, rb) = (&rects[a], &rects[b]);
        rb.x <= ra.x && rb.y <= ra.y && ends[a].0 <= ends[b].0 && ends[a].1 <= ends[b].1
    };
    (0..rects.len())
        .filter(|&a| {
            let same_row = rects[a + 1..].iter().take_while(|b| b.y == rects[a].y).count();
            !(0..a).chain(a + 1..a + 1 + same_row).any(|b| holds(b, a))
        })
        .map(|a| rects[a])
        .collect()
}

/// A 4-ary min-heap: half the depth of a binary one, so fewer cache misses per pop
/// (merge_under_cap spends most of its time there).
pub(super) struct Heap4(Vec<u64>);

impl Heap4 {
    pub(super) fn new(keys: Vec<u64>) -> Self {
        let mut h = Heap4(keys);
        for i in (0..h.0.len().div_ceil(4)).rev() {
            h.sift_down(i, h.0[i]);
        }
        h
    }

    /// Puts `key` at `i` or below, moving smaller children up.
    fn sift_down(&mut self, mut i: usize, key: u64) {
        let v = &mut self.0;
        loop {
            let first = 4 * i + 1;
            let children = v.get(first..(first + 4).min(v.len())).unwrap_or_default();
            match children.iter().enumerate().min_by_key(|&(_, &k)| k) {
                Some((c, &min)) if min < key => {
                    v[i] = min;
                    i = first + c;
                }
                _ => break,
            }
        }
        v[i] = key;
    }

    pub(super) fn push(&mut self, key: u64) {
        let mut i = self.0.len();
        self.0.push(key);
        while i > 0 && self.0[(i - 1) / 4] > key {
            self.0[i] = self.0[(i - 1) / 4];
            i = (i - 1) / 4;
        }
        self.0[i] = key;
    }

    pub(super) fn pop(&mut self) -> Option<u64> {
        let last = self.0.pop()?;
        let Some(&top) = self.0.first() else {
            return Some(last);
        };
        self.sift_down(0, last);
        Some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `without_contained` against the pairwise definition (a rect is left out
    /// when another distinct one's union with it is that other one).
    #[test]
    fn contained_rects_are_left_out_exactly() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut below = |n: u32| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % u64::from(n)) as u32
        };
        for round in 0..400 {
            let n = 1 + below(60);
            let span = 1 + below(40);
            let mut rects: Vec<Rect> = (0..n)
                .map(|_| Rect {
                    x: below(span),
                    y: below(span),
                    w: 1 + below(20),
                    h: 1 + below(20),
                })
                .collect();
            rects.sort_unstable_by_key(|r| (r.y, r.x, r.h, r.w));
            rects.dedup();
            let inside = |a: &Rect| rects.iter().any(|b| b != a && b.union(a) == *b);
            let want: Vec<Rect> = rects.iter().filter(|a| !inside(a)).copied().collect();
            assert_eq!(without_contained(&rects), want, "round {round}: {rects:?}");
        }
    }
}
