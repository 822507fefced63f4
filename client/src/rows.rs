//! Rows of an image BO's mapping ([`Row`], [`Rows`]): the visible bytes of
//! one row as a bounds-checked [`VolatileSlice`], and bulk copies of pixel
//! spans into it, so drawing a sprite is one `memcpy` per row, and pixels
//! computed on the fly are stored without a buffer in between.

use std::mem::size_of;

use cohmem_proto::ImageInfo;
use vm_memory::{ByteValued, VolatileSlice};

use crate::error::ClientError;
use crate::mapping::{as_bytes, as_bytes_mut, Mapping};

/// One row of an image BO, seen through a [`Mapping`]: its `width` visible
/// pixels (not the padding up to the pitch). Cheap to make and to copy;
/// borrows the mapping.
///
/// Pixels are the format's native units: `u32` for XRGB8888 and ARGB8888
/// (`0x00RRGGBB`, stored little-endian as the format says), `u16` for
/// RGB565.
#[derive(Clone, Copy, Debug)]
pub struct Row<'m> {
    mem: VolatileSlice<'m>,
    y: u32,
    width: u32,
    bytes_per_pixel: u32,
}

impl<'m> Row<'m> {
    /// The row's index in the image.
    pub fn y(&self) -> u32 {
        self.y
    }

