//! Image BOs on the wire: pixel formats, the layout the GPU backend chose,
//! and damage rectangles (DESIGN.md §8; vmwgfx surfaces turn the byte ranges
//! of `transfer_to_res` into dirty boxes, research/vmwgfx-dirty-spec.md §4.6).

use crate::codec::{DecodeError, Reader, Writer};

/// DRM fourcc codes (`drm_fourcc.h`) an image BO may have.
pub mod fourcc {
    /// `DRM_FORMAT_XRGB8888` ('XR24'): 32 bpp, x:R:G:B little endian.
    pub const XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
    /// `DRM_FORMAT_ARGB8888` ('AR24'): 32 bpp, A:R:G:B little endian.
    pub const ARGB8888: u32 = u32::from_le_bytes(*b"AR24");
    /// `DRM_FORMAT_RGB565` ('RG16'): 16 bpp, R:G:B 5:6:5 little endian.
    pub const RGB565: u32 = u32::from_le_bytes(*b"RG16");

    /// Bytes per pixel of a format this protocol knows, `None` otherwise.
    pub fn bytes_per_pixel(fourcc: u32) -> Option<u32> {
        match fourcc {
            XRGB8888 | ARGB8888 => Some(4),
            RGB565 => Some(2),
            _ => None,
        }
    }

    /// The fourcc as its four characters (`XR24`), or its hex value where
    /// they are not printable.
    pub fn name(fourcc: u32) -> String {
        let b = fourcc.to_le_bytes();
        if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            b.iter().map(|&c| c as char).collect()
        } else {
            format!("{fourcc:#010x}")
        }
    }
}

/// `DRM_FORMAT_MOD_LINEAR`: rows one after the other, `pitch` bytes apart.
pub const MODIFIER_LINEAR: u64 = 0;

/// Most rectangles a SYNC reports for an image BO (DIRTYFB takes at most
/// 256 clips); more are merged where that costs the fewest extra pixels.
pub const MAX_DAMAGE_RECTS: usize = 256;

/// How an image BO's bytes are laid out: exactly as the GPU backend laid
/// out the device image, so a byte offset means the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels (rows).
    pub height: u32,
    /// DRM fourcc ([`fourcc`]).
    pub fourcc: u32,
    /// Bytes from the start of one row to the start of the next.
    pub pitch: u32,
    /// Byte offset of the first row in the BO (and in the exported buffer).
    pub offset: u64,
    /// DRM format modifier ([`MODIFIER_LINEAR`]).
    pub modifier: u64,
}

impl ImageInfo {
    /// A linear image whose first row starts at byte 0.
    pub fn linear(width: u32, height: u32, fourcc: u32, pitch: u32) -> Self {
        Self {
            width,
            height,
            fourcc,
            pitch,
            offset: 0,
            modifier: MODIFIER_LINEAR,
        }
    }

    /// Bytes per pixel of the format (0 if the protocol does not know it).
    pub fn bytes_per_pixel(&self) -> u32 {
        fourcc::bytes_per_pixel(self.fourcc).unwrap_or(0)
    }

    /// Byte offset of pixel (`x`, `y`) in the BO.
    pub fn pixel_offset(&self, x: u32, y: u32) -> u64 {
        self.offset + u64::from(y) * u64::from(self.pitch) + u64::from(x) * u64::from(self.bytes_per_pixel())
    }

