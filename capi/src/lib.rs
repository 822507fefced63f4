//! libcohmem: the C API of the cohmem client library (issue 7).
//!
//! Thin `extern "C"` wrappers around [`cohmem_client`]: opaque handles
//! (`cohmem_connection`, `cohmem_bo`, `cohmem_mapping`) that C owns and frees
//! with their `*_free`/`cohmem_unmap` function, plain structs for results,
//! and errors as negative `COHMEM_E_*` codes with the message kept per
//! thread (`cohmem_last_error`). `cohmem.h` is generated from this file by
//! cbindgen (`capi/tests/header.rs` checks that the committed header is
//! current). Mapped memory is handed to C as a raw pointer: it is shared
//! with the daemon, so it is never a Rust slice here.
//!
//! Threads: `cohmem.h` promises that connections, BOs and mappings may be
//! used from several threads (the Rust objects are `Send + Sync`, checked
//! below; requests on one connection take turns on its socket lock).

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::IntoRawFd;

use cohmem_client::{Bo, ClientError, Connection, ImageInfo, Mapping};

// The thread-safety `cohmem.h` documents.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Connection>();
    shareable::<Bo>();
    shareable::<Mapping>();
};

/// Success.
pub const COHMEM_OK: c_int = 0;
/// A NULL pointer or an invalid argument.
pub const COHMEM_E_INVALID: c_int = -1;
/// The daemon's socket could not be reached.
pub const COHMEM_E_CONNECT: c_int = -2;
/// The daemon closed the connection.
pub const COHMEM_E_DISCONNECTED: c_int = -3;
/// The daemon refused the request (see `cohmem_last_daemon_code`).
pub const COHMEM_E_DAEMON: c_int = -4;
/// A local kernel call failed.
pub const COHMEM_E_SYSTEM: c_int = -5;
/// The daemon's reply made no sense.
pub const COHMEM_E_PROTOCOL: c_int = -6;
/// The object was made by the parent of this forked process; connect again
/// in the child.
pub const COHMEM_E_FORKED: c_int = -7;

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
/// Most rectangles one sync of an image BO reports (DIRTYFB takes at most
/// 256 clips); an array of this many always receives them all.
pub const COHMEM_MAX_DAMAGE_RECTS: usize = 256;

const _: () = {
    assert!(COHMEM_FORMAT_XRGB8888 == cohmem_client::fourcc::XRGB8888);
    assert!(COHMEM_FORMAT_ARGB8888 == cohmem_client::fourcc::ARGB8888);
    assert!(COHMEM_FORMAT_RGB565 == cohmem_client::fourcc::RGB565);
    assert!(COHMEM_MODIFIER_LINEAR == cohmem_client::MODIFIER_LINEAR);
    assert!(COHMEM_MAX_DAMAGE_RECTS == cohmem_client::MAX_DAMAGE_RECTS);
};

thread_local! {
    static LAST_ERROR: RefCell<(CString, u16)> = RefCell::new((CString::default(), 0));
}

fn set_error(message: &str, daemon_code: u16) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = (text, daemon_code));
}

fn fail(e: &ClientError) -> c_int {
    let code = match e {
        ClientError::Connect { .. } => COHMEM_E_CONNECT,
        ClientError::Daemon { .. } => COHMEM_E_DAEMON,
        ClientError::Protocol(_) => COHMEM_E_PROTOCOL,
        ClientError::Disconnected => COHMEM_E_DISCONNECTED,
        ClientError::Sys(_) => COHMEM_E_SYSTEM,
        ClientError::ForkedChild { .. } => COHMEM_E_FORKED,
    };
    set_error(&e.to_string(), e.code().map_or(0, |c| c.to_wire()));
    code
}

fn invalid(what: &str) -> c_int {
    set_error(what, 0);
    COHMEM_E_INVALID
}

/// A connection to cohmemd.
pub struct cohmem_connection(Connection);

/// A buffer object: a sealed memfd tracked by cohmemd, with a GPU resource.
pub struct cohmem_bo(Bo);

/// A tracked mapping of a BO in this process.
pub struct cohmem_mapping(Mapping);