    /// Pixels in the row (the image's width).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The row's visible bytes (`width * bytes_per_pixel`).
    pub fn as_volatile_slice(&self) -> VolatileSlice<'m> {
        self.mem
    }

    /// The bytes of pixels `x..x + count`, checked against the row and
    /// the pixel type.
    fn span<P>(&self, x: u32, count: usize) -> Result<VolatileSlice<'m>, ClientError> {
        if size_of::<P>() != self.bytes_per_pixel as usize {
            return Err(ClientError::InvalidArgument(format!(
                "pixels of {} bytes for an image of {} bytes per pixel: use u32 pixels for XRGB8888 and \
                 ARGB8888, u16 for RGB565",
                size_of::<P>(),
                self.bytes_per_pixel
            )));
        }
        let inside = (x as usize)
            .checked_add(count)
            .is_some_and(|end| end <= self.width as usize);
        if !inside {
            return Err(ClientError::InvalidArgument(format!(
                "pixels {x}..{x}+{count} of row {} reach past the image's width {} (clip the span to the \
                 image)",
                self.y, self.width
            )));
        }
        let bpp = self.bytes_per_pixel as usize;
        // In bounds: the span lies within the row, checked above.
        self.mem
            .subslice(x as usize * bpp, count * bpp)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))
    }

    /// Copies `pixels` into the row from pixel `x` on: one `memcpy`.
    ///
    /// ```no_run
    /// # use cohmem_client::{fourcc, Connection};
    /// # let conn = Connection::connect_default()?;
    /// let bo = conn.create_image(1920, 1080, fourcc::XRGB8888)?;
    /// let map = bo.map()?;
    /// let sprite = vec![0x00ff_0000u32; 64 * 64];
    /// for (dy, line) in sprite.chunks(64).enumerate() {
    ///     map.row(300 + dy as u32)?.write_pixels(500, line)?;
    /// }
    /// map.sync()?;
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] when the span reaches past the
    /// image's width or a pixel's size is not the format's (nothing is
    /// written then).
    pub fn write_pixels<P: ByteValued>(&self, x: u32, pixels: &[P]) -> Result<(), ClientError> {
        self.span::<P>(x, pixels.len())?.copy_from(as_bytes(pixels));
        Ok(())
    }

    /// Sets `count` pixels from `x` on to `pixel` (vectorised stores).
    ///
    /// # Errors
    ///
    /// As [`Row::write_pixels`].
    pub fn fill_pixels<P: ByteValued>(&self, x: u32, count: usize, pixel: P) -> Result<(), ClientError> {
        self.write_pixels_with(x, count, |_| pixel)
    }

    /// Stores `count` pixels from `x` on, pixel `x + i` being what
    /// `pixel(x + i)` returns: for pixels computed on the fly (gradients,
    /// patterns, blending), without a buffer in between. The span is
    /// checked once; the stores are plain stores through a pointer the
    /// library holds, which the compiler vectorises as it would raw-pointer
    /// code (no reference to the shared memory is made, as for the bulk
    /// copies).
    ///
    /// ```no_run
    /// # use cohmem_client::{fourcc, Connection};
    /// # let conn = Connection::connect_default()?;
    /// let bo = conn.create_image(1920, 1080, fourcc::XRGB8888)?;
    /// let map = bo.map()?;
    /// for row in map.rows()? {
    ///     let y = row.y();
    ///     row.write_pixels_with(0, 1920, |x| (x & 0xff) << 16 | (y & 0xff) << 8)?;
    /// }
    /// map.sync()?;
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Row::write_pixels`] (checked before any pixel is computed).
    pub fn write_pixels_with<P: ByteValued>(
        &self,
        x: u32,
        count: usize,
        mut pixel: impl FnMut(u32) -> P,
    ) -> Result<(), ClientError> {
        let span = self.span::<P>(x, count)?;
        let guard = span.ptr_guard_mut();
        let base = guard.as_ptr().cast::<P>();
        for i in 0..count {
            let value = pixel(x + i as u32);
            // The store goes through a raw pointer, never a reference, as the
            // bulk copies' `memcpy` does: another process writing the same
            // bytes can only make the pixel end up with either value.
            // SAFETY: `i < count` pixels of `span`, mapped while the row
            // borrows the mapping; an unaligned store needs no alignment.
            unsafe { base.add(i).write_unaligned(value) };
        }
        Ok(())
    }

    /// Copies pixels from `x` on out of the row into `pixels`.
    ///
    /// # Errors
    ///
    /// As [`Row::write_pixels`].
    pub fn read_pixels<P: ByteValued>(&self, x: u32, pixels: &mut [P]) -> Result<(), ClientError> {
        self.span::<P>(x, pixels.len())?.copy_to(as_bytes_mut(pixels));
        Ok(())
    }
}

/// The rows of an image BO, top to bottom ([`Mapping::rows`]).
#[derive(Clone, Debug)]
pub struct Rows<'m> {
    mem: VolatileSlice<'m>,
    image: ImageInfo,
    /// Offset of row 0 in the mapping.
    base: usize,
    next: u32,
    end: u32,
}

impl<'m> Iterator for Rows<'m> {
    type Item = Row<'m>;

    fn next(&mut self) -> Option<Row<'m>> {
        if self.next >= self.end {
            return None;
        }
        let y = self.next;
        self.next += 1;
        let bpp = self.image.bytes_per_pixel();
        let start = self.base + y as usize * self.image.pitch as usize;
        // In bounds: `rows` checked that the mapping holds every row.
        let mem = self
            .mem
            .subslice(start, self.image.width as usize * bpp as usize)
            .ok()?;
        Some(Row {
            mem,
            y,
            width: self.image.width,
            bytes_per_pixel: bpp,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.next) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Rows<'_> {}

impl Mapping<'_> {
    /// The image layout of the BO, `None` for a byte BO (as
    /// [`Bo::image`](crate::Bo::image)).
    pub fn image(&self) -> Option<ImageInfo> {
        self.bo_inner().image
    }

    fn image_or_err(&self, what: &str) -> Result<ImageInfo, ClientError> {
        match self.image() {
            Some(image) if image.bytes_per_pixel() > 0 => Ok(image),
            Some(image) => Err(ClientError::InvalidArgument(format!(
                "{what}: the image's format {:#x} has no known pixel size",
                image.fourcc
            ))),
            None => Err(ClientError::InvalidArgument(format!(
                "{what} needs an image BO (Connection::create_image); this is a byte BO: use \
                 Mapping::write or Mapping::write_slice"
            ))),
        }
    }

    /// Offset of row `y` in this mapping.
    fn row_offset(&self, image: &ImageInfo, y: u32) -> Result<usize, ClientError> {
        let at = image.pixel_offset(0, y);
        at.checked_sub(self.bo_offset())
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "row {y} starts at byte {at} of the BO, before this mapping (which starts at {}): map \
                     the range that holds the rows you draw",
                    self.bo_offset()
                ))
            })
    }

    /// Row `y` of an image BO: its visible pixels, for
    /// [`Row::write_pixels`] and [`Row::fill_pixels`].
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for a byte BO or a row past the
    /// image's height; [`ClientError::OutOfBounds`] when this mapping (of a
    /// range of the BO) does not hold the row; [`ClientError::ForkedChild`]
    /// in a forked child.
    pub fn row(&self, y: u32) -> Result<Row<'_>, ClientError> {
        let image = self.image_or_err("row access")?;
        if y >= image.height {
            return Err(ClientError::InvalidArgument(format!(
                "row {y} is outside the {}x{} image",
                image.width, image.height
            )));
        }
        let bpp = image.bytes_per_pixel();
        let mem = self.volatile_range(self.row_offset(&image, y)?, image.width as usize * bpp as usize)?;
        Ok(Row {
            mem,
            y,
            width: image.width,
            bytes_per_pixel: bpp,
        })
    }

    /// Every row of an image BO, top to bottom.
    ///
    /// ```no_run
    /// # use cohmem_client::{fourcc, Connection};
    /// # let conn = Connection::connect_default()?;
    /// let bo = conn.create_image(640, 480, fourcc::XRGB8888)?;
    /// let map = bo.map()?;
    /// let mut line = vec![0u32; 640];
    /// for row in map.rows()? {
    ///     for (x, p) in line.iter_mut().enumerate() {
    ///         *p = (x as u32) << 8 | row.y() & 0xff; // a gradient
    ///     }
    ///     row.write_pixels(0, &line)?;
    /// }
    /// map.sync()?;
    /// # Ok::<(), cohmem_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for a byte BO;
    /// [`ClientError::OutOfBounds`] when this mapping does not hold the
    /// whole image (map all of the BO, or use [`Mapping::row`]);
    /// [`ClientError::ForkedChild`] in a forked child.
    pub fn rows(&self) -> Result<Rows<'_>, ClientError> {
        let image = self.image_or_err("row access")?;
        let base = self.row_offset(&image, 0)?;
        let end = usize::try_from(image.end() - image.offset).unwrap_or(usize::MAX);
        let mem = self.volatile_range(base, end)?;
        Ok(Rows {
            mem,
            image,
            base: 0,
            next: 0,
            end: image.height,
        })
    }
}
