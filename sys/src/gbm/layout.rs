//! Which bytes of a linear image are pixels, and where they lie in a
//! `gbm_bo_map` of its rows (pure arithmetic, tested without a device).

use std::ops::Range;

/// Where an image's pixels lie: row `y` is bytes `offset + y × stride`
/// onwards, its pixels the first `row_bytes` of them (`stride` ≥
/// `row_bytes` > 0).
#[derive(Debug, Clone, Copy)]
pub(super) struct RowLayout {
    pub(super) offset: u64,
    pub(super) stride: u64,
    pub(super) row_bytes: u64,
}

impl RowLayout {
    fn row_start(&self, y: u64) -> u64 {
        self.offset + y * self.stride
    }

    /// The rows `first..end` whose pixels `range` touches (none when it
    /// lies wholly before the first row or in one row's padding).
    pub(super) fn rows(&self, range: &Range<u64>) -> Option<Range<u64>> {
        let start = range.start.max(self.offset);
        if range.end <= start {
            return None;
        }
        let mut first = (start - self.offset) / self.stride;
        if (start - self.offset) % self.stride >= self.row_bytes {
            first += 1; // starts in a row's padding
        }
        let end = (range.end - 1 - self.offset) / self.stride + 1;
        (first < end).then_some(first..end)
    }

    /// The pieces of `range` to copy into a map of `rows` whose rows are
    /// `map_stride` bytes apart: buffer bytes and their offset from the
    /// map's start (pixel (0, `rows.start`)). With the buffer's own stride,
    /// one piece from the first pixel in range to the last (padding between
    /// rows included: it is the buffer's own); else one piece per row, of
    /// that row's pixels only.
    pub(super) fn pieces(&self, range: &Range<u64>, rows: &Range<u64>, map_stride: u64) -> Vec<(Range<u64>, u64)> {
        let first = self.row_start(rows.start);
        if map_stride == self.stride {
            let from = range.start.max(first);
            let to = range.end.min(self.row_start(rows.end - 1) + self.row_bytes);
            return vec![(from..to, from - first)];
        }
        rows.clone()
            .filter_map(|y| {
                let row = self.row_start(y);
                let from = range.start.max(row);
                let to = range.end.min(row + self.row_bytes);
                (from < to).then(|| (from..to, (y - rows.start) * map_stride + from - row))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::RowLayout;

    /// Rows of 10 pixel bytes every 16, starting at byte 8.
    const L: RowLayout = RowLayout {
        offset: 8,
        stride: 16,
        row_bytes: 10,
    };

    #[test]
    fn rows_skip_what_is_no_pixel() {
        assert_eq!(L.rows(&(0..8)), None, "before the first row");
        assert_eq!(L.rows(&(0..9)), Some(0..1));
        assert_eq!(L.rows(&(18..24)), None, "row 0's padding");
        assert_eq!(L.rows(&(18..25)), Some(1..2));
        assert_eq!(L.rows(&(17..40)), Some(0..2), "ends in row 1's padding");
        assert_eq!(L.rows(&(8..58)), Some(0..4));
    }

    #[test]
    fn pieces_are_one_copy_with_the_buffer_stride_else_per_row() {
        let range = 12..45;
        let rows = L.rows(&range).unwrap();
        assert_eq!(rows, 0..3);
        assert_eq!(L.pieces(&range, &rows, 16), vec![(12..45, 4)]);
        assert_eq!(
            L.pieces(&(12..70), &(0..4), 16),
            vec![(12..66, 4)],
            "ends at the last pixel"
        );
        // A map with rows 32 bytes apart: each row's pixels in range.
        assert_eq!(
            L.pieces(&range, &rows, 32),
            vec![(12..18, 4), (24..34, 32), (40..45, 64)]
        );
        // Starting in padding: the first piece starts at the next row.
        let from_padding = 20..45;
        let rows = L.rows(&from_padding).unwrap();
        assert_eq!(rows, 1..3);
        assert_eq!(L.pieces(&from_padding, &rows, 16), vec![(24..45, 0)]);
        assert_eq!(L.pieces(&from_padding, &rows, 32), vec![(24..34, 0), (40..45, 32)]);
    }
}
