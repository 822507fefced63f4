//! DRM devices through drm-rs: driver identity and capabilities, dumb
//! buffers (`MODE_CREATE_DUMB`, `MODE_MAP_DUMB`, `MODE_DESTROY_DUMB`) and
//! PRIME (`PRIME_HANDLE_TO_FD`, `PRIME_FD_TO_HANDLE`).
//!
//! Typed handles, resources freed on drop, in the style of smithay's drm-rs:
//! a [`DumbBuffer`] keeps its device open and destroys its GEM handle when
//! dropped; a [`GemHandle`] from a PRIME import is closed when dropped.
//! Buffer memory is mapped as a [`SharedMapping`] (other processes may read
//! it through an exported dma-buf), never as a Rust slice.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::mapping::SharedMapping;
use crate::{Result, SysError};

fn os(op: &'static str, e: std::io::Error) -> SysError {
    SysError::os(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// An open DRM device node.
#[derive(Debug)]
pub struct DrmDevice {
    file: File,
    path: PathBuf,
}

impl AsFd for DrmDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl drm::Device for DrmDevice {}

/// What a device is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrmInfo {
    /// Kernel driver name (`bochs-drm`, `vgem`, `virtio_gpu`, …).
    pub driver: String,
    /// Dumb buffers can be created (`DRM_CAP_DUMB_BUFFER`, or, where the
    /// driver refuses that query, a 1×1 buffer was created and destroyed).
    pub dumb_buffers: bool,
    /// `DRM_CAP_PRIME` export bit.
    pub prime_export: bool,
    /// `DRM_CAP_PRIME` import bit.
    pub prime_import: bool,
}

impl DrmDevice {
    /// Opens a DRM node read-write.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| SysError::Invalid(format!("cannot open {}: {e}", path.display())))?;
        let dev = Self {
            file,
            path: path.to_owned(),
        };
        // DRM_IOCTL_VERSION fails on anything that is not a DRM node.
        drm::Device::get_driver(&dev)
            .map_err(|e| SysError::Invalid(format!("{} is not a DRM device: {e}", path.display())))?;
        Ok(Arc::new(dev))
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Driver name and capabilities.
    pub fn info(&self) -> Result<DrmInfo> {
        let driver = drm::Device::get_driver(self).map_err(|e| os("DRM_IOCTL_VERSION", e))?;
        let cap = |c: u64| drm_ffi::get_capability(self.as_fd(), c).map(|v| v.value).unwrap_or(0);
        let prime = cap(u64::from(drm_ffi::DRM_CAP_PRIME));
        // Drivers without modesetting (vgem) refuse the DUMB_BUFFER query
        // but create dumb buffers on their primary node: ask, then try.
        let dumb_buffers = cap(u64::from(drm_ffi::DRM_CAP_DUMB_BUFFER)) != 0
            || drm_ffi::mode::dumbbuffer::create(self.as_fd(), 1, 1, 32, 0)
                .map(|d| drm_ffi::mode::dumbbuffer::destroy(self.as_fd(), d.handle))
                .is_ok();
        Ok(DrmInfo {
            driver: driver.name().to_string_lossy().into_owned(),
            dumb_buffers,
            prime_export: prime & u64::from(drm_ffi::DRM_PRIME_CAP_EXPORT) != 0,
            prime_import: prime & u64::from(drm_ffi::DRM_PRIME_CAP_IMPORT) != 0,
        })
    }

    /// Creates a dumb buffer of `width` × `height` pixels of `bpp` bits.
    pub fn create_dumb(self: &Arc<Self>, width: u32, height: u32, bpp: u32) -> Result<DumbBuffer> {
        let created = drm_ffi::mode::dumbbuffer::create(self.as_fd(), width, height, bpp, 0)
            .map_err(|e| os("DRM_IOCTL_MODE_CREATE_DUMB", e))?;
        Ok(DumbBuffer {
            device: self.clone(),
            handle: created.handle,
            pitch: created.pitch,
            size: created.size,
        })
    }

    /// Imports a dma-buf (PRIME) as a GEM handle of this device.
    pub fn import_prime(self: &Arc<Self>, dmabuf: BorrowedFd<'_>) -> Result<GemHandle> {
        let prime =
            drm_ffi::gem::fd_to_handle(self.as_fd(), dmabuf).map_err(|e| os("DRM_IOCTL_PRIME_FD_TO_HANDLE", e))?;
        Ok(GemHandle {
            device: self.clone(),
            handle: prime.handle,
        })
    }

    /// Exports GEM object `handle` as a dma-buf, read-write for mmap.
    fn export_handle(&self, handle: u32) -> Result<OwnedFd> {
        let flags = (libc::O_CLOEXEC | libc::O_RDWR) as u32;
        let prime = drm_ffi::gem::handle_to_fd(self.as_fd(), handle, flags)
            .map_err(|e| os("DRM_IOCTL_PRIME_HANDLE_TO_FD", e))?;
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(prime.fd) })
    }

    fn map_handle(&self, handle: u32, len: u64, writable: bool) -> Result<SharedMapping> {
        let map =
            drm_ffi::mode::dumbbuffer::map(self.as_fd(), handle, 0, 0).map_err(|e| os("DRM_IOCTL_MODE_MAP_DUMB", e))?;
        SharedMapping::map(self.as_fd(), len, map.offset, writable)
    }
}

/// A dumb buffer; destroyed when dropped.
#[derive(Debug)]
pub struct DumbBuffer {
    device: Arc<DrmDevice>,
    handle: u32,
    pitch: u32,
    size: u64,
}

impl DumbBuffer {
    /// Bytes between the starts of two rows.
    pub fn pitch(&self) -> u32 {
        self.pitch
    }

    /// Size of the buffer in bytes (at least pitch × height).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The GEM handle (valid while the buffer lives).
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Maps the whole buffer (`MODE_MAP_DUMB`, then `mmap` of the device).
    pub fn map(&self, writable: bool) -> Result<SharedMapping> {
        self.device.map_handle(self.handle, self.size, writable)
    }

    /// Exports the buffer as a dma-buf (PRIME), read-write for mmap.
    pub fn export_prime(&self) -> Result<OwnedFd> {
        self.device.export_handle(self.handle)
    }
}

impl Drop for DumbBuffer {
    fn drop(&mut self) {
        let _ = drm_ffi::mode::dumbbuffer::destroy(self.device.as_fd(), self.handle);
    }
}

/// A GEM handle imported by PRIME; closed when dropped.
#[derive(Debug)]
pub struct GemHandle {
    device: Arc<DrmDevice>,
    handle: u32,
}

impl GemHandle {
    /// The handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// Maps `len` bytes of the object read-only through the dumb-buffer path
    /// (works for objects of drivers with dumb buffers, including
    /// self-imports of their own exports).
    pub fn map(&self, len: u64) -> Result<SharedMapping> {
        self.device.map_handle(self.handle, len, false)
    }

    /// Maps `len` bytes of the object read-write (the daemon adopting a
    /// buffer of its own driver that an earlier instance exported).
    pub fn map_writable(&self, len: u64) -> Result<SharedMapping> {
        self.device.map_handle(self.handle, len, true)
    }

    /// Exports the object again as a dma-buf.
    pub fn export_prime(&self) -> Result<OwnedFd> {
        self.device.export_handle(self.handle)
    }
}

impl Drop for GemHandle {
    fn drop(&mut self) {
        let _ = drm_ffi::gem::close(self.device.as_fd(), self.handle);
    }
}

/// The DRM nodes present (`/dev/dri/card*` and `/dev/dri/renderD*`), sorted.
pub fn nodes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("card") || n.starts_with("renderD"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
