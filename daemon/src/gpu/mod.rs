//! GPU backends: where synced pages end up.
//!
//! A backend allocates one [`GpuResource`] per page-aligned window of a BO
//! (vmwgfx's resources on a backing BO); a sync uploads the window's dirty
//! runs into it. The software backend ([`soft`]) emulates device memory as a
//! daemon-private buffer; the DRM backend ([`drm`]) uses dumb buffers of a
//! real DRM device; the GBM backend (`gbm`, cargo feature `gbm`) uses linear
//! buffers of Mesa's libgbm.
//!
//! A resource is either a byte resource (the window's pages, laid out one
//! page per row on devices that need rows) or an image resource
//! ([`GpuBackend::create_image`], DESIGN.md §8): the device allocates a
//! linear image with its own pitch rules first, and the BO takes exactly
//! that layout ([`ImageInfo`]), so a byte of the BO and the same byte of
//! the device buffer are the same pixel and every dirty run is one straight
//! copy.

pub mod drm;
#[cfg(feature = "gbm")]
pub mod gbm;
pub mod soft;

use std::ops::Range;
use std::os::fd::OwnedFd;

pub use cohmem_proto::ImageInfo;
use cohmem_sys::mapping::SharedMapping;
use thiserror::Error;

/// A failed GPU operation.
#[derive(Debug, Error)]
pub enum GpuError {
    /// The device cannot hold a resource of this size.
    #[error("resource of {size} bytes does not fit: {reason}")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// A kernel call failed.
    #[error("{0}")]
    Sys(#[from] cohmem_sys::SysError),
    /// The backend cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The device refuses an image of this size or format.
    #[error("{width}x{height} {format} image refused: {reason}")]
    ImageRefused {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
        /// The fourcc as text (`XR24`).
        format: String,
        /// Why (the device's limit or the unsupported format).
        reason: String,
    },
}

impl GpuError {
    /// An [`GpuError::ImageRefused`] for `width` × `height` in `fourcc`.
    pub fn image_refused(width: u32, height: u32, fourcc: u32, reason: impl Into<String>) -> Self {
        Self::ImageRefused {
            width,
            height,
            format: cohmem_proto::fourcc::name(fourcc),
            reason: reason.into(),
        }
    }
}

/// A device that holds GPU resources.
pub trait GpuBackend: Send + Sync {
    /// Short name for logs and `cohmemctl status` (`soft`, `drm:…`).
    fn name(&self) -> String;
    /// Allocates a resource of `size` bytes (a page multiple).
    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError>;
    /// Allocates a linear `width` × `height` image in DRM format `fourcc`
    /// with the device's own pitch and offset rules; the resource's
    /// [`GpuResource::image`] states them. A size or format the device
    /// refuses is [`GpuError::ImageRefused`].
    fn create_image(&self, width: u32, height: u32, fourcc: u32) -> Result<Box<dyn GpuResource>, GpuError>;
    /// The DRM device whose GEM handles the resources are
    /// ([`GpuResource::gem_handle`]), for a display output on it; `None`
    /// where the backend has no KMS device (soft, GBM).
    fn kms_device(&self) -> Option<std::sync::Arc<cohmem_sys::drm::DrmDevice>> {
        None
    }
    /// Takes back a resource of `size` bytes laid out at `pitch` that an
    /// earlier daemon handed to the fd store ([`GpuResource::keep_fd`]).
    fn adopt_resource(&self, fd: OwnedFd, size: u64, pitch: u64) -> Result<Box<dyn GpuResource>, GpuError> {
        let _ = (fd, size, pitch);
        Err(GpuError::Unsupported(format!(
            "the {} backend cannot adopt a stored buffer",
            self.name()
        )))
    }
}

/// One GPU buffer bound to a window of a BO.
pub trait GpuResource: Send + Sync {
    /// Size in bytes. For an image resource, the bytes from the start of
    /// the buffer to the end of its last row (the BO is this rounded up to
    /// pages; bytes past it belong to no pixel and are never copied).
    fn size(&self) -> u64;
    /// The image layout of an image resource ([`GpuBackend::create_image`]),
    /// `None` for a byte resource. An image resource's `upload` and
    /// `download` take byte ranges in that layout (BO offset = buffer
    /// offset), clipped to [`GpuResource::size`].
    fn image(&self) -> Option<ImageInfo> {
        None
    }
    /// The GEM handle of the device buffer on [`GpuBackend::kms_device`]
    /// (a KMS framebuffer is made of it), `None` where there is none.
    fn gem_handle(&self) -> Option<u32> {
        None
    }
    /// Copies the byte ranges `runs` (relative to the resource) from `src`
    /// starting at `src_base` (the window's offset in the BO mapping).
    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError>;
    /// Copies the byte ranges `runs` (relative to the resource) back into
    /// `dst` starting at `dst_base` (READBACK).
    fn download(&self, dst: &SharedMapping, dst_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError>;
    /// Bytes between the starts of two consecutive pages of the resource in
    /// its exported buffer (the page size where pages are contiguous).
    fn pitch(&self) -> u64 {
        cohmem_sys::page_size()
    }
    /// An fd through which another process can read the resource (the
    /// software backend's memfd, a dma-buf on real devices).
    fn export_fd(&self) -> Result<OwnedFd, GpuError>;
    /// Whether a process holding [`GpuResource::export_fd`]'s fd can write
    /// the buffer (a dma-buf can be mapped writable or rendered into; the
    /// software backend's sealed memfd cannot).
    fn export_writable(&self) -> bool {
        true
    }
    /// An fd that keeps the buffer itself alive in the fd store and that
    /// [`GpuBackend::adopt_resource`] can take back after a restart (with
    /// [`GpuResource::pitch`]); `None` where the backend cannot adopt one.
    fn keep_fd(&self) -> Option<OwnedFd> {
        None
    }
}

/// Which backend `--gpu` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuChoice {
    /// The embedded software backend.
    Soft,
    /// Dumb buffers on the DRM primary node at this path.
    Drm(std::path::PathBuf),
    /// Linear GBM buffers on the DRM node at this path (feature `gbm`).
    Gbm(std::path::PathBuf),
    /// The best available: GBM on the first node where it allocates and
    /// exports (when built with `gbm`), else the first card node with dumb
    /// buffers (one that can export dma-bufs first), else the software
    /// backend.
    Auto,
}

impl std::str::FromStr for GpuChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "soft" => Ok(Self::Soft),
            "auto" => Ok(Self::Auto),
            _ => match (s.strip_prefix("drm:"), s.strip_prefix("gbm:")) {
                (Some(path), _) if !path.is_empty() => Ok(Self::Drm(path.into())),
                (_, Some(path)) if !path.is_empty() => Ok(Self::Gbm(path.into())),
                _ => Err(format!(
                    "unknown GPU backend {s:?} (known: soft, auto, drm:/dev/dri/cardN, gbm:/dev/dri/renderDN)"
                )),
            },
        }
    }
}

