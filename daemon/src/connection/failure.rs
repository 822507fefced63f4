//! The typed error reply every request handler fails with ([`Failure`]),
//! the handlers' result type ([`Outcome`]), and the conversions of the
//! engine's and the mechanism switch's errors into error codes: every
//! request is answered with a reply or a typed error (DESIGN.md §5).

use std::os::fd::OwnedFd;

use cohmem_proto::{ErrorCode, Reply};

use crate::switch;
use crate::sync::SyncError;

/// A typed error reply.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

pub(super) fn fail(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub(super) type Outcome = Result<(Reply, Vec<OwnedFd>), Failure>;

pub(super) fn ok(reply: Reply) -> Outcome {
    Ok((reply, Vec::new()))
}

pub(super) fn sync_failure(e: SyncError) -> Failure {
    match e {
        SyncError::NoSuchResource(_) | SyncError::BadWindow(_) => fail(ErrorCode::InvalidArgument, e.to_string()),
        SyncError::TooManyResources(_) => fail(ErrorCode::LimitExceeded, e.to_string()),
        SyncError::Gpu(e) => fail(ErrorCode::Gpu, format!("upload failed (pages kept dirty): {e}")),
    }
}

pub(super) fn switch_failure(e: switch::SwitchError) -> Failure {
    match e {
        switch::SwitchError::BadFds(m) => fail(ErrorCode::BadFds, m),
        switch::SwitchError::Missing(m) => fail(ErrorCode::Unsupported, m),
        switch::SwitchError::Dup(e) => fail(ErrorCode::Kernel, format!("duplicating an offered fd: {e}")),
        e @ switch::SwitchError::FaultService(_) => fail(ErrorCode::Kernel, e.to_string()),
    }
}
