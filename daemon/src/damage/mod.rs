//! Damage rectangles of image resources: vmwgfx's dirty boxes of surfaces
//! (`dirty_range_add` / `dirty_sync`, research/vmwgfx-dirty-spec.md §4.6) for
//! cohmem's image BOs (DESIGN.md §8). The byte runs a sync uploaded become
//! pixel rectangles, merged under a cap (DIRTYFB takes at most 256 clips).
//! Pure: no system calls, no I/O, no locks.

use std::ops::Range;

use cohmem_proto::{ImageDamage, ImageInfo, Rect, MAX_DAMAGE_RECTS};

mod merge;
pub use merge::merge_under_cap;
use merge::without_contained;
#[cfg(test)]
use merge::{merge_cost, Heap4};

/// A rect from values that fit in u32 (they are at most an image's width or height).
fn rect(x: u64, y: u64, w: u64, h: u64) -> Rect {
    let [x, y, w, h] = [x, y, w, h].map(|v| v as u32);
    Rect { x, y, w, h }
}

/// The whole image as one rectangle, `None` if it has no pixel.
fn whole(image: &ImageInfo) -> Option<Rect> {
    let (w, h) = (u64::from(image.width), u64::from(image.height));
    (w > 0 && h > 0).then(|| rect(0, 0, w, h))
}

/// Pixel rectangles covering exactly the pixels whose bytes intersect `byte_runs`
/// (byte ranges relative to the start of the buffer, i.e. BO byte offsets; sorted or not,
/// may overlap). Bytes before `image.offset`, in row padding (column bytes >= width*cpp)
/// or after the last row cover no pixel. A run that lies inside one row gives one rect
/// with exact columns; a run spanning rows gives up to three: the partial first row
/// (from its first column to the row end), the whole rows in between (one rect, full width),
/// and the partial last row (from column 0). Then rects that cover the same columns of
/// adjacent rows are coalesced (this never adds a pixel); rects covering the same rows of
/// adjacent columns do not occur, as runs touching the same pixels or adjacent ones are
/// joined first. Output sorted by (y, x), pairwise disjoint. Cost O(n log n) in the runs.
///
/// An unknown format (cpp 0) gives no rect. A layout whose rows overlap
/// (`pitch < width * cpp`, which no backend states) gives the whole image
/// as soon as a run touches it, so damage is never under-reported.
// One pass over the runs with the row arithmetic inline: split up, the
// parts would pass the same half-dozen layout values around.
pub fn rects_of_runs(image: &ImageInfo, byte_runs: &[Range<u64>]) -> Vec<Rect> {
    let cpp = u64::from(image.bytes_per_pixel());
    let (width, height, pitch) = (u64::from(image.width), u64::from(image.height), u64::from(image.pitch));
    if cpp == 0 || width == 0 || height == 0 {
        return Vec::new();
    }
    let row_bytes = width * cpp;
    if pitch < row_bytes {
        let end = image
            .offset
            .saturating_add(((height - 1) * pitch).saturating_add(row_bytes));
        let touches = |r: &Range<u64>| r.start < r.end && r.end > image.offset && r.start < end;
        return whole(image)
            .filter(|_| byte_runs.iter().any(touches))
            .into_iter()
            .collect();
    }
    // A byte run covers an interval of pixel indices y * width + x: pixels lie in
    // that order, padding bytes between two of them. `limit` < 2^64: both factors < 2^32.
    let limit = height * pitch;
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(byte_runs.len());
    for r in byte_runs {
        let (s, e) = (
            r.start.saturating_sub(image.offset),
            r.end.saturating_sub(image.offset).min(limit),
        );
        if s >= e {
            continue;
        }
        let (rs, cs) = (s / pitch, s % pitch);
        let p0 = if cs < row_bytes {
            rs * width + cs / cpp
        } else {
            (rs + 1) * width
        };
        let (rl, cl) = ((e - 1) / pitch, (e - 1) % pitch);
        let p1 = rl * width + if cl < row_bytes { cl / cpp + 1 } else { width };
        if p0 < p1 {
            spans.push((p0, p1));
        }
    }
    spans.sort_unstable();
    // Overlapping or touching intervals become one, so no two rects share or touch a pixel of a row.
    spans.dedup_by(|cur, prev| {
        let touch = cur.0 <= prev.1;
        if touch {
            prev.1 = prev.1.max(cur.1);
        }
        touch
    });
    let mut rects = Vec::with_capacity(spans.len());
    for (p0, p1) in spans {
        let (y0, x0) = (p0 / width, p0 % width);
        let (y1, x1) = ((p1 - 1) / width, (p1 - 1) % width + 1);
        if y0 == y1 {
            rects.push(rect(x0, y0, x1 - x0, 1));
            continue;
        }
        let top = if x0 > 0 { y0 + 1 } else { y0 };
        let bottom = if x1 < width { y1 } else { y1 + 1 };
        if x0 > 0 {
            rects.push(rect(x0, y0, width - x0, 1));
        }
        if bottom > top {
            rects.push(rect(0, top, width, bottom - top));
        }
        if x1 < width {
            rects.push(rect(0, y1, x1, 1));
        }
    }
    // Same columns of adjacent rows.
    rects.sort_unstable_by_key(|r| (r.x, r.w, r.y));
    rects.dedup_by(|cur, prev| {
        let join = prev.x == cur.x && prev.w == cur.w && prev.y + prev.h == cur.y;
        if join {
            prev.h += cur.h;
        }
        join
    });
    rects.sort_unstable_by_key(|r| (r.y, r.x));
    rects
}

