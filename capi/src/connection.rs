//! A connection to cohmemd (`cohmem_connection`: `cohmem_connect`,
//! `cohmem_disconnect`) and the daemon's counters read through it
//! (`cohmem_stats`, `cohmem_stats_get`).

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
            };
            // SAFETY: `out` is non-NULL and valid for writes (documented).
            unsafe { *out = stats };
            COHMEM_OK
        }
        Err(e) => fail(&e),
    }
}
