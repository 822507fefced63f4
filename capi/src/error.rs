//! Error codes (`COHMEM_E_*`) and the calling thread's last error: the
//! message and daemon code every failing call leaves behind
//! (`cohmem_last_error`, `cohmem_last_daemon_code`), and `cohmem_strerror`.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

use cohmem_client::ClientError;

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

/// Stores the thread's last error message and daemon code.
fn set_error(message: &str, daemon_code: u16) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = (text, daemon_code));
}

/// Records `e` as the thread's last error; returns its `COHMEM_E_*` code.
pub(crate) fn fail(e: &ClientError) -> c_int {
    let code = match e {
        ClientError::Connect { .. } => COHMEM_E_CONNECT,
        ClientError::Daemon { .. } => COHMEM_E_DAEMON,
        ClientError::Protocol(_) => COHMEM_E_PROTOCOL,
        ClientError::InvalidArgument(_) => COHMEM_E_INVALID,
        ClientError::Disconnected => COHMEM_E_DISCONNECTED,
        ClientError::Sys(_) => COHMEM_E_SYSTEM,
        ClientError::ForkedChild { .. } => COHMEM_E_FORKED,
    };
    set_error(&e.to_string(), e.code().map_or(0, |c| c.to_wire()));
    code
}

/// Records `what` as the thread's last error; returns `COHMEM_E_INVALID`.
pub(crate) fn invalid(what: &str) -> c_int {
    set_error(what, 0);
    COHMEM_E_INVALID
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
