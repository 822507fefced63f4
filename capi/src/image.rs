//! Image BOs: the DRM formats (`COHMEM_FORMAT_*`, `COHMEM_MODIFIER_LINEAR`),
//! an image's layout (`cohmem_image_info`), creating one
//! (`cohmem_image_create`) and reading its layout.

use std::ffi::c_int;

use cohmem_client::ImageInfo;

use crate::bo::cohmem_bo;
use crate::connection::cohmem_connection;
use crate::error::{fail, invalid, COHMEM_OK};

/// DRM_FORMAT_XRGB8888 ('XR24'): 32 bits a pixel, x:R:G:B little endian.
pub const COHMEM_FORMAT_XRGB8888: u32 =
    ('X' as u32) | (('R' as u32) << 8) | (('2' as u32) << 16) | (('4' as u32) << 24);
/// DRM_FORMAT_ARGB8888 ('AR24'): 32 bits a pixel, A:R:G:B little endian.
pub const COHMEM_FORMAT_ARGB8888: u32 =
    ('A' as u32) | (('R' as u32) << 8) | (('2' as u32) << 16) | (('4' as u32) << 24);
/// DRM_FORMAT_RGB565 ('RG16'): 16 bits a pixel, R:G:B 5:6:5 little endian.
pub const COHMEM_FORMAT_RGB565: u32 = ('R' as u32) | (('G' as u32) << 8) | (('1' as u32) << 16) | (('6' as u32) << 24);
/// DRM_FORMAT_MOD_LINEAR: rows one after the other, `pitch` bytes apart.
pub const COHMEM_MODIFIER_LINEAR: u64 = 0;

const _: () = {
    assert!(COHMEM_FORMAT_XRGB8888 == cohmem_client::fourcc::XRGB8888);
    assert!(COHMEM_FORMAT_ARGB8888 == cohmem_client::fourcc::ARGB8888);
    assert!(COHMEM_FORMAT_RGB565 == cohmem_client::fourcc::RGB565);
    assert!(COHMEM_MODIFIER_LINEAR == cohmem_client::MODIFIER_LINEAR);
};

/// The layout of an image BO (`cohmem_image_create`): pixel (x, y) is the
/// `cohmem_format_bytes_per_pixel(fourcc)` bytes at
/// `offset + y * pitch + x * bytes_per_pixel` of the BO, and of its exported
/// buffer. Rows may be padded (`pitch` > `width` × bytes per pixel).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_image_info {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels (rows).
    pub height: u32,
    /// DRM fourcc (`COHMEM_FORMAT_*`).
    pub fourcc: u32,
    /// Bytes from the start of one row to the start of the next, as the
    /// daemon's GPU device chose it.
    pub pitch: u32,
    /// Byte offset of the first row.
    pub offset: u64,
    /// DRM format modifier (`COHMEM_MODIFIER_LINEAR`).
    pub modifier: u64,
}

impl From<ImageInfo> for cohmem_image_info {
    fn from(i: ImageInfo) -> Self {
        Self {
            width: i.width,
            height: i.height,
            fourcc: i.fourcc,
            pitch: i.pitch,
            offset: i.offset,
            modifier: i.modifier,
        }
    }
}

/// Creates an image BO: the daemon's GPU device allocates a linear `width`
/// × `height` image in DRM format `fourcc` (`COHMEM_FORMAT_XRGB8888`,
/// `COHMEM_FORMAT_ARGB8888` or `COHMEM_FORMAT_RGB565`) with its own pitch,
/// and the BO's bytes take exactly that layout (`cohmem_bo_image_info`).
/// Map it and write pixels like any BO; `cohmem_bo_sync_rects` then also
/// says which rectangles changed. `*out` is freed with `cohmem_bo_free`.
///
/// Errors: `COHMEM_E_DAEMON` with `cohmem_last_daemon_code()`
/// `COHMEM_DAEMON_E_UNSUPPORTED` for a format or size the device refuses
/// (the message names the format), `COHMEM_DAEMON_E_TOO_LARGE` over the
/// daemon's `max_bo_size`, `COHMEM_DAEMON_E_INVALID_ARGUMENT` for a width
/// or height of 0.
///
/// # Safety
/// `conn` is NULL or a live connection; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_image_create(
    conn: *const cohmem_connection,
    width: u32,
    height: u32,
    fourcc: u32,
    out: *mut *mut cohmem_bo,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_image_create: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_image_create: out is NULL");
    }
    match conn.0.create_image(width, height, fourcc) {
        // SAFETY: `out` is non-NULL and valid for writes (documented).
        Ok(bo) => unsafe { crate::bo::hand_out(out, bo, &conn.0) },
        Err(e) => fail(&e),
    }
}

/// Bytes per pixel of a `COHMEM_FORMAT_*` fourcc (4, 4, 2), 0 for a format
/// libcohmem does not know.
#[no_mangle]
pub extern "C" fn cohmem_format_bytes_per_pixel(fourcc: u32) -> u32 {
    cohmem_client::fourcc::bytes_per_pixel(fourcc).unwrap_or(0)
}

/// Writes the layout of an image BO (`cohmem_image_create`, or an import
/// of one) to `*out`. A byte BO (`cohmem_bo_create`) has none: the call
/// returns `COHMEM_E_INVALID`, `cohmem_last_error()` says "not an image BO"
/// and `*out` is zeroed.
///
/// # Safety
/// `bo` is NULL or a live BO; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_image_info(bo: *const cohmem_bo, out: *mut cohmem_image_info) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_image_info: bo is NULL");
    };
    // SAFETY: `out` is NULL or valid for writes (documented).
    let Some(out) = (unsafe { out.as_mut() }) else {
        return invalid("cohmem_bo_image_info: out is NULL");
    };
    match bo.0.image() {
        Some(image) => {
            *out = image.into();
            COHMEM_OK
        }
        None => {
            *out = cohmem_image_info::default();
            invalid("cohmem_bo_image_info: not an image BO (it was created by cohmem_bo_create)")
        }
    }
}