/// What one sync uploaded.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct cohmem_sync_result {
    /// Pages uploaded.
    pub pages: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time the daemon spent, nanoseconds.
    pub duration_ns: u64,
    /// Runs of consecutive pages uploaded.
    pub run_count: u32,
    /// Write-tracking mechanism (wire value: 1 uffd-async, 2 uffd-sync,
    /// 3 soft-dirty, 4 full, 5 explicit).
    pub mechanism: u32,
}

/// Daemon-wide counters.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct cohmem_stats {
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Open connections.
    pub connections: u32,
    /// Live BOs.
    pub bos: u32,
    /// Completed syncs.
    pub syncs: u64,
    /// Pages uploaded by all syncs.
    pub pages_uploaded: u64,
    /// Bytes uploaded by all syncs.
    pub bytes_uploaded: u64,
    /// Write-protect faults resolved by the daemon (uffd-sync).
    pub faults: u64,
    /// vmwgfx method switches.
    pub method_switches: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

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

/// A rectangle of pixels: columns `x` to `x + w - 1`, rows `y` to
/// `y + h - 1`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct cohmem_rect {
    /// First column.
    pub x: u32,
    /// First row.
    pub y: u32,
    /// Width in pixels (at least 1).
    pub w: u32,
    /// Height in rows (at least 1).
    pub h: u32,
}

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

/// Connects to cohmemd at `socket_path`, or at the default path when it is
/// NULL (`$COHMEM_SOCKET`, else `$XDG_RUNTIME_DIR/cohmem.sock`, else
/// `/run/cohmem/cohmem.sock`). On success `*out` is a connection to free
/// with `cohmem_disconnect`.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string; `out` is a valid
/// pointer to write to.
#[no_mangle]
pub unsafe extern "C" fn cohmem_connect(socket_path: *const c_char, out: *mut *mut cohmem_connection) -> c_int {
    if out.is_null() {
        return invalid("cohmem_connect: out is NULL");
    }
    let result = if socket_path.is_null() {
        Connection::connect_default()
    } else {
        // SAFETY: the caller passes a NUL-terminated string (documented).
        let path = unsafe { CStr::from_ptr(socket_path) };
        match path.to_str() {
            Ok(p) => Connection::connect(p),
            Err(_) => return invalid("cohmem_connect: the socket path is not UTF-8"),
        }
    };
    match result {
        Ok(conn) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_connection(conn))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Frees a connection (BOs created through it stay usable until freed).
///
/// # Safety
/// `conn` is NULL or came from `cohmem_connect` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn cohmem_disconnect(conn: *mut cohmem_connection) {
    if !conn.is_null() {
        // SAFETY: `conn` came from Box::into_raw in cohmem_connect and is
        // freed once (documented).
        drop(unsafe { Box::from_raw(conn) });
    }
}

/// Creates a BO of `size` bytes (rounded up to whole pages) with a GPU
/// resource; `*out` is freed with `cohmem_bo_free`.
///
/// # Safety
/// `conn` came from `cohmem_connect`; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_create(
    conn: *const cohmem_connection,
    size: u64,
    out: *mut *mut cohmem_bo,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_bo_create: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_create: out is NULL");
    }
    match conn.0.create_bo(size) {
        Ok(bo) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_bo(bo))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Creates an image BO: the daemon's GPU device allocates a linear `width`
/// × `height` image in DRM format `fourcc` (`COHMEM_FORMAT_XRGB8888`,
/// `COHMEM_FORMAT_ARGB8888` or `COHMEM_FORMAT_RGB565`) with its own pitch,
/// and the BO's bytes take exactly that layout (`cohmem_bo_image_info`).
/// Map it and write pixels like any BO; `cohmem_bo_sync_rects` then also
/// says which rectangles changed. `*out` is freed with `cohmem_bo_free`.
///
/// Errors: `COHMEM_E_DAEMON` with `cohmem_last_daemon_code()` 13
/// (Unsupported) for a format or size the device refuses (the message names
/// the format), 9 (TooLarge) over the daemon's `max_bo_size`, 8
/// (InvalidArgument) for a width or height of 0.
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
        Ok(bo) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_bo(bo))) };
            COHMEM_OK
        }
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

/// Frees a BO handle (the daemon frees the BO when no handle and no mapping
/// is left).
///
/// # Safety
/// `bo` is NULL or came from `cohmem_bo_create` and is not used again.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_free(bo: *mut cohmem_bo) {
    if !bo.is_null() {
        // SAFETY: `bo` came from Box::into_raw and is freed once (documented).
        drop(unsafe { Box::from_raw(bo) });
    }
}

