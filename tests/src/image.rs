//! Helpers for image BO tests (DESIGN.md §8, issue 16): pixel sets kept as
//! column spans per row, an independent reference for the pixels a list of
//! uploaded page runs covers (and the rectangles the daemon's stated rules
//! make of them), drawing into a mapping, and reading an exported GPU copy.
//!
//! The reference is written from the rules, not from the daemon's code: a
//! pixel is covered when every byte of it lies in an uploaded page (pixels
//! never straddle a page: pitches are multiples of the pixel size and pages
//! of 4 bytes); row padding and bytes past the last row cover nothing.

use std::os::fd::AsFd;

use cohmem_client::{Bo, ExportedResource, ImageInfo, Mapping, Rect, Run};
use cohmem_sys::mapping::SharedMapping;
use cohmem_tools::SplitMix64;

/// A set of pixels of a `width` × `height` image: per row, sorted disjoint
/// half-open column spans, no two touching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelSet {
    width: u32,
    rows: Vec<Vec<(u32, u32)>>,
}

impl PixelSet {
    /// The empty set.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            rows: vec![Vec::new(); height as usize],
        }
    }

    /// Image height in rows.
    pub fn height(&self) -> u32 {
        self.rows.len() as u32
    }

    /// Adds columns `x0..x1` of row `y` (clipped to the image).
    pub fn add_span(&mut self, y: u32, x0: u32, x1: u32) {
        let x1 = x1.min(self.width);
        if x0 >= x1 || y >= self.height() {
            return;
        }
        let row = &mut self.rows[y as usize];
        match row.last().copied() {
            None => row.push((x0, x1)),
            // Spans added left to right (the common case): append or extend.
            Some((_, b)) if b < x0 => row.push((x0, x1)),
            Some((a, b)) if a <= x0 => {
                let last = row.len() - 1;
                row[last].1 = b.max(x1);
            }
            Some(_) => {
                row.push((x0, x1));
                normalise(row);
            }
        }
    }

    /// Adds every pixel of `r` (clipped to the image).
    pub fn add_rect(&mut self, r: &Rect) {
        for y in r.y..r.y.saturating_add(r.h).min(self.height()) {
            self.add_span(y, r.x, r.x.saturating_add(r.w));
        }
    }

    /// The union of `rects`.
    pub fn from_rects(width: u32, height: u32, rects: &[Rect]) -> Self {
        let mut s = Self::new(width, height);
        for r in rects {
            s.add_rect(r);
        }
        s
    }

    /// Pixels in the set.
    pub fn count(&self) -> u64 {
        self.rows.iter().flatten().map(|&(a, b)| u64::from(b - a)).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.iter().all(Vec::is_empty)
    }

    /// Whether pixel (`x`, `y`) is in the set.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        self.rows
            .get(y as usize)
            .is_some_and(|row| row.iter().any(|&(a, b)| a <= x && x < b))
    }

    /// The first pixel (row-major) of `self` not in `other`, if any.
    pub fn first_outside(&self, other: &PixelSet) -> Option<(u32, u32)> {
        for (y, row) in self.rows.iter().enumerate() {
            let theirs = other.rows.get(y).map(Vec::as_slice).unwrap_or(&[]);
            for &(a, b) in row {
                let mut x = a;
                // Spans of `theirs` are sorted: walk those that reach past x.
                for &(c, d) in theirs.iter().filter(|&&(_, d)| d > a) {
                    if c > x {
                        break;
                    }
                    x = x.max(d);
                    if x >= b {
                        break;
                    }
                }
                if x < b {
                    return Some((x, y as u32));
                }
            }
        }
        None
    }

    /// The first pixel (row-major) in exactly one of the two sets, and
    /// whether it is in `self`.
    pub fn first_difference(&self, other: &PixelSet) -> Option<(u32, u32, bool)> {
        let a = self.first_outside(other).map(|(x, y)| (y, x, true));
        let b = other.first_outside(self).map(|(x, y)| (y, x, false));
        [a, b].into_iter().flatten().min().map(|(y, x, mine)| (x, y, mine))
    }

    /// The spans as (y, x0, x1), row-major.
    pub fn spans(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        self.rows
            .iter()
            .enumerate()
            .flat_map(|(y, row)| row.iter().map(move |&(a, b)| (y as u32, a, b)))
    }
}

