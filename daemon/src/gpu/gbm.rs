//! The GBM backend (`--gpu gbm:/dev/dri/renderDN` or a card node; cargo
//! feature `gbm`): each resource is a linear ARGB8888 GBM buffer, one page a
//! row, written through `gbm_bo_map` (one map per dirty run), exported as a
//! dma-buf with `gbm_bo_get_fd`.
//!
//! An image ([`GpuBackend::create_image`]) is a linear GBM buffer of the
//! image's width, height and format (`gbm_bo_create` with
//! `GBM_BO_USE_LINEAR | GBM_BO_USE_RENDERING`; RGB565 where the driver
//! accepts it): the image's pitch is `gbm_bo_get_stride`, its offset
//! `gbm_bo_get_offset` of plane 0, its modifier linear (a buffer in more
//! planes or with another modifier is refused). A dirty run, cut at the
//! last row's last pixel, is copied through one `gbm_bo_map` of the
//! full-width rows it touches: one copy where the map's stride is the
//! buffer's, else one per row (skipping the bytes that are no pixel's).

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use cohmem_sys::gbm::{GbmBuffer, GbmDevice};
use cohmem_sys::mapping::SharedMapping;

use super::soft::{clip, image_bytes_per_pixel};
use super::{GpuBackend, GpuError, GpuResource, ImageInfo};

/// A GBM device.
pub struct GbmGpu {
    device: Arc<GbmDevice>,
    driver: String,
}

impl GbmGpu {
    /// Opens a GBM device on `path` and proves it can allocate and map a
    /// small linear buffer (Mesa may create a device it cannot allocate on).
    pub fn open(path: &Path) -> Result<Self, GpuError> {
        let device = GbmDevice::open(path)?;
        let driver = device.drm().info()?.driver;
        let ps = cohmem_sys::page_size();
        let probe = device
            .create_linear((ps / 4) as u32, 1)
            .map_err(|e| GpuError::Unsupported(format!("GBM on {} ({driver}): {e}", path.display())))?;
        let scratch = cohmem_sys::memfd::Memfd::create_sealed("cohmem-gbm-probe", ps)?;
        let src = SharedMapping::map(std::os::fd::AsFd::as_fd(&scratch), ps, 0, false)?;
        probe
            .write_rows(0, 1, ps as u32, &src, 0)
            .map_err(|e| GpuError::Unsupported(format!("GBM on {} ({driver}): {e}", path.display())))?;
        // A resource must be exportable as a dma-buf (bochs-drm on 6.1 has
        // no PRIME export: GBM allocates there but cannot export).
        probe.export_fd().map_err(|e| {
            GpuError::Unsupported(format!(
                "GBM on {} ({driver}) allocates but cannot export a dma-buf: {e}",
                path.display()
            ))
        })?;
        Ok(Self { device, driver })
    }

    /// The kernel driver under the GBM device.
    pub fn driver(&self) -> &str {
        &self.driver
    }
}

impl GpuBackend for GbmGpu {
    fn name(&self) -> String {
        format!(
            "gbm:{} ({}, libgbm {})",
            self.device.drm().path().display(),
            self.driver,
            self.device.backend()
        )
    }

    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        let ps = cohmem_sys::page_size();
        let too_large = |reason: String| GpuError::TooLarge { size, reason };
        let rows = u32::try_from(size.div_ceil(ps)).map_err(|_| too_large("too many page rows".into()))?;
        if size >= 1 << 32 {
            return Err(too_large(format!(
                "GBM buffers on {} are limited to 4 GiB",
                self.driver
            )));
        }
        let buffer = self
            .device
            .create_linear((ps / 4) as u32, rows)
            .map_err(|e| too_large(format!("{} refused it: {e}", self.driver)))?;
        if u64::from(buffer.stride()) < ps {
            return Err(GpuError::Unsupported(format!(
                "GBM gave a stride of {} bytes for rows of {ps}",
                buffer.stride()
            )));
        }
        Ok(Box::new(GbmResource {
            size,
            image: None,
            buffer,
        }))
    }

    fn create_image(&self, width: u32, height: u32, format: u32) -> Result<Box<dyn GpuResource>, GpuError> {
        let cpp = image_bytes_per_pixel(width, height, format)?;
        let refused = |reason: String| GpuError::image_refused(width, height, format, reason);
        let too_large = || refused(format!("GBM buffers on {} are limited to 4 GiB", self.driver));
        if (u64::from(width) * u64::from(cpp)).saturating_mul(u64::from(height)) >= 1 << 32 {
            return Err(too_large());
        }
        let buffer = self
            .device
            .create_image(width, height, format)
            .map_err(|e| refused(format!("{} refused it: {e}", self.driver)))?;
        if buffer.bytes_per_pixel() != cpp {
            return Err(GpuError::Unsupported(format!(
                "GBM on {} gave a {width}x{height} buffer of {} bytes a pixel, not {cpp}",
                self.driver,
                buffer.bytes_per_pixel()
            )));
        }
        let image = ImageInfo {
            width,
            height,
            fourcc: format,
            pitch: buffer.stride(),
            offset: u64::from(buffer.offset()),
            modifier: buffer.modifier(),
        };
        let size = image.end();
        debug_assert_eq!(size, buffer.image_end());
        if size >= 1 << 32 {
            return Err(too_large());
        }
        Ok(Box::new(GbmResource {
            size,
            image: Some(image),
            buffer,
        }))
    }
}

struct GbmResource {
    /// For an image, the end of its last row's pixels.
    size: u64,
    image: Option<ImageInfo>,
    buffer: GbmBuffer,
}

/// The page rows a byte range touches.
fn rows_of(r: &Range<u64>) -> (u32, u32) {
    let ps = cohmem_sys::page_size();
    let first = r.start / ps;
    let end = r.end.div_ceil(ps);
    (first as u32, (end - first) as u32)
}

impl GpuResource for GbmResource {
    fn size(&self) -> u64 {
        self.size
    }

    fn pitch(&self) -> u64 {
        match self.image {
            // Byte for byte the BO's layout: pages are contiguous.
            Some(_) => cohmem_sys::page_size(),
            None => u64::from(self.buffer.stride()),
        }
    }

    fn image(&self) -> Option<ImageInfo> {
        self.image
    }

    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        let ps = cohmem_sys::page_size();
        if self.image.is_some() {
            for r in runs.iter().filter_map(|r| clip(r, self.size)) {
                let at = (src_base + r.start) as usize;
                self.buffer.write_image_bytes(r, src, at)?;
            }
            return Ok(());
        }
        for r in runs {
            let (first, rows) = rows_of(r);
            let at = src_base + u64::from(first) * ps;
            self.buffer.write_rows(first, rows, ps as u32, src, at as usize)?;
        }
        Ok(())
    }

    fn download(&self, dst: &SharedMapping, dst_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        let ps = cohmem_sys::page_size();
        if self.image.is_some() {
            for r in runs.iter().filter_map(|r| clip(r, self.size)) {
                let at = (dst_base + r.start) as usize;
                self.buffer.read_image_bytes(r, dst, at)?;
            }
            return Ok(());
        }
        for r in runs {
            let (first, rows) = rows_of(r);
            let at = dst_base + u64::from(first) * ps;
            self.buffer.read_rows(first, rows, ps as u32, dst, at as usize)?;
        }
        Ok(())
    }

    fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        Ok(self.buffer.export_fd()?)
    }
}
