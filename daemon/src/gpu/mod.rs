//! GPU backends: where synced pages end up.
//!
//! A backend allocates one [`GpuResource`] per page-aligned window of a BO
//! (vmwgfx's resources on a backing BO); a sync uploads the window's dirty
//! runs into it. The software backend ([`soft`]) emulates device memory as a
//! daemon-private buffer; the DRM and GBM backends of a later issue implement
//! the same traits.

pub mod soft;

use std::ops::Range;
use std::os::fd::OwnedFd;

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
}

/// A device that holds GPU resources.
pub trait GpuBackend: Send + Sync {
    /// Short name for logs and `cohmemctl status` (`soft`, `drm:…`).
    fn name(&self) -> String;
    /// Allocates a resource of `size` bytes (a page multiple).
    fn create_resource(&self, size: u64) -> Result<Box<dyn GpuResource>, GpuError>;
}

/// One GPU buffer bound to a window of a BO.
pub trait GpuResource: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Copies the byte ranges `runs` (relative to the resource) from `src`
    /// starting at `src_base` (the window's offset in the BO mapping).
    fn upload(&self, src: &SharedMapping, src_base: u64, runs: &[Range<u64>]) -> Result<(), GpuError>;
    /// An fd through which another process can read the resource (the
    /// software backend's memfd, a dma-buf on real devices).
    fn export_fd(&self) -> Result<OwnedFd, GpuError>;
}

/// Which backend `--gpu` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuChoice {
    /// The embedded software backend.
    Soft,
    /// The best available: DRM where a device exists (later issue), else soft.
    Auto,
}

impl std::str::FromStr for GpuChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "soft" => Ok(Self::Soft),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown GPU backend {other:?} (this build knows: soft, auto)")),
        }
    }
}

/// Opens the backend `choice` names. Returns it and why it was chosen.
pub fn open_backend(choice: &GpuChoice) -> (Box<dyn GpuBackend>, String) {
    match choice {
        GpuChoice::Soft => (Box::new(soft::SoftGpu::new()), "requested with --gpu soft".into()),
        GpuChoice::Auto => {
            let why = if std::path::Path::new("/dev/dri").exists() {
                "DRM devices exist but the DRM backend is not built yet; using the software backend"
            } else {
                "no DRM device (/dev/dri missing); using the embedded software backend"
            };
            (Box::new(soft::SoftGpu::new()), why.into())
        }
    }
}