/// The BO's size in bytes (0 for NULL).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_size(bo: *const cohmem_bo) -> u64 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.size())
}

/// The BO's daemon-wide id (0 for NULL).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_id(bo: *const cohmem_bo) -> u64 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.id())
}

/// Maps the whole BO, tracked: writes through `cohmem_mapping_ptr` are seen
/// by the next `cohmem_bo_sync`. `*out` is freed with `cohmem_unmap`.
///
/// # Safety
/// `bo` is a live BO; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_map(bo: *const cohmem_bo, out: *mut *mut cohmem_mapping) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_map: bo is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_map: out is NULL");
    }
    match bo.0.map() {
        Ok(m) => {
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = Box::into_raw(Box::new(cohmem_mapping(m))) };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// The mapping's first byte (NULL for NULL). Valid until `cohmem_unmap`.
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_ptr(map: *const cohmem_mapping) -> *mut u8 {
    // SAFETY: `map` is NULL or a live mapping (documented).
    unsafe { map.as_ref() }.map_or(std::ptr::null_mut(), |m| m.0.as_ptr())
}

/// The mapping's length in bytes (0 for NULL).
///
/// # Safety
/// `map` is NULL or a live mapping.
#[no_mangle]
pub unsafe extern "C" fn cohmem_mapping_len(map: *const cohmem_mapping) -> usize {
    // SAFETY: `map` is NULL or a live mapping (documented).
    unsafe { map.as_ref() }.map_or(0, |m| m.0.len())
}

/// Unmaps (the daemon first harvests what was written through it, so
/// nothing is lost) and frees the mapping.
///
/// # Safety
/// `map` is NULL or came from `cohmem_bo_map` and is not used again; no
/// pointer into it is used afterwards.
#[no_mangle]
pub unsafe extern "C" fn cohmem_unmap(map: *mut cohmem_mapping) -> c_int {
    if map.is_null() {
        return COHMEM_OK;
    }
    // SAFETY: `map` came from Box::into_raw and is freed once (documented).
    let map = unsafe { Box::from_raw(map) };
    match map.0.unmap() {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Uploads every page written since the last sync to the BO's GPU
/// resource; returns when they are there. `result` may be NULL.
///
/// # Safety
/// `bo` is a live BO; `result` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync(bo: *const cohmem_bo, result: *mut cohmem_sync_result) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync: bo is NULL");
    };
    match bo.0.sync() {
        Ok(r) => {
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

fn sync_result(r: &cohmem_client::SyncResult) -> cohmem_sync_result {
    cohmem_sync_result {
        pages: r.pages,
        bytes: r.bytes,
        duration_ns: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
        run_count: r.run_count,
        mechanism: u32::from(r.mechanism as u16),
    }
}

/// `cohmem_bo_sync`, and for an image BO the rectangles of pixels the sync
/// changed on the GPU copy (with any background upload since the BO's
/// previous sync): every pixel of every uploaded page lies in one of them.
/// Tracking is by page, so a rectangle covers every pixel whose bytes share
/// a page with a written byte, not only the pixels written.
///
/// - `result`: NULL, or receives what `cohmem_bo_sync` gives.
/// - `rects`, `capacity`: an array of `capacity` rectangles; the first
///   `min(*count, capacity)` are written, sorted by (y, x). `rects` may be
///   NULL only when `capacity` is 0.
/// - `count` (required): the number of rectangles the daemon reported, at
///   most `COHMEM_MAX_DAMAGE_RECTS`. It may exceed `capacity`: then only
///   `capacity` rectangles were written, the rest are lost (the sync is
///   done) and the call still returns `COHMEM_OK`. A `capacity` of
///   `COHMEM_MAX_DAMAGE_RECTS` always receives them all.
/// - `merged`: NULL, or receives 1 when rectangles were merged to stay
///   under `COHMEM_MAX_DAMAGE_RECTS` (they then cover pixels no uploaded
///   page holds), else 0.
///
/// A byte BO has no rectangles: `*count` and `*merged` are 0. A call
/// refused for a NULL argument (`COHMEM_E_INVALID`) does not sync.
///
/// # Safety
/// `bo` is NULL or a live BO; `result`, `count` and `merged` are NULL or
/// valid for writes; `rects` is NULL or valid for writing `capacity`
/// rectangles.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_sync_rects(
    bo: *const cohmem_bo,
    result: *mut cohmem_sync_result,
    rects: *mut cohmem_rect,
    capacity: usize,
    count: *mut usize,
    merged: *mut c_int,
) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_sync_rects: bo is NULL");
    };
    if count.is_null() {
        return invalid("cohmem_bo_sync_rects: count is NULL");
    }
    if rects.is_null() && capacity > 0 {
        return invalid(&format!(
            "cohmem_bo_sync_rects: rects is NULL but capacity is {capacity}"
        ));
    }
    match bo.0.sync() {
        Ok(r) => {
            for (i, rect) in r.rects.iter().take(capacity).enumerate() {
                let rect = cohmem_rect {
                    x: rect.x,
                    y: rect.y,
                    w: rect.w,
                    h: rect.h,
                };
                // SAFETY: `rects` holds `capacity` rectangles and
                // `i < capacity` (documented; non-NULL as `capacity` > 0).
                unsafe { rects.add(i).write(rect) };
            }
            // SAFETY: `count` is non-NULL and valid for writes (documented).
            unsafe { count.write(r.rects.len()) };
            // SAFETY: `merged` is NULL or valid for writes (documented).
            if let Some(m) = unsafe { merged.as_mut() } {
                *m = c_int::from(r.rects_merged);
            }
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = sync_result(&r);
            }
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// Syncs, then copies the GPU resource back into the BO (GPU → CPU).
///
/// # Safety
/// `bo` is a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_readback(bo: *const cohmem_bo) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_readback: bo is NULL");
    };
    match bo.0.readback() {
        Ok(_) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}

/// Reports `len` bytes at `offset` of the BO written. Needed under the
/// `explicit` mechanism for every write, and under the tracking mechanisms
/// for writes no mapping store reports: pinned I/O into a mapping (an
/// `O_DIRECT` `read`, io_uring, a device) once it completed, and writes
/// through the BO's fd (`pwrite`, `fallocate`, `MADV_REMOVE`) on kernels
/// that raise no inotify events on memfds (Linux 6.14 and later).
///
/// # Safety
/// `bo` is a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_damage(bo: *const cohmem_bo, offset: u64, len: u64) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_damage: bo is NULL");
    };
    match bo.0.damage(offset, len) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
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

/// Reads the daemon's counters.
///
/// # Safety
/// `conn` is a live connection; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_stats_get(conn: *const cohmem_connection, out: *mut cohmem_stats) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_stats_get: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_stats_get: out is NULL");
    }
    match conn.0.stats(0) {
        Ok(s) => {
            let d = s.daemon;
            let stats = cohmem_stats {
                uptime_ms: d.uptime_ms,
                connections: d.connections,
                bos: d.bos,
                syncs: d.syncs,
                pages_uploaded: d.pages_uploaded,
                bytes_uploaded: d.bytes_uploaded,
                faults: d.faults,
                method_switches: d.method_switches,
                errors: d.errors,
            };
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = stats };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// The calling thread's last error message ("" when none). Valid until the
/// thread's next failing call.
#[no_mangle]
pub extern "C" fn cohmem_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().0.as_ptr())
}

/// The daemon's error code (its wire value, e.g. 9 TooLarge, 10
/// LimitExceeded) of the calling thread's last `COHMEM_E_DAEMON`, else 0.
#[no_mangle]
pub extern "C" fn cohmem_last_daemon_code() -> c_int {
    LAST_ERROR.with(|e| c_int::from(e.borrow().1))
}

/// A static description of a `COHMEM_E_*` code.
#[no_mangle]
pub extern "C" fn cohmem_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match code {
        COHMEM_OK => c"success",
        COHMEM_E_INVALID => c"invalid argument",
        COHMEM_E_CONNECT => c"cannot connect to cohmemd",
        COHMEM_E_DISCONNECTED => c"cohmemd closed the connection",
        COHMEM_E_DAEMON => c"cohmemd refused the request",
        COHMEM_E_SYSTEM => c"a system call failed",
        COHMEM_E_PROTOCOL => c"protocol error",
        COHMEM_E_FORKED => c"object of the parent process used in a forked child",
        _ => c"unknown error code",
    };
    text.as_ptr()
}
