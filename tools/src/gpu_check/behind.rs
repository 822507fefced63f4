//! Writing into a BO's GPU buffer behind the daemon's back (`cohmem-verify
//! --corrupt-page`, `--corrupt`): the check must then find exactly what
//! was written, which proves it reads the buffer the daemon uploads into.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::Context;
use cohmem_client::{ExportedResource, ImageInfo, Rect};
use cohmem_sys::mapping::SharedMapping;

use super::image::corrupt_pixel;
use super::is_dmabuf;

/// A writable mapping of an exported resource's buffer, made behind the
/// daemon's back.
pub struct Behind {
    /// The mapping, from the buffer's byte 0.
    pub map: SharedMapping,
    /// How it was made.
    pub how: &'static str,
    // The PRIME import the mapping was made through (kept while it is used).
    _gem: Option<cohmem_sys::drm::GemHandle>,
}

/// Maps `len` bytes of the buffer `res` exports writable: through the DRM
/// device (PRIME import of the dma-buf, mapped with the dumb-buffer path),
/// or a writable mapping of the exported fd itself.
pub fn map_behind(res: &ExportedResource, card: Option<&Path>, len: u64) -> anyhow::Result<Behind> {
    if let (true, Some(card)) = (is_dmabuf(res.fd.as_fd()), card) {
        let dev = cohmem_sys::drm::DrmDevice::open(card).with_context(|| format!("opening {}", card.display()))?;
        let gem = dev
            .import_prime(res.fd.as_fd())
            .context("PRIME import of the resource")?;
        let map = gem.map_writable(len).context("mapping the resource writable")?;
        return Ok(Behind {
            map,
            how: "through the DRM device",
            _gem: Some(gem),
        });
    }
    let map = SharedMapping::map(res.fd.as_fd(), len, 0, true).context(
        "the resource cannot be written behind the daemon's back (the software backend's memfd is sealed \
         read-only, and no DRM device is known)",
    )?;
    Ok(Behind {
        map,
        how: "through a writable mapping of the exported fd",
        _gem: None,
    })
}

/// Overwrites rectangle `r` of the image laid out as `info` in the mapped
/// buffer with different bytes ([`corrupt_pixel`]), row by row.
pub fn corrupt_rect_behind(behind: &Behind, info: &ImageInfo, r: &Rect) -> anyhow::Result<()> {
    let bpp = info.bytes_per_pixel() as usize;
    let mut row = vec![0u8; r.w as usize * bpp];
    for y in r.y..r.y + r.h {
        let at = info.pixel_offset(r.x, y) as usize;
        behind.map.read_at(at, &mut row)?;
        for (i, px) in row.chunks_exact_mut(bpp).enumerate() {
            corrupt_pixel(px, r.x + i as u32, y);
        }
        behind.map.write_at(at, &row)?;
    }
    Ok(())
}