fn normalise(row: &mut Vec<(u32, u32)>) {
    row.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(row.len());
    for &(a, b) in row.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *row = out;
}

/// The BO byte ranges of `runs` (pages of `page_size`).
pub fn byte_ranges(runs: &[Run], page_size: u64) -> Vec<(u64, u64)> {
    runs.iter()
        .map(|r| {
            (
                u64::from(r.first_page) * page_size,
                (u64::from(r.first_page) + u64::from(r.pages)) * page_size,
            )
        })
        .collect()
}

/// Reference: the pixels whose bytes all lie in the byte range `lo..hi` of
/// the BO, as (y, x0, x1) spans, row by row (no arithmetic shortcuts: each
/// row's pixel bytes are intersected with the range on their own).
fn covered_spans(info: &ImageInfo, lo: u64, hi: u64, mut out: impl FnMut(u32, u32, u32)) {
    let cpp = u64::from(info.bytes_per_pixel());
    let pitch = u64::from(info.pitch);
    let row_bytes = u64::from(info.width) * cpp;
    assert!(
        cpp > 0 && pitch >= row_bytes,
        "reference needs a known format and non-overlapping rows: {info:?}"
    );
    if hi <= info.offset || lo >= info.end() {
        return;
    }
    let first = (lo.saturating_sub(info.offset) / pitch) as u32;
    let last = (((hi - 1).saturating_sub(info.offset) / pitch) as u32).min(info.height - 1);
    for y in first..=last {
        let start = info.offset + u64::from(y) * pitch;
        let end = start + row_bytes;
        let (a, b) = (lo.max(start), hi.min(end));
        if a >= b {
            continue; // the range touches only this row's padding
        }
        // Pixel x spans start + x*cpp .. start + (x+1)*cpp: inside when
        // its first byte is at or after a and its end at or before b.
        let x0 = (a - start).div_ceil(cpp);
        let x1 = (b - start) / cpp;
        if x0 < x1 {
            out(y, x0 as u32, x1 as u32);
        }
    }
}

/// Reference: the pixels the uploaded page `runs` cover.
pub fn pixels_of_runs(info: &ImageInfo, runs: &[Run], page_size: u64) -> PixelSet {
    let mut set = PixelSet::new(info.width, info.height);
    for (lo, hi) in byte_ranges(runs, page_size) {
        covered_spans(info, lo, hi, |y, a, b| set.add_span(y, a, b));
    }
    set
}

/// Reference for the rectangles the daemon's stated rules make of `runs`:
/// each run's covered pixels (contiguous in row-major order once padding is
/// skipped) as its partial first row, its whole rows and its partial last
/// row; then rects with the same columns in adjacent rows, or the same rows
/// in adjacent columns, joined until no two can be.
pub fn reference_rects(info: &ImageInfo, runs: &[Run], page_size: u64) -> Vec<Rect> {
    let mut rects = Vec::new();
    // Runs are disjoint and ascending; two runs that touch (no page between
    // them) are one stretch of bytes.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in byte_ranges(runs, page_size) {
        match ranges.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => ranges.push((lo, hi)),
        }
    }
    for (lo, hi) in ranges {
        let mut spans = Vec::new();
        covered_spans(info, lo, hi, |y, a, b| spans.push((y, a, b)));
        let Some(&(y0, ..)) = spans.first() else { continue };
        let full = |&(_, a, b): &(u32, u32, u32)| a == 0 && b == info.width;
        // First row, whole rows, last row; every middle span is a whole row.
        let mut i = 0;
        let mut push = |y: u32, a: u32, b: u32, h: u32| rects.push(Rect { x: a, y, w: b - a, h });
        if !full(&spans[0]) {
            let (y, a, b) = spans[0];
            push(y, a, b, 1);
            i = 1;
        }
        let mut j = spans.len();
        let tail = (spans.len() > i && !full(&spans[spans.len() - 1])).then(|| spans[spans.len() - 1]);
        if tail.is_some() {
            j -= 1;
        }
        if j > i {
            for s in &spans[i..j] {
                assert!(full(s), "a middle row of a run is not whole: {s:?} (run from row {y0})");
            }
            push(spans[i].0, 0, info.width, (j - i) as u32);
        }
        if let Some((y, a, b)) = tail {
            push(y, a, b, 1);
        }
    }
    coalesce_to_fixpoint(&mut rects);
    rects
}

