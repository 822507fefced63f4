//! A connection to cohmemd (`cohmem_connection`: `cohmem_connect`,
//! `cohmem_disconnect`), what it negotiated (capabilities, largest BO,
//! reconnects), and the daemon's counters and metrics read through it
//! (`cohmem_stats`, `cohmem_stats_get`, `cohmem_metrics`; one BO's
//! counters are in `tracking.rs`).

use std::ffi::{c_char, c_int, CStr};

use cohmem_client::Connection;

use crate::error::{fail, invalid, COHMEM_OK};

/// A connection to cohmemd.
pub struct cohmem_connection(pub(crate) Connection);

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
    /// Client processes whose writes the daemon tracks.
    pub mm_subscriptions: u32,
    /// Mappings (views) of all BOs.
    pub views: u32,
    /// Uploads the GPU backend failed (their pages stayed dirty).
    pub upload_failures: u64,
    /// Pages uploaded that were not written (method switches, pauses).
    pub extra_pages: u64,
    /// Syncs retried after a writer raced them.
    pub sync_retries: u64,
    /// Syncs that had to block the writers to finish.
    pub sync_exclusive: u64,
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
                mm_subscriptions: d.mm_subscriptions,
                views: d.views,
                upload_failures: d.upload_failures,
                extra_pages: d.extra_pages,
                sync_retries: d.sync_retries,
                sync_exclusive: d.sync_exclusive,
            };
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = stats };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}

/// The connection as a reference (`None` for NULL).
///
/// # Safety
/// `conn` is NULL or a live connection.
unsafe fn live<'a>(conn: *const cohmem_connection) -> Option<&'a Connection> {
    // SAFETY: `conn` is NULL or a live connection (the caller's contract).
    unsafe { conn.as_ref() }.map(|c| &c.0)
}

/// How many times the connection re-established its session after the
/// daemon went away (each time re-importing its BOs and mappings by
/// itself); 0 for NULL.
///
/// # Safety
/// `conn` is NULL or a live connection.
#[no_mangle]
pub unsafe extern "C" fn cohmem_connection_reconnects(conn: *const cohmem_connection) -> u64 {
    // SAFETY: `conn` is NULL or a live connection (documented).
    unsafe { live(conn) }.map_or(0, Connection::reconnects)
}

/// The capability bits the daemon granted the connection (the protocol's
/// HELLO; 0 for NULL).
///
/// # Safety
/// `conn` is NULL or a live connection.
#[no_mangle]
pub unsafe extern "C" fn cohmem_connection_caps(conn: *const cohmem_connection) -> u64 {
    // SAFETY: `conn` is NULL or a live connection (documented).
    unsafe { live(conn) }.map_or(0, Connection::caps)
}

/// The largest BO the daemon creates, in bytes (0 for NULL).
///
/// # Safety
/// `conn` is NULL or a live connection.
#[no_mangle]
pub unsafe extern "C" fn cohmem_connection_max_bo_size(conn: *const cohmem_connection) -> u64 {
    // SAFETY: `conn` is NULL or a live connection (documented).
    unsafe { live(conn) }.map_or(0, Connection::max_bo_size)
}

/// The page size the daemon works in, in bytes (0 for NULL): BO sizes are
/// rounded up to it, and resource windows are multiples of it.
///
/// # Safety
/// `conn` is NULL or a live connection.
#[no_mangle]
pub unsafe extern "C" fn cohmem_connection_page_size(conn: *const cohmem_connection) -> u64 {
    // SAFETY: `conn` is NULL or a live connection (documented).
    unsafe { live(conn) }.map_or(0, Connection::page_size)
}

/// The daemon's Prometheus metrics (OpenMetrics text, what `cohmemd
/// --metrics-listen` serves over HTTP), as `snprintf` writes: up to
/// `capacity - 1` bytes and a NUL into `buf` (NULL when `capacity` is 0),
/// and the whole text's length (without the NUL) into `*len` (NULL or
/// valid for writes). Call with a larger buffer when `*len >= capacity`.
///
/// # Safety
/// `conn` is NULL or a live connection; `buf` is valid for writing
/// `capacity` bytes when `capacity` > 0; `len` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn cohmem_metrics(
    conn: *const cohmem_connection,
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: `conn` is NULL or a live connection (documented).
    let Some(conn) = (unsafe { live(conn) }) else {
        return invalid("cohmem_metrics: conn is NULL");
    };
    if buf.is_null() && capacity > 0 {
        return invalid(&format!("cohmem_metrics: buf is NULL but capacity is {capacity}"));
    }
    let text = match conn.metrics() {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    if capacity > 0 {
        let n = text.len().min(capacity - 1);
        // SAFETY: `buf` is valid for `capacity` bytes (documented) and
        // `n + 1 <= capacity`; `text` is ours, not shared memory.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    // SAFETY: `len` is NULL or valid for writes (documented).
    if let Some(len) = unsafe { len.as_mut() } {
        *len = text.len();
    }
    COHMEM_OK
}