/// Damage an image resource accumulated since it was last taken: rectangles kept at most
/// `MAX_DAMAGE_RECTS` by merging on every add, so its memory is bounded however many
/// uploads happen between two takes.
#[derive(Debug, Clone)]
pub struct DamageAccumulator {
    image: ImageInfo,
    rects: Vec<Rect>,
    merged: bool,
}

impl DamageAccumulator {
    /// No damage yet on an image laid out as `image`.
    pub fn new(image: ImageInfo) -> Self {
        Self {
            image,
            rects: Vec::new(),
            merged: false,
        }
    }

    /// The layout byte runs are read with.
    pub fn image(&self) -> &ImageInfo {
        &self.image
    }

    /// Adds the rectangles of `byte_runs` (see [`rects_of_runs`]), merging under
    /// [`MAX_DAMAGE_RECTS`].
    pub fn add_runs(&mut self, byte_runs: &[Range<u64>]) {
        if self.rects.len() == 1 && whole(&self.image) == Some(self.rects[0]) {
            return; // already everything
        }
        self.rects.extend(rects_of_runs(&self.image, byte_runs));
        if self.rects.len() > MAX_DAMAGE_RECTS {
            let (rects, merged) = merge_under_cap(std::mem::take(&mut self.rects), MAX_DAMAGE_RECTS);
            self.rects = rects;
            self.merged |= merged;
        }
    }

    /// The whole image (a resource's first upload, a READBACK…): one rect.
    pub fn add_all(&mut self) {
        self.rects = whole(&self.image).into_iter().collect();
        self.merged = false; // every pixel is damaged: nothing is over-reported
    }

    /// Takes the accumulated damage, leaving it empty. Rects are sorted by (y, x); one lying
    /// inside another is left out, but rects of different adds may still overlap.
    pub fn take(&mut self) -> ImageDamage {
        let mut rects = std::mem::take(&mut self.rects);
        rects.sort_unstable_by_key(|r| (r.y, r.x, r.h, r.w));
        rects.dedup();
        let rects = without_contained(&rects);
        ImageDamage {
            rects,
            merged: std::mem::take(&mut self.merged),
        }
    }

    /// Whether no damage accumulated since the last take.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a slice of one run is what the tests mean
mod tests {
    use super::*;
    use cohmem_proto::fourcc;

    /// xorshift64*, fixed seeds: no dependency.
    struct Rng(u64);
    impl Rng {
        /// In `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn img(width: u32, height: u32, cpp: u32, pitch: u32, offset: u64) -> ImageInfo {
        let fourcc = [0, 0, fourcc::RGB565, 0, fourcc::XRGB8888][cpp as usize];
        ImageInfo {
            width,
            height,
            fourcc,
            pitch,
            offset,
            modifier: 0,
        }
    }

    fn r(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect { x, y, w, h }
    }

    /// Reference: whether each pixel's bytes intersect a run.
    fn pixels_of_runs(im: &ImageInfo, runs: &[Range<u64>]) -> Vec<bool> {
        let cpp = u64::from(im.bytes_per_pixel());
        let offsets = (0..im.height).flat_map(|y| (0..im.width).map(move |x| im.pixel_offset(x, y)));
        let hit = |s: u64| runs.iter().any(|r| r.start.max(s) < r.end.min(s + cpp));
        offsets.map(hit).collect()
    }

    /// How many rects cover each pixel; panics on a rect outside the image.
    fn coverage(im: &ImageInfo, rects: &[Rect]) -> Vec<u32> {
        let mut cov = vec![0u32; (im.width * im.height) as usize];
        for q in rects {
            let inside = q.w > 0 && q.h > 0 && q.x + q.w <= im.width && q.y + q.h <= im.height;
            assert!(inside, "{q:?} {im:?}");
            for y in q.y..q.y + q.h {
                (q.x..q.x + q.w).for_each(|x| cov[(y * im.width + x) as usize] += 1);
            }
        }
        cov
    }

