//! The error type of every wrapper in this crate.

use nix::errno::Errno;
use thiserror::Error;

/// A failed kernel operation, or an argument a wrapper refused before
/// reaching the kernel.
#[derive(Debug, Error)]
pub enum SysError {
    /// The kernel returned an error for `op`.
    #[error("{op}: {errno} ({desc})", desc = errno.desc())]
    Os {
        /// The operation, e.g. `"UFFDIO_REGISTER"`.
        op: &'static str,
        /// The error number.
        errno: Errno,
    },
    /// An argument or an fd was not what the operation needs.
    #[error("{0}")]
    Invalid(String),
}

impl SysError {
    /// Wraps an errno with the name of the operation that returned it.
    pub fn os(op: &'static str, errno: Errno) -> Self {
        Self::Os { op, errno }
    }

    /// The errno, if the kernel returned one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Os { errno, .. } => Some(*errno),
            Self::Invalid(_) => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SysError>;

/// Adds the operation name to a nix result.
pub(crate) trait OsContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> OsContext<T> for nix::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|e| SysError::os(op, e))
    }
}

/// Runs `call` again for as long as a signal interrupts it (`EINTR`): an
/// interrupted call says nothing about its object, and the library runs in
/// applications whose handlers lack `SA_RESTART`.
pub(crate) fn retry_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