/// Joins rects with equal columns in adjacent rows or equal rows in
/// adjacent columns until no pair can be joined. The rects are disjoint, so
/// two joinable ones are neighbours once sorted by (x, w, y) (vertical) or
/// (y, h, x) (horizontal): passes of both sorts until neither joins any.
fn coalesce_to_fixpoint(rects: &mut Vec<Rect>) {
    loop {
        let before = rects.len();
        for vertical in [true, false] {
            if vertical {
                rects.sort_unstable_by_key(|r| (r.x, r.w, r.y));
            } else {
                rects.sort_unstable_by_key(|r| (r.y, r.h, r.x));
            }
            let mut out: Vec<Rect> = Vec::with_capacity(rects.len());
            for r in rects.drain(..) {
                match out.last_mut().and_then(|last| joinable(last, &r).map(|u| (last, u))) {
                    Some((last, u)) => *last = u,
                    None => out.push(r),
                }
            }
            *rects = out;
        }
        if rects.len() == before {
            return;
        }
    }
}

/// `a` and `b` joined, if they have equal columns in adjacent rows or equal
/// rows in adjacent columns (either order).
pub fn joinable(a: &Rect, b: &Rect) -> Option<Rect> {
    let vertical = a.x == b.x && a.w == b.w && (a.y + a.h == b.y || b.y + b.h == a.y);
    let horizontal = a.y == b.y && a.h == b.h && (a.x + a.w == b.x || b.x + b.w == a.x);
    (vertical || horizontal).then(|| a.union(b))
}

/// The pixels that differ between two copies of an image's bytes (BO
/// offsets: `before[i]` and `after[i]` are BO byte i).
pub fn changed_pixels(info: &ImageInfo, before: &[u8], after: &[u8]) -> PixelSet {
    let cpp = info.bytes_per_pixel() as usize;
    let mut set = PixelSet::new(info.width, info.height);
    for y in 0..info.height {
        let start = info.pixel_offset(0, y) as usize;
        let end = start + info.width as usize * cpp;
        if before[start..end] == after[start..end] {
            continue;
        }
        let mut run: Option<u32> = None;
        for x in 0..info.width {
            let p = start + x as usize * cpp;
            let differs = before[p..p + cpp] != after[p..p + cpp];
            match (differs, run) {
                (true, None) => run = Some(x),
                (false, Some(a)) => {
                    set.add_span(y, a, x);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(a) = run {
            set.add_span(y, a, info.width);
        }
    }
    set
}

/// Bytes `0..info.end()` of the BO (pread on its memfd: not through any
/// tracked mapping).
pub fn bo_image_bytes(bo: &Bo, info: &ImageInfo) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![0u8; info.end() as usize];
    bo.read_at(0, &mut out)?;
    Ok(out)
}

/// A read-only mapping of an exported image resource (the soft backend's
/// sealed memfd, a DRM or GBM dma-buf).
pub struct GpuImage {
    map: SharedMapping,
    info: ImageInfo,
}

impl GpuImage {
    /// Maps `res`, which must describe an image.
    pub fn map(res: &ExportedResource) -> anyhow::Result<Self> {
        let info = res
            .image
            .ok_or_else(|| anyhow::anyhow!("export of an image BO has no image description"))?;
        anyhow::ensure!(
            res.size >= info.end(),
            "exported resource ({} bytes) is shorter than its image ({} bytes: {info:?})",
            res.size,
            info.end()
        );
        let map = SharedMapping::map(res.fd.as_fd(), info.end(), 0, false)?;
        Ok(Self { map, info })
    }

    /// Bytes `0..info.end()` of the GPU copy.
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = vec![0u8; self.info.end() as usize];
        self.map.read_at(0, &mut out)?;
        Ok(out)
    }

    /// The image layout the export stated.
    pub fn info(&self) -> &ImageInfo {
        &self.info
    }
}

/// Where two copies of an image's bytes differ, from the first row's start
/// to the last row's last pixel (padding included): the first differing
/// byte as a pixel (or a padding byte), and how many bytes differ.
pub fn image_difference(info: &ImageInfo, want: &[u8], got: &[u8]) -> Option<String> {
    let (start, end) = (info.offset as usize, info.end() as usize);
    if want.get(start..end).is_some() && want.get(start..end) == got.get(start..end) {
        return None;
    }
    let first = (start..end).find(|&i| want.get(i) != got.get(i))?;
    let differing = (start..end).filter(|&i| want.get(i) != got.get(i)).count();
    let rel = (first - start) as u64;
    let (y, col) = (rel / u64::from(info.pitch), rel % u64::from(info.pitch));
    let cpp = u64::from(info.bytes_per_pixel());
    let place = if col < u64::from(info.width) * cpp {
        format!("pixel ({}, {y})", col / cpp)
    } else {
        format!("row {y} padding byte {}", col - u64::from(info.width) * cpp)
    };
    Some(format!(
        "{differing} bytes differ, first at BO byte {first} ({place}): want {:?}, got {:?}",
        want.get(first),
        got.get(first)
    ))
}

/// The bytes of one pixel of colour `color` (XRGB8888/ARGB8888: the u32;
/// RGB565: its low 16 bits), little endian.
pub fn pixel_bytes(info: &ImageInfo, color: u32) -> Vec<u8> {
    color.to_le_bytes()[..info.bytes_per_pixel() as usize].to_vec()
}

/// Fills columns `x..x + w` of row `y` with `color` through `map` (a
/// mapping of the whole BO).
pub fn fill_span(map: &Mapping, info: &ImageInfo, x: u32, y: u32, w: u32, color: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        x + w <= info.width && y < info.height,
        "span {x}+{w} of row {y} outside {}x{}",
        info.width,
        info.height
    );
    let px = pixel_bytes(info, color);
    let row: Vec<u8> = px.iter().copied().cycle().take(px.len() * w as usize).collect();
    map.write(info.pixel_offset(x, y) as usize, &row)?;
    Ok(())
}

