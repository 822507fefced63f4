//! The DRM backend (`--gpu drm:/dev/dri/cardN`): each resource is a dumb
//! buffer on a primary node, the BO's pages laid out one page a row with the
//! driver's pitch (32 bpp, a page's worth of pixels a row), mapped with
//! `MODE_MAP_DUMB`. Dirty runs are copied in one copy per run where the
//! pitch equals the page size (every driver tried: bochs-drm, vgem), else one
//! copy per page row. Export is a PRIME dma-buf of the dumb buffer.
//!
//! An image ([`GpuBackend::create_image`]) is a dumb buffer of the image's
//! own width, height and bits per pixel (32 for XRGB8888 and ARGB8888, 16
//! for RGB565: dumb buffers take bpp, not formats, so a driver that refuses
//! 16 refuses RGB565); the driver's pitch is the image's, offset 0,
//! modifier linear. Its BO has the buffer's layout byte for byte, so a
//! dirty run is one copy, cut at the last row's last pixel.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use cohmem_sys::drm::{DrmDevice, DrmInfo, DumbBuffer, GemHandle};
use cohmem_sys::mapping::SharedMapping;
use nix::errno::Errno;

use super::soft::{clip, image_bytes_per_pixel};
use super::{GpuBackend, GpuError, GpuResource, ImageInfo};

/// Bits per pixel of every resource.
const BPP: u32 = 32;

/// A DRM device with dumb buffers.
pub struct DrmGpu {
    device: Arc<DrmDevice>,
    info: DrmInfo,
}

impl DrmGpu {
    /// Opens `path` and checks that it offers dumb buffers.
    pub fn open(path: &Path) -> Result<Self, GpuError> {
        let device = DrmDevice::open(path)?;
        let info = device.info()?;
        if !info.dumb_buffers {
            return Err(GpuError::Unsupported(format!(
                "{} ({}) has no dumb buffers (DRM_CAP_DUMB_BUFFER = 0 and MODE_CREATE_DUMB refused; a render node never has them: use its card node)",
                path.display(),
                info.driver
            )));
        }
        Ok(Self { device, info })
    }

    /// The driver's name.
    pub fn driver(&self) -> &str {
        &self.info.driver
    }

    /// Whether resources can be exported as dma-bufs (PRIME).
    pub fn can_export(&self) -> bool {
        self.info.prime_export
    }
}

impl GpuBackend for DrmGpu {
    fn name(&self) -> String {
        format!("drm:{} ({})", self.device.path().display(), self.info.driver)
    }

    fn kms_device(&self) -> Option<Arc<DrmDevice>> {
        Some(self.device.clone())
    }

    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        let ps = cohmem_sys::page_size();
        let width = (ps * 8 / u64::from(BPP)) as u32;
        let too_large = |reason: String| GpuError::TooLarge { size, reason };
        let rows = u32::try_from(size.div_ceil(ps))
            .map_err(|_| too_large("more page rows than a dumb buffer can have".into()))?;
        // The DRM core limits a dumb buffer to 4 GiB (u32 size arithmetic).
        if size >= 1 << 32 {
            return Err(too_large(format!(
                "dumb buffers are limited to 4 GiB by the DRM core ({})",
                self.info.driver
            )));
        }
        let buffer = self.device.create_dumb(width, rows, BPP).map_err(|e| match e.errno() {
            Some(Errno::ENOMEM | Errno::ENOSPC | Errno::EINVAL | Errno::E2BIG | Errno::EFBIG) => too_large(format!(
                "{} refused a {width}x{rows}x{BPP} dumb buffer: {e}",
                self.info.driver
            )),
            _ => GpuError::Sys(e),
        })?;
        let pitch = u64::from(buffer.pitch());
        if pitch < ps || buffer.size() < pitch * u64::from(rows) {
            return Err(GpuError::Unsupported(format!(
                "{} gave a dumb buffer with pitch {pitch} and size {} for {rows} rows of {ps} bytes",
                self.info.driver,
                buffer.size()
            )));
        }
        let mapping = buffer.map(true)?;
        Ok(Box::new(DrmResource {
            size,
            pitch,
            image: None,
            mapping,
            buffer: Buffer::Dumb(buffer),
            driver: self.info.driver.clone(),
            can_export: self.info.prime_export,
        }))
    }

    fn create_image(&self, width: u32, height: u32, format: u32) -> Result<Box<dyn GpuResource>, GpuError> {
        let cpp = image_bytes_per_pixel(width, height, format)?;
        let bpp = cpp * 8;
        let refused = |reason: String| GpuError::image_refused(width, height, format, reason);
        let too_large = || {
            refused(format!(
                "dumb buffers are limited to 4 GiB by the DRM core ({})",
                self.info.driver
            ))
        };
        // The core's own check (u32 arithmetic), made here to say why.
        if (u64::from(width) * u64::from(cpp)).saturating_mul(u64::from(height)) >= 1 << 32 {
            return Err(too_large());
        }
        let buffer =
            self.device
                .create_dumb(width, height, bpp)
                .map_err(|e| match e.errno() {
                    Some(Errno::ENOMEM | Errno::ENOSPC | Errno::EINVAL | Errno::E2BIG | Errno::EFBIG) => refused(
                        format!("{} refused a {width}x{height}x{bpp} dumb buffer: {e}", self.info.driver),
                    ),
                    _ => GpuError::Sys(e),
                })?;
        let pitch = buffer.pitch();
        let image = ImageInfo::linear(width, height, format, pitch);
        let size = image.end();
        if u64::from(pitch) < u64::from(width) * u64::from(cpp) || buffer.size() < size {
            return Err(GpuError::Unsupported(format!(
                "{} gave a {width}x{height}x{bpp} dumb buffer with pitch {pitch} and size {}, short of {size} bytes",
                self.info.driver,
                buffer.size()
            )));
        }
        if size >= 1 << 32 {
            return Err(too_large());
        }
        let mapping = buffer.map(true)?;
        if (mapping.len() as u64) < size {
            return Err(GpuError::Unsupported(format!(
                "{} mapped {} bytes of a dumb buffer of {size}",
                self.info.driver,
                mapping.len()
            )));
        }
        Ok(Box::new(DrmResource {
            size,
            // Byte for byte the BO's layout: pages are contiguous.
            pitch: cohmem_sys::page_size(),
            image: Some(image),
            mapping,
            buffer: Buffer::Dumb(buffer),
            driver: self.info.driver.clone(),
            can_export: self.info.prime_export,
        }))
    }

    /// A dumb buffer of this driver that an earlier daemon exported: PRIME
    /// import into this device, then `MODE_MAP_DUMB` of the handle.
    fn adopt_resource(&self, fd: OwnedFd, size: u64, pitch: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        let ps = cohmem_sys::page_size();
        if !self.info.prime_import {
            return Err(GpuError::Unsupported(format!(
                "{} cannot import dma-bufs (DRM_CAP_PRIME has no IMPORT bit)",
                self.info.driver
            )));
        }
        if pitch < ps {
            return Err(GpuError::Unsupported(format!("stored pitch {pitch} is below a page")));
        }
        let rows = size.div_ceil(ps);
        let handle = self.device.import_prime(fd.as_fd())?;
        let mapping = handle.map_writable(pitch * rows)?;
        Ok(Box::new(DrmResource {
            size,
            pitch,
            image: None,
            mapping,
            buffer: Buffer::Imported(handle),
            driver: self.info.driver.clone(),
            can_export: self.info.prime_export,
        }))
    }
}

