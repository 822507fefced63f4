//! A buffer object handle (`cohmem_bo`): creating a byte BO (with or
//! without a GPU resource), importing one another process shared, freeing
//! it, its size, id, handle and memfd, and reading its bytes. Image BOs are
//! in `image.rs`, mapping in `mapping.rs`, syncing in `sync.rs`, snapshots
//! in `export.rs`.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};

use cohmem_client::{Bo, Connection};

use crate::connection::cohmem_connection;
use crate::error::{fail, invalid, COHMEM_OK};

/// A buffer object: a sealed memfd tracked by cohmemd, with a GPU resource.
pub struct cohmem_bo(pub(crate) Bo, pub(crate) Connection);

/// Stores a new BO handle at `out` (non-NULL, valid for writes).
///
/// # Safety
/// `out` is non-NULL and valid for writes.
pub(crate) unsafe fn hand_out(out: *mut *mut cohmem_bo, bo: Bo, conn: &Connection) -> c_int {
    // SAFETY: `out` is non-NULL and valid for writes (the caller's contract).
    unsafe { *out = Box::into_raw(Box::new(cohmem_bo(bo, conn.clone()))) };
    COHMEM_OK
}

/// Creates a BO of `size` bytes (rounded up to whole pages) with a GPU
/// resource; `*out` is freed with `cohmem_bo_free`.
///
/// Errors: `COHMEM_E_DAEMON` with `COHMEM_DAEMON_E_TOO_LARGE` over the
/// daemon's `max_bo_size` (`cohmem_connection_max_bo_size`),
/// `COHMEM_DAEMON_E_LIMIT_EXCEEDED` over a per-user limit.
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
        // SAFETY: `out` is non-NULL and valid for writes (documented).
        Ok(bo) => unsafe { hand_out(out, bo, &conn.0) },
        Err(e) => fail(&e),
    }
}

/// Creates a BO of `size` bytes without any GPU resource (and so without
/// write tracking until one is bound): bind windows of it with
/// `cohmem_bo_add_resource`. `*out` is freed with `cohmem_bo_free`.
///
/// # Safety
/// `conn` is NULL or a live connection; `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_create_without_resource(
    conn: *const cohmem_connection,
    size: u64,
    out: *mut *mut cohmem_bo,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_bo_create_without_resource: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_create_without_resource: out is NULL");
    }
    match conn.0.create_bo_without_resource(size) {
        // SAFETY: `out` is non-NULL and valid for writes (documented).
        Ok(bo) => unsafe { hand_out(out, bo, &conn.0) },
        Err(e) => fail(&e),
    }
}

/// Opens a handle to a BO another process shared by passing its memfd
/// (`cohmem_bo_memfd`, sent over a Unix socket). `memfd` stays the
/// caller's (the library keeps a duplicate). `*out` is freed with
/// `cohmem_bo_free`.
///
/// Errors: `COHMEM_E_DAEMON` with `COHMEM_DAEMON_E_BAD_FDS` when `memfd` is
/// not a cohmem BO's memfd.
///
/// # Safety
/// `conn` is NULL or a live connection; `memfd` is an open file descriptor;
/// `out` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_import(
    conn: *const cohmem_connection,
    memfd: c_int,
    out: *mut *mut cohmem_bo,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { conn.as_ref() }) else {
        return invalid("cohmem_bo_import: conn is NULL");
    };
    if out.is_null() {
        return invalid("cohmem_bo_import: out is NULL");
    }
    if memfd < 0 {
        return invalid(&format!("cohmem_bo_import: {memfd} is no file descriptor"));
    }
    // SAFETY: `memfd` is an open descriptor (documented), borrowed for the
    // duplication only.
    let fd = unsafe { BorrowedFd::borrow_raw(memfd) };
    let owned = match fd.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return invalid(&format!("cohmem_bo_import: duplicating fd {memfd}: {e}")),
    };
    match conn.0.import_bo(owned) {
        // SAFETY: `out` is non-NULL and valid for writes (documented).
        Ok(bo) => unsafe { hand_out(out, bo, &conn.0) },
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

/// The BO's daemon-wide id, as `cohmemctl status` and `list` show it (0
/// for NULL). For display: a daemon restart renumbers it (the library
/// follows by itself).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_id(bo: *const cohmem_bo) -> u64 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.id())
}

/// The BO's connection-local handle (0 for NULL; a reconnect renumbers
/// it).
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_handle(bo: *const cohmem_bo) -> u32 {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(0, |b| b.0.handle())
}

/// The BO's memfd, owned by the BO (-1 for NULL): do not close it. Send a
/// `dup` of it to another process so that it can `cohmem_bo_import` the
/// BO.
///
/// # Safety
/// `bo` is NULL or a live BO.
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_memfd(bo: *const cohmem_bo) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    unsafe { bo.as_ref() }.map_or(-1, |b| b.0.memfd().as_raw_fd())
}

/// Copies `len` bytes at `offset` of the BO into `buf` with `pread` on its
/// memfd (not through a mapping, so it neither needs one nor counts as a
/// write).
///
/// # Safety
/// `bo` is NULL or a live BO; `buf` is valid for writing `len` bytes (NULL
/// when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cohmem_bo_read(bo: *const cohmem_bo, offset: u64, buf: *mut c_void, len: usize) -> c_int {
    // SAFETY: `bo` is NULL or a live BO (documented).
    let Some(bo) = (unsafe { bo.as_ref() }) else {
        return invalid("cohmem_bo_read: bo is NULL");
    };
    if len == 0 {
        return COHMEM_OK;
    }
    if buf.is_null() {
        return invalid(&format!("cohmem_bo_read: buf is NULL but len is {len}"));
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > bo.0.size()) {
        return invalid(&format!(
            "cohmem_bo_read: {len} bytes at offset {offset} reach past the end of the {}-byte BO",
            bo.0.size()
        ));
    }
    // SAFETY: `buf` is the caller's own memory, valid for `len` writes
    // (documented), not memory shared with the daemon.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    match bo.0.read_at(offset, buf) {
        Ok(()) => COHMEM_OK,
        Err(e) => fail(&e),
    }
}