/// Fills `r` with `color` through `map`.
pub fn fill_rect(map: &Mapping, info: &ImageInfo, r: &Rect, color: u32) -> anyhow::Result<()> {
    for y in r.y..r.y + r.h {
        fill_span(map, info, r.x, y, r.w, color)?;
    }
    Ok(())
}

/// Checks the rectangles of a sync of an image BO against everything the
/// test knows: they lie in the image, cover every pixel the test changed,
/// and (unless merged) are disjoint, cover exactly the pixels of the page
/// runs, and are what the stated rules make of them (same count, none
/// joinable); merged only when the rules give more than the cap. Returns
/// the pixels the rects cover. `what` names the frame in messages.
pub fn check_rects(
    info: &ImageInfo,
    done: &cohmem_client::SyncResult,
    changed: &PixelSet,
    page_size: u64,
    what: &str,
) -> anyhow::Result<PixelSet> {
    use anyhow::ensure;
    let cap = cohmem_client::MAX_DAMAGE_RECTS;
    ensure!(!done.runs_truncated, "{what}: runs truncated ({} runs)", done.run_count);
    ensure!(
        done.rects.len() <= cap,
        "{what}: {} rects, over the cap {cap}",
        done.rects.len()
    );
    for r in &done.rects {
        ensure!(
            r.w > 0 && r.h > 0 && r.x + r.w <= info.width && r.y + r.h <= info.height,
            "{what}: rect {r:?} empty or outside the {}x{} image",
            info.width,
            info.height
        );
    }
    let covered = PixelSet::from_rects(info.width, info.height, &done.rects);
    if let Some((x, y)) = changed.first_outside(&covered) {
        anyhow::bail!(
            "{what}: changed pixel ({x}, {y}) lies in no reported rect ({} changed, {} rects: {:?})",
            changed.count(),
            done.rects.len(),
            &done.rects[..done.rects.len().min(8)]
        );
    }
    let implied = pixels_of_runs(info, &done.runs, page_size);
    // The runs themselves must hold every change (else the comparison
    // below would only check the rects against an already wrong set).
    if let Some((x, y)) = changed.first_outside(&implied) {
        anyhow::bail!(
            "{what}: changed pixel ({x}, {y}) lies in no uploaded page: {:?}",
            done.runs
        );
    }
    let reference = reference_rects(info, &done.runs, page_size);
    if done.rects_merged {
        if let Some((x, y)) = implied.first_outside(&covered) {
            anyhow::bail!("{what}: merged rects miss pixel ({x}, {y}) of an uploaded page");
        }
        ensure!(
            reference.len() > cap,
            "{what}: rects merged although the runs make only {} rects (cap {cap})",
            reference.len()
        );
    } else {
        let area: u64 = done.rects.iter().map(Rect::area).sum();
        ensure!(
            area == covered.count(),
            "{what}: rects overlap ({area} pixels in rects, {} distinct): {:?}",
            covered.count(),
            done.rects
        );
        if let Some((x, y, in_rects)) = covered.first_difference(&implied) {
            anyhow::bail!(
                "{what}: pixel ({x}, {y}) is {} the rects but {} the uploaded pages {:?}",
                if in_rects { "in" } else { "not in" },
                if in_rects { "not in" } else { "in" },
                &done.runs[..done.runs.len().min(16)]
            );
        }
        ensure!(
            reference.len() <= cap,
            "{what}: the runs make {} rects, over the cap {cap}, yet the reply says not merged",
            reference.len()
        );
        ensure!(
            done.rects.len() == reference.len(),
            "{what}: {} rects where the rules give {}: got {:?}, reference {:?}",
            done.rects.len(),
            reference.len(),
            &done.rects[..done.rects.len().min(12)],
            &reference[..reference.len().min(12)]
        );
        for (i, a) in done.rects.iter().enumerate() {
            for b in &done.rects[i + 1..] {
                ensure!(
                    joinable(a, b).is_none(),
                    "{what}: rects {a:?} and {b:?} were not coalesced"
                );
            }
        }
    }
    Ok(covered)
}

