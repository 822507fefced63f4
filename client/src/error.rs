//! The client's error type.

use std::path::PathBuf;

use cohmem_proto::ErrorCode;
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
    /// The daemon's reply made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon closed the connection.
    #[error("cohmemd closed the connection")]
    Disconnected,
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
