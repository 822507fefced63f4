//! Status codes (`cohmem_status`: `COHMEM_OK`, `COHMEM_E_*`), the daemon's
//! error codes (`cohmem_daemon_error`), and the calling thread's last error:
//! the message and daemon code every failing call leaves behind
//! (`cohmem_last_error`, `cohmem_last_daemon_code`), with their names
//! (`cohmem_strerror`, `cohmem_daemon_error_name`).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

use cohmem_client::{ClientError, ErrorCode};

/// What a libcohmem call returns: `COHMEM_OK` (0) on success, else a
/// negative `COHMEM_E_*` code, with the details in `cohmem_last_error()`
/// (and, for `COHMEM_E_DAEMON`, the daemon's `cohmem_daemon_error` in
/// `cohmem_last_daemon_code()`). The functions return it as an `int`, as
/// libusb returns its `enum libusb_error`: compare it with these names.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_status {
    /// Success.
    COHMEM_OK = 0,
    /// A NULL pointer or an invalid argument (a range outside the BO, a
    /// rectangle outside the image, an unknown enum value); nothing was
    /// sent to the daemon.
    COHMEM_E_INVALID = -1,
    /// The daemon's socket could not be reached.
    COHMEM_E_CONNECT = -2,
    /// The daemon closed the connection (and reconnecting failed).
    COHMEM_E_DISCONNECTED = -3,
    /// The daemon refused the request: `cohmem_last_daemon_code()` says
    /// why (a `cohmem_daemon_error`).
    COHMEM_E_DAEMON = -4,
    /// A local kernel call failed (the message names it and the errno).
    COHMEM_E_SYSTEM = -5,
    /// The daemon's reply made no sense (a daemon of another version?).
    COHMEM_E_PROTOCOL = -6,
    /// The object was made by the parent of this forked process; connect
    /// again in the child.
    COHMEM_E_FORKED = -7,
    /// An error of a kind this version of libcohmem does not name.
    COHMEM_E_OTHER = -8,
}

/// [`cohmem_status::COHMEM_OK`] as the `int` the functions return.
/// cbindgen:ignore
pub const COHMEM_OK: c_int = cohmem_status::COHMEM_OK as c_int;
/// [`cohmem_status::COHMEM_E_INVALID`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_INVALID: c_int = cohmem_status::COHMEM_E_INVALID as c_int;
/// [`cohmem_status::COHMEM_E_CONNECT`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_CONNECT: c_int = cohmem_status::COHMEM_E_CONNECT as c_int;
/// [`cohmem_status::COHMEM_E_DISCONNECTED`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_DISCONNECTED: c_int = cohmem_status::COHMEM_E_DISCONNECTED as c_int;
/// [`cohmem_status::COHMEM_E_DAEMON`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_DAEMON: c_int = cohmem_status::COHMEM_E_DAEMON as c_int;
/// [`cohmem_status::COHMEM_E_SYSTEM`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_SYSTEM: c_int = cohmem_status::COHMEM_E_SYSTEM as c_int;
/// [`cohmem_status::COHMEM_E_PROTOCOL`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_PROTOCOL: c_int = cohmem_status::COHMEM_E_PROTOCOL as c_int;
/// [`cohmem_status::COHMEM_E_FORKED`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_FORKED: c_int = cohmem_status::COHMEM_E_FORKED as c_int;
/// [`cohmem_status::COHMEM_E_OTHER`] as an `int`.
/// cbindgen:ignore
pub const COHMEM_E_OTHER: c_int = cohmem_status::COHMEM_E_OTHER as c_int;