    fn random_case(rng: &mut Rng) -> (ImageInfo, Vec<Range<u64>>) {
        let cpp = 2 + 2 * rng.below(2) as u32;
        let (w, h) = (1 + rng.below(70) as u32, 1 + rng.below(40) as u32);
        let offset = rng.below(2) * rng.below(400);
        let im = img(w, h, cpp, w * cpp + rng.below(64) as u32, offset);
        let span = im.end() + 100;
        let runs = (0..rng.below(12)).map(|_| {
            let s = rng.below(span);
            let max_len = [2 * u64::from(cpp) + 1, 3 * u64::from(im.pitch), span, 1][rng.below(4) as usize];
            s..s + rng.below(max_len)
        });
        (im, runs.collect())
    }

    #[test]
    fn rects_cover_exactly_the_pixels_of_the_runs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let (im, runs) = random_case(&mut rng);
            let rects = rects_of_runs(&im, &runs);
            let cov = coverage(&im, &rects);
            assert!(cov.iter().all(|&c| c <= 1), "overlap: {rects:?} for {im:?} {runs:?}");
            let got: Vec<bool> = cov.iter().map(|&c| c == 1).collect();
            assert_eq!(got, pixels_of_runs(&im, &runs), "{rects:?} for {im:?} {runs:?}");
            let sorted = rects.windows(2).all(|p| (p[0].y, p[0].x) < (p[1].y, p[1].x));
            assert!(sorted, "order: {rects:?}");
            // Fully coalesced: no two rects of the same columns or rows touch.
            for (a, b) in rects.iter().flat_map(|a| rects.iter().map(move |b| (a, b))) {
                let stacked = a.x == b.x && a.w == b.w && a.y + a.h == b.y;
                let side_by_side = a.y == b.y && a.h == b.h && a.x + a.w == b.x;
                assert!(!stacked && !side_by_side, "{a:?} {b:?} in {rects:?}");
            }
        }
    }

    #[test]
    fn runs_give_exact_columns_and_whole_rows() {
        let im = img(100, 10, 4, 512, 64);
        // Row 2 starts at 64 + 1024; bytes 10..21 of it touch pixels 2..=5.
        assert_eq!(rects_of_runs(&im, &[1098..1109]), vec![r(2, 2, 4, 1)]);
        let last = 64 + 9 * 512 + 399; // the last byte of row 9's last pixel
        assert_eq!(rects_of_runs(&im, &[last..last + 1]), vec![r(99, 9, 1, 1)]);
        let im = img(100, 10, 4, 512, 0);
        // From pixel 10 of row 1 to pixel 4 of row 6; the same in pieces, unsorted, overlapping.
        let want = vec![r(10, 1, 90, 1), r(0, 2, 100, 4), r(0, 6, 5, 1)];
        assert_eq!(rects_of_runs(&im, &[552..3092]), want);
        assert_eq!(rects_of_runs(&im, &[2000..3092, 552..1000, 900..2100]), want);
        // From row 0's padding to row 6's: rows 1..=6.
        assert_eq!(rects_of_runs(&im, &[450..3500]), vec![r(0, 1, 100, 6)]);
    }

    #[test]
    fn same_columns_of_adjacent_rows_coalesce() {
        let im = img(64, 20, 4, 1024, 0);
        // Columns 8..16 of rows 3..=12, one run per row, reversed; then also columns 40..48.
        let runs: Vec<_> = (3..13u64).rev().map(|y| y * 1024 + 32..y * 1024 + 64).collect();
        assert_eq!(rects_of_runs(&im, &runs), vec![r(8, 3, 8, 10)]);
        let more: Vec<_> = runs
            .iter()
            .map(|q| q.start + 128..q.end + 128)
            .chain(runs.clone())
            .collect();
        assert_eq!(rects_of_runs(&im, &more), vec![r(8, 3, 8, 10), r(40, 3, 8, 10)]);
        // Whole rows, row by row: one rect.
        let rows: Vec<_> = (0..20u64).map(|y| y * 1024..y * 1024 + 256).collect();
        assert_eq!(rects_of_runs(&im, &rows), vec![r(0, 0, 64, 20)]);
    }

    #[test]
    fn bytes_outside_pixels_cover_nothing() {
        let im = img(10, 4, 4, 64, 100);
        let nothing = [
            0..100,                         // before the offset
            140..164,                       // row 0's padding
            100 + 3 * 64 + 40..1 << 40,     // after the last pixel
            120..120,                       // empty
            Range { start: 130, end: 120 }, // inverted
        ];
        assert_eq!(rects_of_runs(&im, &nothing), vec![]);
        assert_eq!(rects_of_runs(&img(10, 4, 0, 64, 0), &[0..1000]), vec![]); // unknown format
        assert_eq!(rects_of_runs(&img(0, 4, 4, 64, 0), &[0..1000]), vec![]);
        assert_eq!(rects_of_runs(&img(10, 0, 4, 64, 0), &[0..1000]), vec![]);
        // Rows overlapping (pitch < width * cpp): the whole image, never less.
        let bad = img(10, 4, 4, 8, 100);
        assert_eq!(rects_of_runs(&bad, &[120..121]), vec![r(0, 0, 10, 4)]);
        assert_eq!(rects_of_runs(&bad, &[0..100, 200..300]), vec![]);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let max = img(u32::MAX / 4, u32::MAX, 4, u32::MAX, u64::MAX - 5);
        assert_eq!(rects_of_runs(&max, &[0..u64::MAX]), vec![r(0, 0, 2, 1)]); // bytes 0..5
        let big = img(u32::MAX / 4, u32::MAX, 4, u32::MAX, 0);
        let all = r(0, 0, u32::MAX / 4, u32::MAX);
        assert_eq!(rects_of_runs(&big, &[0..u64::MAX]), vec![all]);
        assert_eq!(rects_of_runs(&big, &[u64::MAX - 1..u64::MAX]), vec![]);
        let bad = img(u32::MAX, u32::MAX, 4, 4, u64::MAX - 1);
        let all = r(0, 0, u32::MAX, u32::MAX);
        assert_eq!(rects_of_runs(&bad, &[u64::MAX - 1..u64::MAX]), vec![all]);
        let far = vec![r(0, 0, 1, 1), r(u32::MAX - 1, u32::MAX - 1, 1, 1)];
        assert_eq!(merge_under_cap(far, 1), (vec![all], true));
    }

    /// Reference: the same greedy merge, the cheapest pair of neighbours found by a scan.
    fn greedy(mut rects: Vec<Rect>, cap: usize) -> Vec<Rect> {
        rects.retain(|r| r.w > 0 && r.h > 0);
        rects.sort_unstable_by_key(|r| (r.y, r.x, r.h, r.w));
        rects.dedup();
        while rects.len() > cap.max(1) {
            let i = (0..rects.len() - 1)
                .min_by_key(|&i| merge_cost(&rects[i], &rects[i + 1]))
                .unwrap();
            let b = rects.remove(i + 1);
            rects[i] = rects[i].union(&b);
        }
        rects.sort_unstable_by_key(|r| (r.y, r.x));
        rects
    }

    /// Checks merge_under_cap's contract for `input` on `im`.
    fn check_merge(im: &ImageInfo, input: &[Rect], cap: usize) {
        let (out, merged) = merge_under_cap(input.to_vec(), cap);
        assert_eq!(out, greedy(input.to_vec(), cap), "{input:?} cap {cap}");
        assert!(out.len() <= cap.max(1), "{} rects over cap {cap}", out.len());
        let (cin, cout) = (coverage(im, input), coverage(im, &out));
        assert!(
            cin.iter().zip(&cout).all(|(i, o)| *i == 0 || *o > 0),
            "lost: {input:?} -> {out:?}"
        );
        let inside = input.iter().all(|i| out.iter().any(|o| o.union(i) == *o));
        assert!(inside, "{input:?} -> {out:?}");
        let exact = cin.iter().zip(&cout).all(|(i, o)| (*i > 0) == (*o > 0));
        assert!(merged || exact, "added pixels, not flagged: {input:?} -> {out:?}");
    }

    #[test]
    fn merge_under_cap_covers_input_and_respects_cap() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..3000 {
            let (im, runs) = random_case(&mut rng);
            let mut input = rects_of_runs(&im, &runs);
            for _ in 0..if round % 3 == 0 { rng.below(20) } else { 0 } {
                let (x, y) = (rng.below(im.width.into()) as u32, rng.below(im.height.into()) as u32);
                let w = 1 + rng.below((im.width - x).into()) as u32;
                input.push(r(x, y, w, 1 + rng.below((im.height - y).into()) as u32));
            }
            check_merge(&im, &input, rng.below(input.len() as u64 + 3) as usize);
        }
    }

    #[test]
    fn merges_that_add_pixels_are_flagged() {
        // Stacked strips of the same columns, contained and duplicate rects merge exactly.
        let stacked = vec![r(5, 8, 10, 10), r(5, 0, 10, 3), r(5, 3, 10, 4), r(5, 7, 10, 1)];
        assert_eq!(merge_under_cap(stacked, 1), (vec![r(5, 0, 10, 18)], false));
        let inside = vec![r(0, 0, 9, 9), r(2, 2, 3, 3), r(0, 0, 9, 9)];
        assert_eq!(merge_under_cap(inside, 1), (vec![r(0, 0, 9, 9)], false));
        // Distant ones: the bounding box, flagged.
        let far = vec![r(0, 0, 1, 1), r(90, 90, 10, 10)];
        assert_eq!(merge_under_cap(far, 1), (vec![r(0, 0, 100, 100)], true));
        // The cheapest pair first.
        let three = vec![r(0, 0, 10, 1), r(12, 0, 10, 1), r(50, 0, 10, 1)];
        assert_eq!(merge_under_cap(three, 2), (vec![r(0, 0, 22, 1), r(50, 0, 10, 1)], true));
        // Empty rects are dropped; cap 0 counts as 1.
        let empty = vec![r(0, 0, 1, 1), r(3, 3, 0, 5)];
        assert_eq!(merge_under_cap(empty, 0), (vec![r(0, 0, 1, 1)], false));
        assert_eq!(merge_under_cap(vec![], 0), (vec![], false));
    }

    #[test]
    fn heap4_pops_in_order() {
        let mut rng = Rng(7);
        let mut keys: Vec<u64> = (0..500).map(|_| rng.below(100)).collect();
        let mut heap = Heap4::new(keys.clone());
        for k in (0..300).map(|_| rng.below(200)) {
            heap.push(k);
            keys.push(k);
        }
        keys.sort_unstable();
        assert_eq!(std::iter::from_fn(|| heap.pop()).collect::<Vec<_>>(), keys);
    }

    #[test]
    fn accumulator_stays_bounded_and_takes() {
        let im = img(120, 80, 4, 512, 4096);
        let mut acc = DamageAccumulator::new(im);
        assert!(acc.is_empty() && acc.image() == &im);
        let (mut rng, mut all) = (Rng(42), Vec::new());
        for _ in 0..100 {
            let mut runs = Vec::new();
            for _ in 0..10 {
                let s = rng.below(im.end());
                runs.push(s..s + 1 + rng.below(8));
            }
            acc.add_runs(&runs);
            all.extend(runs);
            assert!(acc.rects.len() <= MAX_DAMAGE_RECTS);
        }
        let mut everything = acc.clone();
        let damage = acc.take();
        assert!(damage.merged && acc.is_empty() && acc.take() == ImageDamage::default());
        let cov = coverage(&im, &damage.rects);
        let want = pixels_of_runs(&im, &all);
        assert!(want.iter().zip(&cov).all(|(w, c)| !w || *c > 0), "lost pixels");
        // Everything: one exact rect, whatever was added before or after.
        everything.add_all();
        everything.add_runs(&[5000..6000]);
        let all = vec![r(0, 0, 120, 80)];
        assert_eq!(
            everything.take(),
            ImageDamage {
                rects: all,
                merged: false
            }
        );
        // Few adds: exact, unmerged, without a rect that another covers.
        acc.add_runs(&[4096..4100, 4096 + 512..4096 + 516]);
        acc.add_runs(&[4096..4100, 4096 + 8..4096 + 9]);
        let rects = vec![r(0, 0, 1, 2), r(2, 0, 1, 1)];
        assert_eq!(acc.take(), ImageDamage { rects, merged: false });
    }

    #[test]
    fn three_hundred_thousand_runs() {
        // Every other page of a 2.5 GB image whose rows are not page-aligned.
        let im = img(3000, 210_000, 4, 12_032, 0);
        let runs: Vec<_> = (0..300_000u64).map(|i| i * 8192..i * 8192 + 4096).collect();
        let t = std::time::Instant::now();
        let rects = rects_of_runs(&im, &runs);
        let t_rects = t.elapsed();
        let (out, merged) = merge_under_cap(rects.clone(), MAX_DAMAGE_RECTS);
        let (n, t_merge) = ((runs.len(), rects.len(), out.len()), t.elapsed() - t_rects);
        eprintln!("{n:?} runs, rects, merged: {t_rects:?}, then {t_merge:?}");
        assert!(rects.len() >= 300_000 && out.len() <= MAX_DAMAGE_RECTS && merged);
        assert!(rects.iter().step_by(97).all(|i| out.iter().any(|o| o.union(i) == *o)));
    }
}
