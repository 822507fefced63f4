//! The client's error type, and the error for a reply that does not fit
//! its request.

use std::path::PathBuf;

use cohmem_proto::{ErrorCode, Reply};
use cohmem_sys::SysError;
use thiserror::Error;

/// Anything a client call can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error("connecting to cohmemd at {path}: {source}")]
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
    /// (a range outside the BO, a rectangle outside the image); the message
    /// says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The daemon's reply made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon closed the connection.
    #[error("cohmemd closed the connection")]
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
    /// A local kernel call failed.
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
}

/// The error for a reply that is not one `request` can have.
pub(crate) fn unexpected(request: &str, reply: &Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply to {request}: {reply:?}"))
}