/// Why the daemon refused a request (`COHMEM_E_DAEMON`): the code
/// `cohmem_last_daemon_code()` returns, the daemon's wire value. A newer
/// daemon may send a value not listed here; `cohmem_daemon_error_name()`
/// then says "unknown".
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cohmem_daemon_error {
    /// No daemon error (the last error was not `COHMEM_E_DAEMON`).
    COHMEM_DAEMON_E_NONE = 0,
    /// The request frame could not be decoded.
    COHMEM_DAEMON_E_BAD_FRAME = 1,
    /// No protocol version in common with the daemon.
    COHMEM_DAEMON_E_UNSUPPORTED_VERSION = 2,
    /// A request came before the protocol was negotiated.
    COHMEM_DAEMON_E_NOT_NEGOTIATED = 3,
    /// The daemon does not know the request (an older daemon).
    COHMEM_DAEMON_E_UNKNOWN_REQUEST = 4,
    /// The wrong file descriptors came with the request (an import of
    /// something that is not a cohmem BO's memfd).
    COHMEM_DAEMON_E_BAD_FDS = 5,
    /// The BO is not open on this connection.
    COHMEM_DAEMON_E_NO_SUCH_BO = 6,
    /// The mapping is not known to the daemon.
    COHMEM_DAEMON_E_NO_SUCH_VIEW = 7,
    /// An argument is out of range (alignment, bounds, overlap, a width
    /// or height of 0, a byte BO where an image BO is needed).
    COHMEM_DAEMON_E_INVALID_ARGUMENT = 8,
    /// A size exceeds the daemon's `max_bo_size`.
    COHMEM_DAEMON_E_TOO_LARGE = 9,
    /// A per-connection or per-user limit was reached.
    COHMEM_DAEMON_E_LIMIT_EXCEEDED = 10,
    /// The daemon lost this process's write tracking (internal; the
    /// library hands it over again by itself).
    COHMEM_DAEMON_E_NEED_MM_FDS = 11,
    /// A mapping was made before this process's write tracking was set up
    /// (internal).
    COHMEM_DAEMON_E_NO_MM = 12,
    /// The mechanism, format or feature is not available (the message
    /// says why: the kernel, the GPU device, no display output).
    COHMEM_DAEMON_E_UNSUPPORTED = 13,
    /// A kernel call failed inside the daemon (the message names it).
    COHMEM_DAEMON_E_KERNEL = 14,
    /// The GPU backend failed.
    COHMEM_DAEMON_E_GPU = 15,
    /// Anything else inside the daemon.
    COHMEM_DAEMON_E_INTERNAL = 16,
    /// This user may not use the daemon (or that BO, or the display).
    COHMEM_DAEMON_E_PERMISSION_DENIED = 17,
}

impl cohmem_daemon_error {
    /// Every named code, in wire order (index = value; the
    /// `daemon_codes_are_the_wire_codes…` test checks them against
    /// `ErrorCode::from_wire`).
    pub const ALL: [Self; 18] = [
        Self::COHMEM_DAEMON_E_NONE,
        Self::COHMEM_DAEMON_E_BAD_FRAME,
        Self::COHMEM_DAEMON_E_UNSUPPORTED_VERSION,
        Self::COHMEM_DAEMON_E_NOT_NEGOTIATED,
        Self::COHMEM_DAEMON_E_UNKNOWN_REQUEST,
        Self::COHMEM_DAEMON_E_BAD_FDS,
        Self::COHMEM_DAEMON_E_NO_SUCH_BO,
        Self::COHMEM_DAEMON_E_NO_SUCH_VIEW,
        Self::COHMEM_DAEMON_E_INVALID_ARGUMENT,
        Self::COHMEM_DAEMON_E_TOO_LARGE,
        Self::COHMEM_DAEMON_E_LIMIT_EXCEEDED,
        Self::COHMEM_DAEMON_E_NEED_MM_FDS,
        Self::COHMEM_DAEMON_E_NO_MM,
        Self::COHMEM_DAEMON_E_UNSUPPORTED,
        Self::COHMEM_DAEMON_E_KERNEL,
        Self::COHMEM_DAEMON_E_GPU,
        Self::COHMEM_DAEMON_E_INTERNAL,
        Self::COHMEM_DAEMON_E_PERMISSION_DENIED,
    ];
}

thread_local! {
    static LAST_ERROR: RefCell<(CString, u16)> = RefCell::new((CString::default(), 0));
}

/// Stores the thread's last error message and daemon code.
fn set_error(message: &str, daemon_code: u16) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = (text, daemon_code));
}

/// The `COHMEM_E_*` status of a client error.
#[allow(unreachable_patterns)] // the client's error enum may grow (`#[non_exhaustive]`)
pub(crate) fn status_of(e: &ClientError) -> cohmem_status {
    match e {
        ClientError::Connect { .. } => cohmem_status::COHMEM_E_CONNECT,
        ClientError::Daemon { .. } => cohmem_status::COHMEM_E_DAEMON,
        ClientError::Protocol(_) => cohmem_status::COHMEM_E_PROTOCOL,
        ClientError::InvalidArgument(_) | ClientError::OutOfBounds { .. } => cohmem_status::COHMEM_E_INVALID,
        ClientError::Disconnected => cohmem_status::COHMEM_E_DISCONNECTED,
        ClientError::Sys(_) => cohmem_status::COHMEM_E_SYSTEM,
        ClientError::ForkedChild { .. } => cohmem_status::COHMEM_E_FORKED,
        _ => cohmem_status::COHMEM_E_OTHER,
    }
}