/// Opens the backend `choice` names. Returns it and why it was chosen; an
/// explicitly named device that cannot serve is an error, never a silent
/// fallback.
pub fn open_backend(choice: &GpuChoice) -> Result<(Box<dyn GpuBackend>, String), GpuError> {
    match choice {
        GpuChoice::Soft => Ok((Box::new(soft::SoftGpu::new()), "requested with --gpu soft".into())),
        GpuChoice::Drm(path) => Ok((Box::new(drm::DrmGpu::open(path)?), "requested with --gpu drm:".into())),
        #[cfg(feature = "gbm")]
        GpuChoice::Gbm(path) => Ok((Box::new(gbm::GbmGpu::open(path)?), "requested with --gpu gbm:".into())),
        #[cfg(not(feature = "gbm"))]
        GpuChoice::Gbm(_) => Err(GpuError::Unsupported(
            "this cohmemd was built without the `gbm` cargo feature (cargo build --features cohmem-daemon/gbm)".into(),
        )),
        GpuChoice::Auto => {
            let nodes = cohmem_sys::drm::nodes();
            if nodes.is_empty() {
                return Ok((
                    Box::new(soft::SoftGpu::new()),
                    "auto: no DRM device (/dev/dri has no nodes); the embedded software backend".into(),
                ));
            }
            let mut tried = Vec::new();
            #[cfg(feature = "gbm")]
            for node in &nodes {
                match gbm::GbmGpu::open(node) {
                    Ok(gpu) => {
                        let why = format!("auto: first DRM node where GBM allocates ({})", gpu.driver());
                        return Ok((Box::new(gpu), why));
                    }
                    Err(e) => tried.push(format!("gbm {}: {e}", node.display())),
                }
            }
            #[cfg(not(feature = "gbm"))]
            tried.push("gbm: not built (cargo feature `gbm`)".to_string());
            // Dumb buffers: a device that can export dma-bufs first.
            let mut without_export = None;
            for node in &nodes {
                match drm::DrmGpu::open(node) {
                    Ok(gpu) if gpu.can_export() => {
                        let why = format!(
                            "auto: first DRM node with dumb buffers and PRIME export ({})",
                            gpu.driver()
                        );
                        return Ok((Box::new(gpu), why));
                    }
                    Ok(gpu) => {
                        tried.push(format!("dumb {}: no PRIME export", node.display()));
                        without_export.get_or_insert(gpu);
                    }
                    Err(e) => tried.push(format!("dumb {}: {e}", node.display())),
                }
            }
            if let Some(gpu) = without_export {
                let why = format!(
                    "auto: a DRM node with dumb buffers but no PRIME export ({})",
                    gpu.driver()
                );
                return Ok((Box::new(gpu), why));
            }
            Ok((
                Box::new(soft::SoftGpu::new()),
                format!(
                    "auto: no usable DRM device ({}); the embedded software backend",
                    tried.join("; ")
                ),
            ))
        }
    }
}