/// A random rectangle of at most `max_w` × `max_h` pixels inside the image.
pub fn random_rect(rng: &mut SplitMix64, info: &ImageInfo, max_w: u32, max_h: u32) -> Rect {
    let w = 1 + rng.below(u64::from(max_w.min(info.width))) as u32;
    let h = 1 + rng.below(u64::from(max_h.min(info.height))) as u32;
    Rect {
        x: rng.below(u64::from(info.width - w + 1)) as u32,
        y: rng.below(u64::from(info.height - h + 1)) as u32,
        w,
        h,
    }
}

/// Draws 1..=5 random shapes through `map` (a mapping of the whole BO):
/// rectangles, horizontal and vertical lines, single pixels, full-width
/// bands, each in a random colour. Returns what it drew, for messages.
pub fn draw_random(map: &Mapping, info: &ImageInfo, rng: &mut SplitMix64) -> anyhow::Result<Vec<String>> {
    let (width, height) = (info.width, info.height);
    let mut drawn = Vec::new();
    for _ in 0..1 + rng.below(5) {
        let color = rng.next_u64() as u32;
        let shape = match rng.below(5) {
            0 => random_rect(rng, info, 300, 60),
            1 => random_rect(rng, info, width, 1),
            2 => random_rect(rng, info, 1, height),
            3 => {
                let h = 1 + rng.below(u64::from(height.min(8))) as u32;
                let y = rng.below(u64::from(height - h + 1)) as u32;
                Rect { x: 0, y, w: width, h }
            }
            _ => {
                let n = 1 + rng.below(20);
                for _ in 0..n {
                    let p = random_rect(rng, info, 1, 1);
                    fill_rect(map, info, &p, rng.next_u64() as u32)?;
                }
                drawn.push(format!("{n} pixels"));
                continue;
            }
        };
        fill_rect(map, info, &shape, color)?;
        drawn.push(format!("{shape:?}"));
    }
    Ok(drawn)
}

/// `rounds` frames of [`draw_random`] into the image BO `bo` (mapped whole
/// as `map`), each synced with its runs and checked by [`check_rects`]
/// against the pixels that changed; then `gpu(round, bo_bytes)` compares
/// the device's copy with the BO's bytes `0..info.end()`.
pub fn random_frames(
    bo: &Bo,
    map: &Mapping,
    rounds: u32,
    seed: u64,
    mut gpu: impl FnMut(u32, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let info = bo
        .image()
        .ok_or_else(|| anyhow::anyhow!("random_frames needs an image BO"))?;
    let mut rng = SplitMix64::new(seed);
    let mut prev = bo_image_bytes(bo, &info)?;
    for round in 0..rounds {
        let drawn = draw_random(map, &info, &mut rng)?;
        let done = bo.sync_with_runs()?;
        let now = bo_image_bytes(bo, &info)?;
        let changed = changed_pixels(&info, &prev, &now);
        let what = format!("round {round} (seed {seed}: {drawn:?})");
        check_rects(&info, &done, &changed, cohmem_sys::page_size(), &what)?;
        gpu(round, &now)?;
        prev = now;
    }
    Ok(())
}