/// Records `e` as the thread's last error; returns its `COHMEM_E_*` code.
pub(crate) fn fail(e: &ClientError) -> c_int {
    set_error(&e.to_string(), e.code().map_or(0, ErrorCode::to_wire));
    status_of(e) as c_int
}

/// Records `what` as the thread's last error; returns `COHMEM_E_INVALID`.
pub(crate) fn invalid(what: &str) -> c_int {
    set_error(what, 0);
    COHMEM_E_INVALID
}

/// The calling thread's last error message ("" when none): what failed and
/// why, and often what to do. Valid until the thread's next failing call.
#[no_mangle]
pub extern "C" fn cohmem_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().0.as_ptr())
}

/// The `cohmem_daemon_error` of the calling thread's last
/// `COHMEM_E_DAEMON` (e.g. `COHMEM_DAEMON_E_TOO_LARGE`), else
/// `COHMEM_DAEMON_E_NONE`. An `int`: a newer daemon may send a code this
/// header does not name.
#[no_mangle]
pub extern "C" fn cohmem_last_daemon_code() -> c_int {
    LAST_ERROR.with(|e| c_int::from(e.borrow().1))
}

/// A static description of a `cohmem_status` code ("unknown error code"
/// for a value that is none).
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
        COHMEM_E_OTHER => c"other error",
        _ => c"unknown error code",
    };
    text.as_ptr()
}

/// The static name of a `cohmem_daemon_error` code ("TooLarge",
/// "Unsupported"; "none" for `COHMEM_DAEMON_E_NONE`, "unknown" for a value
/// this library does not name).
#[no_mangle]
pub extern "C" fn cohmem_daemon_error_name(code: c_int) -> *const c_char {
    use cohmem_daemon_error as D;
    let Some(&named) = usize::try_from(code).ok().and_then(|i| D::ALL.get(i)) else {
        return c"unknown".as_ptr();
    };
    let text: &'static CStr = match named {
        D::COHMEM_DAEMON_E_NONE => c"none",
        D::COHMEM_DAEMON_E_BAD_FRAME => c"BadFrame",
        D::COHMEM_DAEMON_E_UNSUPPORTED_VERSION => c"UnsupportedVersion",
        D::COHMEM_DAEMON_E_NOT_NEGOTIATED => c"NotNegotiated",
        D::COHMEM_DAEMON_E_UNKNOWN_REQUEST => c"UnknownRequest",
        D::COHMEM_DAEMON_E_BAD_FDS => c"BadFds",
        D::COHMEM_DAEMON_E_NO_SUCH_BO => c"NoSuchBo",
        D::COHMEM_DAEMON_E_NO_SUCH_VIEW => c"NoSuchView",
        D::COHMEM_DAEMON_E_INVALID_ARGUMENT => c"InvalidArgument",
        D::COHMEM_DAEMON_E_TOO_LARGE => c"TooLarge",
        D::COHMEM_DAEMON_E_LIMIT_EXCEEDED => c"LimitExceeded",
        D::COHMEM_DAEMON_E_NEED_MM_FDS => c"NeedMmFds",
        D::COHMEM_DAEMON_E_NO_MM => c"NoMm",
        D::COHMEM_DAEMON_E_UNSUPPORTED => c"Unsupported",
        D::COHMEM_DAEMON_E_KERNEL => c"Kernel",
        D::COHMEM_DAEMON_E_GPU => c"Gpu",
        D::COHMEM_DAEMON_E_INTERNAL => c"Internal",
        D::COHMEM_DAEMON_E_PERMISSION_DENIED => c"PermissionDenied",
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_codes_are_the_wire_codes_and_named_as_the_protocol_names_them() {
        for (value, named) in cohmem_daemon_error::ALL.iter().enumerate() {
            assert_eq!(*named as usize, value);
            let wire = u16::try_from(value).unwrap();
            // SAFETY: cohmem_daemon_error_name returns a static C string.
            let name = unsafe { CStr::from_ptr(cohmem_daemon_error_name(c_int::from(wire))) };
            if value > 0 {
                assert_eq!(name.to_str().unwrap(), format!("{:?}", ErrorCode::from_wire(wire)));
            }
        }
        assert!(
            matches!(ErrorCode::from_wire(18), ErrorCode::Other(18)),
            "a new ErrorCode needs a name here"
        );
    }
}
