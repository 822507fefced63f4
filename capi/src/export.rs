//! Exporting a BO's GPU resource as a file descriptor (a dma-buf on DRM
//! devices) with the image an importer needs (`cohmem_dmabuf`,
//! `cohmem_bo_export_dmabuf`).

use std::ffi::c_int;
use std::os::fd::IntoRawFd;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::image::cohmem_image_info;

/// A BO's GPU resource exported as a file descriptor (a dma-buf on DRM
/// devices); the caller owns `fd` and closes it.
///
/// ABI: `image` was added after `pitch` with the image BOs, before
/// libcohmem's first release: code compiled against the older, smaller
/// struct must be rebuilt.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cohmem_dmabuf {
    /// The file descriptor.
    pub fd: c_int,
    /// Size in bytes.
    pub size: u64,
    /// Bytes between the starts of two consecutive pages of the BO in the
    /// buffer (the page size where they are contiguous, as for every image
    /// BO). Not an image's row pitch: that is `image.pitch`.
    pub pitch: u64,
    /// For an image BO, the image as an importer needs it
    /// (EGL_EXT_image_dma_buf_import's WIDTH, HEIGHT, LINUX_DRM_FOURCC,
    /// PLANE0_PITCH, PLANE0_OFFSET and PLANE0_MODIFIER; a KMS framebuffer's
    /// width, height, format, pitches[0], offsets[0] and modifier[0]); all 0
    /// for a byte BO.
    pub image: cohmem_image_info,
}

/// Exports the BO's GPU resource as a file descriptor (a dma-buf on DRM
/// devices; on the software GPU a read-only memfd) that other processes and
/// APIs (EGL, Vulkan) can import. The caller owns `out->fd`. For an image
/// BO, `out->image` describes the image in the buffer (width, height,
/// fourcc, pitch, offset, modifier); for a byte BO it is all 0.
///
/// # Safety
/// `bo` is a live BO; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_export_dmabuf(bo: *const cohmem_bo, out: *mut cohmem_dmabuf) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_export_dmabuf: bo is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_export_dmabuf: out is NULL");
    }
    match bo.0.export_resource(0) {
        Ok(r) => {
            let exported = cohmem_dmabuf {
                fd: r.fd.into_raw_fd(),
                size: r.size,
                pitch: r.pitch,
                image: r.image.map(cohmem_image_info::from).unwrap_or_default(),
            };
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = exported };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}
