//! The CPU's side of checking an image BO (issue 16): the texels the GPU
//! should read for a pixel's bytes in the channel order it returns for the
//! fourcc, the checksums the compare shader computes, 64x64 tiles and
//! rectangles, and the bytes `--corrupt` writes.

use std::collections::BTreeSet;

use cohmem_client::{fourcc, ImageInfo, Rect};

use super::image_gl::SEGMENT;

/// Side of the square tiles differing pixels are counted in.
pub const TILE: u32 = SEGMENT;

const FNV_OFFSET: u32 = 2_166_136_261;
const FNV_PRIME: u32 = 16_777_619;

/// How a pixel's bytes reach the shader as `.rgba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TexelOrder {
    /// As the fourcc defines (XRGB8888, ARGB8888: `.r` is byte 2 of the
    /// little-endian word, `.b` byte 0, `.a` byte 3, or 255 for XRGB8888).
    Format,
    /// `.r` and `.b` swapped (a driver that returns another order).
    SwappedRb,
}

/// The texel the GPU should read for the pixel `px` (its bytes in memory)
/// of format `code`.
pub fn texel(code: u32, px: &[u8], order: TexelOrder) -> [u8; 4] {
    let a = if code == fourcc::ARGB8888 { px[3] } else { 0xff };
    match order {
        TexelOrder::Format => [px[2], px[1], px[0], a],
        TexelOrder::SwappedRb => [px[0], px[1], px[2], a],
    }
}

/// The texels of the image `info` describes in `bytes` (from the BO's or
/// the buffer's byte 0), tightly packed RGBA, row after row.
pub fn expected_texels(bytes: &[u8], info: &ImageInfo, order: TexelOrder) -> Vec<u8> {
    let bpp = info.bytes_per_pixel() as usize;
    let mut out = Vec::with_capacity(info.width as usize * info.height as usize * 4);
    for y in 0..info.height {
        let row = &bytes[info.pixel_offset(0, y) as usize..info.pixel_offset(info.width, y) as usize];
        for px in row.chunks_exact(bpp) {
            out.extend_from_slice(&texel(info.fourcc, px, order));
        }
    }
    out
}

/// FNV-1a of each 64-pixel row segment of `texels` (`width` × `height`,
/// tightly packed RGBA) over the words `r | g << 8 | b << 16 | a << 24`,
/// row-major: what the shader computes from what it reads.
pub fn segment_checksums(texels: &[u8], width: u32) -> Vec<u32> {
    texels
        .chunks(width as usize * 4)
        .flat_map(|row| row.chunks(SEGMENT as usize * 4))
        .map(|seg| {
            seg.chunks_exact(4).fold(FNV_OFFSET, |h, t| {
                (h ^ u32::from_le_bytes([t[0], t[1], t[2], t[3]])).wrapping_mul(FNV_PRIME)
            })
        })
        .collect()
}

/// `r` grown to whole 64x64 tiles, clipped to the image.
pub fn tile_aligned(r: &Rect, width: u32, height: u32) -> Rect {
    let (x0, y0) = (r.x / TILE * TILE, r.y / TILE * TILE);
    let x1 = (r.x + r.w).div_ceil(TILE) * TILE;
    let y1 = (r.y + r.h).div_ceil(TILE) * TILE;
    Rect {
        x: x0,
        y: y0,
        w: x1.min(width) - x0,
        h: y1.min(height) - y0,
    }
}

/// The tiles `(column, row)` a rectangle touches.
pub fn tiles_of(r: &Rect) -> BTreeSet<(u32, u32)> {
    let cols = r.x / TILE..(r.x + r.w).div_ceil(TILE);
    let rows = r.y / TILE..(r.y + r.h).div_ceil(TILE);
    rows.flat_map(|ty| cols.clone().map(move |tx| (tx, ty))).collect()
}

/// Parses `X,Y,W,H`.
pub fn parse_rect(s: &str) -> Result<Rect, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not X,Y,W,H"))?;
    match v[..] {
        [x, y, w, h] if w > 0 && h > 0 => Ok(Rect { x, y, w, h }),
        _ => Err(format!("{s:?} is not X,Y,W,H with W and H at least 1")),
    }
}

