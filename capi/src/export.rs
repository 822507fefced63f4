//! What leaves a BO as a file descriptor: its GPU resource (a dma-buf on
//! DRM devices) with the image an importer needs (`cohmem_dmabuf`,
//! `cohmem_bo_export_dmabuf`, `cohmem_bo_export_resource`), and an exact
//! snapshot of its bytes (`cohmem_snapshot`, `cohmem_bo_snapshot`).

use std::ffi::c_int;
use std::os::fd::IntoRawFd;

use crate::bo::cohmem_bo;
use crate::error::{fail, invalid, COHMEM_OK};
use crate::image::cohmem_image_info;

/// A BO's GPU resource exported as a file descriptor (a dma-buf on DRM
/// devices); the caller owns `fd` and closes it.
///
/// ABI: `image` and `offset` were added before libcohmem's first release
/// (`libcohmem.so.0`): code compiled against the older, smaller struct
/// must be rebuilt.
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
    /// width, height, format, `pitches[0]`, `offsets[0]` and `modifier[0]`); all 0
    /// for a byte BO.
    pub image: cohmem_image_info,
    /// Offset in the BO of the resource's window (0 for resource 0 of a
    /// BO from `cohmem_bo_create` or `cohmem_image_create`).
    pub offset: u64,
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
    // SAFETY: the caller's contract is this function's (documented).
    unsafe { export(bo, 0, out, "cohmem_bo_export_dmabuf") }
}

/// `cohmem_bo_export_dmabuf` of GPU resource `index` of the BO
/// (`cohmem_bo_add_resource`); `out->offset` is its window's offset in the
/// BO.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_export_resource(bo: *const cohmem_bo, index: u32, out: *mut cohmem_dmabuf) -> c_int {
    // SAFETY: the caller's contract is this function's (documented).
    unsafe { export(bo, index, out, "cohmem_bo_export_resource") }
}

/// Exports resource `index` of `bo` into `*out`; `call` names the C call
/// in errors.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
unsafe fn export(bo: *const cohmem_bo, index: u32, out: *mut cohmem_dmabuf, call: &str) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (the caller's contract).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid(&format!("{call}: bo is NULL"));
    };
    if out.is_null() {
        return invalid(&format!("{call}: out is NULL"));
    }
    match bo.0.export_resource(index) {
        Ok(r) => {
            let exported = cohmem_dmabuf {
                fd: r.fd.into_raw_fd(),
                size: r.size,
                pitch: r.pitch,
                image: r.image.map(cohmem_image_info::from).unwrap_or_default(),
                offset: r.offset,
            };
            // SAFETY: `out` is non-NULL and valid for writes (the caller's
            // contract).
            unsafe { *out = exported };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// How a snapshot (`cohmem_bo_snapshot`) went.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_snapshot {
    /// Bytes in the snapshot (the BO's size).
    pub size: u64,
    /// 1 when no write can have changed the BO while it was copied, else 0
    /// (writers that cannot be blocked or checked: the full and explicit
    /// mechanisms).
    pub exact: c_int,
    /// Copy attempts (a copy that a writer raced is retried).
    pub attempts: u32,
    /// Mappings whose writers were blocked during the copy (uffd-sync).
    pub blocked_views: u32,
    /// Mappings whose writers could only be checked, or not even checked.
    pub unblocked_views: u32,
    /// The layout of an image BO (to save the snapshot as a picture), all
    /// 0 for a byte BO.
    pub image: cohmem_image_info,
}

/// An exact copy of the BO's bytes taken with its writers quiesced: `*fd`
/// receives a sealed memfd holding them (the caller owns and closes it;
/// `mmap` it read-only or `pread` it), `report` (NULL or valid for writes)
/// how it went. Unlike a mapping, the copy cannot change under the reader.
///
/// # Safety
/// `bo` is NULL or a live BO; `fd` is NULL or valid for writes; `report`
/// is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_snapshot(
    bo: *const cohmem_bo,
    fd: *mut c_int,
    report: *mut cohmem_snapshot,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_snapshot: bo is NULL");
    };
    if fd.is_null() {
        return invalid("cohmem_bo_snapshot: fd is NULL");
    }
    match bo.0.snapshot() {
        Ok((memfd, r)) => {
            // SAFETY: `fd` is non-NULL and valid for writes (documented).
            unsafe { *fd = memfd.into_raw_fd() };
            // SAFETY: `report` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { report.as_mut() } {
                *slot = cohmem_snapshot {
                    size: r.size,
                    exact: c_int::from(r.exact),
                    attempts: r.attempts,
                    blocked_views: r.blocked_views,
                    unblocked_views: r.unblocked_views,
                    image: r.image.map(cohmem_image_info::from).unwrap_or_default(),
                };
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}
