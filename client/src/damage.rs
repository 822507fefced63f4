//! Batched damage on [`Bo`]: a cooperative client that knows what it wrote
//! (Wayland's `damage_buffer` before `commit`, DIRTYFB clips,
//! `vkFlushMappedMemoryRanges`) reports all of it in one DAMAGE_RANGES
//! request, and with [`Bo::sync_damaged`] syncs in the same round trip. An
//! image BO's damage may be given as rectangles, which become the byte
//! ranges of their rows in the BO's layout.

use std::ops::Range;

use cohmem_proto::limits::MAX_DAMAGE_RANGES;
use cohmem_proto::{ByteRange, ImageInfo, Rect, Reply, Request, DAMAGE_THEN_SYNC};

use crate::bo::Bo;
use crate::error::{unexpected, ClientError};
use crate::results::SyncResult;

impl Bo {
    /// Reports that the byte `ranges` of the BO were written (the
    /// `explicit` mechanism's damage; harmless, if redundant, under the
    /// others), in one request per 4000 ranges.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for an empty range or one that
    /// ends past the BO (nothing is reported then); the daemon's and the
    /// connection's errors as for any call.
    pub fn damage_ranges(&self, ranges: &[Range<u64>]) -> Result<(), ClientError> {
        let ranges = self.byte_ranges(ranges)?;
        for chunk in ranges.chunks(MAX_DAMAGE_RANGES) {
            self.send_damage(chunk, 0)?;
        }
        Ok(())
    }

    /// Reports the byte `ranges` written and syncs the BO, in one round trip
    /// when there are at most 4000 ranges: what a compositor's client does
    /// at commit. Equivalent to [`Bo::damage_ranges`] then [`Bo::sync`].
    ///
    /// # Errors
    ///
    /// As [`Bo::damage_ranges`] and [`Bo::sync`].
    pub fn sync_damaged(&self, ranges: &[Range<u64>]) -> Result<SyncResult, ClientError> {
        let ranges = self.byte_ranges(ranges)?;
        let (last, first) = match ranges.len() {
            0 => (&ranges[..], &ranges[..0]),
            n => {
                let cut = (n - 1) / MAX_DAMAGE_RANGES * MAX_DAMAGE_RANGES;
                (&ranges[cut..], &ranges[..cut])
            }
        };
        for chunk in first.chunks(MAX_DAMAGE_RANGES) {
            self.send_damage(chunk, 0)?;
        }
        match self.send_damage(last, DAMAGE_THEN_SYNC)? {
            Reply::SyncDone(s) => Ok(SyncResult::from_report(s, 0)),
            other => Err(unexpected("DAMAGE_RANGES", &other)),
        }
    }

    /// [`Bo::damage_ranges`] for an image BO, by rectangles of pixels.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] when the BO is not an image or a
    /// rectangle is empty or reaches past the image; otherwise as
    /// [`Bo::damage_ranges`].
    pub fn damage_rects(&self, rects: &[Rect]) -> Result<(), ClientError> {
        self.damage_ranges(&self.rect_ranges(rects)?)
    }

    /// [`Bo::sync_damaged`] for an image BO, by rectangles of pixels.
    ///
    /// # Errors
    ///
    /// As [`Bo::damage_rects`] and [`Bo::sync`].
    pub fn sync_damaged_rects(&self, rects: &[Rect]) -> Result<SyncResult, ClientError> {
        self.sync_damaged(&self.rect_ranges(rects)?)
    }

    fn send_damage(&self, ranges: &[ByteRange], flags: u32) -> Result<Reply, ClientError> {
        let (reply, _) = self.inner.call(
            |bo| Request::DamageRanges {
                bo,
                flags,
                ranges: ranges.to_vec(),
            },
            &[],
        )?;
        match (flags, reply) {
            (0, Reply::Ok) => Ok(Reply::Ok),
            (0, other) => Err(unexpected("DAMAGE_RANGES", &other)),
            (_, reply) => Ok(reply),
        }
    }