/// The rectangle `--corrupt` takes without one: about a tenth of each side,
/// a third of the way in, on no tile boundary where the image allows.
pub fn default_corrupt_rect(width: u32, height: u32) -> Rect {
    let (x, y) = ((width / 3 + 5).min(width - 1), (height / 4 + 3).min(height - 1));
    Rect {
        x,
        y,
        w: (width / 10 + 1).min(width - x),
        h: (height / 7 + 1).min(height - y),
    }
}

/// Overwrites pixel (`x`, `y`)'s bytes with different ones: blue and green
/// change (so the pixel differs on the GPU in every format checked).
pub fn corrupt_pixel(px: &mut [u8], x: u32, y: u32) {
    px[0] ^= 0x80 | ((x ^ y.rotate_left(3)) & 0x7f) as u8;
    px[1] ^= 0x3c;
}

/// Corrupts rectangle `r` of the image `info` describes in `bytes` (from
/// the buffer's byte 0).
pub fn corrupt_rect(bytes: &mut [u8], info: &ImageInfo, r: &Rect) {
    let bpp = info.bytes_per_pixel() as usize;
    for y in r.y..r.y + r.h {
        for x in r.x..r.x + r.w {
            let at = info.pixel_offset(x, y) as usize;
            corrupt_pixel(&mut bytes[at..at + bpp], x, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(width: u32, height: u32, pitch: u32, offset: u64) -> ImageInfo {
        ImageInfo {
            width,
            height,
            fourcc: fourcc::XRGB8888,
            pitch,
            offset,
            modifier: 0,
        }
    }

    #[test]
    fn texels_are_in_the_order_an_import_of_the_fourcc_returns() {
        let px = 0x11223344u32.to_le_bytes();
        assert_eq!(
            texel(fourcc::XRGB8888, &px, TexelOrder::Format),
            [0x22, 0x33, 0x44, 0xff]
        );
        assert_eq!(
            texel(fourcc::ARGB8888, &px, TexelOrder::Format),
            [0x22, 0x33, 0x44, 0x11]
        );
        assert_eq!(
            texel(fourcc::ARGB8888, &px, TexelOrder::SwappedRb),
            [0x44, 0x33, 0x22, 0x11]
        );
        // Padding between rows and before the first is skipped.
        let i = info(2, 2, 12, 4);
        let bytes: Vec<u8> = (0..i.end() as u8).collect();
        let t = expected_texels(&bytes, &i, TexelOrder::Format);
        assert_eq!(t, [6, 5, 4, 255, 10, 9, 8, 255, 18, 17, 16, 255, 22, 21, 20, 255]);
        assert_eq!(segment_checksums(&t, 2).len(), 2);
    }

    #[test]
    fn rectangles_tiles_and_defaults() {
        let r = Rect {
            x: 338,
            y: 78,
            w: 97,
            h: 41,
        };
        assert_eq!(
            default_corrupt_rect(1000, 300),
            Rect {
                x: 338,
                y: 78,
                w: 101,
                h: 43
            }
        );
        assert_eq!(
            tile_aligned(&r, 1000, 300),
            Rect {
                x: 320,
                y: 64,
                w: 128,
                h: 64
            }
        );
        assert_eq!(
            tile_aligned(
                &Rect {
                    x: 990,
                    y: 290,
                    w: 10,
                    h: 10
                },
                1000,
                300
            ),
            Rect {
                x: 960,
                y: 256,
                w: 40,
                h: 44
            }
        );
        assert_eq!(tiles_of(&r), [(5, 1), (6, 1)].into_iter().collect());
        assert_eq!(parse_rect("1, 2,3,4"), Ok(Rect { x: 1, y: 2, w: 3, h: 4 }));
        assert!(parse_rect("1,2,0,4").is_err() && parse_rect("1,2,3").is_err());
        for (w, h) in [(1, 1), (2, 3), (1000, 300)] {
            let d = default_corrupt_rect(w, h);
            assert!(
                d.w >= 1 && d.h >= 1 && d.x + d.w <= w && d.y + d.h <= h,
                "{w}x{h}: {d:?}"
            );
        }
    }
}