    /// Bytes from the start of the BO to the end of the last row's pixels.
    pub fn end(&self) -> u64 {
        if self.height == 0 {
            return self.offset;
        }
        self.pixel_offset(0, self.height - 1) + u64::from(self.width) * u64::from(self.bytes_per_pixel())
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.width);
        w.u32(self.height);
        w.u32(self.fourcc);
        w.u32(self.pitch);
        w.u64(self.offset);
        w.u64(self.modifier);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            width: r.u32("image.width")?,
            height: r.u32("image.height")?,
            fourcc: r.u32("image.fourcc")?,
            pitch: r.u32("image.pitch")?,
            offset: r.u64("image.offset")?,
            modifier: r.u64("image.modifier")?,
        })
    }

    /// Writes an optional image description: a `u8` presence flag, then the
    /// fields if present.
    pub(crate) fn write_optional(image: &Option<Self>, w: &mut Writer<'_>) {
        match image {
            Some(i) => {
                w.u8(1);
                i.write(w);
            }
            None => w.u8(0),
        }
    }

    /// Reads what [`ImageInfo::write_optional`] wrote.
    pub(crate) fn read_optional(r: &mut Reader<'_>) -> Result<Option<Self>, DecodeError> {
        match r.u8("image.present")? {
            0 => Ok(None),
            1 => Ok(Some(Self::read(r)?)),
            other => Err(DecodeError::BadValue {
                field: "image.present",
                value: u64::from(other),
            }),
        }
    }
}

/// A rectangle of pixels: columns `x..x + w`, rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Rect {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Width in pixels (at least 1).
    pub w: u32,
    /// Height in rows (at least 1).
    pub h: u32,
}

impl Rect {
    /// Pixels covered.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }

    /// Whether pixel (`x`, `y`) lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.w && y - self.y < self.h
    }

    /// The smallest rectangle covering both (clamped at `u32::MAX` for
    /// rectangles that reach past it, as a decoded one may).
    pub fn union(&self, other: &Rect) -> Rect {
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = self.x.saturating_add(self.w).max(other.x.saturating_add(other.w));
        let y1 = self.y.saturating_add(self.h).max(other.y.saturating_add(other.h));
        Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }
}

/// The damage of an image BO in a SYNC reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageDamage {
    /// Rectangles of pixels the sync (and any background upload since the
    /// BO's previous SYNC) changed on the GPU copy, at most
    /// [`MAX_DAMAGE_RECTS`]; every changed pixel lies in one of them.
    pub rects: Vec<Rect>,
    /// True when rectangles were merged to stay under the cap, so they may
    /// cover pixels no dirty page touched.
    pub merged: bool,
}

impl ImageDamage {
    /// Encodes at most [`MAX_DAMAGE_RECTS`] rectangles: any beyond are
    /// folded into the last one (and `merged` set), so no damaged pixel is
    /// ever dropped from the wire.
    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        let n = self.rects.len().min(MAX_DAMAGE_RECTS);
        let mut rects = self.rects[..n].to_vec();
        if let Some(last) = rects.last_mut() {
            for extra in &self.rects[n..] {
                *last = last.union(extra);
            }
        }
        w.u8(u8::from(self.merged || n < self.rects.len()));
        w.u16(n as u16);
        for r in &rects {
            w.u32(r.x);
            w.u32(r.y);
            w.u32(r.w);
            w.u32(r.h);
        }
    }

    pub(crate) fn write_optional(damage: &Option<Self>, w: &mut Writer<'_>) {
        match damage {
            Some(d) => {
                w.u8(1);
                d.write(w);
            }
            None => w.u8(0),
        }
    }

    pub(crate) fn read_optional(r: &mut Reader<'_>) -> Result<Option<Self>, DecodeError> {
        match r.u8("damage.present")? {
            0 => Ok(None),
            1 => Ok(Some(Self::read(r)?)),
            other => Err(DecodeError::BadValue {
                field: "damage.present",
                value: u64::from(other),
            }),
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let merged = r.u8("damage.merged")? != 0;
        let n = r.count_u16("damage.count", MAX_DAMAGE_RECTS)?;
        crate::codec::check_limit("damage.count", n * 16, r.remaining())?;
        let mut rects = Vec::with_capacity(n);
        for _ in 0..n {
            rects.push(Rect {
                x: r.u32("rect.x")?,
                y: r.u32("rect.y")?,
                w: r.u32("rect.w")?,
                h: r.u32("rect.h")?,
            });
        }
        Ok(Self { rects, merged })
    }
}
