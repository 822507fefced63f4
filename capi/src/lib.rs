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

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::IntoRawFd;

use cohmem_client::{Bo, ClientError, Connection, Mapping};

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

/// A BO's GPU resource exported as a file descriptor (a dma-buf on DRM
/// devices); the caller owns `fd` and closes it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct cohmem_dmabuf {
    /// The file descriptor.
    pub fd: c_int,
    /// Size in bytes.
    pub size: u64,
    /// Bytes between the starts of two consecutive pages in the buffer.
    pub pitch: u64,
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
            let out = cohmem_sync_result {
                pages: r.pages,
                bytes: r.bytes,
                duration_ns: u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
                run_count: r.run_count,
                mechanism: u32::from(r.mechanism as u16),
            };
            // SAFETY: `result` is NULL or valid for writes (documented).
            if let Some(slot) = unsafe { result.as_mut() } {
                *slot = out;
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
/// APIs (EGL, Vulkan) can import. The caller owns `out->fd`.
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
