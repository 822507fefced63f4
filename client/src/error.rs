//! The client's error type, its conversion to [`std::io::Error`], and the
//! error for a reply that does not fit its request.

use std::path::PathBuf;

use cohmem_proto::{ErrorCode, Reply};
use cohmem_sys::SysError;
use thiserror::Error;

/// Anything a client call can fail with.
///
/// Match on the variant for what went wrong, and on
/// [`ClientError::code`] for the daemon's typed refusals. New variants may
/// be added, so a `match` needs a `_` arm. Every error converts into a
/// [`std::io::Error`] with a fitting [`std::io::ErrorKind`] (`?` in a
/// function returning `io::Result` works).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon's socket could not be reached: the daemon is not
    /// running, or listens elsewhere, or this user may not open it. The
    /// source says which (`ENOENT`: no socket there, `ECONNREFUSED`: no
    /// daemon behind it, `EACCES`: permissions).
    #[error(
        "cannot connect to cohmemd at {path}: start the daemon (`cohmemd --socket {path}`), or set \
         COHMEM_SOCKET to the socket of the one that runs"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: SysError,
    },
    /// The daemon answered with a typed error.
    #[error("cohmemd refused {request}: {code:?}: {message}")]
    Daemon {
        /// Request name.
        request: &'static str,
        /// Error code.
        code: ErrorCode,
        /// The daemon's message.
        message: String,
    },
    /// An argument the library checks before asking the daemon was wrong
    /// (an unaligned offset, a rectangle outside the image, a byte BO where
    /// an image BO is needed); the message says which and what to do.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An access through a [`Mapping`](crate::Mapping) reaches past its
    /// end: nothing was read or written.
    #[error(
        "{len} bytes at offset {offset} reach past the end of the {mapping_len}-byte mapping \
         (map a larger range of the BO, or check the offset)"
    )]
    OutOfBounds {
        /// The offset asked for, in the mapping.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The mapping's length.
        mapping_len: u64,
    },
    /// The daemon's reply made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon closed the connection.
    #[error("cohmemd closed the connection (the next call reconnects when it is back)")]
    Disconnected,
    /// The object belongs to the process that created it, and this is a
    /// child forked from it: the child shares the parent's socket and
    /// userfaultfds (using them would act on the parent's session and
    /// address space) and did not inherit the mappings (`MADV_DONTFORK`).
    /// Connect again in the child.
    #[error(
        "this cohmem object was created by process {owner} and cannot be used in its forked child {pid}; \
         connect again in the child"
    )]
    ForkedChild {
        /// The process that created the object.
        owner: u32,
        /// This process.
        pid: u32,
    },
    /// A local kernel call failed (the message names it and the errno).
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl ClientError {
    /// The daemon's error code, if this is a daemon error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Daemon { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The [`std::io::ErrorKind`] this error converts to.
    pub fn io_kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            Self::Connect { source, .. } | Self::Sys(source) => match source.errno() {
                Some(errno) => std::io::Error::from_raw_os_error(errno as i32).kind(),
                None => K::InvalidInput,
            },
            Self::Daemon { code, .. } => match code {
                ErrorCode::NoSuchBo | ErrorCode::NoSuchView => K::NotFound,
                ErrorCode::InvalidArgument | ErrorCode::BadFds => K::InvalidInput,
                ErrorCode::TooLarge | ErrorCode::LimitExceeded => K::OutOfMemory,
                ErrorCode::Unsupported | ErrorCode::UnsupportedVersion | ErrorCode::UnknownRequest => K::Unsupported,
                ErrorCode::PermissionDenied => K::PermissionDenied,
                ErrorCode::BadFrame | ErrorCode::NotNegotiated => K::InvalidData,
                _ => K::Other,
            },
            Self::InvalidArgument(_) | Self::OutOfBounds { .. } => K::InvalidInput,
            Self::Protocol(_) => K::InvalidData,
            Self::Disconnected => K::ConnectionAborted,
            Self::ForkedChild { .. } => K::Unsupported,
        }
    }
}

impl From<ClientError> for std::io::Error {
    /// Keeps the error (its message and source) inside an `io::Error` of
    /// the kind [`ClientError::io_kind`] gives; an error of a kernel call
    /// keeps its errno (`raw_os_error`).
    fn from(e: ClientError) -> Self {
        if let ClientError::Sys(SysError::Os { errno, .. }) = &e {
            // The errno is what io callers look at; the operation's name
            // stays in the message of the wrapped error.
            let kind = std::io::Error::from_raw_os_error(*errno as i32).kind();
            return std::io::Error::new(kind, e);
        }
        std::io::Error::new(e.io_kind(), e)
    }
}

/// The error for a reply that is not one `request` can have.
pub(crate) fn unexpected(request: &str, reply: &Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply to {request}: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn io_errors_keep_kind_and_message() {
        let e: std::io::Error = ClientError::OutOfBounds {
            offset: 10,
            len: 8,
            mapping_len: 12,
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("past the end"), "{e}");
        let refused = ClientError::Connect {
            path: "/x".into(),
            source: SysError::os("connect", nix::errno::Errno::ECONNREFUSED),
        };
        assert_eq!(std::io::Error::from(refused).kind(), ErrorKind::ConnectionRefused);
        let daemon = ClientError::Daemon {
            request: "MAP",
            code: ErrorCode::PermissionDenied,
            message: "no".into(),
        };
        assert_eq!(std::io::Error::from(daemon).kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            std::io::Error::from(ClientError::Disconnected).kind(),
            ErrorKind::ConnectionAborted
        );
    }
}