    /// Checks `ranges` against the BO's size and puts them in wire form.
    fn byte_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<ByteRange>, ClientError> {
        let size = self.size();
        ranges
            .iter()
            .map(|r| {
                if r.start >= r.end || r.end > size {
                    return Err(ClientError::InvalidArgument(format!(
                        "damage {}..{} is empty or outside the BO's {size} bytes",
                        r.start, r.end
                    )));
                }
                Ok(ByteRange {
                    offset: r.start,
                    len: r.end - r.start,
                })
            })
            .collect()
    }

    /// The byte ranges of `rects` in this image BO's layout.
    fn rect_ranges(&self, rects: &[Rect]) -> Result<Vec<Range<u64>>, ClientError> {
        let image = self.image().ok_or_else(|| {
            ClientError::InvalidArgument("damage by rectangles needs an image BO (create_image)".into())
        })?;
        let mut out = Vec::new();
        for r in rects {
            rect_rows(&image, r, &mut out)?;
        }
        Ok(out)
    }
}

/// Appends the byte ranges of rectangle `r`'s rows: one range for a band of
/// full-width rows (contiguous in memory when the pitch is the row's
/// length), else one per row.
fn rect_rows(image: &ImageInfo, r: &Rect, out: &mut Vec<Range<u64>>) -> Result<(), ClientError> {
    let inside = r.w > 0
        && r.h > 0
        && r.x.checked_add(r.w).is_some_and(|e| e <= image.width)
        && r.y.checked_add(r.h).is_some_and(|e| e <= image.height);
    if !inside {
        return Err(ClientError::InvalidArgument(format!(
            "rectangle {}x{} at ({}, {}) is empty or outside the {}x{} image",
            r.w, r.h, r.x, r.y, image.width, image.height
        )));
    }
    let cpp = u64::from(image.bytes_per_pixel());
    let row_bytes = u64::from(r.w) * cpp;
    if r.x == 0 && r.w == image.width && row_bytes == u64::from(image.pitch) {
        let start = image.pixel_offset(0, r.y);
        out.push(start..start + u64::from(r.h) * row_bytes);
        return Ok(());
    }
    for y in r.y..r.y + r.h {
        let start = image.pixel_offset(r.x, y);
        out.push(start..start + row_bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, pitch: u32) -> ImageInfo {
        ImageInfo::linear(width, height, cohmem_proto::fourcc::XRGB8888, pitch)
    }

    #[test]
    fn full_width_bands_are_one_range_and_others_one_per_row() {
        let img = image(16, 8, 64);
        let mut out = Vec::new();
        rect_rows(
            &img,
            &Rect {
                x: 0,
                y: 2,
                w: 16,
                h: 3,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![128..320]);
        out.clear();
        rect_rows(&img, &Rect { x: 1, y: 2, w: 2, h: 2 }, &mut out).unwrap();
        assert_eq!(out, vec![132..140, 196..204]);
        // A padded pitch: full-width rows are not contiguous.
        let padded = image(16, 8, 128);
        out.clear();
        rect_rows(
            &padded,
            &Rect {
                x: 0,
                y: 0,
                w: 16,
                h: 2,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![0..64, 128..192]);
    }

    #[test]
    fn rectangles_outside_the_image_are_refused() {
        let img = image(16, 8, 64);
        let mut out = Vec::new();
        for r in [
            Rect { x: 0, y: 0, w: 0, h: 1 },
            Rect {
                x: 15,
                y: 0,
                w: 2,
                h: 1,
            },
            Rect { x: 0, y: 7, w: 1, h: 2 },
            Rect {
                x: u32::MAX,
                y: 0,
                w: 2,
                h: 1,
            },
        ] {
            let e = rect_rows(&img, &r, &mut out).unwrap_err();
            assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
        }
        assert!(out.is_empty());
    }
}