/// The device buffer behind a resource.
enum Buffer {
    /// Created by this daemon.
    Dumb(DumbBuffer),
    /// Adopted from the fd store (created by an earlier daemon).
    Imported(GemHandle),
}

impl Buffer {
    fn export_prime(&self) -> Result<OwnedFd, GpuError> {
        Ok(match self {
            Self::Dumb(b) => b.export_prime()?,
            Self::Imported(h) => h.export_prime()?,
        })
    }
}

struct DrmResource {
    /// For an image, the end of its last row's pixels.
    size: u64,
    /// Bytes between page rows in the buffer (the page size for an image).
    pitch: u64,
    image: Option<ImageInfo>,
    /// Declared before `buffer`: unmapped before the buffer is destroyed.
    mapping: SharedMapping,
    buffer: Buffer,
    driver: String,
    can_export: bool,
}

impl DrmResource {
    /// Calls `copy(bo_offset, buffer_offset, len)` for each contiguous piece
    /// of `runs` (resource-relative byte ranges) in the buffer's layout.
    fn pieces(
        &self,
        runs: &[Range<u64>],
        mut copy: impl FnMut(u64, u64, u64) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let ps = cohmem_sys::page_size();
        if self.image.is_some() {
            for r in runs.iter().filter_map(|r| clip(r, self.size)) {
                copy(r.start, r.start, r.end - r.start)?;
            }
            return Ok(());
        }
        for r in runs {
            if self.pitch == ps {
                copy(r.start, r.start, r.end - r.start)?;
                continue;
            }
            let mut at = r.start;
            while at < r.end {
                let row = at / ps;
                let end = ((row + 1) * ps).min(r.end);
                copy(at, row * self.pitch + at % ps, end - at)?;
                at = end;
            }
        }
        Ok(())
    }
}

impl GpuResource for DrmResource {
    fn size(&self) -> u64 {
        self.size
    }

    fn gem_handle(&self) -> Option<u32> {
        Some(match &self.buffer {
            Buffer::Dumb(b) => b.handle(),
            Buffer::Imported(h) => h.handle(),
        })
    }

    fn pitch(&self) -> u64 {
        self.pitch
    }

    fn image(&self) -> Option<ImageInfo> {
        self.image
    }

    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        self.pieces(runs, |from, to, len| {
            Ok(src.copy_to((src_base + from) as usize, &self.mapping, to as usize, len as usize)?)
        })
    }

    fn download(&self, dst: &SharedMapping, dst_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError> {
        self.pieces(runs, |bo, buf, len| {
            Ok(self
                .mapping
                .copy_to(buf as usize, dst, (dst_base + bo) as usize, len as usize)?)
        })
    }

    fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        if !self.can_export {
            return Err(GpuError::Unsupported(format!(
                "{} cannot export dma-bufs (DRM_CAP_PRIME has no EXPORT bit)",
                self.driver
            )));
        }
        self.buffer.export_prime()
    }

    fn keep_fd(&self) -> Option<OwnedFd> {
        self.buffer.export_prime().ok()
    }
}
