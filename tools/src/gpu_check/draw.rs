//! What `cohmem-verify --image` draws into an image BO (issue 16): random
//! filled rectangles, lines, single pixels and full-width bands in random
//! colours, written through the client's mapping and into a shadow copy,
//! one sync per round; and, per sync, whether every pixel that changed lies
//! in a rectangle the daemon reported.

use cohmem_client::{Bo, ClientError, ImageInfo, Mapping, Rect};

use crate::SplitMix64;

/// A shape drawn in one colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A filled rectangle.
    Fill(Rect),
    /// A straight line from one pixel to another (Bresenham).
    Line {
        /// Start.
        from: (u32, u32),
        /// End (inclusive).
        to: (u32, u32),
    },
    /// Scattered single pixels.
    Pixels(Vec<(u32, u32)>),
    /// Whole rows: `rows` rows from row `y`, every column.
    Band {
        /// First row.
        y: u32,
        /// Rows.
        rows: u32,
    },
}

impl Shape {
    /// A random shape inside a `width` × `height` image.
    pub fn random(rng: &mut SplitMix64, width: u32, height: u32) -> Self {
        let (w, h) = (u64::from(width), u64::from(height));
        let at = |rng: &mut SplitMix64| (rng.below(w) as u32, rng.below(h) as u32);
        match rng.below(8) {
            0..=2 => {
                let (x, y) = at(rng);
                // Mostly small, sometimes large.
                let (mw, mh) = if rng.below(4) == 0 {
                    (w, h)
                } else {
                    (w.min(96), h.min(64))
                };
                let rw = 1 + rng.below(mw.min(w - u64::from(x))) as u32;
                let rh = 1 + rng.below(mh.min(h - u64::from(y))) as u32;
                Self::Fill(Rect { x, y, w: rw, h: rh })
            }
            3..=4 => {
                let from = at(rng);
                let to = match rng.below(3) {
                    0 => (rng.below(w) as u32, from.1),
                    1 => (from.0, rng.below(h) as u32),
                    _ => at(rng),
                };
                Self::Line { from, to }
            }
            5..=6 => Self::Pixels((0..1 + rng.below(40)).map(|_| at(rng)).collect()),
            _ => {
                let y = rng.below(h) as u32;
                Self::Band {
                    y,
                    rows: 1 + rng.below((h - u64::from(y)).min(8)) as u32,
                }
            }
        }
    }

    /// The pixels the shape covers, as row spans `(y, first column, columns)`.
    pub fn spans(&self, width: u32) -> Vec<(u32, u32, u32)> {
        match self {
            Self::Fill(r) => (r.y..r.y + r.h).map(|y| (y, r.x, r.w)).collect(),
            Self::Band { y, rows } => (*y..y + rows).map(|y| (y, 0, width)).collect(),
            Self::Pixels(p) => p.iter().map(|&(x, y)| (y, x, 1)).collect(),
            Self::Line { from, to } => {
                let (mut x, mut y) = (i64::from(from.0), i64::from(from.1));
                let (x1, y1) = (i64::from(to.0), i64::from(to.1));
                let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
                let (sx, sy) = ((x1 - x).signum(), (y1 - y).signum());
                let mut err = dx + dy;
                let mut out = Vec::new();
                loop {
                    out.push((y as u32, x as u32, 1));
                    if x == x1 && y == y1 {
                        return out;
                    }
                    let e2 = 2 * err;
                    if e2 >= dy {
                        err += dy;
                        x += sx;
                    }
                    if e2 <= dx {
                        err += dx;
                        y += sy;
                    }
                }
            }
        }
    }
}

/// What the drawing rounds did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrawStats {
    /// Shapes drawn.
    pub shapes: u64,
    /// Pages the syncs uploaded.
    pub synced_pages: u64,
    /// Pixels whose value changed, summed over the syncs.
    pub changed_pixels: u64,
    /// Rectangles the syncs reported.
    pub rects: u64,
    /// Pixels the reported rectangles cover, summed over the syncs.
    pub covered_pixels: u64,
    /// Syncs whose rectangles were merged under the cap.
    pub merged_syncs: u32,
    /// Changed pixels that no reported rectangle of their sync contains
    /// (must be 0).
    pub uncovered_pixels: u64,
    /// The first uncovered pixel as (round, x, y).
    pub first_uncovered: Option<(u32, u32, u32)>,
}

/// Draws `rounds` rounds of 1 to 6 random shapes into image BO `bo` through
/// `map` (the whole BO) and into `shadow` (the BO's bytes), syncing after
/// each and checking the sync's rectangles against the pixels that changed.
pub fn draw_rounds(
    bo: &Bo,
    map: &Mapping,
    info: &ImageInfo,
    shadow: &mut [u8],
    rng: &mut SplitMix64,
    rounds: u32,
) -> Result<DrawStats, ClientError> {
    let bpp = info.bytes_per_pixel() as usize;
    let mut stats = DrawStats::default();
    let mut before = shadow.to_vec();
    for round in 0..rounds {
        for _ in 0..1 + rng.below(6) {
            let shape = Shape::random(rng, info.width, info.height);
            let colour = rng.next_u64().to_le_bytes();
            stats.shapes += 1;
            for (y, x, n) in shape.spans(info.width) {
                let at = info.pixel_offset(x, y) as usize;
                let run: Vec<u8> = colour[..bpp].iter().copied().cycle().take(n as usize * bpp).collect();
                map.write(at, &run)?;
                shadow[at..at + run.len()].copy_from_slice(&run);
            }
        }
        let s = bo.sync()?;
        stats.synced_pages += s.pages;
        stats.rects += s.rects.len() as u64;
        stats.covered_pixels += s.rects.iter().map(Rect::area).sum::<u64>();
        stats.merged_syncs += u32::from(s.rects_merged);
        for y in 0..info.height {
            let row = info.pixel_offset(0, y) as usize..info.pixel_offset(info.width, y) as usize;
            if shadow[row.clone()] == before[row.clone()] {
                continue;
            }
            for x in 0..info.width {
                let at = info.pixel_offset(x, y) as usize;
                if shadow[at..at + bpp] == before[at..at + bpp] {
                    continue;
                }
                stats.changed_pixels += 1;
                if !s.rects.iter().any(|r| r.contains(x, y)) {
                    stats.uncovered_pixels += 1;
                    stats.first_uncovered.get_or_insert((round, x, y));
                }
            }
            before[row.clone()].copy_from_slice(&shadow[row]);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_connected_and_end_where_asked() {
        let line = Shape::Line {
            from: (2, 9),
            to: (13, 3),
        };
        let spans = line.spans(100);
        assert_eq!(spans.first(), Some(&(9, 2, 1)));
        assert_eq!(spans.last(), Some(&(3, 13, 1)));
        for pair in spans.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(a.0.abs_diff(b.0) <= 1 && a.1.abs_diff(b.1) <= 1, "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn random_shapes_stay_inside_the_image() {
        let mut rng = SplitMix64::new(7);
        for (w, h) in [(1, 1), (3, 1000), (1000, 300), (1920, 1080)] {
            for _ in 0..2000 {
                for (y, x, n) in Shape::random(&mut rng, w, h).spans(w) {
                    assert!(y < h && n >= 1 && x + n <= w, "{w}x{h}: ({y}, {x}, {n})");
                }
            }
        }
    }
}
